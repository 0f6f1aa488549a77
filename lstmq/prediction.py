"""Logits of seed-stacked parameters over a split: jitted, in length-sorted chunks, with the
split's speed votes added."""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import numpy as np

from lstmq.pipeline import SplitArrays


def predict_logits(apply_fn: Callable, params: Any, x: jax.Array,
                   lengths: jax.Array) -> jax.Array:
    return apply_fn({"params": params}, x, lengths, train=False)


def seeds_predictor(model: nn.Module) -> Callable:
    """Jitted ``predict(params, x, lengths)`` of seed-stacked params: ``[seeds, n, classes]``."""
    return jax.jit(jax.vmap(functools.partial(predict_logits, model.apply),
                            in_axes=(0, None, None)))


def predict_split(predict: Callable, params: Any, split: SplitArrays, batch_size: int,
                  bucket: int) -> np.ndarray:
    """Run a jitted ``predict(params, x, lengths)`` over a split in length-sorted chunks; with
    speed votes (``split.votes``), the logits of the split and of each vote together: their
    mean for float logits, their int64 sum for integer ones (as the C runtime adds them)."""
    logits = _predict_chunks(predict, params, split, batch_size, bucket)
    if not split.votes:
        return logits
    integer = np.issubdtype(logits.dtype, np.integer)
    total = logits.astype(np.int64 if integer else np.float32)
    for vote in split.votes:
        total = total + _predict_chunks(predict, params, vote, batch_size, bucket)
    return total if integer else total / np.float32(1 + len(split.votes))


def _predict_chunks(predict: Callable, params: Any, split: SplitArrays, batch_size: int,
                    bucket: int) -> np.ndarray:
    order = np.argsort(split.lengths, kind="stable")
    batch_size = max(1, min(batch_size, len(order)))  # small splits: no padding to a full batch
    chunks = []
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        frames = -(-int(split.lengths[idx].max()) // bucket) * bucket
        frames = min(frames, split.x.shape[1])
        pad = batch_size - len(idx)
        x = np.pad(split.x[idx, :frames], ((0, pad), (0, 0), (0, 0)))
        lengths = np.pad(split.lengths[idx], (0, pad), constant_values=1)
        chunks.append((idx, np.asarray(predict(params, x, lengths))[..., :len(idx), :]))
    first = chunks[0][1]
    result = np.zeros(first.shape[:-2] + (len(order), first.shape[-1]), first.dtype)
    for idx, logits in chunks:
        result[..., idx, :] = logits
    return result
