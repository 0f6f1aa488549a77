"""Integer kernels of the lstmq numeric recipe (docs/numerics.md, "Kernels").

Every ``jnp`` kernel computes on int8/int16/int32 values only (it works with x64 disabled
and creates no int64, unsigned or float value). Each has a NumPy reference ``*_ref`` in
``lstmq.fixedpoint_reference`` that evaluates the same definition independently with exact
Python/int64 integers, so tests can compare bit for bit. Offline helpers (``quantize_multiplier``, ``make_lut``,
``accumulator_bound``) run on the host in float64/Python ints and are never traced.

| kernel | result | rounding | saturation |
|---|---|---|---|
| rounding_shift_right(x, s) | floor(x / 2^s + 1/2) | half up | none (cannot overflow) |
| saturating_left_shift(x, s) | clip(x * 2^s) | exact | int32 |
| rounding_high_mul(a, m) | floor(a * m / 2^31 + 1/2) | half up | int32 (a = m = -2^31) |
| requantize(acc, m, s) | rsr(rhm(sls(acc, max(-s, 0)), m), max(s, 0)) | half up (twice if s > 0) | int32 |
| lut_lookup(z, T) | T[k] + rsr((T[k+1] - T[k]) * r, 8) | half up | none (stays in [T[k], T[k+1]]) |
| fixed_mul_shift(a, b, s) | rsr(a * b, s), exact int32 product | half up | none (abs(a*b) <= 2^30) |
| saturating_add16(a, b) | clip(a + b) | exact | int16 |
| saturating_sub(a, b) | clip(a - b) | exact | int32 |
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT16_MIN, INT16_MAX = -(2**15), 2**15 - 1
_ALLOWED_INPUTS = frozenset(np.dtype(d) for d in ("int8", "int16", "int32", "uint8", "uint16"))


def _int32(x: ArrayLike, max_bits: int = 32) -> jax.Array:
    """Casts an integer array of at most ``max_bits`` signed bits to int32; refuses the rest."""
    dtype = getattr(x, "dtype", None)
    if dtype is None:  # a Python int: jnp makes it int32 and raises if it does not fit
        return jnp.asarray(x, dtype=jnp.int32)
    dtype = np.dtype(dtype)
    if dtype not in _ALLOWED_INPUTS or dtype.itemsize * 8 + (dtype.kind == "u") > max_bits:
        raise TypeError(f"integer kernel got {dtype}; expected a signed integer of <= {max_bits} bits")
    return jnp.asarray(x).astype(jnp.int32)


def _shift(shift: ArrayLike) -> jax.Array:
    if isinstance(shift, int) and shift < 0:
        raise ValueError(f"shift must be >= 0, got {shift}")
    return _int32(shift)


def rounding_shift_right(x: ArrayLike, shift: ArrayLike) -> jax.Array:
    """``floor(x / 2^shift + 1/2)`` (round half up); ``shift`` 0 is the identity.

    Args:
      x: <int8|int16|int32>[...] values.
      shift: int or <int32>[...] broadcastable to ``x``, >= 0 (any size; >= 32 gives 0; an
        array's negative entries give ``x``, as the C runtime's ``rsr`` does).

    Returns:
      <int32>[...]; computed as ``(x >> s) + bit(s-1) of x``, so it cannot overflow.
    """
    x, s = _int32(x), _shift(shift)
    if isinstance(shift, int):  # static shift: the same formula without the selects
        if shift == 0 or shift >= 32:
            return x if shift == 0 else jnp.zeros_like(x)
        return (x >> shift) + ((x >> (shift - 1)) & 1)
    rounding_bit = (x >> jnp.clip(s - 1, 0, 30)) & 1
    y = (x >> jnp.clip(s, 0, 31)) + rounding_bit
    return jnp.where(s <= 0, x, jnp.where(s >= 32, 0, y))


def saturate(x: ArrayLike, bits: int) -> jax.Array:
    """Clips ``x`` to the signed ``bits``-bit range ``[-2^(bits-1), 2^(bits-1) - 1]``.

    Returns <int32>[...]; callers cast to the narrow dtype.
    """
    if not 1 <= bits <= 32:
        raise ValueError(f"bits must be in [1, 32], got {bits}")
    return jnp.clip(_int32(x), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)


def saturating_left_shift(x: ArrayLike, shift: ArrayLike) -> jax.Array:
    """``clip(x * 2^shift)`` to int32, for ``shift`` >= 0 (any size). Returns <int32>[...]."""
    x, s = _int32(x), _shift(shift)
    s = jnp.minimum(s, 31)  # exact: for s >= 31 every nonzero x saturates, and -1 << 31 == INT32_MIN
    y = jnp.where(x > (INT32_MAX >> s), INT32_MAX, x << s)
    return jnp.where(x < (INT32_MIN >> s), INT32_MIN, y)


def _split16(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Balanced 16-bit limbs: ``x = hi * 2^16 + lo``, lo in [-2^15, 2^15), hi in [-2^15, 2^15]."""
    lo = ((x & 0xFFFF) ^ 0x8000) - 0x8000
    return rounding_shift_right(x, 16), lo


