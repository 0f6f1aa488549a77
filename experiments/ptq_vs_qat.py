"""PTQ vs QAT under the 36,864-byte budget, on the random and the official split.

Run:      python -m experiments.ptq_vs_qat --out runs/ptq_vs_qat
Quick:    python -m experiments.ptq_vs_qat --quick --out runs/ptq_quick
          (1 seed, 2 epochs, no waveform augmentation copies)
Options:  --epochs N --seeds N --splits random official --set key=value (every run)
Time on a 2-core CPU (AMD EPYC, shared with other jobs): full (3 seeds trained together,
  float 40 epochs, QAT fine-tuned 15 epochs from the float run, both splits) about 35 min.
Measured (3 seeds, test accuracy mean (min-max)): random split float, PTQ-dynamic, PTQ-static,
  PTQ-integer 99.83 (99.67-100.00), QAT and QAT-integer 99.83 (99.83-99.83) with 100 %
  agreement, float32 parity 99.11 (99.00-99.17); official split float/PTQ 99.67
  (99.00-100.00), QAT/QAT-integer 99.78 (99.33-100.00), float32 parity 98.67.
Produces: <out>/ptq_vs_qat.json + .md (mean/min/max test accuracy over seeds, bytes,
  float-free, agreement) and ptq_vs_qat.png (accuracy bars with min-max error bars);
  <out>/runs/<split>/<run>/ are the library's run directories, reused on a re-run
  (a finished run is skipped, an interrupted one resumes).

Rows per split (hidden solved by ``lstmq.budget`` for int8 storage; printed):
  float           float run at the int8-budget hidden size, float32 weights
  PTQ-dynamic     that run, int8 weights only (activations float)
  PTQ-static      that run, int8 weights + static int8/int16 activations (fake quant)
  PTQ-integer     that run converted to the integer model (post_training=True)
  QAT             the float run fine-tuned quantization-aware (fake quant), same size
  QAT-integer     the QAT run converted to the integer model
  float32 parity  the reference study's setting: float32 storage within the budget (hidden 24)
Models are selected on the validation split inside the library; test data only enters
the final table.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from experiments import common
from lstmq.audit import FloatFoundError, audit_float_free
from lstmq.budget import Precision, count_artifact_bytes, hidden_from_config, model_bytes
from lstmq.config import Config, load_config
from lstmq.export import stored_arrays
from lstmq.integer import convert_run, predict_int, predict_int_split, quantize_input
from lstmq.pipeline import prepare_data
from lstmq.runner import load_run, predict_run, test_report

INT8_CONFIG = common.CONFIG_DIR / "task_b_qat.yaml"
FLOAT32_CONFIG = common.CONFIG_DIR / "task_b_float.yaml"
SPLITS = ("random", "official")
METHODS = ("float", "PTQ-dynamic", "PTQ-static", "PTQ-integer", "QAT", "QAT-integer",
           "float32 parity")


def build_configs(split: str, seeds: int | None, epochs: int | None,
                  overrides: Sequence[str] = (), float_dir: Path | None = None,
                  qat_epochs: int = 15, weight_bits: int = 8) -> dict[str, Config]:
    """The three trainings of one split: run name -> config (user overrides applied last).

    The QAT run fine-tunes the float run in ``float_dir`` (each seed from its float seed)
    for ``qat_epochs`` at a lower learning rate; without ``float_dir`` it trains from scratch.
    """
    settings = [f"data.split={split}",
                *([f"train.seeds={seeds}"] if seeds is not None else []),
                *([f"train.epochs={epochs}"] if epochs is not None else []), *overrides]
    fine_tune = [] if float_dir is None else [
        f"quant.init_from={float_dir}", f"train.epochs={qat_epochs}",
        "train.learning_rate=0.001", "train.warmup_epochs=0"]
    bits = [f"budget.weight_bits={weight_bits}", f"quant.weight_bits={weight_bits}"]
    return {
        "float_int8_budget": load_config(INT8_CONFIG, [*settings, *bits, "quant.mode=float"]),
        "qat": load_config(INT8_CONFIG, [*settings, *bits, "quant.mode=qat", *fine_tune]),
        "float32_budget": load_config(FLOAT32_CONFIG, settings),
    }


def run(out: str | Path, seeds: int | None = None, epochs: int | None = None,
        splits: Sequence[str] = SPLITS, overrides: Sequence[str] = (), quick: bool = False,
        progress: bool = True, qat_epochs: int = 15, weight_bits: int = 8) -> dict[str, Any]:
    """Train, evaluate every path, write ``ptq_vs_qat.json``/``.md``/``.png`` under ``out``.

    Args:
      out: result folder (run directories under ``<out>/runs``).
      seeds: ``train.seeds`` of every run (default: the configs', 3).
      epochs: ``train.epochs`` of every run (default: the configs', 40).
      splits: data splits to compare.
      overrides: dotted config overrides applied to every run.
      quick: 1 seed, 2 epochs and no waveform copies unless ``seeds``/``epochs``/
        ``overrides`` say otherwise.
    """
    out = Path(out)
    seeds, epochs, overrides = common.quick_defaults(quick, seeds, epochs, overrides)
    environment = common.environment()
    rows: list[dict[str, Any]] = []
    budget: dict[str, Any] = {}
    audit: dict[str, Any] = {}
    trainings: list[dict[str, Any]] = []
    for split in splits:
        configs = build_configs(split, seeds, epochs, overrides,
                                float_dir=out / "runs" / split / "float_int8_budget",
                                qat_epochs=1 if quick else qat_epochs,
                                weight_bits=weight_bits)
        data = prepare_data(configs["qat"], progress=progress)
        if not budget:
            budget = _describe_budget(configs, data.input_size)
        common.say(f"split {split}: {len(data.train)} train / {len(data.val)} val / "
                   f"{len(data.test)} test clips")
        runs = {}
        for name, config in configs.items():
            hidden = hidden_from_config(config.model, config.budget, data.input_size)
            common.say(f"[{split}] {name}: hidden {hidden}, quant {config.quant.mode}, "
                       f"{config.train.seeds} seed(s) x {config.train.epochs} epochs")
            workdir = out / "runs" / split / name
            metrics = common.train_or_resume(config, workdir, data, progress)
            runs[name] = (load_run(workdir), metrics)
            trainings.append({
                "split": split, "run": name, "dir": f"runs/{split}/{name}", "hidden": hidden,
                "quant": config.quant.mode, "seeds": metrics["derived"]["seeds"],
                "epochs": metrics["epochs"], "selected_epoch": metrics["selected_epoch"],
                "val_accuracy": metrics["val_accuracy"],
                "train_seconds": metrics["train_seconds"],
                "seconds_per_epoch": metrics["seconds_per_epoch"]})
        rows += evaluate_split(split, runs, data.test)
        if not audit:
            audit = audit_paths(runs["qat"][0], runs["float_int8_budget"][0], data.test)
    environment["load_average_end"] = common.load_average()
    result = {
        "experiment": "ptq_vs_qat",
        "settings": {"seeds": seeds, "epochs": epochs, "splits": list(splits),
                     "overrides": list(overrides), "quick": quick,
                     "configs": {"int8": "experiments/configs/task_b_qat.yaml",
                                 "float32": "experiments/configs/task_b_float.yaml"}},
        "budget": budget,
        "rows": rows,
        "trainings": trainings,
        "audit": audit,
        "environment": environment,
    }
    common.write_results(out, "ptq_vs_qat", result, format_table(result))
    plot_accuracy(rows, out / "ptq_vs_qat.png")
    common.say(f"wrote {out / 'ptq_vs_qat.md'} and {out / 'ptq_vs_qat.png'}")
    return result


def _describe_budget(configs: dict[str, Config], input_size: int) -> dict[str, Any]:
    described = {}
    for key, name in (("int8", "qat"), ("float32", "float32_budget")):
        config = configs[name]
        hidden = hidden_from_config(config.model, config.budget, input_size)
        report = model_bytes(hidden, config.model.layers, input_size, config.model.num_classes,
                             Precision(config.budget.weight_bits), config.budget.layout)
        described[key] = {"hidden": hidden, "bytes": report.total, "params": report.params,
                          "budget_bytes": config.budget.bytes,
                          "weight_bits": config.budget.weight_bits,
                          "policy": config.budget.policy}
        common.say(f"budget {config.budget.bytes:,} bytes, {report.precision.name} storage "
                   f"({config.budget.policy} policy): hidden {hidden} uses {report.total:,} bytes")
    return described


def _bytes(run, bits: int) -> int:
    model = run.config.model
    return model_bytes(run.derived.hidden, model.layers, run.derived.input_size,
                       model.num_classes, Precision(bits), run.config.budget.layout).total


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of (seed, clip) predictions two paths share."""
    return float(np.mean(np.argmax(a, -1) == np.argmax(b, -1)))


def evaluate_split(split: str, runs: dict[str, tuple[Any, dict]], test) -> list[dict[str, Any]]:
    """Every method's test logits -> one row each (accuracy over seeds, bytes, float-free)."""
    float_run, _ = runs["float_int8_budget"]
    qat_run, _ = runs["qat"]
    parity_run, _ = runs["float32_budget"]
    bits = qat_run.config.quant.weight_bits
    common.say(f"[{split}] evaluating float, PTQ-dynamic, PTQ-static, PTQ-integer")
    logits = {
        "float": predict_run(float_run, test),
        "PTQ-dynamic": predict_run(float_run, test, mode="qat", activations=False),
        "PTQ-static": predict_run(float_run, test, mode="qat"),
    }
    ptq_models = convert_run(float_run, post_training=True)
    logits["PTQ-integer"] = predict_int_split(ptq_models, test)
    common.say(f"[{split}] evaluating QAT, QAT-integer, float32 parity")
    logits["QAT"] = predict_run(qat_run, test)
    qat_models = convert_run(qat_run)
    logits["QAT-integer"] = predict_int_split(qat_models, test)
    logits["float32 parity"] = predict_run(parity_run, test)

    source = {"float": float_run, "PTQ-dynamic": float_run, "PTQ-static": float_run,
              "PTQ-integer": float_run, "QAT": qat_run, "QAT-integer": qat_run,
              "float32 parity": parity_run}
    storage = {"float": 32, "float32 parity": 32}
    artifacts = {"PTQ-integer": ptq_models, "QAT-integer": qat_models}
    simulated_by = {"PTQ-integer": "PTQ-static", "QAT-integer": "QAT"}
    rows = []
    for method in METHODS:
        run = source[method]
        precision = Precision(storage.get(method, bits))
        report = test_report(logits[method], test, run.derived.seeds)
        accuracy = common.accuracy_summary(list(report["test_accuracy_per_seed"].values()))
        row = {"split": split, "method": method, "run": run.directory.name,
               "hidden": run.derived.hidden, "seeds": list(run.derived.seeds),
               "storage": precision.name, "bytes": _bytes(run, precision.weight_bits),
               "budget_bytes": run.config.budget.bytes,
               "float_free": method in artifacts, "test_accuracy": accuracy,
               "test_accuracy_per_seed": report["test_accuracy_per_seed"],
               "test_count": report["test_count"]}
        row["fits_budget"] = row["bytes"] <= row["budget_bytes"]
        if method in artifacts:
            # as the artifact stores them: int4 weights packed two per byte
            counted = [count_artifact_bytes(stored_arrays(model, bits))
                       for model in artifacts[method]]
            row["artifact_bytes"] = counted[0]
            row["artifact_bytes_match"] = all(c == row["bytes"] for c in counted)
            if not row["artifact_bytes_match"]:
                common.say(f"WARNING [{split}] {method}: converted arrays hold {counted} bytes, "
                           f"lstmq.budget counts {row['bytes']}")
            reference = simulated_by[method]
            row["agreement_with"] = reference
            row["agreement"] = _agreement(logits[method], logits[reference])
        rows.append(row)
        common.say(f"[{split}] {method:15s} hidden {row['hidden']:3d} {precision.name:7s} "
                   f"{row['bytes']:7,d} B  test {common.format_accuracy(accuracy)} %"
                   + (f"  agreement with {row['agreement_with']} {row['agreement'] * 100:.2f} %"
                      if "agreement" in row else ""))
    return rows


def audit_paths(qat_run, float_run, test) -> dict[str, Any]:
    """Float-free audit of the integer path (passes) and of the float/QAT applies (fail)."""
    model = convert_run(qat_run)[0]
    x = test.x[:4, :32]
    lengths = np.minimum(test.lengths[:4], 32).astype(np.int32)
    report = audit_float_free(predict_int, model, quantize_input(model, x), lengths)
    result = {"integer": {"function": "lstmq.integer.predict_int", "float_free": True,
                          "equations": report.num_equations, "dtypes": sorted(report.dtypes)}}
    common.say(f"audit: predict_int is float-free ({report.num_equations} equations, "
               f"dtypes {sorted(report.dtypes)})")
    for name, run in (("float", float_run), ("qat", qat_run)):
        module = run.model()
        params = jax.tree_util.tree_map(lambda p: p[0], run.params)
        try:
            audit_float_free(lambda p, x_, l: module.apply({"params": p}, x_, l),
                             params, x, lengths)
            result[name] = {"function": f"{name} model.apply", "float_free": True}
        except FloatFoundError as error:
            result[name] = {"function": f"{name} model.apply", "float_free": False,
                            "violations": len(error.violations), "first": error.violations[0]}
        common.say(f"audit: {name} apply float-free: {result[name]['float_free']}"
                   + (f" ({result[name]['violations']} float values)"
                      if not result[name]["float_free"] else ""))
    return result


def format_table(result: dict[str, Any]) -> str:
    budget = result["budget"]
    header = ["split", "method", "hidden", "storage", "bytes", "within budget", "float-free",
              "test accuracy % mean (min-max)", "seeds", "agreement %"]
    def stored(r):  # a mismatch between the accounting and the converted arrays shows
        match = r.get("artifact_bytes_match", True)
        return f"{r['bytes']:,}" + ("" if match else f" (artifact {r['artifact_bytes']:,})")

    rows = [[r["split"], r["method"], r["hidden"], r["storage"], stored(r),
             "yes" if r["fits_budget"] else "no", "yes" if r["float_free"] else "no",
             common.format_accuracy(r["test_accuracy"]), r["test_accuracy"]["n"],
             f"{r['agreement'] * 100:.2f} vs {r['agreement_with']}" if "agreement" in r else "-"]
            for r in result["rows"]]
    s, env, audit = result["settings"], result["environment"], result["audit"]
    int8, f32 = budget["int8"], budget["float32"]
    lines = [
        "# PTQ vs QAT under a 36,864-byte budget", "",
        f"Hidden size solved by `lstmq.budget` for {int8['budget_bytes']:,} bytes: "
        f"**{int8['hidden']}** at int8 storage ({int8['bytes']:,} bytes), {f32['hidden']} at "
        f"float32 storage ({f32['bytes']:,} bytes; the float32 parity row). Bytes per row: "
        "float32 for float rows, the int8 integer model for quantized rows; for integer rows "
        "also counted from the converted arrays (must match).", "",
        f"Seeds trained together per run: {s['seeds'] or 'config default'}; epochs: "
        f"{s['epochs'] or 'config default'}; overrides: `{' '.join(s['overrides']) or '-'}`. "
        "Models selected on validation; the test split is only used here.", "",
        common.markdown_table(header, rows), "",
        "Agreement: fraction of (seed, clip) test predictions the integer model shares with "
        "its fake-quant simulation.", "",
        f"Float-free audit (`lstmq.audit.audit_float_free`): integer `predict_int` "
        f"{'passes' if audit['integer']['float_free'] else 'FAILS'} "
        f"({audit['integer']['equations']} equations, dtypes "
        f"{', '.join(audit['integer']['dtypes'])}); "
        + "; ".join(f"{audit[k]['function']} {'passes' if audit[k]['float_free'] else 'fails'}"
                    + (f" ({audit[k]['violations']} float values)" if not audit[k]["float_free"]
                       else "") for k in ("float", "qat")) + ".", "",
        "Trainings (seeds trained together; seconds include the first epoch's compilation):",
        "",
        common.markdown_table(
            ["split", "run", "hidden", "quant", "seeds", "epochs", "train s", "s / epoch",
             "selected epoch per seed", "val accuracy % per seed"],
            [[t["split"], t["run"], t["hidden"], t["quant"], len(t["seeds"]), t["epochs"],
              f"{t['train_seconds']:.0f}", f"{t['seconds_per_epoch']:.1f}",
              " ".join(map(str, t["selected_epoch"])),
              " ".join(f"{v * 100:.1f}" for v in t["val_accuracy"])]
             for t in result["trainings"]]), "",
        f"Measured on {env['cpu']} ({env['cores']} cores), load average {env['load_average']} "
        f"at start, {env.get('load_average_end')} at end. {common.SHARED_MACHINE_NOTE}",
    ]
    return "\n".join(lines)


def plot_accuracy(rows: list[dict[str, Any]], path: Path) -> None:
    """Grouped bars: mean test accuracy per method, one bar per split, min-max error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = list(dict.fromkeys(r["split"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    width = 0.8 / len(splits)
    fig, ax = plt.subplots(figsize=(10, 4))
    for k, split in enumerate(splits):
        found = {r["method"]: r["test_accuracy"] for r in rows if r["split"] == split}
        mean = np.array([found[m]["mean"] * 100 for m in methods])
        # clip: mean and min/max of equal values can differ in the last float bit
        low = np.maximum(mean - np.array([found[m]["min"] * 100 for m in methods]), 0)
        high = np.maximum(np.array([found[m]["max"] * 100 for m in methods]) - mean, 0)
        positions = np.arange(len(methods)) + (k - (len(splits) - 1) / 2) * width
        bars = ax.bar(positions, mean, width, yerr=[low, high], capsize=3, label=f"{split} split")
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
    ax.set_xticks(np.arange(len(methods)), methods)
    ax.set_ylabel("test accuracy % (mean, min-max over seeds)")
    low_end = min(r["test_accuracy"]["min"] for r in rows) * 100
    ax.set_ylim(max(0.0, low_end - 10), 100)
    ax.legend(loc="lower left")
    budgets = sorted({r["budget_bytes"] for r in rows if r.get("budget_bytes")})
    ax.set_title("PTQ vs QAT" + "".join(f" within {b:,} bytes" for b in budgets[:1]))
    common.save_figure(fig, path)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = common.script_parser(__doc__, "python -m experiments.ptq_vs_qat", "runs/ptq_vs_qat")
    parser.add_argument("--seeds", type=int, help="seeds per run (default: configs', 3)")
    parser.add_argument("--epochs", type=int, help="epochs per run (default: configs', 40)")
    parser.add_argument("--bits", type=int, choices=(8, 4), default=8,
                        help="weight storage of the quantized rows (the budget solves for it)")
    parser.add_argument("--splits", nargs="+", choices=("random", "official", "speaker"),
                        default=list(SPLITS))
    args = parser.parse_args(argv)
    common.setup_logging()
    run(args.out, args.seeds, args.epochs, args.splits, args.set, args.quick,
        progress=not args.quiet, weight_bits=args.bits)
    return 0


if __name__ == "__main__":
    sys.exit(main())
