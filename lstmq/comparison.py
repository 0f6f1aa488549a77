"""Every numerics path side by side: float, PTQ (dynamic, static, integer), QAT, QAT-integer
and the float32 model within the same budget, with bytes, float-freeness and agreement.

Used by ``lstmq reproduce`` and ``experiments/ptq_vs_qat.py``; rows are plain dicts so a
study can add its own (Task A) before formatting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np

from lstmq.audit import FloatFoundError, audit_float_free
from lstmq.budget import Precision, count_artifact_bytes, model_bytes
from lstmq.artifact import stored_arrays
from lstmq.integer import predict_int, quantize_input
from lstmq.paths import INTEGER_PATHS, SIMULATED_BY, agreement, integer_models, predict_path
from lstmq.pipeline import SplitArrays
from lstmq.reports import accuracy_summary, format_accuracy, markdown_table, save_figure, say
from lstmq.runner import test_report
from lstmq.runs import Run, model_from_config

# Row label -> (run name in the study, numerics path).
METHODS = {
    "float": ("float_int8_budget", "float"),
    "PTQ-dynamic": ("float_int8_budget", "ptq-dynamic"),
    "PTQ-static": ("float_int8_budget", "ptq-static"),
    "PTQ-integer": ("float_int8_budget", "ptq-integer"),
    "QAT": ("qat", "qat"),
    "QAT-integer": ("qat", "qat-integer"),
    "float32 parity": ("float32_budget", "float"),
}
_LABEL = {path: label for label, (_, path) in METHODS.items() if label != "float32 parity"}


def counted_bytes(run: Run, weight_bits: int) -> int:
    """``lstmq.budget`` bytes of a run's model stored at ``weight_bits``."""
    return model_bytes(run.derived.hidden, run.config.model.layers, run.derived.input_size,
                       run.derived.num_classes, Precision(weight_bits),
                       run.config.budget.layout).total


def param_count(run: Run) -> int:
    """Scalars of one seed's parameter tree."""
    return int(sum(np.asarray(x[0]).size for x in jax.tree_util.tree_leaves(run.params)))


def compare_paths(split_name: str, runs: dict[str, Run], test: SplitArrays) -> list[dict[str, Any]]:
    """One row per method of ``METHODS`` on the test split: accuracy over seeds, bytes (as
    the budget counts them and as the converted arrays hold them), float-free, agreement of
    each integer path with its fake-quant simulation."""
    logits, models = {}, {}
    for label, (name, path) in METHODS.items():
        run = runs[name]
        if path in INTEGER_PATHS:
            models[label] = integer_models(run, path)
        logits[label] = predict_path(run, test, path, models.get(label))
    rows = []
    for label, (name, path) in METHODS.items():
        run = runs[name]
        bits = 32 if path == "float" else run.config.quant.weight_bits
        report = test_report(logits[label], test, run.derived.seeds, run.classes)
        row = {"split": split_name, "method": label, "path": path, "run": run.directory.name,
               "hidden": run.derived.hidden, "seeds": list(run.derived.seeds),
               "storage": Precision(bits).name, "bytes": counted_bytes(run, bits),
               "budget_bytes": run.config.budget.bytes, "float_free": path in INTEGER_PATHS,
               "test_accuracy": accuracy_summary(list(report["test_accuracy_per_seed"].values())),
               "test_accuracy_per_seed": report["test_accuracy_per_seed"],
               "test_count": report["test_count"], "params": param_count(run)}
        row["fits_budget"] = row["bytes"] <= row["budget_bytes"]
        if path in INTEGER_PATHS:
            counted = [count_artifact_bytes(stored_arrays(m, bits)) for m in models[label]]
            row["artifact_bytes"] = counted[0]
            row["artifact_bytes_match"] = all(c == row["bytes"] for c in counted)
            row["agreement_with"] = _LABEL[SIMULATED_BY[path]]
            row["agreement"] = agreement(logits[label], logits[row["agreement_with"]])
        rows.append(row)
        say(f"[{split_name}] {label:15s} hidden {row['hidden']:3d} {row['storage']:7s} "
            f"{row['bytes']:7,d} B  test {format_accuracy(row['test_accuracy'])} %"
            + (f"  agreement with {row['agreement_with']} {row['agreement'] * 100:.2f} %"
               if "agreement" in row else ""))
    return rows


def audit_paths(qat_run: Run, float_run: Run, test: SplitArrays) -> dict[str, Any]:
    """Float-free audit of the integer path (passes) and of the float/QAT applies (fail)."""
    model = integer_models(qat_run)[0]
    x = test.x[:4, :32]
    lengths = np.minimum(test.lengths[:4], 32).astype(np.int32)
    report = audit_float_free(predict_int, model, quantize_input(model, x), lengths)
    result = {"integer": {"function": "lstmq.integer.predict_int", "float_free": True,
                          "equations": report.num_equations, "dtypes": sorted(report.dtypes)}}
    for name, run in (("float", float_run), ("qat", qat_run)):
        module = model_from_config(run.config, run.derived, name)
        params = jax.tree_util.tree_map(lambda p: p[0], run.params)
        try:
            audit_float_free(lambda p, x_, l, m=module: m.apply({"params": p}, x_, l),
                             params, x, lengths)
            result[name] = {"function": f"{name} model.apply", "float_free": True}
        except FloatFoundError as error:
            result[name] = {"function": f"{name} model.apply", "float_free": False,
                            "violations": len(error.violations), "first": error.violations[0]}
    say(f"audit: predict_int float-free ({report.num_equations} equations, dtypes "
        f"{sorted(report.dtypes)}); float apply {result['float']['float_free']}, "
        f"QAT apply {result['qat']['float_free']}")
    return result


def format_rows(rows: list[dict[str, Any]]) -> str:
    """The comparison as a markdown table."""
    header = ["split", "method", "hidden", "storage", "bytes", "within budget", "float-free",
              "test accuracy % mean (min-max)", "seeds", "agreement %"]

    def stored(r):  # a mismatch between the accounting and the converted arrays shows
        match = r.get("artifact_bytes_match", True)
        return f"{r['bytes']:,}" + ("" if match else f" (artifact {r['artifact_bytes']:,})")

    return markdown_table(header, [
        [r["split"], r["method"], r["hidden"], r["storage"], stored(r),
         "yes" if r["fits_budget"] else "no", "yes" if r["float_free"] else "no",
         format_accuracy(r["test_accuracy"]), r["test_accuracy"]["n"],
         f"{r['agreement'] * 100:.2f} vs {r['agreement_with']}" if "agreement" in r else "-"]
        for r in rows])


def format_audit(audit: dict[str, Any]) -> str:
    integer = audit["integer"]
    return (f"Float-free audit (`lstmq.audit.audit_float_free`): integer `predict_int` "
            f"{'passes' if integer['float_free'] else 'FAILS'} ({integer['equations']} "
            f"equations, dtypes {', '.join(integer['dtypes'])}); "
            + "; ".join(f"{audit[k]['function']} {'passes' if audit[k]['float_free'] else 'fails'}"
                        + (f" ({audit[k]['violations']} float values)"
                           if not audit[k]["float_free"] else "") for k in ("float", "qat"))
            + ".")


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
    save_figure(fig, path)
    plt.close(fig)
