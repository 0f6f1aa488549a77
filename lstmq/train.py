"""Training: pure steps jitted once, several seeds trained together.

Every state below carries a leading ``seeds`` axis: seed ``s`` of a run with
``train.seed = k`` is initialised from ``PRNGKey(k + s)`` and drops out with its own key;
all seeds see the same batches (same order). The seed axis is cut into groups
(``train.seed_threads``), each group runs the same compiled ``jax.vmap`` step on its own
thread, so the seeds share the CPU cores: one seed's small per-time-step matmuls leave a
core idle, and vmapping seeds on one core only lengthens each step. With
``train.seed_devices`` the seeds instead run as one vmapped program whose seed axis is split
over ``jax.devices()`` (``jax.sharding``: GPUs, TPUs, or CPU host devices).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lstmq.adversary import SpeakerAdversary, make_adversary_optimizer, speaker_indices
from lstmq.config import Config, TrainConfig
from lstmq.features import length_buckets
from lstmq.gradients import summed_gradients
from lstmq.pipeline import SplitArrays
from lstmq.prediction import predict_split, seeds_predictor


class TrainState(train_state.TrainState):
    dropout_key: jax.Array
    ema_params: Any = None  # exponential moving average of params (``train.ema_decay > 0``)
    # the speaker-adversarial head's own state (``train.speaker_adversary > 0``), not params
    adversary: Any = None

    def eval_params(self) -> Any:
        """The parameters to evaluate and keep: the moving average when one is tracked."""
        return self.params if self.ema_params is None else self.ema_params


@dataclasses.dataclass(frozen=True)
class Batch:
    """Device-side batch selection: indices into a split resident on the device."""

    index: np.ndarray  # <int32>[batch]
    weight: np.ndarray  # <float32>[batch], 0 for padding entries
    frames: int  # static: time steps of this batch


def seed_groups(seeds: int, threads: int) -> list[slice]:
    """Contiguous, near-equal slices of the seed axis, one per thread (0: one per seed)."""
    if seeds < 1:
        raise ValueError(f"train.seeds must be at least 1, got {seeds}")
    if threads < 0:
        raise ValueError(f"train.seed_threads must be 0 (one per seed) or more, got {threads}")
    count = seeds if threads == 0 else min(threads, seeds)
    bounds = [round(i * seeds / count) for i in range(count + 1)]
    return [slice(a, b) for a, b in zip(bounds, bounds[1:])]


def seed_mesh(seeds: int, devices: int):
    """A one-axis ``jax.sharding.Mesh`` ("seed") over ``devices`` devices (0: all of them)
    when the seed axis is to be split over several; None for one device."""
    available = jax.devices()
    count = len(available) if devices == 0 else devices
    if count <= 1:
        return None
    if count > len(available):
        raise ValueError(f"train.seed_devices is {devices} but JAX sees {len(available)} "
                         f"device(s): {[str(d) for d in available]}")
    if seeds % count:
        raise ValueError(f"train.seeds ({seeds}) must be a multiple of the {count} devices "
                         "the seeds are split over (train.seed_devices)")
    return Mesh(np.array(available[:count]), ("seed",))


def make_optimizer(cfg: TrainConfig, steps_per_epoch: int,
                   flat: bool = True) -> optax.GradientTransformation:
    """AdamW with linear warm-up and cosine decay, after global-norm clipping. ``flat``:
    applied to all parameters as one flat vector (``optax.flatten``), the same updates as
    per array (within float32 rounding of the global norm) in a few fused kernels instead
    of several per parameter array, which at the budget sizes cost a sixth of a step."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = min(total - 1, int(cfg.warmup_epochs * steps_per_epoch))
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=cfg.learning_rate, warmup_steps=max(warmup, 0),
        decay_steps=total, end_value=cfg.learning_rate * 0.01)
    parts = [optax.clip_by_global_norm(cfg.grad_clip)] if cfg.grad_clip > 0 else []
    parts.append(optax.adamw(schedule, weight_decay=cfg.weight_decay))
    chain = optax.chain(*parts)
    return optax.flatten(chain) if flat else chain


