"""Training on in-memory feature arrays (any sequences: audio features, sensor traces, ...)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from lstmq.config import Config
from lstmq.data import DataError
from lstmq.features import pad_batch
from lstmq.pipeline import (SplitArrays, checked_sequences, label_names, prepare_arrays,
                            provenance)
from lstmq.runner import train_and_evaluate
from lstmq.runs import Run, load_run


def train_arrays(x: np.ndarray, lengths: np.ndarray, labels: Any, config: Config | None = None,
                 workdir: str | Path | None = None, classes: tuple[str, ...] | None = None,
                 speakers: Any = None, partition: Any = None, progress: bool = False,
                 overwrite: bool = False) -> tuple[Run, dict[str, Any]]:
    """Train a classifier on ``x <float32>[N, T, F]`` (``lengths <int32>[N]`` real frames,
    ``labels`` strings or ints) and test it on the split ``config.data`` describes.

    ``config.features.normalize`` applies to the arrays (``none`` keeps them as given); the
    run folder (a new temporary folder when ``workdir`` is None) holds the usual outputs, so
    the returned run converts and exports like any other. The arrays are not kept: new
    sequences are scored with ``lstmq.predict_path(run, arrays_split(run, x, lengths))``
    (``lstmq eval --run`` has no data to reload and says so).

    Returns:
      (the trained run, its metrics: test accuracy per seed, per class, confusion, history).
    """
    config = config or Config()
    data = prepare_arrays(x, lengths, labels, config, classes, speakers, partition)
    workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="lstmq-run-"))
    metrics = train_and_evaluate(config, workdir, data=data, progress=progress,
                                 overwrite=overwrite)
    return load_run(workdir), metrics


def arrays_split(run: Run, x: np.ndarray, lengths: np.ndarray, labels: Any = None) -> SplitArrays:
    """New sequences ``x <float32>[N, T, F]`` as a split ``lstmq.predict_path`` takes for
    ``run``: normalised with the run's training statistics, cut to its
    ``features.max_frames``; ``labels`` (strings among the run's classes, or their indices)
    are optional.

    Raises:
      DataError: shapes, lengths or values that do not fit, or another number of features
        than the run was trained on.
    """
    x, lengths = checked_sequences(x, lengths)
    if x.shape[2] != run.derived.input_size:
        raise DataError(f"x has {x.shape[2]} features per frame; {run.directory} was trained "
                        f"on {run.derived.input_size}")
    keep = run.config.features.max_frames or x.shape[1]
    features = run.derived.normalizer.apply([x[i, :min(n, keep)] for i, n in enumerate(lengths)])
    padded, lengths = pad_batch(features, bucket=run.config.train.bucket_frames)
    count = len(lengths)
    index = np.zeros(count, np.int32)
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (count,):
            raise DataError(f"expected labels [N] for {count} sequences, got {labels.shape}")
        names, _ = label_names(labels, run.classes)  # strings, or indices into the run's classes
        unknown = sorted(set(names) - set(run.classes))
        if unknown:
            raise DataError(f"labels {unknown[:5]} are not classes of {run.directory} "
                            f"({', '.join(run.classes)})")
        index = np.array([run.classes.index(name) for name in names], np.int32)
    return SplitArrays(x=padded, lengths=lengths, labels=index,
                       speakers=np.full(count, "", dtype=str),
                       names=tuple(f"row_{i:06d}" for i in range(count)),
                       prepared_with=provenance(run.config.features, run.derived.normalizer))
