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

from experiments import common
from lstmq import comparison
from lstmq.budget import Precision, hidden_from_config, model_bytes
from lstmq.config import Config
from lstmq.pipeline import prepare_data
from lstmq.recipes import ptq_qat_configs
from lstmq.runs import load_run

SPLITS = ("random", "official")


def build_configs(split: str, seeds: int | None, epochs: int | None,
                  overrides: Sequence[str] = (), float_dir: Path | None = None,
                  qat_epochs: int = 15, weight_bits: int = 8) -> dict[str, Config]:
    """The three trainings of one split (``lstmq.recipes.ptq_qat_configs``), with seeds and
    epochs set for every run; the QAT run fine-tunes the float run in ``float_dir``."""
    settings = [*([f"train.seeds={seeds}"] if seeds is not None else []),
                *([f"train.epochs={epochs}"] if epochs is not None else []), *overrides]
    return ptq_qat_configs(split, settings, float_dir, qat_epochs, weight_bits)


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
            budget = _describe_budget(configs, data.input_size, len(data.classes))
        common.say(f"split {split}: {len(data.train)} train / {len(data.val)} val / "
                   f"{len(data.test)} test clips")
        runs = {}
        for name, config in configs.items():
            hidden = hidden_from_config(config.model, config.budget, config.quant.weight_bits,
                                        data.input_size, len(data.classes))
            common.say(f"[{split}] {name}: hidden {hidden}, quant {config.quant.mode}, "
                       f"{config.train.seeds} seed(s) x {config.train.epochs} epochs")
            workdir = out / "runs" / split / name
            metrics = common.train_or_resume(config, workdir, data, progress)
            runs[name] = load_run(workdir)
            trainings.append({
                "split": split, "run": name, "dir": f"runs/{split}/{name}", "hidden": hidden,
                "quant": config.quant.mode, "seeds": metrics["derived"]["seeds"],
                "epochs": metrics["epochs"], "selected_epoch": metrics["selected_epoch"],
                "val_accuracy": metrics["val_accuracy"],
                "train_seconds": metrics["train_seconds"],
                "seconds_per_epoch": metrics["seconds_per_epoch"]})
        rows += comparison.compare_paths(split, runs, data.test)
        if not audit:
            audit = comparison.audit_paths(runs["qat"], runs["float_int8_budget"], data.test)
    environment["load_average_end"] = common.load_average()
    result = {
        "experiment": "ptq_vs_qat",
        "settings": {"seeds": seeds, "epochs": epochs, "splits": list(splits),
                     "overrides": list(overrides), "quick": quick,
                     "configs": {"int8": "lstmq/configs/task_b_qat.yaml",
                                 "float32": "lstmq/configs/task_b_float.yaml"}},
        "budget": budget,
        "rows": rows,
        "trainings": trainings,
        "audit": audit,
        "environment": environment,
    }
    common.write_results(out, "ptq_vs_qat", result, format_table(result))
    comparison.plot_accuracy(rows, out / "ptq_vs_qat.png")
    common.say(f"wrote {out / 'ptq_vs_qat.md'} and {out / 'ptq_vs_qat.png'}")
    return result


def _describe_budget(configs: dict[str, Config], input_size: int,
                     num_classes: int) -> dict[str, Any]:
    described = {}
    for key, name in (("int8", "qat"), ("float32", "float32_budget")):
        config = configs[name]
        bits = config.quant.weight_bits
        hidden = hidden_from_config(config.model, config.budget, bits, input_size, num_classes)
        report = model_bytes(hidden, config.model.layers, input_size, num_classes,
                             Precision(bits), config.budget.layout)
        described[key] = {"hidden": hidden, "bytes": report.total, "params": report.params,
                          "budget_bytes": config.budget.bytes, "weight_bits": bits,
                          "policy": config.budget.policy,
                          "solved": config.model.hidden == "auto"}
        common.say(f"budget {config.budget.bytes:,} bytes, {report.precision.name} storage "
                   f"({config.budget.policy} policy): hidden {hidden} uses {report.total:,} bytes")
    return described


def format_table(result: dict[str, Any]) -> str:
    budget = result["budget"]
    s, env, audit = result["settings"], result["environment"], result["audit"]
    int8, f32 = budget["int8"], budget["float32"]
    solved = int8.get("solved", True) and f32.get("solved", True)
    sizes = (f"Hidden size solved by `lstmq.budget` for {int8['budget_bytes']:,} bytes: "
             if solved else "Hidden size set by the overrides (model.hidden), not solved for "
             f"the {int8['budget_bytes']:,}-byte budget: ")
    lines = [
        "# PTQ vs QAT under a 36,864-byte budget", "",
        f"{sizes}**{int8['hidden']}** at int8 storage ({int8['bytes']:,} bytes), "
        f"{f32['hidden']} at float32 storage ({f32['bytes']:,} bytes; the float32 parity row). Bytes per row: "
        "float32 for float rows, the int8 integer model for quantized rows; for integer rows "
        "also counted from the converted arrays (must match).", "",
        f"Seeds trained together per run: {s['seeds'] or 'config default'}; epochs: "
        f"{s['epochs'] or 'config default'}; overrides: `{' '.join(s['overrides']) or '-'}`. "
        "Models selected on validation; the test split is only used here.", "",
        comparison.format_rows(result["rows"]), "",
        "Agreement: fraction of (seed, clip) test predictions the integer model shares with "
        "its fake-quant simulation.", "",
        comparison.format_audit(audit), "",
        "Trainings (seeds trained together; `train s` includes the first epoch's compilation, "
        "`s / epoch` is the median of the later epochs):",
        "",
        common.markdown_table(
            ["split", "run", "hidden", "quant", "seeds", "epochs", "train s", "s / epoch",
             "selected epoch per seed", "val accuracy % per seed"],
            [[t["split"], t["run"], t["hidden"], t["quant"], len(t["seeds"]), t["epochs"],
              f"{t['train_seconds']:.0f}", f"{t['seconds_per_epoch']:.1f}",
              " ".join(map(str, t["selected_epoch"])),
              " ".join("-" if v is None else f"{v * 100:.1f}" for v in t["val_accuracy"])]
             for t in result["trainings"]]), "",
        f"Measured on {env['cpu']} ({env['cores']} cores), load average {env['load_average']} "
        f"at start, {env.get('load_average_end')} at end. {common.SHARED_MACHINE_NOTE}",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = common.script_parser(__doc__, "python -m experiments.ptq_vs_qat", "runs/ptq_vs_qat")
    parser.add_argument("--seeds", type=int, help="seeds per run (default: configs', 3)")
    parser.add_argument("--epochs", type=int, help="epochs per run (default: configs', 40)")
    parser.add_argument("--bits", type=int, choices=(8, 4), default=8,
                        help="weight storage of the quantized rows (the budget solves for it)")
    parser.add_argument("--splits", nargs="+", choices=("random", "official", "speaker"),
                        default=list(SPLITS),
                        help="data splits to compare (speaker also needs --set "
                             "data.test_speaker=NAME)")
    args = parser.parse_args(argv)
    common.setup_logging()
    run(args.out, args.seeds, args.epochs, args.splits, args.set, args.quick,
        progress=not args.quiet, weight_bits=args.bits)
    return 0


if __name__ == "__main__":
    sys.exit(common.guarded(main))
