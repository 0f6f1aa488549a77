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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from experiments import common, pytorch_reference
from experiments.bench_inference import time_inference
from experiments.bench_processes import time_compile, time_seed_runs
from experiments.bench_report import format_benchmark
from experiments.bench_training import (SYNTHETIC_INPUT_CLIP, add_seed_ratios, synthetic_split,
                                        time_paired, time_pytorch, time_training,
                                        training_layouts)
from lstmq.budget import Precision, solve_hidden_size
from lstmq.config import load_config
from lstmq.pipeline import SplitArrays, prepare_data

# PyTorch reproduction, one epoch of 2400 clips at 36 frames, batch 64, as quoted with that
# study (measured on another machine; `pytorch_reference` times it on this one).
PYTORCH_REFERENCE_SECONDS = {128: 1.07, 24: 0.31}


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

    real = _time_real(overrides, hidden, seeds, shards, data, epochs)
    split = synthetic_split(synthetic_clips, synthetic_frames, data.input_size)
    synthetic = _time_synthetic(overrides, hidden, batch_sizes, shards, split,
                                data.input_size, epochs)
    compile_times = time_compile(overrides, hidden[0]) if compile_check else None
    seed_runs = (time_seed_runs(overrides, seed_run_hidden, max(seeds), seed_run_epochs,
                                seed_run_rounds)
                 if seed_run_epochs and seed_run_rounds and max(seeds) > 1 else None)
    # PyTorch runs after every lstmq timing: its thread pool stays warm (and may spin) after
    # each epoch, which would slow the XLA threads timed next.
    if pytorch:
        _add_pytorch(synthetic, base, data.input_size, split, epochs)
        if paired_rounds > 0:
            _add_paired(synthetic, overrides, shards, split, data.input_size, paired_rounds)

    if inference_hidden is None:
        solution = solve_hidden_size(36864, base.model.layers, data.input_size,
                                     len(data.classes), Precision(8))
        inference_hidden = solution.hidden
        common.say(f"inference hidden {inference_hidden} (solved for 36,864 bytes, int8)")
    inference = time_inference(inference_hidden, base.model.layers, data.input_size,
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


def _synthetic_settings(overrides: Sequence[str], hidden: int, batch: int) -> list[str]:
    """The PyTorch reference's model: no dropout, so both sides do the same work."""
    return [*overrides, f"model.hidden={hidden}", "train.seeds=1", "model.dropout=0",
            f"train.batch_size={batch}"]


def _time_real(overrides: Sequence[str], hidden: Sequence[int], seeds: Sequence[int],
               shards: Sequence[int], data, epochs: int) -> list[dict[str, Any]]:
    """(a) every seed and thread layout on the real training split, with multi-seed ratios."""
    rows = []
    for h in hidden:
        for count, threads, shard in training_layouts(seeds, shards):
            config = load_config(None, [*overrides, f"model.hidden={h}", f"train.seeds={count}",
                                        f"train.seed_threads={threads}",
                                        f"train.batch_shards={shard}"])
            rows.append({"hidden": h, "seeds": count, "seed_threads": threads,
                         "batch_shards": shard,
                         **time_training(config, data.train, data.input_size, epochs)})
    add_seed_ratios(rows)
    return rows


def _time_synthetic(overrides: Sequence[str], hidden: Sequence[int], batch_sizes: Sequence[int],
                    shards: Sequence[int], split: SplitArrays, input_size: int,
                    epochs: int) -> list[dict[str, Any]]:
    """(b) the synthetic epoch per hidden size, batch and shard count; for the first shard
    count also the XLA-scan recurrence and QAT."""
    clips, frames = split.x.shape[:2]
    rows = []
    for h in hidden:
        for batch in batch_sizes:
            same = _synthetic_settings(overrides, h, batch)
            for shard in shards:
                layout = [*same, f"train.batch_shards={shard}"]
                row = {"hidden": h, "batch_size": batch, "seeds": 1, "batch_shards": shard,
                       "clips": clips, "frames": frames,
                       **time_training(load_config(None, layout), split, input_size, epochs)}
                reference = PYTORCH_REFERENCE_SECONDS.get(h) if (
                    clips, frames, batch) == (2400, 36, 64) else None
                row["pytorch_reference_seconds"] = reference
                row["speedup_vs_pytorch_quoted"] = (
                    reference / row["seconds_per_epoch"]["median"] if reference else None)
                if shard == shards[0]:
                    xla = load_config(None, [*layout, "train.recurrence=xla"])
                    row["xla"] = time_training(xla, split, input_size, epochs)
                    row["native_vs_xla"] = (row["xla"]["seconds_per_epoch"]["median"]
                                            / row["seconds_per_epoch"]["median"])
                    qat = load_config(None, [*layout, "quant.mode=qat",
                                             f"quant.input_clip={SYNTHETIC_INPUT_CLIP}",
                                             f"quant.weight_bits={8 if h <= 48 else 4}"])
                    row["qat"] = time_training(qat, split, input_size, epochs)
                    row["qat_vs_float"] = (row["seconds_per_epoch"]["median"]
                                           / row["qat"]["seconds_per_epoch"]["median"])
                rows.append(row)
    return rows


def _rows_of(synthetic: list[dict[str, Any]]) -> dict[tuple[int, int], list[dict[str, Any]]]:
    """The synthetic rows grouped by (hidden, batch size), in their order."""
    groups: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for row in synthetic:
        groups.setdefault((row["hidden"], row["batch_size"]), []).append(row)
    return groups


def _add_pytorch(synthetic: list[dict[str, Any]], base, input_size: int, split: SplitArrays,
                 epochs: int) -> None:
    """PyTorch's epochs timed separately, and each row's speed-up over them."""
    clips, frames = split.x.shape[:2]
    for (h, batch), rows in _rows_of(synthetic).items():
        measured = time_pytorch(h, base, input_size, clips, frames, epochs, batch)
        for row in rows:
            ours = row["seconds_per_epoch"]["median"]
            row["pytorch_measured"] = measured
            row["speedup_vs_pytorch_measured"] = measured["seconds_per_epoch"]["median"] / ours
            common.say(f"  hidden {h}, batch {batch}, {row['batch_shards']} batch "
                       f"shard(s): {ours:.3f} s/epoch, PyTorch in this run "
                       f"{measured['seconds_per_epoch']['median']:.3f} s: "
                       f"{row['speedup_vs_pytorch_measured']:.2f}x its throughput")


def _add_paired(synthetic: list[dict[str, Any]], overrides: Sequence[str], shards: Sequence[int],
                split: SplitArrays, input_size: int, rounds: int) -> None:
    """lstmq's layouts and PyTorch's epochs in turns; each row's round-by-round speed-ups."""
    for (h, batch), rows in _rows_of(synthetic).items():
        same = _synthetic_settings(overrides, h, batch)
        configs = {shard: load_config(None, [*same, f"train.batch_shards={shard}"])
                   for shard in shards}
        paired = time_paired(configs, split, input_size, h, batch, rounds)
        for row in rows:
            row["paired"] = {"rounds": paired["rounds"],
                             "pytorch_seconds_per_epoch": paired["pytorch_seconds_per_epoch"],
                             **paired["shards"][row["batch_shards"]]}


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
