#!/usr/bin/env python3
"""Follow a Kinesis Video Streams stream live and print the timestamp of every frame.

    python consumers/print_frames.py --stream my-stream
    python consumers/print_frames.py --stream test --endpoint-url http://127.0.0.1:4567 \\
        --start earliest --keyframes-only                         # the local emulator

Frames are decoded as they arrive (each fragment is handed out as soon as it is
complete); the reader reconnects on its own after network losses and the service's
session limit, without losing or repeating a fragment. The AWS options are ``kvs
consume``'s (``--profile``, ``--region``, ``--endpoint-url``, ``--max-attempts``).
Ctrl-C (or SIGTERM) stops after the frame in progress; a second one exits at once.
Exit status: 0, 2 when it could not run (one line on stderr), 130/143 after a second
signal.
"""

from __future__ import annotations

import argparse
import sys

from kvs_toolkit import KvsError, open_stream
from kvs_toolkit.cli.common import (
    EXIT_OK,
    GracefulStop,
    aws_from_args,
    configure_logging,
    fail,
)
from kvs_toolkit.cli.options import (
    add_live_stream_options,
    positive_int,
    program_parser,
)

PROGRAM = "print_frames"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = program_parser((__doc__ or "").split("\n\n")[0])
    add_live_stream_options(parser)
    parser.add_argument("--keyframes-only", action="store_true", help="decode key frames only")
    parser.add_argument("--max-frames", type=positive_int, metavar="N", help="stop after N")
    return parser.parse_args(argv)


def print_frames(args: argparse.Namespace) -> int:
    aws = aws_from_args(args)
    aws.check()  # a missing region or credentials: one line, before any request
    printed = 0
    with open_stream(
        args.stream,
        aws=aws,
        start=args.start,
        keyframes_only=args.keyframes_only,
        format="gray",  # the cheapest conversion: only the size is printed
        idle_exit_s=args.idle_exit,
    ) as frames:
        stop = GracefulStop(PROGRAM, frames.stop, "stopping after the frame in progress")
        with stop.installed():
            for frame in frames:
                lag = frames.source.stats.wall_lag_ms
                print(
                    f"{frame.datetime.isoformat()}  {frame.width}x{frame.height}"
                    f"{'  key' if frame.keyframe else ''}  fragment {frame.fragment_number}"
                    f"  lag {'-' if lag is None else f'{lag:.0f} ms'}",
                    flush=True,
                )
                printed += 1
                if printed == args.max_frames:
                    break
    print(f"kvs {PROGRAM}: {printed} frames", file=sys.stderr)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(args)
    try:
        return print_frames(args)
    except (KvsError, ValueError) as exc:  # ValueError: a --start that does not parse
        return fail(PROGRAM, exc)
    except KeyboardInterrupt:  # Ctrl-C before the two-signal rule was in place
        return 130


if __name__ == "__main__":
    sys.exit(main())
