"""Free Spoken Digit Dataset: sources and file-name parsing (numpy only).

Recordings come from a release archive (WAVs read straight out of its members), a folder
of WAVs, a checksum-verified download, or TFDS ``spoken_digit``. Clips are named
``{digit}_{speaker}_{index}.wav`` and sorted by file name, so a split (``lstmq.splits``) is
a pure function of the file set and the config.

Audio policy: integer PCM becomes float32 in [-1, 1); multi-channel files are mixed down
to mono by averaging the channels (as ``librosa.load`` does); a clip at another sample rate
is resampled only when asked (``data.resample``), otherwise refused naming the file and rate.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import re
import tarfile
import urllib.parse
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath

import numpy as np
import numpy.typing as npt
import soundfile

from lstmq.config import DataConfig

NUM_CLASSES = 10
MIN_SECONDS = 0.05  # shorter clips are refused: too few frames to classify
TFDS_SAMPLE_RATE = 8000  # spoken_digit declares Audio(sample_rate=8000)
ENV_DATA = "LSTMQ_DATA"
ENV_CACHE = "LSTMQ_CACHE"
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".zip")
_WAV_FORMATS = ("WAV", "WAVEX", "RF64", "W64")  # soundfile's names for RIFF-family files
_INDEX = re.compile(r"[0-9]+")


class DataError(ValueError):
    """A data file, folder, archive, download or split request is invalid; names it."""


class MissingDependencyError(DataError, ImportError):
    """An optional dependency (TFDS) is not installed."""


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """Clips sorted by file name; every array has one row per clip.

    Attributes:
      audio: <float32>[samples] mono clips in [-1, 1] at ``sample_rate``.
      labels: <int32>[N] spoken digit.
      speakers: <str>[N] speaker name.
      indices: <int32>[N] take number from the file name (0-49 in FSDD).
      names: file names, e.g. ``7_jackson_32.wav``.
      sample_rate: Hz of every clip in ``audio``.
      fingerprint: sha256 identifying the content (archive checksum, or a hash of the
        file names and bytes); a subset gets its own.
      source: human description of where the clips came from.
    """

    audio: tuple[np.ndarray, ...]
    labels: np.ndarray
    speakers: np.ndarray
    indices: np.ndarray
    names: tuple[str, ...]
    sample_rate: int
    fingerprint: str
    source: str

    def __len__(self) -> int:
        return len(self.names)

    def subset(self, idx: npt.ArrayLike) -> Dataset:
        """The clips at ``idx`` (ints or a boolean mask), in that order."""
        idx = np.asarray(idx)
        idx = np.arange(len(self))[idx if idx.size else idx.astype(np.int64)].reshape(-1)
        digest = hashlib.sha256(self.fingerprint.encode() + idx.astype(np.int64).tobytes())
        return Dataset(
            audio=tuple(self.audio[i] for i in idx),
            labels=self.labels[idx],
            speakers=self.speakers[idx],
            indices=self.indices[idx],
            names=tuple(self.names[i] for i in idx),
            sample_rate=self.sample_rate,
            fingerprint=digest.hexdigest(),
            source=f"{self.source}, subset of {idx.size} clips",
        )


def parse_name(name: str, where: str | None = None) -> tuple[int, str, int]:
    """Split ``{digit}_{speaker}_{index}.wav`` into (digit, speaker, index).

    Raises:
      DataError: naming ``where`` (default: the name) and what is wrong.
    """
    where = where or name
    base = PurePosixPath(name).name
    stem, _, ext = base.rpartition(".")
    parts = stem.split("_")
    if ext.lower() != "wav" or len(parts) < 3:
        raise DataError(f"{where}: file name must look like {{digit}}_{{speaker}}_{{index}}.wav")
    digit, speaker, index = parts[0], "_".join(parts[1:-1]), parts[-1]
    if len(digit) != 1 or digit not in "0123456789":
        raise DataError(f"{where}: digit {digit!r} in the file name is not 0-9")
    if not speaker:
        raise DataError(f"{where}: empty speaker name in the file name")
    if not _INDEX.fullmatch(index):
        raise DataError(f"{where}: index {index!r} in the file name is not an integer")
    return int(digit), speaker, int(index)


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def default_cache_dir(override: str | os.PathLike | None = None) -> Path:
    """``override``, else ``$LSTMQ_CACHE``, else the user cache (``pooch.os_cache``)."""
    if override:
        return Path(override).expanduser()
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE]).expanduser()
    import pooch  # pylint: disable=import-outside-toplevel

    return Path(pooch.os_cache("lstmq"))


def _is_wav_member(name: str) -> bool:
    path = PurePosixPath(name)
    hidden = path.name.startswith(".") or "__MACOSX" in path.parts  # macOS resource forks
    return path.suffix.lower() == ".wav" and not hidden


def _is_archive(path: Path) -> bool:
    return path.name.lower().endswith(_ARCHIVE_SUFFIXES)


def _iter_archive(path: Path) -> Iterator[tuple[str, bytes]]:
    """(member name, bytes) of each WAV member, read without extracting."""
    try:
        if path.name.lower().endswith(".zip"):
            with zipfile.ZipFile(path) as archive:
                for info in archive.infolist():
                    if not info.is_dir() and _is_wav_member(info.filename):
                        yield info.filename, archive.read(info)
        else:
            with tarfile.open(path, "r:*") as archive:
                for member in archive:
                    if member.isfile() and _is_wav_member(member.name):
                        yield member.name, archive.extractfile(member).read()
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, zlib.error) as error:
        raise DataError(f"{path}: not a readable archive ({error})") from None


def _iter_folder(path: Path) -> Iterator[tuple[str, bytes]]:
    for file in sorted(path.rglob("*")):
        relative = file.relative_to(path).as_posix()
        if file.is_file() and _is_wav_member(relative):
            yield relative, file.read_bytes()


def _has_wavs(path: Path) -> bool:
    return any(f.is_file() and _is_wav_member(f.name) for f in path.rglob("*"))


def _convert(audio: np.ndarray, rate: int, sample_rate: int, resample: bool, where: str) -> np.ndarray:
    """Check length, mix down to mono, match the sample rate."""
    if audio.shape[0] == 0:
        raise DataError(f"{where}: empty audio (no samples)")
    if audio.shape[0] < MIN_SECONDS * rate:
        seconds = audio.shape[0] / rate
        raise DataError(f"{where}: too short ({audio.shape[0]} samples = {seconds:.3f} s < {MIN_SECONDS} s)")
    if not np.isfinite(audio).all():
        raise DataError(f"{where}: audio holds NaN or infinite samples")
    mono = audio.mean(axis=1) if audio.ndim == 2 else audio
    if rate != sample_rate:
        if not resample:
            raise DataError(
                f"{where}: sample rate {rate} Hz, expected {sample_rate} Hz "
                "(set data.resample=true to resample)"
            )
        import librosa  # pylint: disable=import-outside-toplevel

        mono = librosa.resample(mono, orig_sr=rate, target_sr=sample_rate)
    return np.ascontiguousarray(mono, dtype=np.float32)


def _decode_wav(data: bytes, where: str, sample_rate: int, resample: bool) -> np.ndarray:
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as file:
            kind, rate = file.format, file.samplerate
            audio = file.read(dtype="float32", always_2d=True)
    except (RuntimeError, ValueError, TypeError, EOFError) as error:
        raise DataError(f"{where}: not a readable WAV file ({error})") from None
    if kind not in _WAV_FORMATS:
        raise DataError(f"{where}: {kind} audio, not a WAV file")
    return _convert(audio, rate, sample_rate, resample, where)


def _assemble(
    clips: Iterable[tuple[str, str, np.ndarray]],
    sample_rate: int,
    fingerprint: str,
    source: str,
    require_all_classes: bool,
) -> Dataset:
    """Dataset from (file name, where, audio), sorted by file name."""
    by_name: dict[str, tuple[str, np.ndarray]] = {}
    for name, where, audio in clips:
        if name in by_name:
            raise DataError(f"{where}: duplicate file name (also {by_name[name][0]})")
        by_name[name] = (where, audio)
    if not by_name:
        raise DataError(f"{source}: no .wav files found")
    names = tuple(sorted(by_name))
    parsed = [parse_name(n, by_name[n][0]) for n in names]
    labels = np.array([p[0] for p in parsed], dtype=np.int32)
    missing = sorted(set(range(NUM_CLASSES)) - set(labels.tolist()))
    if require_all_classes and missing:
        raise DataError(f"{source}: no clips of digit(s) {missing}")
    return Dataset(
        audio=tuple(by_name[n][1] for n in names),
        labels=labels,
        speakers=np.array([p[1] for p in parsed], dtype=str),
        indices=np.array([p[2] for p in parsed], dtype=np.int32),
        names=names,
        sample_rate=sample_rate,
        fingerprint=fingerprint,
        source=f"{source} ({len(names)} clips)",
    )


def load_recordings(
    path: str | os.PathLike,
    sample_rate: int = 8000,
    resample: bool = False,
    require_all_classes: bool = True,
) -> Dataset:
    """Load every ``{digit}_{speaker}_{index}.wav`` of an archive or (recursively) a folder.

    Args:
      path: a .tar.gz/.tgz/.zip archive or a folder.
      sample_rate: Hz the returned audio is at.
      resample: resample clips at other rates (librosa) instead of refusing them.
      require_all_classes: refuse a set of clips that lacks a digit.

    Raises:
      DataError: naming the file (or archive member) and the problem.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        members, kind = _iter_folder(path), "folder"
    elif path.is_file() and _is_archive(path):
        members, kind = _iter_archive(path), "archive"
    elif path.exists():
        raise DataError(f"{path}: not a folder or a .tar.gz/.tgz/.zip archive")
    else:
        raise DataError(f"{path}: no such file or folder")
    raw = {}
    for member, data in members:
        where = f"{path}:{member}" if kind == "archive" else str(path / member)
        name = PurePosixPath(member).name
        if name in raw:
            raise DataError(f"{where}: duplicate file name (also {raw[name][0]})")
        parse_name(name, where)  # fail on a bad name before decoding anything
        raw[name] = (where, data)
    if kind == "archive":
        fingerprint = file_sha256(path)
    else:  # names and bytes, so a renamed or edited clip changes it
        digest = hashlib.sha256()
        for name in sorted(raw):
            digest.update(name.encode() + b"\0" + hashlib.sha256(raw[name][1]).digest())
        fingerprint = digest.hexdigest()
    clips = (
        (name, where, _decode_wav(data, where, sample_rate, resample))
        for name, (where, data) in raw.items()
    )
    return _assemble(clips, sample_rate, fingerprint, f"{kind} {path}", require_all_classes)


