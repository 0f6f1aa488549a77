"""The persistent XLA compilation cache: a second run of the same shapes skips compiling.

On by default, in ``<cache>/xla`` (``$LSTMQ_CACHE`` or the user cache); ``$LSTMQ_JAX_CACHE``
names another folder, or ``off`` disables it. JAX keys every entry by the program, the
compiler flags, the backend and the jax/jaxlib versions, so entries of other versions or
machines are never reused. The folder is capped (least recently used entries go first).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

ENV_JAX_CACHE = "LSTMQ_JAX_CACHE"
MAX_BYTES = 2 * 1024**3
MIN_COMPILE_SECONDS = 0.2  # cheaper programs are recompiled rather than stored
_log = logging.getLogger("lstmq")


def enable_persistent_cache(folder: str | os.PathLike | None = None) -> Path | None:
    """Point JAX's persistent compilation cache at lstmq's folder (once per process).

    Leaves a cache the caller configured alone. Returns the folder in use, or None when
    disabled.
    """
    import jax  # pylint: disable=import-outside-toplevel

    if jax.config.jax_compilation_cache_dir:
        return Path(jax.config.jax_compilation_cache_dir)
    setting = os.environ.get(ENV_JAX_CACHE, "")
    if setting.lower() in ("off", "0", "false", "no"):
        return None
    if setting:
        folder = Path(setting)
    elif folder is None:
        from lstmq.download import default_cache_dir  # pylint: disable=import-outside-toplevel

        folder = default_cache_dir() / "xla"
    folder = Path(folder).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # a read-only cache costs compile time, not the run
        _log.warning("no compilation cache: cannot create %s (%s)", folder, error)
        return None
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
    _log.debug("compilation cache: %s", folder)
    return folder


class CompileClock:
    """Seconds XLA spent tracing, lowering and compiling, and persistent-cache hits, since
    ``start()`` (from ``jax.monitoring``'s events; the listeners are registered once)."""

    _seconds = 0.0
    _hits = 0
    _registered = False

    @classmethod
    def _register(cls) -> None:
        import jax.monitoring  # pylint: disable=import-outside-toplevel

        def on_duration(name: str, seconds: float, **_) -> None:
            if name.startswith("/jax/core/compile/"):
                cls._seconds += seconds

        def on_event(name: str, **_) -> None:
            if name == "/jax/compilation_cache/cache_hits":
                cls._hits += 1

        jax.monitoring.register_event_duration_secs_listener(on_duration)
        jax.monitoring.register_event_listener(on_event)
        cls._registered = True

    def __init__(self) -> None:
        if not CompileClock._registered:
            CompileClock._register()
        self.start()

    def start(self) -> None:
        self._from = (CompileClock._seconds, CompileClock._hits)

    @property
    def seconds(self) -> float:
        return CompileClock._seconds - self._from[0]

    @property
    def cache_hits(self) -> int:
        return CompileClock._hits - self._from[1]