def rounding_high_mul(a: ArrayLike, m: ArrayLike) -> jax.Array:
    """``floor(a * m / 2^31 + 1/2)`` exactly, with int32 arithmetic only.

    The 62-bit product is built from balanced 16-bit limbs (every limb product is at most
    2^30 in magnitude) with explicit carries. The only result outside int32 is
    ``a = m = -2^31`` (2^31), which saturates to INT32_MAX.

    Args:
      a: <int8|int16|int32>[...].
      m: <int32>[...] broadcastable to ``a`` (typically a multiplier in [2^30, 2^31)).

    Returns:
      <int32>[...].
    """
    a, m = _int32(a), _int32(m)
    a_hi, a_lo = _split16(a)
    m_hi, m_lo = _split16(m)
    hh, hl, lh, ll = a_hi * m_hi, a_hi * m_lo, a_lo * m_hi, a_lo * m_lo
    # a*m = hh*2^32 + (hl + lh)*2^16 + ll; write it as t2*2^32 + d1*2^16 + d0, d0, d1 in [0, 2^16).
    t1 = (hl & 0xFFFF) + (lh & 0xFFFF) + (ll >> 16)
    d1 = t1 & 0xFFFF
    t2 = hh + (hl >> 16) + (lh >> 16) + (t1 >> 16)  # floor(a*m / 2^32), in [-2^30, 2^30]
    # floor((a*m + 2^30) / 2^31) = 2*t2 + floor((d1 + 2^14) / 2^15); d0 < 2^16 cannot carry.
    saturated = t2 == 2**30
    result = 2 * jnp.where(saturated, 0, t2) + ((d1 + 2**14) >> 15)
    return jnp.where(saturated, INT32_MAX, result)


def requantize(acc: ArrayLike, multiplier: ArrayLike, shift: ArrayLike) -> jax.Array:
    """Scales ``acc`` by ``multiplier * 2^-(31 + shift)`` (see ``quantize_multiplier``).

    ``shift >= 0``: ``rounding_shift_right(rounding_high_mul(acc, m), shift)``;
    ``shift < 0``: ``rounding_high_mul(saturating_left_shift(acc, -shift), m)``, as TFLite
    does. With ``real = m * 2^-(31 + shift)``: for ``shift <= 0`` (unsaturated) the result is
    exactly ``floor(acc * real + 1/2)``; for ``shift > 0`` there are two half-up roundings
    and the result is within 3/4 of ``acc * real``, so at most 1 from single rounding.

    Args:
      acc: <int32>[..., channels] accumulators.
      multiplier: int or <int32>[channels], in [2^30, 2^31) (0 gives 0).
      shift: int or <int32>[channels], in [-31, 31] as ``quantize_multiplier`` gives.

    Returns:
      <int32>[..., channels].
    """
    if isinstance(shift, int):
        left, right = max(-shift, 0), max(shift, 0)
    else:
        s = _shift(shift)
        left, right = jnp.maximum(-s, 0), jnp.maximum(s, 0)
    return rounding_shift_right(rounding_high_mul(saturating_left_shift(acc, left), multiplier), right)


def lut_lookup(z: jax.Array, table: ArrayLike) -> jax.Array:
    """Interpolates a 257-entry int16 table at Q3.12 inputs (256 segments, 8-bit fraction).

    ``u = z + 2^15``, ``k = u >> 8``, ``r = u & 255``,
    ``y = T[k] + rounding_shift_right((T[k+1] - T[k]) * r, 8)``.

    Args:
      z: <int16>[...] in Q3.12.
      table: <int16>[257], e.g. ``SIGMOID_LUT``.

    Returns:
      <int16>[...]; lies between ``T[k]`` and ``T[k+1]``, so it needs no saturation.
    """
    if getattr(z, "dtype", None) != np.int16:
        raise TypeError(f"lut_lookup needs int16 input, got {getattr(z, 'dtype', type(z))}")
    table = jnp.asarray(table)
    if table.dtype != jnp.int16 or table.shape != (257,):
        raise TypeError(f"lut_lookup needs an <int16>[257] table, got {table.dtype}{list(table.shape)}")
    t = table.astype(jnp.int32)
    u = z.astype(jnp.int32) + 2**15
    k, r = u >> 8, u & 255
    lo = t[k]
    return (lo + rounding_shift_right((t[k + 1] - lo) * r, 8)).astype(jnp.int16)


