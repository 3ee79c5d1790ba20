"""What every benchmark module shares: the result row, the run options and timing helpers.

A benchmark module in this folder exposes ``run(options: Options) -> list[Result]``; the
runner (``python -m benchmarks``) finds it, calls it and prints its rows in one table.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")

# Throughputs are in decimal megabytes (10**6 bytes), as network rates are.
MB = 1_000_000


@dataclass(frozen=True, slots=True)
class Options:
    """How the runner asks a benchmark to run."""

    quick: bool = False


@dataclass(frozen=True, slots=True)
class Result:
    """One row of the table. Cells are preformatted; ``met`` says whether the goal was met.

    ``notes`` are printed under the table: how a number was measured, what was capped or
    extrapolated. A benchmark states its method there rather than in the cells.
    """

    benchmark: str
    ours: str
    reference: str
    ratio: str
    goal: str
    met: bool | None = None
    notes: tuple[str, ...] = field(default=())


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector around a timed section, as ``timeit`` does."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def repeat(fn: Callable[[], T], repeats: int) -> tuple[tuple[float, ...], T]:
    """Run ``fn`` ``repeats`` times; return each run's seconds and the last result."""
    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    seconds: list[float] = []
    result: T
    for _ in range(repeats):
        with gc_paused():
            start = time.perf_counter()
            result = fn()
            seconds.append(time.perf_counter() - start)
    return tuple(seconds), result


def fmt_rate(mb_per_s: float) -> str:
    """A throughput with about three significant digits."""
    if mb_per_s >= 100:
        return f"{mb_per_s:,.0f} MB/s"
    if mb_per_s >= 10:
        return f"{mb_per_s:.1f} MB/s"
    if mb_per_s >= 1:
        return f"{mb_per_s:.2f} MB/s"
    return f"{mb_per_s:.3f} MB/s"


def fmt_ratio(ratio: float) -> str:
    if ratio >= 100:
        return f"{ratio:,.0f}x"
    if ratio >= 10:
        return f"{ratio:.1f}x"
    return f"{ratio:.2f}x"


def fmt_size(n_bytes: float) -> str:
    """A byte count in decimal MB (the unit of the throughput columns)."""
    return f"{n_bytes / MB:g} MB" if n_bytes % 100_000 == 0 else f"{n_bytes / MB:.2f} MB"
