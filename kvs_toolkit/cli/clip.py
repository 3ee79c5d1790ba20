"""``kvs clip --stream NAME --start TIME --end TIME -o FILE.mp4``: GetClip to a file.

The service puts at most 24 hours, 200 fragments or 100 MB in one clip
(docs/kvs-wire.md "Archived media"); when the range holds more, the clip is written,
the command says where it stops and how to fetch the rest, and exits 1.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import logging
import threading
from collections.abc import Iterator

from kvs_toolkit.cli.common import (
    EXIT_INCOMPLETE,
    EXIT_OK,
    GracefulStop,
    StatusLine,
    aws_from_args,
    fail,
)
from kvs_toolkit.errors import ConfigurationError

log = logging.getLogger(__name__)


def timestamp(text: str) -> dt.datetime:
    """``--start``/``--end``: ISO 8601 (UTC unless it says) or epoch seconds."""
    from kvs_toolkit.consumer.selectors import parse_timestamp

    try:
        return parse_timestamp(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an ISO 8601 time (2026-11-26T08:00:00Z) or epoch seconds: {text!r}"
        ) from None


def iso(when: dt.datetime) -> str:
    return (
        when.astimezone(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def add_range_arguments(parser: argparse.ArgumentParser) -> None:
    """``--stream``, ``--start``, ``--end`` and ``--timestamps`` (kvs clip and kvs images)."""
    parser.add_argument("--stream", required=True, help="stream name")
    parser.add_argument(
        "--start", required=True, type=timestamp, metavar="TIME", help="ISO 8601 or epoch seconds"
    )
    parser.add_argument(
        "--end", required=True, type=timestamp, metavar="TIME", help="ISO 8601 or epoch seconds"
    )
    parser.add_argument(
        "--timestamps",
        choices=("producer", "server"),
        default="producer",
        help="which timestamps the range is in: the producer's (default) or the service's "
        "arrival times",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_range_arguments(parser)
    parser.add_argument(
        "-o", "--output", required=True, metavar="FILE", help="the MP4 file to write"
    )


def _megabytes(count: int) -> str:
    return f"{count / 1e6:.1f} MB"


@contextlib.contextmanager
def writing_to(output: str) -> Iterator[None]:
    """A file that cannot be written is one line and exit 2, like any bad input."""
    try:
        yield
    except OSError as exc:
        where = exc.filename or output
        raise ConfigurationError(f"cannot write {where}: {exc.strerror or exc}") from exc


def run(args: argparse.Namespace) -> int:
    from kvs_toolkit.archive import save_clip

    aws = aws_from_args(args)
    aws.check()
    status = StatusLine()
    stop = threading.Event()
    graceful = GracefulStop("clip", stop.set, "stopping the download")
    with graceful.installed(), writing_to(args.output):
        result = save_clip(
            aws,
            args.stream,
            args.start,
            args.end,
            args.output,
            selector="SERVER_TIMESTAMP" if args.timestamps == "server" else "PRODUCER_TIMESTAMP",
            progress=lambda written: status.show(f"{args.output}: {_megabytes(written)}"),
            stop=stop,
        )
    if result.stopped:
        return fail(
            "clip",
            f"stopped after {result.bytes_written} bytes: {args.output} not written",
            EXIT_INCOMPLETE,
        )
    status.show(
        f"{args.output}: {result.bytes_written} bytes ({_megabytes(result.bytes_written)}, "
        f"{result.content_type})"
        + (
            f", {result.fragments_in_range} fragments in the range"
            if result.fragments_in_range is not None
            else ""
        ),
        final=True,
    )
    if result.truncated_at is not None:
        return fail(
            "clip",
            f"the range holds more than one clip can (200 fragments or 100 MB): "
            f"{args.output} stops before {iso(result.truncated_at)}; run again with "
            f"--start {iso(result.truncated_at)} for the rest",
            EXIT_INCOMPLETE,
        )
    return EXIT_OK
