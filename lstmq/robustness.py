"""Robustness suite: a run's test split under noise, babble and voice-like transformations.

| condition | what is done to every test clip |
|---|---|
| ``clean`` | nothing |
| ``white:SNR`` | white Gaussian noise at SNR dB (whole-clip power) |
| ``babble:SNR`` | the sum of ``talkers`` unit-RMS *training* clips of other speakers (distinct ones where there are enough), none of the clip's own class, each looped from a random offset to the clip's length, at SNR dB |
| ``pitch:SEMITONES`` | every frequency moved, duration kept (a stand-in for another voice) |
| ``speed:FACTOR`` | played FACTOR times faster, tempo and pitch together |

Every corrupted copy is deterministic in (seed, condition, clip), so two runs (configs) are
scored on identical audio; the audio is generated, never stored. Each condition's copies are
featurized with the run's own front end and statistics and scored along every requested
numerics path (``lstmq.paths``), per seed and per speaker.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lstmq import evaluate
from lstmq.augment import (add_at_snr, audible, babble_noise, babble_talkers, change_speed,
                           shift_pitch)
from lstmq.data import DataError, Dataset
from lstmq.io import atomic_write_json, atomic_write_text

KINDS = ("clean", "white", "babble", "pitch", "speed")
DEFAULT_CONDITIONS = ("clean", "white:20", "white:10", "white:5", "babble:20", "babble:10",
                      "babble:5", "pitch:-4", "pitch:4", "speed:0.85", "speed:1.15")
DEFAULT_TALKERS = 4


@dataclasses.dataclass(frozen=True)
class Condition:
    """One corruption: ``kind`` and its value (SNR dB, semitones or speed factor)."""

    kind: str
    value: float = 0.0

    @classmethod
    def parse(cls, text: str) -> Condition:
        """``clean``, ``white:10``, ``babble:5``, ``pitch:-4`` or ``speed:1.15``."""
        kind, _, value = text.strip().partition(":")
        if kind not in KINDS:
            raise ValueError(f"robustness condition {text!r}: the kind must be one of "
                             f"{', '.join(KINDS)}")
        if kind == "clean":
            if value:
                raise ValueError(f"robustness condition {text!r}: clean takes no value")
            return cls("clean")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"robustness condition {text!r}: {kind} needs a number after "
                             f"':' (e.g. {kind}:{'1.15' if kind == 'speed' else '10'})") from None
        if not np.isfinite(number):
            raise ValueError(f"robustness condition {text!r}: the value must be finite")
        if kind == "speed" and not 0.25 <= number <= 4:
            raise ValueError(f"robustness condition {text!r}: the speed factor must be in "
                             "[0.25, 4]")
        if kind == "pitch" and abs(number) > 12:
            raise ValueError(f"robustness condition {text!r}: at most 12 semitones either way")
        if kind in ("white", "babble") and not -30 <= number <= 80:
            raise ValueError(f"robustness condition {text!r}: the SNR must be in [-30, 80] dB")
        return cls(kind, number)

    @property
    def name(self) -> str:
        return "clean" if self.kind == "clean" else f"{self.kind}:{self.value:g}"

    @property
    def label(self) -> str:
        """For tables and plots: ``babble 10 dB``, ``pitch -4 st``, ``speed x1.15``."""
        if self.kind == "clean":
            return "clean"
        if self.kind == "speed":
            return f"speed x{self.value:g}"
        if self.kind == "pitch":
            return f"pitch {self.value:+g} st"
        return f"{self.kind} {self.value:g} dB"


def corrupt_clip(audio: np.ndarray, condition: Condition, sample_rate: int,
                 rng: np.random.Generator, talkers: Sequence[np.ndarray] = ()) -> np.ndarray:
    """One clip under ``condition`` (``talkers``: the babble's clips)."""
    audio = np.asarray(audio, np.float32)
    if condition.kind == "clean":
        return audio
    if condition.kind == "white":
        return add_at_snr(audio, rng.standard_normal(len(audio)), condition.value)
    if condition.kind == "babble":
        return add_at_snr(audio, babble_noise(talkers, len(audio), rng), condition.value)
    if condition.kind == "pitch":
        return shift_pitch(audio, sample_rate, condition.value)
    return np.clip(change_speed(audio, sample_rate, condition.value), -1, 1).astype(np.float32)


def corrupt_dataset(test: Dataset, condition: Condition, pool: Dataset, seed: int = 0,
                    talkers: int = DEFAULT_TALKERS) -> Dataset:
    """Every clip of ``test`` under ``condition``, with a fingerprint of its own (the babble
    comes from ``pool``, the training clips)."""
    if talkers < 1:
        raise ValueError(f"babble needs at least one talker, got {talkers}")
    if condition.kind == "clean":
        return test
    if pool.sample_rate != test.sample_rate:
        raise DataError(f"babble clips at {pool.sample_rate} Hz for test clips at "
                        f"{test.sample_rate} Hz")
    if condition.kind == "babble":
        pool = audible(pool)
    stream = zlib.crc32(condition.name.encode())
    audio = []
    for i, clip in enumerate(test.audio):
        rng = np.random.default_rng([seed, stream, i])
        voices = ()
        if condition.kind == "babble":
            chosen = babble_talkers(pool, str(test.speakers[i]), int(test.labels[i]), talkers, rng)
            voices = [pool.audio[j] for j in chosen]
        audio.append(corrupt_clip(clip, condition, test.sample_rate, rng, voices))
    spec = json.dumps({"parent": test.fingerprint, "condition": condition.name, "seed": seed,
                       "talkers": talkers if condition.kind == "babble" else None,
                       "pool": pool.fingerprint if condition.kind == "babble" else None},
                      sort_keys=True)
    return dataclasses.replace(test, audio=tuple(audio),
                               fingerprint=hashlib.sha256(spec.encode()).hexdigest(),
                               source=f"{test.source}, {condition.label}")


def _plan(runs: list[Any], paths: Sequence[str] | None) -> list[tuple[Any, str]]:
    """(run, path) pairs: each path once, from the run whose training mode it belongs to."""
    # pylint: disable=import-outside-toplevel
    from lstmq.paths import PathError, check_path, integer_path, trained_path

    if not paths:
        paths = [p for run in runs for p in (trained_path(run), integer_path(run))]
    plan = []
    for path in dict.fromkeys(paths):
        owners: list[Any] = []
        for run in runs:
            try:
                check_path(run, path)
                owners.append(run)
            except PathError as error:
                refusal = error
        if len(owners) > 1:
            raise ValueError(f"numerics path {path!r} belongs to {len(owners)} of the runs "
                             f"({', '.join(str(r.directory) for r in owners)}); give one")
        if not owners:
            raise refusal
        plan.append((owners[0], path))
    return plan


def with_vote_speeds(run: Any, speeds: Sequence[float]) -> Any:
    """``run`` scored with the speed votes ``speeds`` (checked like the config key)."""
    from lstmq.config_checks import check_config  # pylint: disable=import-outside-toplevel

    config = dataclasses.replace(run.config, features=dataclasses.replace(
        run.config.features, vote_speeds=tuple(float(v) for v in speeds)))
    check_config(config)
    return dataclasses.replace(run, config=config)


def robustness_report(directories: str | Path | Sequence[str | Path],
                      paths: Sequence[str] | None = None, conditions: Sequence[str] | None = None,
                      seed: int = 0, talkers: int = DEFAULT_TALKERS, progress: bool = True,
                      on: str = "test",
                      vote_speeds: Sequence[float] | None = None) -> dict[str, Any]:
    """Scores of one run, or of runs sharing their data and split (a float run and its QAT
    fine-tune), on the test split (``on="val"``: the validation split, for choosing settings)
    under every condition along ``paths`` (default: each run as trained and its integer
    model), per seed and per speaker; ``conditions`` default to ``DEFAULT_CONDITIONS``.
    ``vote_speeds`` scores with these speed votes instead of the runs' own
    ``features.vote_speeds`` (``[]``: none; training never reads them)."""
    # pylint: disable=import-outside-toplevel
    from lstmq.inference import run_dataset
    from lstmq.paths import INTEGER_PATHS, integer_models, predict_path
    from lstmq.pipeline import prepare_recordings
    from lstmq.runner import test_report
    from lstmq.runs import load_run
    from lstmq.splits import make_split

    if on not in ("test", "val"):
        raise ValueError(f"robustness is scored on the test or the val split, not {on!r}")
    if seed < 0:
        raise ValueError(f"the noise seed must be at least 0, got {seed}")
    parsed = list({c.name: c for c in map(Condition.parse, conditions or DEFAULT_CONDITIONS)
                   }.values())  # each condition once, in the order given
    single = isinstance(directories, (str, Path))
    runs = [load_run(d) for d in ([directories] if single else directories)]
    if not runs:
        raise ValueError("no run to score")
    if vote_speeds is not None:
        runs = [with_vote_speeds(run, vote_speeds) for run in runs]
    plan = _plan(runs, paths)
    dataset = run_dataset(runs[0])
    split = make_split(dataset, runs[0].config.data)
    for run in runs[1:]:
        if (run.data.get("fingerprint") != runs[0].data.get("fingerprint")
                or not np.array_equal(getattr(make_split(dataset, run.config.data), on),
                                      getattr(split, on))):
            raise ValueError(f"{run.directory} does not share the {on} split of "
                             f"{runs[0].directory}: robustness compares runs on the same clips")
    test, pool = dataset.subset(getattr(split, on)), dataset.subset(split.train)
    if len(test) == 0:
        raise ValueError(f"{runs[0].directory}: its {on} split holds no clip")
    models = {p: integer_models(run, p) for run, p in plan if p in INTEGER_PATHS}
    rows = []
    for condition in parsed:
        data = corrupt_dataset(test, condition, pool, seed, talkers)
        featurized: dict[str, Any] = {}  # runs with the same features and statistics share them
        for run, path in plan:
            key = json.dumps([dataclasses.asdict(run.config.features),
                              run.derived.normalizer.to_dict(), run.config.train.bucket_frames],
                             sort_keys=True, default=str)
            if key not in featurized:
                featurized[key] = prepare_recordings(data, run.config, run.derived.normalizer,
                                                     progress)
            arrays = featurized[key]
            report = test_report(predict_path(run, arrays, path, models.get(path)), arrays,
                                 run.derived.seeds, run.classes)
            rows.append({"condition": condition.name, "label": condition.label, "path": path,
                         "run": str(run.directory),
                         "accuracy": report["test_accuracy_summary"],
                         "per_seed": report["test_accuracy_per_seed"],
                         "per_speaker": report["per_speaker"]})
    return {"run": str(runs[0].directory) if single else [str(r.directory) for r in runs],
            "data": dataset.source, "split": runs[0].config.data.split, "scored": on,
            "test_count": int(len(test)), "seeds": list(runs[0].derived.seeds),
            "noise_seed": seed, "talkers": talkers, "paths": [p for _, p in plan],
            "vote_speeds": list(runs[0].config.features.vote_speeds),
            "conditions": [c.name for c in parsed], "rows": rows}


def _cell(summary: dict[str, float]) -> str:
    if summary["n"] == 1:
        return f"{summary['mean'] * 100:.2f}"
    return f"{summary['mean'] * 100:.2f} ({summary['min'] * 100:.2f}-{summary['max'] * 100:.2f})"


def _reads(vote_speeds: Sequence[float] | None) -> str:
    if vote_speeds is None:  # a report written before the speeds were recorded
        return "speed votes not recorded"
    if not vote_speeds:
        return "each clip read once"
    speeds = ", ".join(f"x{v:g}" for v in vote_speeds)
    return f"each clip read at its own speed and at {speeds}, the logits combined"


def format_markdown(report: dict[str, Any], per_speaker: bool = True) -> str:
    """Condition x path accuracies (mean and range over seeds), then (``per_speaker``) a
    table per path and speaker."""
    paths, rows = report["paths"], report["rows"]
    labels = {r["condition"]: r["label"] for r in rows}
    cell = {(r["condition"], r["path"]): r for r in rows}
    runs = report["run"] if isinstance(report["run"], str) else " and ".join(report["run"])
    lines = [f"Robustness of {runs} on {report['test_count']} {report.get('scored', 'test')} clips "
             f"({report['split']} split, {len(report['seeds'])} seed(s) "
             f"{', '.join(map(str, report['seeds']))}; noise seed {report['noise_seed']}, "
             f"babble of {report['talkers']} talkers; {_reads(report.get('vote_speeds'))}). "
             "Accuracy %, mean (min-max) over seeds.",
             "", "| condition | " + " | ".join(paths) + " |",
             "|:--|" + "--:|" * len(paths)]
    for name in report["conditions"]:
        lines.append(f"| {labels[name]} | "
                     + " | ".join(_cell(cell[name, p]["accuracy"]) for p in paths) + " |")
    speakers = sorted({s for r in rows for s in r["per_speaker"]})
    for path in paths if per_speaker else ():
        lines += ["", f"Per speaker, {path} (pooled over seeds), %:", "",
                  "| condition | " + " | ".join(s or "(unknown)" for s in speakers) + " |",
                  "|:--|" + "--:|" * len(speakers)]
        for name in report["conditions"]:
            per = cell[name, path]["per_speaker"]
            lines.append(f"| {labels[name]} | " + " | ".join(
                f"{per[s] * 100:.1f}" if s in per else "" for s in speakers) + " |")
    return "\n".join(lines) + "\n"


def plot_report(report: dict[str, Any], path: Path) -> None:
    """Accuracy per condition, one bar per numerics path, the seeds' range as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, paths = report["conditions"], report["paths"]
    cell = {(r["condition"], r["path"]): r for r in report["rows"]}
    labels = {r["condition"]: r["label"] for r in report["rows"]}
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(names)), 4.0))
    width = 0.8 / len(paths)
    for k, p in enumerate(paths):
        acc = np.array([[cell[n, p]["accuracy"][q] * 100 for q in ("mean", "min", "max")]
                        for n in names])
        x = np.arange(len(names)) + (k - (len(paths) - 1) / 2) * width
        ax.bar(x, acc[:, 0], width, label=p,
               yerr=[acc[:, 0] - acc[:, 1], acc[:, 2] - acc[:, 0]], capsize=2)
    ax.set_xticks(np.arange(len(names)), [labels[n] for n in names], rotation=30, ha="right")
    ax.set_ylabel(f"{report.get('scored', 'test')} accuracy %")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    runs = [report["run"]] if isinstance(report["run"], str) else report["run"]
    ax.set_title(f"{', '.join(Path(r).name for r in runs)}: {report['test_count']} "
                 f"{report.get('scored', 'test')} clips, "
                 f"{len(report['seeds'])} seed(s)")
    evaluate.save_figure(fig, path)
    plt.close(fig)


def write_report(report: dict[str, Any], out: str | Path) -> list[Path]:
    """robustness.json, .md and .png in ``out``, each written atomically."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "robustness.json", out / "robustness.md", out / "robustness.png"]
    atomic_write_json(files[0], report)
    atomic_write_text(files[1], format_markdown(report))
    plot_report(report, files[2])
    return files
