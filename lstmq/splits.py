"""Train/validation/test splits of any Dataset, with validation always kept apart from test.

| ``data.split`` | test | validation |
|---|---|---|
| ``random`` | ``test_size`` of the clips (stratified by class when ``data.stratify``) | carved from train |
| ``official`` | the dataset's own test clips (FSDD: takes 0-4; lists; manifest column) | the dataset's own, else carved from train |
| ``speaker`` | every clip of ``test_speaker`` (one fold of leave-one-speaker-out) | carved from train, or ``val_speaker`` |
| ``speaker_disjoint`` | ``test_size`` of the speakers, drawn at random | other speakers, ``val_fraction`` of them |

"Carved" is ``val_fraction`` of the training clips, stratified by class. The training side
must hold every class; no speaker of a speaker split is on two sides.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from lstmq.config import DataConfig
from lstmq.data import DataError, Dataset


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
    """Disjoint, sorted <int64>[n] index arrays into a Dataset."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def speakers_of(dataset: Dataset) -> list[str]:
    """The dataset's speakers, sorted; refuses a dataset whose layout names none."""
    known = sorted(set(dataset.speakers.tolist()) - {""})
    if not known:
        raise DataError(f"{dataset.source}: no speaker is known for these clips (FSDD names, "
                        "'<speaker>_nohash_' file names or a manifest's speaker column give one)")
    return known


