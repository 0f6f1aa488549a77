"""Pure-integer LSTM inference (int8/int16/int32 only) and conversion from a QAT model.

The recipe is the table in docs/numerics.md. ``convert_params`` runs offline (floats
allowed); ``quantize_input`` is the one float boundary; ``predict_int`` touches integers
only, which ``lstmq.audit.audit_float_free`` checks on its jaxpr.

An integer model is a flat mapping ``name -> np.ndarray`` whose names and dtypes are the
rows of ``lstmq.budget.count_bytes``, so its bytes can be counted from the arrays alone,
plus, for a model that reads the mean hidden state, the flag ``MEAN_READOUT`` (a structural
setting like the layer count, not a parameter).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lstmq import fixedpoint as fx
from lstmq.recipe import (CELL_FRAC_BITS, GATE_FRAC_BITS, HIDDEN_FRAC_BITS, INTEGER_WEIGHT_BITS,
                          PREACT_FRAC_BITS)

IntegerModel = Mapping[str, np.ndarray]
_HIDDEN_SCALE = 2.0**-HIDDEN_FRAC_BITS
# o * tanh(c) is Q0.30; the hidden state is Q0.7.
_HIDDEN_SHIFT = 2 * GATE_FRAC_BITS - HIDDEN_FRAC_BITS
# f * c: Q0.15 x Q4.11 -> Q4.26 -> Q4.11; i * g: Q0.30 -> Q4.11.
_FC_SHIFT = GATE_FRAC_BITS
_IG_SHIFT = 2 * GATE_FRAC_BITS - CELL_FRAC_BITS
_CELL_TO_PREACT = PREACT_FRAC_BITS - CELL_FRAC_BITS  # Q4.11 -> Q3.12 for tanh(c)
MEAN_READOUT = "readout/mean_of_frames"  # present: the readout reads the mean hidden state
READOUTS = ("last", "mean")


class ConversionError(ValueError):
    """A trained model cannot be represented by the integer recipe."""


def _symmetric_quantize(w: np.ndarray, bits: int, per_channel: bool) -> tuple[np.ndarray, np.ndarray]:
    """AQT's symmetric quantization, op for op in float32: scale = max|w| / qmax.

    Returns (<int8> values in [-qmax, qmax], <float32> scale per output channel or scalar).
    """
    qmax = 2 ** (bits - 1) - 1
    w = jnp.asarray(w, jnp.float32)
    bound = jnp.max(jnp.abs(w), axis=0, keepdims=True) if per_channel else jnp.max(jnp.abs(w))
    bound = jnp.where(bound == 0.0, 1.0, bound)
    scale = bound / float(qmax)
    q = jnp.round(jnp.clip(w * (1.0 / scale), -qmax, qmax))
    return np.asarray(q, np.int8), np.asarray(scale, np.float32).reshape(-1)


def input_scale(input_clip: float) -> np.float32:
    """The int8 input scale exactly as the QAT model computes it (float32)."""
    return np.float32(np.float32(input_clip) / np.float32(127.0))


def convert_params(params: Mapping[str, Any], input_clip: float, weight_bits: int = 8,
                   readout: str = "last") -> dict[str, np.ndarray]:
    """Integer model of one seed's QAT parameters, or float ones for post-training
    quantization (``ptq-integer``); the float tree as ``LSTMClassifier`` makes it.

    ``readout``: the classifier's ``model.readout`` (last state, or mean over frames).

    Raises:
      ConversionError: a requantization multiplier or accumulator does not fit int32, or an
        unknown readout.
    """
    if readout not in READOUTS:
        raise ConversionError(f"model.readout must be one of {READOUTS}, got {readout!r}")
    if weight_bits not in INTEGER_WEIGHT_BITS:
        raise ConversionError(f"integer weights must be 4 or 8 bits (int8 matmuls), got {weight_bits}")
    layers = sorted((k for k in params if re.fullmatch(r"lstm_\d+", k)), key=lambda k: int(k[5:]))
    arrays: dict[str, np.ndarray] = {}
    m, s = fx.quantize_multiplier(float(input_scale(input_clip)))
    arrays["input_quant/multiplier"] = np.asarray(m, np.int32)
    arrays["input_quant/shift"] = np.asarray(s, np.int8)
    in_scale = float(input_scale(input_clip))
    for name in layers:
        layer = params[name]
        wx, sx = _symmetric_quantize(layer["input"]["kernel"], weight_bits, per_channel=True)
        wh, sh = _symmetric_quantize(layer["cell"]["recurrent"]["kernel"], weight_bits, True)
        acc_scale = sx.astype(np.float64) * in_scale
        bias = np.round(np.asarray(layer["input"]["bias"], np.float64) / acc_scale)
        if np.abs(bias).max(initial=0) >= 2**31:
            raise ConversionError(f"{name}/input/bias does not fit int32 at the accumulator scale")
        bias = bias.astype(np.int32)
        mx, shx = fx.quantize_multipliers(acc_scale * 2.0**PREACT_FRAC_BITS)
        mh, shh = fx.quantize_multipliers(sh.astype(np.float64) * _HIDDEN_SCALE * 2.0**PREACT_FRAC_BITS)
        arrays.update({
            f"{name}/input/kernel": wx,
            f"{name}/input/bias": bias,
            f"{name}/input/requant_multiplier": mx.astype(np.int32),
            f"{name}/input/requant_shift": shx.astype(np.int8),
            f"{name}/cell/recurrent/kernel": wh,
            f"{name}/cell/recurrent/requant_multiplier": mh.astype(np.int32),
            f"{name}/cell/recurrent/requant_shift": shh.astype(np.int8),
        })
        in_scale = _HIDDEN_SCALE
    wr, sr = _symmetric_quantize(params["readout"]["kernel"], weight_bits, per_channel=False)
    readout_bias = np.round(np.asarray(params["readout"]["bias"], np.float64)
                            / (float(sr[0]) * _HIDDEN_SCALE))
    if np.abs(readout_bias).max(initial=0) >= 2**31:
        raise ConversionError("readout/bias does not fit int32 at the logit scale")
    readout_bias = readout_bias.astype(np.int32)
    arrays["readout/kernel"] = wr
    arrays["readout/bias"] = readout_bias
    if readout == "mean":
        arrays[MEAN_READOUT] = np.asarray(1, np.int8)
    try:  # every accumulator and gate pre-activation, proven once for the whole model
        check_int32_bounds(arrays)
    except OverflowError as error:
        raise ConversionError(str(error)) from None
    return arrays


def check_int32_bounds(model: IntegerModel) -> None:
    """Proves statically that no int32 sum of ``predict_int`` can wrap, for any int8 input
    (-128 included; the hidden state stays in -127..127): every matmul accumulator (bias
    included) and every gate pre-activation ``z_x + z_h`` (two requantized terms, added
    before saturating to int16).

    Raises:
      OverflowError: naming the layer, the sum and the channel.
    """
    for index, name in enumerate(layer_names(model)):
        terms = []
        for part, bias in (("input", model[f"{name}/input/bias"]), ("cell/recurrent", None)):
            kernel = model[f"{name}/{part}/kernel"]
            largest = 128 if (index, part) == (0, "input") else 127  # features: any int8
            try:
                fx.check_accumulator_fits(kernel, largest, bias)
            except OverflowError as error:
                raise OverflowError(f"{name}/{part}: {error}") from None
            terms.append(fx.requantized_bounds(fx.accumulator_bounds(kernel, largest, bias),
                                               model[f"{name}/{part}/requant_multiplier"],
                                               model[f"{name}/{part}/requant_shift"]))
        total = terms[0] + terms[1]
        if total.max(initial=0) > fx.INT32_MAX:
            j = int(total.argmax())
            raise OverflowError(f"{name}: the gate pre-activation z_x + z_h may overflow int32: "
                                f"channel {j} bound {int(total[j]):,} > {fx.INT32_MAX:,}")
    try:
        fx.check_accumulator_fits(model["readout/kernel"], 127, model["readout/bias"])
    except OverflowError as error:
        raise OverflowError(f"readout: {error}") from None


def logit_scale(params: Mapping[str, Any], weight_bits: int = 8) -> float:
    """Real value of one unit of the integer logits (readout scale x hidden scale): a host
    tool multiplies by it to turn integer logits into calibrated scores."""
    _, scale = _symmetric_quantize(params["readout"]["kernel"], weight_bits, per_channel=False)
    return float(scale[0]) * _HIDDEN_SCALE


def quantize_input(model: IntegerModel, x: np.ndarray) -> np.ndarray:
    """The float boundary: normalised MFCCs ``<float32>[..., F]`` to ``<int8>[..., F]``.

    Same operations as the QAT model's first matmul (AQT static calibration), so the int8
    input is identical to what QAT saw.
    """
    m = int(model["input_quant/multiplier"])
    s = int(model["input_quant/shift"])
    scale = np.float32(m * 2.0 ** -(31 + s))
    q = jnp.round(jnp.clip(jnp.asarray(x, jnp.float32) * (1.0 / jnp.float32(scale)), -127, 127))
    return np.asarray(q, np.int8)


def layer_names(model: IntegerModel) -> list[str]:
    names = {k.split("/")[0] for k in model if re.match(r"lstm_\d+/", k)}
    return sorted(names, key=lambda k: int(k[5:]))


def _lstm_layer(model: Mapping[str, jax.Array], name: str, x: jax.Array,
                valid: jax.Array) -> jax.Array:
    """One integer LSTM layer. x <int8>[T, B, F], valid <bool>[T, B] -> <int8>[T, B, H]."""
    wx = model[f"{name}/input/kernel"]
    wh = model[f"{name}/cell/recurrent/kernel"]
    acc = fx.int_matmul(x, wx) + model[f"{name}/input/bias"]
    z_input = fx.requantize(acc, model[f"{name}/input/requant_multiplier"],
                            model[f"{name}/input/requant_shift"].astype(jnp.int32))
    mh = model[f"{name}/cell/recurrent/requant_multiplier"]
    shh = model[f"{name}/cell/recurrent/requant_shift"].astype(jnp.int32)
    hidden = wh.shape[0]
    batch = x.shape[1]

    def step(carry, inputs):
        c, h = carry  # <int16>[B, H] Q4.11, <int8>[B, H] Q0.7
        zx, v = inputs
        zh = fx.requantize(fx.int_matmul(h, wh), mh, shh)
        z = fx.saturate(zx + zh, 16).astype(jnp.int16)  # Q3.12
        zi, zf, zg, zo = jnp.split(z, 4, axis=-1)
        i, f, o = fx.sigmoid_q15(zi), fx.sigmoid_q15(zf), fx.sigmoid_q15(zo)
        g = fx.tanh_q15(zg)
        new_c = fx.fixed_mul_shift(f, c, _FC_SHIFT) + fx.fixed_mul_shift(i, g, _IG_SHIFT)
        new_c = fx.saturate(new_c, 16).astype(jnp.int16)
        c_preact = fx.saturate(fx.saturating_left_shift(new_c, _CELL_TO_PREACT), 16)
        tanh_c = fx.tanh_q15(c_preact.astype(jnp.int16))
        new_h = fx.fixed_mul_shift(o, tanh_c, _HIDDEN_SHIFT)
        new_h = jnp.clip(new_h, -127, 127).astype(jnp.int8)
        keep = v[:, None]
        c = jnp.where(keep, new_c, c)
        h = jnp.where(keep, new_h, h)
        return (c, h), h

    init = (jnp.zeros((batch, hidden), jnp.int16), jnp.zeros((batch, hidden), jnp.int8))
    _, outputs = jax.lax.scan(step, init, (z_input, valid))
    return outputs


def mean_state(outputs: jax.Array, valid: jax.Array, lengths: jax.Array) -> jax.Array:
    """Mean Q0.7 state over each clip's valid frames, rounded half up like the QAT model.

    outputs <int8>[T, B, H], valid <bool>[T, B], lengths <int32>[B] -> <int8>[B, H]. The sum
    is at most 127 * T in magnitude, exact in int32 for any clip under 16 million frames.
    """
    total = jnp.sum(jnp.where(valid[:, :, None], outputs, jnp.int8(0)).astype(jnp.int32), axis=0)
    count = jnp.maximum(lengths.astype(jnp.int32), 1)[:, None]
    return jnp.clip(fx.rounding_divide(total, count), -127, 127).astype(jnp.int8)


def predict_int(model: Mapping[str, jax.Array], x: jax.Array, lengths: jax.Array) -> jax.Array:
    """Integer logits of a batch (reading the last state, or the mean state when the model
    holds ``MEAN_READOUT``).

    Args:
      model: integer model arrays (numpy or jnp).
      x: <int8>[batch, time, features] quantized input (``quantize_input``).
      lengths: <int32>[batch] frames of each clip; later frames are ignored.

    Returns:
      <int32>[batch, classes] logits at the readout's common scale; argmax is the digit.
    """
    valid = jnp.arange(x.shape[1], dtype=jnp.int32)[:, None] < lengths[None, :]
    h = jnp.transpose(x, (1, 0, 2))
    for name in layer_names(model):
        h = _lstm_layer(model, name, h, valid)
    summary = mean_state(h, valid, lengths) if MEAN_READOUT in model else h[-1]
    return fx.int_matmul(summary, model["readout/kernel"]) + model["readout/bias"]


def stack_models(models: list[IntegerModel]) -> dict[str, np.ndarray]:
    """Stack one integer model per seed along a leading axis (for ``jax.vmap``)."""
    return {k: np.stack([m[k] for m in models]) for k in models[0]}


def predict_int_split(models: list[IntegerModel], split, batch_size: int = 512,
                      bucket: int = 16) -> np.ndarray:
    """Integer logits ``<int32>[seeds, n, classes]`` of every model on a prepared split."""
    from lstmq.prediction import predict_split

    stacked = stack_models(models)
    batched = jax.jit(jax.vmap(predict_int, in_axes=(0, None, None)))
    predict = lambda params, x, lengths: batched(
        params, quantize_input(models[0], x), jnp.asarray(lengths, jnp.int32))
    return predict_split(predict, stacked, split, batch_size, bucket)
