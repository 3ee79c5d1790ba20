#!/usr/bin/env python3
"""Follow a Kinesis Video Streams stream live and print the timestamp of every frame.

    python consumers/print_frames.py --stream my-stream
    python consumers/print_frames.py --stream test --endpoint-url http://127.0.0.1:4567 \\
        --start earliest --keyframes-only                         # the local emulator

Frames are decoded as they arrive (each fragment is handed out as soon as it is
complete); the reader reconnects on its own after network losses and the service's
session limit, without losing or repeating a fragment. Credentials come from the usual
AWS chain. Ctrl-C stops.
"""

from __future__ import annotations

import argparse
import logging
import sys

from kvs_toolkit.consumer import FragmentDecoder, LiveReader
from kvs_toolkit.errors import KvsError


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stream", required=True)
    parser.add_argument("--endpoint-url", help="control plane, e.g. the local emulator")
    parser.add_argument("--region", default=None)
    parser.add_argument("--start", default="now", help="now, earliest, fragment:N, producer:TIME")
    parser.add_argument("--keyframes-only", action="store_true")
    parser.add_argument("--max-frames", type=int, help="stop after N frames")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    reader = LiveReader(
        args.stream, start=args.start, endpoint_url=args.endpoint_url, region=args.region
    )
    decoder = FragmentDecoder(keyframes_only=args.keyframes_only, format="gray")
    printed = 0
    try:
        with reader, decoder:
            for fragment in reader:
                for frame in decoder.iter_decode(fragment):
                    lag = reader.stats.wall_lag_ms
                    print(
                        f"{frame.datetime.isoformat()}  {frame.width}x{frame.height}"
                        f"{'  key' if frame.keyframe else ''}  fragment {frame.fragment_number}"
                        f"  lag {'-' if lag is None else f'{lag:.0f} ms'}",
                        flush=True,
                    )
                    printed += 1
                    if args.max_frames is not None and printed >= args.max_frames:
                        return 0
    except KeyboardInterrupt:
        return 130
    except KvsError as exc:
        print(f"print_frames: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
