"""From a config to padded, normalised arrays: the data side of every run."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from lstmq.augment import augment_dataset, waveform_augmentation_enabled
from lstmq.config import Config, FeatureConfig
from lstmq.data import DataError, Dataset, class_list, load_dataset
from lstmq.features import compute_features, pad_batch
from lstmq.layouts import LayoutError, split_name
from lstmq.normalization import Normalizer, fit_normalizer
from lstmq.recipe import calibrate_input_clip
from lstmq.speed import vote_datasets
from lstmq.splits import make_split


@dataclasses.dataclass(frozen=True)
class SplitArrays:
    """One split, padded to its longest clip: ``x <float32>[n, time, features]``; ``votes``:
    the same clips played at each of ``features.vote_speeds`` (``lstmq.speed``), whose logits
    every prediction adds to the split's own."""

    x: np.ndarray
    lengths: np.ndarray
    labels: np.ndarray
    speakers: np.ndarray
    names: tuple[str, ...]
    votes: tuple[SplitArrays, ...] = ()
    prepared_with: dict[str, Any] | None = None  # ``provenance``: features and statistics

    def __len__(self) -> int:
        return len(self.labels)


def provenance(features: FeatureConfig, normalizer: Normalizer) -> dict[str, Any]:
    """What a split's values depend on: every feature setting of the model's input and a
    digest of the normalisation statistics (a run predicts only splits made alike)."""
    from lstmq.runs import model_input_features  # pylint: disable=import-outside-toplevel

    statistics = json.dumps(normalizer.to_dict(), sort_keys=True).encode()
    return json.loads(json.dumps({**model_input_features(features),
                                  "normalizer": hashlib.sha256(statistics).hexdigest()}))


@dataclasses.dataclass(frozen=True)
class DataInfo:
    """Where a run's clips came from: enough to load the same data again and check it."""

    source: str
    fingerprint: str
    classes: tuple[str, ...]
    sample_rate: int | None
    layout: str
    location: str | None

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "classes": list(self.classes)}

    @classmethod
    def of(cls, dataset: Dataset) -> DataInfo:
        return cls(dataset.source, dataset.fingerprint, dataset.classes, dataset.sample_rate,
                   dataset.layout, dataset.location)


@dataclasses.dataclass(frozen=True)
class PreparedData:
    train: SplitArrays
    val: SplitArrays
    test: SplitArrays
    normalizer: Normalizer
    info: DataInfo
    settings: dict[str, Any] | None = None  # ``preparation_settings`` of the config it used

    @property
    def input_size(self) -> int:
        return int(self.train.x.shape[-1])

    @property
    def classes(self) -> tuple[str, ...]:
        return self.info.classes

    @property
    def fingerprint(self) -> str:
        return self.info.fingerprint

    @property
    def source(self) -> str:
        return self.info.source


def _arrays(dataset: Dataset, features, idx: np.ndarray, normalizer: Normalizer,
            config: Config) -> SplitArrays:
    bucket = config.train.bucket_frames
    feats = normalizer.apply([features[i] for i in idx])
    x, lengths = pad_batch(feats, bucket=bucket) if len(idx) else (
        np.zeros((0, bucket, normalizer.mean.shape[0]), np.float32), np.zeros((0,), np.int32))
    return SplitArrays(x=x, lengths=lengths, labels=dataset.labels[idx].astype(np.int32),
                       speakers=dataset.speakers[idx], names=tuple(dataset.names[i] for i in idx),
                       prepared_with=provenance(config.features, normalizer))


def _with_votes(arrays: SplitArrays, dataset: Dataset, config: Config, normalizer: Normalizer,
                progress: bool) -> SplitArrays:
    """``arrays`` of ``dataset``'s clips with their speed votes (none when the config has none)."""
    if not config.features.vote_speeds or not len(arrays):
        return arrays
    votes = []
    for played in vote_datasets(dataset, config.features.vote_speeds):
        features = compute_features(played, config.features, progress=progress)
        votes.append(_arrays(played, features, np.arange(len(played)), normalizer, config))
    return dataclasses.replace(arrays, votes=tuple(votes))


