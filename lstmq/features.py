"""MFCC features: extraction (librosa), on-disk cache, normalisation and padding.

Window and hop are given in milliseconds, the mel range in Hz, so any sample rate works
unchanged. Defaults are chosen for speech: a 32 ms Hann window (256 samples at 8 kHz, FFT of
the next power of two) moved by a 16 ms hop (128 samples), 40 mel bands from 20 Hz to the
Nyquist frequency, 13 cepstral coefficients. librosa's default ``n_fft=2048`` would be a
256 ms window at 8 kHz, longer than the shortest FSDD clip (144 ms) and than the formant
transitions that tell digits apart. With ``center=True`` a clip of n samples gives
``1 + n // hop`` frames: 9 to 143 (median 27) on FSDD v1.0.10.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path


import joblib
import librosa
import numpy as np
import numpy.typing as npt
from tqdm.auto import tqdm

from lstmq.config import FeatureConfig
from lstmq.data import DataError, Dataset
from lstmq.download import default_cache_dir

FEATURE_VERSION = 2  # bump when extract_mfcc changes what it computes
# A new worker spends ~3 s importing and warming up librosa, the time ~6000 FSDD clips
# take serially (~0.5 ms each), so cfg.workers is an upper bound: one worker per this many
# clips. FSDD itself (3000 clips) is featurized in-process.
CLIPS_PER_WORKER = 5000
_DELTA_WIDTH = 9
# Fields that change the features; workers and cache only change how they are obtained.
_KEY_FIELDS = ("frontend", "n_mfcc", "window_ms", "hop_ms", "n_mels", "fmin", "fmax", "mel_norm", "deltas", "trim_db",
               "top_db", "min_frames", "max_frames")
_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class FrameSizes:
    """The STFT of a feature config at one sample rate, in samples (and Hz for fmax)."""

    window: int
    n_fft: int
    hop: int
    fmax: float


def frame_sizes(cfg: FeatureConfig, sample_rate: int) -> FrameSizes:
    """Window and hop in samples (rounded), FFT size (next power of two), mel ceiling.

    Raises:
      ValueError: naming the setting that gives an empty window or hop or a mel range
        outside (0, Nyquist].
    """
    window = round(cfg.window_ms * sample_rate / 1000)
    hop = round(cfg.hop_ms * sample_rate / 1000)
    if window < 2 or hop < 1:
        raise ValueError(f"features.window_ms {cfg.window_ms} / hop_ms {cfg.hop_ms} give "
                         f"{window} / {hop} samples at {sample_rate} Hz; need >= 2 / >= 1")
    nyquist = sample_rate / 2
    fmax = nyquist if cfg.fmax is None else cfg.fmax
    if not 0 <= cfg.fmin < fmax <= nyquist:
        raise ValueError(f"features.fmin {cfg.fmin} / fmax {cfg.fmax} must satisfy "
                         f"0 <= fmin < fmax <= {nyquist:g} Hz (Nyquist at {sample_rate} Hz)")
    return FrameSizes(window, 1 << (window - 1).bit_length(), hop, float(fmax))


def check_mel_bands(cfg: FeatureConfig, sample_rate: int) -> None:
    """Raises ValueError when a mel band holds no FFT bin at this rate and window (librosa
    would only warn, and the band's features would be constant)."""
    import warnings  # pylint: disable=import-outside-toplevel

    sizes = frame_sizes(cfg, sample_rate)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # librosa's "Empty filters detected"
        mel = librosa.filters.mel(sr=sample_rate, n_fft=sizes.n_fft, n_mels=cfg.n_mels,
                                  fmin=cfg.fmin, fmax=sizes.fmax, norm=mel_filter_norm(cfg))
    empty = np.flatnonzero(mel.max(axis=1) <= 0)
    if empty.size:
        raise ValueError(f"mel band(s) {empty.tolist()} of {cfg.n_mels} hold no FFT bin at "
                         f"{sample_rate} Hz with {sizes.n_fft}-point FFTs; use fewer "
                         "features.n_mels or a longer features.window_ms")


def num_features(cfg: FeatureConfig) -> int:
    """Features per frame: n_mfcc * (1 + deltas)."""
    return cfg.n_mfcc * (1 + cfg.deltas)


def mel_filter_norm(cfg: FeatureConfig) -> str | None:
    """librosa's ``norm`` for ``features.mel_norm``: slaney (each triangle divided by its
    width, equal area) or None (peak-1 triangles)."""
    if cfg.mel_norm not in ("slaney", "none"):
        raise ValueError(f"features.mel_norm must be slaney or none, got {cfg.mel_norm!r}")
    return "slaney" if cfg.mel_norm == "slaney" else None


def extract_mfcc(audio: npt.ArrayLike, sample_rate: int, cfg: FeatureConfig) -> np.ndarray:
    """MFCCs (and deltas) of one clip.

    Args:
      audio: <float32>[samples] mono.
      sample_rate: Hz.
      cfg: window, hop, mel bands, deltas, trimming and frame limits.

    Returns:
      <float32>[frames, n_mfcc * (1 + deltas)] with min_frames <= frames (<= max_frames).
    """
    if cfg.deltas not in (0, 1, 2):
        raise ValueError(f"features.deltas must be 0, 1 or 2, got {cfg.deltas}")
    if cfg.max_frames is not None and cfg.max_frames < cfg.min_frames:
        raise ValueError(f"features.max_frames {cfg.max_frames} < features.min_frames {cfg.min_frames}")
    if cfg.top_db is not None and cfg.top_db <= 0:
        raise ValueError(f"features.top_db must be positive or null, got {cfg.top_db}")
    y = np.asarray(audio, dtype=np.float32)
    if y.ndim != 1:
        raise ValueError(f"audio must be mono <float32>[samples], got shape {y.shape}")
    sizes = frame_sizes(cfg, sample_rate)
    if cfg.trim_db is not None and y.size:
        y, _ = librosa.effects.trim(y, top_db=cfg.trim_db, frame_length=sizes.n_fft,
                                    hop_length=sizes.hop)
    # Pad silence so that 1 + len // hop >= min_frames (and never hand librosa an empty clip).
    needed = max((cfg.min_frames - 1) * sizes.hop, 1)
    if y.size < needed:
        y = np.pad(y, (0, needed - y.size))
    if cfg.preemphasis:  # after the padding, as the integer front end
        y = librosa.effects.preemphasis(y, coef=cfg.preemphasis, zi=0.0)  # x[-1] = 0
    mel = librosa.feature.melspectrogram(
        y=y, sr=sample_rate, n_fft=sizes.n_fft, hop_length=sizes.hop, win_length=sizes.window,
        window="hann", center=True, n_mels=cfg.n_mels, fmin=cfg.fmin, fmax=sizes.fmax,
        norm=mel_filter_norm(cfg), power=1.0 if cfg.compression == "pcen" else 2.0,
    )
    if cfg.compression == "pcen":
        # Magnitudes scaled to int32 range, as librosa.pcen's defaults expect.
        compressed = librosa.pcen(mel * 2.0**31, sr=sample_rate, hop_length=sizes.hop,
                                  time_constant=cfg.pcen_time_ms / 1000.0)
    else:
        # The floor (top_db under the clip's peak) sets where silence and background noise sit.
        compressed = librosa.power_to_db(mel, top_db=cfg.top_db)
    mfcc = librosa.feature.mfcc(S=compressed, n_mfcc=cfg.n_mfcc)
    # mode="nearest" (edge replication, as HTK) is valid for clips shorter than the width.
    blocks = [mfcc] + [
        librosa.feature.delta(mfcc, width=_DELTA_WIDTH, order=order, mode="nearest")
        for order in range(1, cfg.deltas + 1)
    ]
    features = np.concatenate(blocks, axis=0).T
    if cfg.max_frames is not None:
        features = features[: cfg.max_frames]
    return np.ascontiguousarray(features, dtype=np.float32)


def _extract_chunk(audio: Sequence[np.ndarray], sample_rate: int, cfg: FeatureConfig) -> list[np.ndarray]:
    return [extract_mfcc(a, sample_rate, cfg) for a in audio]


def _extract_all(
    audio: Sequence[np.ndarray], sample_rate: int, cfg: FeatureConfig, workers: int, progress: bool
) -> tuple[np.ndarray, ...]:
    out: list[np.ndarray] = []
    with tqdm(total=len(audio), desc="MFCC", unit="clip", disable=not progress) as bar:
        if workers <= 1:
            for clip in audio:
                out.append(extract_mfcc(clip, sample_rate, cfg))
                bar.update()
        else:
            # joblib's loky workers are fresh interpreters (no fork of a process running
            # JAX's threads) that, unlike multiprocessing's spawn, need no __main__ guard
            # in the calling script and stay alive for the next call.
            size = -(-len(audio) // (4 * workers))
            chunks = joblib.Parallel(n_jobs=workers, backend="loky", return_as="generator")(
                joblib.delayed(_extract_chunk)(audio[i : i + size], sample_rate, cfg)
                for i in range(0, len(audio), size)
            )
            for chunk in chunks:
                out.extend(chunk)
                bar.update(len(chunk))
    return tuple(out)


def feature_cache_key(dataset: Dataset, cfg: FeatureConfig) -> str:
    """sha256 of everything that determines the features of ``dataset``."""
    fields = {name: getattr(cfg, name) for name in _KEY_FIELDS}
    if cfg.compression != "log":  # log-mel keys stay those of caches written before PCEN
        fields.update(compression=cfg.compression, pcen_time_ms=cfg.pcen_time_ms)
    if cfg.preemphasis:  # keys stay those of caches written before the option
        fields["preemphasis"] = cfg.preemphasis
    if cfg.frontend == "integer":
        from lstmq.frontend import FRONTEND_VERSION  # pylint: disable=import-outside-toplevel

        fields["frontend_version"] = FRONTEND_VERSION
        fields["normalize"] = cfg.normalize  # the per-utterance step is part of this front end
        if cfg.speech_db is not None:  # keys stay those of caches written before the option
            fields["speech_db"] = cfg.speech_db
        if cfg.noise_percentile is not None:
            fields.update(noise_percentile=cfg.noise_percentile, noise_keep_db=cfg.noise_keep_db)
    spec = dict(fields, version=FEATURE_VERSION, librosa=librosa.__version__, clips=len(dataset),
                sample_rate=dataset.sample_rate, fingerprint=dataset.fingerprint)
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def _read_cache(path: Path, key: str, count: int, width: int) -> tuple[np.ndarray, ...] | None:
    """Cached features, or None when the file is missing, stale or corrupt."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            stored_key, frames, offsets = str(stored["key"]), stored["frames"], stored["offsets"]
        valid = (
            stored_key == key and offsets.shape == (count + 1,) and offsets[0] == 0
            and np.all(np.diff(offsets) >= 0) and frames.ndim == 2 and frames.shape == (offsets[-1], width)
            and frames.dtype in (np.float32, np.int32)
        )
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        _log.warning("feature cache %s is unreadable (%s); recomputing", path, error)
        return None
    if not valid:
        _log.warning("feature cache %s does not match its key; recomputing", path)
        return None
    return tuple(np.split(frames, offsets[1:-1]))


def _write_cache(path: Path, key: str, features: Sequence[np.ndarray], width: int) -> None:
    """Write atomically (temporary file in the same folder, then rename)."""
    frames = np.concatenate(features) if features else np.zeros((0, width), np.float32)
    # float32 MFCCs, or the integer front end's int32 values, stored as they are
    offsets = np.concatenate([[0], np.cumsum([len(f) for f in features])]).astype(np.int64)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as file:
                np.savez(file, key=np.array(key), frames=frames, offsets=offsets)
            os.chmod(temporary, 0o644)  # mkstemp's 0600 would hide a shared cache
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    except OSError as error:  # a read-only cache costs time, not the run
        _log.warning("cannot write feature cache %s (%s)", path, error)


def compute_features(
    dataset: Dataset,
    cfg: FeatureConfig,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, ...]:
    """Features of every clip, from the on-disk cache when possible.

    The cache is one .npz per (feature fields, sample rate, dataset fingerprint,
    FEATURE_VERSION, librosa version) under ``cache_dir``, default ``$LSTMQ_CACHE/features``
    or the user cache. A corrupt or stale file is recomputed and replaced.

    Returns:
      One <float32>[frames, F] array per clip, in dataset order; with the integer front end
      (``features.frontend: integer``) its <int32> values (``lstmq.frontend``).
    """
    width = num_features(cfg)
    if len(dataset) == 0:
        return ()
    path = None
    if cfg.cache:
        key = feature_cache_key(dataset, cfg)
        folder = Path(cache_dir).expanduser() if cache_dir else default_cache_dir() / "features"
        path = folder / f"mfcc-{key[:24]}.npz"
        cached = _read_cache(path, key, len(dataset), width)
        if cached is not None:
            return cached
    if cfg.frontend == "integer":
        from lstmq.frontend import dataset_features  # pylint: disable=import-outside-toplevel

        features = dataset_features(dataset, cfg, progress)
    else:
        check_mel_bands(cfg, dataset.sample_rate)
        requested = cfg.workers or os.cpu_count() or 1
        workers = max(1, min(requested, len(dataset) // CLIPS_PER_WORKER))
        features = _extract_all(dataset.audio, dataset.sample_rate, cfg, workers, progress)
    for name, clip in zip(dataset.names, features):
        if not np.isfinite(clip).all():
            raise DataError(f"{dataset.source}: clip {name}: its features hold NaN or infinite "
                            "values (audio far beyond full scale?); fix or remove the clip")
    if path is not None:
        _write_cache(path, key, features, width)
    return features


def pad_batch(
    features: Sequence[np.ndarray], bucket: int = 1, max_len: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Zero-pad clips after their last frame into one array.

    Args:
      features: <float32>[frames_i, F] arrays.
      bucket: T is the longest (truncated) length rounded up to a multiple of this.
      max_len: clips longer than this are truncated to it.

    Returns:
      x: <float32>[N, T, F]; lengths: <int32>[N] true frames of each clip (the model reads
      each clip's last real frame through them, so trailing zeros are harmless).
    """
    if len(features) == 0:
        raise ValueError("pad_batch needs at least one clip")
    if bucket < 1:
        raise ValueError(f"bucket must be >= 1, got {bucket}")
    width = np.shape(features[0])[-1]
    lengths = np.array([len(f) if max_len is None else min(len(f), max_len) for f in features], np.int32)
    frames = -(-int(lengths.max()) // bucket) * bucket
    x = np.zeros((len(features), frames, width), np.float32)
    for row, (clip, length) in enumerate(zip(features, lengths)):
        x[row, :length] = clip[:length]
    return x, lengths


def length_buckets(
    lengths: npt.ArrayLike,
    batch_size: int,
    bucket: int = 1,
    rng: np.random.Generator | int | None = None,
) -> list[np.ndarray]:
    """Batches of indices of clips with similar padded length; every index exactly once.

    Clips are sorted by length rounded up to ``bucket`` (ties broken at random when ``rng``
    is given) and cut into batches of ``batch_size`` (the last may be smaller); with ``rng``
    the batch order is shuffled too, so each epoch sees different batches.

    Returns:
      <int64>[<=batch_size] index arrays.
    """
    if batch_size < 1 or bucket < 1:
        raise ValueError(f"batch_size and bucket must be >= 1, got {batch_size}, {bucket}")
    padded = -(-np.asarray(lengths, dtype=np.int64).reshape(-1) // bucket)
    if rng is None:
        order = np.argsort(padded, kind="stable")
    else:
        rng = np.random.default_rng(rng)
        shuffled = rng.permutation(padded.size)
        order = shuffled[np.argsort(padded[shuffled], kind="stable")]
    batches = [order[i : i + batch_size] for i in range(0, order.size, batch_size)]
    if rng is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches
