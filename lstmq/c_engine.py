"""The C runtime as the host's engine for integer evaluation (ctypes), bit-exact with jnp.

``CEngine`` builds the model's C library (``lstmq.c_export``) as a shared library with the
system compiler (for this CPU where it can) and calls it clip by clip; ``threads`` copies of
the library (their static buffers are their own) run on parallel threads. Without a
compiler ``c_engine`` returns None and callers fall back to the jnp path.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from lstmq.c_export import CExportError, compile_host, find_compiler, write_c_library


class CEngine:
    """Integer logits of int8 feature sequences (or int16 PCM, with the front end) in C."""

    def __init__(self, model: dict, weight_bits: int, classes: tuple[str, ...], device=None,
                 threads: int | None = None):
        self.classes = classes
        self.input_size = int(np.shape(model["lstm_0/input/kernel"])[0])
        self._folder = Path(tempfile.mkdtemp(prefix="lstmq-c-engine-"))
        write_c_library(model, self._folder, weight_bits, classes, device)
        library = build_shared_library(self._folder)
        self.threads = max(1, threads or min(2, os.cpu_count() or 1))
        self._libraries = []
        for copy in range(self.threads):  # one loaded copy per thread: separate static state
            path = library.with_name(f"liblstmq-{copy}.so")
            shutil.copy(library, path)
            lib = ctypes.CDLL(str(path))
            lib.lstmq_classify_features.restype = ctypes.c_int32
            lib.lstmq_classify_features.argtypes = [
                ctypes.POINTER(ctypes.c_int8), ctypes.c_int32, ctypes.POINTER(ctypes.c_int32)]
            if device is not None:
                lib.lstmq_classify.restype = ctypes.c_int32
                lib.lstmq_classify.argtypes = [
                    ctypes.POINTER(ctypes.c_int16), ctypes.c_int32, ctypes.POINTER(ctypes.c_int32)]
            self._libraries.append(lib)

    def _run(self, call, items) -> np.ndarray:
        out = np.zeros((len(items), len(self.classes)), np.int32)

        def work(part: int) -> None:
            lib = self._libraries[part]
            for row in range(part, len(items), self.threads):
                code = call(lib, items[row], out[row])
                if code < 0:
                    raise CExportError(f"the C runtime returned error {code} for item {row}")

        with concurrent.futures.ThreadPoolExecutor(self.threads) as pool:
            list(pool.map(work, range(self.threads)))
        return out

    def features_logits(self, features: list[np.ndarray]) -> np.ndarray:
        """<int32>[n, classes] of int8 features ``<int8>[frames, input_size]`` per clip."""
        items = [np.ascontiguousarray(f, np.int8) for f in features]

        def call(lib, x, row):
            return lib.lstmq_classify_features(
                x.ctypes.data_as(ctypes.POINTER(ctypes.c_int8)), x.shape[0],
                row.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)))

        return self._run(call, items)

    def pcm_logits(self, clips: list[np.ndarray]) -> np.ndarray:
        """<int32>[n, classes] of int16 PCM clips (a library built with the front end)."""
        items = [np.ascontiguousarray(c, np.int16) for c in clips]

        def call(lib, pcm, row):
            return lib.lstmq_classify(pcm.ctypes.data_as(ctypes.POINTER(ctypes.c_int16)),
                                      pcm.size, row.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)))

        return self._run(call, items)

    def close(self) -> None:
        shutil.rmtree(self._folder, ignore_errors=True)


def build_shared_library(folder: Path) -> Path:
    """The runtime as a shared library tuned for this CPU (``-march=native``) where the compiler
    takes it, else for the compiler's default target; integer code, so the logits are the same."""
    flags = ("-shared", "-fPIC", "-O3")
    sources = ("lstmq_runtime.c", "lstmq_model.c")
    try:
        return compile_host(folder, sources, "liblstmq.so", (*flags, "-march=native"))
    except CExportError:
        return compile_host(folder, sources, "liblstmq.so", flags)


def c_engine(model: dict, weight_bits: int, classes: tuple[str, ...], device=None,
             threads: int | None = None) -> CEngine | None:
    """A CEngine, or None when this machine has no C compiler."""
    if find_compiler() is None:
        return None
    return CEngine(model, weight_bits, classes, device, threads)
