"""Run every benchmark in this folder and print one markdown table.

    python -m benchmarks            # full run (``make bench``)
    python -m benchmarks --quick    # short run
    python -m benchmarks --only parse_getmedia
    python -m benchmarks --long     # memory-over-time rows at full length (10 min, 1 h)

A benchmark is any module here (other than ``common`` and private ones) with a
``run(options: Options) -> list[Result]`` function.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import os
import pkgutil
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import benchmarks
from benchmarks.common import Options, Result

Benchmark = Callable[[Options], list[Result]]
_NOT_BENCHMARKS = frozenset({"common"})
_COLUMNS = ("benchmark", "ours", "reference", "ratio", "goal")


def discover(only: Sequence[str] = ()) -> list[tuple[str, Benchmark]]:
    """The benchmark modules of this package, by name, with their ``run`` functions."""
    found: list[tuple[str, Benchmark]] = []
    for module_info in sorted(pkgutil.iter_modules(benchmarks.__path__), key=lambda m: m.name):
        name = module_info.name
        if name.startswith("_") or name in _NOT_BENCHMARKS or (only and name not in only):
            continue
        module = importlib.import_module(f"benchmarks.{name}")
        run = getattr(module, "run", None)
        if callable(run):
            found.append((name, run))
    missing = set(only) - {name for name, _ in found}
    if missing:
        raise SystemExit(f"no such benchmark: {', '.join(sorted(missing))}")
    return found


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def markdown_table(results: Sequence[Result]) -> str:
    def goal_cell(result: Result) -> str:
        if result.met is None:
            return result.goal
        return f"{result.goal}: {'met' if result.met else 'NOT MET'}"

    rows = [(r.benchmark, r.ours, r.reference, r.ratio, goal_cell(r)) for r in results]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(_COLUMNS)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    out = [line(_COLUMNS), "| " + " | ".join("-" * w for w in widths) + " |"]
    out.extend(line(row) for row in rows)
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="short run (well under 20 s)")
    parser.add_argument(
        "--long",
        action="store_true",
        help="run the memory-over-time rows for as long as their goals say (10 min producer, "
        "1 h consumer; KVS_BENCH_LONG_S=SECONDS sets any length)",
    )
    parser.add_argument(
        "--only", action="append", default=[], metavar="NAME", help="run only this module"
    )
    args = parser.parse_args(argv)
    options = Options(quick=args.quick, long=args.long)
    command = "python -m benchmarks" + "".join(
        f" {a}" for a in (sys.argv[1:] if argv is None else argv)
    )

    started = time.perf_counter()
    results: list[Result] = []
    failed = 0
    for name, run in discover(args.only):
        print(f"running {name} ...", file=sys.stderr, flush=True)
        try:
            results.extend(run(options))
        except Exception as exc:  # one broken benchmark must not lose the others' rows
            failed += 1
            print(f"{name} failed: {exc!r}", file=sys.stderr, flush=True)
            results.append(Result(name, "failed", "-", "-", f"{type(exc).__name__}", met=False))
    elapsed = time.perf_counter() - started

    now = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    print(markdown_table(results))
    print()
    print(
        f"{now} · {os.cpu_count()} cores, {cpu_model()} · Python {platform.python_version()} "
        f"· `{command}` · {elapsed:.0f} s"
    )
    notes = [note for result in results for note in result.notes]
    if notes:
        print()
        for note in dict.fromkeys(notes):  # unique, in order
            print(f"- {note}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
