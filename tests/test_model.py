"""LSTMClassifier: parameter tree, masking, batch independence, fused vs scanned float path."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lstmq.model import LSTMClassifier
from lstmq.quant import QATNumerics

FEATURES, CLASSES, HIDDEN, TIME = 5, 3, 8, 10
LENGTHS = np.array([10, 4, 1, 7, 0, 9], np.int32)  # full, short, one frame, none


@pytest.fixture(autouse=True, scope="module")
def strict_promotion():
    """The model mixes bool masks, int lengths and float32 states: no silent promotion."""
    with jax.numpy_dtype_promotion("strict"):
        yield


class PlainDotGeneral:
    """A ``dot_general_cls`` that is just ``lax.dot_general`` (what nn.Dense calls by default)."""

    def __call__(self, lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
        return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                                   preferred_element_type=preferred_element_type)


class IdentityNumerics:
    """Implements the Numerics protocol as the identity: routes the model through nn.scan."""

    def dot_general_cls(self, role: str):
        assert role in ("input0", "input", "recurrent", "readout")
        return PlainDotGeneral

    def input(self, x):
        return x

    def preactivation(self, z):
        return z

    def gate(self, y):
        return y

    def cell(self, c):
        return c

    def hidden(self, h):
        return h


def make_inputs(seed: int = 0, time: int = TIME):
    x = jax.random.normal(jax.random.PRNGKey(seed), (len(LENGTHS), time, FEATURES), jnp.float32)
    return x, jnp.asarray(LENGTHS)


def abstract_variables(model, input_size: int = FEATURES):
    """The variables ``model.init`` would create, without compiling anything."""
    x = jax.ShapeDtypeStruct((1, 3, input_size), jnp.float32)
    lengths = jax.ShapeDtypeStruct((1,), jnp.int32)
    return jax.eval_shape(model.init, jax.random.PRNGKey(0), x, lengths)


def random_params(seed: int = 0):
    """Params of LSTMClassifier(HIDDEN, 2, CLASSES): N(0, 1/fan_in) kernels, small biases.

    Drawn in numpy into the tree ``init`` would build (``eval_shape``: nothing compiles).
    """
    abstract = abstract_variables(LSTMClassifier(HIDDEN, 2, CLASSES))["params"]
    rng = np.random.default_rng(seed)

    def draw(leaf):
        scale = 0.1 if leaf.ndim == 1 else leaf.shape[0] ** -0.5
        return jnp.asarray(rng.normal(0.0, scale, leaf.shape).astype(np.float32))

    return jax.tree_util.tree_map(draw, abstract)


@functools.cache
def jitted(model: LSTMClassifier, train: bool = False):
    """``(params, x, lengths[, dropout key]) -> logits``, compiled once per model and shape."""
    return jax.jit(lambda params, x, lengths, rng=None: model.apply(
        {"params": params}, x, lengths, train=train,
        rngs=None if rng is None else {"dropout": rng}))


def jit_apply(model, params, train: bool = False):
    return functools.partial(jitted(model, train), params)


def shapes(tree):
    return jax.tree_util.tree_map(lambda a: (tuple(a.shape), str(a.dtype)), tree)


def test_param_tree_structure_and_count():
    params = abstract_variables(LSTMClassifier(hidden=24, layers=2, num_classes=10), 13)["params"]
    f32 = "float32"
    assert shapes(params) == {
        "lstm_0": {"input": {"kernel": ((13, 96), f32), "bias": ((96,), f32)},
                   "cell": {"recurrent": {"kernel": ((24, 96), f32)}}},
        "lstm_1": {"input": {"kernel": ((24, 96), f32), "bias": ((96,), f32)},
                   "cell": {"recurrent": {"kernel": ((24, 96), f32)}}},
        "readout": {"kernel": ((24, 10), f32), "bias": ((10,), f32)},
    }
    assert sum(p.size for p in jax.tree_util.tree_leaves(params)) == 8602


@pytest.mark.parametrize("numerics", [IdentityNumerics(), QATNumerics(input_clip=3.0)],
                         ids=["scan", "qat"])
def test_every_numerics_path_has_the_float_param_tree(numerics):
    """Float checkpoints load into QAT models (quant.init_from) only if the trees agree."""
    float_variables = abstract_variables(LSTMClassifier(HIDDEN, 2, CLASSES))
    variables = abstract_variables(LSTMClassifier(HIDDEN, 2, CLASSES, numerics=numerics))
    assert set(variables) == {"params"}  # no extra collections (e.g. AQT state)
    assert shapes(variables) == shapes(float_variables)


@pytest.fixture(scope="module")
def params():
    return random_params()


NUMERICS = {"float": None, "scan": IdentityNumerics(), "qat": QATNumerics(input_clip=3.0)}


@pytest.mark.parametrize("readout", ["last", "mean"])
@pytest.mark.parametrize("name", NUMERICS)
def test_frames_after_length_do_not_change_logits(params, name, readout):
    apply = jit_apply(LSTMClassifier(HIDDEN, 2, CLASSES, numerics=NUMERICS[name],
                                     readout=readout), params)
    x, lengths = make_inputs()
    valid = (jnp.arange(TIME)[None, :] < lengths[:, None])[..., None]
    garbage = 100.0 * jax.random.normal(jax.random.PRNGKey(9), (len(LENGTHS), TIME + 2, FEATURES))
    base = apply(jnp.where(valid, x, 0.0), lengths)
    assert base.shape == (len(LENGTHS), CLASSES) and base.dtype == jnp.float32
    np.testing.assert_allclose(apply(jnp.where(valid, x, garbage[:, :TIME]), lengths), base,
                               rtol=0, atol=1e-6)
    appended = jnp.concatenate([x, garbage[:, TIME:]], axis=1)  # 2 more frames, same lengths
    np.testing.assert_allclose(apply(appended, lengths), base, rtol=0, atol=1e-6)
    # Control: a change inside a clip does change its logits.
    inside = apply(x.at[0, 2].add(3.0), lengths)
    assert np.abs(np.asarray(inside - base)[0]).max() > 1e-4


@pytest.mark.parametrize("name", ["float", "qat"])
def test_mean_readout_of_one_frame_is_the_last_state_and_differs_later(params, name):
    x, _ = make_inputs()
    last, mean = (jit_apply(LSTMClassifier(HIDDEN, 2, CLASSES, numerics=NUMERICS[name],
                                           readout=r), params) for r in ("last", "mean"))
    one = jnp.ones(len(LENGTHS), jnp.int32)
    np.testing.assert_allclose(mean(x, one), last(x, one), rtol=0, atol=1e-6)
    lengths = jnp.asarray(LENGTHS)
    long = np.asarray(LENGTHS) > 3
    assert np.abs(np.asarray(mean(x, lengths) - last(x, lengths))[long]).min() > 1e-4


def test_unknown_readout_is_refused(params):
    x, lengths = make_inputs()
    with pytest.raises(ValueError, match="model.readout"):
        LSTMClassifier(HIDDEN, 2, CLASSES, readout="max").apply({"params": params}, x, lengths)


def test_zero_length_clip_reads_the_initial_state(params):
    """A clip of length 0 never updates the state: its logits are the readout of zeros."""
    x, lengths = make_inputs()
    logits = jit_apply(LSTMClassifier(HIDDEN, 2, CLASSES), params)(x, lengths)
    assert LENGTHS[4] == 0
    np.testing.assert_array_equal(logits[4], params["readout"]["bias"])


@pytest.mark.parametrize("name", ["float", "qat"])
def test_clip_logits_do_not_depend_on_the_rest_of_the_batch(params, name):
    apply = jit_apply(LSTMClassifier(HIDDEN, 2, CLASSES, numerics=NUMERICS[name]), params)
    x, lengths = make_inputs()
    others, _ = make_inputs(seed=5)
    base = apply(x, lengths)
    for row in (0, 3):  # every other clip replaced by a louder one: any batch statistic shows
        mixed = (40.0 * others).at[row].set(x[row])
        np.testing.assert_allclose(apply(mixed, lengths)[row], base[row], rtol=0, atol=1e-6)
    alone = jit_apply(LSTMClassifier(HIDDEN, 2, CLASSES, numerics=NUMERICS[name]), params)(
        x[:1], lengths[:1])
    np.testing.assert_allclose(alone[0], base[0], rtol=0, atol=1e-6)


def test_fused_float_path_equals_scanned_cell(params):
    """numerics=None uses lstm_recurrence; any Numerics object uses nn.scan(RecurrentStep)."""
    fused = LSTMClassifier(HIDDEN, 2, CLASSES)
    scanned = LSTMClassifier(HIDDEN, 2, CLASSES, numerics=IdentityNumerics())
    x, lengths = make_inputs()
    labels = jnp.array([0, 1, 2, 0, 1, 2])

    def value_and_grads(model):
        def loss(params, x):
            logits = model.apply({"params": params}, x, lengths)
            return jnp.sum(jax.nn.log_softmax(logits)[jnp.arange(len(labels)), labels]), logits

        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(params, x)

    (v_fused, logits_fused), (gp_fused, gx_fused) = value_and_grads(fused)
    (v_scan, logits_scan), (gp_scan, gx_scan) = value_and_grads(scanned)
    np.testing.assert_allclose(logits_fused, logits_scan, rtol=0, atol=1e-5)
    np.testing.assert_allclose(v_fused, v_scan, rtol=1e-5)
    assert jax.tree_util.tree_structure(gp_fused) == jax.tree_util.tree_structure(gp_scan)
    for a, b in zip(jax.tree_util.tree_leaves(gp_fused), jax.tree_util.tree_leaves(gp_scan)):
        assert np.abs(b).max() > 1e-4
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
    np.testing.assert_allclose(gx_fused, gx_scan, rtol=0, atol=1e-5)


class CountingNumerics(IdentityNumerics):
    """Counts the calls of each Numerics hook while the model is traced."""

    def __init__(self):
        self.calls = {}

    def _count(self, name, value):
        self.calls[name] = self.calls.get(name, 0) + 1
        return value

    def dot_general_cls(self, role):
        self._count(f"dot:{role}", None)
        return PlainDotGeneral

    def input(self, x):
        return self._count("input", x)

    def preactivation(self, z):
        return self._count("preactivation", z)

    def gate(self, y):
        return self._count("gate", y)

    def cell(self, c):
        return self._count("cell", c)

    def hidden(self, h):
        return self._count("hidden", h)


def test_every_quantization_point_goes_through_numerics():
    """Per traced step: one pre-activation, five gates (i, f, g, o, tanh(c)), one cell and one
    hidden state; matmuls by role: input0 (first layer), input (the others), recurrent, readout."""
    layers = 3
    numerics = CountingNumerics()
    model = LSTMClassifier(HIDDEN, layers, CLASSES, numerics=numerics)
    x, lengths = make_inputs()
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x, lengths)
    numerics.calls.clear()
    jax.eval_shape(model.apply, variables, x, lengths)
    calls = numerics.calls
    assert (calls["input"], calls["dot:input0"], calls["dot:input"], calls["dot:readout"]) == (
        1, 1, layers - 1, 1)
    steps = calls["preactivation"]  # traces of the scanned step, over all layers
    assert steps > 0 and steps % layers == 0
    assert calls["gate"] == 5 * steps
    assert calls["cell"] == calls["hidden"] == calls["dot:recurrent"] == steps


def test_dropout_only_when_training(params):
    model = LSTMClassifier(HIDDEN, 2, CLASSES, dropout=0.5)
    x, lengths = make_inputs()
    evaluated = jit_apply(model, params)(x, lengths)  # no dropout key needed
    no_dropout = jit_apply(LSTMClassifier(HIDDEN, 2, CLASSES), params)(x, lengths)
    np.testing.assert_array_equal(evaluated, no_dropout)
    train = jit_apply(model, params, train=True)
    key1, key2 = jax.random.PRNGKey(1), jax.random.PRNGKey(2)
    assert np.abs(np.asarray(train(x, lengths, key1) - evaluated)).max() > 1e-3
    assert np.abs(np.asarray(train(x, lengths, key1) - train(x, lengths, key2))).max() > 1e-3
    np.testing.assert_array_equal(train(x, lengths, key1), train(x, lengths, key1))
    with pytest.raises(Exception, match="dropout"):
        train(x, lengths)  # training needs a dropout key


def test_time_major_dropout_draws_the_batch_major_mask():
    """The time-major model's dropout between layers masks exactly what nn.Dropout masks on
    the batch-major view (same module name, same key), so training did not change."""
    from lstmq.model import TimeMajorDropout

    x = jax.random.normal(jax.random.PRNGKey(0), (9, 5, 7))  # [time, batch, hidden]
    rngs = {"dropout": jax.random.PRNGKey(3)}
    ours = TimeMajorDropout(0.3, deterministic=False).apply({}, x, rngs=rngs)
    flax_view = nn.Dropout(0.3, deterministic=False).apply({}, jnp.swapaxes(x, 0, 1), rngs=rngs)
    np.testing.assert_array_equal(ours, jnp.swapaxes(flax_view, 0, 1))
    assert 0 < float(jnp.mean(ours == 0)) < 0.6  # it does drop
    np.testing.assert_array_equal(TimeMajorDropout(0.3, deterministic=True).apply({}, x), x)
