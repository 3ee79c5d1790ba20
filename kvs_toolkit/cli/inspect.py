"""``kvs inspect FILE``: the fragments, frames and tags of an MKV file or GetMedia capture."""

from __future__ import annotations

import argparse
import sys

from kvs_toolkit.cli.common import EXIT_INVALID, fail


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="MKV file or GetMedia capture ('-' for stdin)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    from kvs_toolkit.inspect import inspect_stream, read_chunks, to_json, to_table

    if args.file == "-":
        result = inspect_stream(read_chunks(sys.stdin.buffer))
    else:
        try:
            with open(args.file, "rb") as stream:
                result = inspect_stream(read_chunks(stream))
        except OSError as exc:
            return fail("inspect", f"cannot read {args.file}: {exc.strerror}")
    print(to_json(result) if args.json else to_table(result))
    if result.error is not None:
        return fail("inspect", f"{args.file}: {result.error}", EXIT_INVALID)
    return 0
