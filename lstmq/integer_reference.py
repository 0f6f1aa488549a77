"""Plain NumPy reference of the whole integer model (recipe v1, docs/numerics.md).

``predict_int_reference`` evaluates the recipe with exact int64 NumPy arithmetic, written
from the definitions in docs/numerics.md rather than from ``lstmq.integer``: no jnp, no
int32 tricks (limbs, ``>>``-based rounding), only ``floor`` divisions of exact products.
Tests hold ``lstmq.integer.predict_int`` to it bit for bit.

Every value that the served path keeps in int32 is checked to fit int32 here, so a
disagreement cannot hide behind a silent wrap-around on either side.

| step | exact definition |
|---|---|
| ``rsr(x, s)`` | ``floor(x / 2^s + 1/2)`` |
| ``requant(acc, m, s)`` | ``rsr(clip32(floor(clip32(acc * 2^max(-s, 0)) * m / 2^31 + 1/2)), max(s, 0))`` |
| ``z`` | ``sat16(requant(x W_x + b) + requant(h W_h))``, Q3.12 |
| ``i, f, o`` / ``g`` | LUT ``T[k] + rsr((T[k+1] - T[k]) r, 8)`` on ``u = z + 2^15 = 256 k + r`` |
| ``c`` | ``sat16(rsr(f c, 15) + rsr(i g, 19))``, Q4.11 |
| ``h`` | ``clip(rsr(o tanh(sat16(2 c)), 23), -127, 127)``, Q0.7 |
| logits | ``h_last W_r + b_r`` (int32) |
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from lstmq.fixedpoint import SIGMOID_LUT, TANH_LUT
from lstmq.integer import MEAN_READOUT

_I32 = (-(2**31), 2**31 - 1)
_I16 = (-(2**15), 2**15 - 1)


def _fits_int32(x: np.ndarray, what: str) -> np.ndarray:
    if x.size and (x.min() < _I32[0] or x.max() > _I32[1]):
        raise OverflowError(f"{what} leaves int32 (range {x.min()}..{x.max()})")
    return x


def _rsr(x: np.ndarray, shift) -> np.ndarray:
    """floor(x / 2^s + 1/2) = floor((2x + 2^s) / 2^(s+1)), exact for any s >= 0."""
    s = np.asarray(shift, np.int64)
    return np.floor_divide(2 * x + 2**s, 2 ** (s + 1))


def _requantize(acc: np.ndarray, m: np.ndarray, shift: np.ndarray) -> np.ndarray:
    m, shift = np.asarray(m, np.int64), np.asarray(shift, np.int64)
    left, right = np.maximum(-shift, 0), np.maximum(shift, 0)
    a = np.clip(acc * 2**left, *_I32)  # saturating left shift (negative shift), as TFLite
    high = np.clip(np.floor_divide(a * m + 2**30, 2**31), *_I32)  # floor(a m / 2^31 + 1/2)
    return _rsr(high, right)


def _lut(z: np.ndarray, table: np.ndarray) -> np.ndarray:
    t = np.asarray(table, np.int64)
    k, r = np.divmod(z + 2**15, 256)
    return t[k] + _rsr((t[k + 1] - t[k]) * r, 8)


def _matmul(x: np.ndarray, w: np.ndarray, what: str) -> np.ndarray:
    return _fits_int32(np.asarray(x, np.int64) @ np.asarray(w, np.int64), what)


def _layers(model: Mapping[str, np.ndarray]) -> list[str]:
    names = {k.split("/")[0] for k in model if re.match(r"lstm_\d+/", k)}
    return sorted(names, key=lambda k: int(k[5:]))


def _layer(model: Mapping[str, np.ndarray], name: str, x: np.ndarray,
           valid: np.ndarray) -> np.ndarray:
    """x <int64>[B, T, F] (int8 values), valid <bool>[B, T] -> <int64>[B, T, H] (int8 values)."""
    p = {k[len(name) + 1:]: np.asarray(v).astype(np.int64)
         for k, v in model.items() if k.startswith(name + "/")}
    acc = _fits_int32(_matmul(x, p["input/kernel"], f"{name} x W_x")
                      + p["input/bias"], f"{name} x W_x + b")
    z_input = _requantize(acc, p["input/requant_multiplier"], p["input/requant_shift"])
    batch, frames = x.shape[:2]
    hidden = p["cell/recurrent/kernel"].shape[0]
    c = np.zeros((batch, hidden), np.int64)
    h = np.zeros((batch, hidden), np.int64)
    outputs = np.zeros((batch, frames, hidden), np.int64)
    for t in range(frames):
        z_h = _requantize(_matmul(h, p["cell/recurrent/kernel"], f"{name} h W_h"),
                          p["cell/recurrent/requant_multiplier"],
                          p["cell/recurrent/requant_shift"])
        z = np.clip(_fits_int32(z_input[:, t] + z_h, f"{name} z_x + z_h"), *_I16)
        zi, zf, zg, zo = np.split(z, 4, axis=-1)
        i, f, o = _lut(zi, SIGMOID_LUT), _lut(zf, SIGMOID_LUT), _lut(zo, SIGMOID_LUT)
        g = _lut(zg, TANH_LUT)
        # f c: Q0.15 x Q4.11 -> Q4.11 (>> 15); i g: Q0.15 x Q0.15 -> Q4.11 (>> 19).
        new_c = np.clip(_rsr(f * c, 15) + _rsr(i * g, 19), *_I16)
        tanh_c = _lut(np.clip(2 * new_c, *_I16), TANH_LUT)  # Q4.11 -> Q3.12
        new_h = np.clip(_rsr(o * tanh_c, 23), -127, 127)  # Q0.30 -> Q0.7
        keep = valid[:, t, None]
        c = np.where(keep, new_c, c)
        h = np.where(keep, new_h, h)
        outputs[:, t] = h
    return outputs


def predict_int_reference(model: Mapping[str, np.ndarray], x: np.ndarray,
                          lengths: np.ndarray) -> np.ndarray:
    """Integer logits of a batch, computed in exact int64 NumPy.

    Args:
      model: integer model arrays (``lstmq.integer.convert_params``).
      x: <int8>[batch, time, features] quantized input.
      lengths: <int>[batch] valid frames of each clip.

    Returns:
      <int32>[batch, classes] logits; equal to ``lstmq.integer.predict_int``'s.

    Raises:
      OverflowError: an intermediate that the served path keeps in int32 does not fit.
    """
    x = np.asarray(x)
    if x.dtype != np.int8 or x.ndim != 3:
        raise TypeError(f"expected <int8>[batch, time, features], got {x.dtype}{list(x.shape)}")
    lengths = np.asarray(lengths, np.int64)
    valid = np.arange(x.shape[1])[None, :] < lengths[:, None]
    h = x.astype(np.int64)
    for name in _layers(model):
        h = _layer(model, name, h, valid)
    if MEAN_READOUT in model:  # mean over valid frames, rounded half up: floor(S / n + 1/2)
        total = np.where(valid[:, :, None], h, 0).sum(axis=1)
        count = np.maximum(lengths, 1)[:, None]
        summary = np.clip((2 * total + count) // (2 * count), -127, 127)
    else:
        summary = h[:, -1]  # masking carries each clip's state at its last valid frame to the end
    logits = _matmul(summary, model["readout/kernel"], "readout h W_r")
    logits = _fits_int32(logits + np.asarray(model["readout/bias"], np.int64), "readout logits")
    return logits.astype(np.int32)
