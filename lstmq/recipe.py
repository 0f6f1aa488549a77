"""The integer recipe's fixed-point formats and the rounding that simulates them (no AQT).

Shared by the QAT numerics (``lstmq.quant``), the integer path (``lstmq.integer``), the
export and the C generator, so the integer side never needs AQT. See docs/numerics.md.

| point | format |
|---|---|
| hidden state | int8 Q0.7 (-127..127) |
| gate pre-activation | int16 Q3.12 |
| gate outputs, tanh(c) | int16 Q0.15 |
| cell state | int16 Q4.11 |
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

RECIPE_VERSION = 1  # bump when any format, rounding or table of the integer path changes
HIDDEN_FRAC_BITS = 7  # int8 Q0.7
PREACT_FRAC_BITS = 12  # int16 Q3.12
GATE_FRAC_BITS = 15  # int16 Q0.15
CELL_FRAC_BITS = 11  # int16 Q4.11
HIDDEN_BOUND = 127 / 2**HIDDEN_FRAC_BITS  # bound that makes an AQT int8 grid exactly Q0.7
INTEGER_WEIGHT_BITS = (8, 4)  # storage widths the integer path converts (int8 matmuls)


def fake_quant_fixed(x: jax.Array, frac_bits: int, bits: int) -> jax.Array:
    """Round to a signed fixed-point grid (2^-frac_bits, ``bits`` wide), straight-through.

    Round half up and saturate to ``[-2^(bits-1), 2^(bits-1) - 1]`` (int8 uses -127..127,
    the symmetric range of the hidden state).
    """
    scale = 2.0**frac_bits
    low = -(2 ** (bits - 1)) + (1 if bits == 8 else 0)
    high = 2 ** (bits - 1) - 1
    y = x * scale
    down = jnp.floor(y)
    # Compare the fraction instead of floor(y + 0.5): exact for every float32 y.
    q = jnp.clip(jnp.where(y - down >= 0.5, down + 1, down), low, high) / scale
    return q + (x - jax.lax.stop_gradient(x))  # value exactly q, gradient exactly 1


def calibrate_input_clip(features: Sequence[np.ndarray] | np.ndarray, percentile: float = 99.99,
                         lengths: np.ndarray | None = None) -> float:
    """Static int8 input bound: the ``percentile`` of |x| over all real frames.

    Args:
      features: clips ``<float32>[frames_i, F]``, or padded ``<float32>[N, T, F]`` with
        ``lengths``.
      percentile: in (0, 100].
      lengths: <int32>[N] real frames of each padded clip (padding is not counted).

    Raises:
      ValueError: no frames, a bad percentile, or a zero or non-finite bound.
    """
    if not 0.0 < percentile <= 100.0:
        raise ValueError(f"quant.input_percentile must be in (0, 100], got {percentile}")
    if lengths is not None:
        features = [features[i, :int(n)] for i, n in enumerate(np.asarray(lengths))]
    values = [np.abs(np.asarray(f, np.float32)).ravel() for f in features]
    frames = np.concatenate(values) if values else np.zeros(0, np.float32)
    if frames.size == 0:
        raise ValueError("cannot calibrate the input clip on no frames")
    bound = float(np.percentile(frames, percentile))
    if not np.isfinite(bound) or bound <= 0:
        raise ValueError(f"calibrated input clip is {bound}: the training features are all "
                         "zero or not finite; set quant.input_clip")
    return bound
