"""AQT factories of quantization-aware training and post-training quantization (the only
module that imports AQT).

QAT simulates the integer path of ``lstmq.integer`` (see docs/numerics.md):

| point | format | how it is simulated |
|---|---|---|
| matmul operands | int8, weights per output channel (readout per tensor), activations static | AQT ``AqtDotGeneral`` fake quant, forward only |
| MFCC input | int8, scale ``input_clip / 127`` | AQT constant calibration on the first matmul's lhs |
| hidden state | int8 Q0.7 | ``fake_quant_fixed(h, 7, 8)`` |
| gate pre-activation | int16 Q3.12 | ``fake_quant_fixed(z, 12, 16)`` |
| gate outputs, tanh(c) | int16 Q0.15 | ``fake_quant_fixed(y, 15, 16)`` |
| cell state | int16 Q4.11 | ``fake_quant_fixed(c, 11, 16)`` |

Gradients pass straight through every rounding (STE). The fixed-point points round half up,
exactly like the integer kernels' ``rounding_shift_right``.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from aqt.jax.v2 import aqt_dot_general, calibration
from aqt.jax.v2 import config as aqt_config
from aqt.jax.v2.flax import aqt_flax
from aqt.jax.v2.numerics import int_numerics

from lstmq.recipe import (  # noqa: F401 - re-exported for QAT users
    CELL_FRAC_BITS, GATE_FRAC_BITS, HIDDEN_BOUND, HIDDEN_FRAC_BITS, PREACT_FRAC_BITS,
    calibrate_input_clip, fake_quant_fixed)

def _int8_numerics() -> int_numerics.IntSymmetric:
    # preserve_max_val: the calibrated bound maps to 127 exactly (scale = bound / 127).
    return int_numerics.IntSymmetric(
        bits=8, preserve_zero=True, preserve_max_val=True, clip=True, round=True,
        noise_fn=None, clip_gradient=False, dtype=jnp.int8,
    )


def aqt_int8_config(lhs_bound: float, per_tensor_rhs: bool = False, weight_bits: int = 8):
    """Forward-only int8 AQT config: static lhs (activation) bound, abs-max weights.

    Weights get one scale per output channel (per tensor when ``per_tensor_rhs``);
    gradients are not quantized (straight-through).
    """
    cfg = aqt_config.dot_general_make(lhs_bits=8, rhs_bits=weight_bits, bwd_bits=None,
                                      use_fwd_quant=False)
    lhs_numerics = _int8_numerics()
    rhs_numerics = dataclasses.replace(_int8_numerics(), bits=weight_bits,
                                       dtype=jnp.int8 if weight_bits <= 8 else None)
    aqt_config.set_numerics(cfg.fwd, lhs_numerics, rhs_numerics)
    cfg.fwd.dg_quantizer.lhs.calibration = functools.partial(
        calibration.ConstantCalibration, bound=float(lhs_bound))
    if per_tensor_rhs:
        cfg.fwd.dg_quantizer.rhs.calib_shared_axes = "per_tensor"
    # Dequantize each operand before a float dot: exact for int8 x int8 sums of this size,
    # and fast on CPU.
    aqt_config.set_fwd_dequant_mode(cfg, lhs_dequant_mode=aqt_dot_general.DequantMode.THIS_INPUT,
                                    rhs_dequant_mode=aqt_dot_general.DequantMode.THIS_INPUT)
    aqt_config.set_accumulator_dtype(cfg, fwd_dtype=None, dlhs_dtype=None, drhs_dtype=None)
    return cfg


@dataclasses.dataclass(frozen=True)
class QATNumerics:
    """Fake-quant int8/int16 numerics for ``LSTMClassifier(numerics=...)``.

    Attributes:
      input_clip: static bound of the (normalised) MFCC input; scale ``input_clip / 127``.
      weight_bits: storage bits of weights (8 or 4).
      activations: fake-quant the fixed-point points (hidden, gates, cell); False gives
        weight-only quantization (the "dynamic" PTQ baseline).
    """

    input_clip: float
    weight_bits: int = 8
    activations: bool = True

    def dot_general_cls(self, role: str):
        if not self.activations:
            cfg = aqt_weight_only_config(self.weight_bits, per_tensor_rhs=role == "readout")
        else:
            bound = self.input_clip if role == "input0" else HIDDEN_BOUND
            cfg = aqt_int8_config(bound, per_tensor_rhs=role == "readout",
                                  weight_bits=self.weight_bits)
        return functools.partial(aqt_flax.AqtDotGeneral, cfg, prng_name=None)

    def input(self, x):
        return x  # quantized by the first matmul's AQT lhs calibration

    def preactivation(self, z):
        return fake_quant_fixed(z, PREACT_FRAC_BITS, 16) if self.activations else z

    def gate(self, y):
        return fake_quant_fixed(y, GATE_FRAC_BITS, 16) if self.activations else y

    def cell(self, c):
        return fake_quant_fixed(c, CELL_FRAC_BITS, 16) if self.activations else c

    def hidden(self, h):
        return fake_quant_fixed(h, HIDDEN_FRAC_BITS, 8) if self.activations else h

    @property
    def native_recurrence(self) -> bool:
        """Whether ``lstmq.ffi_recurrence.lstm_qat_recurrence_native`` (whose formats are
        fixed in C++) computes this recurrence: activations fake-quantized, the formats of
        ``lstmq.recipe``, and a hidden bound that makes AQT's lhs quantization the identity
        on the Q0.7 grid."""
        return (self.activations and HIDDEN_BOUND == 127 / 128
                and (PREACT_FRAC_BITS, GATE_FRAC_BITS, CELL_FRAC_BITS, HIDDEN_FRAC_BITS)
                == (12, 15, 11, 7))

    def recurrent_kernel(self, kernel: jax.Array) -> jax.Array:
        """The recurrent weights as the ``"recurrent"`` AQT dot fake-quantizes them (per
        output channel abs-max, ``weight_bits``; values equal to AQT's), gradient straight
        through (AQT's ``clip_gradient=False``)."""
        return fake_quant_weights(kernel, self.weight_bits)


def aqt_weight_only_config(weight_bits: int = 8, per_tensor_rhs: bool = False):
    """AQT config quantizing only the weights (activations stay float)."""
    cfg = aqt_config.dot_general_make(lhs_bits=None, rhs_bits=weight_bits, bwd_bits=None,
                                      use_fwd_quant=False)
    rhs_numerics = dataclasses.replace(_int8_numerics(), bits=weight_bits)
    cfg.fwd.dg_quantizer.rhs.numerics = rhs_numerics
    if per_tensor_rhs:
        cfg.fwd.dg_quantizer.rhs.calib_shared_axes = "per_tensor"
    aqt_config.set_fwd_dequant_mode(cfg, rhs_dequant_mode=aqt_dot_general.DequantMode.THIS_INPUT)
    aqt_config.set_accumulator_dtype(cfg, fwd_dtype=None, dlhs_dtype=None, drhs_dtype=None)
    return cfg


def fake_quant_weights(kernel: jax.Array, bits: int) -> jax.Array:
    """``kernel [in, out]`` on AQT's symmetric per-output-channel grid (``_int8_numerics``
    with ``bits``: scale = abs-max / (2^(bits-1) - 1), round half to even, clip), as the
    dequantized rhs of ``aqt_int8_config``; an all-zero channel stays zero. Gradient 1."""
    top = 2.0 ** (bits - 1) - 1
    scale = jnp.max(jnp.abs(kernel), axis=0, keepdims=True) / top
    scale = jnp.where(scale == 0, jnp.ones_like(scale), scale)
    q = jnp.clip(jnp.round(kernel / scale), -top, top) * scale
    q = jax.lax.stop_gradient(q)
    return q + (kernel - jax.lax.stop_gradient(kernel))
