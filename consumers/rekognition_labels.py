#!/usr/bin/env python3
"""Label a Kinesis Video Streams stream with Amazon Rekognition and write JSON lines.

    python consumers/rekognition_labels.py --stream front-door --out labels.jsonl
    python consumers/rekognition_labels.py --stream front-door --fps 0.5 --min-confidence 0.8

One frame every ``1/--fps`` seconds goes to Rekognition DetectLabels (priced per image:
keep the rate low; at most 5 calls a second, throttling retried with back-off, and
frames that hardly changed since the last call are not sent again when
``--min-change`` is set). Each analysed frame gives one JSON line, as ``kvs consume
--model rekognition-labels`` writes it: fragment number, producer/server timestamps,
frame timestamp and the labels with their boxes. ``--min-confidence`` is 0..1, as
everywhere in kvs-toolkit. A count per label is printed at the end. The AWS options are
``kvs consume``'s (``--profile``, ``--region``, ``--endpoint-url`` for Kinesis Video;
Rekognition's endpoint is AWS's, or ``AWS_ENDPOINT_URL_REKOGNITION``). Ctrl-C (or
SIGTERM) stops after the fragment in progress and prints the summary; a second one
exits at once. Exit status: 0, 2 when it could not run (one line on stderr), 130/143
after a second signal.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from botocore.config import Config

from kvs_toolkit import KvsError, Pipeline, open_stream
from kvs_toolkit.analysis import Analyzer, RekognitionDetector
from kvs_toolkit.analysis.models import MinConfidence
from kvs_toolkit.cli.common import (
    EXIT_OK,
    GracefulStop,
    aws_from_args,
    configure_logging,
    fail,
)
from kvs_toolkit.cli.options import (
    add_live_stream_options,
    fraction,
    positive_float,
    positive_int,
    program_parser,
)

PROGRAM = "rekognition_labels"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = program_parser((__doc__ or "").split("\n\n")[0])
    add_live_stream_options(parser)
    parser.add_argument(
        "--fps", type=positive_float, default=1.0, help="frames sent a second (cost!; default 1)"
    )
    parser.add_argument(
        "--min-confidence", type=fraction, default=0.7, metavar="C",
        help="drop labels below this confidence (0..1, default 0.7)",
    )  # fmt: skip
    parser.add_argument(
        "--min-change", type=fraction, default=0.0, metavar="F",
        help="skip frames that changed less than this (0..1) since the last one sent",
    )  # fmt: skip
    parser.add_argument(
        "--out", default="-", metavar="FILE.jsonl", help="JSON lines (default stdout)"
    )
    parser.add_argument("--max-fragments", type=positive_int, metavar="N", help="stop after N")
    return parser.parse_args(argv)


def label(args: argparse.Namespace) -> int:
    aws = aws_from_args(args)
    aws.check()  # a missing region or credentials: one line, before any request
    # The detector retries throttling itself, with the rate cap in mind: botocore's
    # retries on top would multiply the calls.
    client = aws.client("rekognition", config=Config(retries={"total_max_attempts": 1}))
    rekognition = RekognitionDetector(
        "labels",
        client=client,
        min_confidence=args.min_confidence * 100,  # Rekognition's MinConfidence is a percent
        min_change=args.min_change,
    )
    detector = MinConfidence(rekognition, args.min_confidence)  # and checked on our side
    analyzer = Analyzer(detector, batch_size=1, stream_name=args.stream, keep_frames=False)
    with (
        open_stream(
            args.stream, aws=aws, start=args.start, fps=args.fps, idle_exit_s=args.idle_exit
        ) as stream,
        analyzer,
        contextlib.ExitStack() as files,
    ):
        out = sys.stdout if args.out == "-" else files.enter_context(Path(args.out).open("w"))
        pipeline = Pipeline(
            stream.source,
            decoder=stream.decoder,
            analyzer=analyzer,
            out=out,
            max_fragments=args.max_fragments,
        )
        stop = GracefulStop(PROGRAM, pipeline.stop, "stopping after the fragment in progress")
        with stop.installed():
            pipeline.run()
    counts = ", ".join(f"{k} {v}" for k, v in analyzer.stats.detections_by_label.most_common())
    calls = rekognition.stats
    print(
        f"kvs {PROGRAM}: {analyzer.stats.frames_analysed} frames, {calls.images_sent} "
        f"Rekognition calls (about ${calls.estimated_cost:.3f}); labels: {counts or 'none'}",
        file=sys.stderr,
    )
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(args)
    try:
        return label(args)
    except (KvsError, ValueError, OSError) as exc:  # ValueError: a bad --start
        return fail(PROGRAM, exc)
    except KeyboardInterrupt:  # Ctrl-C before the two-signal rule was in place
        return 130


if __name__ == "__main__":
    sys.exit(main())