def _hold_out_speaker(dataset: Dataset, train: np.ndarray,
                      cfg: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """(train, val): every training clip of ``cfg.val_speaker`` becomes validation."""
    if cfg.split not in ("speaker", "speaker_disjoint"):
        raise DataError(f"data.val_speaker needs a speaker split, got data.split={cfg.split!r}")
    if cfg.val_speaker == cfg.test_speaker:
        raise DataError(f"data.val_speaker {cfg.val_speaker!r} is also the test speaker")
    is_val = dataset.speakers[train] == cfg.val_speaker
    if not is_val.any():
        known = sorted(set(dataset.speakers[train].tolist()))
        raise DataError(f"data.val_speaker {cfg.val_speaker!r} is not among the training "
                        f"speakers of {dataset.source}: {', '.join(known)}")
    return train[~is_val], train[is_val]


def _by_speaker(dataset: Dataset, idx: np.ndarray, fraction: float, seed: int,
                what: str) -> tuple[np.ndarray, np.ndarray]:
    """(rest, held): about ``fraction`` of the speakers of ``idx`` (at least one) held out."""
    speakers = sorted(set(dataset.speakers[idx].tolist()))
    if "" in speakers:
        raise DataError(f"{dataset.source}: a speaker-disjoint split needs every clip's speaker")
    if len(speakers) < 2:
        raise DataError(f"{dataset.source}: {len(speakers)} speaker(s) cannot be split into "
                        f"{what} and training speakers")
    count = min(len(speakers) - 1, max(1, round(fraction * len(speakers))))
    chosen = set(np.random.default_rng(seed).permutation(speakers)[:count].tolist())
    held = np.isin(dataset.speakers[idx], list(chosen))
    return idx[~held], idx[held]


def _sparse_classes(dataset: Dataset, idx: np.ndarray) -> str:
    """Names the classes with fewer than 2 clips among ``idx`` (what stratifying cannot split)."""
    counts = np.bincount(dataset.labels[idx], minlength=len(dataset.classes))
    sparse = [f"{dataset.classes[c]!r} ({counts[c]})" for c in np.flatnonzero(counts < 2)]
    return f" (classes with fewer than 2 clips: {', '.join(sparse)})" if sparse else ""


def _carve(dataset: Dataset, train: np.ndarray, cfg: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split  # pylint: disable=import-outside-toplevel

    try:
        return tuple(train_test_split(train, test_size=cfg.val_fraction,
                                      random_state=cfg.split_seed,
                                      stratify=dataset.labels[train]))
    except ValueError as error:
        raise DataError(
            f"cannot carve a stratified validation set ({cfg.val_fraction} of {train.size} "
            f"training clips): {error}{_sparse_classes(dataset, train)}; change "
            "data.val_fraction (0 disables it)"
        ) from None


def _test_side(dataset: Dataset, cfg: DataConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(train, test, the dataset's own validation clips or None)."""
    from sklearn.model_selection import train_test_split  # pylint: disable=import-outside-toplevel

    everything = np.arange(len(dataset))
    if cfg.split == "random":
        if not 0.0 < cfg.test_size < 1.0:
            raise DataError(f"data.test_size must be in (0, 1), got {cfg.test_size}")
        try:
            train, test = train_test_split(everything, test_size=cfg.test_size,
                                           random_state=cfg.split_seed,
                                           stratify=dataset.labels if cfg.stratify else None)
        except ValueError as error:
            raise DataError(f"cannot draw a stratified test set ({cfg.test_size} of "
                            f"{len(dataset)} clips): {error}"
                            f"{_sparse_classes(dataset, everything)}") from None
        return train, test, None
    if cfg.split == "official":
        own = dataset.partition
        if not (own != "").any():
            raise DataError(f"{dataset.source}: the {dataset.layout} layout defines no split of "
                            "its own (lists, a split column); use data.split=random")
        own_val = everything[own == "validation"]
        return everything[own == "train"], everything[own == "test"], own_val if own_val.size else None
    if cfg.split == "speaker":
        known = speakers_of(dataset)
        if cfg.test_speaker is None:
            raise DataError(f"data.split=speaker needs data.test_speaker, one of {', '.join(known)}")
        if cfg.test_speaker not in known:
            raise DataError(f"data.test_speaker {cfg.test_speaker!r} is not among the speakers "
                            f"of {dataset.source}: {', '.join(known)}")
        is_test = dataset.speakers == cfg.test_speaker
        return everything[~is_test], everything[is_test], None
    if cfg.split == "speaker_disjoint":
        if not 0.0 < cfg.test_size < 1.0:
            raise DataError(f"data.test_size must be in (0, 1), got {cfg.test_size}")
        train, test = _by_speaker(dataset, everything, cfg.test_size, cfg.split_seed, "test")
        return train, test, None
    raise DataError(f"data.split {cfg.split!r} is not one of random, official, speaker, "
                    "speaker_disjoint")


def make_split(dataset: Dataset, cfg: DataConfig) -> Split:
    """Train/val/test indices; validation comes from the training side only, never test.

    ``random`` with ``stratify: false`` reproduces the reference study exactly:
    ``train_test_split(arange(N), test_size, random_state=split_seed)`` over clips in name
    order.

    Raises:
      DataError: bad fractions, unknown speakers, an empty side, or a training set that
        lacks a class.
    """
    if not 0.0 <= cfg.val_fraction < 1.0:
        raise DataError(f"data.val_fraction must be in [0, 1), got {cfg.val_fraction}")
    train, test, val = _test_side(dataset, cfg)
    if test.size == 0:
        raise DataError(f"{cfg.split} split of {dataset.source} leaves no test clips")
    if cfg.val_speaker is not None:
        train, val = _hold_out_speaker(dataset, train, cfg)
    elif val is None and cfg.val_fraction > 0:
        if cfg.split == "speaker_disjoint":
            train, val = _by_speaker(dataset, train, cfg.val_fraction, cfg.split_seed + 1,
                                     "validation")
        else:
            train, val = _carve(dataset, train, cfg)
    if val is None:
        val = np.zeros(0, dtype=np.int64)
    missing = [dataset.classes[c] for c in
               sorted(set(range(dataset.num_classes)) - set(dataset.labels[train].tolist()))]
    if missing:
        raise DataError(f"{cfg.split} split of {dataset.source}: training clips lack "
                        f"class(es) {missing}")
    return Split(*(np.sort(part).astype(np.int64) for part in (train, val, test)))