def locate_recordings(path: str | os.PathLike, sha256: str) -> Path:
    """The archive or folder to load for a user-given path.

    A folder holding release archives (top level) gives the archive whose sha256 is
    ``sha256``; else a folder holding WAVs is itself the answer; a file is returned as is.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such file or folder (from data.path or ${ENV_DATA})")
    if path.is_file():
        return path
    archives = sorted(p for p in path.iterdir() if p.is_file() and _is_archive(p))
    hashes = {}
    for archive in archives:
        hashes[archive.name] = file_sha256(archive)
        if hashes[archive.name] == sha256.lower():
            return archive
    if _has_wavs(path):
        return path
    if archives:
        found = ", ".join(f"{name} (sha256 {digest})" for name, digest in hashes.items())
        raise DataError(f"{path}: no archive has the expected sha256 {sha256}; found {found}")
    raise DataError(f"{path}: holds no .wav files and no .tar.gz/.tgz/.zip archive")


def download_archive(
    url: str, sha256: str, cache_dir: str | os.PathLike | None = None, progress: bool = True
) -> Path:
    """Download ``url`` into the cache (once) and verify its sha256.

    ``file://`` URLs and local paths are verified in place, not copied.

    Raises:
      DataError: naming the URL, the expected and the actual hash; a mismatching
        download is deleted, never left in the cache.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "file" or len(parts.scheme) <= 1:  # a file:// URL or a path (C: is a drive)
        local_path = Path(urllib.parse.unquote(parts.path) if parts.scheme == "file" else url).expanduser()
        if not local_path.is_file():
            raise DataError(f"{url}: no such file")
        actual = file_sha256(local_path)
        if actual != sha256.lower():
            raise DataError(f"{url}: checksum mismatch: expected sha256 {sha256}, got {actual}")
        return local_path
    import pooch  # pylint: disable=import-outside-toplevel

    cache = default_cache_dir(cache_dir)
    try:
        path = pooch.retrieve(url, known_hash=f"sha256:{sha256}", path=cache, progressbar=progress)
    except ValueError as error:
        if "does not match the known hash" not in str(error):
            raise DataError(f"{url}: cannot download ({error})") from None
        actual = next((h for h in re.findall(r"\b[0-9a-f]{64}\b", str(error)) if h != sha256.lower()), "?")
        raise DataError(
            f"{url}: checksum mismatch: expected sha256 {sha256}, got {actual} "
            f"(the download was deleted from {cache})"
        ) from None
    except OSError as error:  # requests' exceptions are OSErrors
        raise DataError(f"{url}: download failed ({error})") from None
    return Path(path)


