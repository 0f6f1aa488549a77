"""Integer kernels against their exact NumPy references, eager and under jit."""

from __future__ import annotations

import math
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from lstmq import fixedpoint as fp
from lstmq import fixedpoint_reference as fpr

INT32_MIN, INT32_MAX = fp.INT32_MIN, fp.INT32_MAX
EDGES32 = [
    INT32_MIN, INT32_MIN + 1, -(2**30) - 1, -(2**30), -(2**16), -(2**15) - 1, -(2**15), -2, -1,
    0, 1, 2, 2**15 - 1, 2**15, 2**16, 2**30 - 1, 2**30, 2**31 - 2**15, INT32_MAX - 1, INT32_MAX,
]  # fmt: skip
EDGES16 = [-(2**15), -(2**15) + 1, -256, -255, -1, 0, 1, 255, 256, 2**15 - 1]
N = 64  # one array shape, so jitted kernels compile once per static argument

int32s = st.one_of(st.sampled_from(EDGES32), st.integers(INT32_MIN, INT32_MAX))
int16s = st.one_of(st.sampled_from(EDGES16), st.integers(-(2**15), 2**15 - 1))
i32_arrays = hnp.arrays(np.int32, N, elements=int32s)
i16_arrays = hnp.arrays(np.int16, N, elements=int16s)
shifts = st.one_of(st.sampled_from([0, 1, 30, 31, 32]), st.integers(0, 40))
shift_arrays = hnp.arrays(np.int32, N, elements=shifts)
multipliers = st.one_of(st.sampled_from([2**30, 2**30 + 1, INT32_MAX]), st.integers(2**30, INT32_MAX))
channel_shifts = hnp.arrays(np.int32, N, elements=st.integers(-31, 31))
props = settings(max_examples=60, deadline=None)


@pytest.fixture(autouse=True, scope="module")
def strict_promotion():
    """Any implicit widening or float promotion inside a kernel fails loudly."""
    with jax.numpy_dtype_promotion("strict"):
        yield


def assert_kernel(kernel, ref, *args, static=(), dtype=jnp.int32):
    """``kernel`` eager and jitted (``static`` argnums as Python values) equals ``ref`` exactly."""
    want = ref(*args)
    for fn in (kernel, jax.jit(kernel, static_argnums=static)):
        got = fn(*args)
        assert got.dtype == dtype
        np.testing.assert_array_equal(np.asarray(got), want)


# rounding_shift_right ---------------------------------------------------------------------


@props
@given(i32_arrays, shifts)
def test_rounding_shift_right_static_shift(x, s):
    assert_kernel(fp.rounding_shift_right, fpr.rounding_shift_right_ref, x, s, static=(1,))


@props
@given(i32_arrays, shift_arrays)
def test_rounding_shift_right_array_shift(x, s):
    assert_kernel(fp.rounding_shift_right, fpr.rounding_shift_right_ref, x, s)


