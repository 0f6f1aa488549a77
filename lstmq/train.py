"""Training: pure steps jitted once, several seeds trained together under ``jax.vmap``.

Every state below carries a leading ``seeds`` axis: seed ``s`` of a run with
``train.seed = k`` is initialised from ``PRNGKey(k + s)`` and drops out with its own key;
all seeds see the same batches (same order), so one compiled program trains them all.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from lstmq.config import Config, TrainConfig
from lstmq.features import length_buckets
from lstmq.pipeline import SplitArrays


class TrainState(train_state.TrainState):
    dropout_key: jax.Array


@dataclasses.dataclass(frozen=True)
class Batch:
    """Device-side batch selection: indices into a split resident on the device."""

    index: np.ndarray  # <int32>[batch]
    weight: np.ndarray  # <float32>[batch], 0 for padding entries
    frames: int  # static: time steps of this batch


def make_optimizer(cfg: TrainConfig, steps_per_epoch: int) -> optax.GradientTransformation:
    """AdamW with linear warm-up and cosine decay, after global-norm clipping."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = min(total - 1, int(cfg.warmup_epochs * steps_per_epoch))
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=cfg.learning_rate, warmup_steps=max(warmup, 0),
        decay_steps=total, end_value=cfg.learning_rate * 0.01)
    parts = [optax.clip_by_global_norm(cfg.grad_clip)] if cfg.grad_clip > 0 else []
    parts.append(optax.adamw(schedule, weight_decay=cfg.weight_decay))
    return optax.chain(*parts)


def create_train_states(model: nn.Module, tx: optax.GradientTransformation, seed: int,
                        seeds: int, input_size: int,
                        init_params: Any | None = None) -> TrainState:
    """One TrainState per seed, stacked along a leading axis.

    ``init_params``, when given, are stacked per seed (a leading axis of size ``seeds``)
    and replace the random initialisation (fine-tuning).
    """
    x = jnp.zeros((1, 2, input_size), jnp.float32)
    lengths = jnp.ones((1,), jnp.int32)

    def init(key, start_params):
        params_key, dropout_key = jax.random.split(key)
        params = model.init(params_key, x, lengths)["params"]
        if start_params is not None:
            params = start_params
        return TrainState.create(apply_fn=model.apply, params=params, tx=tx,
                                 dropout_key=dropout_key)

    keys = jnp.stack([jax.random.PRNGKey(seed + s) for s in range(seeds)])
    return jax.jit(jax.vmap(init))(keys, init_params)


def cross_entropy(logits: jax.Array, labels: jax.Array, weight: jax.Array,
                  label_smoothing: float) -> jax.Array:
    """Sum of per-example losses (weighted); divide by the weight sum on the host."""
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing) \
        if label_smoothing > 0 else jax.nn.one_hot(labels, logits.shape[-1])
    return jnp.sum(optax.softmax_cross_entropy(logits, targets) * weight)


