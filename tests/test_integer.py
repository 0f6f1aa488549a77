"""The integer model: bit-exact against a NumPy reference, float-free, faithful to QAT.

Served-path checks in the style of AQT's ``flax_e2e_model_test``: the exact served arrays
(names, dtypes, shapes = the budget's rows), bit-exact logits against an independent
computation, and mutations of served integers that must change the logits.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lstmq import budget
from lstmq.audit import FloatFoundError, audit_float_free
from lstmq.budget import Precision
from lstmq.integer import MEAN_READOUT, ConversionError, convert_params, predict_int, quantize_input
from lstmq.integer_reference import predict_int_reference
from lstmq.model import LSTMClassifier
from lstmq.quant import QATNumerics

CLIP = 3.0
FEATURES, FRAMES, BATCH, CLASSES = 13, 20, 48, 10
INT_DTYPES = {"int8", "int16", "int32", "bool"}
# AQT's dot_general calls jnp.promote_types on arrays (deprecated in this jax); not ours.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Implicit conversion of an array to a dtype:DeprecationWarning")
predict = jax.jit(predict_int)


@pytest.fixture(autouse=True)
def strict_promotion():
    """Integer code must not rely on implicit promotion (an int8 x int32 mix fails loudly)."""
    with jax.numpy_dtype_promotion("strict"):
        yield


def qat_model(hidden: int = 16, layers: int = 2, classes: int = CLASSES, bits: int = 8,
              readout: str = "last", recurrence: str = "auto"):
    return LSTMClassifier(hidden=hidden, layers=layers, num_classes=classes,
                          numerics=QATNumerics(input_clip=CLIP, weight_bits=bits),
                          readout=readout, recurrence=recurrence)


def random_params(hidden: int = 16, layers: int = 2, scale: float = 1.0, seed: int = 0):
    """QAT params (numpy) with random biases (Flax starts them at 0); ``scale`` > 1 drives
    the pre-activations and the cell into saturation."""
    rng = np.random.default_rng(seed + 1)
    return jax.tree_util.tree_map(
        lambda p: np.float32(scale) * (p if p.ndim == 2 else
                                       (0.5 * rng.standard_normal(p.shape)).astype(np.float32)),
        _initial_params(hidden, layers, seed))


@functools.lru_cache(maxsize=None)
def _initial_params(hidden: int, layers: int, seed: int):
    """Weight bits do not change the param tree (AQT quantizes in the forward pass)."""
    x, lengths = jnp.zeros((1, 2, FEATURES)), jnp.array([2], jnp.int32)
    with jax.numpy_dtype_promotion("standard"):
        init = jax.jit(qat_model(hidden, layers).init)
        params = init(jax.random.key(seed), x, lengths)["params"]
    return jax.tree_util.tree_map(np.asarray, params)


def random_inputs(seed: int = 0, batch: int = BATCH, frames: int = FRAMES):
    """Float features (some beyond the clip) and lengths from 1 to ``frames``."""
    rng = np.random.default_rng(seed)
    x = (1.5 * rng.standard_normal((batch, frames, FEATURES))).astype(np.float32)
    lengths = rng.integers(1, frames + 1, batch).astype(np.int32)
    lengths[:2] = (1, frames)
    return x, lengths


def int_logits(model, x_int8, lengths) -> np.ndarray:
    return np.asarray(predict(model, x_int8, lengths))


@pytest.mark.parametrize("readout", ["last", "mean"])
@pytest.mark.parametrize("bits", [8, 4])
# "saturating": measured ~7 % of the int16 pre-activation/cell values clip, and h hits +-127.
@pytest.mark.parametrize("scale", [1.0, 4.0], ids=["typical", "saturating"])
def test_predict_int_is_bit_exact_with_numpy_reference(bits, scale, readout):
    model = convert_params(random_params(scale=scale), CLIP, weight_bits=bits, readout=readout)
    x, lengths = random_inputs(seed=int(scale) + bits)
    xq = quantize_input(model, x)
    logits = int_logits(model, xq, lengths)
    assert logits.dtype == np.int32 and logits.shape == (BATCH, CLASSES)
    np.testing.assert_array_equal(logits, predict_int_reference(model, xq, lengths))
    assert len(np.unique(logits.argmax(-1))) > 1 and len(np.unique(logits[:, 0])) > BATCH // 2
    if readout == "mean":  # the flag really switches the readout
        last = {k: v for k, v in model.items() if k != MEAN_READOUT}
        assert np.mean(int_logits(last, xq, lengths) != logits) > 0.5


def test_served_arrays_are_the_budget_rows():
    params = random_params()
    model = convert_params(params, CLIP)
    report = budget.count_bytes(params, Precision(8))
    assert list(model) == [row.name for row in report.rows]
    for row in report.rows:
        array = model[row.name]
        assert (str(array.dtype), array.shape) == (row.dtype, row.shape), row.name
    assert budget.count_artifact_bytes(model) == report.total
    assert report.total == budget.model_bytes(16, 2, FEATURES, CLASSES, 8).total


@pytest.mark.parametrize("readout", ["last", "mean"])
def test_predict_int_is_float_free(readout):
    model = {k: jnp.asarray(v)
             for k, v in convert_params(random_params(), CLIP, readout=readout).items()}
    x, lengths = random_inputs()
    xq = jnp.asarray(quantize_input(model, x))
    for fn in (predict_int, predict):
        report = audit_float_free(fn, model, xq, jnp.asarray(lengths))
        assert report.dtypes <= INT_DTYPES
        assert report.primitive_counts["scan"] == 2  # one per layer: the recurrence was audited


@pytest.mark.parametrize("numerics", [None, QATNumerics(input_clip=CLIP)], ids=["float", "qat"])
def test_float_and_qat_models_fail_the_audit(numerics):
    params = random_params()
    model = LSTMClassifier(hidden=16, layers=2, numerics=numerics)
    x, lengths = random_inputs()
    with jax.numpy_dtype_promotion("standard"), pytest.raises(FloatFoundError, match="float32"):
        audit_float_free(lambda p, v, n: model.apply({"params": p}, v, n), params, x, lengths)
    # Integer arguments do not hide the float matmuls inside.
    scale = np.float32(CLIP / 127)
    with jax.numpy_dtype_promotion("standard"), pytest.raises(FloatFoundError) as info:
        audit_float_free(lambda v, n: model.apply({"params": params}, v * scale, n),
                         quantize_input(convert_params(params, CLIP), x), lengths)
    assert any("dot_general (result): float32" in line for line in info.value.violations)


@pytest.mark.parametrize("name", ["lstm_0/input/kernel", "lstm_1/input/kernel",
                                  "lstm_0/cell/recurrent/kernel", "readout/kernel",
                                  "lstm_0/input/requant_multiplier"])
def test_zeroing_one_served_integer_changes_logits(name):
    model = convert_params(random_params(), CLIP)
    x, lengths = random_inputs()
    xq = quantize_input(model, x)
    before = int_logits(model, xq, lengths)
    mutated = dict(model)
    flat = model[name].copy().reshape(-1)
    flat[np.argmax(np.abs(flat.astype(np.int64)))] = 0  # the largest-magnitude entry
    mutated[name] = flat.reshape(model[name].shape)
    assert not np.array_equal(int_logits(mutated, xq, lengths), before)


def test_changing_a_bias_changes_logits():
    model = convert_params(random_params(), CLIP)
    x, lengths = random_inputs()
    xq = quantize_input(model, x)
    before = int_logits(model, xq, lengths)
    bumped = model["readout/bias"] + np.where(np.arange(CLASSES) == 3, 7, 0).astype(np.int32)
    readout = dict(model, **{"readout/bias": bumped})
    expected = before.copy()
    expected[:, 3] += 7  # the readout bias is added to the int32 logits as is
    np.testing.assert_array_equal(int_logits(readout, xq, lengths), expected)
    bias = model["lstm_0/input/bias"].copy()
    bias[0] += np.int32(2**20)
    assert not np.array_equal(int_logits(dict(model, **{"lstm_0/input/bias": bias}), xq, lengths),
                              before)


def test_padding_beyond_lengths_is_ignored():
    model = convert_params(random_params(), CLIP)
    x, lengths = random_inputs()
    xq = quantize_input(model, x)
    rng = np.random.default_rng(7)
    garbage = rng.integers(-127, 128, (BATCH, FRAMES + 9, FEATURES)).astype(np.int8)
    padded = np.where(np.arange(FRAMES + 9)[None, :, None] < lengths[:, None, None],
                      np.pad(xq, ((0, 0), (0, 9), (0, 0))), garbage)
    np.testing.assert_array_equal(int_logits(model, padded, lengths),
                                  int_logits(model, xq, lengths))


def test_quantize_input_is_aqt_int8_lhs_quantization():
    model = convert_params(random_params(), CLIP)
    rng = np.random.default_rng(3)
    x = (2.0 * rng.standard_normal((64, FEATURES))).astype(np.float32)
    # AQT itself: the QAT model's first matmul (input0 role) with an identity kernel returns
    # the dequantized int8 input, q * scale; dividing by the scale recovers q exactly.
    dense = nn.Dense(FEATURES, use_bias=False,
                     dot_general_cls=QATNumerics(input_clip=CLIP).dot_general_cls("input0"))
    scale = np.float32(CLIP) / np.float32(127)
    with jax.numpy_dtype_promotion("standard"):
        dequantized = dense.apply({"params": {"kernel": jnp.eye(FEATURES)}}, x)
    aqt_q = np.rint(np.asarray(dequantized) / scale)
    np.testing.assert_array_equal(quantize_input(model, x), aqt_q)
    # The formula, away from ties: round(clip(x / s, -127, 127)).
    ratio = x / scale
    away = np.abs(ratio - np.floor(ratio) - 0.5) > 1e-3
    expected = np.asarray(jnp.round(jnp.clip(x / (CLIP / 127), -127, 127)))
    np.testing.assert_array_equal(quantize_input(model, x)[away], expected[away])
    beyond = np.array([CLIP * 1.01, -CLIP * 1.01, 1e6, -1e6, np.inf, -np.inf], np.float32)
    np.testing.assert_array_equal(quantize_input(model, beyond), [127, -127, 127, -127, 127, -127])


def test_4bit_weights_stay_within_plus_minus_7():
    params = random_params()
    model = convert_params(params, CLIP, weight_bits=4)
    for name in [row.name for row in budget.count_bytes(params, Precision(4)).rows
                 if row.dtype == "int4"]:
        values = model[name]
        assert values.dtype == np.int8 and values.min() >= -7 and values.max() <= 7, name
        assert np.abs(values).max() == 7, name  # abs-max scaling uses the full range


def train_qat_on_separable_task(steps: int = 100, classes: int = 4, noise: float = 5.0,
                                readout: str = "last", recurrence: str = "auto"):
    """A QAT model trained ~100 Adam steps on noisy class prototypes (~75 % accuracy, so many
    test clips sit near a decision boundary). Returns (model, params, sample_fn)."""
    protos = np.random.default_rng(42).standard_normal((classes, FEATURES)).astype(np.float32)

    def sample(n, seed):
        rng = np.random.default_rng(seed)
        y = rng.integers(0, classes, n)
        x = protos[y][:, None] + noise * rng.standard_normal((n, 24, FEATURES)).astype(np.float32)
        lengths = rng.integers(8, 25, n).astype(np.int32)
        return x.astype(np.float32), lengths, y

    model = qat_model(classes=classes, readout=readout, recurrence=recurrence)
    tx = optax.adam(1e-2)

    @jax.jit
    def step(params, opt, x, lengths, y):
        def loss(p):
            logits = model.apply({"params": p}, x, lengths)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        grads = jax.grad(loss)(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt

    x, lengths, y = sample(128 * steps, 0)
    params = jax.jit(model.init)(jax.random.key(0), x[:2], lengths[:2])["params"]
    opt = tx.init(params)
    for i in range(steps):
        batch = slice(128 * i, 128 * (i + 1))
        params, opt = step(params, opt, x[batch], lengths[batch], y[batch])
    return model, params, sample


@pytest.mark.parametrize("readout", ["last", "mean"])
def test_integer_model_agrees_with_qat_model(readout):
    with jax.numpy_dtype_promotion("standard"):  # training and the float model: not ours
        model, params, sample = train_qat_on_separable_task(readout=readout)
        x, lengths, labels = sample(512, 1)
        qat = np.asarray(jax.jit(model.apply)({"params": params}, x, lengths))
    int_model = convert_params(params, CLIP, readout=readout)
    logits = int_logits(int_model, quantize_input(int_model, x), lengths)
    # Integer logits in float units: s_r * 2^-7 (readout per-tensor scale x hidden scale).
    readout_scale = np.abs(np.asarray(params["readout"]["kernel"])).max() / 127
    error = np.abs(logits * readout_scale / 128 - qat).max()
    qat_pred, int_pred = qat.argmax(-1), logits.argmax(-1)
    top2 = np.sort(qat, -1)[:, -2:]
    # The model learned (accuracy ~0.75 on 4 classes), so agreement is not on a constant.
    assert np.mean(qat_pred == labels) > 0.6
    # The two paths share the int8 grids; they differ only by the LUT error (<= 3.9e-4) and
    # the double rounding of requantize (<= 1 LSB of Q3.12), which now and then flips one Q0.7
    # LSB of h (1/128). Measured: max logit difference 0.03 (of a range ~4).
    assert error < 0.1
    # A flip is possible only where the QAT top-2 margin is under 2 * error (near ties);
    # measured agreement 0.996 (2 of 512 clips, both with margins < 0.01).
    assert np.all((qat_pred == int_pred) | (top2[:, 1] - top2[:, 0] <= 2 * error))
    assert np.mean(qat_pred == int_pred) >= 0.98
    assert abs(np.mean(int_pred == labels) - np.mean(qat_pred == labels)) <= 0.02


def test_convert_params_rejects_16_bit_weights():
    with pytest.raises(ConversionError):
        convert_params(random_params(), CLIP, weight_bits=16)


def test_convert_params_rejects_readout_bias_beyond_int32():
    params = random_params()
    readout = {"kernel": params["readout"]["kernel"] * 1e-3,
               "bias": params["readout"]["bias"] + 1e4}
    with pytest.raises(ConversionError):
        convert_params({**params, "readout": readout}, CLIP)


def tiny_run_config(folder, mode: str):
    from lstmq.config import load_config

    return load_config(None, [f"data.path={folder}", "features.cache=false", "train.epochs=1",
                              "model.hidden=8", "train.seeds=1", "train.batch_size=8",
                              "data.split=official", "data.val_fraction=0",
                              f"quant.mode={mode}"])


def test_convert_run_and_integer_evaluation(wav_folder, tmp_path):
    from lstmq.inference import evaluate_run
    from lstmq.paths import PathError, integer_models
    from lstmq.pipeline import prepare_data
    from lstmq.runner import train_and_evaluate
    from lstmq.runs import load_run

    with jax.numpy_dtype_promotion("standard"):
        data = prepare_data(tiny_run_config(wav_folder, "qat"), progress=False)  # both runs'
        train_and_evaluate(tiny_run_config(wav_folder, "float"), tmp_path / "float", data,
                           progress=False)
        float_run = load_run(tmp_path / "float")
        with pytest.raises(PathError, match="needs a qat run"):
            integer_models(float_run, "qat-integer")  # never a PTQ model labelled QAT
        assert len(integer_models(float_run, "ptq-integer")) == 1

        train_and_evaluate(tiny_run_config(wav_folder, "qat"), tmp_path / "qat", data,
                           progress=False)
        models = integer_models(load_run(tmp_path / "qat"))
        with pytest.raises(PathError, match="needs a float run"):
            integer_models(load_run(tmp_path / "qat"), "ptq-integer")
        # evaluate_run(integer=True) is integer_models + predict_int_split on the test split.
        report = evaluate_run(tmp_path / "qat", integer=True, progress=False)
    assert len(models) == 1 and report["path"] == "qat-integer"
    assert report["test_count"] == len(data.test) == 40
    # Its accuracy is that of the NumPy reference on the same MFCC clips.
    split = data.test
    logits = predict_int_reference(models[0], quantize_input(models[0], split.x), split.lengths)
    accuracy = float(np.mean(logits.argmax(-1) == split.labels))
    assert report["test_accuracy"] == pytest.approx(accuracy)


def test_convert_params_refuses_an_unknown_readout():
    with pytest.raises(ConversionError, match="readout"):
        convert_params(random_params(), CLIP, readout="max")


def _wide_gates_params():
    """Float parameters whose input and recurrent gate terms each fit int32 once converted,
    but whose sum z_x + z_h need not (a bias of 3e5 and recurrent weights of 3e4)."""
    model = LSTMClassifier(hidden=8, layers=1, num_classes=2)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 2, 3)), jnp.ones((1,), jnp.int32))
    params = jax.tree_util.tree_map(np.asarray, params["params"])
    params["lstm_0"]["input"]["kernel"] = np.ones_like(params["lstm_0"]["input"]["kernel"])
    params["lstm_0"]["input"]["bias"] = np.full_like(params["lstm_0"]["input"]["bias"], 3e5)
    recurrent = params["lstm_0"]["cell"]["recurrent"]
    recurrent["kernel"] = np.full_like(recurrent["kernel"], 3e4)
    return params


def test_a_model_whose_gate_preactivation_sum_could_wrap_int32_is_refused():
    from lstmq.integer import check_int32_bounds

    with pytest.raises(ConversionError, match=r"lstm_0: the gate pre-activation z_x \+ z_h"):
        convert_params(_wide_gates_params(), 127.0)
    fine = _wide_gates_params()
    fine["lstm_0"]["cell"]["recurrent"]["kernel"] /= 10  # z_h a tenth: the sum fits
    check_int32_bounds(convert_params(fine, 127.0))


def test_the_first_layers_accumulator_is_proven_for_an_int8_input_of_minus_128():
    from lstmq.integer import check_int32_bounds

    kernel = np.full((13, 4), 127, np.int8)  # sum |w| = 1651 per channel
    model = {
        "lstm_0/input/kernel": kernel,
        "lstm_0/input/bias": np.full(4, 2**31 - 1 - 1651 * 127, np.int32),  # fits at |x| <= 127
        "lstm_0/input/requant_multiplier": np.full(4, 2**30, np.int32),
        "lstm_0/input/requant_shift": np.full(4, 31, np.int8),
        "lstm_0/cell/recurrent/kernel": np.zeros((1, 4), np.int8),
        "lstm_0/cell/recurrent/requant_multiplier": np.full(4, 2**30, np.int32),
        "lstm_0/cell/recurrent/requant_shift": np.zeros(4, np.int8),
        "readout/kernel": np.ones((1, 2), np.int8), "readout/bias": np.zeros(2, np.int32)}
    with pytest.raises(OverflowError, match="lstm_0/input: int32 accumulator may overflow"):
        check_int32_bounds(model)  # x = -128 everywhere would wrap it
    model["lstm_0/input/bias"] = np.full(4, 2**31 - 1 - 1651 * 128, np.int32)
    check_int32_bounds(model)
