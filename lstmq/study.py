"""The reference study end to end, then the integer model that goes beyond it.

    lstmq reproduce --out runs/reproduce         (--quick: short schedules)

Trains, on FSDD's random split (2400/600, random_state 42; models selected on validation):
Task A (float 2 x 128, ``task_a``), then the PTQ-vs-QAT trio of ``lstmq.recipes``: a float
model at the int8-budget hidden size (48) evaluated along every PTQ path, a QAT model
fine-tuned from it and its pure-integer conversion, and the study's float32 36 KB model
(hidden 24). Writes ``<out>/REPORT.md``, ``report.json`` and ``accuracy.png``; each run's
confusion matrix and curves are in its folder. Every training resumes: a finished run is
reused, an interrupted one continues from its last epoch.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from lstmq import comparison
from lstmq.config import Config, load_config
from lstmq.integer import predict_int, quantize_input
from lstmq.io import atomic_write_json, atomic_write_text
from lstmq.paths import integer_models, predict_path
from lstmq.pipeline import prepare_data
from lstmq.recipes import ptq_qat_configs, train_or_reuse
from lstmq.reports import (accuracy_summary, environment, format_accuracy, jsonable,
                           markdown_table, say)
from lstmq.runner import test_report
from lstmq.runs import load_run, model_from_config
from lstmq.timing import each_timed, repeat_timed

# --quick: one seed, no waveform copies, short schedules chosen so the 36 KB integer model
# still means something (a few minutes on 2 cores; docs/benchmark.md has the measurement).
QUICK = ["train.seeds=1", "augment.copies=0", "train.batch_shards=2"]
QUICK_EPOCHS = {"task_a": 4, "float_int8_budget": 20, "qat": 5, "float32_budget": 12}


def study_configs(out: Path, quick: bool, overrides: Sequence[str] = (),
                  qat_epochs: int = 15, split: str = "random") -> dict[str, Config]:
    """Run name -> config: Task A, then the PTQ-vs-QAT trio (QAT fine-tunes the float run)."""
    def settings(name: str) -> list[str]:
        short = [*QUICK, f"train.epochs={QUICK_EPOCHS[name]}"] if quick else []
        return [*short, *overrides]

    trio = {name: ptq_qat_configs(split, settings(name), out / "runs" / split / "float_int8_budget",
                                  QUICK_EPOCHS["qat"] if quick else qat_epochs)[name]
            for name in ("float_int8_budget", "qat", "float32_budget")}
    return {"task_a": load_config("task_a", [f"data.split={split}", *settings("task_a")]), **trio}


def reproduce(out: str | Path, quick: bool = False, overrides: Sequence[str] = (),
              progress: bool = True) -> dict[str, Any]:
    """Train (or reuse) every run of the study, compare every path, write the report."""
    started = time.perf_counter()
    out = Path(out)
    configs = study_configs(out, quick, overrides)
    runs, trainings = {}, []
    for name, config in configs.items():  # float_int8_budget trains before qat needs it
        workdir = out / "runs" / "random" / name
        say(f"{name}: quant {config.quant.mode}, {config.train.seeds} seed(s) x "
            f"{config.train.epochs} epochs")
        metrics = train_or_reuse(config, workdir, progress=progress)
        runs[name] = load_run(workdir)
        trainings.append({"run": name, "dir": f"runs/random/{name}",
                          "hidden": metrics["hidden"], "quant": config.quant.mode,
                          "seeds": metrics["derived"]["seeds"], "epochs": metrics["epochs"],
                          "train_seconds": metrics["train_seconds"],
                          "seconds_per_epoch": metrics["seconds_per_epoch"]})
    test = prepare_data(configs["qat"], progress=progress).test
    rows = comparison.compare_paths("random", runs, test)
    rows.insert(0, _task_a_row(runs["task_a"], test))
    audit = comparison.audit_paths(runs["qat"], runs["float_int8_budget"], test)
    timing = time_paths(runs, test)
    result = {"experiment": "reproduce", "quick": quick, "overrides": list(overrides),
              "rows": rows, "trainings": trainings, "audit": audit, "timing": timing,
              "seconds": time.perf_counter() - started, "environment": environment()}
    atomic_write_json(out / "report.json", jsonable(result))
    atomic_write_text(out / "REPORT.md", format_report(result) + "\n")
    comparison.plot_accuracy(rows, out / "accuracy.png")
    say(f"done in {result['seconds'] / 60:.1f} min: {out / 'REPORT.md'}")
    return result


def _task_a_row(run, test) -> dict[str, Any]:
    report = test_report(predict_path(run, test), test, run.derived.seeds, run.classes)
    return {"split": "random", "method": "Task A float", "path": "float",
            "run": run.directory.name, "hidden": run.derived.hidden,
            "seeds": list(run.derived.seeds), "storage": "float32",
            "bytes": comparison.counted_bytes(run, 32), "budget_bytes": None,
            "fits_budget": False, "float_free": False,
            "test_accuracy": accuracy_summary(list(report["test_accuracy_per_seed"].values())),
            "test_accuracy_per_seed": report["test_accuracy_per_seed"],
            "test_count": report["test_count"], "params": comparison.param_count(run)}


def time_paths(runs: dict[str, Any], test, batch: int = 256, latency_clips: int = 50,
               repeats: int = 5) -> dict[str, Any]:
    """Batch-1 latency and batched throughput of each path on real test clips, one seed.

    Clips are padded to 48 frames (longer ones cut) so every path runs the same shapes.
    """
    frames = 48
    x = test.x[:batch, :frames]
    if x.shape[1] < frames:
        x = np.pad(x, ((0, 0), (0, frames - x.shape[1]), (0, 0)))
    lengths = np.minimum(test.lengths[:batch], frames).astype(np.int32)
    paths = {}
    for name, run_name in (("Task A float", "task_a"), ("float32 parity", "float32_budget"),
                           ("float", "float_int8_budget"), ("QAT", "qat")):
        run = runs[run_name]
        model = model_from_config(run.config, run.derived)
        params = jax.tree_util.tree_map(lambda p: p[0], run.params)
        paths[name] = (jax.jit(lambda p, x_, l, m=model: m.apply({"params": p}, x_, l)),
                       params, False)
    integer = integer_models(runs["qat"])[0]
    paths["QAT-integer"] = (jax.jit(predict_int), integer, True)
    rows = {}
    for name, (fn, params, is_int) in paths.items():
        inputs = quantize_input(integer, x) if is_int else x
        batched = repeat_timed(lambda: fn(params, inputs, lengths), repeats)
        latency = each_timed([lambda i=i: fn(params, inputs[i:i + 1], lengths[i:i + 1])
                              for i in range(latency_clips)])
        rows[name] = {"clips_per_second": batch / batched["median"],
                      "latency_ms": latency["median"] * 1e3}
    base = rows["float"]
    for row in rows.values():
        row["throughput_vs_float"] = row["clips_per_second"] / base["clips_per_second"]
        row["latency_vs_float"] = row["latency_ms"] / base["latency_ms"]
    return {"batch": batch, "frames": frames, "paths": rows,
            "reference": "float = float model at the int8-budget hidden size"}


def format_report(result: dict[str, Any]) -> str:
    timing = result["timing"]["paths"]
    header = ["model", "hidden", "params", "storage", "counted bytes", "float-free",
              "test accuracy % mean (min-max)", "seeds", "batch-1 latency vs float",
              "batched throughput vs float"]
    rows = []
    for r in result["rows"]:
        t = timing.get(r["method"])
        rows.append([r["method"], r["hidden"], f"{r['params']:,}", r["storage"],
                     f"{r['bytes']:,}", "yes" if r["float_free"] else "no",
                     format_accuracy(r["test_accuracy"]), r["test_accuracy"]["n"],
                     f"{t['latency_vs_float']:.2f}x" if t else "-",
                     f"{t['throughput_vs_float']:.2f}x" if t else "-"])
    agreement = [f"{r['method']}: {r['agreement'] * 100:.2f}% of predictions equal to "
                 f"{r['agreement_with']}" for r in result["rows"] if "agreement" in r]
    times = markdown_table(
        ["path", "batch-1 latency ms", "batched clips/s"],
        [[name, f"{t['latency_ms']:.2f}", f"{t['clips_per_second']:,.0f}"]
         for name, t in timing.items()])
    trainings = markdown_table(
        ["run", "hidden", "quant", "seeds", "epochs", "train s", "s / epoch (all seeds)"],
        [[t["run"], t["hidden"], t["quant"], len(t["seeds"]), t["epochs"],
          f"{t['train_seconds']:.0f}", f"{t['seconds_per_epoch']:.1f}"]
         for t in result["trainings"]])
    env = result["environment"]
    training_minutes = sum(t["train_seconds"] for t in result["trainings"]) / 60
    return "\n".join([
        "# lstmq: reproduction of the reference study" + (" (quick)" if result["quick"] else ""),
        "", "Random split (2400/600 clips, random_state 42). Accuracy: mean (min-max) over "
        "seeds; models selected on a validation split carved from the training clips. "
        "Counted bytes: lstmq.budget (float32 for float rows, the integer model for int8 "
        "rows). Timings: one seed, the same 256 test clips at 48 frames, ratios to the "
        "float model of the int8-budget size measured in the same run.", "",
        markdown_table(header, rows), "", *[f"- {a}" for a in agreement], "",
        comparison.format_audit(result["audit"]), "",
        "## Timings", "", times, "", "## Trainings", "", trainings, "",
        "Confusion matrices and training curves: `runs/random/<run>/confusion.png`, "
        "`history.png`; accuracy bars: `accuracy.png`.", "",
        f"Training time of all runs {training_minutes:.1f} min; this invocation "
        f"{result['seconds'] / 60:.1f} min (finished runs are reused, not retrained); "
        f"{env['cpu']} ({env['cores']} cores), load average {env['load_average']}.",
    ])
