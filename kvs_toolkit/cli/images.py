"""``kvs images --stream NAME --start TIME --end TIME -o DIR``: GetImages to files.

One file per sampling time, named ``STREAM_YYYYMMDDTHHMMSS.mmmZ.jpg`` (or ``.png``).
Sampling times without an image are counted: NO_MEDIA (nothing stored then: gaps are
normal, exit 0) and MEDIA_ERROR (the media there could not be made into an image:
exit 1). A range with no media at all is an error (exit 2).
"""

from __future__ import annotations

import argparse
import threading
from typing import TYPE_CHECKING

from kvs_toolkit.cli import options
from kvs_toolkit.cli.clip import add_range_arguments, writing_to
from kvs_toolkit.cli.common import (
    EXIT_INCOMPLETE,
    EXIT_OK,
    GracefulStop,
    StatusLine,
    aws_from_args,
    fail,
)

if TYPE_CHECKING:
    from kvs_toolkit.archive import ImagesResult


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_range_arguments(parser)
    parser.add_argument(
        "--interval-ms",
        type=options.positive_int,
        default=3000,
        metavar="MS",
        help="one image every MS milliseconds (at least 200; default 3000)",
    )
    parser.add_argument(
        "--format", choices=("JPEG", "PNG"), type=str.upper, default="JPEG", help="default JPEG"
    )
    parser.add_argument(
        "--quality", type=options.positive_int, metavar="1-100", help="JPEG quality"
    )
    parser.add_argument(
        "--width",
        type=options.positive_int,
        help="width in pixels (max 3840; default: the video's)",
    )
    parser.add_argument(
        "--height",
        type=options.positive_int,
        help="height in pixels (max 2160; default: the video's)",
    )
    parser.add_argument(
        "-o", "--output", required=True, metavar="DIR", help="folder for the images (created)"
    )


def run(args: argparse.Namespace) -> int:
    from kvs_toolkit.archive import save_images

    aws = aws_from_args(args)
    aws.check()
    status = StatusLine()

    def show(result: ImagesResult, *, final: bool = False) -> None:
        if not result.written and not final:
            return  # a range with no media at all ends in one error line, nothing else
        status.show(
            f"{args.output}: {len(result.written)} images ({result.bytes_written} bytes), "
            f"missing: {result.no_media} NO_MEDIA, {result.media_error} MEDIA_ERROR",
            final=final,
        )

    stop = threading.Event()
    graceful = GracefulStop("images", stop.set, "stopping after the current image")
    with graceful.installed(), writing_to(args.output):
        result = save_images(
            aws,
            args.stream,
            args.start,
            args.end,
            args.output,
            progress=show,
            stop=stop,
            interval_ms=args.interval_ms,
            image_format=args.format,
            width=args.width,
            height=args.height,
            jpeg_quality=args.quality,
            selector="SERVER_TIMESTAMP" if args.timestamps == "server" else "PRODUCER_TIMESTAMP",
        )
    show(result, final=True)
    if result.stopped:
        return fail("images", "stopped before the end of the range", EXIT_INCOMPLETE)
    if result.media_error:
        return fail(
            "images",
            f"{result.media_error} sampling times had media that could not be made into an "
            "image (MEDIA_ERROR)",
            EXIT_INCOMPLETE,
        )
    return EXIT_OK
