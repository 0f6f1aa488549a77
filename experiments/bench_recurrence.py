"""Training-step time of the XLA recurrence against the native (C++/FFI) one, on the CPU.

A 2-layer LSTM classifier step (input projection matmul + recurrence per layer, logits of
the last state, cross-entropy; ``value_and_grad`` under ``jit``) for both recurrences in
the same process, runs interleaved. Prints medians and XLA_time / native_time.

    python -m experiments.bench_recurrence [--repeats 30] [--time 50] [--hidden 24 48 67 128]
        [--batch 32 64] [--min-length 16] [--recurrence] [--qat]

Clip lengths are uniform in [--min-length, --time] (the native kernel skips padded frames,
the XLA scan computes and masks them); ``--recurrence`` adds the ratio for one layer's
recurrence alone (forward + backward). ``--qat`` times instead the QAT training step of
``lstmq.model.LSTMClassifier`` (2 layers, ``QATNumerics``: AQT int8 matmuls and the
fixed-point roundings) with ``recurrence="xla"`` (the ``nn.scan`` of ``RecurrentStep``)
against ``"native"`` (``lstm_qat_recurrence_native``).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from lstmq import ffi_recurrence
from lstmq.recurrence import lstm_recurrence

FEATURES, CLASSES = 13, 10


def init_params(key: jax.Array, hidden: int) -> dict:
    keys = jax.random.split(key, 5)
    scale = 1.0 / np.sqrt(hidden)
    normal = lambda k, shape, s: s * jax.random.normal(k, shape, jnp.float32)  # noqa: E731
    return {
        "wx1": normal(keys[0], (FEATURES, 4 * hidden), 1.0 / np.sqrt(FEATURES)),
        "wh1": normal(keys[1], (hidden, 4 * hidden), scale),
        "b1": jnp.zeros((4 * hidden,), jnp.float32),
        "wx2": normal(keys[2], (hidden, 4 * hidden), scale),
        "wh2": normal(keys[3], (hidden, 4 * hidden), scale),
        "b2": jnp.zeros((4 * hidden,), jnp.float32),
        "out": normal(keys[4], (hidden, CLASSES), scale),
    }


def make_loss(recurrence):
    """Cross-entropy of a 2-layer LSTM on time-major features <f32>[T, B, 13]."""

    def loss(params, features, valid, labels):
        h1 = recurrence(features @ params["wx1"] + params["b1"], params["wh1"], valid)
        h2 = recurrence(h1 @ params["wx2"] + params["b2"], params["wh2"], valid)
        logits = h2[-1] @ params["out"]
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))

    return jax.jit(jax.value_and_grad(loss))


def make_batch(key: jax.Array, time_steps: int, batch: int, min_length: int):
    k1, k2, k3 = jax.random.split(key, 3)
    features = jax.random.normal(k1, (time_steps, batch, FEATURES), jnp.float32)
    lengths = jax.random.randint(k2, (batch,), min_length, time_steps + 1)
    valid = jnp.arange(time_steps)[:, None] < lengths[None, :]
    labels = jax.random.randint(k3, (batch,), 0, CLASSES)
    return features, valid, labels


def make_qat_step(recurrence: str, hidden: int, weight_bits: int = 8):
    """(params, x <f32>[B, T, 13], lengths, labels) -> (loss, grads) of the QAT classifier."""
    from lstmq.model import LSTMClassifier  # pylint: disable=import-outside-toplevel
    from lstmq.quant import QATNumerics  # pylint: disable=import-outside-toplevel

    model = LSTMClassifier(hidden=hidden, layers=2, num_classes=CLASSES,
                           numerics=QATNumerics(input_clip=3.0, weight_bits=weight_bits),
                           recurrence=recurrence)

    def loss(params, x, lengths, labels):
        logits = model.apply(params, x, lengths)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))

    return model, jax.jit(jax.value_and_grad(loss))


def qat_line(hidden: int, batch: int, time_steps: int, min_length: int, repeats: int) -> str:
    features, valid, labels = make_batch(jax.random.PRNGKey(batch), time_steps, batch, min_length)
    x = features.transpose(1, 0, 2)
    lengths = valid.sum(0).astype(jnp.int32)
    models = {r: make_qat_step(r, hidden) for r in ("xla", "native")}
    with jax.numpy_dtype_promotion("standard"):  # AQT's dot_general
        params = models["xla"][0].init(jax.random.PRNGKey(hidden), x[:1], lengths[:1])
        median = time_steps_of({r: step for r, (_, step) in models.items()},
                               (params, x, lengths, labels), repeats)
    return (f"{hidden:>6} {batch:>5} {float(valid.mean()):>5.2f} {1e3 * median['xla']:>8.2f} "
            f"{1e3 * median['native']:>9.2f} {median['xla'] / median['native']:>6.2f}")


def recurrence_vjp(recurrence, valid):
    """Forward and backward of one recurrence: (z_input, kernel, d_outputs) -> gradients."""
    return jax.jit(lambda z_input, kernel, d_outputs: jax.vjp(
        lambda z, k: recurrence(z, k, valid), z_input, kernel)[1](d_outputs))


def time_steps_of(steps: dict, args: tuple, repeats: int) -> dict:
    """Median seconds per call of each compiled step, runs interleaved."""
    for step in steps.values():  # compile and warm up
        jax.block_until_ready(step(*args))
        jax.block_until_ready(step(*args))
    seconds = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            jax.block_until_ready(step(*args))
            seconds[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in seconds.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m experiments.bench_recurrence",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--time", type=int, default=50)
    parser.add_argument("--hidden", type=int, nargs="+", default=[24, 48, 67, 128])
    parser.add_argument("--batch", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--min-length", type=int, default=None, help="default: time // 3")
    parser.add_argument("--recurrence", action="store_true")
    parser.add_argument("--qat", action="store_true", help="the QAT classifier's step")
    args = parser.parse_args(argv)
    min_length = args.time // 3 if args.min_length is None else args.min_length
    if not ffi_recurrence.available():
        raise SystemExit(f"native kernel unavailable: {ffi_recurrence.unavailable_reason()}")
    if args.qat:
        print(f"QAT step (LSTMClassifier, QATNumerics int8), T={args.time}, lengths "
              f"{min_length}..{args.time}, {FEATURES} features, 2 layers, median of {args.repeats}")
        print(f"{'hidden':>6} {'batch':>5} {'valid':>5} {'xla ms':>8} {'native ms':>9} "
              f"{'ratio':>6}")
        for hidden in args.hidden:
            for batch in args.batch:
                print(qat_line(hidden, batch, args.time, min_length, args.repeats), flush=True)
        return
    steps = {"xla": make_loss(lstm_recurrence),
             "native": make_loss(ffi_recurrence.lstm_recurrence_native)}
    print(f"T={args.time}, lengths {min_length}..{args.time}, {FEATURES} features, 2 layers, "
          f"median of {args.repeats}")
    print(f"{'hidden':>6} {'batch':>5} {'valid':>5} {'xla ms':>8} {'native ms':>9} {'ratio':>6}"
          + (f" {'recurrence ratio':>16}" if args.recurrence else ""))
    for hidden in args.hidden:
        for batch in args.batch:
            params = init_params(jax.random.PRNGKey(hidden), hidden)
            data = make_batch(jax.random.PRNGKey(batch), args.time, batch, min_length)
            median = time_steps_of(steps, (params, *data), args.repeats)
            line = (f"{hidden:>6} {batch:>5} {float(data[1].mean()):>5.2f} "
                    f"{1e3 * median['xla']:>8.2f} {1e3 * median['native']:>9.2f} "
                    f"{median['xla'] / median['native']:>6.2f}")
            if args.recurrence:
                keys = jax.random.split(jax.random.PRNGKey(0), 2)
                z_input = jax.random.normal(keys[0], (args.time, batch, 4 * hidden), jnp.float32)
                d_outputs = jax.random.normal(keys[1], (args.time, batch, hidden), jnp.float32)
                alone = time_steps_of(
                    {"xla": recurrence_vjp(lstm_recurrence, data[1]),
                     "native": recurrence_vjp(ffi_recurrence.lstm_recurrence_native, data[1])},
                    (z_input, params["wh1"], d_outputs), args.repeats)
                line += f" {alone['xla'] / alone['native']:>16.2f}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