def fixed_mul_shift(a: ArrayLike, b: ArrayLike, shift: ArrayLike) -> jax.Array:
    """``rounding_shift_right(a * b, shift)`` for int8/int16 operands, product in int32.

    ``|a * b| <= 2^30`` for int16 operands, so the int32 product never overflows. The one
    product that does not fit back into int16 after a Q15 shift is ``(-2^15)^2 >> 15 =
    2^15``: the result stays int32 and callers saturate when they narrow (``sat16``/``sat8``).

    Returns:
      <int32>[...].
    """
    return rounding_shift_right(_int32(a, max_bits=16) * _int32(b, max_bits=16), shift)


def saturating_sub(a: ArrayLike, b: ArrayLike) -> jax.Array:
    """``clip(a - b)`` to int32 for int32 operands, without an intermediate wider type."""
    a, b = _int32(a), _int32(b)
    low = (b > 0) & (a < INT32_MIN + jnp.maximum(b, 0))
    high = (b < 0) & (a > INT32_MAX + jnp.minimum(b, 0))
    return jnp.where(low, INT32_MIN, jnp.where(high, INT32_MAX, a - b))


def saturating_add16(a: ArrayLike, b: ArrayLike) -> jax.Array:
    """``clip(a + b)`` to int16 for int8/int16 operands. Returns <int16>[...]."""
    return saturate(_int32(a, max_bits=16) + _int32(b, max_bits=16), 16).astype(jnp.int16)


def rounding_divide(x: ArrayLike, d: ArrayLike) -> jax.Array:
    """``floor(x / d + 1/2)`` (round half up) for int32 ``x`` and ``1 <= d < 2^30``.

    Computed from the floor quotient and its remainder (``0 <= r < d``), so no intermediate
    leaves int32 whatever ``x`` is. Returns <int32>[...].
    """
    x, d = _int32(x), _int32(d)
    q = jnp.floor_divide(x, d)
    r = x - q * d
    return q + (2 * r >= d).astype(jnp.int32)


def int_matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    """``<int8>[..., in] @ <int8>[in, out] -> <int32>[..., out]`` with int32 accumulation.

    Exact as long as ``check_accumulator_fits(w)`` holds for the input range.
    """
    if x.dtype != jnp.int8 or w.dtype != jnp.int8:
        raise TypeError(f"int_matmul needs int8 operands, got {x.dtype} and {w.dtype}")
    dims = (((x.ndim - 1,), (0,)), ((), ()))
    return jax.lax.dot_general(x, w, dims, preferred_element_type=jnp.int32)


# ----------------------------------------------------------------------------------------
# Offline helpers (host, float64 / Python ints).


def quantize_multiplier(real: float) -> tuple[int, int]:
    """Finds ``(m, shift)`` with ``real ~= m * 2^-(31 + shift)``, ``m`` in [2^30, 2^31).

    ``m`` is rounded to nearest, so the relative error is at most 2^-31 and ``shift`` lies in
    [-31, 31]. Reals that ``requantize`` cannot tell from 0 map to ``(0, 0)``, whose
    ``requantize`` is exactly 0: ``real == 0`` (a channel whose weights are all zero) and
    ``0 < real < 2^-32`` (``|acc * real| < 1/2`` for every int32 ``acc``).

    Raises:
      ValueError: ``real`` is negative or not finite, or ``real >= 2^31 - 1/2`` (it would
        need ``shift < -31``; every nonzero int32 saturates, a sure sign of a bad scale).
    """
    real = float(real)
    if not (math.isfinite(real) and real >= 0.0):
        raise ValueError(f"multiplier must be finite and >= 0, got {real}")
    if real < 2.0**-32:
        return 0, 0
    mantissa, exponent = math.frexp(real)  # real = mantissa * 2^exponent, mantissa in [0.5, 1)
    m = round(mantissa * 2**31)
    if m == 2**31:  # mantissa rounded up to 1
        m, exponent = 2**30, exponent + 1
    if exponent > 31:
        raise ValueError(f"multiplier {real} is not representable: it needs shift {-exponent} < -31")
    return m, -exponent