def prepare_data(config: Config, data_path: str | Path | None = None,
                 progress: bool = True, dataset: Dataset | None = None) -> PreparedData:
    """Load (or take ``dataset``), split, featurize and normalise (training statistics only)."""
    dataset = dataset if dataset is not None else load_dataset(config.data, data_path, progress)
    check_class_count(config, dataset.num_classes, dataset.source)
    split = make_split(dataset, config.data)
    features = compute_features(dataset, config.features, progress=progress)
    copies = []  # (dataset, features) of each augmented copy of the training clips
    if waveform_augmentation_enabled(config.augment):
        originals = dataset.subset(split.train)
        for copy in range(config.augment.copies):
            augmented = augment_dataset(originals, config.augment, config.train.seed, copy)
            copies.append((augmented, compute_features(augmented, config.features,
                                                       progress=progress)))
    train_features = [features[i] for i in split.train]
    if config.features.frontend == "integer":
        normalizer = _integer_normalizer(config, train_features,
                                         [f for _, extra in copies for f in extra])
    else:
        normalizer = fit_normalizer(train_features, config.features.normalize)
    train = concatenate_splits([
        _arrays(dataset, features, split.train, normalizer, config),
        *(_arrays(augmented, extra, np.arange(len(augmented)), normalizer, config)
          for augmented, extra in copies)])
    # speed votes score the test clips; training validates each clip once, so the parameters
    # do not depend on features.vote_speeds
    test = _with_votes(_arrays(dataset, features, split.test, normalizer, config),
                       dataset.subset(split.test), config, normalizer, progress)
    return PreparedData(
        settings=preparation_settings(config),
        train=train,
        val=_arrays(dataset, features, split.val, normalizer, config),
        test=test,
        normalizer=normalizer,
        info=DataInfo.of(dataset),
    )


def prepare_arrays(x: np.ndarray, lengths: np.ndarray, labels, config: Config,
                   classes: tuple[str, ...] | None = None, speakers=None,
                   partition=None) -> PreparedData:
    """PreparedData of feature arrays ``x <float32>[N, T, F]`` with ``lengths <int32>[N]``
    and ``labels`` (strings, or ints indexing ``classes``, by default "0".."max" in numeric
    order): split by ``config.data`` (``official``
    reads ``partition``: train/validation/test per row, or training/val/valid/dev/testing),
    normalised by ``config.features``; ``features.max_frames`` cuts longer sequences.

    Raises:
      DataError: shapes, lengths, labels, speakers or partition that do not fit, values
        that are not finite, or settings that need audio (the integer front end, waveform
        copies).
    """
    if config.features.frontend == "integer":
        raise DataError("arrays are features, not audio: the integer front end "
                        "(features.frontend=integer) needs PCM; use features.frontend=float")
    if config.features.vote_speeds:
        raise DataError(f"features.vote_speeds={list(config.features.vote_speeds)}: speed "
                        "votes replay the audio; arrays have none (set features.vote_speeds=[])")
    if config.augment.copies:
        raise DataError(f"augment.copies={config.augment.copies}: waveform copies need audio; "
                        "arrays take the train-step augmentations (augment.freq_mask, "
                        "time_mask, mixup)")
    x, lengths = checked_sequences(x, lengths)
    count = x.shape[0]
    labels = np.asarray(labels)
    if labels.shape != (count,):
        raise DataError(f"expected labels [N] for {count} sequences, got shape {labels.shape}")
    names, order = label_names(labels, classes)
    found = class_list(names, order, "arrays")
    missing = sorted(set(found) - set(names), key=found.index)
    if classes is None and missing:  # int labels: their default classes are 0..max
        raise DataError(f"class(es) {missing} have no sequence (integer labels index the "
                        f"classes {list(found)}); pass classes=... naming the classes there are")
    index = {name: i for i, name in enumerate(found)}
    own = _row_strings("partition", partition, count)
    try:
        own = np.array([split_name(value) for value in own], dtype=object).astype(str)
    except LayoutError as error:
        raise DataError(f"partition: {error}") from None
    who = _row_strings("speakers", speakers, count)
    dataset = Dataset(
        audio=(), labels=np.array([index[n] for n in names], np.int32), classes=found,
        speakers=who, partition=own,
        names=tuple(f"row_{i:06d}" for i in range(count)), sample_rate=0,
        fingerprint=_arrays_fingerprint(x, lengths, names, who, own),
        source=f"arrays ({count} sequences)", layout="arrays")
    check_class_count(config, dataset.num_classes, dataset.source)
    split = make_split(dataset, config.data)
    keep = config.features.max_frames or x.shape[1]
    features = [x[i, :min(n, keep)] for i, n in enumerate(lengths)]
    normalizer = fit_normalizer([features[i] for i in split.train], config.features.normalize)
    info = dataclasses.replace(DataInfo.of(dataset), sample_rate=None)
    return PreparedData(*(_arrays(dataset, features, idx, normalizer, config)
                          for idx in (split.train, split.val, split.test)), normalizer, info,
                        preparation_settings(config))


