"""Throughput benchmark: training seconds per epoch and inference speed of every path.

Run:      python -m experiments.benchmark --out runs/benchmark
Quick:    python -m experiments.benchmark --quick --out runs/bench_quick   (hidden 24, 1 epoch)
Options:  --hidden 24 128  --seeds 1 3  --batch-shards 1 2  --epochs 3  --paired-rounds 5
          --set key=value
          --pytorch / --no-pytorch (time the PyTorch reference too; default: if torch is installed)
Time on a 2-core CPU (shared): about 11 min for hidden 24 48 67 128 with PyTorch, --quick 2 min.
Expected (AMD EPYC, 2 cores, 2026-12-07): FSDD split, 1 seed, ~0.1 s/epoch at hidden 24 and
  ~0.9-1.1 s at hidden 128; 3 seeds on a thread each ~0.73-0.93x of three single seeds,
  vmapped on one thread ~0.86-1.15x; 2 batch shards ~0.8-1.4x of one; integer inference
  ~0.15x float's batched throughput; PyTorch's reference model, in turns, 1.1-1.7x slower
  than one lstmq seed at hidden 48-128 and ~2.2-2.5x at hidden 24.
Produces: <out>/benchmark.json + <out>/benchmark.md. Nothing is asserted; it reports:
  (a) training on the real FSDD training split with the default config (length-bucketed
      batches of 64): seconds per epoch and clip-seeds per second for hidden 24 and 128,
      2 layers, 13 MFCCs, for 1 and 3 seeds in each thread layout, and the multi-seed ratio
      time(N seeds) / (N x time(1 seed)) (below 1: seeds share the work);
  (b) the same on synthetic fixed 36-frame batches of 2400 clips (batch 32 and 64, the
      reference's model: no dropout), against the PyTorch reproduction's quoted figures and,
      when torch is installed, against the reference PyTorch model timed in the same run
      (``experiments.pytorch_reference``), with the XLA scan and QAT beside it; with
      PyTorch, the same epochs again in turns (``--paired-rounds``), speed-up per round;
  compile time cold and warm (new processes), and N seeds in one ``lstmq train`` process
      against N single-seed processes (whole-process seconds, warm caches);
  (c) inference at the int8 budget size (hidden 48, random params): batched clips/s and
      batch-1 latency (median ms per clip) of float, QAT fake-quant and the integer path
      (``predict_int`` jitted and vmapped over seeds, as ``predict_int_split`` runs it),
      as ratios to float measured in the same run.
Every timing excludes compilation (a warm-up epoch or call first) and gives the median and
spread of the repeats. The machine may be shared: the load average is recorded.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from experiments import common, pytorch_reference
from lstmq.budget import Precision, solve_hidden_size
from lstmq.config import load_config
from lstmq.integer import convert_params, predict_int, quantize_input, stack_models
from lstmq.model import LSTMClassifier
from lstmq.pipeline import SplitArrays, prepare_data
from lstmq.quant import QATNumerics
from lstmq.runs import Derived, model_from_config
from lstmq.timing import each_timed, repeat_timed
from lstmq.train import Trainer, create_train_states

# PyTorch reproduction, one epoch of 2400 clips at 36 frames, batch 64, as quoted with that
# study (measured on another machine; `pytorch_reference` times it on this one).
PYTORCH_REFERENCE_SECONDS = {128: 1.07, 24: 0.31}
SYNTHETIC_INPUT_CLIP = 4.0  # |x| bound of the int8 input for N(0, 1) synthetic features


def run(out: str | Path, hidden: Sequence[int] = (24, 128), seeds: Sequence[int] = (1, 3),
        epochs: int = 3, synthetic_clips: int = 2400, synthetic_frames: int = 36,
        inference_hidden: int | None = None, inference_batch: int = 512,
        inference_repeats: int = 5, latency_clips: int = 50, overrides: Sequence[str] = (),
        quick: bool = False, shards: Sequence[int] = (1, 2),
        pytorch: bool | None = None, compile_check: bool = True,
        batch_sizes: Sequence[int] = (32, 64), seed_run_hidden: int = 48,
        seed_run_epochs: int = 10, paired_rounds: int = 5,
        seed_run_rounds: int = 3) -> dict[str, Any]:
    """Measure training and inference throughput; write ``benchmark.json``/``.md``.

    Args:
      out: result folder.
      hidden: hidden sizes of the training benchmark (2 layers unless overridden).
      seeds: seed counts trained together; the first is the baseline of the ratio. Each
        larger count is timed with all seeds vmapped on one thread (``train.seed_threads=1``),
        with one thread per seed (the default), and with each of ``shards`` beyond the first.
      shards: ``train.batch_shards`` values (threads per batch); the first is the baseline.
      batch_sizes: batch sizes of the synthetic epoch (lstmq and PyTorch alike).
      seed_run_hidden, seed_run_epochs, seed_run_rounds: whole ``lstmq train`` processes,
        ``seed_run_rounds`` rounds of ``max(seeds)``
        seeds together against as many single-seed ones (0 epochs: skipped).
      epochs: timed epochs after one warm-up epoch.
      synthetic_clips, synthetic_frames: size of the synthetic fixed-length epoch.
      inference_hidden: hidden size of the inference benchmark (default: solved for the
        36,864-byte int8 budget).
      inference_batch: clips per batched inference call.
      inference_repeats: timed batched calls after a warm-up call.
      latency_clips: batch-1 calls timed one by one (median reported).
      overrides: dotted config overrides (data source, features, model.layers, ...).
      quick: hidden 24 only, 1 timed epoch, 10 latency clips.
      pytorch: also time the reference study's PyTorch model on the synthetic epoch
        (``experiments.pytorch_reference``); None: when torch is importable.
      paired_rounds: with PyTorch, rounds of lstmq's and PyTorch's synthetic epochs taken in
        turns (``time_interleaved``), whose round-by-round speed-ups are reported beside the
        ratio of the separate timings (0: none).
    """
    out = Path(out)
    if pytorch is None:
        pytorch = pytorch_reference.torch_available()
    if quick:
        hidden, epochs, latency_clips, inference_repeats = (hidden[0],), 1, 10, 3
        batch_sizes, seed_run_epochs = (batch_sizes[-1],), 0
        paired_rounds = min(paired_rounds, 2)
    hidden, seeds = tuple(int(h) for h in hidden), tuple(int(s) for s in seeds)
    environment = common.environment()
    common.say(f"benchmark: hidden {hidden}, seeds {seeds}, {epochs} timed epoch(s); "
               f"load average {environment['load_average']}")
    base = load_config(None, list(overrides))
    data = prepare_data(base, progress=False)
    common.say(f"data: {len(data.train)} training clips from {data.source}")

    real = []
    for h in hidden:
        for count, threads, shard in _training_layouts(seeds, shards):
            config = load_config(None, [*overrides, f"model.hidden={h}", f"train.seeds={count}",
                                        f"train.seed_threads={threads}",
                                        f"train.batch_shards={shard}"])
            real.append({"hidden": h, "seeds": count, "seed_threads": threads,
                         "batch_shards": shard,
                         **_time_training(config, data.train, data.input_size, epochs)})
    _add_seed_ratios(real)

    synthetic_split = _synthetic_split(synthetic_clips, synthetic_frames, data.input_size)
    synthetic = []
    for h in hidden:
        for batch in batch_sizes:
            # The PyTorch reference's model: no dropout, so both sides do the same work.
            same = [*overrides, f"model.hidden={h}", "train.seeds=1", "model.dropout=0",
                    f"train.batch_size={batch}"]
            for shard in shards:
                config = load_config(None, [*same, f"train.batch_shards={shard}"])
                row = {"hidden": h, "batch_size": batch, "seeds": 1, "batch_shards": shard,
                       "clips": synthetic_clips, "frames": synthetic_frames,
                       **_time_training(config, synthetic_split, data.input_size, epochs)}
                reference = PYTORCH_REFERENCE_SECONDS.get(h) if (
                    synthetic_clips, synthetic_frames, batch) == (2400, 36, 64) else None
                row["pytorch_reference_seconds"] = reference
                row["speedup_vs_pytorch_quoted"] = (
                    reference / row["seconds_per_epoch"]["median"] if reference else None)
                if shard == shards[0]:  # the same step on the jax-scan recurrence, and QAT
                    xla = load_config(None, [*same, f"train.batch_shards={shard}",
                                             "train.recurrence=xla"])
                    row["xla"] = _time_training(xla, synthetic_split, data.input_size, epochs)
                    row["native_vs_xla"] = (row["xla"]["seconds_per_epoch"]["median"]
                                            / row["seconds_per_epoch"]["median"])
                    qat = load_config(None, [*same, f"train.batch_shards={shard}",
                                             "quant.mode=qat",
                                             f"quant.input_clip={SYNTHETIC_INPUT_CLIP}",
                                             f"quant.weight_bits={8 if h <= 48 else 4}"])
                    row["qat"] = _time_training(qat, synthetic_split, data.input_size, epochs)
                    row["qat_vs_float"] = (row["seconds_per_epoch"]["median"]
                                           / row["qat"]["seconds_per_epoch"]["median"])
                synthetic.append(row)
    compile_times = _time_compile(overrides, hidden[0]) if compile_check else None
    seed_runs = (_time_seed_runs(overrides, seed_run_hidden, max(seeds), seed_run_epochs,
                                 seed_run_rounds)
                 if seed_run_epochs and seed_run_rounds and max(seeds) > 1 else None)
    # PyTorch runs after every lstmq timing: its thread pool stays warm (and may spin) after
    # each epoch, which would slow the XLA threads timed next.
    for h in hidden:
        for batch in batch_sizes:
            measured = _time_pytorch(h, base, data.input_size, synthetic_clips,
                                     synthetic_frames, epochs, batch) if pytorch else None
            for row in (r for r in synthetic if (r["hidden"], r["batch_size"]) == (h, batch)):
                ours = row["seconds_per_epoch"]["median"]
                row["pytorch_measured"] = measured
                row["speedup_vs_pytorch_measured"] = (
                    measured["seconds_per_epoch"]["median"] / ours if measured else None)
                if measured:
                    common.say(f"  hidden {h}, batch {batch}, {row['batch_shards']} batch "
                               f"shard(s): {ours:.3f} s/epoch, PyTorch in this run "
                               f"{measured['seconds_per_epoch']['median']:.3f} s: "
                               f"{row['speedup_vs_pytorch_measured']:.2f}x its throughput")

    if pytorch and paired_rounds > 0:
        for h in hidden:
            for batch in batch_sizes:
                same = [*overrides, f"model.hidden={h}", "train.seeds=1", "model.dropout=0",
                        f"train.batch_size={batch}"]
                configs = {shard: load_config(None, [*same, f"train.batch_shards={shard}"])
                           for shard in shards}
                paired = _time_paired(configs, synthetic_split, data.input_size, h, batch,
                                      paired_rounds)
                for row in (r for r in synthetic if (r["hidden"], r["batch_size"]) == (h, batch)):
                    row["paired"] = {"rounds": paired["rounds"],
                                     "pytorch_seconds_per_epoch":
                                         paired["pytorch_seconds_per_epoch"],
                                     **paired["shards"][row["batch_shards"]]}

    if inference_hidden is None:
        solution = solve_hidden_size(36864, base.model.layers, data.input_size,
                                     len(data.classes), Precision(8))
        inference_hidden = solution.hidden
        common.say(f"inference hidden {inference_hidden} (solved for 36,864 bytes, int8)")
    inference = _time_inference(inference_hidden, base.model.layers, data.input_size,
                                len(data.classes), synthetic_frames, inference_batch,
                                inference_repeats, latency_clips)

    environment["load_average_end"] = common.load_average()
    result = {
        "experiment": "benchmark",
        "settings": {"hidden": list(hidden), "seeds": list(seeds), "epochs": epochs,
                     "batch_shards": list(shards),
                     "layers": base.model.layers, "batch_size": base.train.batch_size,
                     "bucket_frames": base.train.bucket_frames, "input_size": data.input_size,
                     "recurrence": base.train.recurrence,
                     "synthetic_clips": synthetic_clips, "synthetic_frames": synthetic_frames,
                     "synthetic_batch_sizes": list(batch_sizes), "paired_rounds": paired_rounds,
                     "seed_run_hidden": seed_run_hidden, "seed_run_epochs": seed_run_epochs,
                     "seed_run_rounds": seed_run_rounds,
                     "inference_hidden": inference_hidden, "inference_batch": inference_batch,
                     "inference_repeats": inference_repeats, "latency_clips": latency_clips,
                     "overrides": list(overrides), "quick": quick},
        "data": {"source": data.source, "train_clips": len(data.train)},
        "training_real": real,
        "training_synthetic": synthetic,
        "compile": compile_times,
        "seed_runs": seed_runs,
        "inference": inference,
        "environment": environment,
    }
    common.write_results(out, "benchmark", result, format_benchmark(result))
    common.say(f"wrote {out / 'benchmark.md'}")
    return result


def _epoch_runner(config, split: SplitArrays,
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


def _time_training(config, split: SplitArrays, input_size: int, epochs: int) -> dict[str, Any]:
    """Warm-up epoch (compiles every bucket shape), then ``epochs`` timed epochs."""
    epoch, info = _epoch_runner(config, split, input_size)
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


def _time_paired(configs: dict[int, Any], split: SplitArrays, input_size: int, hidden: int,
                 batch: int, rounds: int) -> dict[str, Any]:
    """lstmq's epochs (one runner per batch-shard count, ``configs``) and PyTorch's (the same
    model size) in turns."""
    runners: dict[Any, Callable[[], float]] = {
        shard: _epoch_runner(config, split, input_size)[0] for shard, config in configs.items()}
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


def _time_pytorch(hidden: int, config, input_size: int, clips: int, frames: int,
                  epochs: int, batch_size: int) -> dict[str, Any]:
    row = pytorch_reference.time_training(
        hidden, layers=config.model.layers, features=input_size,
        classes=10, clips=clips, frames=frames, batch_size=batch_size, epochs=epochs)
    common.say(f"  PyTorch {row['torch']} hidden {hidden}, batch {batch_size}: "
               f"{row['seconds_per_epoch']['median']:.3f} s/epoch ({row['threads']} threads)")
    return row


def _time_compile(overrides: Sequence[str], hidden: int = 48) -> dict[str, Any]:
    """Whole-process time of a one-epoch ``lstmq train`` in a new process, first with an
    empty compilation cache (cold), then again with the cache the first run filled (warm),
    and the tracing/compiling seconds each reports."""
    import os  # pylint: disable=import-outside-toplevel
    import re  # pylint: disable=import-outside-toplevel
    import subprocess  # pylint: disable=import-outside-toplevel
    import tempfile  # pylint: disable=import-outside-toplevel

    folder = Path(tempfile.mkdtemp(prefix="lstmq-compile-"))
    env = dict(os.environ, LSTMQ_JAX_CACHE=str(folder / "xla"))
    rows = {}
    for name in ("cold", "warm"):
        command = [sys.executable, "-m", "lstmq", "train", "--quiet", "--out", str(folder / name),
                   "--set", f"model.hidden={hidden}", "--set", "train.epochs=1"]
        for override in overrides:
            command += ["--set", override]
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        seconds = time.perf_counter() - start
        found = re.search(r"compiling the training and validation steps took ([0-9.]+) s "
                          r"\((\d+) program", done.stderr)
        rows[name] = {"process_seconds": seconds, "returncode": done.returncode,
                      "compile_seconds": float(found.group(1)) if found else None,
                      "cached_programs": int(found.group(2)) if found else None}
        common.say(f"  {name} compilation: process {seconds:.1f} s, compiling "
                   f"{rows[name]['compile_seconds']} s")
    return {"hidden": hidden, **rows}


def _time_seed_runs(overrides: Sequence[str], hidden: int, seeds: int, epochs: int,
                    rounds: int = 3) -> dict[str, Any]:
    """Whole ``lstmq train`` processes on the real data: one training ``seeds`` seeds
    together, against ``seeds`` single-seed trainings (seed 0, 1, ...), all with warm feature
    and compilation caches (first, untimed runs of both layouts fill them). Each of
    ``rounds`` rounds times both, the together run first in even rounds and last in odd
    ones; the ratio is read per round (a slow spell of the host falls on one round)."""
    import subprocess  # pylint: disable=import-outside-toplevel
    import tempfile  # pylint: disable=import-outside-toplevel

    folder = Path(tempfile.mkdtemp(prefix="lstmq-seeds-"))

    def train(name: str, settings: Sequence[str]) -> float:
        command = [sys.executable, "-m", "lstmq", "train", "--quiet", "--out",
                   str(folder / name), "--set", f"model.hidden={hidden}",
                   "--set", f"train.epochs={epochs}"]
        for override in [*overrides, *settings]:
            command += ["--set", override]
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
        return time.perf_counter() - start

    # Both layouts fill the caches: the vmapped programs of N seeds (initialisation,
    # validation) are not those of one, and a cold together run would pay their compiling.
    train("warm", ["train.seeds=1", "train.seed=100"])
    train("warm_together", [f"train.seeds={seeds}", "train.seed=100"])
    together, alone = [], []
    for index in range(rounds):
        for part in (("together", "alone") if index % 2 == 0 else ("alone", "together")):
            if part == "together":
                together.append(train(f"together_{index}", [f"train.seeds={seeds}"]))
            else:
                alone.append([train(f"alone_{index}_{s}", ["train.seeds=1", f"train.seed={s}"])
                              for s in range(seeds)])
    ratios = [t / sum(a) for t, a in zip(together, alone, strict=True)]
    ratio = float(np.median(ratios))
    common.say(f"  whole runs, hidden {hidden}, {epochs} epochs, {rounds} round(s): {seeds} "
               f"seeds together {np.median(together):.1f} s, one at a time "
               f"{np.median([sum(a) for a in alone]):.1f} s (ratio {ratio:.2f}, rounds "
               f"{min(ratios):.2f}-{max(ratios):.2f})")
    return {"hidden": hidden, "epochs": epochs, "seeds": seeds, "rounds": rounds,
            "together_seconds": together, "alone_seconds": alone, "ratios": ratios,
            "ratio": ratio}


def _training_layouts(seeds: Sequence[int], shards: Sequence[int]) -> list[tuple[int, int, int]]:
    """(seeds, seed_threads, batch_shards) timed per hidden size; the first is the baseline."""
    first = seeds[0]
    layouts = [(first, 0, shard) for shard in shards]
    for count in seeds[1:]:
        layouts += [(count, 1, shards[0]), *((count, 0, shard) for shard in shards)]
    return list(dict.fromkeys(layouts))


def _add_seed_ratios(rows: list[dict[str, Any]]) -> None:
    """time(N seeds) / (N x time(baseline seeds) / baseline) per hidden size."""
    for row in rows:
        baseline = next(r for r in rows if r["hidden"] == row["hidden"])
        per_seed = baseline["seconds_per_epoch"]["median"] / baseline["seeds"]
        row["multi_seed_ratio"] = row["seconds_per_epoch"]["median"] / (row["seeds"] * per_seed)


def _synthetic_split(clips: int, frames: int, features: int) -> SplitArrays:
    rng = np.random.default_rng(0)
    return SplitArrays(x=rng.standard_normal((clips, frames, features)).astype(np.float32),
                       lengths=np.full(clips, frames, np.int32),
                       labels=rng.integers(0, 10, clips).astype(np.int32),
                       speakers=np.array(["synthetic"] * clips),
                       names=tuple(f"synthetic_{i}" for i in range(clips)))


def _time_inference(hidden: int, layers: int, input_size: int, num_classes: int, frames: int,
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
        inputs = x_int if is_int else x
        batched = repeat_timed(lambda: fn(params_, inputs, lengths), repeats)
        single = clips_int if is_int else clips
        latency = each_timed([lambda i=i: fn(params_, single[i], one)
                               for i in range(latency_clips)])
        rows[name] = {"batch_seconds": batched, "clips_per_second": batch / batched["median"],
                      "latency_ms": common.spread([t * 1e3 for t in latency["values"]])}
        common.say(f"  inference {name:7s}: {rows[name]['clips_per_second']:,.0f} clips/s "
                   f"(batch {batch}), batch-1 latency {rows[name]['latency_ms']['median']:.2f} ms")
    quantize = each_timed([lambda i=i: quantize_input(integer, clips[i])
                            for i in range(latency_clips)])
    for name, row in rows.items():
        row["throughput_vs_float"] = row["clips_per_second"] / rows["float"]["clips_per_second"]
        float_ms = rows["float"]["latency_ms"]["median"]
        row["latency_vs_float"] = row["latency_ms"]["median"] / float_ms
    return {"hidden": hidden, "layers": layers, "frames": frames, "batch": batch,
            "paths": rows,
            "quantize_input_latency_ms": common.spread([t * 1e3 for t in quantize["values"]])}


def _seconds(spread: dict[str, Any]) -> str:
    return f"{spread['median']:.3f} ({spread['min']:.3f}-{spread['max']:.3f})"


def _layout(row: dict[str, Any]) -> str:
    threads = "vmapped" if row["seed_threads"] == 1 and row["seeds"] > 1 else "per seed"
    return threads + (f" x {row['batch_shards']} shards" if row["batch_shards"] > 1 else "")


def _compile_lines(compile_times: dict[str, Any] | None) -> list[str]:
    if not compile_times:
        return []
    rows = [[name, f"{row['process_seconds']:.1f}",
             "-" if row["compile_seconds"] is None else f"{row['compile_seconds']:.1f}",
             "-" if row["cached_programs"] is None else row["cached_programs"]]
            for name, row in ((k, compile_times[k]) for k in ("cold", "warm"))]
    return [f"## Compilation: a one-epoch `lstmq train` (hidden {compile_times['hidden']}) in a "
            "new process, with an empty then a filled compilation cache", "",
            common.markdown_table(["cache", "process s", "tracing + compiling s",
                                   "programs from the cache"], rows), ""]


def _seed_run_lines(runs: dict[str, Any] | None) -> list[str]:
    if not runs:
        return []
    rows = [[index, runs["seeds"], f"{together:.1f}",
             " + ".join(f"{a:.1f}" for a in alone) + f" = {sum(alone):.1f}", f"{ratio:.2f}"]
            for index, (together, alone, ratio) in enumerate(
                zip(runs["together_seconds"], runs["alone_seconds"], runs["ratios"],
                    strict=True))]
    return [f"## Seeds in one program: whole `lstmq train` processes (hidden {runs['hidden']}, "
            f"{runs['epochs']} epochs, FSDD, warm caches)", "",
            f"Ratio: the together run's seconds / the single runs' sum, per round; median "
            f"{runs['ratio']:.2f} over {runs['rounds']} round(s).", "",
            common.markdown_table(["round", "seeds", "together s", "one at a time s", "ratio"],
                                  rows), ""]


def _paired_lines(result: dict[str, Any]) -> list[str]:
    rows = [[r["hidden"], r["batch_size"], r["batch_shards"],
             _seconds(r["paired"]["seconds_per_epoch"]),
             _seconds(r["paired"]["pytorch_seconds_per_epoch"]),
             f"{r['paired']['speedup']['median']:.2f}x ({r['paired']['speedup']['min']:.2f}-"
             f"{r['paired']['speedup']['max']:.2f})",
             f"{r['speedup_vs_pytorch_measured']:.2f}x"]
            for r in result["training_synthetic"] if r.get("paired")]
    if not rows:
        return []
    return ["## (b, in turns) lstmq's and PyTorch's epochs interleaved", "",
            f"The synthetic epoch again, {result['settings']['paired_rounds']} rounds: each "
            "round trains one epoch of every lstmq layout and one of PyTorch, in an order "
            "reversed every other round, each after 0.2 s idle. Speed-up: PyTorch's seconds / "
            "lstmq's in the same round, median (min-max) over rounds; a slow spell of the host "
            "falls on both sides of a round. The last column is the speed-up of the separate "
            "timings above.", "",
            common.markdown_table(["hidden", "batch", "batch shards", "lstmq s / epoch",
                                   "PyTorch s / epoch", "speed-up, in turns",
                                   "speed-up, separate"], rows), ""]


def format_benchmark(result: dict[str, Any]) -> str:
    s, env = result["settings"], result["environment"]
    real_rows = [[r["hidden"], r["seeds"], _layout(r), r["batches"],
                  _seconds(r["seconds_per_epoch"]),
                  f"{r['clip_seeds_per_second']:,.0f}", f"{r['multi_seed_ratio']:.2f}",
                  f"{r['warmup_seconds']:.1f}"] for r in result["training_real"]]
    synthetic_rows = [[r["hidden"], r.get("batch_size", s["batch_size"]), r["batch_shards"],
                       _seconds(r["seconds_per_epoch"]),
                       f"{r['clip_seeds_per_second']:,.0f}",
                       f"{r['pytorch_reference_seconds']:.2f}" if r["pytorch_reference_seconds"]
                       else "-",
                       f"{r['speedup_vs_pytorch_quoted']:.2f}x"
                       if r["speedup_vs_pytorch_quoted"] else "-",
                       _seconds(r["pytorch_measured"]["seconds_per_epoch"])
                       if r.get("pytorch_measured") else "-",
                       f"{r['speedup_vs_pytorch_measured']:.2f}x"
                       if r.get("speedup_vs_pytorch_measured") else "-",
                       _seconds(r["xla"]["seconds_per_epoch"]) if r.get("xla") else "-",
                       f"{r['native_vs_xla']:.2f}x" if r.get("native_vs_xla") else "-",
                       _seconds(r["qat"]["seconds_per_epoch"]) if r.get("qat") else "-",
                       f"{r['qat_vs_float']:.2f}x" if r.get("qat_vs_float") else "-"]
                      for r in result["training_synthetic"]]
    inf = result["inference"]
    inference_rows = [[name, f"{row['clips_per_second']:,.0f}",
                       f"{row['throughput_vs_float']:.2f}",
                       f"{row['latency_ms']['median']:.2f} ({row['latency_ms']['min']:.2f}-"
                       f"{row['latency_ms']['max']:.2f})", f"{row['latency_vs_float']:.2f}"]
                      for name, row in inf["paths"].items()]
    q = inf["quantize_input_latency_ms"]
    return "\n".join([
        "# lstmq throughput benchmark", "",
        f"{env['cpu']}, {env['cores']} cores, backend {env['backend']}, jax {env['jax']}; "
        f"load average {env['load_average']} at start, {env.get('load_average_end')} at end. "
        f"{common.SHARED_MACHINE_NOTE}", "",
        f"Seconds per epoch: median (min-max) of {s['epochs']} timed epoch(s) after a warm-up "
        "epoch that compiles every batch shape (its time, compilation included, is listed).", "",
        f"## (a) FSDD training split ({result['data']['train_clips']} clips), default config "
        f"({s['layers']} layers, {s['input_size']} MFCCs, batch {s['batch_size']}, "
        f"length buckets of {s['bucket_frames']} frames)", "",
        "Threads: `vmapped` = all seeds in one vmapped program on one thread; `per seed` = "
        "the same compiled step on one thread per seed (the default); `x k shards` = each "
        "batch split over k threads, gradients summed. Multi-seed ratio: time for N seeds / "
        "(N x time for 1 seed on one thread); below 1 means the seeds share the work.", "",
        common.markdown_table(["hidden", "seeds", "threads", "batches", "s / epoch",
                               "clip-seeds / s",
                               "multi-seed ratio", "warm-up s"], real_rows), "",
        f"## (b) Synthetic fixed-length epoch ({s['synthetic_clips']} clips x "
        f"{s['synthetic_frames']} frames, 1 seed, the same model on both sides: no dropout)",
        "",
        "PyTorch quoted s: the PyTorch reproduction's reported seconds per epoch for this "
        "setting (measured on another machine). PyTorch here s: the reference model and loop "
        "(`experiments.pytorch_reference`, nn.LSTM + Adam, tensors in memory) timed in this "
        "run on this machine, when torch is installed. Speed-up = PyTorch's seconds / ours "
        "(above 1: lstmq is faster). lstmq's float rows use `train.recurrence` as configured "
        f"({s.get('recurrence', 'auto')}: the C++ kernel where it builds); XLA scan: the same "
        "step with `train.recurrence=xla`, and its time / the configured one.", "",
        common.markdown_table(["hidden", "batch", "batch shards", "s / epoch",
                               "clips / s", "PyTorch quoted s", "speed-up", "PyTorch here s",
                               "speed-up", "XLA scan s / epoch", "kernel vs scan",
                               "QAT s / epoch", "QAT throughput vs float"],
                              synthetic_rows), "",
        *_paired_lines(result),
        *_compile_lines(result.get("compile")),
        *_seed_run_lines(result.get("seed_runs")),
        f"## (c) Inference, hidden {inf['hidden']} x {inf['layers']} layers, {inf['frames']} "
        f"frames, random parameters", "",
        f"Batched: {s['inference_batch']} clips per call, median of {s['inference_repeats']}. "
        f"Latency: batch 1, median (min-max) over {s['latency_clips']} clips. All paths are "
        "jitted and vmapped over a seed axis of 1, as the library evaluates them. The integer "
        "path takes int8 input; the float boundary `quantize_input` costs "
        f"{q['median']:.2f} ms per clip on top (eager, not jitted).", "",
        common.markdown_table(["path", "clips / s", "vs float", "latency ms", "vs float"],
                              inference_rows),
    ])


def main(argv: Sequence[str] | None = None) -> int:
    parser = common.script_parser(__doc__, "python -m experiments.benchmark", "runs/benchmark")
    parser.add_argument("--hidden", type=int, nargs="+", default=[24, 48, 67, 128])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 3],
                        help="seed counts trained together; the first is the ratio's baseline")
    parser.add_argument("--batch-shards", type=int, nargs="+", default=[1, 2],
                        help="train.batch_shards values; the first is the baseline")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs after the warm-up")
    parser.add_argument("--synthetic-clips", type=int, default=2400)
    parser.add_argument("--synthetic-frames", type=int, default=36)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 64],
                        help="batch sizes of the synthetic epoch, lstmq and PyTorch alike")
    parser.add_argument("--seed-run-epochs", type=int, default=10,
                        help="epochs of the whole-process multi-seed runs (0: skip them)")
    parser.add_argument("--seed-run-rounds", type=int, default=3,
                        help="rounds of the whole-process multi-seed runs")
    parser.add_argument("--paired-rounds", type=int, default=5,
                        help="with PyTorch: rounds of lstmq's and PyTorch's epochs taken in "
                             "turns, speed-up read round by round (0: none)")
    parser.add_argument("--inference-hidden", type=int,
                        help="default: solved for the 36,864-byte int8 budget")
    parser.add_argument("--inference-batch", type=int, default=512)
    parser.add_argument("--latency-clips", type=int, default=50)
    parser.add_argument("--pytorch", action=argparse.BooleanOptionalAction, default=None,
                        help="time the PyTorch reference model too (default: if torch is "
                             "installed)")
    args = parser.parse_args(argv)
    common.setup_logging()
    run(args.out, args.hidden, args.seeds, args.epochs, args.synthetic_clips,
        args.synthetic_frames, args.inference_hidden, args.inference_batch,
        latency_clips=args.latency_clips, overrides=args.set, quick=args.quick,
        shards=args.batch_shards, pytorch=args.pytorch, batch_sizes=args.batch_sizes,
        seed_run_epochs=args.seed_run_epochs, paired_rounds=args.paired_rounds,
        seed_run_rounds=args.seed_run_rounds)
    return 0


if __name__ == "__main__":
    sys.exit(common.guarded(main))