def train_step(state: TrainState, x: jax.Array, lengths: jax.Array, labels: jax.Array,
               weight: jax.Array, label_smoothing: float = 0.0,
               augment: Callable | None = None) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimisation step of one seed (vmapped over seeds by the caller)."""
    step_key = jax.random.fold_in(state.dropout_key, state.step)
    if augment is not None:
        x = augment(jax.random.fold_in(step_key, 1), x, lengths)

    def loss_fn(params):
        logits = state.apply_fn({"params": params}, x, lengths, train=True,
                                rngs={"dropout": step_key})
        loss = cross_entropy(logits, labels, weight, label_smoothing)
        return loss / jnp.maximum(weight.sum(), 1.0), (loss, logits)

    grads, (loss_sum, logits) = jax.grad(loss_fn, has_aux=True)(state.params)
    correct = jnp.sum(jnp.where(jnp.argmax(logits, -1) == labels, weight, 0.0))
    state = state.apply_gradients(grads=grads)
    return state, {"loss": loss_sum, "correct": correct, "count": weight.sum()}


def predict_logits(apply_fn: Callable, params: Any, x: jax.Array,
                   lengths: jax.Array) -> jax.Array:
    return apply_fn({"params": params}, x, lengths, train=False)


class Trainer:
    """Builds the jitted, seed-vmapped steps once and runs epochs over device-resident data."""

    def __init__(self, config: Config, model: nn.Module, train: SplitArrays,
                 augment: Callable | None = None):
        self.cfg = config.train
        self.model = model
        self.train = train
        self._data = (jnp.asarray(train.x), jnp.asarray(train.lengths),
                      jnp.asarray(train.labels))
        steps = len(self.epoch_batches(np.random.default_rng(0)))
        self.tx = make_optimizer(self.cfg, steps)
        smoothing = self.cfg.label_smoothing

        def seeds_step(states, data, index, weight, frames):
            all_x, all_lengths, all_labels = data
            x = all_x[index, :frames]
            lengths = all_lengths[index]
            labels = all_labels[index]
            step = lambda s: train_step(s, x, lengths, labels, weight, smoothing, augment)
            return jax.vmap(step)(states)

        self._step = jax.jit(seeds_step, static_argnums=4, donate_argnums=0)
        self._predict = jax.jit(jax.vmap(lambda p, x, l: predict_logits(model.apply, p, x, l),
                                         in_axes=(0, None, None)))

    def epoch_batches(self, rng: np.random.Generator) -> list[Batch]:
        """Length-bucketed batches; the last one padded with zero-weight entries."""
        size = self.cfg.batch_size
        batches = []
        for index in length_buckets(self.train.lengths, size, self.cfg.bucket_frames, rng):
            weight = np.ones(size, np.float32)
            if len(index) < size:
                weight[len(index):] = 0.0
                index = np.concatenate([index, np.repeat(index[:1], size - len(index))])
            frames = int(self.train.lengths[index].max())
            frames = -(-frames // self.cfg.bucket_frames) * self.cfg.bucket_frames
            frames = min(frames, self.train.x.shape[1])
            batches.append(Batch(index.astype(np.int32), weight, frames))
        return batches

    def run_epoch(self, states: TrainState, epoch: int) -> tuple[TrainState, dict[str, np.ndarray]]:
        rng = np.random.default_rng([self.cfg.seed, epoch])
        totals = None
        for batch in self.epoch_batches(rng):
            states, metrics = self._step(states, self._data, batch.index, batch.weight,
                                         batch.frames)
            totals = metrics if totals is None else jax.tree_util.tree_map(jnp.add, totals, metrics)
        totals = jax.device_get(totals)
        return states, {"loss": totals["loss"] / totals["count"],
                        "accuracy": totals["correct"] / totals["count"]}

    def predict(self, params: Any, split: SplitArrays, batch_size: int = 512) -> np.ndarray:
        """Logits of every seed: ``<float32>[seeds, n, classes]``."""
        return predict_split(self._predict, params, split, batch_size, self.cfg.bucket_frames)


def predict_split(predict: Callable, params: Any, split: SplitArrays, batch_size: int,
                  bucket: int) -> np.ndarray:
    """Run a jitted ``predict(params, x, lengths)`` over a split in length-sorted chunks."""
    order = np.argsort(split.lengths, kind="stable")
    batch_size = max(1, min(batch_size, len(order)))  # small splits: no padding to a full batch
    outputs = [None] * len(order)
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


def select_best(best: Any, candidate: Any, improved: np.ndarray) -> Any:
    """Per seed, keep ``candidate`` where ``improved`` else ``best`` (leading seed axis)."""
    mask = jnp.asarray(improved)
    return jax.tree_util.tree_map(
        lambda b, c: jnp.where(mask.reshape((-1,) + (1,) * (c.ndim - 1)), c, b), best, candidate)


def timed(fn: Callable, *args) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn(*args)
    jax.block_until_ready(out)
    return out, time.perf_counter() - start
