#!/usr/bin/env python3
"""Send frames your own code makes (numpy images) to a stream: ``Producer.put_frame``.

Any per-frame pipeline fits here: a robot's annotated camera view, a render, a
simulation. Each image is encoded to H.264 (libx264 low-latency, or the hardware
encoder when there is one) with a key frame every fragment.

    python producers/numpy_frames.py --stream synthetic --seconds 20
    python producers/numpy_frames.py --stream synthetic \\
        --endpoint-url http://127.0.0.1:4567 --create-stream      # the local emulator

The AWS options are ``kvs produce``'s (``--profile``, ``--region``, ``--endpoint-url``,
``--max-attempts``, ``--iot-*``). Ctrl-C (or SIGTERM) stops making frames, flushes the
last fragment and waits for its acknowledgement; a second one exits at once. Exit
status: 0 when everything sent was acknowledged, 1 when something was not, 2 when it
could not run (one line on stderr), 130/143 after a second signal.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time

from kvs_toolkit import KvsError, Producer
from kvs_toolkit.cli.common import (
    EXIT_INCOMPLETE,
    EXIT_OK,
    GracefulStop,
    configure_logging,
    fail,
)
from kvs_toolkit.cli.options import (
    add_iot_arguments,
    positive_float,
    positive_int,
    producer_aws_from_args,
    program_parser,
)
from kvs_toolkit.samples import SampleSpec, render_frame

PROGRAM = "numpy_frames"
CLOSE_TIMEOUT_S = 30.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = program_parser((__doc__ or "").split("\n\n")[0])
    parser.add_argument("--stream", required=True, help="stream name")
    parser.add_argument("--seconds", type=positive_float, default=10.0, help="default 10")
    parser.add_argument("--fps", type=positive_int, default=25, help="default 25")
    parser.add_argument("--create-stream", action="store_true")
    add_iot_arguments(parser)
    return parser.parse_args(argv)


def send_frames(args: argparse.Namespace) -> int:
    aws = producer_aws_from_args(args)  # a missing region or credentials: fail now
    spec = SampleSpec(width=640, height=360, fps=args.fps)
    stopping = threading.Event()
    stop = GracefulStop(
        PROGRAM,
        stopping.set,
        f"flushing the last fragment and waiting up to {CLOSE_TIMEOUT_S:g} s for its "
        "acknowledgements",
    )
    producer = Producer(
        args.stream,
        aws=aws,
        create_stream=args.create_stream,
        tags={"generator": "numpy_frames.py"},
        close_timeout_s=CLOSE_TIMEOUT_S,
    )
    started = time.monotonic()
    with stop.installed(), producer:  # leaving the block flushes and waits for the acks
        for index in range(round(args.seconds * args.fps)):
            image = render_frame(spec, index)  # any (height, width, 3) uint8 BGR image
            producer.put_frame(image, fps=args.fps)  # timestamp: now (or timestamp_ms=...)
            # keep to the frame rate, as a camera would
            if stopping.wait(max(0.0, started + (index + 1) / args.fps - time.monotonic())):
                break
    stats = producer.stats
    if stats is None:  # stopped before the first frame
        return EXIT_OK
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
        return send_frames(args)
    except KvsError as exc:
        return fail(PROGRAM, exc)
    except KeyboardInterrupt:  # Ctrl-C before the two-signal rule was in place
        return 130


if __name__ == "__main__":
    sys.exit(main())
