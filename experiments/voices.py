"""How accuracy on a new voice grows with the number of voices trained on (a learning curve).

    python -m experiments.voices --config task_b_robust --counts 2 3 4 5 --out runs/voices \
        [--set quant.mode=float --set train.epochs=20 --set train.seeds=1]

For each speaker s of the data and each count k, a model is trained on the clips of the k
speakers that follow s (in sorted order, cyclically; ``--skip j``: those after the first j
that follow s, another set of voices per count) and tested on every clip of s; k = all
other speakers is leave-one-speaker-out. Babble copies (``augment.babble_*``) are made of
other training voices, so a config with them needs k >= 2. The last epoch's parameters are kept
(``train.select=last``), so the test voice chooses nothing. Reports, per k, the mean over
held-out speakers of each seed's accuracy (mean and min-max over seeds) and per speaker,
with a plot, and a power law ``error = a * k^-b`` fitted to the mean error of the counts
>= 2, solved for the count it would need to reach ``--target`` (an extrapolation, said so).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from experiments import common
from lstmq.config import load_config
from lstmq.data import load_dataset
from lstmq.pipeline import prepare_data
from lstmq.splits import speakers_of


def training_voices(speakers: Sequence[str], held_out: str, count: int,
                    skip: int = 0) -> list[str]:
    """The ``count`` speakers after ``held_out`` in ``speakers``' order, cyclically, leaving out
    the ``skip`` that follow it first."""
    speakers = list(speakers)
    if held_out not in speakers:
        raise ValueError(f"{held_out!r} is not one of the speakers {speakers}")
    if not 1 <= count < len(speakers):
        raise ValueError(f"a count of training voices must be in 1..{len(speakers) - 1} "
                         f"(the data has {len(speakers)} speakers), got {count}")
    most = len(speakers) - 1 - count
    if not 0 <= skip <= most:
        raise ValueError(f"cannot skip {skip} speaker(s) before {count} training voice(s) of "
                         f"{len(speakers)} speakers: skip must be in 0..{most}")
    start = speakers.index(held_out) + skip
    return [speakers[(start + step) % len(speakers)] for step in range(1, count + 1)]


def power_law(counts: Sequence[int], errors: Sequence[float]) -> tuple[float, float]:
    """Least squares of ``log error = log a - b log k``: returns (a, b)."""
    slope, intercept = np.polyfit(np.log(np.asarray(counts, float)),
                                  np.log(np.asarray(errors, float)), 1)
    return float(math.exp(intercept)), float(-slope)


def voices_needed(a: float, b: float, target_accuracy: float) -> float | None:
    """The count ``k`` at which ``a * k^-b`` falls to ``1 - target_accuracy`` (None when the
    fitted error does not fall)."""
    if b <= 0:
        return None
    return float((a / (1.0 - target_accuracy)) ** (1.0 / b))


def run(out: str | Path, config_name: str, counts: Sequence[int],
        overrides: Sequence[str] = (), speakers: Sequence[str] | None = None,
        target: float = 0.95, progress: bool = True,
        max_held_out: int | None = None, skip: int = 0) -> dict[str, Any]:
    """``max_held_out``: hold out only the first that many speakers (``--quick``)."""
    out = Path(out)
    base = load_config(config_name, [*overrides, "train.select=last"])
    dataset = load_dataset(base.data)
    every = speakers_of(dataset)
    held_out_speakers = list(speakers or every)[:max_held_out]
    rows = []
    for count in counts:
        folder = f"{count}-skip{skip}" if skip else f"{count}"  # each set of voices its own runs
        per_speaker = {}
        for held_out in held_out_speakers:
            voices = training_voices(every, held_out, count, skip)
            keep = np.isin(dataset.speakers, [held_out, *voices])
            config = load_config(config_name, [*overrides, "train.select=last",
                                               "data.split=speaker",
                                               f"data.test_speaker={held_out}"])
            data = prepare_data(config, progress=progress, dataset=dataset.subset(keep))
            common.say(f"[{held_out}, {count} voice(s): {', '.join(voices)}] "
                       f"{len(data.train)} train / {len(data.test)} test clips")
            metrics = common.train_or_resume(config, out / "runs" / folder / held_out, data,
                                             progress)
            per_speaker[held_out] = {"voices": voices,
                                     **common.accuracy_summary(
                                         list(metrics["test_accuracy_per_seed"].values()))}
        seed_means = np.mean([r["values"] for r in per_speaker.values()], axis=0)
        rows.append({"count": count, "per_speaker": per_speaker,
                     "mean": common.accuracy_summary(seed_means.tolist())})
        common.say(f"{count} voice(s): {common.format_accuracy(rows[-1]['mean'])}%")
    fit_rows = [r for r in rows if r["count"] >= 2]
    fit = None
    if len(fit_rows) >= 2:
        a, b = power_law([r["count"] for r in fit_rows],
                         [1.0 - r["mean"]["mean"] for r in fit_rows])
        fit = {"a": a, "b": b, "target": target, "voices_needed": voices_needed(a, b, target)}
    result = {"experiment": "voices", "rows": rows, "speakers": held_out_speakers, "fit": fit,
              "settings": {"config": config_name, "overrides": list(overrides),
                           "counts": list(counts), "skip": skip},
              "environment": common.environment()}
    common.write_results(out, "voices", result, format_table(result))
    _plot(result, out / "voices.png")
    return result


def format_table(result: dict[str, Any]) -> str:
    speakers = result["speakers"]
    headers = ["training voices", "mean % (min-max over seeds)", *speakers]
    rows = [[r["count"], common.format_accuracy(r["mean"]),
             *[f"{r['per_speaker'][s]['mean'] * 100:.1f}" for s in speakers]]
            for r in result["rows"]]
    settings = result["settings"]
    text = ("# Accuracy on a new voice against the number of training voices\n\n"
            f"Config {settings['config']} with overrides {settings['overrides'] or 'none'}, "
            + (f"training voices after the first {settings['skip']} that follow the held-out "
               "one, " if settings.get("skip") else "")
            + "last epoch kept; a speaker column is that voice held out (mean over seeds).\n\n"
            + common.markdown_table(headers, rows))
    fit = result.get("fit")
    if fit:
        needed = fit["voices_needed"]
        text += (f"\n\nPower law fitted to the mean error at 2 or more voices: error = "
                 f"{fit['a']:.3f} * k^-{fit['b']:.3f}; "
                 + (f"{fit['target'] * 100:g}% would need about {needed:.0f} voices "
                    "(an extrapolation beyond the measured counts)." if needed else
                    "the error does not fall with more voices."))
    return text + "\n"


def _plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

    counts = [r["count"] for r in result["rows"]]
    figure, axis = plt.subplots(figsize=(5, 3.5))
    for speaker in result["speakers"]:
        axis.plot(counts, [r["per_speaker"][speaker]["mean"] * 100 for r in result["rows"]],
                  marker=".", alpha=0.5, label=speaker)
    axis.plot(counts, [r["mean"]["mean"] * 100 for r in result["rows"]], "k-o", label="mean")
    axis.set_xlabel("training voices")
    axis.set_ylabel("accuracy on the held-out voice %")
    axis.set_xticks(counts)
    axis.legend(fontsize=7)
    common.save_figure(figure, path)
    plt.close(figure)


def main(argv: Sequence[str] | None = None) -> int:
    parser = common.script_parser(__doc__, "python -m experiments.voices", "runs/voices")
    parser.add_argument("--config", default="task_b_robust",
                        help="built-in config name or YAML file (default task_b_robust)")
    parser.add_argument("--counts", type=int, nargs="+",
                        help="numbers of training voices (default 2 3 4 5; --quick: 2 3)")
    parser.add_argument("--speakers", nargs="+", help="held-out speakers (default: all)")
    parser.add_argument("--skip", type=int, default=0,
                        help="train on the voices after the first SKIP that follow the held-out "
                             "one: another set of voices per count (default 0)")
    parser.add_argument("--target", type=float, default=0.95,
                        help="accuracy the fitted curve is solved for (default 0.95)")
    args = parser.parse_args(argv)
    common.setup_logging()
    overrides, counts = list(args.set), args.counts or [2, 3, 4, 5]
    if args.quick:  # two held-out speakers, two counts: four short trainings
        overrides = ["train.seeds=1", "train.epochs=2", *common.QUICK_OVERRIDES, *overrides]
        counts = args.counts or [2, 3]
    result = run(args.out, args.config, counts, overrides, args.speakers, args.target,
                 not args.quiet, max_held_out=2 if args.quick and not args.speakers else None,
                 skip=args.skip)
    print(format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(common.guarded(main))