def resolve_data_path(cfg: DataConfig) -> Path:
    """Where the recordings are: data.path, else ``$LSTMQ_DATA``, else a download.

    ``source="path"`` refuses to download; ``source="download"`` ignores local paths.
    """
    if cfg.source == "tfds":
        raise DataError("data.source is 'tfds': recordings come from TFDS (load_tfds), not a path")
    if cfg.source in ("auto", "path"):
        given = cfg.path or os.environ.get(ENV_DATA)
        if given:
            return locate_recordings(given, cfg.sha256)
        if cfg.source == "path":
            raise DataError(f"data.source is 'path' but neither data.path nor ${ENV_DATA} is set")
    return download_archive(cfg.url, cfg.sha256, cfg.cache_dir)


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
    clips, digest = [], hashlib.sha256()
    for example in tfds.as_numpy(builder.as_dataset(split="train")):
        name = example["audio/filename"]
        name = name.decode() if isinstance(name, bytes) else str(name)
        where = f"tfds spoken_digit:{name}"
        digit, _, _ = parse_name(name, where)
        if int(example["label"]) != digit:
            raise DataError(f"{where}: TFDS label {int(example['label'])} disagrees with the file name")
        samples = np.asarray(example["audio"])
        if np.issubdtype(samples.dtype, np.integer):  # int16 PCM, whatever container dtype
            samples = samples.astype(np.float32) / 32768.0
        audio = _convert(samples.astype(np.float32), TFDS_SAMPLE_RATE, cfg.sample_rate, cfg.resample, where)
        digest.update(name.encode() + b"\0" + hashlib.sha256(np.asarray(example["audio"]).tobytes()).digest())
        clips.append((name, where, audio))
    fingerprint = hashlib.sha256(b"tfds:" + digest.digest()).hexdigest()
    return _assemble(clips, cfg.sample_rate, fingerprint, "tfds spoken_digit", True)


def load_dataset(cfg: DataConfig, path: str | os.PathLike | None = None) -> Dataset:
    """Load the recordings the config names; an explicit ``path`` overrides its source."""
    if path is not None:
        location = locate_recordings(path, cfg.sha256)
    elif cfg.source == "tfds":
        return load_tfds(cfg)
    else:
        location = resolve_data_path(cfg)
    return load_recordings(location, cfg.sample_rate, cfg.resample)
