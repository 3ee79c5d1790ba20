#!/usr/bin/env python3
"""Stream a USB/V4L2 webcam into a Kinesis Video Streams stream.

Frames are captured through OpenCV (V4L2) and encoded to H.264 with the hardware
encoder when one opens (``h264_v4l2m2m`` on a Raspberry Pi 4 and many ARM boards), else
libx264 in its low-latency setting, with a key frame at every fragment start.

    python producers/webcam.py --stream desk-cam --width 1280 --height 720 --fps 30
    python producers/webcam.py --device /dev/video2 --stream test \\
        --endpoint-url http://127.0.0.1:4567 --create-stream      # the local emulator

The same as ``kvs produce camera:0 --stream desk-cam ...``, written out as a program to
copy from, with the same options (``--profile``, ``--region``, ``--endpoint-url``,
``--max-attempts``, ``--iot-*`` for the AWS IoT credentials provider). Ctrl-C (or
SIGTERM, from systemd) flushes the last fragment and waits for its acknowledgement; a
second one exits at once. Exit status: 0 when everything sent was acknowledged, 1 when
something was not, 2 when it could not run, e.g. a camera that does not open (one line
on stderr), 130/143 after a second signal.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys

# OpenCV's own warnings ("can't open camera by index") would repeat our one-line error
# in its words; set before cv2 is first imported (the camera source imports it lazily).
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")

from kvs_toolkit import ConfigurationError, KvsError, Producer
from kvs_toolkit.cli.common import EXIT_INCOMPLETE, EXIT_OK, StatusLine, configure_logging, fail
from kvs_toolkit.cli.options import (
    add_iot_arguments,
    parse_tags,
    positive_float,
    positive_int,
    positive_seconds,
    producer_aws_from_args,
    program_parser,
    stop_event_on_signals,
)
from kvs_toolkit.errors import SourceError
from kvs_toolkit.producer.encoder import ENCODERS
from kvs_toolkit.producer.sources import CameraSource, SourceOptions

PROGRAM = "webcam"
CLOSE_TIMEOUT_S = 30.0

_V4L2_DEVICE = re.compile(r"/dev/video(\d+)")


def camera_device(spec: str) -> int | str:
    """``camera:0`` / ``0`` / ``/dev/video0`` -> 0 (opened through V4L2 by index);
    any other path or URL is handed to OpenCV as it is."""
    if spec.startswith("camera:"):
        spec = spec.removeprefix("camera:") or "0"
    if spec.isdigit():
        return int(spec)
    if spec.startswith("/dev/"):
        if not os.path.exists(spec):
            raise SourceError(f"cannot open camera {spec}: no such device")
        match = _V4L2_DEVICE.fullmatch(os.path.realpath(spec))
        if match:  # a /dev/v4l/by-id/... link resolves to /dev/videoN
            return int(match.group(1))
    return spec


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = program_parser((__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--device", default="camera:0",
        help="camera:N, N or /dev/videoN (default camera:0, i.e. /dev/video0)",
    )  # fmt: skip
    parser.add_argument("--stream", required=True, help="stream name")
    parser.add_argument("--width", type=positive_int, help="ask the camera for this width")
    parser.add_argument("--height", type=positive_int, help="ask the camera for this height")
    parser.add_argument("--fps", type=positive_float, help="ask the camera for this frame rate")
    parser.add_argument(
        "--clock", choices=("arrival", "fps"), default="arrival",
        help="frame timestamps: the wall clock at capture (default), or evenly spaced at "
        "--fps from the first frame",
    )  # fmt: skip
    parser.add_argument("--codec", choices=("h264", "h265"), default="h264")
    parser.add_argument(
        "--encoder", choices=("auto", *ENCODERS), default="auto",
        help="auto (default): the hardware encoder when it opens, else libx264/libx265",
    )  # fmt: skip
    parser.add_argument("--bitrate", type=positive_int, help="bit/s (default: constant quality)")
    parser.add_argument(
        "--fragment-duration", type=positive_seconds, default=2.0, metavar="SECONDS",
        help="fragment length and key-frame interval (default 2)",
    )  # fmt: skip
    parser.add_argument(
        "--tag", action="append", metavar="KEY=VALUE", help="persistent fragment metadata"
    )
    parser.add_argument(
        "--duration", type=positive_seconds, metavar="SECONDS", help="stop after this long"
    )
    parser.add_argument("--create-stream", action="store_true")
    add_iot_arguments(parser)
    return parser.parse_args(argv)


async def stream_webcam(args: argparse.Namespace) -> int:
    if args.clock == "fps" and args.fps is None:
        raise ConfigurationError("--clock fps needs --fps")
    tags = parse_tags(args.tag) if args.tag else {"source": f"webcam {args.device}"}
    aws = producer_aws_from_args(args)  # a missing region or credentials: fail now
    options = SourceOptions(
        fps=args.fps,
        width=args.width,
        height=args.height,
        codec=args.codec,
        encoder=args.encoder,
        bitrate=args.bitrate,
        fragment_duration_ms=round(args.fragment_duration * 1000),
        clock=args.clock,
    )
    source = CameraSource(camera_device(args.device), options)  # opens the camera
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
        fragment_duration_ms=options.fragment_duration_ms,
        close_timeout_s=CLOSE_TIMEOUT_S,
        progress=lambda progress: status.show(progress.line(), final=progress.done),
        stop=stop,
    )
    stats = await producer.upload_async(source, duration_s=args.duration)
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
        return asyncio.run(stream_webcam(args))
    except (KvsError, argparse.ArgumentTypeError) as exc:
        return fail(PROGRAM, exc)
    except KeyboardInterrupt:  # Ctrl-C before the two-signal rule was in place
        return 130


if __name__ == "__main__":
    sys.exit(main())
