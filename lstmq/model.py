"""Flax LSTM classifier whose matmuls and quantization points are injected.

The model knows nothing of AQT or of integer formats: a ``numerics`` object (see
``lstmq.quant``) supplies the ``dot_general`` classes of each matmul and the fake-quant
functions applied where the integer path rounds. ``numerics=None`` is plain float.

Shapes: ``x`` is ``<float32>[batch, time, features]``, ``lengths`` is ``<int32>[batch]``.
Frames at or beyond a clip's length leave the LSTM state untouched, so the readout sees
the state at each clip's true last frame.
"""

from __future__ import annotations

from typing import Any, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp

from lstmq import ffi_recurrence
from lstmq.recurrence import lstm_recurrence


class Numerics(Protocol):
    """What the model asks of a quantization scheme (all functions are pure).

    A scheme may also set ``native_recurrence = True`` and give ``recurrent_kernel(kernel)``
    (the recurrent weights as its recurrent dot would fake-quantize them): then the fused
    native QAT recurrence runs instead of the ``nn.scan`` (``qat_recurrence``).
    """

    def dot_general_cls(self, role: str) -> Any:
        """Class for ``nn.Dense(dot_general_cls=...)``; role: input0 | input | recurrent | readout."""

    def input(self, x: jax.Array) -> jax.Array: ...
    def preactivation(self, z: jax.Array) -> jax.Array: ...
    def gate(self, y: jax.Array) -> jax.Array: ...
    def cell(self, c: jax.Array) -> jax.Array: ...
    def hidden(self, h: jax.Array) -> jax.Array: ...


def _dense(features: int, numerics: Numerics | None, role: str, **kwargs) -> nn.Dense:
    if numerics is not None:
        kwargs["dot_general_cls"] = numerics.dot_general_cls(role)
    return nn.Dense(features, **kwargs)


class RecurrentStep(nn.Module):
    """One LSTM time step given the precomputed input projection.

    Gate order along the 4*hidden axis: input, forget, cell candidate, output.
    """

    hidden: int
    numerics: Numerics | None = None

    @nn.compact
    def __call__(self, carry, inputs):
        c, h = carry
        z_input, valid = inputs  # [batch, 4*hidden], [batch]
        z = z_input + _dense(4 * self.hidden, self.numerics, "recurrent", use_bias=False,
                             name="recurrent")(h)
        q = self.numerics
        if q is not None:
            z = q.preactivation(z)
        i, f, g, o = jnp.split(z, 4, axis=-1)
        i, f, o = jax.nn.sigmoid(i), jax.nn.sigmoid(f), jax.nn.sigmoid(o)
        g = jnp.tanh(g)
        if q is not None:
            i, f, g, o = q.gate(i), q.gate(f), q.gate(g), q.gate(o)
        new_c = f * c + i * g
        if q is not None:
            new_c = q.cell(new_c)
        tanh_c = jnp.tanh(new_c)
        if q is not None:
            tanh_c = q.gate(tanh_c)
        new_h = o * tanh_c
        if q is not None:
            new_h = q.hidden(new_h)
        keep = valid[:, None]
        new_c = jnp.where(keep, new_c, c)
        new_h = jnp.where(keep, new_h, h)
        return (new_c, new_h), new_h


class RecurrentKernel(nn.Module):
    """Holds ``cell/recurrent/kernel`` exactly where the scanned cell's Dense keeps it."""

    hidden: int

    @nn.compact
    def __call__(self) -> jax.Array:
        return _KernelOnly(4 * self.hidden, name="recurrent")()


