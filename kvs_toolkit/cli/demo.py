"""``kvs demo``: the whole loop on the embedded emulator."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", default="demo-output", help="folder for the demo's results")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the sample video")
    parser.add_argument(
        "--serve", action="store_true", help="leave the emulator running at the end (Ctrl-C stops)"
    )


def run(args: argparse.Namespace) -> int:
    from kvs_toolkit.demo import run_demo

    return run_demo(Path(args.output), seconds=args.seconds, serve=args.serve)
