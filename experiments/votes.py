"""Validation accuracy of a tuning variant's runs read once and with votes.

    python -m experiments.votes runs/tune/robust --speed 0.9 --speed 1.1 --tempo 0.9 --tempo 1.1

Reads each fold's run of a variant trained by ``experiments.tune`` (train with
``train.select=last``, so that no validation clip chose the parameters) and scores the run's
validation clips (in speaker folds: the validation speaker's) along the path it was trained
on: once; with speed votes (each clip also played at every ``--speed``, the integer
resampling of ``lstmq.speed`` that the device runs); with tempo votes (each clip also
stretched in time by every ``--tempo``, pitch and formants kept: ``lstmq.augment.stretch_tempo``,
a probe with no integer path); and with both. The votes' logits are summed, as the device
adds them. Writes ``votes.json`` beside the runs. The test split is never read.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from experiments import common
from experiments.ensemble import fold_runs
from lstmq.augment import stretch_tempo
from lstmq.inference import run_dataset
from lstmq.io import atomic_write_json
from lstmq.paths import predict_path
from lstmq.pipeline import prepare_recordings
from lstmq.robustness import with_vote_speeds
from lstmq.runs import load_run
from lstmq.speed import vote_datasets
from lstmq.splits import make_split


def stretched(dataset, rate: float):
    """``dataset`` with every clip spoken ``rate`` times faster, pitch kept."""
    audio = tuple(stretch_tempo(clip, dataset.sample_rate, rate) for clip in dataset.audio)
    return dataclasses.replace(
        dataset, audio=audio, fingerprint=f"{dataset.fingerprint}:tempo:{rate!r}",
        source=f"{dataset.source}, stretched x{rate:g}")


def read_sets(speeds: Sequence[float], tempos: Sequence[float]) -> dict[str, list[str]]:
    """The reads each scored set sums: once, with the speed votes, the tempo votes, both."""
    once = ["once"]
    speed_reads = [f"speed {s:g}" for s in speeds]
    tempo_reads = [f"tempo {t:g}" for t in tempos]
    sets = {"once": once}
    if speed_reads:
        sets["speed votes"] = once + speed_reads
    if tempo_reads:
        sets["tempo votes"] = once + tempo_reads
    if speed_reads and tempo_reads:
        sets["speed and tempo votes"] = once + speed_reads + tempo_reads
    return sets


def accuracy_of_sums(logits: dict[str, np.ndarray], labels: np.ndarray,
                     sets: dict[str, list[str]]) -> dict[str, list[float]]:
    """Per-seed accuracy of each set's summed logits ``<seeds, n, classes>``."""
    return {name: (np.sum([logits[read] for read in reads], axis=0).argmax(-1) == labels
                   ).mean(-1).tolist() for name, reads in sets.items()}


def score_run(folder: Path, speeds: Sequence[float], tempos: Sequence[float]) -> dict:
    trained = with_vote_speeds(load_run(folder), ())  # each read scored alone, summed here
    dataset = run_dataset(trained)
    val = dataset.subset(make_split(dataset, trained.config.data).val)
    if len(val) == 0:
        raise ValueError(f"{folder}: its validation split holds no clip")
    reads = {"once": val}
    reads.update(zip((f"speed {s:g}" for s in speeds), vote_datasets(val, speeds)))
    reads.update((f"tempo {t:g}", stretched(val, t)) for t in tempos)
    logits, labels = {}, None
    for name, data in reads.items():
        arrays = prepare_recordings(data, trained.config, trained.derived.normalizer,
                                    progress=False)
        logits[name] = np.asarray(predict_path(trained, arrays), np.float64)
        labels = arrays.labels
    return accuracy_of_sums(logits, labels, read_sets(speeds, tempos))


def run(variant: str | Path, speeds: Sequence[float] = (0.9, 1.1),
        tempos: Sequence[float] = ()) -> dict:
    variant = Path(variant)
    folds = {}
    for folder in fold_runs(variant):
        folds[folder.name] = score_run(folder, speeds, tempos)
        print(f"{folder.name:>10}: " + ", ".join(
            f"{name} {np.mean(values) * 100:.2f}%" for name, values in folds[folder.name].items()),
            flush=True)
    means = {name: float(np.mean([np.mean(fold[name]) for fold in folds.values()]))
             for name in read_sets(speeds, tempos)}
    print(f"mean over {len(folds)} fold(s): "
          + ", ".join(f"{name} {value * 100:.2f}%" for name, value in means.items()))
    result = {"speeds": list(speeds), "tempos": list(tempos), "folds": folds, "means": means}
    atomic_write_json(variant / "votes.json", result)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m experiments.votes",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("variant", help="a variant folder written by experiments.tune")
    parser.add_argument("--speed", type=float, action="append", default=None,
                        help="a speed vote (repeat; default 0.9 and 1.1)")
    parser.add_argument("--tempo", type=float, action="append", default=[],
                        help="a tempo vote, pitch kept (repeat; default none)")
    args = parser.parse_args(argv)
    run(args.variant, args.speed if args.speed is not None else (0.9, 1.1), args.tempo)


if __name__ == "__main__":
    sys.exit(common.guarded(main))
