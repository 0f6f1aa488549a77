"""Datasets of labelled clips: where they come from and how they are loaded (numpy only).

Recordings come from a folder, an archive (.tar.gz/.tgz/.zip, verified to its end), a
CSV/TSV manifest, a checksum-verified download (FSDD by default, ``lstmq.download``) or TFDS
``spoken_digit`` (``lstmq.tfds_source``).
The layout (``lstmq.layouts``: fsdd, folders, manifest) gives each clip a string label, a
speaker and the dataset's own split; clips are sorted by name, so a split
(``lstmq.splits``) is a pure function of the file set and the config. Decoding follows
``lstmq.audio``'s policy.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from lstmq.audio import AudioError, conform, decode_wav
from lstmq.config import DataConfig
from lstmq.data_errors import DataError
from lstmq.download import (ENV_DATA, FSDD_URL, KNOWN_ARCHIVES, KNOWN_URLS, download_archive,
                            expected_sha256, file_sha256)
from lstmq.layouts import FSDD_CLASSES, Entry, LayoutError, parse_fsdd_name, read_entries
from lstmq.sources import FileTree, SourceError, is_archive, open_files, open_tree

_MANIFEST_SUFFIXES = (".csv", ".tsv")
log = logging.getLogger("lstmq")


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """Labelled clips sorted by name; every array has one row per clip.

    Attributes:
      audio: <float32>[samples] mono clips in [-1, 1] at ``sample_rate``.
      labels: <int32>[N] index into ``classes``.
      classes: class names, in the order of the model's outputs.
      speakers: <str>[N] speaker ("" where the layout does not know it).
      partition: <str>[N] the dataset's own split: train, validation, test or "".
      names: unique clip names (FSDD: file names; folders: paths under the root).
      sample_rate: Hz of every clip in ``audio``.
      fingerprint: sha256 identifying the content (archive checksum, or a hash of the
        names and bytes); a subset gets its own.
      source: human description of where the clips came from.
      layout: fsdd, folders, manifest (or tfds).
      location: the folder/archive/manifest loaded (None for TFDS or built in memory).
    """

    audio: tuple[np.ndarray, ...]
    labels: np.ndarray
    classes: tuple[str, ...]
    speakers: np.ndarray
    partition: np.ndarray
    names: tuple[str, ...]
    sample_rate: int
    fingerprint: str
    source: str
    layout: str = "fsdd"
    location: str | None = None

    def __len__(self) -> int:
        return len(self.names)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, idx: npt.ArrayLike) -> Dataset:
        """The clips at ``idx`` (ints or a boolean mask), in that order."""
        idx = np.asarray(idx)
        idx = np.arange(len(self))[idx if idx.size else idx.astype(np.int64)].reshape(-1)
        digest = hashlib.sha256(self.fingerprint.encode() + idx.astype(np.int64).tobytes())
        return dataclasses.replace(
            self, audio=tuple(self.audio[i] for i in idx), labels=self.labels[idx],
            speakers=self.speakers[idx], partition=self.partition[idx],
            names=tuple(self.names[i] for i in idx), fingerprint=digest.hexdigest(),
            source=f"{self.source}, subset of {idx.size} clips")


def parse_name(name: str, where: str | None = None) -> tuple[int, str, int]:
    """FSDD's ``{digit}_{speaker}_{index}.wav`` as (digit, speaker, index)."""
    try:
        return parse_fsdd_name(name, where)
    except LayoutError as error:
        raise DataError(str(error)) from None


def class_list(labels: Sequence[str], classes: Sequence[str] | None, where: str) -> tuple[str, ...]:
    """The class order: ``classes`` as given (every label must be in it), else sorted labels.

    Raises:
      DataError: a label outside ``classes``, duplicate class names, or fewer than 2 classes.
    """
    if classes is not None:
        classes = tuple(classes)
        if len(set(classes)) != len(classes):
            raise DataError(f"data.classes lists a class twice: {list(classes)}")
        unknown = sorted(set(labels) - set(classes))
        if unknown:
            raise DataError(f"{where}: label(s) {unknown} are not in data.classes {list(classes)}")
        return classes
    found = tuple(sorted(set(labels)))
    if len(found) < 2:
        raise DataError(f"{where}: {len(found)} class ({', '.join(found)}); a classifier needs "
                        "at least 2 (or name the classes with data.classes)")
    return found


