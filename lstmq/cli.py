"""Command line: ``lstmq train|eval|budget|export|reproduce ...`` (also ``python -m lstmq``). Parsing only."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def _train(args: argparse.Namespace) -> int:
    from lstmq.config import load_config
    from lstmq.evaluate import format_metrics_table
    from lstmq.runner import train_and_evaluate

    config = load_config(args.config, args.set)
    result = train_and_evaluate(config, args.out, progress=not args.quiet)
    print(format_metrics_table(result))
    summary = result["test_accuracy_summary"]
    print(f"test accuracy over {summary['n']} seed(s): mean {summary['mean'] * 100:.2f}% "
          f"(min {summary['min'] * 100:.2f}%, max {summary['max'] * 100:.2f}%), "
          f"{result['train_seconds']:.1f} s training -> {args.out}/metrics.json")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from lstmq.runner import evaluate_run

    report = evaluate_run(args.run, data=args.data, integer=args.integer,
                          progress=not args.quiet)
    print(json.dumps(report, indent=2))
    return 0


def _export(args: argparse.Namespace) -> int:
    from lstmq.export import export_run

    report = export_run(args.run, args.out, seed_index=args.seed_index, c_header=args.c_header)
    print(report.summary())
    return 0


def build_parser() -> argparse.ArgumentParser:
    from lstmq.budget import add_budget_arguments, run_budget

    parser = argparse.ArgumentParser(prog="lstmq", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train (and test) a model from a YAML config")
    train.add_argument("--config", type=Path, help="YAML config (defaults when omitted)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, e.g. --set train.epochs=5")
    train.add_argument("--out", type=Path, required=True, help="run directory")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser("eval", help="evaluate a trained run, optionally on new data")
    evaluate.add_argument("--run", type=Path, required=True, help="run directory")
    evaluate.add_argument("--data", type=Path,
                          help="archive or folder of {digit}_{speaker}_{index}.wav recordings "
                               "(default: the run's own test split)")
    evaluate.add_argument("--integer", action="store_true",
                          help="evaluate the pure-integer model instead of the trained one")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bars")
    evaluate.set_defaults(handler=_eval)

    export = commands.add_parser("export", help="write a QAT run's integer model as one file")
    export.add_argument("--run", type=Path, required=True, help="run directory (quant.mode=qat)")
    export.add_argument("--out", type=Path, required=True, help="artifact, e.g. model.lstmqz")
    export.add_argument("--seed-index", type=int, default=0, help="which seed of the run")
    export.add_argument("--c-header", type=Path, help="also write the model as a C header")
    export.set_defaults(handler=_export)

    commands.add_parser(  # dispatched in main() before parsing
        "reproduce", help="the whole study: Task A, Task B float and int8 (PTQ, QAT, integer); "
                          "see lstmq reproduce --help")

    budget = commands.add_parser("budget", help="largest hidden size under a byte budget")
    add_budget_arguments(budget)
    budget.set_defaults(handler=run_budget)
    return parser


def main(argv: list[str] | None = None) -> int:
    from lstmq.checkpoint import CheckpointError
    from lstmq.config import ConfigError

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["reproduce"]:  # its own flags, parsed by the experiment script
        from experiments.reproduce import main as reproduce_main

        return reproduce_main(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(message)s")
    try:
        return args.handler(args)
    except (ConfigError, CheckpointError, ValueError, FileNotFoundError) as error:
        if args.verbose:  # the traceback, for debugging
            raise
        print(f"lstmq {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
