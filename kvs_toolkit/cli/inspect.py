"""``kvs inspect FILE``: the fragments, frames (per track) and tags of an MKV file or
GetMedia capture; other containers (MP4, ...) are described through PyAV."""

from __future__ import annotations

import argparse
import sys

from kvs_toolkit.cli.common import EXIT_INVALID, EXIT_OK, fail


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "file", help="MKV file, GetMedia capture or another video file ('-' for stdin)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--strict",
        action="store_true",
        help="exit 2 when the input ends in the middle of a fragment (default: warn, exit 0)",
    )


def run(args: argparse.Namespace) -> int:
    from kvs_toolkit.inspect import inspect_input, to_json, to_table

    if args.file == "-":
        result = inspect_input(sys.stdin.buffer)
    else:
        try:
            with open(args.file, "rb") as stream:
                result = inspect_input(stream, args.file)
        except OSError as exc:
            return fail("inspect", f"cannot read {args.file}: {exc.strerror}")
    name = "stdin" if args.file == "-" else args.file
    if result.invalid:
        # Not MKV/GetMedia and not a container FFmpeg reads, or malformed MKV: show
        # the complete fragments (if any) and say why reading stopped, in one line.
        if result.fragments:
            print(to_json(result) if args.json else to_table(result))
        reason = f"; {result.container_error}" if result.container_error else ""
        return fail("inspect", f"{name}: {result.error}{reason}")
    print(to_json(result) if args.json else to_table(result))
    if result.truncation is not None:
        # The normal end of a saved live read: a warning, unless --strict.
        print(
            f"kvs inspect: {name}: {'error' if args.strict else 'warning'}: the input ends "
            f"inside fragment {len(result.fragments) - 1} ({result.truncation}); "
            "its complete frames are shown and it is marked truncated",
            file=sys.stderr,
        )
        return EXIT_INVALID if args.strict else EXIT_OK
    return EXIT_OK
