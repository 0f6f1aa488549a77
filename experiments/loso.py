"""Leave-one-speaker-out: float, QAT and integer 36 KB models on a voice never heard in training.

    python -m experiments.loso --out runs/loso [--quick] [--speakers george theo] [--set ...]

For each FSDD speaker: train the float model at the int8-budget hidden size on the other
speakers (validation carved from their clips), fine-tune it quantization-aware
(``--qat-epochs``, each seed from its float seed), convert to the integer model, and test
all three on the held-out speaker. Reports per-speaker and 6-speaker mean accuracy (mean,
min, max over seeds). Full run (6 speakers, 3 seeds, 40 + 15 epochs): roughly 40-60 min on
a 2-core CPU; ``--quick`` (1 speaker, 1 seed, 2 + 1 epochs) about 2 min.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from experiments import common
from lstmq.config import load_config
from lstmq.integer import convert_run, predict_int_split
from lstmq.pipeline import prepare_data
from lstmq.runner import load_run, predict_run, test_report

CONFIG = common.CONFIG_DIR / "task_b_qat.yaml"
SPEAKERS = ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")
PATHS = ("float", "QAT", "integer")


def fold_configs(speaker: str, overrides: Sequence[str], qat_overrides: Sequence[str],
                 float_dir: Path):
    """Float and QAT configs of one held-out speaker."""
    base = ["data.split=speaker", f"data.test_speaker={speaker}", *overrides]
    float_config = load_config(CONFIG, [*base, "quant.mode=float"])
    qat_config = load_config(CONFIG, [*base, "quant.mode=qat", f"quant.init_from={float_dir}",
                                      "train.warmup_epochs=0", *qat_overrides])
    return float_config, qat_config


def run(out: str | Path, speakers: Sequence[str] = SPEAKERS, seeds: int | None = None,
        epochs: int | None = None, qat_epochs: int = 15, overrides: Sequence[str] = (),
        quick: bool = False, progress: bool = True) -> dict[str, Any]:
    out = Path(out)
    if quick:
        seeds, epochs, qat_epochs = seeds or 1, epochs or 2, 1
    common_overrides = [*([f"train.seeds={seeds}"] if seeds else []),
                        *([f"train.epochs={epochs}"] if epochs else []), *overrides]
    qat_overrides = [f"train.epochs={qat_epochs}"]
    rows = []
    for speaker in speakers:
        float_dir = out / "runs" / speaker / "float"
        float_config, qat_config = fold_configs(speaker, common_overrides, qat_overrides,
                                                float_dir)
        data = prepare_data(float_config, progress=progress)
        common.say(f"[{speaker}] {len(data.train)} train / {len(data.val)} val / "
                   f"{len(data.test)} test clips")
        common.train_or_resume(float_config, float_dir, data, progress)
        qat_dir = out / "runs" / speaker / "qat"
        common.train_or_resume(qat_config, qat_dir, data, progress)
        float_run, qat_run = load_run(float_dir), load_run(qat_dir)
        logits = {"float": predict_run(float_run, data.test), "QAT": predict_run(qat_run, data.test),
                  "integer": predict_int_split(convert_run(qat_run), data.test)}
        row = {"speaker": speaker, "hidden": qat_run.derived.hidden,
               "seeds": list(qat_run.derived.seeds), "test_count": len(data.test)}
        for path in PATHS:
            report = test_report(logits[path], data.test, qat_run.derived.seeds)
            row[path] = common.accuracy_summary(list(report["test_accuracy_per_seed"].values()))
        row["integer_qat_agreement"] = float(np.mean(
            np.argmax(logits["integer"], -1) == np.argmax(logits["QAT"], -1)))
        rows.append(row)
        common.say(f"[{speaker}] " + ", ".join(
            f"{p} {common.format_accuracy(row[p])}%" for p in PATHS))
    means = {path: common.accuracy_summary(
        np.mean([r[path]["values"] for r in rows], axis=0).tolist()) for path in PATHS}
    result = {"experiment": "loso", "speakers": list(speakers), "rows": rows,
              "mean_over_speakers": means,
              "settings": {"config": "experiments/configs/task_b_qat.yaml",
                           "overrides": list(overrides), "seeds": seeds, "epochs": epochs,
                           "qat_epochs": qat_epochs, "quick": quick},
              "environment": common.environment()}
    common.write_results(out, "loso", result, format_table(result))
    return result


def format_table(result: dict[str, Any]) -> str:
    headers = ["held-out speaker", "hidden", *[f"{p} % (min-max)" for p in PATHS],
               "integer = QAT"]
    rows = [[r["speaker"], r["hidden"], *[common.format_accuracy(r[p]) for p in PATHS],
             f"{r['integer_qat_agreement'] * 100:.2f}%"] for r in result["rows"]]
    rows.append([f"mean of {len(result['rows'])}", "",
                 *[common.format_accuracy(result["mean_over_speakers"][p]) for p in PATHS], ""])
    settings = result["settings"]
    return ("# Leave-one-speaker-out\n\n"
            f"Config {settings['config']} with overrides {settings['overrides'] or 'none'}; "
            f"accuracy mean (min-max) over seeds; the last row averages speakers per seed.\n\n"
            + common.markdown_table(headers, rows))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common_arguments(parser, "runs/loso")
    parser.add_argument("--speakers", nargs="+", default=list(SPEAKERS))
    parser.add_argument("--seeds", type=int)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--qat-epochs", type=int, default=15)
    args = parser.parse_args(argv)
    common.setup_logging()
    speakers = args.speakers[:1] if args.quick else args.speakers
    result = run(args.out, speakers, args.seeds, args.epochs, args.qat_epochs, args.set,
                 args.quick, not args.quiet)
    print(format_table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
