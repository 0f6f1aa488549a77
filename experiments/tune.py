"""Compare config variants on VALIDATION accuracy only (the test split is never read here).

    python -m experiments.tune --config experiments/configs/task_b_qat.yaml \
        --variant base= --variant drop3=model.dropout=0.3 --out runs/tune [--set ...]

Each variant is a name and comma-separated overrides on top of the config. Reports, per
variant, the mean over seeds of the validation accuracy averaged over the last 5 epochs
(less optimistic than the best epoch) and of the best epoch. About 2-4 min per variant at
hidden 48, 3 seeds, 40 epochs on a 2-core CPU.

``--speaker-folds`` picks settings for voices never heard in training: each variant is
trained once per FSDD speaker s with s held out as test and the next speaker (cyclically)
held out as validation, and is scored by the validation speakers' mean accuracy. The test
speakers' accuracy is never read, so leave-one-speaker-out test numbers stay unbiased.

A variant's overrides may name ``{run:NAME}``: the folder variant NAME trained in the same
fold, e.g. a teacher to distil from (``--variant teacher=train.seeds=3 --variant
kd=train.distill_from={run:teacher}``); variants train in the order given.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np

from experiments import common
from lstmq.config import load_config
from lstmq.folds import dataset_speakers, nested_speaker_folds
from lstmq.io import atomic_write_json, read_json
from lstmq.runner import train_and_evaluate


def _validation_summary(histories: list[list[dict]]) -> dict:
    """Last-5-epoch mean validation accuracy per seed, averaged over folds, then over seeds
    (min and max are over seeds of the fold average); ``best``: the best epoch's."""
    val = np.asarray([[row["val_accuracy"] for row in h] for h in histories])  # [folds, epochs, seeds]
    last = val[:, -5:].mean(1).mean(0)
    return {"last5_mean": float(last.mean()), "last5_min": float(last.min()),
            "last5_max": float(last.max()), "best_mean": float(val.max(1).mean())}


def _fold_runs(overrides: list[str], out: Path, val_speaker: str) -> list[str]:
    """``{run:NAME}`` in an override: variant NAME's run folder of this fold."""
    def folder(match: re.Match) -> str:
        return str(out / match.group(1) / val_speaker)
    return [re.sub(r"\{run:([^}]+)\}", folder, item) for item in overrides]


def run(config_path: str | None, variants: dict[str, list[str]], out: str | Path,
        overrides: list[str] = (), progress: bool = False,
        speakers: list[str] | None = None) -> dict:
    out = Path(out)
    previous = out / "tune.json"
    results = read_json(previous) if previous.is_file() else {}  # earlier variants are kept
    folds = nested_speaker_folds(speakers) if speakers else [("", [])]
    for name, extra in variants.items():
        histories, per_speaker, seconds = [], {}, []
        for val_speaker, fold in folds:
            config = load_config(config_path, [*overrides, *fold,
                                               *_fold_runs(extra, out, val_speaker)])
            workdir = out / name / (config.data.val_speaker or "")
            result = train_and_evaluate(config, workdir, progress=progress)
            histories.append(result["history"])
            seconds.append(result["seconds_per_epoch"])
            if config.data.val_speaker:
                per_speaker[config.data.val_speaker] = \
                    _validation_summary(histories[-1:])["last5_mean"]
        results[name] = {"overrides": [*overrides, *extra], **_validation_summary(histories),
                         "seconds_per_epoch": float(np.mean(seconds))}
        if per_speaker:
            results[name]["val_speaker_last5"] = per_speaker
        row = results[name]
        print(f"{name:>16}: val last-5 {row['last5_mean'] * 100:.2f}% "
              f"[{row['last5_min'] * 100:.2f}, {row['last5_max'] * 100:.2f}], "
              f"best {row['best_mean'] * 100:.2f}%"
              + "".join(f", {k} {v * 100:.1f}" for k, v in row.get("val_speaker_last5", {}).items()),
              flush=True)
        atomic_write_json(out / "tune.json", results)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m experiments.tune",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--config")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=K=V,K=V")
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--out", required=True)
    parser.add_argument("--speaker-folds", nargs="*", metavar="SPEAKER",
                        help="nested speaker folds over these speakers (none given: all of "
                             "the data's)")
    args = parser.parse_args(argv)
    variants = {}
    for text in args.variant:
        name, _, rest = text.partition("=")
        variants[name] = [item for item in rest.split(",") if item]
    speakers = args.speaker_folds
    if speakers is not None and not speakers:
        speakers = dataset_speakers(load_config(args.config, args.set))
    run(args.config, variants, args.out, args.set, speakers=speakers)


if __name__ == "__main__":
    sys.exit(common.guarded(main))
