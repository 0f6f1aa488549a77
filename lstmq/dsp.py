"""Integer DSP kernels of the integer front end (docs/numerics.md, "Front end").

Like ``lstmq.fixedpoint``: every ``jnp`` kernel computes on int8/int16/int32 only, and each
has a NumPy reference ``*_ref`` written independently with Python/int64 integers (loops,
not the same array code), so tests compare them bit for bit.

| kernel | result | rounding | range |
|---|---|---|---|
| block_shift(m) | s with m * 2^s in [2^13, 2^14) (m > 0; after apply_shift's rounding [2^13, 2^14]), s in [-2, 14]; 0 for m = 0 | - | - |
| apply_shift(v, s) | v * 2^s for s >= 0, rsr(v, -s) below | half up | abs < 2^14 after block_shift |
| complex_mul_q15(a, w) | (rsr(ar wr - ai wi, 15), rsr(ar wi + ai wr, 15)) | half up | exact int32 for abs(a) <= 2^15, abs(w) <= 32767 |
| fft_q15(z) | radix-2 DIT, bit-reversed input, each butterfly (rsr(a + t, 1), rsr(a - t, 1)) | half up | abs stays <= 2^14 + log2(K) |
| rfft_q15(u) | N-point real FFT from the N/2-point complex one, split with W_N^k, halved twice | half up | abs <= 2^14 + log2(N) |
| isqrt(p) | floor(sqrt(p)), p in [0, 2^31) | floor | exact |
| log2_q10(e) | 1024 log2(e) by leading zeros and a 257-entry Q15 table (linear interpolation); 0 for e <= 0 | half up | [0, 31744] |
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from lstmq.fixedpoint import rounding_shift_right as rsr

BLOCK_LOW_BITS = 13  # block scaling brings a frame's peak into [2^13, 2^14)
MIN_SHIFT, MAX_SHIFT = -2, 14
LOG_FRAC_BITS = 10
LOG_TABLE_BITS = 8


def twiddles_q15(count: int, period: int) -> tuple[np.ndarray, np.ndarray]:
    """(real, imag) of ``round(32767 * exp(-2 pi i k / period))`` for k < count, int16."""
    k = np.arange(count, dtype=np.float64)
    angle = -2.0 * np.pi * k / period
    return (np.round(32767 * np.cos(angle)).astype(np.int16),
            np.round(32767 * np.sin(angle)).astype(np.int16))


def bit_reversal(count: int) -> np.ndarray:
    """<int32>[count]: the bit-reversed index of each position (count a power of two)."""
    bits = count.bit_length() - 1
    return np.array([int(f"{i:0{bits}b}"[::-1], 2) if bits else 0 for i in range(count)],
                    np.int32)


def make_log2_table() -> np.ndarray:
    """<int32>[257]: round(2^15 log2(1 + i / 256)) (the last entry is 2^15)."""
    i = np.arange(2**LOG_TABLE_BITS + 1, dtype=np.float64)
    return np.round(2**15 * np.log2(1.0 + i / 2**LOG_TABLE_BITS)).astype(np.int32)


LOG2_TABLE = make_log2_table()


# --- jnp kernels ----------------------------------------------------------------------------


def bit_length(x: jax.Array) -> jax.Array:
    """Bits of a non-negative int32 (0 for 0)."""
    return 32 - jax.lax.clz(x.astype(jnp.int32))


def block_shift(peak: jax.Array) -> jax.Array:
    """The shift that brings ``peak`` (int32 >= 0) into [2^13, 2^14); 0 for a zero peak."""
    shift = (BLOCK_LOW_BITS + 1) - bit_length(peak)
    return jnp.where(peak > 0, jnp.clip(shift, MIN_SHIFT, MAX_SHIFT), 0).astype(jnp.int32)


def apply_shift(v: jax.Array, shift: jax.Array) -> jax.Array:
    """``v * 2^s`` for s >= 0, ``rsr(v, -s)`` for s < 0 (int32)."""
    v = v.astype(jnp.int32)
    left = jnp.left_shift(v, jnp.maximum(shift, 0))
    return jnp.where(shift >= 0, left, rsr(v, jnp.maximum(-shift, 0)))


def int_dot(x: jax.Array, w: jax.Array) -> jax.Array:
    """``<int16|int32>[..., in] @ <int16|int32>[in, out] -> <int32>[..., out]``, exact while
    every sum fits int32 (the front end's tables are built so that it does)."""
    for operand in (x, w):
        if operand.dtype not in (jnp.int16, jnp.int32):
            raise TypeError(f"int_dot needs int16/int32 operands, got {operand.dtype}")
    dims = (((x.ndim - 1,), (0,)), ((), ()))
    return jax.lax.dot_general(x, w, dims, preferred_element_type=jnp.int32)


def complex_mul_q15(ar, ai, wr, wi) -> tuple[jax.Array, jax.Array]:
    """(a * w) with a Q15 twiddle w, rounded half up (int32)."""
    ar, ai = ar.astype(jnp.int32), ai.astype(jnp.int32)
    wr, wi = jnp.asarray(wr).astype(jnp.int32), jnp.asarray(wi).astype(jnp.int32)
    return rsr(ar * wr - ai * wi, 15), rsr(ar * wi + ai * wr, 15)


def fft_q15(zr: jax.Array, zi: jax.Array, twiddle_r: np.ndarray, twiddle_i: np.ndarray,
            order: np.ndarray) -> tuple[jax.Array, jax.Array]:
    """Complex FFT along the last axis (length K), each stage halved: about DFT(z) / K.

    ``twiddle_*``: W_K^j for j < K/2 (``twiddles_q15(K // 2, K)``); ``order``: bit reversal.
    """
    zr, zi = zr[..., order].astype(jnp.int32), zi[..., order].astype(jnp.int32)
    count = zr.shape[-1]
    lead = zr.shape[:-1]
    half = 1
    while half < count:
        groups = count // (2 * half)
        step = count // (2 * half)  # twiddle index stride
        wr = jnp.asarray(twiddle_r[::step][:half])
        wi = jnp.asarray(twiddle_i[::step][:half])
        shaped = (*lead, groups, 2, half)
        r, i = zr.reshape(shaped), zi.reshape(shaped)
        tr, ti = complex_mul_q15(r[..., 1, :], i[..., 1, :], wr, wi)
        ar, ai = r[..., 0, :], i[..., 0, :]
        zr = jnp.stack([rsr(ar + tr, 1), rsr(ar - tr, 1)], axis=-2).reshape(*lead, count)
        zi = jnp.stack([rsr(ai + ti, 1), rsr(ai - ti, 1)], axis=-2).reshape(*lead, count)
        half *= 2
    return zr, zi


def rfft_q15(u: jax.Array, fft_twiddles: tuple[np.ndarray, np.ndarray], order: np.ndarray,
             split_twiddles: tuple[np.ndarray, np.ndarray]) -> tuple[jax.Array, jax.Array]:
    """Real FFT of ``u <int32>[..., N]``: bins 0..N/2 of about DFT(u) / (2N), int32.

    z[m] = u[2m] + i u[2m+1] goes through the N/2-point FFT; bin k is
    X[k] = (E[k] + W_N^k O[k]) / 2 with E = (Z[k] + conj Z[K-k]) / 2 and
    O = -i (Z[k] - conj Z[K-k]) / 2, each halving rounded half up.
    """
    zr, zi = fft_q15(u[..., 0::2], u[..., 1::2], *fft_twiddles, order)
    count = zr.shape[-1]
    k = np.arange(count + 1) % count
    mirror = (count - np.arange(count + 1)) % count
    ar, ai = zr[..., k], zi[..., k]
    br, bi = zr[..., mirror], -zi[..., mirror]  # conj Z[K - k]
    er, ei = rsr(ar + br, 1), rsr(ai + bi, 1)
    orr, oi = rsr(ai - bi, 1), rsr(br - ar, 1)
    tr, ti = complex_mul_q15(orr, oi, *split_twiddles)
    return rsr(er + tr, 1), rsr(ei + ti, 1)


def isqrt(p: jax.Array) -> jax.Array:
    """floor(sqrt(p)) of int32 p in [0, 2^31), bit by bit (16 steps, int32 only)."""
    p = p.astype(jnp.int32)
    root = jnp.zeros_like(p)
    remainder = p
    for bit in range(15, -1, -1):
        trial = root + (1 << bit)
        # trial^2 <= p, compared without overflow: trial <= p // trial
        fits = trial <= jnp.floor_divide(remainder, trial)
        root = jnp.where(fits, trial, root)
    return root


def log2_q10(e: jax.Array, table: np.ndarray = LOG2_TABLE) -> jax.Array:
    """1024 log2(e) of int32 e > 0 (0 where e <= 0), int32 in [0, 31744]."""
    e = jnp.maximum(e.astype(jnp.int32), 1)
    exponent = bit_length(e) - 1  # 0..30
    mantissa = jnp.left_shift(e, 30 - exponent)  # [2^30, 2^31): Q30 in [1, 2)
    index = jnp.right_shift(mantissa, 30 - LOG_TABLE_BITS) & (2**LOG_TABLE_BITS - 1)
    fraction = jnp.right_shift(mantissa, 30 - 2 * LOG_TABLE_BITS) & (2**LOG_TABLE_BITS - 1)
    table = jnp.asarray(table, jnp.int32)
    low, high = table[index], table[index + 1]
    y = low + rsr((high - low) * fraction, LOG_TABLE_BITS)  # Q15
    return exponent * (1 << LOG_FRAC_BITS) + rsr(y, 15 - LOG_FRAC_BITS)


# --- NumPy references (Python integers, loops) ---------------------------------------------


def _rsr(x: int, s: int) -> int:
    return x if s <= 0 else (x + (1 << (s - 1))) >> s


def block_shift_ref(peak: np.ndarray) -> np.ndarray:
    """Searches the shift: the largest s <= MAX_SHIFT with m * 2^s < 2^14 (m > 0)."""
    out = np.zeros(np.shape(peak), np.int32)
    for idx, m in np.ndenumerate(np.asarray(peak, np.int64)):
        if m > 0:
            s = MAX_SHIFT
            while s > MIN_SHIFT and m * 2.0**s >= 2 ** (BLOCK_LOW_BITS + 1):
                s -= 1
            out[idx] = s
    return out


def apply_shift_ref(v: np.ndarray, shift: np.ndarray) -> np.ndarray:
    v = np.asarray(v, np.int64)
    s = np.broadcast_to(np.asarray(shift, np.int64), v.shape)
    out = np.empty(v.shape, np.int64)
    for idx, value in np.ndenumerate(v):
        out[idx] = value * 2 ** int(s[idx]) if s[idx] >= 0 else _rsr(int(value), -int(s[idx]))
    return out.astype(np.int32)


def _cmul(ar: int, ai: int, wr: int, wi: int) -> tuple[int, int]:
    return _rsr(ar * wr - ai * wi, 15), _rsr(ar * wi + ai * wr, 15)


def fft_q15_ref(z: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The same fixed-point FFT of one complex sequence, as a textbook loop."""
    count = len(z)
    wr, wi = twiddles_q15(max(count // 2, 1), count)
    order = bit_reversal(count)
    x = [z[int(order[i])] for i in range(count)]
    size = 2
    while size <= count:
        half = size // 2
        for start in range(0, count, size):
            for j in range(half):
                w = (int(wr[j * (count // size)]), int(wi[j * (count // size)]))
                a, b = x[start + j], x[start + j + half]
                t = _cmul(b[0], b[1], *w)
                x[start + j] = (_rsr(a[0] + t[0], 1), _rsr(a[1] + t[1], 1))
                x[start + j + half] = (_rsr(a[0] - t[0], 1), _rsr(a[1] - t[1], 1))
        size *= 2
    return x


def rfft_q15_ref(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bins 0..N/2 of the fixed-point real FFT of one frame ``u <int>[N]``."""
    u = [int(v) for v in np.asarray(u).reshape(-1)]
    n = len(u)
    count = n // 2
    z = fft_q15_ref([(u[2 * m], u[2 * m + 1]) for m in range(count)])
    sr, si = twiddles_q15(count + 1, n)
    out_r, out_i = np.zeros(count + 1, np.int32), np.zeros(count + 1, np.int32)
    for k in range(count + 1):
        a = z[k % count]
        b = (z[(count - k) % count][0], -z[(count - k) % count][1])
        e = (_rsr(a[0] + b[0], 1), _rsr(a[1] + b[1], 1))
        o = (_rsr(a[1] - b[1], 1), _rsr(b[0] - a[0], 1))
        t = _cmul(o[0], o[1], int(sr[k]), int(si[k]))
        out_r[k], out_i[k] = _rsr(e[0] + t[0], 1), _rsr(e[1] + t[1], 1)
    return out_r, out_i


def isqrt_ref(p: np.ndarray) -> np.ndarray:
    return np.vectorize(lambda v: math.isqrt(int(v)), otypes=[np.int32])(np.asarray(p))


def log2_q10_ref(e: np.ndarray) -> np.ndarray:
    def one(v: int) -> int:
        v = max(int(v), 1)
        exponent = v.bit_length() - 1
        mantissa = v << (30 - exponent)
        index = (mantissa >> 22) & 255
        fraction = (mantissa >> 14) & 255
        low, high = int(LOG2_TABLE[index]), int(LOG2_TABLE[index + 1])
        y = low + _rsr((high - low) * fraction, 8)
        return exponent * 1024 + _rsr(y, 5)

    return np.vectorize(one, otypes=[np.int32])(np.asarray(e))
