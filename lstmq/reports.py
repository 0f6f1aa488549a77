"""Result tables and files shared by studies: accuracy summaries, markdown, JSON, figures,
and where a number was measured (host, load)."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lstmq.evaluate import save_figure, summarize  # noqa: F401 - save_figure: for studies
from lstmq.io import atomic_write_json, atomic_write_text

SHARED_MACHINE_NOTE = ("Timings come from a shared machine: other jobs may have been running "
                       "(see load_average), so treat them as indicative, not as a ceiling.")


def say(message: str) -> None:
    """Progress line, flushed at once (studies run for minutes)."""
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


def write_results(out: Path, stem: str, result: dict[str, Any], markdown: str) -> None:
    """``<out>/<stem>.json`` and ``<out>/<stem>.md``, each written atomically."""
    atomic_write_json(out / f"{stem}.json", jsonable(result))
    atomic_write_text(out / f"{stem}.md", markdown.rstrip() + "\n")


