#!/usr/bin/env python3
"""Save one JPEG every S seconds of a live Kinesis Video Streams stream.

    python consumers/save_snapshots.py --stream my-stream --every 10 --out snapshots/
    python consumers/save_snapshots.py --stream test --endpoint-url http://127.0.0.1:4567 \\
        --every 1 --start earliest --checkpoint snapshots.sqlite3   # the local emulator

Only the frames that are kept are converted to images (the decoder's time-based
sampling), so this costs little CPU. With ``--checkpoint`` a restart continues where
the last run stopped. Credentials come from the usual AWS chain. Ctrl-C stops.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import cv2

from kvs_toolkit.consumer import FragmentDecoder, LiveReader, open_checkpoint_store
from kvs_toolkit.errors import KvsError


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stream", required=True)
    parser.add_argument("--endpoint-url", help="control plane, e.g. the local emulator")
    parser.add_argument("--region", default=None)
    parser.add_argument("--every", type=float, default=10.0, help="seconds between snapshots")
    parser.add_argument("--out", default="snapshots", help="folder for the JPEGs")
    parser.add_argument("--start", default="now", help="now, earliest, fragment:N, producer:TIME")
    parser.add_argument(
        "--checkpoint", help="resume from here: a SQLite file, a .json file or dynamodb:TABLE"
    )
    parser.add_argument("--max-snapshots", type=int, help="stop after N snapshots")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    store = open_checkpoint_store(args.checkpoint) if args.checkpoint else None
    reader = LiveReader(
        args.stream,
        start=args.start,
        endpoint_url=args.endpoint_url,
        region=args.region,
        checkpoint_store=store,
    )
    saved = 0
    try:
        with reader, FragmentDecoder(every=args.every) as decoder:
            for fragment in reader:
                for frame in decoder.iter_decode(fragment):
                    path = out / f"{args.stream}-{frame.datetime:%Y%m%dT%H%M%S.%f}.jpg"
                    cv2.imwrite(str(path), frame.image)
                    print(path, flush=True)
                    saved += 1
                    if args.max_snapshots is not None and saved >= args.max_snapshots:
                        reader.commit()
                        return 0
    except KeyboardInterrupt:
        return 130
    except KvsError as exc:
        print(f"save_snapshots: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
