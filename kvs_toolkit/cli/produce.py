"""``kvs produce SOURCE --stream NAME``: upload until the source ends or Ctrl-C.

Nothing heavy is imported to build the parser: ``kvs produce -`` on a Raspberry Pi
loads neither PyAV nor OpenCV (the source module imports them only for the sources
that need them).
"""

from __future__ import annotations

import argparse
import asyncio
import logging

from kvs_toolkit.cli import options
from kvs_toolkit.cli.common import EXIT_INCOMPLETE, EXIT_OK, StatusLine, fail
from kvs_toolkit.producer.defaults import DEFAULT_INTERVAL_S as DEFAULT_METRICS_INTERVAL_S
from kvs_toolkit.producer.defaults import DEFAULT_RETENTION_HOURS
from kvs_toolkit.producer.encoder import ENCODERS
from kvs_toolkit.producer.fragmenter import DEFAULT_BUFFER_BYTES, DEFAULT_FRAGMENT_DURATION_MS
from kvs_toolkit.producer.spool import DEFAULT_SPOOL_MAX_BYTES

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``kvs produce`` (the global options come from the main parser)."""
    parser.add_argument(
        "source",
        help="video file, URL (rtsp://, rtmp://, http://), camera:N, or - for an "
        "H.264/H.265 Annex-B stream on stdin",
    )
    parser.add_argument("--stream", required=True, help="stream name")
    parser.add_argument(
        "--tag",
        action="append",
        metavar="KEY=VALUE",
        help="persistent fragment metadata (repeatable)",
    )
    parser.add_argument(
        "--fragment-duration",
        type=float,
        default=DEFAULT_FRAGMENT_DURATION_MS / 1000,
        metavar="SECONDS",
        help="fragment length; also the key-frame interval when encoding (default 2.0)",
    )
    pacing = parser.add_mutually_exclusive_group()
    pacing.add_argument(
        "--realtime",
        dest="realtime",
        action="store_true",
        default=True,
        help="send a file at its frame rate (the default)",
    )
    pacing.add_argument(
        "--fast",
        "--no-realtime",
        dest="realtime",
        action="store_false",
        help="send a file as fast as the service acknowledges it, not at its frame rate "
        "(for stdin: the pipe carries a recording, not a camera; automatic when stdin "
        "is a file)",
    )
    parser.add_argument("--loop", action="store_true", help="replay the file forever")
    parser.add_argument(
        "--start-time",
        type=options.parse_start_time,
        metavar="TIME",
        help="stamp a file's first frame with this time instead of now: ISO 8601 "
        "(2026-11-26T08:00:00Z) or 'source' for the file's creation_time (upload a "
        "recording with the time it was made)",
    )
    parser.add_argument(
        "--fps",
        type=float,
        help="camera frame rate; for stdin, timestamps at this rate instead of arrival time",
    )
    parser.add_argument(
        "--codec",
        choices=("h264", "h265"),
        default="h264",
        help="codec of the stdin stream, and of the encoder when encoding (default h264)",
    )
    parser.add_argument(
        "--encoder",
        choices=("auto", *ENCODERS),
        default="auto",
        help="auto: the hardware encoder when it opens, else libx264/libx265",
    )
    parser.add_argument("--bitrate", type=int, help="encoder bitrate in bit/s (default: CRF)")
    parser.add_argument("--width", type=int, help="camera width")
    parser.add_argument("--height", type=int, help="camera height")
    parser.add_argument("--no-audio", dest="audio", action="store_false", help="drop audio")
    parser.add_argument(
        "--create-stream", action="store_true", help="create the stream if it does not exist"
    )
    parser.add_argument(
        "--retention-hours",
        type=int,
        default=DEFAULT_RETENTION_HOURS,
        help="retention of a stream created with --create-stream (default 24)",
    )
    parser.add_argument(
        "--kms-key-id",
        metavar="KEY",
        help="KMS key (id, ARN or alias) of a stream created with --create-stream "
        "(default: the service's key)",
    )
    parser.add_argument(
        "--duration",
        type=options.positive_seconds,
        metavar="SECONDS",
        help="stop gracefully after this long (flush and wait for the last acks)",
    )
    parser.add_argument(
        "--close-timeout",
        type=options.positive_seconds,
        default=30.0,
        metavar="SECONDS",
        help="at the end, how long to wait for the last acks (default 30); what is not "
        "acknowledged by then stays in --spool-dir for the next run",
    )
    parser.add_argument(
        "--buffer-max-bytes",
        type=options.parse_size,
        default=DEFAULT_BUFFER_BYTES,
        metavar="SIZE",
        help="memory for unacknowledged fragments; when full the oldest is dropped (default 64M)",
    )
    parser.add_argument(
        "--spool-dir",
        metavar="DIR",
        help="also keep unacknowledged fragments in this directory: through long outages "
        "and across restarts (sent first when the producer starts again)",
    )
    parser.add_argument(
        "--spool-max-bytes",
        type=options.parse_size,
        default=DEFAULT_SPOOL_MAX_BYTES,
        metavar="SIZE",
        help="bound of --spool-dir; when full the oldest fragment is dropped (default 1G)",
    )
    parser.add_argument(
        "--cloudwatch-namespace",
        metavar="NAMESPACE",
        help="publish upload metrics to CloudWatch in this namespace "
        "(needs cloudwatch:PutMetricData)",
    )
    parser.add_argument(
        "--metrics-interval",
        type=options.positive_seconds,
        default=DEFAULT_METRICS_INTERVAL_S,
        metavar="SECONDS",
        help="CloudWatch metrics period (default 60)",
    )
    parser.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="no status line while running (the summary is still printed)",
    )
    options.add_iot_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Upload; exit 0 only when everything produced was acknowledged."""
    from kvs_toolkit.errors import SourceError
    from kvs_toolkit.producer.run import Progress, produce
    from kvs_toolkit.producer.sources import SourceOptions, open_source

    try:
        tags = options.parse_tags(args.tag)
    except argparse.ArgumentTypeError as exc:
        return fail("produce", exc)
    fragment_ms = round(args.fragment_duration * 1000)
    if fragment_ms <= 0:
        raise SourceError("--fragment-duration must be positive")
    source_options = SourceOptions(
        realtime=args.realtime,
        loop=args.loop,
        fps=args.fps,
        codec=args.codec,
        encoder=args.encoder,
        bitrate=args.bitrate,
        audio=args.audio,
        width=args.width,
        height=args.height,
        fragment_duration_ms=fragment_ms,
        start_time_ms=args.start_time,
    )
    aws = options.producer_aws_from_args(args)
    source = open_source(args.source, source_options)
    status = StatusLine()

    def show(progress: Progress) -> None:
        if args.progress or progress.done:  # the summary line is always printed
            status.show(progress.line(), final=progress.done)

    async def main() -> int:
        stop = options.stop_event_on_signals(
            "kvs produce",
            f"flushing the last fragment and waiting up to {args.close_timeout:g} s for its "
            "acknowledgements",
        )
        stats = await produce(
            source,
            stream_name=args.stream,
            aws=aws,
            tags=tags,
            fragment_duration_ms=fragment_ms,
            create_stream=args.create_stream,
            retention_hours=args.retention_hours,
            kms_key_id=args.kms_key_id,
            progress=show,
            stop=stop,
            close_timeout_s=args.close_timeout,
            duration_s=args.duration,
            buffer_bytes=args.buffer_max_bytes,
            spool_dir=args.spool_dir,
            spool_max_bytes=args.spool_max_bytes,
            cloudwatch_namespace=args.cloudwatch_namespace,
            metrics_interval_s=args.metrics_interval,
        )
        if stats.all_acknowledged:
            return EXIT_OK
        log.warning(
            "not everything was acknowledged: %d fragments dropped, %d unacknowledged%s, "
            "errors by id: %s",
            stats.dropped_fragments,
            stats.unacknowledged,
            " (kept in the spool)" if stats.spool_fragments else "",
            stats.errors,
        )
        return EXIT_INCOMPLETE

    return asyncio.run(main())
