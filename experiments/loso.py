"""Leave-one-speaker-out: float, QAT and integer 36 KB models on a voice never heard in training.

    python -m experiments.loso --out runs/loso [--quick] [--speakers george theo] [--set ...]

For each FSDD speaker: train the float model at the int8-budget hidden size on the other
speakers (validation carved from their clips), convert it to an integer model without
retraining (PTQ-integer), fine-tune it quantization-aware (``--qat-epochs``, each seed from
its float seed), convert that to the integer model, and test all four on the held-out
speaker, clean and with white noise at ``--noise-snr`` dB (the
same noisy copies for every config). Reports per-speaker and 6-speaker mean accuracy (mean,
min, max over seeds). Full run (6 speakers, 3 seeds, 40 + 15 epochs, batches of 32): 71 min
on a 2-core CPU with ``--set train.batch_shards=2`` (2 seeds: 51 min); ``--quick`` (1 speaker,
1 seed, 2 + 1 epochs) about 2 min.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from experiments import common
from lstmq.augment import augment_dataset
from lstmq.config import AugmentConfig, config_path, load_config
from lstmq.data import load_dataset
from lstmq.folds import dataset_speakers, leave_one_speaker_out
from lstmq.paths import integer_models, predict_path
from lstmq.pipeline import PreparedData, SplitArrays, prepare_data, prepare_recordings
from lstmq.recipes import float_and_qat
from lstmq.runner import test_report
from lstmq.runs import load_run
from lstmq.splits import make_split

CONFIG = config_path("task_b_speaker")
PATHS = ("float", "PTQ-integer", "QAT", "integer")  # integer: the QAT run converted
NOISE_SEED = 1234  # the noisy test copies are the same for every config


def noisy_test_split(config, data: PreparedData, snr_db: float) -> SplitArrays:
    """The test clips with white noise at ``snr_db``, featurized like the clean ones."""
    dataset = load_dataset(config.data)
    test = dataset.subset(make_split(dataset, config.data).test)
    noisy = augment_dataset(test, AugmentConfig(noise_snr_db=snr_db, copies=1), NOISE_SEED, 0)
    split = prepare_recordings(noisy, config, data.normalizer, progress=False)
    if split.names != data.test.names:
        raise RuntimeError("noisy test clips are not the test clips")
    return split


def _accuracies(logits: dict[str, np.ndarray], split: SplitArrays, run) -> dict[str, Any]:
    return {path: common.accuracy_summary(list(test_report(
        logits[path], split, run.derived.seeds, run.classes)["test_accuracy_per_seed"].values()))
        for path in PATHS}


def _shown(path: str | Path) -> str:
    """A config path as the reader would type it (relative to the repository if inside)."""
    path = Path(path).resolve()
    root = CONFIG.parent.parent.parent
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def _speaker_means(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per path: the mean over speakers of each seed's accuracy, summarised over seeds."""
    return {path: common.accuracy_summary(
        np.mean([r[path]["values"] for r in rows], axis=0).tolist()) for path in PATHS}


def _predict(float_run, qat_run, models, split: SplitArrays) -> dict[str, np.ndarray]:
    return {"float": predict_path(float_run, split, "float"),
            "PTQ-integer": predict_path(float_run, split, "ptq-integer", models["PTQ-integer"]),
            "QAT": predict_path(qat_run, split, "qat"),
            "integer": predict_path(qat_run, split, "qat-integer", models["integer"])}


