#!/usr/bin/env python3
"""Replay a video file into a Kinesis Video Streams stream, in real time.

H.264/H.265 files are sent as they are (no re-encoding); anything else is encoded to
H.264. An AAC track goes along as audio.

    python producers/replay_file.py sample.mp4 --stream my-stream --loop
    python producers/replay_file.py sample.mp4 --stream test \\
        --endpoint-url http://127.0.0.1:4567 --create-stream      # the local emulator

The same as ``kvs produce sample.mp4 --stream my-stream --loop``, written out as a
program to copy from. Credentials come from the usual AWS chain (environment, profile,
instance role). Ctrl-C stops after the last fragment is acknowledged.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

import boto3

from kvs_toolkit.errors import KvsError
from kvs_toolkit.producer.run import Progress, produce
from kvs_toolkit.producer.sources import FileSource, SourceOptions


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file")
    parser.add_argument("--stream", required=True)
    parser.add_argument("--endpoint-url", help="control plane, e.g. the local emulator")
    parser.add_argument("--region", default=None)
    parser.add_argument("--loop", action="store_true", help="replay forever")
    parser.add_argument("--create-stream", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    session = boto3.session.Session()
    region = args.region or session.region_name or "us-east-1"
    source = FileSource(args.file, SourceOptions(loop=args.loop))

    def show(progress: Progress) -> None:
        print(progress.line(), file=sys.stderr)

    async def run() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGINT, stop.set)
        stats = await produce(
            source,
            args.endpoint_url,
            args.stream,
            tags={"source": args.file[-256:]},
            credentials=session.get_credentials(),
            region=region,
            create_stream=args.create_stream,
            progress=show,
            progress_interval_s=5,
            stop=stop,
        )
        print(f"{stats.fragments} fragments sent, {stats.acked} acknowledged")

    try:
        asyncio.run(run())
    except KvsError as exc:
        print(f"replay_file: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
