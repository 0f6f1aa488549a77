"""Atomic writes: a result is either complete on disk or absent, never half-written."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any


def json_checksum(record: Any, own_key: str) -> str:
    """sha256 of a JSON record's canonical form (sorted keys), its own checksum ``own_key``
    left out: a record that carries the digest of its contents."""
    body = {key: value for key, value in record.items() if key != own_key}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def check_writable(path: str | os.PathLike) -> None:
    """Before any work: the folder of ``path`` can be made and written (an OSError naming
    ``path`` otherwise)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OSError(error.errno,
                      f"{path}: its folder cannot be made ({error.strerror})") from None
    try:
        with tempfile.TemporaryFile(dir=path.parent):  # what the atomic write will need
            pass
    except OSError as error:
        raise OSError(error.errno, f"{path}: cannot be written in {path.parent} "
                      f"({error.strerror})") from None


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:  # named by the file asked for, not by the temporary one
        raise OSError(error.errno, f"{path}: cannot be written ({error.strerror})") from None
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; results are meant to be shared
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | os.PathLike, value: Any) -> None:
    """Strict JSON: a NaN or infinity raises ValueError naming the file, never lands on disk."""
    try:
        text = json.dumps(value, indent=2, sort_keys=False, allow_nan=False)
    except ValueError as error:
        raise ValueError(f"{path}: refusing to write a non-finite number ({error})") from None
    atomic_write_text(path, text + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read JSON, naming the file in any error."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: not found") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None


class FolderLockedError(RuntimeError):
    """Another process holds the folder's lock."""


class FolderLock:
    """An exclusive, non-blocking lock on a folder (``<folder>/.lock``, ``fcntl.flock``).

    The lock goes with the process: a killed training leaves no stale lock behind.
    """

    def __init__(self, folder: str | os.PathLike, remove_temporary: bool = False,
                 wait: bool = False, holder: str = "using this run folder",
                 advice: str = "wait for it or choose another --out"):
        """``remove_temporary``: once locked, delete the ``.*.tmp`` files of atomic writes
        in the folder (left by a killed holder; only for folders written under the lock).
        ``wait``: block until another holder is done (saying so) instead of raising.
        ``holder``, ``advice``: what another process holding the lock is doing, and what to
        do about it, for the messages."""
        self.path = Path(folder) / ".lock"
        self._remove_temporary = remove_temporary
        self._wait = wait
        self._holder = holder
        self._advice = advice
        self._handle = None
        self._created = False

    def __enter__(self) -> "FolderLock":
        import fcntl  # pylint: disable=import-outside-toplevel

        folder = self.path.parent
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(f"{folder}: exists and is not a folder; choose another --out")
        self._created = not folder.exists()
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")  # noqa: SIM115 - held until __exit__
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            if not self._wait:
                handle.close()
                raise FolderLockedError(f"{self.path.parent}: another lstmq process is "
                                        f"{self._holder}; {self._advice}") from None
            logging.getLogger("lstmq").info("%s: another lstmq process is %s; waiting for it",
                                            self.path.parent, self._holder)
            fcntl.flock(handle, fcntl.LOCK_EX)
        self._handle = handle
        for stale in folder.glob(".*.tmp") if self._remove_temporary else ():
            if stale.is_file():
                stale.unlink(missing_ok=True)
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is None:
            return
        # A folder this lock created and nothing else filled (the work failed before writing
        # anything) is removed, not left behind holding only the lock file; the file goes
        # while the lock is still held.
        empty = self._created and [p.name for p in self.path.parent.iterdir()] == [".lock"]
        if empty:
            self.path.unlink(missing_ok=True)
        self._handle.close()  # closing releases the flock
        self._handle = None
        if empty:
            try:
                self.path.parent.rmdir()
            except OSError:  # another process began to use it meanwhile
                pass
