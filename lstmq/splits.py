"""Train/validation/test splits of a Dataset: random (the reference study's), official
(takes 0-4 test) and by speaker, with validation carved from the training side only."""

from __future__ import annotations

import dataclasses

import numpy as np

from lstmq.config import DataConfig
from lstmq.data import NUM_CLASSES, DataError, Dataset


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
    """Disjoint, sorted <int64>[n] index arrays into a Dataset."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def _hold_out_speaker(dataset: Dataset, train: np.ndarray,
                      cfg: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """(train, val): every training clip of ``cfg.val_speaker`` becomes validation."""
    if cfg.split != "speaker":
        raise DataError(f"data.val_speaker needs data.split=speaker, got {cfg.split!r}")
    if cfg.val_speaker == cfg.test_speaker:
        raise DataError(f"data.val_speaker {cfg.val_speaker!r} is also the test speaker")
    is_val = dataset.speakers[train] == cfg.val_speaker
    if not is_val.any():
        known = sorted(set(dataset.speakers[train].tolist()))
        raise DataError(f"data.val_speaker {cfg.val_speaker!r} is not among the training "
                        f"speakers of {dataset.source}: {', '.join(known)}")
    return train[~is_val], train[is_val]


def make_split(dataset: Dataset, cfg: DataConfig) -> Split:
    """Train/val/test indices; val is carved from train only (stratified), never from test.

    ``random`` reproduces the reference study exactly: ``train_test_split(arange(N),
    test_size, random_state=split_seed)`` over clips in file-name order. ``official``:
    takes 0-4 are test. ``speaker``: one speaker's clips are test, and with ``val_speaker``
    another speaker's clips are validation (a voice unheard in training, to pick settings
    for new voices).

    Raises:
      DataError: bad fractions, unknown test speaker, an empty test set, or a training set
        that lacks a digit.
    """
    from sklearn.model_selection import train_test_split  # pylint: disable=import-outside-toplevel

    everything = np.arange(len(dataset))
    if cfg.split == "random":
        if not 0.0 < cfg.test_size < 1.0:
            raise DataError(f"data.test_size must be in (0, 1), got {cfg.test_size}")
        train, test = train_test_split(everything, test_size=cfg.test_size, random_state=cfg.split_seed)
    elif cfg.split == "official":
        is_test = dataset.indices <= 4
        train, test = everything[~is_test], everything[is_test]
    elif cfg.split == "speaker":
        known = sorted(set(dataset.speakers.tolist()))
        if cfg.test_speaker not in known:
            raise DataError(
                f"data.test_speaker {cfg.test_speaker!r} is not among the speakers of "
                f"{dataset.source}: {', '.join(known)}"
            )
        is_test = dataset.speakers == cfg.test_speaker
        train, test = everything[~is_test], everything[is_test]
    else:
        raise DataError(f"data.split {cfg.split!r} is not one of random, official, speaker")
    if test.size == 0:
        raise DataError(f"{cfg.split} split of {dataset.source} leaves no test clips")
    if not 0.0 <= cfg.val_fraction < 1.0:
        raise DataError(f"data.val_fraction must be in [0, 1), got {cfg.val_fraction}")
    val = np.zeros(0, dtype=np.int64)
    if cfg.val_speaker is not None:
        train, val = _hold_out_speaker(dataset, train, cfg)
    elif cfg.val_fraction > 0:
        try:
            train, val = train_test_split(
                train, test_size=cfg.val_fraction, random_state=cfg.split_seed, stratify=dataset.labels[train]
            )
        except ValueError as error:
            raise DataError(
                f"cannot carve a stratified validation set ({cfg.val_fraction} of {train.size} "
                f"training clips): {error}; change data.val_fraction (0 disables it)"
            ) from None
    missing = sorted(set(range(NUM_CLASSES)) - set(dataset.labels[train].tolist()))
    if missing:
        raise DataError(f"{cfg.split} split of {dataset.source}: training clips lack digit(s) {missing}")
    return Split(*(np.sort(part).astype(np.int64) for part in (train, val, test)))
