"""The LSTM recurrence as a C++ kernel called through ``jax.ffi`` (CPU only).

:func:`lstm_recurrence_native` is a drop-in for :func:`lstmq.recurrence.lstm_recurrence`:
same arguments and semantics, values and gradients equal within float32 rounding, one XLA
custom call per layer and direction instead of one while-loop iteration per time step.
The backward kernel also returns the recurrent weight gradient, summed over valid frames
only. Works under ``jit``, ``grad``, ``vmap`` (``vmap_method="broadcast_all"``: the kernel
loops over the batch) and ``shard_map`` (also with ``check_vma=True``, which the XLA scan
does not pass). Each call cuts the batch into fixed chunks of 16 rows and runs them on XLA's
intra-op thread pool (the calling thread takes the chunks no pool thread has started, so a
busy pool costs speed, never a deadlock); results do not depend on the thread count.

The kernel (``lstmq/kernels/lstm_recurrence.cc``) is built on first use with the system
C++ compiler (``$CXX``, c++, g++ or clang++; flags :data:`CXXFLAGS`, ``-march=native``)
into ``<cache>/kernels`` (``$LSTMQ_CACHE`` or the user cache), named by a hash of the
source, the flags, the compiler, the jax/jaxlib versions, the machine type and the CPU
model and flags, so other processes reuse it and machines sharing a cache folder do not
load each other's build. Concurrent first uses build once (a file lock; the library is
compiled under a temporary name and renamed into place).

:func:`lstm_qat_recurrence_native` is the QAT recurrence of ``lstmq.model.RecurrentStep``
with ``QATNumerics`` (fixed-point roundings of ``lstmq.recipe.fake_quant_fixed``, forward
on fake-quantized recurrent weights, straight-through gradients as AQT's), from the same
library.

Only the CPU backend is registered: on GPU/TPU, callers keep the XLA path. Without a
compiler, or when the build fails, :func:`available` is False and
:func:`unavailable_reason` says why; importing this module never raises.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp

__all__ = ["available", "unavailable_reason", "lstm_recurrence_native",
           "lstm_qat_recurrence_native", "library_path"]

SOURCE = Path(__file__).with_name("kernels") / "lstm_recurrence.cc"
CXXFLAGS = ("-std=c++17", "-O3", "-march=native", "-ffp-contract=fast", "-fno-math-errno",
            "-fPIC", "-shared", "-DNDEBUG")
FORWARD_TARGET = "lstmq_lstm_forward"
BACKWARD_TARGET = "lstmq_lstm_backward"
QAT_FORWARD_TARGET = "lstmq_lstm_qat_forward"
QAT_BACKWARD_TARGET = "lstmq_lstm_qat_backward"
RESIDUAL_SLOTS = 6  # per padded hidden block: i, f, g, o, c, tanh(c)
QAT_RESIDUAL_SLOTS = 11  # and the unrounded sigmoid(i, f, o), tanh(g), tanh(c)
BUILD_LOCK_TIMEOUT_S = 600.0
_log = logging.getLogger("lstmq")

_state_lock = threading.Lock()
_state: dict = {}  # once loaded: "library" (Path), "padding" (int), "handle"; or "error" (str)


def find_cxx() -> list[str] | None:
    """The system C++ compiler command (``$CXX``, which may carry arguments, c++, g++ or
    clang++), or None."""
    candidates = [shlex.split(os.environ.get("CXX", ""))] + [[n] for n in ("c++", "g++", "clang++")]
    for command in candidates:
        if command and shutil.which(command[0]):
            return [shutil.which(command[0]), *command[1:]]
    return None


def kernel_cache_dir() -> Path:
    """``<cache>/kernels``: ``$LSTMQ_CACHE`` or the user cache (``lstmq.data``'s rule)."""
    from lstmq.download import default_cache_dir  # pylint: disable=import-outside-toplevel

    return default_cache_dir() / "kernels"


def _cpu_identity() -> str:
    """The CPU model and feature flags (what ``-march=native`` compiles for), where known."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            lines = [line for line in info if line.startswith(("model name", "flags", "Features",
                                                                "CPU part"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor()


def library_path(compiler: list[str], folder: Path | None = None) -> Path:
    """Where the build for this source, flags, compiler, jax/jaxlib versions and CPU lives."""
    import jaxlib  # pylint: disable=import-outside-toplevel

    key = hashlib.sha256()
    for part in (SOURCE.read_text(encoding="utf-8"), " ".join(CXXFLAGS), " ".join(compiler),
                 jax.__version__, jaxlib.__version__, platform.machine(), _cpu_identity()):
        key.update(part.encode())
        key.update(b"\0")
    return (folder or kernel_cache_dir()) / f"lstm_recurrence-{key.hexdigest()[:16]}.so"


def _build(compiler: list[str], target: Path) -> None:
    """Compiles the kernel to ``target`` unless it exists: under a file lock (concurrent
    processes build once), to a temporary name in the same folder, then renamed into place.

    Raises:
      RuntimeError: the compiler failed (with its messages).
      OSError: the folder is not writable; filelock.Timeout: another build holds the lock.
    """
    from filelock import FileLock  # pylint: disable=import-outside-toplevel

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock", timeout=BUILD_LOCK_TIMEOUT_S):
        if target.exists():  # another process built it while we waited
            return
        handle, temporary = tempfile.mkstemp(prefix=target.stem + ".", suffix=".tmp",
                                             dir=target.parent)
        os.close(handle)
        try:
            command = [*compiler, *CXXFLAGS, "-isystem", jax.ffi.include_dir(), "-o", temporary,
                       str(SOURCE)]
            _log.info("building the native LSTM kernel (once per machine): %s",
                      shlex.join(command))
            started = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"{shlex.join(command)} failed:\n{done.stderr[-4000:]}")
            _log.info("built the native LSTM kernel in %.1f s: %s",
                      time.perf_counter() - started, target)
            os.chmod(temporary, 0o755)  # mkstemp made it private
            os.replace(temporary, target)
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)


def _register(target: Path) -> dict:
    library = ctypes.CDLL(str(target))
    padding = int(library.lstmq_lstm_padding())
    for name, symbol in ((FORWARD_TARGET, library.LstmqLstmForward),
                         (BACKWARD_TARGET, library.LstmqLstmBackward),
                         (QAT_FORWARD_TARGET, library.LstmqLstmQatForward),
                         (QAT_BACKWARD_TARGET, library.LstmqLstmQatBackward)):
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(symbol), platform="cpu")
    return {"library": target, "padding": padding, "handle": library}


def _load() -> dict:
    """Builds (if needed), loads and registers the kernel: the new ``_state``."""
    compiler = find_cxx()
    if compiler is None:
        return {"error": "no C++ compiler found (set $CXX)"}
    try:
        target = library_path(compiler)
        if not target.exists():
            try:
                _build(compiler, target)
            except PermissionError:  # a read-only cache: build in the temporary folder
                uid = os.getuid() if hasattr(os, "getuid") else "user"
                target = library_path(compiler,
                                      Path(tempfile.gettempdir()) / f"lstmq-kernels-{uid}")
                _build(compiler, target)
        return _register(target)
    except Exception as error:  # pylint: disable=broad-except  # never fail the caller
        return {"error": f"{type(error).__name__}: {error}"}


def _loaded() -> dict:
    with _state_lock:
        if not _state:
            _state.update(_load())
            if "error" in _state:
                _log.warning("native LSTM kernel unavailable: %s", _state["error"])
        return _state


def available() -> bool:
    """True when the kernel is built, loaded and registered for the CPU (builds on first call)."""
    return "error" not in _loaded()


def unavailable_reason() -> str | None:
    """Why :func:`available` is False (None when it is True)."""
    return _loaded().get("error")


def _padding() -> int:
    state = _loaded()
    if "error" in state:
        raise RuntimeError(f"native LSTM kernel unavailable: {state['error']}")
    return state["padding"]


def _check_inputs(z_input: jax.Array, kernel: jax.Array) -> None:
    for name, value in (("z_input", z_input), ("kernel", kernel)):
        if jnp.dtype(value.dtype) != jnp.float32:
            raise TypeError(f"lstm_recurrence_native needs float32 {name}, got {value.dtype}")
    hidden = kernel.shape[0]
    if z_input.ndim != 3 or kernel.shape != (hidden, 4 * hidden) or z_input.shape[2] != 4 * hidden:
        raise ValueError(f"need z_input [T, B, 4H] and kernel [H, 4H], got {z_input.shape} "
                         f"and {kernel.shape}")


def _varying(x) -> frozenset:
    """The shard_map axes along which ``x`` varies (empty outside shard_map, and with
    ``check_vma=False``)."""
    manual = getattr(jax.typeof(x), "manual_axis_type", None)
    return frozenset(getattr(manual, "varying", None) or ())


def _cast_varying(x, axes: frozenset):
    """``x`` typed as varying along ``axes`` (custom calls come back typed as invariant)."""
    missing = tuple(sorted(axes - _varying(x)))
    return jax.lax.pcast(x, missing, to="varying") if missing else x


def _cotangent_like(ct, axes: frozenset):
    """The cotangent of a primal varying along ``axes``: summed over the other axes it
    varies along (a replicated weight's gradient sums the shards' contributions)."""
    extra = tuple(sorted(_varying(ct) - axes))
    return _cast_varying(jax.lax.psum(ct, extra) if extra else ct, axes)


@jax.tree_util.register_static
class _Axes(tuple):
    """Static residual: the varying axes of (z_input, kernel)."""


def _forward_call(z_input, kernel, valid, target=FORWARD_TARGET, slots=RESIDUAL_SLOTS):
    """(outputs <f32>[T, B, H], residuals <f32>[T, B, slots*Hp]) from the forward kernel."""
    _check_inputs(z_input, kernel)
    time, batch, _ = z_input.shape
    hidden = kernel.shape[0]
    padded = -(-hidden // _padding()) * _padding()
    shapes = (jax.ShapeDtypeStruct((time, batch, hidden), jnp.float32),
              jax.ShapeDtypeStruct((time, batch, slots * padded), jnp.float32))
    call = jax.ffi.ffi_call(target, shapes, vmap_method="broadcast_all")
    valid = jnp.asarray(valid, jnp.bool_)
    axes = _varying(z_input) | _varying(kernel) | _varying(valid)
    return tuple(_cast_varying(x, axes) for x in call(z_input, kernel, valid))


def _backward_call(d_outputs, residuals, kernel, valid, outputs, target=BACKWARD_TARGET):
    """(dz <f32>[T, B, 4H], d_kernel <f32>[H, 4H]) from the backward kernel."""
    time, batch, hidden = d_outputs.shape
    shapes = (jax.ShapeDtypeStruct((time, batch, 4 * hidden), jnp.float32),
              jax.ShapeDtypeStruct((hidden, 4 * hidden), jnp.float32))
    call = jax.ffi.ffi_call(target, shapes, vmap_method="broadcast_all")
    args = (d_outputs.astype(jnp.float32), residuals, kernel, valid, outputs)
    axes = frozenset().union(*map(_varying, args))
    return tuple(_cast_varying(x, axes) for x in call(*args))


@jax.custom_vjp
def lstm_recurrence_native(z_input: jax.Array, kernel: jax.Array, valid: jax.Array) -> jax.Array:
    """Hidden states of an LSTM given its input projection (the C++ kernel; CPU only).

    Args:
      z_input: <float32>[time, batch, 4*hidden] input projection plus bias (gates i, f, g, o).
      kernel: <float32>[hidden, 4*hidden] recurrent weights.
      valid: <bool>[time, batch]; invalid steps keep the previous state (and get zero
        gradient; what z_input holds there is never read).

    Returns:
      <float32>[time, batch, hidden] state after each step, as
      :func:`lstmq.recurrence.lstm_recurrence`.

    Raises:
      RuntimeError: the kernel is unavailable (check :func:`available` first).
      TypeError, ValueError: inputs that are not float32 or not of these shapes.
    """
    return _forward_call(z_input, kernel, valid)[0]


def _fwd(z_input, kernel, valid):
    outputs, residuals = _forward_call(z_input, kernel, valid)
    axes = _Axes((_varying(z_input), _varying(kernel)))
    return outputs, (kernel, jnp.asarray(valid, jnp.bool_), outputs, residuals, axes)


def _bwd(saved, d_outputs):
    kernel, valid, outputs, residuals, (z_axes, kernel_axes) = saved
    dz, d_kernel = _backward_call(d_outputs, residuals, kernel, valid, outputs)
    return _cotangent_like(dz, z_axes), _cotangent_like(d_kernel, kernel_axes), None


lstm_recurrence_native.defvjp(_fwd, _bwd)


@jax.custom_vjp
def lstm_qat_recurrence_native(z_input: jax.Array, kernel: jax.Array, kernel_q: jax.Array,
                               valid: jax.Array) -> jax.Array:
    """The QAT recurrence of ``lstmq.model.RecurrentStep`` with ``QATNumerics`` (C++; CPU).

    Per valid step: ``z = z_input + h @ kernel_q``, then the fixed-point roundings of
    ``lstmq.recipe.fake_quant_fixed``: z to Q3.12, the gates and tanh(c) to Q0.15, c to
    Q4.11, h to Q0.7 (+-127); invalid steps keep (c, h). ``h`` stays on the Q0.7 grid, where
    AQT's static lhs quantization (bound 127/128) is the identity, so the caller only
    fake-quantizes the weights (``QATNumerics.recurrent_kernel``).

    Gradients are AQT's and ``jax.grad`` of the scan's: straight-through every rounding
    (the float LSTM backward at the rounded values, activation derivatives at their
    unrounded outputs); ``dh_prev = dz @ kernel^T`` with the float ``kernel`` (AQT
    ``use_fwd_quant=False``); the weight gradient ``sum h_prev^T dz`` goes to ``kernel_q``
    (AQT passes it straight through to the float weights), and none to ``kernel``.

    Args:
      z_input: <float32>[time, batch, 4*hidden] input projection plus bias.
      kernel: <float32>[hidden, 4*hidden] float recurrent weights (backward only).
      kernel_q: <float32>[hidden, 4*hidden] the same, fake-quantized (forward).
      valid: <bool>[time, batch].

    Returns:
      <float32>[time, batch, hidden] (rounded) state after each step.
    """
    _check_inputs(z_input, kernel)
    return _forward_call(z_input, kernel_q, valid, QAT_FORWARD_TARGET, QAT_RESIDUAL_SLOTS)[0]


def _qat_fwd(z_input, kernel, kernel_q, valid):
    _check_inputs(z_input, kernel)
    outputs, residuals = _forward_call(z_input, kernel_q, valid, QAT_FORWARD_TARGET,
                                       QAT_RESIDUAL_SLOTS)
    axes = _Axes((_varying(z_input), _varying(kernel_q)))
    return outputs, (kernel, jnp.asarray(valid, jnp.bool_), outputs, residuals, axes)


def _qat_bwd(saved, d_outputs):
    kernel, valid, outputs, residuals, (z_axes, kernel_axes) = saved
    dz, d_kernel = _backward_call(d_outputs, residuals, kernel, valid, outputs,
                                  QAT_BACKWARD_TARGET)
    return (_cotangent_like(dz, z_axes), jnp.zeros_like(kernel),
            _cotangent_like(d_kernel, kernel_axes), None)


lstm_qat_recurrence_native.defvjp(_qat_fwd, _qat_bwd)
