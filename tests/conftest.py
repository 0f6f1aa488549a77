"""Shared fixtures: synthetic WAV folders written per test, and the real FSDD archive.

Real-data tests take the archive from ``$LSTMQ_DATA`` (an archive, a folder of WAVs, or a
folder holding the release archives) and are marked ``fsdd``; without it they skip.
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
    """The FSDD v1.0.10 recordings named by $LSTMQ_DATA (skips when unset)."""
    given = os.environ.get("LSTMQ_DATA")
    if not given:
        pytest.skip("set LSTMQ_DATA to the FSDD v1.0.10 archive or the folder holding it")
    from lstmq.config import DataConfig  # pylint: disable=import-outside-toplevel
    from lstmq.data import locate_recordings  # pylint: disable=import-outside-toplevel

    return locate_recordings(given, DataConfig().sha256)


@pytest.fixture(scope="session")
def fsdd_dataset(fsdd_archive: Path):
    """The 3000 clips of FSDD v1.0.10, loaded once per session."""
    from lstmq.data import load_recordings  # pylint: disable=import-outside-toplevel

    dataset = load_recordings(fsdd_archive)
    assert len(dataset) == 3000, f"{fsdd_archive} is not FSDD v1.0.10"
    return dataset
