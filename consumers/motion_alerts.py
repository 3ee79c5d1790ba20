#!/usr/bin/env python3
"""Follow a Kinesis Video Streams stream and print a line when motion starts and stops.

    python consumers/motion_alerts.py --stream front-door
    python consumers/motion_alerts.py --stream test --endpoint-url http://127.0.0.1:4567 \\
        --start earliest --max-fragments 10                       # the local emulator

Every frame goes through OpenCV motion detection (a background model, no weights; the
first 25 frames only build the background). Motion "starts" on the first frame with a
moving region and "stops" after ``--quiet`` seconds of video without one. Frame times
are the producer's clock. Credentials come from the usual AWS chain. Ctrl-C stops.
"""

from __future__ import annotations

import argparse
import logging
import sys

from kvs_toolkit.analysis import MotionDetector
from kvs_toolkit.consumer import FragmentDecoder, LiveReader
from kvs_toolkit.errors import KvsError


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stream", required=True)
    parser.add_argument("--endpoint-url", help="control plane, e.g. the local emulator")
    parser.add_argument("--region", default=None)
    parser.add_argument("--start", default="now", help="now, earliest, fragment:N, producer:TIME")
    parser.add_argument("--fps", type=float, default=10.0, help="frames analysed a second")
    parser.add_argument("--min-area", type=float, default=400.0, help="smallest box, pixels")
    parser.add_argument("--quiet", type=float, default=2.0, help="seconds without motion = stop")
    parser.add_argument("--max-fragments", type=int, help="stop after N fragments")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    reader = LiveReader(
        args.stream, start=args.start, endpoint_url=args.endpoint_url, region=args.region
    )
    decoder = FragmentDecoder(fps=args.fps, format="gray")  # motion needs no colour
    detector = MotionDetector(min_area=args.min_area)
    moving_since: float | None = None
    last_motion = 0.0
    fragments = 0
    try:
        with reader, decoder:
            for fragment in reader:
                for frame in decoder.iter_decode(fragment):
                    found = detector.detect_image(frame.image, frame.format)
                    now = frame.timestamp
                    if found:
                        last_motion = now
                        if moving_since is None:
                            moving_since = now
                            print(
                                f"{frame.datetime.isoformat()}  motion started  "
                                f"{len(found)} region(s)",
                                flush=True,
                            )
                    elif moving_since is not None and now - last_motion >= args.quiet:
                        print(
                            f"{frame.datetime.isoformat()}  motion stopped  after "
                            f"{last_motion - moving_since:.1f} s",
                            flush=True,
                        )
                        moving_since = None
                fragments += 1
                if args.max_fragments is not None and fragments >= args.max_fragments:
                    break
    except KeyboardInterrupt:
        pass
    except KvsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if moving_since is not None:
        print(f"motion still going at the end ({last_motion - moving_since:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