def _fingerprint(tree: FileTree, entries: list[Entry], blobs: dict[str, bytes],
                 layout: str) -> str:
    if tree.kind == "archive":
        return file_sha256(tree.location)
    digest = hashlib.sha256()  # names, labels and bytes: a renamed or edited clip changes it
    for entry in entries:
        # a manifest's speaker column is its own (other layouts read it from the name)
        speaker = f"{entry.speaker}\0" if layout == "manifest" else ""
        digest.update(f"{entry.name}\0{entry.label}\0{entry.partition}\0{speaker}".encode()
                      + hashlib.sha256(blobs[entry.path]).digest())
    return digest.hexdigest()


def _check_archive_checksum(path: Path, sha256: str | None) -> None:
    """A known release (by file name) or an archive with a configured sha256 must match it."""
    expected = sha256 or KNOWN_ARCHIVES.get(path.name)
    if expected is None:
        return
    actual = file_sha256(path)
    if actual != expected.lower():
        what = "data.sha256" if sha256 else f"the known release {path.name}"
        raise DataError(f"{path}: checksum mismatch: {what} has sha256 {expected}, this file "
                        f"{actual} (a corrupted or altered copy)")


def _open(path: Path, sha256: str | None) -> tuple[FileTree, str | None]:
    """The tree at ``path`` and, for a manifest file, the manifest's path in it."""
    if path.is_file() and path.name.lower().endswith(_MANIFEST_SUFFIXES):
        return open_files(path.parent, [path.name]), path.name
    if path.is_file() and is_archive(path):
        _check_archive_checksum(path, sha256)
    return open_tree(path), None


def _decode_clips(tree: FileTree, entries: list[Entry], sample_rate: int | None,
                  resample: bool) -> tuple[list[np.ndarray], int, dict[str, bytes]]:
    """Decoded mono clips at one rate (``sample_rate``, or the recordings' own)."""
    blobs = {e.path: tree.read(e.path) for e in entries}
    decoded = []
    for entry in entries:
        audio, rate = decode_wav(blobs[entry.path], tree.where(entry.path))
        decoded.append((entry, audio, rate))
    if sample_rate is None:
        rates = sorted({rate for _, _, rate in decoded})
        if len(rates) > 1:
            odd = next(e for e, _, r in decoded if r != decoded[0][2])
            raise DataError(f"{tree.where(odd.path)}: sample rate differs from the other clips "
                            f"(rates found: {', '.join(f'{r} Hz' for r in rates)}); set "
                            "data.sample_rate (and data.resample=true to convert)")
        sample_rate = rates[0]
    clips = [conform(audio, rate, sample_rate, resample, tree.where(entry.path))
             for entry, audio, rate in decoded]
    return clips, sample_rate, blobs


def load_recordings(path: str | os.PathLike, format: str = "auto",  # pylint: disable=redefined-builtin
                    classes: Sequence[str] | None = None, sample_rate: int | None = None,
                    resample: bool = False, sha256: str | None = None) -> Dataset:
    """Load every labelled clip of a folder, archive or manifest.

    Args:
      path: a folder, a .tar.gz/.tgz/.zip archive, or a .csv/.tsv manifest.
      format: ``auto``, ``fsdd``, ``folders`` or ``manifest`` (``lstmq.layouts``).
      classes: the class order; labels outside it are refused. FSDD: "0".."9".
      sample_rate: Hz of the returned audio; None: the recordings' own (one for all).
      resample: resample clips at other rates (librosa) instead of refusing them.
      sha256: the archive must have this checksum (known releases are always checked).

    Raises:
      DataError: naming the file (or archive member) and the problem.
    """
    path = Path(path).expanduser()
    try:
        tree, manifest = _open(path, sha256)
        layout, entries, notes = read_entries(tree, format, manifest)
        for note in notes:
            log.warning("%s", note)
        if classes is None and layout == "fsdd":
            classes = FSDD_CLASSES
        names = class_list([e.label for e in entries], classes, str(path))
        clips, rate, blobs = _decode_clips(tree, entries, sample_rate, resample)
    except (SourceError, AudioError) as error:
        raise DataError(str(error)) from None
    index = {name: i for i, name in enumerate(names)}
    kind = "manifest" if manifest else tree.kind
    return Dataset(
        audio=tuple(clips), labels=np.array([index[e.label] for e in entries], np.int32),
        classes=names, speakers=np.array([e.speaker for e in entries], dtype=str),
        partition=np.array([e.partition for e in entries], dtype=str),
        names=tuple(e.name for e in entries), sample_rate=rate,
        fingerprint=_fingerprint(tree, entries, blobs, layout),
        source=f"{kind} {path} ({len(entries)} clips, {layout} layout)", layout=layout,
        location=str(path.absolute()))


def _contains_dataset(path: Path) -> bool:
    return any(p.suffix.lower() in (".wav", *_MANIFEST_SUFFIXES) for p in path.rglob("*")
               if p.is_file())


