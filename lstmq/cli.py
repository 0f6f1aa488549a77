"""Command line: ``lstmq train|eval|predict|export|robustness|budget|reproduce`` (also ``python -m lstmq``).

Parsing and printing only; the work is the library's. Every expected failure (bad config,
data, run folder, artifact) is one line on stderr and exit code 2; Ctrl-C is one line and
exit code 130, with the last epoch's checkpoint kept.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from lstmq.config import NUMERICS_PATHS as PATHS


def _train(args: argparse.Namespace) -> int:
    from lstmq.config import load_config
    from lstmq.evaluate import format_metrics_table
    from lstmq.runner import train_and_evaluate

    config = load_config(args.config, args.set)
    result = train_and_evaluate(config, args.out, progress=not args.quiet,
                                overwrite=args.overwrite)
    print(format_metrics_table(result))
    summary = result["test_accuracy_summary"]
    print(f"test accuracy over {summary['n']} seed(s): mean {summary['mean'] * 100:.2f}% "
          f"(min {summary['min'] * 100:.2f}%, max {summary['max'] * 100:.2f}%), "
          f"{result['train_seconds']:.1f} s training -> {args.out}/metrics.json")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from lstmq.inference import evaluate_run, summary_line
    from lstmq.io import atomic_write_json, check_writable

    if args.out is not None and args.out.is_dir():
        raise IsADirectoryError(f"{args.out}: is a folder; give the report's file name "
                                "(e.g. eval.json)")
    if args.out is not None:
        check_writable(args.out)  # before the evaluation, not after it
    if args.resample and args.data is None:
        raise ValueError("--resample applies to --data; the run's own test split is read as "
                         "it was for training")
    report = evaluate_run(args.run, data=args.data, path=args.path, integer=args.integer,
                          progress=not args.quiet, resample=args.resample or None)
    print(summary_line(report))
    if args.out:
        atomic_write_json(args.out, report)
        print(f"-> {args.out}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from lstmq.inference import (artifact_predictor, format_predictions, predict_files,
                                 run_predictor)

    target = Path(args.model)
    if target.is_dir():
        predictor = run_predictor(target, args.path, args.integer, args.seed_index or 0)
    else:
        # --integer is what an artifact is anyway; a path or a seed is chosen in a run folder
        chosen = [flag for flag, given in (("--path", args.path),
                                           ("--seed-index", args.seed_index is not None)) if given]
        if chosen:
            raise ValueError(f"{target}: an artifact holds one integer model of one seed; "
                             f"{' and '.join(chosen)} choose{'s' if len(chosen) == 1 else ''} "
                             "among the models of a run folder")
        predictor = artifact_predictor(target)
    rows = predict_files(predictor, args.inputs, resample=args.resample)
    if args.json:
        print(json.dumps({"model": predictor.description, "predictions": rows}, indent=2))
    else:
        print(f"# {predictor.description}")
        print(format_predictions(rows))
    return 0


def _export(args: argparse.Namespace) -> int:
    from lstmq.export import export_run

    report = export_run(args.run, args.out, seed_index=args.seed_index, c_header=args.c_header,
                        path=args.path, c_dir=args.c_dir, golden=args.golden,
                        max_seconds=args.max_seconds)
    print(report.summary())
    return 0


def _robustness(args: argparse.Namespace) -> int:
    from lstmq.robustness import format_markdown, robustness_report, write_report

    out = args.out or args.run[0] / ("robustness" if args.on == "test" else "robustness_val")
    if out.exists() and not out.is_dir():  # checked before minutes of scoring
        raise NotADirectoryError(f"{out}: exists and is not a folder; give --out a folder")
    report = robustness_report(args.run, args.path, args.condition, seed=args.seed,
                               talkers=args.talkers, progress=not args.quiet, on=args.on,
                               vote_speeds=args.vote_speed)
    files = write_report(report, out)
    print(format_markdown(report, per_speaker=False))
    print(f"-> {', '.join(map(str, files))}")
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from lstmq.study import reproduce

    reproduce(args.out, args.quick, args.set, progress=not args.quiet)
    return 0


def _count(text: str) -> int:
    """argparse type: an integer of 0 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.epochs=5 (repeatable)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    from lstmq.budget import add_budget_arguments, run_budget

    parser = argparse.ArgumentParser(prog="lstmq", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, and tracebacks for errors")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train (and test) a model from a YAML config")
    train.add_argument("--config", help="YAML file or built-in config name (default: defaults)")
    train.add_argument("--out", type=Path, required=True, help="run directory")
    train.add_argument("--overwrite", action="store_true",
                       help="start afresh when --out holds a run of another config or data")
    _add_config_arguments(train)
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser("eval", help="evaluate a trained run, optionally on new data")
    evaluate.add_argument("--run", type=Path, required=True, help="run directory")
    evaluate.add_argument("--data", type=Path,
                          help="labelled folder, archive or manifest (default: the run's own "
                               "test split, from the data it was trained on)")
    which = evaluate.add_mutually_exclusive_group()
    which.add_argument("--path", choices=PATHS, help="numerics path (default: as trained)")
    which.add_argument("--integer", action="store_true",
                       help="the run's integer model (qat-integer, or ptq-integer of a float run)")
    evaluate.add_argument("--resample", action="store_true",
                          help="with --data: resample files at another rate instead of refusing "
                               "them (default: the run's data.resample)")
    evaluate.add_argument("--out", type=Path,
                          help="also write the full report (per seed, class, confusion) as JSON")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bars")
    evaluate.set_defaults(handler=_eval)

    predict = commands.add_parser("predict", help="label WAV files with a run or an artifact")
    predict.add_argument("--model", "--run", dest="model", required=True,
                         help="run directory or exported .lstmqz artifact")
    predict.add_argument("inputs", nargs="+", help="WAV files or folders of them")
    which = predict.add_mutually_exclusive_group()
    which.add_argument("--path", choices=PATHS, help="numerics path of a run")
    which.add_argument("--integer", action="store_true", help="a run's integer model")
    predict.add_argument("--seed-index", type=int, help="which seed of a run (default 0)")
    predict.add_argument("--resample", action="store_true",
                         help="resample files at another rate instead of refusing them")
    predict.add_argument("--json", action="store_true", help="print JSON instead of a table")
    predict.set_defaults(handler=_predict)

    export = commands.add_parser("export", help="write a run's integer model as one file")
    export.add_argument("--run", type=Path, required=True, help="run directory")
    export.add_argument("--out", type=Path, required=True, help="artifact, e.g. model.lstmqz")
    export.add_argument("--seed-index", type=int, default=0, help="which seed of the run")
    export.add_argument("--path", choices=("qat-integer", "ptq-integer"),
                        help="default: the run's own (qat-integer of a QAT run, ptq-integer, by "
                             "post-training quantization, of a float run)")
    export.add_argument("--c-header", type=Path, help="also write the model as a C header")
    export.add_argument("--c-dir", type=Path,
                        help="also write a C99 library: PCM to label with the integer front end "
                             "(features.frontend=integer), else the LSTM on int8 features")
    export.add_argument("--golden", type=_count, default=20,
                        help="test clips written as golden vectors into the C library (0: none)")
    export.add_argument("--max-seconds", type=float,
                        help="longest clip the C library's static buffers hold (default 3 s)")
    export.set_defaults(handler=_export)

    robust = commands.add_parser(
        "robustness", help="score a run's test split under noise, babble, pitch and speed")
    robust.add_argument("--run", type=Path, action="append", required=True,
                        help="run directory (repeatable: a float run and its QAT fine-tune "
                             "are scored on the same corrupted clips)")
    robust.add_argument("--out", type=Path,
                        help="folder for robustness.json/.md/.png (default RUN/robustness, "
                             "with --on val RUN/robustness_val)")
    robust.add_argument("--path", action="append", choices=PATHS,
                        help="numerics path (repeatable; default: as trained and integer)")
    robust.add_argument("--condition", action="append", metavar="KIND[:VALUE]",
                        help="clean, white:SNR, babble:SNR, pitch:SEMITONES or speed:FACTOR "
                             "(repeatable; default: clean, white and babble at 20/10/5 dB, "
                             "pitch -4/+4, speed 0.85/1.15)")
    robust.add_argument("--talkers", type=int, default=4, help="voices in the babble")
    robust.add_argument("--on", choices=("test", "val"), default="test",
                        help="score the test split, or the validation split (to choose "
                             "settings without looking at test clips)")
    robust.add_argument("--seed", type=int, default=0,
                        help="noise seed (the same seed gives every run the same audio)")
    robust.add_argument("--vote-speed", type=float, action="append", metavar="SPEED",
                        help="score with this speed vote instead of the run's "
                             "features.vote_speeds (repeatable; training never reads them)")
    robust.add_argument("--quiet", action="store_true", help="no progress bars")
    robust.set_defaults(handler=_robustness)

    reproduce = commands.add_parser(
        "reproduce", help="the whole study: Task A, Task B float, PTQ, QAT and the integer model")
    reproduce.add_argument("--out", type=Path, default=Path("runs/reproduce"),
                           help="result folder (default runs/reproduce)")
    reproduce.add_argument("--quick", action="store_true",
                           help="short schedules (a few minutes), same pipeline")
    _add_config_arguments(reproduce)
    reproduce.set_defaults(handler=_reproduce)

    budget = commands.add_parser("budget", help="largest hidden size under a byte budget")
    add_budget_arguments(budget)
    budget.set_defaults(handler=run_budget)
    return parser


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted."""

    @property
    def stream(self):  # noqa: D401 - logging's attribute
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logging(verbose: bool = False) -> None:
    """lstmq's own messages (resumes, notes about skipped files) on stderr; other libraries'
    only from WARNING. A handler of its own, since importing orbax configures the root."""
    logger = logging.getLogger("lstmq")
    if not any(getattr(h, "_lstmq", False) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        handler._lstmq = True  # pylint: disable=protected-access
        logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False
    for noisy in ("orbax", "jax"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("absl").setLevel(logging.ERROR)  # orbax's notes on slow saves


def expected_errors() -> tuple[type[BaseException], ...]:
    """Errors that are the user's input, reported as one line (never a traceback)."""
    from lstmq.budget import BudgetError
    from lstmq.checkpoint import CheckpointError
    from lstmq.config import ConfigError
    from lstmq.io import FolderLockedError
    from lstmq.runner import TrainingDivergedError

    return (ConfigError, CheckpointError, BudgetError, FolderLockedError, TrainingDivergedError,
            ValueError, FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError,
            NotADirectoryError)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    if args.command != "budget":
        from lstmq.compilation import enable_persistent_cache

        enable_persistent_cache()
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print(f"lstmq {args.command}: interrupted; a training resumes from its last "
              "checkpoint when run again with the same --out", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of stdout left (e.g. `| head`): no traceback
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's final flush must not fail again
        return 141
    except expected_errors() as error:
        if args.verbose:  # the traceback, for debugging
            raise
        print(f"lstmq {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
