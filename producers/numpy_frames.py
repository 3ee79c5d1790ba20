#!/usr/bin/env python3
"""Send frames your own code makes (numpy images) to a stream: the put_frame API.

Any per-frame pipeline fits here: a robot's annotated camera view, a render, a
simulation. Each image is encoded to H.264 (libx264 low-latency, or the hardware
encoder when there is one) with a key frame every fragment.

    python producers/numpy_frames.py --stream synthetic --seconds 20
    python producers/numpy_frames.py --stream synthetic \\
        --endpoint-url http://127.0.0.1:4567 --create-stream      # the local emulator

Ctrl-C (or SIGTERM) stops making frames, flushes the last fragment and waits for its
acknowledgement. Exit status: 0 when everything sent was acknowledged, 1 when
something was not, 2 on an error (one line on stderr).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from types import FrameType

from kvs_toolkit.errors import KvsError
from kvs_toolkit.producer.credentials import (
    add_credential_arguments,
    credentials_from_args,
    region_from_args,
    session_from_args,
)
from kvs_toolkit.producer.run import ProducerThread
from kvs_toolkit.producer.sources import NumpySource, SourceOptions
from kvs_toolkit.samples import SampleSpec, render_frame


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stream", required=True)
    parser.add_argument("--endpoint-url")
    parser.add_argument("--region", default=None)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--create-stream", action="store_true")
    add_credential_arguments(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("botocore").setLevel(logging.WARNING)  # its INFO is chatty

    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # The first Ctrl-C / SIGTERM ends the frames (then flush); a second one kills.
        print(f"numpy_frames: {signal.Signals(signum).name}: flushing", file=sys.stderr)
        stopping.set()
        signal.signal(signum, signal.SIG_DFL)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)
    try:
        session = session_from_args(args)
        credentials = credentials_from_args(args, session)
    except KvsError as exc:
        print(f"numpy_frames: {exc}", file=sys.stderr)
        return 2
    spec = SampleSpec(width=640, height=360, fps=args.fps)
    source = NumpySource(fps=args.fps, options=SourceOptions(fragment_duration_ms=2000))
    producer = ProducerThread(
        source,
        args.endpoint_url,
        args.stream,
        credentials=credentials,
        region=region_from_args(args, session),
        create_stream=args.create_stream,
        tags={"generator": "numpy_frames.py"},
    )
    producer.start()
    started = time.monotonic()
    try:
        for index in range(round(args.seconds * args.fps)):
            image = render_frame(spec, index)  # any (height, width, 3) uint8 BGR image
            source.put_frame(image)  # timestamp: now (or pass timestamp_ms=...)
            # keep to the frame rate, as a camera would
            time.sleep(max(0.0, started + (index + 1) / args.fps - time.monotonic()))
            if stopping.is_set() or not producer.is_alive():
                break  # stopped, or the upload failed (result() below says why)
    finally:
        source.finish()
    try:
        stats = producer.result()
    except KvsError as exc:
        print(f"numpy_frames: {exc}", file=sys.stderr)
        return 2
    print(
        f"numpy_frames: {stats.frames} frames in {stats.fragments} fragments, "
        f"{stats.acked} acknowledged",
        file=sys.stderr,
    )
    if not stats.all_acknowledged:
        print(
            f"numpy_frames: not everything was acknowledged ({stats.dropped_fragments} "
            f"dropped, {stats.unacknowledged} unacknowledged, errors {stats.errors})",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
