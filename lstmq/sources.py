"""The files of a dataset: a folder or an archive read as one tree of relative paths.

Only files a layout can use are listed: WAVs and the small text files that describe them
(``.txt`` lists, ``.csv``/``.tsv`` manifests). Archives are verified to their end before
anything in them is used: a .tar.gz is decompressed to the last byte so that gzip's CRC-32
and length are checked (``tarfile`` alone stops at the end-of-archive marker), a .zip has
every member's CRC checked. What a walk has to leave out (unreadable folders, dangling
links, audio in formats other than WAV) is returned in ``skipped``, never dropped silently.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path, PurePosixPath

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".zip")
TEXT_SUFFIXES = (".txt", ".csv", ".tsv")
OTHER_AUDIO = (".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aiff", ".aif", ".au")
_BLOCK = 1 << 20


class SourceError(ValueError):
    """A folder or archive cannot be read completely and correctly; names it."""


@dataclasses.dataclass(frozen=True)
class FileTree:
    """Relative POSIX paths of the usable files under ``location`` and how to read them."""

    location: Path
    kind: str  # "folder" or "archive"
    paths: tuple[str, ...]
    reader: Callable[[str], bytes] = dataclasses.field(repr=False)
    skipped: tuple[str, ...] = ()

    def where(self, path: str) -> str:
        """How a file is named in messages: ``archive:member`` or the file's path."""
        return f"{self.location}:{path}" if self.kind == "archive" else str(self.location / path)

    def read(self, path: str) -> bytes:
        """The bytes of one file, or a SourceError naming it."""
        try:
            return self.reader(path)
        except (KeyError, FileNotFoundError):
            raise SourceError(f"{self.where(path)}: no such file") from None
        except OSError as error:  # PermissionError, a file removed meanwhile, ...
            raise SourceError(f"{self.where(path)}: cannot be read ({error.strerror or error})"
                              ) from None

    def wavs(self) -> list[str]:
        return [p for p in self.paths if is_wav(p)]


def is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _hidden(path: PurePosixPath) -> bool:
    return any(part.startswith(".") for part in path.parts) or "__MACOSX" in path.parts


def is_wav(path: str) -> bool:
    return PurePosixPath(path).suffix.lower() == ".wav"


def _usable(path: str) -> bool:
    return PurePosixPath(path).suffix.lower() in (".wav", *TEXT_SUFFIXES)


def _other_audio_note(paths: list[str], location: Path) -> list[str]:
    other = [p for p in paths if PurePosixPath(p).suffix.lower() in OTHER_AUDIO]
    if not other:
        return []
    kinds = sorted({PurePosixPath(p).suffix.lower() for p in other})
    return [f"{location}: {len(other)} audio file(s) not in WAV format ignored "
            f"({', '.join(kinds)}; e.g. {other[0]})"]


def open_folder(root: Path) -> FileTree:
    """Every usable file under ``root``, recursively, sorted."""
    found, seen, skipped = [], [], []

    def unreadable(error: OSError) -> None:
        skipped.append(f"{error.filename}: folder cannot be read ({error.strerror}); skipped")

    for folder, dirs, files in os.walk(root, onerror=unreadable, followlinks=False):
        dirs.sort()
        base = Path(folder)
        for name in sorted(files):
            path = base / name
            relative = path.relative_to(root).as_posix()
            if _hidden(PurePosixPath(relative)):
                continue
            if not path.exists():  # a link whose target is gone
                skipped.append(f"{path}: dangling link; skipped")
                continue
            seen.append(relative)
            if _usable(relative) and path.is_file():
                found.append(relative)
        for name in dirs:
            if (base / name).is_symlink():
                skipped.append(f"{base / name}: link to a folder, not followed")
    skipped += _other_audio_note(seen, root)
    return FileTree(root, "folder", tuple(found), lambda p: (root / p).read_bytes(),
                    tuple(skipped))


def open_files(root: Path, paths: list[str]) -> FileTree:
    """A folder tree of exactly ``paths`` (relative to ``root``, or absolute), unchecked."""
    return FileTree(root, "folder", tuple(paths), lambda p: (root / p).read_bytes())


def _read_tar(path: Path) -> tuple[dict[str, bytes], list[str]]:
    members: dict[str, bytes] = {}
    names: list[str] = []
    with open(path, "rb") as raw, gzip.GzipFile(fileobj=raw) as stream:
        with tarfile.open(fileobj=stream, mode="r|") as archive:
            for member in archive:
                names.append(member.name)
                if member.isfile() and _usable(member.name) and \
                        not _hidden(PurePosixPath(member.name)):
                    members[member.name] = archive.extractfile(member).read()
        while stream.read(_BLOCK):  # to the end: gzip checks CRC-32 and length at EOF
            pass
        if raw.read(1):
            raise SourceError(f"{path}: bytes after the end of the gzip stream")
    return members, names


def _read_zip(path: Path) -> tuple[dict[str, bytes], list[str]]:
    with zipfile.ZipFile(path) as archive:
        bad = archive.testzip()
        if bad is not None:
            raise SourceError(f"{path}: member {bad} is corrupted (CRC mismatch)")
        infos = archive.infolist()
        members = {info.filename: archive.read(info) for info in infos
                   if not info.is_dir() and _usable(info.filename)
                   and not _hidden(PurePosixPath(info.filename))}
    return members, [info.filename for info in infos]


def open_archive(path: Path) -> FileTree:
    """Every usable member of a .tar.gz/.tgz/.zip, read and verified to the end.

    Raises:
      SourceError: the archive is unreadable, truncated or fails its CRC check.
    """
    try:
        if path.name.lower().endswith(".zip"):
            members, names = _read_zip(path)
        else:
            members, names = _read_tar(path)
    except SourceError:
        raise
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, zlib.error) as error:
        raise SourceError(f"{path}: corrupted or unreadable archive ({error})") from None
    return FileTree(path, "archive", tuple(sorted(members)), members.__getitem__,
                    tuple(_other_audio_note(names, path)))


def open_tree(path: Path) -> FileTree:
    """A folder or an archive as a FileTree."""
    if path.is_dir():
        return open_folder(path)
    if path.is_file() and is_archive(path):
        return open_archive(path)
    if path.exists():
        raise SourceError(f"{path}: not a folder, a .csv/.tsv manifest or a "
                          ".tar.gz/.tgz/.zip archive")
    raise SourceError(f"{path}: no such file or folder")
