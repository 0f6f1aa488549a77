"""What every experiment script shares: flags and the library's result helpers.

Scripts keep their logic in ``run(...) -> dict`` and write results with ``write_results``
(JSON + markdown, atomically), so a result folder is either complete or absent. Trainings
go through ``lstmq.recipes.train_or_reuse``: a finished run is reused, an interrupted one
resumes, a folder of another config is refused.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from lstmq.cli import setup_logging as _setup_logging
from lstmq.recipes import train_or_reuse as train_or_resume  # noqa: F401 - the scripts' name
from lstmq.reports import (  # noqa: F401 - the helpers every script uses
    SHARED_MACHINE_NOTE, accuracy_summary, environment, format_accuracy, jsonable,
    load_average, markdown_table, save_figure, say, spread, write_results)

QUICK_OVERRIDES = ("augment.copies=0",)  # no waveform copies: a third of the epoch time


def quick_defaults(quick: bool, seeds: int | None, epochs: int | None,
                   overrides: Sequence[str]) -> tuple[int | None, int | None, list[str]]:
    """``--quick``: 1 seed, 2 epochs and no waveform copies unless given explicitly."""
    if not quick:
        return seeds, epochs, list(overrides)
    return (1 if seeds is None else seeds, 2 if epochs is None else epochs,
            [*QUICK_OVERRIDES, *overrides])


def script_parser(doc: str, prog: str, out_default: str,
                  trains: bool = True) -> argparse.ArgumentParser:
    """A script's parser: its docstring's first paragraph as description, plus ``--out``, and
    for a script that trains ``--set`` (dotted config overrides, repeatable), ``--quick``
    and ``--quiet``."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(out_default),
                        help=f"result folder (default {out_default})")
    if not trains:
        return parser
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override applied to every run, e.g. --set train.epochs=5")
    parser.add_argument("--quick", action="store_true", help="tiny settings, to check the script")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def setup_logging() -> None:
    """lstmq's INFO lines; other libraries (orbax checkpointing) only warnings."""
    _setup_logging(False)


def guarded(main: Callable[[], int | None]) -> int:
    """Runs a script's ``main`` as ``lstmq`` runs a command: the user's errors (a config, a
    folder of another run, a locked folder, bad data) as one line and exit code 2, Ctrl-C as
    one line and 130, instead of a traceback."""
    from lstmq.cli import expected_errors  # pylint: disable=import-outside-toplevel

    name = Path(sys.argv[0]).stem
    try:
        return main() or 0
    except KeyboardInterrupt:
        print(f"{name}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except expected_errors() as error:
        print(f"{name}: error: {error}", file=sys.stderr)
        return 2