def run(out: str | Path, speakers: Sequence[str] | None = None, seeds: int | None = None,
        epochs: int | None = None, qat_epochs: int = 15, overrides: Sequence[str] = (),
        quick: bool = False, progress: bool = True,
        noise_snr_db: float | None = 10.0, config_path: str | Path = CONFIG) -> dict[str, Any]:
    out = Path(out)
    if quick:
        seeds, epochs, qat_epochs = seeds or 1, epochs or 2, 1
    common_overrides = [*([f"train.seeds={seeds}"] if seeds else []),
                        *([f"train.epochs={epochs}"] if epochs else []), *overrides]
    if speakers is None:
        speakers = dataset_speakers(load_config(config_path, common_overrides))
    rows = []
    for speaker, fold in leave_one_speaker_out(speakers):
        float_dir = out / "runs" / speaker / "float"
        float_config, qat_config = float_and_qat(config_path, [*fold, *common_overrides],
                                                 float_dir, qat_epochs)
        data = prepare_data(float_config, progress=progress)
        common.say(f"[{speaker}] {len(data.train)} train / {len(data.val)} val / "
                   f"{len(data.test)} test clips")
        common.train_or_resume(float_config, float_dir, data, progress)
        qat_dir = out / "runs" / speaker / "qat"
        common.train_or_resume(qat_config, qat_dir, data, progress)
        float_run, qat_run = load_run(float_dir), load_run(qat_dir)
        models = {"PTQ-integer": integer_models(float_run, "ptq-integer"),
                  "integer": integer_models(qat_run)}
        logits = _predict(float_run, qat_run, models, data.test)
        row = {"speaker": speaker, "hidden": qat_run.derived.hidden,
               "seeds": list(qat_run.derived.seeds), "test_count": len(data.test),
               **_accuracies(logits, data.test, qat_run)}
        row["integer_qat_agreement"] = float(np.mean(
            np.argmax(logits["integer"], -1) == np.argmax(logits["QAT"], -1)))
        if data.test.votes:  # the same models, each clip scored once
            plain = dataclasses.replace(data.test, votes=())
            row["without_votes"] = _accuracies(_predict(float_run, qat_run, models, plain),
                                               plain, qat_run)
        if noise_snr_db is not None:
            noisy = noisy_test_split(float_config, data, noise_snr_db)
            row["noisy"] = _accuracies(_predict(float_run, qat_run, models, noisy), noisy, qat_run)
        rows.append(row)
        common.say(f"[{speaker}] " + ", ".join(
            f"{p} {common.format_accuracy(row[p])}%" for p in PATHS))
    result = {"experiment": "loso", "speakers": list(speakers), "rows": rows,
              "mean_over_speakers": _speaker_means(rows),
              "noise_snr_db": noise_snr_db,
              "settings": {"config": _shown(config_path),
                           "overrides": list(overrides), "seeds": seeds, "epochs": epochs,
                           "qat_epochs": qat_epochs, "quick": quick},
              "environment": common.environment()}
    if noise_snr_db is not None:
        result["noisy_mean_over_speakers"] = _speaker_means([r["noisy"] for r in rows])
    if all("without_votes" in r for r in rows):
        result["without_votes_mean_over_speakers"] = _speaker_means(
            [r["without_votes"] for r in rows])
    common.write_results(out, "loso", result, format_table(result))
    return result


def format_table(result: dict[str, Any]) -> str:
    snr = result.get("noise_snr_db")
    noisy = [f"{p} at {snr:g} dB SNR %" for p in PATHS] if snr is not None else []
    headers = ["held-out speaker", "hidden", *[f"{p} % (min-max)" for p in PATHS],
               "integer = QAT", *noisy]

    def noisy_cells(row: dict[str, Any]) -> list[str]:
        return [common.format_accuracy(row[p]) for p in PATHS] if noisy else []

    rows = [[r["speaker"], r["hidden"], *[common.format_accuracy(r[p]) for p in PATHS],
             f"{r['integer_qat_agreement'] * 100:.2f}%", *noisy_cells(r.get("noisy", {}))]
            for r in result["rows"]]
    rows.append([f"mean of {len(result['rows'])}", "",
                 *[common.format_accuracy(result["mean_over_speakers"][p]) for p in PATHS], "",
                 *noisy_cells(result.get("noisy_mean_over_speakers", {}))])
    settings = result["settings"]
    plain = result.get("without_votes_mean_over_speakers")
    if plain:
        rows.append(["mean without speed votes", "",
                     *[common.format_accuracy(plain[p]) for p in PATHS], "",
                     *(["" for _ in noisy])])
    return ("# Leave-one-speaker-out\n\n"
            f"Config {settings['config']} with overrides {settings['overrides'] or 'none'}; "
            f"accuracy mean (min-max) over seeds; the last row averages speakers per seed."
            + (f" Noisy columns: the same test clips with white noise at {snr:g} dB SNR."
               if noisy else "") + "\n\n"
            + common.markdown_table(headers, rows))


def main(argv: Sequence[str] | None = None) -> int:
    parser = common.script_parser(__doc__, "python -m experiments.loso", "runs/loso")
    parser.add_argument("--config", type=Path, default=CONFIG,
                        help=f"training config (default {_shown(CONFIG)})")
    parser.add_argument("--speakers", nargs="+",
                        help="held-out speakers (default: every speaker of the data)")
    parser.add_argument("--seeds", type=int)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--qat-epochs", type=int, default=15)
    parser.add_argument("--noise-snr", type=float, default=10.0,
                        help="also test on noisy copies at this SNR in dB (negative: skip)")
    args = parser.parse_args(argv)
    common.setup_logging()
    speakers = args.speakers
    if args.quick:
        speakers = (speakers or dataset_speakers(load_config(args.config, args.set)))[:1]
    result = run(args.out, speakers, args.seeds, args.epochs, args.qat_epochs, args.set,
                 args.quick, not args.quiet, None if args.noise_snr < 0 else args.noise_snr,
                 args.config)
    print(format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(common.guarded(main))
