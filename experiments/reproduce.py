"""Reproduce the reference study end to end, then the integer model that goes beyond it.

Run:    lstmq reproduce --out runs/reproduce          (also: python -m experiments.reproduce)
Quick:  lstmq reproduce --quick --out runs/quick       (1 seed, 2 epochs, no waveform copies)
Time on a 2-core CPU: --quick about 5 min; the full run (3 seeds trained together per model)
is printed at the end and recorded in the README with its table.

Trains, on the random split (2400/600, random_state 42; models selected on validation):
  Task A        float LSTM 2 x 128 (experiments/configs/task_a.yaml)
  Task B float  the study's float32 36 KB model, hidden 24 solved by lstmq.budget
  Task B int8   a float model at the int8-budget hidden size (48), evaluated as float,
                PTQ-dynamic, PTQ-static and PTQ-integer; a QAT model fine-tuned from it;
                the QAT model's pure-integer conversion
and writes <out>/REPORT.md, <out>/report.json and plots: accuracy bars, and each run's
confusion matrix and training curves (in its run folder). Every training resumes: a
finished run is reused, an interrupted one continues from its last epoch.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from experiments import common, ptq_vs_qat
from experiments.benchmark import each_timed, repeat_timed
from lstmq.budget import Precision, model_bytes
from lstmq.config import Config, load_config
from lstmq.io import atomic_write_json, atomic_write_text
from lstmq.integer import convert_run, predict_int, quantize_input, stack_models
from lstmq.pipeline import prepare_data
from lstmq.runner import load_run, predict_run, test_report

QUICK = ["train.seeds=1", "train.epochs=2", "augment.copies=0"]


def study_configs(out: Path, quick: bool, overrides: Sequence[str] = (),
                  qat_epochs: int = 15, split: str = "random") -> dict[str, Config]:
    """Run name -> config: Task A, then ptq_vs_qat's three (QAT fine-tunes the float run)."""
    settings = [*(QUICK if quick else []), *overrides]
    return {
        "task_a": load_config(common.CONFIG_DIR / "task_a.yaml",
                              [f"data.split={split}", *settings]),
        **ptq_vs_qat.build_configs(split, None, None, settings,
                                   float_dir=out / "runs" / split / "float_int8_budget",
                                   qat_epochs=1 if quick else qat_epochs),
    }


def run(out: str | Path, quick: bool = False, overrides: Sequence[str] = (),
        progress: bool = True) -> dict[str, Any]:
    started = time.perf_counter()
    out = Path(out)
    configs = study_configs(out, quick, overrides)
    runs, trainings = {}, []
    for name, config in configs.items():  # float_int8_budget trains before qat needs it
        workdir = out / "runs" / "random" / name
        common.say(f"{name}: quant {config.quant.mode}, {config.train.seeds} seed(s) x "
                   f"{config.train.epochs} epochs")
        metrics = common.train_or_resume(config, workdir, progress=progress)
        runs[name] = (load_run(workdir), metrics)
        trainings.append({"run": name, "dir": f"runs/random/{name}",
                          "hidden": metrics["hidden"], "quant": config.quant.mode,
                          "seeds": metrics["derived"]["seeds"], "epochs": metrics["epochs"],
                          "train_seconds": metrics["train_seconds"],
                          "seconds_per_epoch": metrics["seconds_per_epoch"]})
    test = prepare_data(configs["qat"], progress=progress).test
    rows = ptq_vs_qat.evaluate_split("random", runs, test)
    rows.insert(0, _task_a_row(runs["task_a"][0], test))
    audit = ptq_vs_qat.audit_paths(runs["qat"][0], runs["float_int8_budget"][0], test)
    timing = time_paths(runs, test)
    result = {"experiment": "reproduce", "quick": quick, "overrides": list(overrides),
              "rows": rows, "trainings": trainings, "audit": audit, "timing": timing,
              "seconds": time.perf_counter() - started, "environment": common.environment()}
    atomic_write_json(out / "report.json", common.jsonable(result))
    atomic_write_text(out / "REPORT.md", format_report(result) + "\n")
    ptq_vs_qat.plot_accuracy(rows, out / "accuracy.png")
    common.say(f"done in {result['seconds'] / 60:.1f} min: {out / 'REPORT.md'}")
    return result