def init_params(model: nn.Module, seed: int, seeds: int, input_size: int) -> Any:
    """Freshly initialised parameters of ``seeds`` seeds, stacked along a leading axis
    (seed ``s`` from ``PRNGKey(seed + s)``, as ``create_train_states`` draws them)."""
    x = jnp.zeros((1, 2, input_size), jnp.float32)
    lengths = jnp.ones((1,), jnp.int32)
    keys = jnp.stack([jax.random.split(jax.random.PRNGKey(seed + s))[0] for s in range(seeds)])
    return jax.vmap(lambda key: model.init(key, x, lengths)["params"])(keys)


def create_train_states(model: nn.Module, tx: optax.GradientTransformation, seed: int,
                        seeds: int, input_size: int, init_params: Any | None = None,
                        ema: bool = False,
                        adversary: tuple[nn.Module, optax.GradientTransformation] | None = None
                        ) -> TrainState:
    """One TrainState per seed, stacked along a leading axis.

    ``init_params``, when given, are stacked per seed (a leading axis of size ``seeds``)
    and replace the random initialisation (fine-tuning). ``ema``: also track a moving
    average of the parameters, starting at the initial ones. ``adversary``: a
    speaker-adversarial head and its optimiser (``Trainer.adversary``), given its own state.
    """
    x = jnp.zeros((1, 2, input_size), jnp.float32)
    lengths = jnp.ones((1,), jnp.int32)

    def init(key, start_params):
        params_key, dropout_key = jax.random.split(key)
        params = model.init(params_key, x, lengths)["params"]
        if start_params is not None:
            params = start_params
        head = None
        if adversary is not None:
            module, head_tx = adversary
            summary = jnp.zeros((1, model.hidden), jnp.float32)
            head_params = module.init(jax.random.fold_in(params_key, 1), summary)["params"]
            head = train_state.TrainState.create(apply_fn=module.apply, params=head_params,
                                                 tx=head_tx)
        return TrainState.create(apply_fn=model.apply, params=params, tx=tx,
                                 dropout_key=dropout_key, ema_params=params if ema else None,
                                 adversary=head)

    keys = jnp.stack([jax.random.PRNGKey(seed + s) for s in range(seeds)])
    return jax.jit(jax.vmap(init))(keys, init_params)


def ema_rate(decay: float, step: jax.Array) -> jax.Array:
    """Weight of the old average after ``step`` updates: ``decay``, lower while the average is
    young (``(1 + step) / (10 + step)``), so it does not linger on the initial parameters."""
    step = jnp.asarray(step, jnp.float32)
    return jnp.minimum(jnp.float32(decay), (1.0 + step) / (10.0 + step))


def apply_summed_gradients(state: TrainState, grads: Any, count: jax.Array,
                           ema_decay: float = 0.0) -> TrainState:
    """Optimiser step on the mean gradient: ``grads`` summed over ``count`` weighted clips;
    then the moving average, if tracked: ``ema <- r * ema + (1 - r) * params``."""
    scale = 1.0 / jnp.maximum(count, 1.0)
    if state.adversary is not None:  # (classifier's, head's): see ``summed_gradients``
        grads, head_grads = grads
        state = state.replace(adversary=state.adversary.apply_gradients(
            grads=jax.tree_util.tree_map(lambda g: g * scale, head_grads)))
    state = state.apply_gradients(grads=jax.tree_util.tree_map(lambda g: g * scale, grads))
    if state.ema_params is None:
        return state
    rate = ema_rate(ema_decay, state.step)
    return state.replace(ema_params=jax.tree_util.tree_map(
        lambda e, p: rate * e + (1.0 - rate) * p, state.ema_params, state.params))


