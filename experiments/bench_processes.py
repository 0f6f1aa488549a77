"""Whole-process timings for the benchmark: compilation cold and warm, and N seeds in one
``lstmq train`` process against N single-seed processes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from experiments import common


def time_compile(overrides: Sequence[str], hidden: int = 48) -> dict[str, Any]:
    """Whole-process time of a one-epoch ``lstmq train`` in a new process, first with an
    empty compilation cache (cold), then again with the cache the first run filled (warm),
    and the tracing/compiling seconds each reports."""

    folder = Path(tempfile.mkdtemp(prefix="lstmq-compile-"))
    env = dict(os.environ, LSTMQ_JAX_CACHE=str(folder / "xla"))
    rows = {}
    for name in ("cold", "warm"):
        command = [sys.executable, "-m", "lstmq", "train", "--quiet", "--out", str(folder / name),
                   "--set", f"model.hidden={hidden}", "--set", "train.epochs=1"]
        for override in overrides:
            command += ["--set", override]
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        seconds = time.perf_counter() - start
        found = re.search(r"compiling the training and validation steps took ([0-9.]+) s "
                          r"\((\d+) program", done.stderr)
        rows[name] = {"process_seconds": seconds, "returncode": done.returncode,
                      "compile_seconds": float(found.group(1)) if found else None,
                      "cached_programs": int(found.group(2)) if found else None}
        common.say(f"  {name} compilation: process {seconds:.1f} s, compiling "
                   f"{rows[name]['compile_seconds']} s")
    return {"hidden": hidden, **rows}


def time_seed_runs(overrides: Sequence[str], hidden: int, seeds: int, epochs: int,
                    rounds: int = 3) -> dict[str, Any]:
    """Whole ``lstmq train`` processes on the real data: one training ``seeds`` seeds
    together, against ``seeds`` single-seed trainings (seed 0, 1, ...), all with warm feature
    and compilation caches (first, untimed runs of both layouts fill them). Each of
    ``rounds`` rounds times both, the together run first in even rounds and last in odd
    ones; the ratio is read per round (a slow spell of the host falls on one round)."""

    folder = Path(tempfile.mkdtemp(prefix="lstmq-seeds-"))

    def train(name: str, settings: Sequence[str]) -> float:
        command = [sys.executable, "-m", "lstmq", "train", "--quiet", "--out",
                   str(folder / name), "--set", f"model.hidden={hidden}",
                   "--set", f"train.epochs={epochs}"]
        for override in [*overrides, *settings]:
            command += ["--set", override]
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
        return time.perf_counter() - start

    # Both layouts fill the caches: the vmapped programs of N seeds (initialisation,
    # validation) are not those of one, and a cold together run would pay their compiling.
    train("warm", ["train.seeds=1", "train.seed=100"])
    train("warm_together", [f"train.seeds={seeds}", "train.seed=100"])
    together, alone = [], []
    for index in range(rounds):
        for part in (("together", "alone") if index % 2 == 0 else ("alone", "together")):
            if part == "together":
                together.append(train(f"together_{index}", [f"train.seeds={seeds}"]))
            else:
                alone.append([train(f"alone_{index}_{s}", ["train.seeds=1", f"train.seed={s}"])
                              for s in range(seeds)])
    ratios = [t / sum(a) for t, a in zip(together, alone, strict=True)]
    ratio = float(np.median(ratios))
    common.say(f"  whole runs, hidden {hidden}, {epochs} epochs, {rounds} round(s): {seeds} "
               f"seeds together {np.median(together):.1f} s, one at a time "
               f"{np.median([sum(a) for a in alone]):.1f} s (ratio {ratio:.2f}, rounds "
               f"{min(ratios):.2f}-{max(ratios):.2f})")
    return {"hidden": hidden, "epochs": epochs, "seeds": seeds, "rounds": rounds,
            "together_seconds": together, "alone_seconds": alone, "ratios": ratios,
            "ratio": ratio}
