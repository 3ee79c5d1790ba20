#!/usr/bin/env python3
"""Replay a video file into a Kinesis Video Streams stream, in real time.

H.264/H.265 files are sent as they are (no re-encoding); anything else is encoded to
H.264. An AAC track goes along as audio.

    python producers/replay_file.py sample.mp4 --stream my-stream --loop
    python producers/replay_file.py sample.mp4 --stream test \\
        --endpoint-url http://127.0.0.1:4567 --create-stream      # the local emulator

The same as ``kvs produce sample.mp4 --stream my-stream --loop``, written out as a
program to copy from. Credentials come from the usual AWS chain (environment, profile,
instance role), or ``--iot-*`` for the AWS IoT credentials provider. Ctrl-C (or
SIGTERM) stops after the last fragment is acknowledged. Exit status: 0 when everything
sent was acknowledged, 1 when something was not, 2 on an error (one line on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from kvs_toolkit.errors import KvsError
from kvs_toolkit.producer.credentials import (
    add_credential_arguments,
    credentials_from_args,
    region_from_args,
    session_from_args,
)
from kvs_toolkit.producer.run import StatusLine, parse_tags, produce, stop_on_signals
from kvs_toolkit.producer.sources import FileSource, SourceOptions
from kvs_toolkit.producer.uploader import UploadStats

log = logging.getLogger("replay_file")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("file", help="any video file FFmpeg opens (mp4, mkv, ts, ...)")
    parser.add_argument("--stream", required=True, help="stream name")
    parser.add_argument("--endpoint-url", help="control plane, e.g. the local emulator")
    parser.add_argument("--region", default=None, help="default: the profile's, or us-east-1")
    parser.add_argument("--loop", action="store_true", help="replay forever")
    parser.add_argument(
        "--fast", action="store_true", help="send as fast as possible, not at the file's rate"
    )
    parser.add_argument(
        "--tag",
        action="append",
        metavar="KEY=VALUE",
        help="persistent fragment metadata (repeatable; default source=FILE)",
    )
    parser.add_argument(
        "--fragment-duration", type=float, default=2.0, metavar="SECONDS", help="default 2"
    )
    parser.add_argument("--create-stream", action="store_true")
    add_credential_arguments(parser)
    return parser.parse_args(argv)


async def replay(args: argparse.Namespace) -> UploadStats:
    options = SourceOptions(
        loop=args.loop,
        realtime=not args.fast,
        fragment_duration_ms=round(args.fragment_duration * 1000),
    )
    source = FileSource(args.file, options)  # a missing file fails before any AWS call
    session = session_from_args(args)
    credentials = credentials_from_args(args, session)
    region = region_from_args(args, session)
    stop = stop_on_signals()
    return await produce(
        source,
        args.endpoint_url,
        args.stream,
        tags=parse_tags(args.tag) if args.tag else {"source": args.file[-256:]},
        credentials=credentials,
        region=region,
        fragment_duration_ms=options.fragment_duration_ms,
        create_stream=args.create_stream,
        progress=StatusLine(every_s=5.0),
        stop=stop,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("botocore").setLevel(logging.WARNING)  # its INFO is chatty
    try:
        stats = asyncio.run(replay(args))
    except (KvsError, argparse.ArgumentTypeError) as exc:
        print(f"replay_file: {exc}", file=sys.stderr)
        return 2
    print(
        f"replay_file: {stats.frames} frames in {stats.fragments} fragments, "
        f"{stats.acked} acknowledged",
        file=sys.stderr,
    )
    if not stats.all_acknowledged:
        print(
            f"replay_file: not everything was acknowledged ({stats.dropped_fragments} "
            f"dropped, {stats.unacknowledged} unacknowledged, errors {stats.errors})",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
