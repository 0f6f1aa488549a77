"""Inference timing for the benchmark: float, QAT fake-quant and the jnp integer path on the
same random parameters, batched throughput and batch-1 latency."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from experiments import common
from experiments.bench_training import SYNTHETIC_INPUT_CLIP
from lstmq.integer import convert_params, predict_int, quantize_input, stack_models
from lstmq.model import LSTMClassifier
from lstmq.quant import QATNumerics
from lstmq.timing import each_timed, repeat_timed


def time_inference(hidden: int, layers: int, input_size: int, num_classes: int, frames: int,
                    batch: int, repeats: int, latency_clips: int) -> dict[str, Any]:
    """Float, QAT (fake quant) and integer paths on the same random parameters."""
    float_model = LSTMClassifier(hidden=hidden, layers=layers, num_classes=num_classes)
    qat_model = LSTMClassifier(hidden=hidden, layers=layers, num_classes=num_classes,
                               numerics=QATNumerics(input_clip=SYNTHETIC_INPUT_CLIP))
    x0 = jnp.zeros((1, 2, input_size), jnp.float32)
    params = float_model.init(jax.random.PRNGKey(0), x0, jnp.ones((1,), jnp.int32))["params"]
    integer = convert_params(jax.tree_util.tree_map(np.asarray, params), SYNTHETIC_INPUT_CLIP)
    stacked_params = jax.tree_util.tree_map(lambda p: p[None], params)  # one seed
    stacked_integer = stack_models([integer])

    def seed_vmapped(model):
        return jax.jit(jax.vmap(lambda p, x, l: model.apply({"params": p}, x, l),
                                in_axes=(0, None, None)))

    paths = {
        "float": (seed_vmapped(float_model), stacked_params, False),
        "qat": (seed_vmapped(qat_model), stacked_params, False),
        "integer": (jax.jit(jax.vmap(predict_int, in_axes=(0, None, None))), stacked_integer, True),
    }
    rng = np.random.default_rng(1)
    x = rng.standard_normal((batch, frames, input_size)).astype(np.float32)
    lengths = np.full(batch, frames, np.int32)
    x_int = quantize_input(integer, x)
    clips = rng.standard_normal((latency_clips, 1, frames, input_size)).astype(np.float32)
    clips_int = quantize_input(integer, clips)
    one = np.full(1, frames, np.int32)
    rows = {}
    for name, (fn, params_, is_int) in paths.items():
        call = functools.partial(fn, params_)
        inputs, single = (x_int, clips_int) if is_int else (x, clips)
        batched = repeat_timed(functools.partial(call, inputs, lengths), repeats)
        latency = each_timed([functools.partial(call, clip, one) for clip in single])
        rows[name] = {"batch_seconds": batched, "clips_per_second": batch / batched["median"],
                      "latency_ms": common.spread([t * 1e3 for t in latency["values"]])}
        common.say(f"  inference {name:7s}: {rows[name]['clips_per_second']:,.0f} clips/s "
                   f"(batch {batch}), batch-1 latency {rows[name]['latency_ms']['median']:.2f} ms")
    quantize = each_timed([functools.partial(quantize_input, integer, clip) for clip in clips])
    for name, row in rows.items():
        row["throughput_vs_float"] = row["clips_per_second"] / rows["float"]["clips_per_second"]
        float_ms = rows["float"]["latency_ms"]["median"]
        row["latency_vs_float"] = row["latency_ms"]["median"] / float_ms
    return {"hidden": hidden, "layers": layers, "frames": frames, "batch": batch,
            "paths": rows,
            "quantize_input_latency_ms": common.spread([t * 1e3 for t in quantize["values"]])}
