"""Accuracy against counted bytes: QAT integer models across budgets, bit widths and depths.

Run:    python -m experiments.budget_sweep --out runs/budget_sweep
Quick:  python -m experiments.budget_sweep --quick --out runs/budget_sweep_quick
For budgets of 8, 16, 36 and 64 KB (8,192 ... 65,536 bytes), int8 and int4 weight storage,
and 1 or 2 LSTM layers, ``lstmq.budget`` solves the hidden size; each point trains a float
model at that size, fine-tunes it quantization-aware, converts it to the integer model and
tests it (random split). Bytes are counted from the stored integer arrays (int4 packed two
per byte) and must equal the budget's count. Writes budget_sweep.json/.md and a Pareto plot
(budget_sweep.png) with the 36 KB budget marked. Full grid (16 points, 3 seeds, 40 + 15
epochs): several hours on a 2-core CPU; --quick (2 points, 1 seed, 2 + 1 epochs): ~3 min.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from experiments import common
from lstmq.artifact import stored_arrays
from lstmq.budget import Precision, count_artifact_bytes, solve_hidden_size
from lstmq.config import load_config
from lstmq.features import num_features
from lstmq.paths import integer_models, predict_path
from lstmq.pipeline import prepare_data
from lstmq.recipes import float_and_qat
from lstmq.runner import test_report
from lstmq.runs import load_run

CONFIG = "task_b_qat"
BUDGETS = (8192, 16384, 36864, 65536)
BITS = (8, 4)
LAYERS = (1, 2)
MARKED_BUDGET = 36864


def point_configs(out: Path, budget: int, bits: int, layers: int, overrides: Sequence[str],
                  qat_epochs: int):
    name = f"b{budget}_w{bits}_l{layers}"
    base = [f"budget.bytes={budget}", f"quant.weight_bits={bits}", f"model.layers={layers}",
            "model.hidden=auto", *overrides]
    float_dir = out / "runs" / name / "float"
    float_config, qat_config = float_and_qat(CONFIG, base, float_dir, qat_epochs)
    return name, float_dir, out / "runs" / name / "qat", float_config, qat_config


def run(out: str | Path, budgets: Sequence[int] = BUDGETS, bits: Sequence[int] = BITS,
        layers: Sequence[int] = LAYERS, overrides: Sequence[str] = (),
        qat_epochs: int | None = None, quick: bool = False,
        progress: bool = True) -> dict[str, Any]:
    """``qat_epochs``: default 15 (``quick``: 1)."""
    out = Path(out)
    qat_epochs = qat_epochs or (1 if quick else 15)
    if quick:
        overrides = ["train.seeds=1", "train.epochs=2", "augment.copies=0", *overrides]
    inputs = num_features(load_config(CONFIG, list(overrides)).features)
    points, skipped, data = [], [], None
    for budget, width, depth in itertools.product(budgets, bits, layers):
        try:
            solution = solve_hidden_size(budget, depth, inputs, 10, Precision(width))  # 10: FSDD
        except ValueError as error:
            skipped.append(f"{budget} B, int{width}, {depth} layer(s): {error}")
            common.say(f"skip {skipped[-1]}")
            continue
        name, float_dir, qat_dir, float_config, qat_config = point_configs(
            out, budget, width, depth, overrides, qat_epochs)
        data = data or prepare_data(float_config, progress=progress)
        common.say(f"{name}: hidden {solution.hidden}, {solution.report.total:,} bytes")
        common.train_or_resume(float_config, float_dir, data, progress)
        common.train_or_resume(qat_config, qat_dir, data, progress)
        run_ = load_run(qat_dir)
        models = integer_models(run_)
        logits = predict_path(run_, data.test, "qat-integer", models)
        report = test_report(logits, data.test, run_.derived.seeds, run_.classes)
        counted = count_artifact_bytes(stored_arrays(models[0], width))
        points.append({
            "name": name, "budget": budget, "weight_bits": width, "layers": depth,
            "hidden": run_.derived.hidden, "bytes": counted,
            "budget_count": solution.report.total, "bytes_match": counted == solution.report.total,
            "test_accuracy": common.accuracy_summary(
                list(report["test_accuracy_per_seed"].values()))})
        common.say(f"{name}: integer {common.format_accuracy(points[-1]['test_accuracy'])}% "
                   f"at {counted:,} bytes")
    if not points:
        raise ValueError(f"no point of the sweep fits its budget: {'; '.join(skipped)}")
    result = {"experiment": "budget_sweep", "points": points, "skipped": skipped,
              "quick": quick, "overrides": list(overrides), "qat_epochs": qat_epochs,
              "environment": common.environment()}
    common.write_results(out, "budget_sweep", result, format_table(result))
    plot_pareto(points, out / "budget_sweep.png")
    return result


def pareto_front(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Points no other point beats on both fewer bytes and higher mean accuracy."""
    ordered = sorted(points, key=lambda p: (p["bytes"], -p["test_accuracy"]["mean"]))
    front, best = [], -1.0
    for p in ordered:
        if p["test_accuracy"]["mean"] > best:
            front.append(p)
            best = p["test_accuracy"]["mean"]
    return front