@pytest.mark.parametrize("s", [1, 2, 8, 15, 30, 31])
def test_rounding_shift_right_ties_round_up(s):
    k = np.arange(0, min(2 ** (32 - s) // 2, 1000), dtype=np.int64)
    tie = (2 * k + 1) * 2 ** (s - 1)  # x / 2^s = k + 1/2 exactly
    tie = tie[tie <= INT32_MAX]
    x = np.concatenate([tie, -tie]).astype(np.int32)
    want = np.concatenate([k[: tie.size] + 1, -k[: tie.size]])  # half up: 2.5 -> 3, -2.5 -> -2
    for shift in (s, np.full(x.shape, s, np.int32)):
        np.testing.assert_array_equal(np.asarray(fp.rounding_shift_right(x, shift)), want)
        np.testing.assert_array_equal(fpr.rounding_shift_right_ref(x, shift), want)


def test_rounding_shift_right_edges():
    x = np.array([INT32_MIN, INT32_MAX, -1, 1], np.int32)
    np.testing.assert_array_equal(fp.rounding_shift_right(x, 0), x)
    np.testing.assert_array_equal(fp.rounding_shift_right(x, 1), [-(2**30), 2**30, 0, 1])
    np.testing.assert_array_equal(fp.rounding_shift_right(x, 31), [-1, 1, 0, 0])
    np.testing.assert_array_equal(fp.rounding_shift_right(x, 32), [0, 0, 0, 0])
    with pytest.raises(ValueError):
        fp.rounding_shift_right(x, -1)


# rounding_divide (the mean readout) -------------------------------------------------------

divisors = st.one_of(st.sampled_from([1, 2, 3, 7, 143, 2**16, 2**30 - 1]), st.integers(1, 2**30 - 1))


@props
@given(i32_arrays, hnp.arrays(np.int32, N, elements=divisors))
def test_rounding_divide_matches_exact_reference(x, d):
    assert_kernel(fp.rounding_divide, fpr.rounding_divide_ref, x, d)


def test_rounding_divide_ties_round_up_and_never_overflows():
    x = np.array([3, -3, 5, -5, 1, -1, 7, INT32_MAX, INT32_MIN, INT32_MIN, 127 * 143], np.int32)
    d = np.array([2, 2, 2, 2, 2, 2, 7, 1, 1, 2**30 - 1, 143], np.int32)
    want = [2, -1, 3, -2, 1, 0, 1, INT32_MAX, INT32_MIN, -2, 127]  # 1.5 -> 2, -1.5 -> -1
    for fn in (fp.rounding_divide, fpr.rounding_divide_ref):
        np.testing.assert_array_equal(np.asarray(fn(x, d)), want)
    exact = [math.floor(Fraction(int(a), int(b)) + Fraction(1, 2)) for a, b in zip(x, d)]
    assert exact == want


# saturate, saturating_left_shift, saturating_add16 ----------------------------------------


@props
@given(i32_arrays, st.sampled_from([1, 8, 16, 31, 32]))
def test_saturate(x, bits):
    assert_kernel(fp.saturate, fpr.saturate_ref, x, bits, static=(1,))


def test_saturate_narrow_inputs_and_bounds():
    x8 = np.array([-128, -127, 0, 127], np.int8)
    np.testing.assert_array_equal(fp.saturate(x8, 8), x8.astype(np.int32))
    np.testing.assert_array_equal(fp.saturate(np.array([-129, 128], np.int32), 8), [-128, 127])
    assert fp.saturate(x8, 4).dtype == jnp.int32
    with pytest.raises(TypeError):
        fp.saturate(np.zeros(2, np.float32), 8)
    with pytest.raises(TypeError):
        fp.saturate(np.zeros(2, np.int64), 8)


@props
@given(i32_arrays, shifts)
def test_saturating_left_shift_static(x, s):
    assert_kernel(fp.saturating_left_shift, fpr.saturating_left_shift_ref, x, s, static=(1,))


@props
@given(i32_arrays, shift_arrays)
def test_saturating_left_shift_array(x, s):
    assert_kernel(fp.saturating_left_shift, fpr.saturating_left_shift_ref, x, s)


def test_saturating_left_shift_edges():
    x = np.array([2**29, 2**29 + 1, -(2**29), -(2**29) - 1, -1, 1, 0], np.int32)
    np.testing.assert_array_equal(fp.saturating_left_shift(x, 1), [2**30, 2**30 + 2, -(2**30), -(2**30) - 2, -2, 2, 0])
    saturated = [INT32_MAX, INT32_MAX, INT32_MIN, INT32_MIN]
    np.testing.assert_array_equal(fp.saturating_left_shift(x, 2), saturated + [-4, 4, 0])
    np.testing.assert_array_equal(fp.saturating_left_shift(x, 31), [INT32_MAX] * 2 + [INT32_MIN] * 3 + [INT32_MAX, 0])


@props
@given(i16_arrays, i16_arrays)
def test_saturating_add16(a, b):
    assert_kernel(fp.saturating_add16, fpr.saturating_add16_ref, a, b, dtype=jnp.int16)


def test_saturating_add16_edges():
    a = np.array([32767, -32768, 32767, -32768], np.int16)
    b = np.array([1, -1, -32768, 32767], np.int16)
    np.testing.assert_array_equal(fp.saturating_add16(a, b), [32767, -32768, -1, -1])


# rounding_high_mul, requantize ------------------------------------------------------------


@props
@given(i32_arrays, i32_arrays)
def test_rounding_high_mul(a, m):
    assert_kernel(fp.rounding_high_mul, fpr.rounding_high_mul_ref, a, m)


def test_rounding_high_mul_all_edge_pairs():
    a, m = (v.ravel().astype(np.int32) for v in np.meshgrid(EDGES32, EDGES32))
    assert_kernel(fp.rounding_high_mul, fpr.rounding_high_mul_ref, a, m)
    # Hand values: the saturating case, exact ties (half up), and the most negative product.
    a = np.array([INT32_MIN, 1, -1, 3, -3, INT32_MIN, INT32_MAX], np.int32)
    m = np.array([INT32_MIN, 2**30, 2**30, 2**30, 2**30, INT32_MAX, INT32_MAX], np.int32)
    want = [INT32_MAX, 1, 0, 2, -1, INT32_MIN + 1, INT32_MAX - 1]
    np.testing.assert_array_equal(np.asarray(fp.rounding_high_mul(a, m)), want)
    np.testing.assert_array_equal(fpr.rounding_high_mul_ref(a, m), want)


@props
@given(i32_arrays, multipliers, st.integers(-31, 31))
def test_requantize_static(acc, m, s):
    assert_kernel(fp.requantize, fpr.requantize_ref, acc, m, s, static=(1, 2))


@props
@given(i32_arrays, hnp.arrays(np.int32, N, elements=multipliers), channel_shifts)
def test_requantize_per_channel(acc, m, s):
    assert_kernel(fp.requantize, fpr.requantize_ref, acc, m, s)


@props
@given(int32s, multipliers, st.integers(-31, 31))
def test_requantize_vs_exact_rational(acc, m, s):
    """Two half-up roundings stay within 3/4 of ``acc * m / 2^(31+s)`` (one rounding for s <= 0)."""
    got = int(fp.requantize(np.array([acc], np.int32), m, s)[0])
    left = acc * 2 ** max(-s, 0)
    if not INT32_MIN <= left <= INT32_MAX:  # saturating left shift first, as TFLite does
        assert got == fpr.rounding_high_mul_ref(np.array([fpr._clip(left)]), m)[0]
        return
    exact = Fraction(acc * m, 2 ** (31 + s))
    if s <= 0:
        assert got == math.floor(exact + Fraction(1, 2))  # a single exact half-up rounding
    assert abs(got - exact) <= Fraction(3, 4)


def test_requantize_zero_multiplier_is_zero():
    acc = np.array(EDGES32, np.int32)
    np.testing.assert_array_equal(fp.requantize(acc, 0, 0), np.zeros_like(acc))


# quantize_multiplier ----------------------------------------------------------------------


@props
@given(st.floats(min_value=2.0**-32, max_value=2.0**31 - 1, allow_nan=False))
def test_quantize_multiplier_round_trip(real):
    m, s = fp.quantize_multiplier(real)
    assert 2**30 <= m < 2**31 and -31 <= s <= 31
    assert abs(Fraction(m) / 2 ** (31 + s) - Fraction(real)) <= Fraction(real) * 2**-31 < Fraction(real) * 2**-30


def test_quantize_multiplier_special_values():
    assert fp.quantize_multiplier(0.0) == (0, 0)
    assert fp.quantize_multiplier(2.0**-33) == (0, 0)  # |acc * real| < 1/2: requantize is 0 anyway
    assert fp.quantize_multiplier(0.5) == (2**30, 0)
    assert fp.quantize_multiplier(1.0) == (2**30, -1)
    assert fp.quantize_multiplier(np.nextafter(1.0, 0.0)) == (2**30, -1)  # mantissa rounds up to 1
    for bad in (-1e-3, float("nan"), float("inf"), 2.0**31, 2.0**31 - 0.5):
        with pytest.raises(ValueError):
            fp.quantize_multiplier(bad)


def test_quantize_multipliers_vectorised():
    reals = np.array([[0.0, 1e-3, 0.75], [3.0, 2.0**-20, 1234.5]])
    m, s = fp.quantize_multipliers(reals)
    assert m.dtype == np.int32 and s.dtype == np.int32 and m.shape == reals.shape
    for r, mi, si in zip(reals.ravel(), m.ravel(), s.ravel()):
        assert (int(mi), int(si)) == fp.quantize_multiplier(r)
    with pytest.raises(ValueError):
        fp.quantize_multipliers([1.0, -1.0])


# LUT sigmoid / tanh -----------------------------------------------------------------------

ALL_Q3_12 = np.arange(-(2**15), 2**15).astype(np.int16)


def _lut_error(kernel, fn):
    y = np.asarray(jax.jit(kernel)(ALL_Q3_12)).astype(np.float64)
    return np.abs(y - 2.0**15 * fn(ALL_Q3_12 / 4096.0)).max()  # in Q0.15 units


@pytest.mark.parametrize("table", [fp.SIGMOID_LUT, fp.TANH_LUT], ids=["sigmoid", "tanh"])
def test_lut_lookup_matches_reference_everywhere(table):
    assert table.dtype == np.int16 and table.shape == (257,)
    assert_kernel(fp.lut_lookup, fpr.lut_lookup_ref, ALL_Q3_12, table, dtype=jnp.int16)


def test_lut_max_error():
    # Measured: sigmoid 2.20 units (6.7e-5, 2^-13.9); tanh 12.86 units (3.9e-4, 2^-11.3).
    # Tanh is dominated by linear interpolation over 1/16-wide segments (h^2 |f''| / 8).
    sigmoid_err = _lut_error(fp.sigmoid_q15, lambda x: 1.0 / (1.0 + np.exp(-x)))
    tanh_err = _lut_error(fp.tanh_q15, np.tanh)
    assert sigmoid_err <= 3.0, sigmoid_err  # < 2^-13
    assert tanh_err <= 14.0, tanh_err  # < 2^-11


def test_lut_shape_properties():
    sig = np.asarray(fp.sigmoid_q15(ALL_Q3_12)).astype(np.int64)
    tanh = np.asarray(fp.tanh_q15(ALL_Q3_12)).astype(np.int64)
    zero = 2**15  # index of z = 0
    assert sig[zero] == 16384 and tanh[zero] == 0
    assert (np.diff(sig) >= 0).all() and (np.diff(tanh) >= 0).all()
    assert sig.min() >= 0 and tanh.min() == -32768 and tanh.max() == 32767
    # Odd/point symmetry: exact in the tables except where tanh rounds to +-2^15 and is
    # clipped to int16 (+1 -> 32767, -1 -> -32768); within 1 after the half-up interpolation,
    # whose ties are not symmetric.
    k = np.arange(1, 256)
    t = fp.TANH_LUT.astype(int)
    unclipped = np.maximum(np.abs(t[k]), np.abs(t[256 - k])) < 32767
    assert unclipped.sum() > 150
    np.testing.assert_array_equal(t[256 - k][unclipped], -t[k][unclipped])
    assert np.abs(t[256 - k] + t[k]).max() == 1
    np.testing.assert_array_equal(fp.SIGMOID_LUT[256 - k].astype(int) + fp.SIGMOID_LUT[k], 2**15)
    neg = slice(zero - 1, 0, -1)  # -z for z = 1 .. 32767
    assert np.abs(tanh[zero + 1 :] + tanh[neg]).max() <= 1
    assert np.abs(sig[zero + 1 :] + sig[neg] - 2**15).max() <= 1


def test_make_lut_rounds_and_clips():
    table = fp.make_lut(lambda x: x / 8.0)  # x in [-8, 8] -> [-1, 1]
    assert table.dtype == np.int16 and table[0] == -32768 and table[256] == 32767 and table[128] == 0
    assert table[129] == round(2**15 / 128)


def test_lut_lookup_refuses_wide_input():
    with pytest.raises(TypeError):
        fp.sigmoid_q15(jnp.zeros(3, jnp.int32))


# fixed_mul_shift, int_matmul, accumulator bound -------------------------------------------


@props
@given(i16_arrays, i16_arrays, st.integers(0, 31))
def test_fixed_mul_shift(a, b, s):
    assert_kernel(fp.fixed_mul_shift, fpr.fixed_mul_shift_ref, a, b, s, static=(2,))


def test_fixed_mul_shift_edges():
    a = np.array([-32768, -32768, 32767, -32768, 16384], np.int16)
    b = np.array([-32768, 32767, 32767, 1, 1], np.int16)
    np.testing.assert_array_equal(fp.fixed_mul_shift(a, b, 0), [2**30, -(2**30) + 2**15, 32767**2, -32768, 16384])
    # The one Q15 product that does not fit int16 again: (-1) * (-1) = +1.
    got = fp.fixed_mul_shift(a, b, 15)
    assert got.dtype == jnp.int32 and int(got[0]) == 32768
    assert int(fp.saturate(got, 16)[0]) == 32767
    np.testing.assert_array_equal(fp.fixed_mul_shift(a.astype(np.int8)[3:], np.array([-128, 127], np.int8), 1), [0, 0])
    with pytest.raises(TypeError):
        fp.fixed_mul_shift(np.zeros(2, np.int32), a[:2], 15)


@props
@given(hnp.arrays(np.int8, (3, 5, 16)), hnp.arrays(np.int8, (16, 8)))
def test_int_matmul(x, w):
    assert_kernel(fp.int_matmul, fpr.int_matmul_ref, x, w)


def test_int_matmul_refuses_wide_operands():
    with pytest.raises(TypeError):
        fp.int_matmul(jnp.zeros((2, 3), jnp.int16), jnp.zeros((3, 4), jnp.int8))


def test_accumulator_bound_worst_case():
    k = 133_144  # k * 127 * 127 = 2^31 - 1 - 4_071: the longest all-127 dot product that fits
    w = np.full((k, 2), 127, np.int8)
    w[:, 1] = -127
    assert fp.accumulator_bound(w) == k * 127 * 127
    assert fp.check_accumulator_fits(w, bias=np.array([4_071, -4_071], np.int32)) == INT32_MAX
    with pytest.raises(OverflowError, match="channel 1"):
        fp.check_accumulator_fits(w, bias=np.array([0, -4_072], np.int32))
    with pytest.raises(OverflowError):
        fp.check_accumulator_fits(np.full((k + 1, 1), 127, np.int8))
    # The bound is attained, and the int32 matmul computes it without wrapping.
    x = np.full((1, k), 127, np.int8)
    np.testing.assert_array_equal(np.asarray(fp.int_matmul(x, w)), [[k * 16129, -k * 16129]])


def test_accumulator_bound_counts_minus_128_and_input_range():
    w = np.array([[-128, 1], [3, 0]], np.int8)
    np.testing.assert_array_equal(fp.accumulator_bounds(w, input_abs_max=128), [131 * 128, 128])
    assert fp.accumulator_bound(w, input_abs_max=1, bias=np.array([0, INT32_MIN], np.int32)) == 2**31 + 1


@pytest.mark.parametrize("shift", [-31, -5, -1, 0, 1, 7, 31])
@pytest.mark.parametrize("multiplier", [2**30, 2**30 + 12345, 2**31 - 128, INT32_MAX])
def test_requantized_bounds_hold_at_the_accumulator_edges(multiplier, shift):
    bounds = np.array([0, 1, 2, 127, 2**15, 2**30 - 1, 2**31 - 1], np.int64)
    got = fp.requantized_bounds(bounds, multiplier, shift)
    assert (got <= 2**31).all()
    for bound, limit in zip(bounds.tolist(), got.tolist()):
        acc = np.array([-bound, -bound // 2, bound // 3, bound], np.int32)
        out = np.abs(np.asarray(fp.requantize(jnp.asarray(acc), multiplier, shift), np.int64))
        assert (out <= limit).all(), (bound, out, limit)
        exact = -(-bound * multiplier // 2 ** (31 + shift))  # ceil of |acc| * real
        assert limit <= min(exact + 1, 2**31)  # and no looser than one over it


def test_saturating_sub_at_every_pair_of_edges():
    a, b = np.meshgrid(np.array(EDGES32, np.int32), np.array(EDGES32, np.int32))
    np.testing.assert_array_equal(np.asarray(fp.saturating_sub(jnp.asarray(a), jnp.asarray(b))),
                                  fpr.saturating_sub_ref(a, b))


def test_rounding_shift_right_reads_a_negative_array_shift_as_none():
    x = np.array(EDGES32, np.int32)
    for shift in (-1, -31):
        shifts = jnp.full(x.shape, shift, jnp.int32)
        np.testing.assert_array_equal(np.asarray(fp.rounding_shift_right(jnp.asarray(x), shifts)), x)