def _task_a_row(run, test) -> dict[str, Any]:
    report = test_report(predict_run(run, test), test, run.derived.seeds)
    accuracy = common.accuracy_summary(list(report["test_accuracy_per_seed"].values()))
    model = run.config.model
    size = model_bytes(run.derived.hidden, model.layers, run.derived.input_size,
                       model.num_classes, Precision(32))
    return {"split": "random", "method": "Task A float", "run": run.directory.name,
            "hidden": run.derived.hidden, "seeds": list(run.derived.seeds),
            "storage": "float32", "bytes": size.total, "budget_bytes": None,
            "fits_budget": False, "float_free": False, "test_accuracy": accuracy,
            "test_accuracy_per_seed": report["test_accuracy_per_seed"],
            "test_count": report["test_count"], "params": size.params}


def time_paths(runs: dict[str, tuple[Any, dict]], test, batch: int = 256,
               latency_clips: int = 50, repeats: int = 5) -> dict[str, Any]:
    """Batch-1 latency and batched throughput of each path on real test clips, one seed.

    Clips are padded to 48 frames (longer ones cut) so every path runs the same shapes.
    """
    frames = 48
    x = test.x[:batch, :frames]
    if x.shape[1] < frames:
        x = np.pad(x, ((0, 0), (0, frames - x.shape[1]), (0, 0)))
    lengths = np.minimum(test.lengths[:batch], frames).astype(np.int32)
    paths = {}
    for name, mode in (("Task A float", "task_a"), ("float32 parity", "float32_budget"),
                       ("float", "float_int8_budget"), ("QAT", "qat")):
        run = runs[mode][0]
        model = run.model()
        params = jax.tree_util.tree_map(lambda p: p[0], run.params)
        paths[name] = (jax.jit(lambda p, x_, l, m=model: m.apply({"params": p}, x_, l)),
                       params, False)
    integer = convert_run(runs["qat"][0])[0]
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
    method_timing = {"Task A float": "Task A float", "float32 parity": "float32 parity",
                     "float": "float", "QAT": "QAT", "QAT-integer": "QAT-integer"}
    header = ["model", "hidden", "params", "storage", "counted bytes", "float-free",
              "test accuracy % mean (min-max)", "seeds", "batch-1 latency vs float",
              "batched throughput vs float"]
    rows = []
    for r in result["rows"]:
        t = timing.get(method_timing.get(r["method"], ""), None)
        params = model_bytes(r["hidden"], 2, 13, 10, Precision(32)).params
        rows.append([r["method"], r["hidden"], f"{params:,}", r["storage"], f"{r['bytes']:,}",
                     "yes" if r["float_free"] else "no",
                     common.format_accuracy(r["test_accuracy"]), r["test_accuracy"]["n"],
                     f"{t['latency_vs_float']:.2f}x" if t else "-",
                     f"{t['throughput_vs_float']:.2f}x" if t else "-"])
    agreement = [f"{r['method']}: {r['agreement'] * 100:.2f}% of predictions equal to "
                 f"{r['agreement_with']}" for r in result["rows"] if "agreement" in r]
    times = common.markdown_table(
        ["path", "batch-1 latency ms", "batched clips/s"],
        [[name, f"{t['latency_ms']:.2f}", f"{t['clips_per_second']:,.0f}"]
         for name, t in timing.items()])
    trainings = common.markdown_table(
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
        common.markdown_table(header, rows), "", *[f"- {a}" for a in agreement], "",
        "## Timings", "", times, "", "## Trainings", "", trainings, "",
        "Confusion matrices and training curves: `runs/random/<run>/confusion.png`, "
        "`history.png`; accuracy bars: `accuracy.png`.", "",
        f"Training time of all runs {training_minutes:.1f} min; this invocation "
        f"{result['seconds'] / 60:.1f} min (finished runs are reused, not retrained); "
        f"{env['cpu']} ({env['cores']} cores), load average {env['load_average']}.",
    ])


def main(argv: Sequence[str] | None = None) -> int:
    parser = common.script_parser(__doc__, "lstmq reproduce", "runs/reproduce")
    args = parser.parse_args(argv)
    common.setup_logging()
    run(args.out, args.quick, args.set, progress=not args.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
