"""FSDD's release archives and their checksums, the user cache, and checksummed downloads
(pooch) of an archive into it."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import urllib.parse
from pathlib import Path

from lstmq.config import DataConfig
from lstmq.data_errors import DataError, DataUnavailableError
from lstmq.io import FolderLock

ENV_DATA = "LSTMQ_DATA"  # a local archive, folder or manifest instead of a download
ENV_CACHE = "LSTMQ_CACHE"
FSDD_URL = DataConfig.url
# Release archives whose bytes are known: loading one by these names checks its sha256.
KNOWN_ARCHIVES = {
    "free-spoken-digit-dataset-1.0.10.tar.gz":
        "feb479fad3a37883c3d21ed7f982281c2dd1c18d5aefd7e8a5d50f58023392aa",
    "free-spoken-digit-dataset-1.0.9.tar.gz":
        "8bc44cde129d505cbbb6b365c09f80c663f2aa77578afc634e6141a2f87100c0",
}
KNOWN_URLS = {
    FSDD_URL: KNOWN_ARCHIVES["free-spoken-digit-dataset-1.0.10.tar.gz"],
    FSDD_URL.replace("v1.0.10", "v1.0.9"): KNOWN_ARCHIVES["free-spoken-digit-dataset-1.0.9.tar.gz"],
}
log = logging.getLogger("lstmq")


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


def expected_sha256(cfg: DataConfig) -> str | None:
    """The checksum a download of ``cfg.url`` must have: data.sha256, else the known one."""
    return cfg.sha256 or KNOWN_URLS.get(cfg.url)


def download_archive(url: str, sha256: str | None, cache_dir: str | os.PathLike | None = None,
                     progress: bool = True) -> Path:
    """Download ``url`` into the cache (once) and verify its sha256.

    ``file://`` URLs and local paths are verified in place, not copied.

    Raises:
      DataError: no checksum to verify against, or naming the URL, the expected and the
        actual hash; a mismatching download is deleted, never left in the cache.
      DataUnavailableError: the download failed (no network, HTTP error).
    """
    if not sha256:
        raise DataError(f"{url}: no checksum to verify the download; set data.sha256")
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
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError(f"{cache}: the download cache cannot be created "
                        f"({error.strerror or error}); set data.cache_dir or ${ENV_CACHE} to a "
                        "writable folder") from None
    if not os.access(cache, os.W_OK | os.X_OK):
        raise DataError(f"{cache}: the download cache is not writable; set data.cache_dir or "
                        f"${ENV_CACHE} to a writable folder")
    pooch.get_logger().setLevel(logging.WARNING)  # its "Downloading ..." line: the bar says it
    try:
        with FolderLock(cache, wait=True, holder="downloading into this cache",
                        advice="wait for it"):
            _remove_partial_downloads(cache)  # one download at a time: a killed one's leftover
            try:
                path = pooch.retrieve(url, known_hash=f"sha256:{sha256}", path=cache,
                                      downloader=_noting_downloader(cache, url, progress))
            finally:  # pooch renamed or removed its file; only a killed process leaves it
                _partial_list(cache).unlink(missing_ok=True)
    except ValueError as error:
        if "does not match the known hash" not in str(error):
            raise DataUnavailableError(_unavailable(url, error)) from None
        actual = next((h for h in re.findall(r"\b[0-9a-f]{64}\b", str(error)) if h != sha256.lower()), "?")
        raise DataError(
            f"{url}: checksum mismatch: expected sha256 {sha256}, got {actual} "
            f"(the download was deleted from {cache})"
        ) from None
    except OSError as error:  # requests' exceptions are OSErrors
        raise DataUnavailableError(_unavailable(url, error)) from None
    return Path(path)


def _unavailable(url: str, error: Exception) -> str:
    reason = str(error).splitlines()[0][:160]
    return (f"cannot download {url} ({type(error).__name__}: {reason}); point lstmq at a local "
            f"copy instead: set {ENV_DATA}=/path/to/archive-or-folder or data.path "
            "(--set data.path=...)")


PARTIAL_LIST = ".lstmq-partial"  # in the cache: the temporary file of the download under way


def _partial_list(cache: Path) -> Path:
    return cache / PARTIAL_LIST


def _noting_downloader(cache: Path, url: str, progress: bool):
    """pooch's downloader for ``url``, noting the temporary file pooch streams into (beside
    the target, named ``tmp*``) before it is written: a killed download leaves that file, and
    only that file is removed afterwards, never another program's in a shared cache."""
    import pooch  # pylint: disable=import-outside-toplevel

    download = pooch.downloaders.choose_downloader(url, progressbar=progress)

    def noting(source: str, output_file: str, instance) -> None:
        _partial_list(cache).write_text(Path(output_file).name + "\n")
        download(source, output_file, instance)

    return noting


def _remove_partial_downloads(cache: Path) -> None:
    """Removes the temporary file of a download that was killed (called under the cache's
    lock, so no download is under way)."""
    noted = _partial_list(cache)
    if not noted.is_file():
        return
    for name in noted.read_text().split():
        leftover = cache / Path(name).name
        if leftover.is_file():
            log.info("removing %s, left by an interrupted download", leftover)
            leftover.unlink(missing_ok=True)
    noted.unlink(missing_ok=True)
