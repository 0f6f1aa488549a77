"""Robustness of a config: trained on the official split, scored under noise, babble and voice changes.

    python -m experiments.robustness --config task_b_speaker --out runs/robustness_speaker
    python -m experiments.robustness --config task_b_qat --out runs/robustness_qat
    [--seeds N] [--epochs N] [--qat-epochs N] [--talkers N] [--noise-seed N] [--quick] [--set ...]

Trains the config's float model on the official split's training clips (FSDD takes 5-49;
validation carved from them), fine-tunes it quantization-aware (``--qat-epochs``), and scores
float, PTQ-integer, QAT and QAT-integer on the test takes 0-4 with ``lstmq.robustness``:
clean, white noise and babble of other speakers' training clips at 20/10/5 dB SNR, pitch
-4/+4 semitones and speed x0.85/x1.15, per seed and per speaker, with a plot. The corrupted
copies depend on ``--noise-seed`` only, so every config meets the same audio. A finished
training is reused on a re-run. ``--quick``: 1 seed, 2 + 1 epochs, no waveform copies.
Produces <out>/robustness.json, .md and .png; <out>/runs/{float,qat}/ are the runs.
``--on val`` scores the validation clips instead (babble still from training clips), into
<out>/val/: what settings are chosen on.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from experiments import common
from lstmq.pipeline import prepare_data
from lstmq.recipes import float_and_qat
from lstmq.robustness import DEFAULT_TALKERS, format_markdown, robustness_report, write_report


def run(out: str | Path, config: str | Path = "task_b_speaker", overrides: Sequence[str] = (),
        seeds: int | None = None, epochs: int | None = None, qat_epochs: int = 15,
        talkers: int = DEFAULT_TALKERS, noise_seed: int = 0, quick: bool = False,
        progress: bool = True, on: str = "test") -> dict[str, Any]:
    out = Path(out)
    seeds, epochs, overrides = common.quick_defaults(quick, seeds, epochs, overrides)
    qat_epochs = 1 if quick else qat_epochs
    settings = ["data.split=official", *([f"train.seeds={seeds}"] if seeds else []),
                *([f"train.epochs={epochs}"] if epochs else []), *overrides]
    float_dir, qat_dir = out / "runs" / "float", out / "runs" / "qat"
    float_config, qat_config = float_and_qat(config, settings, float_dir, qat_epochs)
    data = prepare_data(float_config, progress=progress)
    common.say(f"{len(data.train)} train / {len(data.val)} val / {len(data.test)} test clips")
    common.train_or_resume(float_config, float_dir, data, progress)
    common.train_or_resume(qat_config, qat_dir, data, progress)
    report = robustness_report([float_dir, qat_dir], None, None, noise_seed, talkers, progress,
                               on)
    report["settings"] = {"config": str(config), "overrides": list(overrides), "seeds": seeds,
                          "epochs": epochs, "qat_epochs": qat_epochs, "quick": quick}
    report["environment"] = common.environment()
    write_report(common.jsonable(report), out if on == "test" else out / "val")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = common.script_parser(__doc__, "python -m experiments.robustness",
                                  "runs/robustness")
    parser.add_argument("--config", default="task_b_speaker",
                        help="built-in config name or YAML file (default task_b_speaker)")
    parser.add_argument("--seeds", type=int)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--qat-epochs", type=int, default=15)
    parser.add_argument("--talkers", type=int, default=DEFAULT_TALKERS)
    parser.add_argument("--noise-seed", type=int, default=0)
    parser.add_argument("--on", choices=("test", "val"), default="test",
                        help="val: score the validation clips (choosing settings), into <out>/val")
    args = parser.parse_args(argv)
    common.setup_logging()
    result = run(args.out, args.config, args.set, args.seeds, args.epochs, args.qat_epochs,
                 args.talkers, args.noise_seed, args.quick, not args.quiet, args.on)
    print(format_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(common.guarded(main))