def locate_recordings(path: str | os.PathLike, sha256: str | None = None) -> Path:
    """The archive, folder or manifest to load for a user-given path.

    A folder holding release archives at its top level and no clips gives the archive whose
    sha256 is ``sha256`` (default: FSDD v1.0.10's), or its only archive.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such file or folder (from data.path or ${ENV_DATA})")
    if path.is_file():
        return path
    archives = sorted(p for p in path.iterdir() if p.is_file() and is_archive(p))
    if archives and not _contains_dataset(path):
        wanted = (sha256 or KNOWN_URLS[FSDD_URL]).lower()
        hashes = {}
        for archive in archives:
            hashes[archive.name] = file_sha256(archive)
            if hashes[archive.name] == wanted:
                return archive
        if len(archives) == 1 and sha256 is None:
            return archives[0]
        found = ", ".join(f"{name} (sha256 {digest})" for name, digest in hashes.items())
        raise DataError(f"{path}: no archive has the expected sha256 {wanted}; found {found}")
    if not _contains_dataset(path) and not archives:
        raise DataError(f"{path}: holds no .wav files, manifest or .tar.gz/.tgz/.zip archive")
    return path


def resolve_data_path(cfg: DataConfig, progress: bool = True) -> Path:
    """Where the recordings are: data.path, else ``$LSTMQ_DATA``, else a download (with a
    progress bar when ``progress``).

    ``source="path"`` refuses to download; ``source="download"`` ignores local paths.
    """
    if cfg.source == "tfds":
        raise DataError("data.source is 'tfds': recordings come from TFDS (load_tfds), not a path")
    if cfg.source in ("auto", "path"):
        if cfg.path is not None and not cfg.path.strip():
            raise DataError("data.path is empty; give a folder, archive or manifest, or null")
        given = cfg.path or os.environ.get(ENV_DATA)
        if given:
            return locate_recordings(given, cfg.sha256)
        if cfg.source == "path":
            raise DataError(f"data.source is 'path' but neither data.path nor ${ENV_DATA} is set")
        if cfg.format not in ("auto", "fsdd"):
            raise DataError(f"no data: set data.path or ${ENV_DATA} to your recordings "
                            f"(data.format is {cfg.format!r}; only FSDD is downloaded)")
    return download_archive(cfg.url, expected_sha256(cfg), cfg.cache_dir, progress)


def load_dataset(cfg: DataConfig, path: str | os.PathLike | None = None,
                 progress: bool = True) -> Dataset:
    """Load the recordings the config names; an explicit ``path`` overrides its source;
    ``progress``: a download's progress bar."""
    if path is None and cfg.source == "tfds":
        from lstmq.tfds_source import load_tfds  # pylint: disable=import-outside-toplevel

        return load_tfds(cfg)
    location = (locate_recordings(path, cfg.sha256) if path is not None
                else resolve_data_path(cfg, progress))
    return load_recordings(location, cfg.format, cfg.classes, cfg.sample_rate, cfg.resample,
                           cfg.sha256)


def from_arrays(audio: Sequence[np.ndarray], labels: Sequence[str], sample_rate: int,
                speakers: Sequence[str] | None = None, classes: Sequence[str] | None = None,
                names: Sequence[str] | None = None) -> Dataset:
    """A Dataset of in-memory mono clips ``<float32>[samples]`` with string labels."""
    if len(audio) != len(labels):
        raise DataError(f"{len(audio)} clips but {len(labels)} labels")
    names = tuple(names) if names is not None else tuple(f"clip_{i:06d}" for i in range(len(audio)))
    order = sorted(range(len(audio)), key=lambda i: names[i])
    found = class_list([str(labels[i]) for i in order], classes, "arrays")
    index = {name: i for i, name in enumerate(found)}
    digest = hashlib.sha256()
    clips = []
    for i in order:
        clip = np.ascontiguousarray(audio[i], np.float32)
        try:
            clips.append(conform(clip, sample_rate, sample_rate, False, names[i]))
        except AudioError as error:
            raise DataError(str(error)) from None
        digest.update(f"{names[i]}\0{labels[i]}\0".encode() + clip.tobytes())
    return Dataset(
        audio=tuple(clips), labels=np.array([index[str(labels[i])] for i in order], np.int32),
        classes=found,
        speakers=np.array([speakers[i] if speakers is not None else "" for i in order], dtype=str),
        partition=np.array([""] * len(order), dtype=str), names=tuple(names[i] for i in order),
        sample_rate=int(sample_rate), fingerprint=digest.hexdigest(),
        source=f"arrays ({len(order)} clips)", layout="arrays")
