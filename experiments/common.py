"""What every experiment script shares: flags, resumable training, statistics and outputs.

Scripts keep their logic in ``run(...) -> dict`` and write results with ``write_results``
(JSON + markdown, atomically), so a result folder is either complete or absent.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lstmq.config import Config, config_to_dict
from lstmq.evaluate import summarize
from lstmq.io import atomic_write_bytes, atomic_write_json, atomic_write_text, read_json
from lstmq.pipeline import PreparedData

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
SHARED_MACHINE_NOTE = ("Timings come from a shared machine: other jobs may have been running "
                       "(see load_average), so treat them as indicative, not as a ceiling.")


QUICK_OVERRIDES = ("augment.copies=0",)  # no waveform copies: a third of the epoch time


def quick_defaults(quick: bool, seeds: int | None, epochs: int | None,
                   overrides: Sequence[str]) -> tuple[int | None, int | None, list[str]]:
    """``--quick``: 1 seed, 2 epochs and no waveform copies unless given explicitly."""
    if not quick:
        return seeds, epochs, list(overrides)
    return (1 if seeds is None else seeds, 2 if epochs is None else epochs,
            [*QUICK_OVERRIDES, *overrides])


class ResumeError(RuntimeError):
    """A run directory holds a finished run of a different config or data."""


def script_parser(doc: str, prog: str, out_default: str) -> argparse.ArgumentParser:
    """A script's parser: its docstring's first paragraph as description, plus the common
    arguments (``add_common_arguments``)."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, out_default)
    return parser


def add_common_arguments(parser: argparse.ArgumentParser, out_default: str) -> None:
    """``--out``, ``--set`` (dotted config overrides, repeatable) and ``--quick``."""
    parser.add_argument("--out", type=Path, default=Path(out_default),
                        help=f"result folder (default {out_default})")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override applied to every run, e.g. --set train.epochs=5")
    parser.add_argument("--quick", action="store_true", help="tiny settings, to check the script")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def setup_logging() -> None:
    """lstmq's INFO lines; other libraries (orbax checkpointing) only warnings."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    logging.getLogger("lstmq").setLevel(logging.INFO)


def say(message: str) -> None:
    """Progress line, flushed at once (scripts run for minutes)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def environment() -> dict[str, Any]:
    """Where the numbers were measured: CPU, backend, versions, current load."""
    import flax
    import jax

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "cores": cores, "backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()], "jax": jax.__version__,
            "flax": flax.__version__, "python": platform.python_version(),
            "load_average": load_average(), "note": SHARED_MACHINE_NOTE}


def load_average() -> list[float] | None:
    """1/5/15-minute load averages (None where the OS has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def spread(values: Sequence[float]) -> dict[str, Any]:
    """Median, min, max and every value of repeated timings."""
    v = np.asarray(values, np.float64)
    return {"median": float(np.median(v)), "min": float(v.min()), "max": float(v.max()),
            "n": int(v.size), "values": [float(x) for x in v]}


def accuracy_summary(values: Sequence[float]) -> dict[str, Any]:
    """Mean/std/min/max over seeds (``lstmq.evaluate.summarize``) plus the values."""
    return {**summarize(values), "values": [float(x) for x in values]}


def format_accuracy(summary: dict[str, Any]) -> str:
    """``97.33 (96.50-98.00)`` in percent: mean (min-max) over seeds."""
    return (f"{summary['mean'] * 100:.2f} ({summary['min'] * 100:.2f}-"
            f"{summary['max'] * 100:.2f})")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; numeric columns right-aligned, text columns left-aligned."""
    cells = [[str(c) for c in row] for row in rows]
    numeric = [bool(cells) and all(row[i][:1].isdigit() or row[i][:1] in "-+." for row in cells)
               for i in range(len(headers))]
    align = ["--:" if n else ":--" for n in numeric]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def write_results(out: Path, stem: str, result: dict[str, Any], markdown: str) -> None:
    """``<out>/<stem>.json`` and ``<out>/<stem>.md``, each written atomically."""
    atomic_write_json(out / f"{stem}.json", jsonable(result))
    atomic_write_text(out / f"{stem}.md", markdown.rstrip() + "\n")


def jsonable(value: Any) -> Any:
    """``value`` with numpy scalars/arrays and paths turned into JSON builtins."""
    return json.loads(json.dumps(value, default=_to_builtin))


def _to_builtin(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def save_figure(fig, path: Path) -> None:
    """PNG written atomically."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())


def train_or_resume(config: Config, workdir: Path, data: PreparedData | None = None,
                    progress: bool = True) -> dict[str, Any]:
    """``lstmq.runner.train_and_evaluate``, skipped when ``workdir`` already holds its result.

    A finished run (``metrics.json``) is reused only if its config (and data fingerprint,
    when ``data`` is given) is this one; an interrupted run resumes from its checkpoint.

    Raises:
      ResumeError: ``workdir`` holds a finished run of another config or data.
    """
    from lstmq.runner import train_and_evaluate

    workdir = Path(workdir)
    if (workdir / "metrics.json").is_file() and (workdir / "run.json").is_file():
        info = read_json(workdir / "run.json")
        wanted = jsonable(config_to_dict(config))
        if info.get("config") != wanted:
            changed = sorted(f"{section}.{key}" for section, values in wanted.items()
                             for key, value in values.items()
                             if info.get("config", {}).get(section, {}).get(key) != value)
            raise ResumeError(f"{workdir} holds a finished run of another config "
                              f"(differs in {', '.join(changed)}); choose another --out")
        if data is not None and info.get("data", {}).get("fingerprint") != data.fingerprint:
            raise ResumeError(f"{workdir} holds a finished run on other data; "
                              "choose another --out")
        say(f"reusing finished run {workdir}")
        return read_json(workdir / "metrics.json")
    return train_and_evaluate(config, workdir, data=data, progress=progress)
