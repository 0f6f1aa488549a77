"""Task A: the reference study's float LSTM (2 layers, hidden 128, 13 MFCCs, random split).

Run:      python -m experiments.task_a --out runs/task_a
Quick:    python -m experiments.task_a --quick --out runs/task_a_quick
          (2 epochs, 1 seed, no waveform augmentation copies)
Options:  --seeds N (seeds trained together in one program), --set key=value (any config key)
Time on a 2-core CPU (AMD EPYC, shared with other jobs): full (40 epochs x 3 seeds, two
  waveform copies per clip) about 20 min; --quick about 1 min.
Measured: test accuracy 99.72 % mean over 3 seeds (99.50-100.00) on the 600 test clips
  (before the regularisation in task_a.yaml: 98.50 %, 98.00-99.00).
Produces: <out>/run/ (the library's run directory: metrics.json, params, plots) and
  <out>/summary.json + <out>/summary.md: test accuracy mean/min/max over seeds and per
  seed, parameters, training time and seconds per epoch. The model is selected on the
  validation set inside the library; the test split is only reported.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from experiments import common
from lstmq.config import load_config

CONFIG = "task_a"


def run(out: str | Path, seeds: int | None = None, epochs: int | None = None,
        overrides: Sequence[str] = (), quick: bool = False,
        progress: bool = True) -> dict[str, Any]:
    """Train task_a.yaml (seeds together), test, and write ``summary.json``/``summary.md``.

    Args:
      out: result folder; the run itself goes to ``<out>/run`` (reused when finished).
      seeds: ``train.seeds`` override (default: the config's, 3).
      epochs: ``train.epochs`` override (default: the config's, 40).
      overrides: dotted ``key=value`` config overrides, applied last.
      quick: 1 seed, 2 epochs and no waveform copies unless ``seeds``/``epochs``/
        ``overrides`` say otherwise.
    """
    out = Path(out)
    seeds, epochs, overrides = common.quick_defaults(quick, seeds, epochs, overrides)
    settings = [*([f"train.seeds={seeds}"] if seeds is not None else []),
                *([f"train.epochs={epochs}"] if epochs is not None else []), *overrides]
    config = load_config(CONFIG, settings)
    common.say(f"task A: hidden {config.model.hidden}, {config.model.layers} layers, "
               f"{config.train.seeds} seed(s) x {config.train.epochs} epochs -> {out}")
    environment = common.environment()
    start = time.perf_counter()
    metrics = common.train_or_resume(config, out / "run", progress=progress)
    accuracy = common.accuracy_summary(list(metrics["test_accuracy_per_seed"].values()))
    epoch_seconds = [row["seconds"] for row in metrics.get("history", [])]
    result = {
        "experiment": "task_a",
        "command": " ".join(["python -m experiments.task_a",  # equivalent, without --quick
                             *(f"--set {s}" for s in settings)]),
        "config_file": "lstmq/configs/task_a.yaml",
        "overrides": list(settings),
        "run_dir": "run",
        "hidden": metrics["hidden"],
        "layers": config.model.layers,
        "params": metrics["params"],
        "seeds": metrics["derived"]["seeds"],
        "epochs": metrics["epochs"],
        "test_accuracy": accuracy,
        "test_accuracy_per_seed": metrics["test_accuracy_per_seed"],
        "val_accuracy_per_seed": metrics["val_accuracy"],
        "selected_epoch_per_seed": metrics["selected_epoch"],
        "test_count": metrics["test_count"],
        "train_seconds": metrics["train_seconds"],
        # the mean over every epoch, compilation included (the library's figure is the
        # median of the later epochs: the last column)
        "seconds_per_epoch": metrics["train_seconds"] / max(1, metrics["epochs"]),
        "first_epoch_seconds": epoch_seconds[0] if epoch_seconds else None,
        "seconds_per_epoch_after_first": (common.spread(epoch_seconds[1:])
                                          if len(epoch_seconds) > 1 else None),
        "wall_seconds": time.perf_counter() - start,
        "environment": environment,
    }
    result["environment"]["load_average_end"] = common.load_average()
    common.write_results(out, "summary", result, format_summary(result))
    common.say(f"test accuracy over {accuracy['n']} seed(s): "
               f"{common.format_accuracy(accuracy)} % -> {out / 'summary.md'}")
    return result


def format_summary(result: dict[str, Any]) -> str:
    acc = result["test_accuracy"]
    header = ["model", "params", "seeds", "epochs", "test accuracy % mean (min-max)",
              "train s", "s / epoch", "first epoch s", "s / later epoch, median (min-max)"]
    later = result["seconds_per_epoch_after_first"]
    row = [f"LSTM {result['layers']}x{result['hidden']} float", f"{result['params']:,}",
           acc["n"], result["epochs"], common.format_accuracy(acc),
           f"{result['train_seconds']:.1f}", f"{result['seconds_per_epoch']:.2f}",
           f"{result['first_epoch_seconds']:.1f}" if result["first_epoch_seconds"] else "-",
           f"{later['median']:.2f} ({later['min']:.2f}-{later['max']:.2f})" if later else "-"]
    per_seed = [[seed, f"{value * 100:.2f}", f"{val * 100:.2f}", epoch]
                for (seed, value), val, epoch in zip(result["test_accuracy_per_seed"].items(),
                                                     result["val_accuracy_per_seed"],
                                                     result["selected_epoch_per_seed"])]
    env = result["environment"]
    return "\n".join([
        "# Task A: float LSTM on FSDD (random split)", "",
        f"Config `{result['config_file']}` with overrides "
        f"`{' '.join(result['overrides']) or '-'}`; "
        f"{result['test_count']} test clips. Seeds are trained together in one program, so "
        "seconds per epoch cover all seeds; `s / epoch` is the library's training time over "
        "epochs (the first epoch includes compilation), the last column excludes it.", "",
        common.markdown_table(header, [row]), "",
        common.markdown_table(["seed", "test accuracy %", "val accuracy %", "selected epoch"],
                              per_seed), "",
        f"Measured on {env['cpu']} ({env['cores']} cores, {env['backend']}), load average "
        f"{env['load_average']} at start, {env.get('load_average_end')} at end. "
        f"{common.SHARED_MACHINE_NOTE}",
    ])


def main(argv: Sequence[str] | None = None) -> int:
    parser = common.script_parser(__doc__, "python -m experiments.task_a", "runs/task_a")
    parser.add_argument("--seeds", type=int, help="seeds trained together (default: config's)")
    parser.add_argument("--epochs", type=int, help="epochs (default: config's)")
    args = parser.parse_args(argv)
    common.setup_logging()
    run(args.out, args.seeds, args.epochs, args.set, args.quick, progress=not args.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(common.guarded(main))
