"""Timing of training epochs for the benchmark: one model's epochs, a synthetic epoch, and
several runners (lstmq layouts, the PyTorch reference) timed in turns.

Every timing excludes compilation (a warm-up epoch first) and reports the median and spread.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from experiments import common, pytorch_reference
from lstmq.pipeline import SplitArrays
from lstmq.runs import Derived, model_from_config
from lstmq.train import Trainer, create_train_states

SYNTHETIC_INPUT_CLIP = 4.0  # |x| bound of the int8 input for N(0, 1) synthetic features


def epoch_runner(config, split: SplitArrays,
                  input_size: int) -> tuple[Callable[[], float], dict[str, Any]]:
    """A float or QAT model ready to train on ``split``: ``(epoch, info)``; ``epoch()``
    trains one epoch and returns its seconds. The first call compiles every bucket shape."""
    seeds = config.train.seeds
    # Only hidden and input size shape a float model; the normaliser is never used here.
    derived = Derived(hidden=config.model.hidden, input_size=input_size,
                      input_clip=SYNTHETIC_INPUT_CLIP, normalizer=None,
                      seeds=tuple(range(seeds)), classes=tuple(map(str, range(10))))
    model = model_from_config(config, derived)
    trainer = Trainer(config, model, split)
    states = create_train_states(model, trainer.tx, config.train.seed, seeds, input_size)
    trained = {"states": states, "epochs": 0}

    def epoch() -> float:
        start = time.perf_counter()
        trained["states"], _ = trainer.run_epoch(trained["states"], trained["epochs"])
        jax.block_until_ready(trained["states"].params)
        trained["epochs"] += 1
        return time.perf_counter() - start

    info = {"clips": len(split), "seeds": seeds,
            "batches": len(trainer.epoch_batches(np.random.default_rng(0)))}
    return epoch, info


def time_training(config, split: SplitArrays, input_size: int, epochs: int) -> dict[str, Any]:
    """Warm-up epoch (compiles every bucket shape), then ``epochs`` timed epochs."""
    epoch, info = epoch_runner(config, split, input_size)
    warmup = epoch()
    seconds = common.spread([epoch() for _ in range(epochs)])
    clips = len(split) * info["seeds"] / seconds["median"]
    common.say(f"  train hidden {config.model.hidden} x{info['seeds']} seed(s) on {len(split)} "
               f"clips ({info['batches']} batches): {seconds['median']:.3f} s/epoch "
               f"(min {seconds['min']:.3f}, max {seconds['max']:.3f}), {clips:,.0f} clip-seeds/s; "
               f"warm-up epoch with compilation {warmup:.1f} s")
    return {"clips": len(split), "batches": info["batches"], "warmup_seconds": warmup,
            "seconds_per_epoch": seconds, "clip_seeds_per_second": clips}


def time_interleaved(runners: dict[Any, Callable[[], float]], rounds: int,
                     pause: float = 0.2) -> dict[Any, list[float]]:
    """Seconds of each runner's epochs taken in turns: every round runs each runner once,
    in an order reversed every other round, after ``pause`` seconds of idle (so no thread
    pool of the previous runner still spins). A slow spell of a shared host then falls on
    every runner alike; the ratio of two runners' epochs in one round is its measurement.
    Each runner is called once before the first round (its warm-up, untimed)."""
    for epoch in runners.values():
        epoch()
    names = list(runners)
    times: dict[Any, list[float]] = {name: [] for name in names}
    for index in range(rounds):
        for name in (names if index % 2 == 0 else names[::-1]):
            time.sleep(pause)
            times[name].append(runners[name]())
    return times


def paired_speedups(times: dict[Any, list[float]], reference: Any) -> dict[Any, Any]:
    """Per runner other than ``reference``: the spread of its round-by-round speed-ups
    (the reference's seconds / its seconds in the same round) and of its seconds."""
    base = np.asarray(times[reference])
    return {name: {"seconds_per_epoch": common.spread(list(seconds)),
                   "speedup": common.spread(list(base / np.asarray(seconds)))}
            for name, seconds in times.items() if name != reference}


def time_paired(configs: dict[int, Any], split: SplitArrays, input_size: int, hidden: int,
                 batch: int, rounds: int) -> dict[str, Any]:
    """lstmq's epochs (one runner per batch-shard count, ``configs``) and PyTorch's (the same
    model size) in turns."""
    runners: dict[Any, Callable[[], float]] = {
        shard: epoch_runner(config, split, input_size)[0] for shard, config in configs.items()}
    layers = next(iter(configs.values())).model.layers
    runners["pytorch"], _ = pytorch_reference.epoch_runner(
        hidden, layers=layers, features=input_size, classes=10,
        clips=len(split), frames=split.x.shape[1], batch_size=batch)
    times = time_interleaved(runners, rounds)
    result = {"rounds": rounds, "pytorch_seconds_per_epoch": common.spread(times["pytorch"]),
              "shards": paired_speedups(times, "pytorch")}
    for shard, row in result["shards"].items():
        common.say(f"  interleaved, hidden {hidden}, batch {batch}, {shard} batch shard(s): "
                   f"speed-up over PyTorch {row['speedup']['median']:.2f}x "
                   f"(rounds {row['speedup']['min']:.2f}-{row['speedup']['max']:.2f})")
    return result


def time_pytorch(hidden: int, config, input_size: int, clips: int, frames: int,
                  epochs: int, batch_size: int) -> dict[str, Any]:
    row = pytorch_reference.time_training(
        hidden, layers=config.model.layers, features=input_size,
        classes=10, clips=clips, frames=frames, batch_size=batch_size, epochs=epochs)
    common.say(f"  PyTorch {row['torch']} hidden {hidden}, batch {batch_size}: "
               f"{row['seconds_per_epoch']['median']:.3f} s/epoch ({row['threads']} threads)")
    return row


def training_layouts(seeds: Sequence[int], shards: Sequence[int]) -> list[tuple[int, int, int]]:
    """(seeds, seed_threads, batch_shards) timed per hidden size; the first is the baseline."""
    first = seeds[0]
    layouts = [(first, 0, shard) for shard in shards]
    for count in seeds[1:]:
        layouts += [(count, 1, shards[0]), *((count, 0, shard) for shard in shards)]
    return list(dict.fromkeys(layouts))


def add_seed_ratios(rows: list[dict[str, Any]]) -> None:
    """time(N seeds) / (N x time(baseline seeds) / baseline) per hidden size."""
    for row in rows:
        baseline = next(r for r in rows if r["hidden"] == row["hidden"])
        per_seed = baseline["seconds_per_epoch"]["median"] / baseline["seeds"]
        row["multi_seed_ratio"] = row["seconds_per_epoch"]["median"] / (row["seeds"] * per_seed)


def synthetic_split(clips: int, frames: int, features: int) -> SplitArrays:
    rng = np.random.default_rng(0)
    return SplitArrays(x=rng.standard_normal((clips, frames, features)).astype(np.float32),
                       lengths=np.full(clips, frames, np.int32),
                       labels=rng.integers(0, 10, clips).astype(np.int32),
                       speakers=np.array(["synthetic"] * clips),
                       names=tuple(f"synthetic_{i}" for i in range(clips)))
