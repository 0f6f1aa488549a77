"""Training on in-memory feature arrays (any sequences: audio features, sensor traces, ...)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from lstmq.config import Config
from lstmq.pipeline import prepare_arrays
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
    sequences are scored with ``lstmq.predict_path`` (``lstmq eval --run`` has no data to
    reload and says so).

    Returns:
      (the trained run, its metrics: test accuracy per seed, per class, confusion, history).
    """
    config = config or Config()
    data = prepare_arrays(x, lengths, labels, config, classes, speakers, partition)
    workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="lstmq-run-"))
    metrics = train_and_evaluate(config, workdir, data=data, progress=progress,
                                 overwrite=overwrite)
    return load_run(workdir), metrics
