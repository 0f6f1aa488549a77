"""Timing of jitted calls inside one process: medians and spreads, compilation excluded."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jax

from lstmq.reports import spread


def repeat_timed(fn: Callable[[], Any], repeats: int) -> dict[str, Any]:
    """Spread of ``repeats`` timed calls of ``fn`` after one untimed (compiling) call."""
    jax.block_until_ready(fn())  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return spread(times)


def each_timed(calls: list[Callable[[], Any]]) -> dict[str, Any]:
    """Spread of the times of each call (the first is also run once untimed, to compile)."""
    jax.block_until_ready(calls[0]())  # compile
    times = []
    for call in calls:
        start = time.perf_counter()
        jax.block_until_ready(call())
        times.append(time.perf_counter() - start)
    return spread(times)