def format_table(result: dict[str, Any]) -> str:
    front = {p["name"] for p in pareto_front(result["points"])}
    rows = [[p["budget"], f"int{p['weight_bits']}", p["layers"], p["hidden"], f"{p['bytes']:,}",
             "yes" if p["bytes_match"] else "NO", common.format_accuracy(p["test_accuracy"]),
             "yes" if p["name"] in front else ""] for p in result["points"]]
    return ("# Integer-model accuracy against counted bytes\n\n"
            "QAT models converted to the integer path; random split; accuracy mean (min-max) "
            f"over seeds. Config lstmq/configs/task_b_qat.yaml with overrides "
            f"{result.get('overrides') or 'none'}; QAT fine-tune {result.get('qat_epochs')} "
            "epochs.\n\n" + common.markdown_table(
                ["budget B", "weights", "layers", "hidden", "counted B", "= budget count",
                 "integer test % (min-max)", "Pareto"], rows)
            + "".join(f"\nNot trained (no hidden size fits): {point}.\n"
                      for point in result.get("skipped", [])))


def plot_pareto(points: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = {(8, 1): "o", (8, 2): "s", (4, 1): "^", (4, 2): "D"}
    for key, marker in markers.items():
        group = [p for p in points if (p["weight_bits"], p["layers"]) == key]
        if not group:
            continue
        mean = np.array([p["test_accuracy"]["mean"] for p in group]) * 100
        err = [np.maximum(mean - np.array([p["test_accuracy"]["min"] for p in group]) * 100, 0),
               np.maximum(np.array([p["test_accuracy"]["max"] for p in group]) * 100 - mean, 0)]
        ax.errorbar([p["bytes"] for p in group], mean, yerr=err, fmt=marker, capsize=3,
                    label=f"int{key[0]}, {key[1]} layer(s)")
    front = pareto_front(points)
    ax.plot([p["bytes"] for p in front], [p["test_accuracy"]["mean"] * 100 for p in front],
            "k--", lw=1, label="Pareto front")
    ax.axvline(MARKED_BUDGET, color="red", lw=1, ls=":", label="36 KB budget")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("counted bytes of the integer model")
    ax.set_ylabel("test accuracy % (mean, min-max over seeds)")
    ax.legend(fontsize=8)
    common.save_figure(fig, path)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = common.script_parser(__doc__, "python -m experiments.budget_sweep", "runs/budget_sweep")
    parser.add_argument("--budgets", type=int, nargs="+",
                        help=f"byte budgets (default {' '.join(map(str, BUDGETS))}; --quick: "
                             "8192 36864)")
    parser.add_argument("--bits", type=int, nargs="+",
                        help=f"weight bits (default {' '.join(map(str, BITS))}; --quick: 8)")
    parser.add_argument("--layers", type=int, nargs="+",
                        help=f"LSTM layers (default {' '.join(map(str, LAYERS))}; --quick: 1)")
    parser.add_argument("--qat-epochs", type=int, help="QAT epochs (default 15; --quick: 1)")
    args = parser.parse_args(argv)
    common.setup_logging()
    quick = args.quick  # --quick fills only what is not given
    budgets = args.budgets or ([8192, 36864] if quick else list(BUDGETS))
    bits = args.bits or ([8] if quick else list(BITS))
    layers = args.layers or ([1] if quick else list(LAYERS))
    run(args.out, budgets, bits, layers, args.set, args.qat_epochs, quick, not args.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(common.guarded(main))
