"""NumPy references of ``lstmq.fixedpoint``'s kernels: the same definitions with exact
Python integers (no limbs, no tricks), for bit-exact tests. Each raises OverflowError where
a result would leave its integer type, which the kernel's definition rules out."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from jax.typing import ArrayLike

from lstmq.fixedpoint import INT16_MAX, INT16_MIN, INT32_MAX, INT32_MIN


def _exact(fn: Callable[..., int], *arrays: ArrayLike, lo: int = INT32_MIN, hi: int = INT32_MAX) -> np.ndarray:
    """Applies an exact Python-int function elementwise; checks the result fits [lo, hi]."""
    out = np.frompyfunc(lambda *v: fn(*(int(a) for a in v)), len(arrays), 1)(*arrays)
    out = np.asarray(out, dtype=object)
    if out.size and (out.min() < lo or out.max() > hi):
        raise OverflowError("reference result outside int32")
    return out.astype(np.int64).astype(np.int32)


def _clip(v: int, bits: int = 32) -> int:
    return min(max(v, -(2 ** (bits - 1))), 2 ** (bits - 1) - 1)


def _rshift_round(x: int, s: int) -> int:
    return (2 * x + 2**s) // 2 ** (s + 1)  # floor(x / 2^s + 1/2), exact for every s >= 0


def rounding_shift_right_ref(x: ArrayLike, shift: ArrayLike) -> np.ndarray:
    return _exact(_rshift_round, x, shift)


def saturate_ref(x: ArrayLike, bits: int) -> np.ndarray:
    return _exact(lambda v: _clip(v, bits), x)


def saturating_left_shift_ref(x: ArrayLike, shift: ArrayLike) -> np.ndarray:
    return _exact(lambda v, s: _clip(v * 2**s), x, shift)


def rounding_high_mul_ref(a: ArrayLike, m: ArrayLike) -> np.ndarray:
    return _exact(lambda u, v: _clip(_rshift_round(u * v, 31)), a, m)


def requantize_ref(acc: ArrayLike, multiplier: ArrayLike, shift: ArrayLike) -> np.ndarray:
    def one(a: int, m: int, s: int) -> int:
        a = _clip(a * 2 ** max(-s, 0))
        return _rshift_round(_clip(_rshift_round(a * m, 31)), max(s, 0))

    return _exact(one, acc, multiplier, shift)


def lut_lookup_ref(z: ArrayLike, table: ArrayLike) -> np.ndarray:
    t = [int(v) for v in np.asarray(table)]

    def one(v: int) -> int:
        k, r = divmod(v + 2**15, 256)
        return t[k] + _rshift_round((t[k + 1] - t[k]) * r, 8)

    return _exact(one, z, lo=INT16_MIN, hi=INT16_MAX).astype(np.int16)


def fixed_mul_shift_ref(a: ArrayLike, b: ArrayLike, shift: ArrayLike) -> np.ndarray:
    return _exact(lambda u, v, s: _rshift_round(u * v, s), a, b, shift)


def saturating_sub_ref(a: ArrayLike, b: ArrayLike) -> np.ndarray:
    return np.clip(np.asarray(a, np.int64) - np.asarray(b, np.int64), INT32_MIN, INT32_MAX).astype(np.int32)


def saturating_add16_ref(a: ArrayLike, b: ArrayLike) -> np.ndarray:
    return _exact(lambda u, v: _clip(u + v, 16), a, b).astype(np.int16)


def rounding_divide_ref(x: ArrayLike, d: ArrayLike) -> np.ndarray:
    return _exact(lambda u, v: (2 * u + v) // (2 * v), x, d)  # floor(u / v + 1/2), v >= 1


def int_matmul_ref(x: ArrayLike, w: ArrayLike) -> np.ndarray:
    out = np.asarray(x).astype(np.int64) @ np.asarray(w).astype(np.int64)
    return _exact(lambda v: v, out)
