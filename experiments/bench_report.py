"""The benchmark's Markdown report from its result dictionary."""

from __future__ import annotations

from typing import Any

from experiments import common


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