class _KernelOnly(nn.Module):
    features: int

    @nn.compact
    def __call__(self) -> jax.Array:
        init = nn.Dense(self.features).kernel_init
        return self.param("kernel", init, (self.features // 4, self.features), jnp.float32)


def float_recurrence(choice: str):
    """The float recurrence function for ``train.recurrence``: ``"xla"`` the jax scan,
    ``"native"`` the C++ kernel (raises where it cannot be built, or off the CPU backend),
    ``"auto"`` the kernel on a CPU backend where it builds, else the scan. Both have the
    same signature and equal values and gradients within float32 rounding."""
    if choice == "xla":
        return lstm_recurrence
    on_cpu = jax.default_backend() == "cpu"
    if choice == "native":
        if not on_cpu:
            raise ValueError(f"train.recurrence=native runs on the CPU backend only, "
                             f"not {jax.default_backend()}")
        if not ffi_recurrence.available():
            raise ValueError(f"train.recurrence=native: the C++ kernel is not available "
                             f"({ffi_recurrence.unavailable_reason()})")
        return ffi_recurrence.lstm_recurrence_native
    if choice != "auto":
        raise ValueError(f"train.recurrence must be auto, xla or native, got {choice!r}")
    if on_cpu and ffi_recurrence.available():
        return ffi_recurrence.lstm_recurrence_native
    return lstm_recurrence


def qat_recurrence(choice: str, numerics: Numerics | None):
    """``lstmq.ffi_recurrence.lstm_qat_recurrence_native`` where ``train.recurrence``
    (``choice``, as in :func:`float_recurrence`) picks the native kernel and ``numerics``
    asks for it (``QATNumerics`` with ``activations=True``: ``native_recurrence``), else
    None (the ``nn.scan`` of ``RecurrentStep``)."""
    if numerics is None or not getattr(numerics, "native_recurrence", False):
        return None
    if float_recurrence(choice) is lstm_recurrence:  # "xla", or "auto" without the kernel
        return None
    return ffi_recurrence.lstm_qat_recurrence_native


class LSTMLayer(nn.Module):
    """One LSTM layer over a whole sequence, time-major: a batched input projection, then
    the recurrence."""

    hidden: int
    numerics: Numerics | None = None
    first: bool = True
    recurrence: str = "auto"  # see ``float_recurrence`` and ``qat_recurrence``

    @nn.compact
    def __call__(self, x: jax.Array, valid: jax.Array) -> jax.Array:
        """``x <f32>[time, batch, features]``, ``valid <bool>[time, batch]`` -> outputs
        ``<f32>[time, batch, hidden]`` (the last row is each clip's last valid state).

        Time-major throughout: the recurrences scan the leading axis, so neither the input
        projection nor its gradient is ever transposed."""
        role = "input0" if self.first else "input"
        # [time * batch, features]: the weight gradient is then one plain matmul (about 1.5x
        # faster on CPU than contracting batch and time as two dimensions).
        flat = x.reshape(-1, x.shape[-1])
        z_input = _dense(4 * self.hidden, self.numerics, role, name="input")(flat)
        z_input = z_input.reshape(*x.shape[:-1], 4 * self.hidden)
        if self.numerics is None:  # float: fused recurrence, same parameters
            kernel = RecurrentKernel(self.hidden, name="cell")()
            return float_recurrence(self.recurrence)(z_input, kernel, valid)
        qat_native = qat_recurrence(self.recurrence, self.numerics)
        if qat_native is not None:  # QAT: fused recurrence, same parameters (no "aqt" state)
            kernel = RecurrentKernel(self.hidden, name="cell")()
            return qat_native(z_input, kernel, self.numerics.recurrent_kernel(kernel), valid)
        scan = nn.scan(
            RecurrentStep,
            variable_broadcast=["params", "aqt"],
            split_rngs={"params": False},
            in_axes=0,
            out_axes=0,
        )
        zeros = jnp.zeros((x.shape[1], self.hidden), z_input.dtype)
        _, outputs = scan(self.hidden, self.numerics, name="cell")((zeros, zeros),
                                                                   (z_input, valid))
        return outputs


class TimeMajorDropout(nn.Module):
    """``nn.Dropout`` of time-major activations with the mask of their batch-major view:
    the same random mask, hence the same training, as dropout of ``[batch, time, ...]``."""

    rate: float
    deterministic: bool

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.deterministic or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        if keep == 0.0:
            return jnp.zeros_like(x)
        shape = (x.shape[1], x.shape[0], *x.shape[2:])
        mask = jax.random.bernoulli(self.make_rng("dropout"), p=keep, shape=shape)
        return jax.lax.select(jnp.swapaxes(mask, 0, 1), x / keep, jnp.zeros_like(x))


def masked_mean(outputs: jax.Array, valid: jax.Array, lengths: jax.Array) -> jax.Array:
    """Mean of time-major ``outputs <f32>[time, batch, hidden]`` over each clip's valid
    frames (``valid <bool>[time, batch]``)."""
    total = jnp.sum(jnp.where(valid[:, :, None], outputs, 0.0), axis=0)
    return total / jnp.maximum(lengths, 1)[:, None].astype(outputs.dtype)


class LSTMClassifier(nn.Module):
    """Stacked LSTM with dropout between layers and a dense readout of the last state
    (``readout="last"``) or of the mean state over the clip's frames (``"mean"``)."""

    hidden: int
    layers: int = 2
    num_classes: int = 10
    dropout: float = 0.0
    numerics: Numerics | None = None
    readout: str = "last"
    recurrence: str = "auto"  # the float recurrence: see ``float_recurrence``

    @nn.compact
    def __call__(self, x: jax.Array, lengths: jax.Array, train: bool = False) -> jax.Array:
        """Returns ``<float32>[batch, num_classes]`` logits."""
        x = jnp.swapaxes(x, 0, 1)  # time-major from here on: [time, batch, features]
        valid = jnp.arange(x.shape[0])[:, None] < lengths[None, :]  # [time, batch]
        if self.numerics is not None:
            x = self.numerics.input(x)
        if self.readout not in ("last", "mean"):
            raise ValueError(f"model.readout must be 'last' or 'mean', got {self.readout!r}")
        for index in range(self.layers):
            if index > 0:
                x = TimeMajorDropout(self.dropout, deterministic=not train,
                                     name=f"Dropout_{index - 1}")(x)
            x = LSTMLayer(self.hidden, self.numerics, first=index == 0,
                          recurrence=self.recurrence, name=f"lstm_{index}")(x, valid)
        summary = x[-1]
        if self.readout == "mean":
            summary = masked_mean(x, valid, lengths)
            if self.numerics is not None:  # the integer path rounds the mean to Q0.7
                summary = self.numerics.hidden(summary)
        self.sow("intermediates", "summary", summary)  # read by lstmq.adversary in training
        summary = nn.Dropout(self.dropout, deterministic=not train,
                             name=f"Dropout_{self.layers - 1}")(summary)
        return _dense(self.num_classes, self.numerics, "readout", name="readout")(summary)