def _arrays_fingerprint(x: np.ndarray, lengths: np.ndarray, names: list[str],
                        speakers: np.ndarray, partition: np.ndarray) -> str:
    """sha256 of the sequences, their labels and, when given, their speakers and partition
    (a run resumed or evaluated on other speakers or splits would mix test and training)."""
    digest = hashlib.sha256(x.tobytes() + lengths.tobytes() + "\0".join(names).encode())
    for column in (speakers, partition):
        if any(column):  # keys of arrays without the column stay as they were
            digest.update(b"\1" + "\0".join(column.tolist()).encode())
    return digest.hexdigest()


def checked_sequences(x, lengths) -> tuple[np.ndarray, np.ndarray]:
    """``(x <float32>[N, T, F], lengths <int32>[N])``, or a DataError naming what is wrong:
    rank, empty axes, lengths outside [1, T] (or not whole numbers), values that are not
    finite within each row's length (padding after it is never read)."""
    x = np.asarray(x)
    if x.ndim != 3 or 0 in x.shape:
        raise DataError(f"expected x [N, T, F] with no empty axis, got shape {x.shape}")
    if x.dtype.kind not in "fiu":
        raise DataError(f"x must hold real numbers, got dtype {x.dtype}")
    lengths = np.asarray(lengths)
    if lengths.shape != (x.shape[0],):
        raise DataError(f"expected lengths [N] for {x.shape[0]} sequences, got shape "
                        f"{lengths.shape}")
    if lengths.dtype.kind not in "iuf" or not np.all(np.isfinite(lengths)) \
            or np.any(lengths != np.round(lengths)):
        raise DataError("lengths must be whole numbers of frames")
    if lengths.min() < 1 or lengths.max() > x.shape[1]:
        raise DataError(f"lengths must be in [1, {x.shape[1]}] (the time axis of x), got "
                        f"{lengths.min():g}..{lengths.max():g}")
    lengths = lengths.astype(np.int32)
    with np.errstate(over="ignore"):
        x = x.astype(np.float32)
    valid = np.arange(x.shape[1])[None, :] < lengths[:, None]
    bad = ~np.isfinite(x).all(axis=2) & valid
    if bad.any():
        row, frame = map(int, np.argwhere(bad)[0])
        raise DataError(f"x holds NaN or infinite values in float32 (first in row {row}, "
                        f"frame {frame})")
    return x, lengths


def label_names(labels: np.ndarray, classes) -> tuple[list[str], tuple[str, ...] | None]:
    """Class names of ``labels`` and the class order they imply: strings as given (order:
    ``classes``, or None for sorted names), or ints indexing ``classes``, which default to
    the indices' own names "0", "1", ... in numeric order, so index k is always class "k"."""
    if labels.dtype.kind == "f" and np.all(np.isfinite(labels)) \
            and np.all(labels == np.round(labels)):
        labels = labels.astype(np.int64)
    if labels.dtype.kind in "iu":
        if classes is None:
            classes = tuple(str(c) for c in range(int(labels.max()) + 1))
        if labels.min() < 0 or labels.max() >= len(classes):
            raise DataError(f"integer labels must be in [0, {len(classes)}), got "
                            f"{labels.min()}..{labels.max()}")
        return [str(classes[i]) for i in labels], tuple(str(c) for c in classes)
    if labels.dtype.kind in "US" or (labels.dtype.kind == "O"
                                     and all(isinstance(v, str) for v in labels.tolist())):
        return [str(label) for label in labels], \
            None if classes is None else tuple(str(c) for c in classes)
    raise DataError(f"labels must be all strings or all whole numbers, got {labels.dtype} "
                    f"values such as {labels[:3].tolist()}")


def _row_strings(name: str, values, count: int) -> np.ndarray:
    """``<str>[count]``: one string per sequence ("" for each when ``values`` is None)."""
    if values is None:
        return np.full(count, "", dtype=str)
    values = np.asarray(values)
    if values.shape != (count,):
        raise DataError(f"expected {name} [N] for {count} sequences, got shape {values.shape}")
    return values.astype(str)


