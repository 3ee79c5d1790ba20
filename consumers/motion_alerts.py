#!/usr/bin/env python3
"""Follow a Kinesis Video Streams stream and print a line when motion starts and stops.

    python consumers/motion_alerts.py --stream front-door
    python consumers/motion_alerts.py --stream test --endpoint-url http://127.0.0.1:4567 \\
        --start earliest --max-fragments 10                       # the local emulator

Every frame goes through OpenCV motion detection (a background model, no weights; the
first 25 frames only build the background). Motion "starts" on the first frame with a
moving region and "stops" after ``--quiet`` seconds of video without one. Frame times
are the producer's clock. ``--out`` also writes one JSON line per frame, as ``kvs
consume --model motion`` does. The AWS options are ``kvs consume``'s (``--profile``,
``--region``, ``--endpoint-url``, ``--max-attempts``). Ctrl-C (or SIGTERM) stops after
the fragment in progress and prints the summary; a second one exits at once. Exit
status: 0, 2 when it could not run (one line on stderr), 130/143 after a second signal.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import sys
from pathlib import Path

from kvs_toolkit import KvsError, Pipeline, open_stream
from kvs_toolkit.analysis import AnalysisRecord, Analyzer, MotionDetector
from kvs_toolkit.cli.common import (
    EXIT_OK,
    GracefulStop,
    aws_from_args,
    configure_logging,
    fail,
)
from kvs_toolkit.cli.options import (
    add_live_stream_options,
    positive_float,
    positive_int,
    program_parser,
)

PROGRAM = "motion_alerts"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = program_parser((__doc__ or "").split("\n\n")[0])
    add_live_stream_options(parser)
    parser.add_argument(
        "--fps", type=positive_float, default=10.0, help="frames analysed a second (default 10)"
    )
    parser.add_argument(
        "--min-area", type=positive_float, default=400.0, help="smallest box, pixels"
    )
    parser.add_argument(
        "--quiet", type=positive_float, default=2.0, help="seconds without motion = stopped"
    )
    parser.add_argument("--out", metavar="FILE.jsonl", help="also one JSON line per frame")
    parser.add_argument("--max-fragments", type=positive_int, metavar="N", help="stop after N")
    return parser.parse_args(argv)


class MotionEvents:
    """Turns per-frame detections into "started" / "stopped" lines."""

    def __init__(self, quiet_s: float) -> None:
        self.quiet_s = quiet_s
        self.moving_since: float | None = None
        self.last_motion = 0.0
        self.events = 0

    def __call__(self, record: AnalysisRecord) -> None:
        now = record.frame_timestamp
        when = dt.datetime.fromtimestamp(now, dt.timezone.utc).isoformat()
        if record.detections:
            self.last_motion = now
            if self.moving_since is None:
                self.moving_since = now
                self.events += 1
                print(f"{when}  motion started  {len(record.detections)} region(s)", flush=True)
        elif self.moving_since is not None and now - self.last_motion >= self.quiet_s:
            duration = self.last_motion - self.moving_since
            print(f"{when}  motion stopped  after {duration:.1f} s", flush=True)
            self.moving_since = None


def follow(args: argparse.Namespace) -> int:
    aws = aws_from_args(args)
    aws.check()  # a missing region or credentials: one line, before any request
    events = MotionEvents(args.quiet)
    # motion needs no colour: gray frames are a view of the decoded luma plane
    analyzer = Analyzer(
        MotionDetector(min_area=args.min_area), batch_size=1, stream_name=args.stream
    )
    with (
        open_stream(
            args.stream,
            aws=aws,
            start=args.start,
            fps=args.fps,
            format="gray",
            idle_exit_s=args.idle_exit,
        ) as stream,
        analyzer,
        contextlib.ExitStack() as files,
    ):
        out = files.enter_context(Path(args.out).open("w")) if args.out else None
        pipeline = Pipeline(
            stream.source,
            decoder=stream.decoder,
            analyzer=analyzer,
            out=out,
            on_record=events,
            max_fragments=args.max_fragments,
        )
        stop = GracefulStop(PROGRAM, pipeline.stop, "stopping after the fragment in progress")
        with stop.installed():
            result = pipeline.run()
    if events.moving_since is not None:
        print(f"motion still going at the end ({events.last_motion - events.moving_since:.1f} s)")
    print(
        f"kvs {PROGRAM}: {result.frames} frames in {result.fragments} fragments, "
        f"{events.events} motion events",
        file=sys.stderr,
    )
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(args)
    try:
        return follow(args)
    except (KvsError, ValueError, OSError) as exc:  # ValueError: a bad --start
        return fail(PROGRAM, exc)
    except KeyboardInterrupt:  # Ctrl-C before the two-signal rule was in place
        return 130


if __name__ == "__main__":
    sys.exit(main())
