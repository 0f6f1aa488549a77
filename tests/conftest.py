"""Shared fixtures: synthetic datasets written per test (FSDD names, class folders,
manifests), and the real FSDD archive.

Real-data tests (marked ``fsdd``) take the archive from ``$LSTMQ_DATA`` (an archive, a folder
of WAVs, or a folder holding the release archives), else download it once (checksummed) into
the user cache; with neither they skip and say why.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

SAMPLE_RATE = 8000
SPEAKERS = ("alice", "bob")
TAKES = (0, 4, 5, 6, 7)  # 0 and 4 are "official" test takes, 5-7 train


def _synthetic_clip(digit: int, speaker: int, take: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """<int16>[samples]: a digit-specific tone plus noise, 0.15-0.22 s long."""
    rng = np.random.default_rng(1000 * digit + 100 * speaker + take)
    samples = int(sample_rate * (0.15 + 0.01 * take))
    t = np.arange(samples) / sample_rate
    wave = 0.4 * np.sin(2 * np.pi * (200 + 150 * digit + 20 * speaker) * t) + 0.05 * rng.standard_normal(samples)
    return np.round(np.clip(wave, -1, 1) * 32767).astype(np.int16)


@pytest.fixture
def synthetic_clip() -> Callable[..., np.ndarray]:
    """``synthetic_clip(digit, speaker, take, sample_rate=8000)``: the clips of wav_folder."""
    return _synthetic_clip


@pytest.fixture
def write_wav() -> Callable[..., Path]:
    """``write_wav(path, samples, sample_rate=8000, subtype=None, format="WAV")``."""

    def write(path: Path, samples: np.ndarray, sample_rate: int = SAMPLE_RATE, subtype: str | None = None,
              format: str = "WAV") -> Path:  # pylint: disable=redefined-builtin
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, samples, sample_rate, subtype=subtype, format=format)
        return path

    return write


@pytest.fixture
def wav_folder(tmp_path: Path, write_wav) -> Path:
    """10 digits x 2 speakers x 5 takes of 16-bit 8 kHz synthetic clips."""
    root = tmp_path / "wavs"
    for digit in range(10):
        for speaker, name in enumerate(SPEAKERS):
            for take in TAKES:
                write_wav(root / f"{digit}_{name}_{take}.wav", _synthetic_clip(digit, speaker, take))
    return root


@pytest.fixture(scope="session")
def fsdd_archive() -> Path:
    """The FSDD v1.0.10 recordings: $LSTMQ_DATA when set, else the checksummed download into
    the user cache (skips, saying why, when neither is available)."""
    from lstmq.config import DataConfig  # pylint: disable=import-outside-toplevel
    from lstmq.data import locate_recordings  # pylint: disable=import-outside-toplevel
    from lstmq.data_errors import DataUnavailableError  # pylint: disable=import-outside-toplevel
    from lstmq.download import (  # pylint: disable=import-outside-toplevel
        download_archive, expected_sha256)

    given = os.environ.get("LSTMQ_DATA")
    if given:
        return locate_recordings(given)
    try:
        return download_archive(DataConfig.url, expected_sha256(DataConfig()), progress=False)
    except DataUnavailableError as error:
        pytest.skip(f"FSDD is not available: {error}")


@pytest.fixture(scope="session")
def fsdd_dataset(fsdd_archive: Path):
    """The 3000 clips of FSDD v1.0.10, loaded once per session."""
    from lstmq.data import load_recordings  # pylint: disable=import-outside-toplevel

    dataset = load_recordings(fsdd_archive)
    assert len(dataset) == 3000, f"{fsdd_archive} is not FSDD v1.0.10"
    return dataset


def tone_clip(label_index: int, speaker: int, take: int, sample_rate: int = SAMPLE_RATE,
              seconds: float = 0.2) -> np.ndarray:
    """<int16>[samples]: a chirp whose pitch and sweep depend on the class, plus noise."""
    rng = np.random.default_rng([label_index, speaker, take, sample_rate])
    t = np.arange(int(sample_rate * (seconds + 0.01 * take))) / sample_rate
    base = 250.0 + 170.0 * label_index + 15.0 * speaker
    wave = 0.4 * np.sin(2 * np.pi * (base + 300.0 * (label_index % 3) * t) * t)
    wave += 0.03 * rng.standard_normal(t.size)
    return np.round(np.clip(wave, -1, 1) * 32767).astype(np.int16)


def _write(path: Path, samples: np.ndarray, sample_rate: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, samples, sample_rate)


@pytest.fixture
def make_folders_dataset(tmp_path: Path) -> Callable[..., Path]:
    """``make(classes, speakers=("ann", "bob", "cid"), takes=4, sample_rate=8000, lists=False)``:
    a Speech-Commands-style tree ``root/<label>/<speaker>_nohash_<take>.wav``; with ``lists``,
    the last speaker's clips are listed in testing_list.txt and the second's take 0 in
    validation_list.txt."""

    def make(classes, speakers=("ann", "bob", "cid"), takes=4, sample_rate=SAMPLE_RATE,
             lists=False, name="folders") -> Path:
        root = tmp_path / name
        for c, label in enumerate(classes):
            for s, speaker in enumerate(speakers):
                for take in range(takes):
                    _write(root / label / f"{speaker}_nohash_{take}.wav",
                           tone_clip(c, s, take, sample_rate), sample_rate)
        if lists:
            test = [f"{label}/{speakers[-1]}_nohash_{t}.wav" for label in classes
                    for t in range(takes)]
            val = [f"{label}/{speakers[1]}_nohash_0.wav" for label in classes]
            (root / "testing_list.txt").write_text("\n".join(test) + "\n")
            (root / "validation_list.txt").write_text("\n".join(val) + "\n")
        return root

    return make


@pytest.fixture
def make_manifest_dataset(tmp_path: Path) -> Callable[..., Path]:
    """``make(classes, speakers=..., takes=4, sample_rate=8000, delimiter=",")``: clips under
    ``audio/`` and a manifest (path,label,speaker,split) beside them; the last speaker is test."""

    def make(classes, speakers=("ann", "bob", "cid"), takes=4, sample_rate=SAMPLE_RATE,
             delimiter=",", name="manifest") -> Path:
        root = tmp_path / name
        rows = ["path,label,speaker,split".replace(",", delimiter)]
        for c, label in enumerate(classes):
            for s, speaker in enumerate(speakers):
                for take in range(takes):
                    relative = f"audio/{speaker}/{label}-{take}.wav"
                    _write(root / relative, tone_clip(c, s, take, sample_rate), sample_rate)
                    split = "test" if s == len(speakers) - 1 else "train"
                    rows.append(delimiter.join([relative, label, speaker, split]))
        manifest = root / ("manifest.tsv" if delimiter == "\t" else "manifest.csv")
        manifest.write_text("\n".join(rows) + "\n")
        return manifest

    return make


@pytest.fixture(scope="session", autouse=True)
def compilation_cache_of_the_session(tmp_path_factory):
    """Trainings share one persistent XLA cache in a folder of this session (unless the
    caller chose one with $LSTMQ_JAX_CACHE): the tiny models of many tests compile once."""
    if not os.environ.get("LSTMQ_JAX_CACHE"):
        os.environ["LSTMQ_JAX_CACHE"] = str(tmp_path_factory.mktemp("xla_cache"))
    yield
