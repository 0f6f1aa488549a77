"""Compare config variants on VALIDATION accuracy only (the test split is never read here).

    python -m experiments.tune --config experiments/configs/task_b_qat.yaml \
        --variant base= --variant drop3=model.dropout=0.3 --out runs/tune [--set ...]

Each variant is a name and comma-separated overrides on top of the config. Reports, per
variant, the mean over seeds of the validation accuracy averaged over the last 5 epochs
(less optimistic than the best epoch) and of the best epoch. About 2-4 min per variant at
hidden 48, 3 seeds, 40 epochs on a 2-core CPU.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from lstmq.config import load_config
from lstmq.io import atomic_write_json
from lstmq.runner import train_and_evaluate


def _validation_summary(history: list[dict]) -> dict:
    val = np.asarray([row["val_accuracy"] for row in history])  # [epochs, seeds]
    last = val[-5:].mean(0)
    return {"last5_mean": float(last.mean()), "last5_min": float(last.min()),
            "last5_max": float(last.max()), "best_mean": float(val.max(0).mean())}


def run(config_path: str | None, variants: dict[str, list[str]], out: str | Path,
        overrides: list[str] = (), progress: bool = False) -> dict:
    out = Path(out)
    results = {}
    for name, extra in variants.items():
        config = load_config(config_path, list(overrides) + extra)
        result = train_and_evaluate(config, out / name, progress=progress)
        results[name] = {"overrides": extra, **_validation_summary(result["history"]),
                         "seconds_per_epoch": result["seconds_per_epoch"]}
        row = results[name]
        print(f"{name:>16}: val last-5 {row['last5_mean'] * 100:.2f}% "
              f"[{row['last5_min'] * 100:.2f}, {row['last5_max'] * 100:.2f}], "
              f"best {row['best_mean'] * 100:.2f}%", flush=True)
        atomic_write_json(out / "tune.json", results)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=K=V,K=V")
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    variants = {}
    for text in args.variant:
        name, _, rest = text.partition("=")
        variants[name] = [item for item in rest.split(",") if item]
    run(args.config, variants, args.out, args.set)


if __name__ == "__main__":
    main()
