"""TFDS ``spoken_digit`` (FSDD v1.0.9) as a Dataset; tensorflow-datasets is optional."""

from __future__ import annotations

import hashlib
from pathlib import Path, PurePosixPath

import numpy as np

from lstmq.audio import AudioError, conform
from lstmq.config import DataConfig
from lstmq.data import Dataset, parse_name
from lstmq.data_errors import DataError, MissingDependencyError
from lstmq.layouts import FSDD_CLASSES

TFDS_SAMPLE_RATE = 8000  # spoken_digit declares Audio(sample_rate=8000)


def load_tfds(cfg: DataConfig) -> Dataset:
    """TFDS ``spoken_digit`` (FSDD v1.0.9, 2500 clips) as a Dataset.

    ``data.tfds_manual_dir`` goes to ``DownloadConfig(manual_dir=...)``; ``data.cache_dir``,
    if set, holds TFDS's prepared data (``<cache_dir>/tensorflow_datasets``).

    Raises:
      MissingDependencyError: tensorflow-datasets is not installed.
    """
    try:
        import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    except ImportError as error:
        raise MissingDependencyError(
            "data.source='tfds' needs tensorflow-datasets: pip install 'lstmq[tfds]'"
        ) from error
    data_dir = str(Path(cfg.cache_dir).expanduser() / "tensorflow_datasets") if cfg.cache_dir else None
    builder = tfds.builder("spoken_digit", data_dir=data_dir)
    manual = tfds.download.DownloadConfig(manual_dir=cfg.tfds_manual_dir) if cfg.tfds_manual_dir else None
    builder.download_and_prepare(download_config=manual)
    clips, digest = {}, hashlib.sha256()
    rate = cfg.sample_rate or TFDS_SAMPLE_RATE
    for example in tfds.as_numpy(builder.as_dataset(split="train")):
        name = example["audio/filename"]
        name = PurePosixPath(name.decode() if isinstance(name, bytes) else str(name)).name
        where = f"tfds spoken_digit:{name}"
        digit, speaker, index = parse_name(name, where)
        if int(example["label"]) != digit:
            raise DataError(f"{where}: TFDS label {int(example['label'])} disagrees with the file name")
        if name in clips:
            raise DataError(f"{where}: duplicate file name")
        samples = np.asarray(example["audio"])
        if np.issubdtype(samples.dtype, np.integer):  # int16 PCM, whatever container dtype
            samples = samples.astype(np.float32) / 32768.0
        try:
            audio = conform(samples.astype(np.float32), TFDS_SAMPLE_RATE, rate, cfg.resample, where)
        except AudioError as error:
            raise DataError(str(error)) from None
        digest.update(name.encode() + b"\0" + hashlib.sha256(np.asarray(example["audio"]).tobytes()).digest())
        clips[name] = (audio, digit, speaker, index)
    if not clips:
        raise DataError("tfds spoken_digit: no clips")
    names = tuple(sorted(clips))
    return Dataset(
        audio=tuple(clips[n][0] for n in names),
        labels=np.array([clips[n][1] for n in names], np.int32), classes=FSDD_CLASSES,
        speakers=np.array([clips[n][2] for n in names], dtype=str),
        partition=np.array(["test" if clips[n][3] < 5 else "train" for n in names], dtype=str),
        names=names, sample_rate=rate,
        fingerprint=hashlib.sha256(b"tfds:" + digest.digest()).hexdigest(),
        source=f"tfds spoken_digit ({len(names)} clips)", layout="fsdd")