def _integer_normalizer(config: Config, train: list[np.ndarray],
                        copies: list[np.ndarray]) -> Normalizer:
    """Training statistics of the integer front end's values, and the int8 input clip: given
    (``quant.input_clip``) or calibrated on the standardised training frames (copies too)."""
    from lstmq.frontend import value_scale  # pylint: disable=import-outside-toplevel

    scale = value_scale(config.features)
    mode = "none" if config.features.normalize == "none" else "global"
    normalizer = fit_normalizer(train, mode, value_scale=scale)
    clip = config.quant.input_clip or calibrate_input_clip(
        [normalizer.standardize(f) for f in (*train, *copies)], config.quant.input_percentile)
    return normalizer.with_quantizer(clip, scale)


# Settings that never change the prepared arrays: where the recordings are read from (the
# data's fingerprint says what they are), execution (cache, workers) and the augmentations
# drawn in the train step.
_NOT_PREPARATION = {"data": ("path", "source", "cache_dir", "tfds_manual_dir"),
                    "features": ("cache", "workers"),
                    "augment": ("freq_mask", "time_mask", "mixup")}


def preparation_settings(config: Config) -> dict[str, Any]:
    """The settings ``prepare_data`` / ``prepare_arrays`` read to make the arrays, by dotted
    key (the seed of the waveform copies aside: another draw of the same augmentation)."""
    settings = {}
    for section in ("data", "features", "augment"):
        for key, value in dataclasses.asdict(getattr(config, section)).items():
            if key not in _NOT_PREPARATION.get(section, ()):
                settings[f"{section}.{key}"] = value
    settings["train.bucket_frames"] = config.train.bucket_frames
    if config.features.frontend == "integer":  # the int8 quantizer is part of the data
        settings.update({"quant.input_clip": config.quant.input_clip,
                         "quant.input_percentile": config.quant.input_percentile})
    return json.loads(json.dumps(settings))  # tuples as lists, as a record holds them


def check_prepared_for(data: PreparedData, config: Config) -> None:
    """Data prepared under other settings than ``config``'s would train one config on
    another's features (and record the wrong one): refuse it, naming the keys."""
    if data.settings is None:
        return
    wanted = preparation_settings(config)
    differing = sorted(key for key in wanted.keys() | data.settings.keys()
                       if wanted.get(key) != data.settings.get(key))
    if differing:
        shown = ", ".join(f"{key} (prepared {data.settings.get(key)!r}, config "
                          f"{wanted.get(key)!r})" for key in differing[:4])
        raise DataError(f"the data was prepared under other settings than this config: {shown}"
                        f"{' ...' if len(differing) > 4 else ''}; prepare it again with this "
                        "config (lstmq.prepare_data(config))")


def check_class_count(config: Config, count: int, source: str) -> None:
    """``model.num_classes``, when given, must be the data's class count."""
    given = config.model.num_classes
    if given is not None and given != count:
        raise DataError(f"model.num_classes is {given} but {source} has {count} classes; "
                        "leave model.num_classes unset (null) to take the data's")


def concatenate_splits(splits: list[SplitArrays]) -> SplitArrays:
    """One split made of several (padded to the longest); a single split is returned as is."""
    if len(splits) == 1:
        return splits[0]
    frames = max(s.x.shape[1] for s in splits)
    x = np.concatenate([np.pad(s.x, ((0, 0), (0, frames - s.x.shape[1]), (0, 0)))
                        for s in splits])
    made = [s.prepared_with for s in splits]
    return SplitArrays(x=x, lengths=np.concatenate([s.lengths for s in splits]),
                       labels=np.concatenate([s.labels for s in splits]),
                       speakers=np.concatenate([s.speakers for s in splits]),
                       names=sum((s.names for s in splits), ()),
                       prepared_with=made[0] if all(m == made[0] for m in made) else None)


def prepare_recordings(dataset: Dataset, config: Config, normalizer: Normalizer,
                       progress: bool = True) -> SplitArrays:
    """Featurize any set of recordings with a trained run's feature config and statistics."""
    features = compute_features(dataset, config.features, progress=progress)
    return _with_votes(_arrays(dataset, features, np.arange(len(dataset.labels)), normalizer,
                               config), dataset, config, normalizer, progress)
