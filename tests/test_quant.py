"""Fake quantization: fixed-point rounding rules, straight-through gradients, static scales.

| point | frac bits | bits | grid range (integers) |
|---|---|---|---|
| hidden state | 7 | 8 | -127 .. 127 (symmetric) |
| pre-activation | 12 | 16 | -32768 .. 32767 |
| gates, tanh(c) | 15 | 16 | -32768 .. 32767 |
| cell state | 11 | 16 | -32768 .. 32767 |
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lstmq import quant
from lstmq.model import LSTMClassifier
from lstmq.quant import QATNumerics, calibrate_input_clip, fake_quant_fixed

POINTS = {  # name: (frac_bits, bits, lowest integer, highest integer)
    "hidden": (quant.HIDDEN_FRAC_BITS, 8, -127, 127),
    "preactivation": (quant.PREACT_FRAC_BITS, 16, -32768, 32767),
    "gate": (quant.GATE_FRAC_BITS, 16, -32768, 32767),
    "cell": (quant.CELL_FRAC_BITS, 16, -32768, 32767),
}
FEATURES, CLASSES, HIDDEN, TIME, CLIP = 5, 3, 8, 12, 3.0


@pytest.fixture(autouse=True, scope="module")
def strict_promotion():
    with jax.numpy_dtype_promotion("strict"):
        yield


@functools.cache
def fq(frac_bits: int, bits: int):
    """fake_quant_fixed for one point, jitted (static format)."""
    return jax.jit(lambda x: fake_quant_fixed(x, frac_bits, bits))


def as_f32(values) -> jax.Array:
    return jnp.asarray(np.asarray(values, np.float64).astype(np.float32))


# fake_quant_fixed: values ----------------------------------------------------------------


def test_format_constants_match_the_integer_recipe():
    assert (quant.HIDDEN_FRAC_BITS, quant.PREACT_FRAC_BITS, quant.GATE_FRAC_BITS,
            quant.CELL_FRAC_BITS) == (7, 12, 15, 11)
    assert quant.HIDDEN_BOUND * 2**7 == 127


@pytest.mark.parametrize("point", POINTS)
def test_grid_values_are_exact(point):
    frac, bits, low, high = POINTS[point]
    grid = np.arange(low, high + 1) / 2.0**frac
    for fn in (lambda x: fake_quant_fixed(x, frac, bits), fq(frac, bits)):
        out = fn(as_f32(grid))
        assert out.dtype == jnp.float32
        np.testing.assert_array_equal(np.asarray(out), grid.astype(np.float32))


@pytest.mark.parametrize("point", POINTS)
def test_halves_round_up(point):
    frac, bits, low, high = POINTS[point]
    k = np.arange(low, high)  # k + 1/2 lies inside the range
    out = fq(frac, bits)(as_f32((k + 0.5) / 2.0**frac))
    np.testing.assert_array_equal(np.asarray(out), ((k + 1) / 2.0**frac).astype(np.float32))


def test_half_up_is_toward_plus_infinity_for_negatives():
    out = fq(0, 16)(as_f32([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, -0.49, 0.49, -0.51, 0.51]))
    np.testing.assert_array_equal(np.asarray(out), [-2, -1, 0, 1, 2, 3, 0, 0, -1, 1])


@pytest.mark.parametrize("point", POINTS)
def test_saturates_at_the_range_edges(point):
    frac, bits, low, high = POINTS[point]
    lsb = 2.0**-frac
    top, bottom = high * lsb, low * lsb
    x = [top, top + 0.49 * lsb, top + 0.5 * lsb, top + lsb, 2 * top, 100.0,
         bottom, bottom - 0.5 * lsb, bottom - 0.51 * lsb, bottom - lsb, 2 * bottom, -100.0]
    want = [top] * 6 + [bottom] * 6
    np.testing.assert_array_equal(np.asarray(fq(frac, bits)(as_f32(x))), as_f32(want))


def test_int8_is_symmetric_int16_is_not():
    assert float(fq(7, 8)(jnp.float32(-1.0))) == -127 / 128  # -128 is not used
    assert float(fq(12, 16)(jnp.float32(-8.0))) == -8.0  # -32768 is
    assert float(fq(15, 16)(jnp.float32(1.0))) == 32767 / 32768


def exact_reference(n: np.ndarray, frac_bits: int, low: int, high: int) -> np.ndarray:
    """x = n / 1024 LSB; half-up rounding and saturation in exact integer arithmetic."""
    q = np.clip(np.floor_divide(n + 512, 1024), low, high)
    return (q / 2.0**frac_bits).astype(np.float32)


@settings(max_examples=60, deadline=None)
@given(point=st.sampled_from(sorted(POINTS)),
       n=st.lists(st.one_of(st.integers(-(2**24), 2**24),  # exact in float32
                            st.integers(-(2**16), 2**16).map(lambda v: 1024 * v),  # saturating
                            st.sampled_from([-512, 511, 512, 513, -513, 1023, 1024, 0])),
                  min_size=32, max_size=32))
def test_matches_exact_reference(point, n):
    """Values on a 1/1024-LSB lattice (all exact in float32): halves and near-halves are hit."""
    frac, bits, low, high = POINTS[point]
    n = np.asarray(n, np.int64)
    x = as_f32(n / 1024 / 2.0**frac)
    np.testing.assert_array_equal(np.asarray(fq(frac, bits)(x)),
                                  exact_reference(n, frac, low, high))


@pytest.mark.parametrize("point", POINTS)
def test_huge_values_still_saturate(point):
    frac, bits, low, high = POINTS[point]
    out = np.asarray(fq(frac, bits)(as_f32([1e4, -1e4, 1e6, -1e6, 3e38, -3e38])))
    want = np.array([high, low] * 3, np.float64) / 2.0**frac
    np.testing.assert_array_equal(out, want.astype(np.float32))


@pytest.mark.parametrize("point", POINTS)
def test_just_below_half_rounds_down(point):
    frac, bits, _, _ = POINTS[point]
    below_half = np.nextafter(np.float32(0.5), np.float32(0))  # 0.49999997
    x = jnp.float32(below_half / np.float32(2.0**frac))
    assert float(x) * 2.0**frac < 0.5
    assert float(fq(frac, bits)(x)) == 0.0


# fake_quant_fixed: gradients -------------------------------------------------------------


@pytest.mark.parametrize("point", POINTS)
def test_gradient_is_exactly_one_everywhere(point):
    frac, bits, low, high = POINTS[point]
    x = as_f32(np.concatenate([np.linspace(2 * low, 2 * high, 301) / 2.0**frac,
                               [-1e3, -50.0, 0.0, 50.0, 1e3]]))
    grad = jax.grad(lambda v: jnp.sum(fake_quant_fixed(v, frac, bits)))
    for fn in (grad, jax.jit(grad)):
        g = fn(x)
        assert g.dtype == jnp.float32
        np.testing.assert_array_equal(np.asarray(g), np.ones(x.shape, np.float32))


def test_gradient_passes_cotangent_through_unchanged():
    x = as_f32([-3.0, 0.1, 9.0])
    cotangent = as_f32([2.0, -0.5, 7.0])
    _, vjp = jax.vjp(lambda v: fake_quant_fixed(v, 12, 16), x)
    np.testing.assert_array_equal(np.asarray(vjp(cotangent)[0]), np.asarray(cotangent))


# QATNumerics: which format at which point ------------------------------------------------


def test_qat_numerics_points_use_the_documented_formats():
    x = as_f32(np.linspace(-9.0, 9.0, 2001))
    full, weight_only = QATNumerics(CLIP), QATNumerics(CLIP, activations=False)
    for method, point in (("preactivation", "preactivation"), ("gate", "gate"),
                          ("cell", "cell"), ("hidden", "hidden")):
        frac, bits, _, _ = POINTS[point]
        np.testing.assert_array_equal(getattr(full, method)(x), fq(frac, bits)(x))
        np.testing.assert_array_equal(getattr(weight_only, method)(x), x)
    # The input is left to the first matmul's static AQT calibration.
    np.testing.assert_array_equal(full.input(x), x)


# calibration ----------------------------------------------------------------------------


@pytest.mark.parametrize("percentile", [50.0, 99.0, 99.99, 100.0])
def test_calibrate_input_clip_is_percentile_of_absolute_frames(percentile):
    rng = np.random.default_rng(0)
    clips = [rng.standard_normal((n, 4)).astype(np.float32) * s
             for n, s in ((5, 1.0), (9, 3.0), (1, 0.5))]
    clip = calibrate_input_clip(clips, percentile)
    every = np.abs(np.concatenate([c.reshape(-1) for c in clips]))
    assert isinstance(clip, float)
    assert clip == float(np.percentile(every, percentile))
    if percentile == 100.0:
        assert clip == float(every.max())


# QATNumerics in the model ----------------------------------------------------------------


def make_inputs(seed: int = 0, batch: int = 6):
    x = jax.random.normal(jax.random.PRNGKey(seed), (batch, TIME, FEATURES), jnp.float32)
    lengths = jnp.asarray(np.random.default_rng(seed).integers(1, TIME + 1, batch), jnp.int32)
    return jnp.clip(x, -CLIP, CLIP), lengths


def random_params(seed: int = 0):
    """Params of LSTMClassifier(HIDDEN, 2, CLASSES): N(0, 1/fan_in) kernels, small biases.

    Drawn in numpy into the tree ``init`` would build (``eval_shape``: no compilation).
    """
    model = LSTMClassifier(HIDDEN, 2, CLASSES)
    abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                              jax.ShapeDtypeStruct((1, 2, FEATURES), jnp.float32),
                              jax.ShapeDtypeStruct((1,), jnp.int32))["params"]
    rng = np.random.default_rng(seed)

    def draw(leaf):
        scale = 0.1 if leaf.ndim == 1 else leaf.shape[0] ** -0.5
        return jnp.asarray(rng.normal(0.0, scale, leaf.shape).astype(np.float32))

    return jax.tree_util.tree_map(draw, abstract)


@pytest.fixture(scope="module")
def params():
    return random_params()


@functools.cache
def jit_apply(numerics, train: bool = False, dropout: float = 0.0):
    """``(params, x, lengths) -> logits``, compiled once per numerics and shape."""
    model = LSTMClassifier(HIDDEN, 2, CLASSES, dropout=dropout, numerics=numerics)
    return jax.jit(lambda params, x, lengths: model.apply(
        {"params": params}, x, lengths, train=train, rngs={"dropout": jax.random.PRNGKey(0)}))


QAT = QATNumerics(input_clip=CLIP)


def test_input_is_quantized_with_static_scale_clip_over_127(params):
    """Moving inputs within one int8 bin of width CLIP/127 changes nothing; across bins it does."""
    scale = CLIP / 127
    k = np.random.default_rng(1).integers(-126, 127, (6, TIME, FEATURES))
    lengths = jnp.full((6,), TIME, jnp.int32)
    apply = functools.partial(jit_apply(QAT), params)
    low, high = apply(as_f32((k - 0.3) * scale), lengths), apply(as_f32((k + 0.3) * scale), lengths)
    np.testing.assert_array_equal(low, high)
    next_bin = apply(as_f32((k + 0.7) * scale), lengths)
    assert np.abs(np.asarray(next_bin - low)).max() > 1e-4
    # Everything at or beyond the bound is the same int8 value (127).
    at_bound = apply(jnp.full((6, TIME, FEATURES), CLIP, jnp.float32), lengths)
    np.testing.assert_array_equal(apply(jnp.full((6, TIME, FEATURES), 40 * CLIP), lengths),
                                  at_bound)
    # Control: the float model sees those perturbations.
    float_apply = functools.partial(jit_apply(None), params)
    assert np.abs(np.asarray(float_apply(as_f32((k + 0.3) * scale), lengths)
                             - float_apply(as_f32((k - 0.3) * scale), lengths))).max() > 1e-4


def test_input_scale_does_not_depend_on_the_batch(params):
    x, lengths = make_inputs(2)
    quiet, loud = 0.05 * x, 20.0 * x  # a dynamic (batch abs-max) scale would differ wildly
    apply = functools.partial(jit_apply(QAT), params)
    for batch in (quiet, loud):
        logits = apply(batch, lengths)
        for row in range(len(lengths)):
            single = apply(batch[row:row + 1], lengths[row:row + 1])[0]
            np.testing.assert_allclose(single, logits[row], rtol=0, atol=1e-6)


def test_hidden_states_lie_on_the_q07_grid(params):
    x, lengths = make_inputs(3)
    model = LSTMClassifier(HIDDEN, 2, CLASSES, numerics=QAT)
    _, state = jax.jit(lambda x: model.apply({"params": params}, x, lengths,
                                             capture_intermediates=True))(x)
    for layer in ("lstm_0", "lstm_1"):
        outputs = np.asarray(state["intermediates"][layer]["__call__"][0][0], np.float64)
        assert np.abs(outputs).max() <= 127 / 128
        np.testing.assert_array_equal(outputs * 128, np.round(outputs * 128))
        assert len(np.unique(outputs)) > 10  # not trivially zero


def test_train_and_eval_use_the_same_scales(params):
    """With dropout 0, train=True and train=False are the same function: no batch statistics."""
    x, lengths = make_inputs(4)
    np.testing.assert_array_equal(jit_apply(QAT, train=True)(params, x, lengths),
                                  jit_apply(QAT, train=False)(params, x, lengths))


def test_gradients_reach_every_parameter(params):
    x, lengths = make_inputs(5)
    labels = jnp.arange(len(lengths)) % CLASSES
    model = LSTMClassifier(HIDDEN, 2, CLASSES, numerics=QAT)

    def loss(p):
        logits = model.apply({"params": p}, x, lengths)
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(len(labels)), labels])

    grads = jax.jit(jax.grad(loss))(params)
    flat = jax.tree_util.tree_leaves_with_path(grads)
    assert len(flat) == 8
    for path, g in flat:
        assert g.dtype == jnp.float32
        assert np.isfinite(np.asarray(g)).all(), jax.tree_util.keystr(path)
        assert np.abs(np.asarray(g)).max() > 1e-6, jax.tree_util.keystr(path)


def max_error(numerics, params, x, lengths) -> float:
    reference = jit_apply(None)(params, x, lengths)
    return float(jnp.abs(jit_apply(numerics)(params, x, lengths) - reference).max())


def test_qat_logits_are_close_to_float_but_not_equal(params):
    """Tolerance: over 8 param draws x 3 input batches (N(0,1) clipped at 3) the max |error|
    measured 0.004-0.010 on logits up to 0.5 (the int8 input step alone is 3/127 = 0.024);
    0.03 leaves a 3x margin. The lower bound says QAT really rounds something."""
    x, lengths = make_inputs(6)
    error = max_error(QAT, params, x, lengths)
    assert 1e-5 < error < 0.03


def test_more_quantization_means_more_error(params):
    """weight-only int8 < int8 weights and activations < int4 weights (held in 24 of 24 measured
    draws; max errors about 0.002, 0.004-0.010 and >= 0.011)."""
    x, lengths = make_inputs(7)
    weight_only = max_error(QATNumerics(CLIP, activations=False), params, x, lengths)
    full = max_error(QAT, params, x, lengths)
    int4 = max_error(QATNumerics(CLIP, weight_bits=4), params, x, lengths)
    assert 0 < weight_only < full < int4


def test_weight_only_keeps_activations_float(params):
    """activations=False quantizes weights only: the input is not rounded to int8 bins."""
    scale = CLIP / 127
    k = np.random.default_rng(1).integers(-126, 127, (6, TIME, FEATURES))
    lengths = jnp.full((6,), TIME, jnp.int32)
    weight_only = functools.partial(jit_apply(QATNumerics(CLIP, activations=False)), params)
    low = weight_only(as_f32((k - 0.3) * scale), lengths)
    assert np.abs(np.asarray(weight_only(as_f32((k + 0.3) * scale), lengths) - low)).max() > 1e-4
    assert np.abs(np.asarray(low - jit_apply(QAT)(params, as_f32((k - 0.3) * scale), lengths))
                  ).max() > 1e-4
