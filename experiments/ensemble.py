"""Validation accuracy of seeds alone and of ensembles of seeds, for a tuning variant's runs.

    python -m experiments.ensemble runs/tune/h34 --members 3

Reads each fold's run of a variant trained by ``experiments.tune`` (a folder per validation
speaker, or the variant folder itself), scores its kept parameters on that fold's validation
clips along the path it was trained on, and compares the seeds alone with consecutive groups of
``--members`` seeds whose softmax probabilities are averaged: would an ensemble of smaller
models fit the same byte budget better than one larger model? Train the variant with
``train.select=last`` so that no validation clip chose the parameters. Writes
``ensemble.json`` beside the runs. The test split is never read.

``--conditions`` scores a run of ``experiments.robustness`` instead (``<out>/runs/qat``, as
trained) on its validation clips under the robustness suite's noise, babble and voice
changes: ``python -m experiments.ensemble runs/rb/runs/qat --members 3 --conditions``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import scipy.special

from experiments import common
from lstmq.inference import run_dataset
from lstmq.io import atomic_write_json
from lstmq.paths import predict_path
from lstmq.pipeline import prepare_data, prepare_recordings
from lstmq.robustness import DEFAULT_CONDITIONS, Condition, corrupt_dataset
from lstmq.runs import load_run
from lstmq.splits import make_split


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities over the last axis, in float64."""
    return scipy.special.softmax(np.asarray(logits, np.float64), axis=-1)


def seed_and_ensemble_accuracy(probabilities: np.ndarray, labels: np.ndarray,
                               members: int) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy of each seed ``<seeds>`` and of each group of ``members`` consecutive seeds
    ``<seeds // members>`` (mean probabilities; a last incomplete group is left out)."""
    if members < 1 or members > len(probabilities):
        raise ValueError(f"members {members}: needs 1 to {len(probabilities)} (the seeds)")
    single = (probabilities.argmax(-1) == labels).mean(-1)
    groups = len(probabilities) // members
    mean = probabilities[:groups * members].reshape(groups, members, *probabilities.shape[1:])
    return single, (mean.mean(1).argmax(-1) == labels).mean(-1)


def fold_runs(variant: Path) -> list[Path]:
    """The variant's run folders: itself, or one per fold below it."""
    if (variant / "run.json").is_file():
        return [variant]
    runs = sorted(path for path in variant.iterdir() if (path / "params.msgpack").is_file())
    if not runs:
        raise FileNotFoundError(f"{variant}: no finished run (no params.msgpack in it or below)")
    return runs


def _scores(trained, arrays, members: int) -> dict:
    """Seeds alone and ensembles of ``members`` on prepared clips, along the run's path."""
    single, ensemble = seed_and_ensemble_accuracy(softmax(predict_path(trained, arrays)),
                                                  arrays.labels, members)
    return {"seeds": single.tolist(), "ensembles": ensemble.tolist()}


def _training_validation(trained):
    """The validation clips exactly as training scored them (no augmented copies needed)."""
    config = trained.config
    config = dataclasses.replace(config, augment=dataclasses.replace(config.augment, copies=0))
    return prepare_data(config, progress=False).val


def _say(name: str, scores: dict, members: int) -> None:
    print(f"{name:>10}: seeds {np.mean(scores['seeds']) * 100:.2f}% "
          f"({', '.join(f'{value * 100:.1f}' for value in scores['seeds'])}), ensembles of "
          f"{members} {np.mean(scores['ensembles']) * 100:.2f}%", flush=True)


def run(variant: str | Path, members: int) -> dict:
    variant = Path(variant)
    folds = {}
    for folder in fold_runs(variant):
        trained = load_run(folder)
        folds[folder.name] = _scores(trained, _training_validation(trained), members)
        _say(folder.name, folds[folder.name], members)
    result = {"members": members, "folds": folds,
              "seeds_mean": float(np.mean([np.mean(f["seeds"]) for f in folds.values()])),
              "ensembles_mean": float(np.mean([np.mean(f["ensembles"]) for f in folds.values()]))}
    print(f"mean over {len(folds)} fold(s): seeds {result['seeds_mean'] * 100:.2f}%, "
          f"ensembles of {members} {result['ensembles_mean'] * 100:.2f}%")
    atomic_write_json(variant / "ensemble.json", result)
    return result


def run_conditions(folder: str | Path, members: int,
                   conditions: tuple[str, ...] = DEFAULT_CONDITIONS) -> dict:
    """A run's validation clips under each robustness condition, seeds alone and ensembles."""
    trained = load_run(folder)
    dataset = run_dataset(trained)
    split = make_split(dataset, trained.config.data)
    val, pool = dataset.subset(split.val), dataset.subset(split.train)
    rows = {}
    for condition in map(Condition.parse, conditions):  # noise seed 0, as robustness --on val
        arrays = prepare_recordings(corrupt_dataset(val, condition, pool), trained.config,
                                    trained.derived.normalizer, progress=False)
        rows[condition.name] = _scores(trained, arrays, members)
        _say(condition.name, rows[condition.name], members)
    result = {"members": members, "run": str(folder), "conditions": rows}
    atomic_write_json(Path(folder) / "ensemble_conditions.json", result)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m experiments.ensemble",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("variant", help="a variant folder written by experiments.tune "
                        "(with --conditions: a run)")
    parser.add_argument("--members", type=int, default=2, help="seeds per ensemble")
    parser.add_argument("--conditions", action="store_true",
                        help="VARIANT is a robustness run: score its validation clips under "
                             "the robustness conditions")
    args = parser.parse_args(argv)
    if args.conditions:
        run_conditions(args.variant, args.members)
    else:
        run(args.variant, args.members)


if __name__ == "__main__":
    sys.exit(common.guarded(main))
