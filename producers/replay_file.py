#!/usr/bin/env python3
"""Replay a video file into a Kinesis Video Streams stream, in real time.

H.264/H.265 files are sent as they are (no re-encoding); anything else is encoded to
H.264. An AAC track goes along as audio.

    python producers/replay_file.py sample.mp4 --stream my-stream --loop
    python producers/replay_file.py sample.mp4 --stream test \\
        --endpoint-url http://127.0.0.1:4567 --create-stream      # the local emulator

The same as ``kvs produce sample.mp4 --stream my-stream --loop``, written out as a
program to copy from, with the same options (``--profile``, ``--region``,
``--endpoint-url``, ``--max-attempts``, ``--iot-*``). Ctrl-C (or SIGTERM) flushes the
last fragment and waits for its acknowledgement; a second one exits at once. Exit
status: 0 when everything sent was acknowledged, 1 when something was not, 2 when it
could not run (one line on stderr), 130/143 after a second signal.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from kvs_toolkit import KvsError, Producer
from kvs_toolkit.cli.common import EXIT_INCOMPLETE, EXIT_OK, StatusLine, configure_logging, fail
from kvs_toolkit.cli.options import (
    add_iot_arguments,
    parse_tags,
    positive_seconds,
    producer_aws_from_args,
    program_parser,
    stop_event_on_signals,
)

PROGRAM = "replay_file"
CLOSE_TIMEOUT_S = 30.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = program_parser((__doc__ or "").split("\n\n")[0])
    parser.add_argument("file", help="any video file FFmpeg opens (mp4, mkv, ts, ...)")
    parser.add_argument("--stream", required=True, help="stream name")
    parser.add_argument("--loop", action="store_true", help="replay forever")
    parser.add_argument(
        "--fast", action="store_true", help="send as fast as acknowledged, not at the file's rate"
    )
    parser.add_argument(
        "--tag", action="append", metavar="KEY=VALUE", help="persistent fragment metadata "
        "(repeatable; default source=FILE)",
    )  # fmt: skip
    parser.add_argument(
        "--fragment-duration", type=positive_seconds, default=2.0, metavar="SECONDS",
        help="fragment length (default 2)",
    )  # fmt: skip
    parser.add_argument("--create-stream", action="store_true")
    add_iot_arguments(parser)
    return parser.parse_args(argv)


async def replay(args: argparse.Namespace) -> int:
    tags = parse_tags(args.tag) if args.tag else {"source": args.file[-256:]}
    aws = producer_aws_from_args(args)  # a missing region or credentials: fail now
    stop = stop_event_on_signals(
        f"kvs {PROGRAM}",
        f"flushing the last fragment and waiting up to {CLOSE_TIMEOUT_S:g} s for its "
        "acknowledgements",
    )
    status = StatusLine(every_s=5.0)
    producer = Producer(
        args.stream,
        aws=aws,
        create_stream=args.create_stream,
        tags=tags,
        fragment_duration_ms=round(args.fragment_duration * 1000),
        close_timeout_s=CLOSE_TIMEOUT_S,
        progress=lambda progress: status.show(progress.line(), final=progress.done),
        stop=stop,
    )
    stats = await producer.upload_async(args.file, realtime=not args.fast, loop=args.loop)
    print(
        f"kvs {PROGRAM}: {stats.frames} frames in {stats.fragments} fragments, "
        f"{stats.acked} acknowledged",
        file=sys.stderr,
    )
    if not stats.all_acknowledged:
        print(
            f"kvs {PROGRAM}: not everything was acknowledged ({stats.dropped_fragments} "
            f"dropped, {stats.unacknowledged} unacknowledged, errors {stats.errors})",
            file=sys.stderr,
        )
        return EXIT_INCOMPLETE
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(args)
    try:
        return asyncio.run(replay(args))
    except (KvsError, argparse.ArgumentTypeError) as exc:
        return fail(PROGRAM, exc)
    except KeyboardInterrupt:  # Ctrl-C before the two-signal rule was in place
        return 130


if __name__ == "__main__":
    sys.exit(main())
