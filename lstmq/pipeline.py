"""From a config to padded, normalised arrays: the data side of every run."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from lstmq.augment import augment_dataset, waveform_augmentation_enabled
from lstmq.config import Config
from lstmq.data import Dataset, load_dataset
from lstmq.features import Normalizer, compute_features, fit_normalizer, pad_batch
from lstmq.splits import make_split


@dataclasses.dataclass(frozen=True)
class SplitArrays:
    """One split, padded to its longest clip: ``x <float32>[n, time, features]``."""

    x: np.ndarray
    lengths: np.ndarray
    labels: np.ndarray
    speakers: np.ndarray
    names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)


@dataclasses.dataclass(frozen=True)
class PreparedData:
    train: SplitArrays
    val: SplitArrays
    test: SplitArrays
    normalizer: Normalizer
    fingerprint: str
    source: str

    @property
    def input_size(self) -> int:
        return int(self.train.x.shape[-1])


def _arrays(dataset: Dataset, features, idx: np.ndarray, normalizer: Normalizer,
            bucket: int) -> SplitArrays:
    feats = normalizer.apply([features[i] for i in idx])
    x, lengths = pad_batch(feats, bucket=bucket) if len(idx) else (
        np.zeros((0, bucket, features[0].shape[-1]), np.float32), np.zeros((0,), np.int32))
    return SplitArrays(x=x, lengths=lengths, labels=dataset.labels[idx].astype(np.int32),
                       speakers=dataset.speakers[idx], names=tuple(dataset.names[i] for i in idx))


def prepare_data(config: Config, data_path: str | Path | None = None,
                 progress: bool = True) -> PreparedData:
    """Load, split, featurize and normalise (statistics from the training split only)."""
    dataset = load_dataset(config.data, data_path)
    split = make_split(dataset, config.data)
    features = compute_features(dataset, config.features, progress=progress)
    normalizer = fit_normalizer([features[i] for i in split.train], config.features.normalize)
    bucket = config.train.bucket_frames
    train = _arrays(dataset, features, split.train, normalizer, bucket)
    if waveform_augmentation_enabled(config.augment):
        originals = dataset.subset(split.train)
        copies = [train]
        for copy in range(config.augment.copies):
            augmented = augment_dataset(originals, config.augment, config.train.seed, copy)
            extra = compute_features(augmented, config.features, progress=progress)
            copies.append(_arrays(augmented, extra, np.arange(len(augmented)), normalizer,
                                  bucket))
        train = concatenate_splits(copies)
    return PreparedData(
        train=train,
        val=_arrays(dataset, features, split.val, normalizer, bucket),
        test=_arrays(dataset, features, split.test, normalizer, bucket),
        normalizer=normalizer,
        fingerprint=dataset.fingerprint,
        source=dataset.source,
    )


def concatenate_splits(splits: list[SplitArrays]) -> SplitArrays:
    """One split made of several (padded to the longest)."""
    frames = max(s.x.shape[1] for s in splits)
    x = np.concatenate([np.pad(s.x, ((0, 0), (0, frames - s.x.shape[1]), (0, 0)))
                        for s in splits])
    return SplitArrays(x=x, lengths=np.concatenate([s.lengths for s in splits]),
                       labels=np.concatenate([s.labels for s in splits]),
                       speakers=np.concatenate([s.speakers for s in splits]),
                       names=sum((s.names for s in splits), ()))


def prepare_recordings(dataset: Dataset, config: Config, normalizer: Normalizer,
                       progress: bool = True) -> SplitArrays:
    """Featurize any set of recordings with a trained run's feature config and statistics."""
    features = compute_features(dataset, config.features, progress=progress)
    return _arrays(dataset, features, np.arange(len(dataset.labels)), normalizer,
                   config.train.bucket_frames)
