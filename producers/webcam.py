#!/usr/bin/env python3
"""Stream a USB/V4L2 webcam into a Kinesis Video Streams stream.

Frames are captured through OpenCV (V4L2) and encoded to H.264 with the hardware
encoder when one opens (``h264_v4l2m2m`` on a Raspberry Pi 4 and many ARM boards), else
libx264 in its low-latency setting, with a key frame at every fragment start.

    python producers/webcam.py --stream desk-cam --width 1280 --height 720 --fps 30
    python producers/webcam.py --device /dev/video2 --stream test \\
        --endpoint-url http://127.0.0.1:4567 --create-stream      # the local emulator

The same as ``kvs produce camera:0 --stream desk-cam ...``, written out as a program to
copy from. Credentials come from the usual AWS chain, or ``--iot-*`` for the AWS IoT
credentials provider. Ctrl-C (or SIGTERM, from systemd) stops after the last fragment
is acknowledged. Exit status: 0 when everything sent was acknowledged, 1 when
something was not, 2 on an error such as a camera that does not open (one line on
stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import sys

# OpenCV's own warnings ("can't open camera by index") would repeat our one-line error
# in its words; set before cv2 is first imported (the camera source imports it lazily).
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")

from kvs_toolkit.errors import KvsError, SourceError
from kvs_toolkit.producer.credentials import (
    add_credential_arguments,
    credentials_from_args,
    region_from_args,
    session_from_args,
)
from kvs_toolkit.producer.encoder import ENCODERS
from kvs_toolkit.producer.run import StatusLine, parse_tags, produce, stop_on_signals
from kvs_toolkit.producer.sources import CameraSource, SourceOptions
from kvs_toolkit.producer.uploader import UploadStats

log = logging.getLogger("webcam")

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
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--device",
        default="camera:0",
        help="camera:N, N or /dev/videoN (default camera:0, i.e. /dev/video0)",
    )
    parser.add_argument("--stream", required=True, help="stream name")
    parser.add_argument("--endpoint-url", help="control plane, e.g. the local emulator")
    parser.add_argument("--region", default=None, help="default: the profile's, or us-east-1")
    parser.add_argument("--width", type=int, help="ask the camera for this width")
    parser.add_argument("--height", type=int, help="ask the camera for this height")
    parser.add_argument("--fps", type=float, help="ask the camera for this frame rate")
    parser.add_argument(
        "--clock",
        choices=("arrival", "fps"),
        default="arrival",
        help="frame timestamps: the wall clock at capture (default), or evenly spaced at "
        "--fps from the first frame",
    )
    parser.add_argument("--codec", choices=("h264", "h265"), default="h264")
    parser.add_argument(
        "--encoder",
        choices=("auto", *ENCODERS),
        default="auto",
        help="auto (default): the hardware encoder when it opens, else libx264/libx265",
    )
    parser.add_argument("--bitrate", type=int, help="bit/s (default: constant quality)")
    parser.add_argument(
        "--fragment-duration",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="fragment length and key-frame interval (default 2)",
    )
    parser.add_argument(
        "--tag", action="append", metavar="KEY=VALUE", help="persistent fragment metadata"
    )
    parser.add_argument("--duration", type=float, metavar="SECONDS", help="stop after this long")
    parser.add_argument("--create-stream", action="store_true")
    add_credential_arguments(parser)
    return parser.parse_args(argv)


async def stream_webcam(args: argparse.Namespace) -> UploadStats:
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
    if args.clock == "fps" and args.fps is None:
        raise SourceError("--clock fps needs --fps")
    source = CameraSource(camera_device(args.device), options)
    session = session_from_args(args)
    credentials = credentials_from_args(args, session)
    stop = stop_on_signals()
    return await produce(
        source,
        args.endpoint_url,
        args.stream,
        tags=parse_tags(args.tag) if args.tag else {"source": f"webcam {args.device}"},
        credentials=credentials,
        region=region_from_args(args, session),
        fragment_duration_ms=options.fragment_duration_ms,
        create_stream=args.create_stream,
        progress=StatusLine(every_s=5.0),
        stop=stop,
        duration_s=args.duration,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("botocore").setLevel(logging.WARNING)  # its INFO is chatty
    try:
        stats = asyncio.run(stream_webcam(args))
    except (KvsError, argparse.ArgumentTypeError) as exc:
        print(f"webcam: {exc}", file=sys.stderr)
        return 2
    print(
        f"webcam: {stats.frames} frames in {stats.fragments} fragments, {stats.acked} acknowledged",
        file=sys.stderr,
    )
    if not stats.all_acknowledged:
        print(
            f"webcam: not everything was acknowledged ({stats.dropped_fragments} dropped, "
            f"{stats.unacknowledged} unacknowledged, errors {stats.errors})",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