def quantize_multipliers(reals: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised ``quantize_multiplier``: returns (<int32>[...] m, <int32>[...] shift)."""
    pairs = [quantize_multiplier(r) for r in np.asarray(reals, dtype=np.float64).ravel()]
    shape = np.shape(reals)
    m = np.array([p[0] for p in pairs], dtype=np.int32).reshape(shape)
    s = np.array([p[1] for p in pairs], dtype=np.int32).reshape(shape)
    return m, s


def make_lut(fn: Callable[[np.ndarray], np.ndarray], in_frac_bits: int = 12, out_frac_bits: int = 15) -> np.ndarray:
    """Tabulates ``fn`` for ``lut_lookup``: ``T[k] = round(2^out * fn((256k - 2^15) / 2^in))``.

    Args:
      fn: float64 -> float64 function, evaluated at 257 points (k = 0..256; the last point,
        x = 2^15 / 2^in_frac_bits, closes the final segment).
      in_frac_bits: fraction bits of the int16 input (12: Q3.12, x in [-8, 8)).
      out_frac_bits: fraction bits of the output (15: Q0.15).

    Returns:
      <int16>[257], rounded to nearest (ties to even), clipped to [-32768, 32767].
    """
    x = (256.0 * np.arange(257) - 2.0**15) / 2.0**in_frac_bits
    y = np.rint(np.asarray(fn(x), dtype=np.float64) * 2.0**out_frac_bits)
    return np.clip(y, INT16_MIN, INT16_MAX).astype(np.int16)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 + 0.5 * np.tanh(0.5 * x)  # exactly 0.5 at 0, no overflow for large |x|


SIGMOID_LUT: np.ndarray = make_lut(_sigmoid)
TANH_LUT: np.ndarray = make_lut(np.tanh)
SIGMOID_LUT.flags.writeable = False
TANH_LUT.flags.writeable = False


def sigmoid_q15(z: jax.Array) -> jax.Array:
    """Sigmoid of <int16>[...] Q3.12 as <int16>[...] Q0.15 (``lut_lookup`` on ``SIGMOID_LUT``)."""
    return lut_lookup(z, SIGMOID_LUT)


def tanh_q15(z: jax.Array) -> jax.Array:
    """Tanh of <int16>[...] Q3.12 as <int16>[...] Q0.15 (``lut_lookup`` on ``TANH_LUT``)."""
    return lut_lookup(z, TANH_LUT)


def accumulator_bounds(weights: ArrayLike, input_abs_max: int = 127, bias: ArrayLike | None = None) -> np.ndarray:
    """Worst-case ``|acc[j]| = sum_i |W[i, j]| * input_abs_max + |b[j]|`` per output channel.

    Args:
      weights: <int8>[in, out] (any leading axes are contracted too; the last is ``out``).
      input_abs_max: largest ``|x|`` of the int8 input (127 for the symmetric range).
      bias: optional <int32>[out] added to the accumulator.

    Returns:
      <int64>[out] exact bounds.
    """
    w = np.abs(np.asarray(weights).astype(np.int64))
    bound = w.reshape(-1, w.shape[-1]).sum(axis=0) * int(input_abs_max)
    if bias is not None:
        bound = bound + np.abs(np.asarray(bias).astype(np.int64))
    return bound


def accumulator_bound(weights: ArrayLike, input_abs_max: int = 127, bias: ArrayLike | None = None) -> int:
    """The largest ``accumulator_bounds`` over output channels, as a Python int."""
    return int(accumulator_bounds(weights, input_abs_max, bias).max(initial=0))


def requantized_bounds(acc_bounds: ArrayLike, multiplier: ArrayLike,
                       shift: ArrayLike) -> np.ndarray:
    """Worst-case ``|requantize(acc, m, s)|`` per channel for ``|acc| <= acc_bounds``: the
    exact ``ceil(bound * m / 2^(31 + s))`` plus one for the roundings, at most 2^31.

    Returns:
      <int64>[channels].
    """
    bounds, m, s = np.broadcast_arrays(np.asarray(acc_bounds, np.int64),
                                       np.asarray(multiplier, np.int64),
                                       np.asarray(shift, np.int64))
    out = [min(-(-int(b) * int(mj) // 2 ** (31 + int(sj))) + 1, 2**31)
           for b, mj, sj in zip(bounds.reshape(-1), m.reshape(-1), s.reshape(-1))]
    return np.asarray(out, np.int64).reshape(bounds.shape)


def check_accumulator_fits(weights: ArrayLike, input_abs_max: int = 127, bias: ArrayLike | None = None) -> int:
    """Proves statically that int32 accumulators of ``x @ W + b`` cannot overflow.

    Returns:
      The worst-case ``|acc|`` (``accumulator_bound``).

    Raises:
      OverflowError: some channel's bound exceeds 2^31 - 1 (names the channel).
    """
    bounds = accumulator_bounds(weights, input_abs_max, bias)
    if bounds.size and bounds.max() > INT32_MAX:
        j = int(bounds.argmax())
        raise OverflowError(f"int32 accumulator may overflow: channel {j} bound {int(bounds[j])} > {INT32_MAX}")
    return int(bounds.max(initial=0))