def train_step(state: TrainState, x: jax.Array, lengths: jax.Array, labels: jax.Array,
               weight: jax.Array, label_smoothing: float = 0.0,
               augment: Callable | None = None, ema_decay: float = 0.0,
               mixup_alpha: float = 0.0, speakers: jax.Array | None = None,
               reversal: float = 0.0, soft: jax.Array | None = None,
               distill_weight: float = 0.0, temperature: float = 1.0, sam_rho: float = 0.0
               ) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimisation step of one seed (vmapped over seeds by the caller)."""
    key = jax.random.fold_in(state.dropout_key, state.step)
    grads, metrics = summed_gradients(state, key, x, lengths, labels, weight, label_smoothing,
                                      augment, mixup_alpha, speakers, reversal, soft,
                                      distill_weight, temperature, sam_rho)
    return apply_summed_gradients(state, grads, metrics["count"], ema_decay), metrics


def shard_key(state: TrainState, shard: jax.Array) -> jax.Array:
    """Dropout key of one batch shard: distinct per seed, step and shard."""
    return jax.random.fold_in(jax.random.fold_in(state.dropout_key, state.step), 2 + shard)


class Trainer:
    """Builds the jitted steps once and runs epochs over device-resident data, each seed group
    (and each batch shard) on its own thread."""

    def __init__(self, config: Config, model: nn.Module, train: SplitArrays,
                 augment: Callable | None = None, soft_targets: np.ndarray | None = None):
        """``soft_targets``: a teacher's ``<float32>[n, classes]`` targets for the training
        rows (``lstmq.distill.teacher_targets``), learned with ``train.distill_weight``."""
        self.cfg = config.train
        self.model = model
        self.train = train
        self.speakers, speaker_index = speaker_indices(train.speakers)
        if soft_targets is not None and soft_targets.shape[0] != len(train):
            raise ValueError(f"{soft_targets.shape[0]} soft targets for {len(train)} training "
                             "clips")
        self._data = (jnp.asarray(train.x), jnp.asarray(train.lengths),
                      jnp.asarray(train.labels), jnp.asarray(speaker_index),
                      None if soft_targets is None else jnp.asarray(soft_targets, jnp.float32))
        distill_weight = self.cfg.distill_weight
        temperature = self.cfg.distill_temperature
        steps = len(self.epoch_batches(np.random.default_rng(0)))
        self.tx = make_optimizer(self.cfg, steps)
        smoothing = self.cfg.label_smoothing
        ema_decay = self.cfg.ema_decay
        mixup_alpha = config.augment.mixup
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"train.ema_decay must be in [0, 1) (0: off), got {ema_decay}")
        reversal = self.cfg.speaker_adversary
        sam_rho = self.cfg.sam_rho
        # (head, optimiser) for create_train_states; None without the adversary
        self.adversary = None
        if reversal > 0:
            if mixup_alpha > 0:
                raise ValueError("train.speaker_adversary cannot be combined with augment.mixup")
            if len(self.speakers) < 2:
                raise ValueError(f"train.speaker_adversary needs at least 2 training speakers, "
                                 f"got {list(self.speakers)}")
            self.adversary = (SpeakerAdversary(len(self.speakers)),
                              make_adversary_optimizer(self.cfg.learning_rate))

        def gather(data, index, frames):
            all_x, all_lengths, all_labels, all_speakers, all_soft = data
            return (all_x[index, :frames], all_lengths[index], all_labels[index],
                    all_speakers[index], None if all_soft is None else all_soft[index])

        def seeds_step(states, data, index, weight, frames):
            x, lengths, labels, speakers, soft = gather(data, index, frames)
            step = lambda s: train_step(s, x, lengths, labels, weight, smoothing, augment,
                                        ema_decay, mixup_alpha, speakers, reversal, soft,
                                        distill_weight, temperature, sam_rho)
            return jax.vmap(step)(states)

        def seeds_gradients(states, data, index, weight, frames, shard):
            x, lengths, labels, speakers, soft = gather(data, index, frames)
            return jax.vmap(lambda s: summed_gradients(
                s, shard_key(s, shard), x, lengths, labels, weight, smoothing, augment,
                mixup_alpha, speakers, reversal, soft, distill_weight, temperature,
                sam_rho))(states)

        def seeds_apply(states, parts):
            grads, metrics = jax.tree_util.tree_map(lambda *a: sum(a), *parts)
            return jax.vmap(lambda s, g, n: apply_summed_gradients(s, g, n, ema_decay))(
                states, grads, metrics["count"]), metrics

        self._step = jax.jit(seeds_step, static_argnums=4, donate_argnums=0)
        self._gradients = jax.jit(seeds_gradients, static_argnums=4)
        self._apply = jax.jit(seeds_apply, donate_argnums=0)
        self.mesh = seed_mesh(self.cfg.seeds, self.cfg.seed_devices)
        if self.mesh is not None:  # one program for every seed, partitioned over devices
            if self.cfg.batch_shards > 1:
                raise ValueError("train.seed_devices and train.batch_shards cannot be combined")
            self.groups = [slice(0, self.cfg.seeds)]
            self._data = jax.device_put(self._data, NamedSharding(self.mesh, PartitionSpec()))
        else:
            self.groups = seed_groups(self.cfg.seeds, self.cfg.seed_threads)
        self.shards = self.cfg.batch_shards
        if self.shards < 1 or self.cfg.batch_size % self.shards:
            raise ValueError(f"train.batch_shards must be at least 1 and divide train.batch_size "
                             f"({self.cfg.batch_size}), got {self.shards}")
        self._predict = seeds_predictor(model)

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

    def place(self, tree: Any) -> Any:
        """Puts a seed-stacked tree on the seed mesh (split along its leading axis); as is
        without one."""
        if self.mesh is None:
            return tree
        return jax.device_put(tree, NamedSharding(self.mesh, PartitionSpec("seed")))

    def run_epoch(self, states: TrainState, epoch: int) -> tuple[TrainState, dict[str, np.ndarray]]:
        """One epoch of every seed; each seed group steps through the batches on its own thread
        (or, with ``train.seed_devices``, one program partitioned over devices)."""
        batches = self.epoch_batches(np.random.default_rng([self.cfg.seed, epoch]))
        states = self.place(states)
        if len(self.groups) == 1:
            results = [self._run_group(states, batches)]
        else:
            parts = [jax.tree_util.tree_map(lambda a, g=group: a[g], states)
                     for group in self.groups]
            with concurrent.futures.ThreadPoolExecutor(len(parts)) as pool:
                results = list(pool.map(lambda part: self._run_group(part, batches), parts))
        states = results[0][0] if len(results) == 1 else jax.tree_util.tree_map(
            lambda *a: jnp.concatenate(a), *[r[0] for r in results])
        totals = jax.device_get([r[1] for r in results])
        totals = {k: np.concatenate([t[k] for t in totals]) for k in totals[0]}
        metrics = {"loss": totals["loss"] / totals["count"],
                   "accuracy": totals["correct"] / totals["count"]}
        if "speaker_correct" in totals:  # how well the speaker-adversarial head names voices
            metrics["speaker_accuracy"] = totals["speaker_correct"] / totals["count"]
        return states, metrics

    def _run_group(self, states: TrainState, batches: list[Batch]) -> tuple[TrainState, dict]:
        steps = []
        pool = concurrent.futures.ThreadPoolExecutor(self.shards) if self.shards > 1 else None
        try:
            for batch in batches:
                if pool is None:
                    states, metrics = self._step(states, self._data, batch.index, batch.weight,
                                                 batch.frames)
                else:
                    states, metrics = self._sharded_step(pool, states, batch)
                steps.append(metrics)
        finally:
            if pool is not None:
                pool.shutdown()
        # Summed on the host once per epoch, in step order (float32, as on the device): one
        # transfer instead of a dispatched addition per metric and step.
        steps = jax.device_get(steps)
        totals = {key: functools.reduce(np.add, (m[key] for m in steps)) for key in steps[0]}
        return jax.block_until_ready(states), totals

    def _sharded_step(self, pool, states: TrainState, batch: Batch) -> tuple[TrainState, dict]:
        """Gradient sums of the batch's shards on parallel threads, then one optimiser step."""
        size = len(batch.index) // self.shards

        def gradients(shard):
            rows = slice(shard * size, (shard + 1) * size)
            return jax.block_until_ready(self._gradients(
                states, self._data, batch.index[rows], batch.weight[rows], batch.frames,
                np.int32(shard)))

        return self._apply(states, list(pool.map(gradients, range(self.shards))))

    def predict(self, params: Any, split: SplitArrays, batch_size: int = 512) -> np.ndarray:
        """Logits of every seed: ``<float32>[seeds, n, classes]``."""
        return predict_split(self._predict, params, split, batch_size, self.cfg.bucket_frames)


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
