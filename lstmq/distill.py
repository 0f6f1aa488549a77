"""Knowledge distillation from a finished run (Hinton et al., 2015): the teacher's softened
class probabilities become a second target of the student's loss.

The teacher is any finished run on the same features (an ensemble of its seeds: their
probabilities at temperature ``T`` are averaged). Its targets are computed once, before
training, for every training row as stored (waveform copies included, spectrogram masks
not): the student learns from a masked clip what the teacher said of the whole one. With
``train.distill_source: originals`` the teacher reads each waveform copy's original clip
instead, so a noisy or shifted copy learns what the teacher says of the clean recording. The
student's loss per clip is

    (1 - w) * CE(label, logits) + w * T^2 * CE(teacher_T, logits / T)

(``w`` = ``train.distill_weight``; the ``T^2`` keeps the soft term's gradient on the scale
of the hard one's as ``T`` grows). Only training changes: the student's size, budget and
export are its own.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lstmq.augment import waveform_augmentation_enabled
from lstmq.checkpoint import CheckpointError
from lstmq.config import Config
from lstmq.pipeline import SplitArrays
from lstmq.prediction import predict_split, seeds_predictor
from lstmq.runs import (Derived, Run, clip_differences, feature_differences, load_run,
                        model_from_config)


def _statistics(normalizer) -> dict:
    """What a normaliser makes of a feature value; not the integer front end's input clip,
    which each run calibrates on its own augmented copies (the teacher reads the student's
    inputs, saturated at the student's clip)."""
    values = normalizer.to_dict()
    return {key: values.get(key) for key in ("mode", "mean", "std", "value_scale")}


def check_teacher(teacher: Run, config: Config, derived: Derived, fingerprint: str) -> None:
    """Raise CheckpointError, naming the teacher's folder, unless it reads the student's
    features (same front end, normalisation and classes) and trained on the student's
    training clips (the same recordings, split alike: ``fingerprint`` is the student's data)."""
    problems = []
    other_clips = clip_differences(teacher, config, fingerprint)
    if other_clips:
        problems.append(f"trained on {'; '.join(other_clips)}, so its training clips may be "
                        "the student's validation or test clips")
    if teacher.derived.classes != derived.classes:
        problems.append(f"classes {list(teacher.derived.classes)}, the student's "
                        f"{list(derived.classes)}")
    changed = feature_differences(teacher.config.features, config.features)
    if changed:
        problems.append(f"another feature config ({'; '.join(changed)})")
    if teacher.derived.input_size != derived.input_size \
            or _statistics(teacher.derived.normalizer) != _statistics(derived.normalizer):
        problems.append("other inputs (feature count or normalisation statistics)")
    if problems:
        raise CheckpointError(f"{teacher.directory}: cannot teach this run (train.distill_from): "
                              f"it has {'; '.join(problems)}")


def soft_targets(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Mean over seeds of ``softmax(logits / T)``: ``<seeds, n, classes>`` to ``<n, classes>``."""
    if temperature <= 0:
        raise ValueError(f"train.distill_temperature must be positive, got {temperature}")
    return np.asarray(jax.nn.softmax(jnp.asarray(logits, jnp.float32) / temperature, -1).mean(0))


def original_rows(train: SplitArrays, copies: int) -> np.ndarray:
    """For every training row, the row of the original clip it is a copy of: the training
    split holds the ``n`` originals, then ``copies`` waveform copies of them in the same
    order (``lstmq.pipeline.prepare_data``). Raises ValueError when the rows are not laid
    out that way (their names do not repeat in blocks of ``n``)."""
    blocks = copies + 1
    count = len(train) // blocks
    rows = np.arange(len(train)) % max(count, 1)
    if len(train) % blocks or any(train.names[i] != train.names[r] for i, r in enumerate(rows)):
        raise ValueError(f"train.distill_source=originals: the {len(train)} training rows are "
                         f"not {blocks} blocks of the same clips in the same order "
                         f"(augment.copies {copies})")
    return rows


def _leading(split: SplitArrays, count: int) -> SplitArrays:
    """The first ``count`` rows of ``split`` (the split itself when that is all of them)."""
    if count == len(split):
        return split
    return dataclasses.replace(split, x=split.x[:count], lengths=split.lengths[:count],
                               labels=split.labels[:count], speakers=split.speakers[:count],
                               names=split.names[:count])


def teacher_targets(directory: str | Path, config: Config, derived: Derived,
                    train: SplitArrays, fingerprint: str) -> np.ndarray:
    """The teacher run's soft targets for every training row: ``<float32>[n, classes]``; with
    ``train.distill_source: originals``, a waveform copy's targets are its original clip's.
    ``fingerprint``: the student's data, which the teacher must have trained on, split alike."""
    teacher = load_run(directory)
    check_teacher(teacher, config, derived, fingerprint)
    predict = seeds_predictor(model_from_config(teacher.config, teacher.derived))
    rows, read = np.arange(len(train)), len(train)  # each row's targets, the rows read
    if config.train.distill_source == "originals" and waveform_augmentation_enabled(config.augment):
        rows = original_rows(train, config.augment.copies)
        read = len(train) // (config.augment.copies + 1)  # the originals lead the split
    logits = predict_split(predict, teacher.params, _leading(train, read), 512,
                           teacher.config.train.bucket_frames)
    return soft_targets(logits, config.train.distill_temperature).astype(np.float32)[rows]


def distillation_loss(logits: jax.Array, targets: jax.Array, weight: jax.Array,
                      temperature: float) -> jax.Array:
    """Weighted sum over clips of ``T^2 * CE(targets, logits / T)``."""
    per_clip = optax.softmax_cross_entropy(logits / temperature, targets)
    return temperature ** 2 * jnp.sum(per_clip * weight)
