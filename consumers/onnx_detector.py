#!/usr/bin/env python3
"""Run a local ONNX object detector (a YOLO export) on a Kinesis Video Streams stream.

    pip install onnxruntime
    python consumers/onnx_detector.py --stream front-door --model yolov8n.onnx \\
        --labels coco.names --fps 5 --out detections.jsonl

Frames are decoded at ``--fps``, letterboxed to the network's input, run with ONNX
Runtime on the CPU, and the boxes (non-maximum suppressed, ``--min-confidence`` 0..1)
are written as one JSON line per analysed frame with the fragment number and
timestamps, as ``kvs consume --model onnx:PATH`` writes them; a count per label is
printed at the end. Nothing leaves the machine except the GetMedia requests. The AWS
options are ``kvs consume``'s (``--profile``, ``--region``, ``--endpoint-url``,
``--max-attempts``). Ctrl-C (or SIGTERM) stops after the fragment in progress and
prints the summary; a second one exits at once. Exit status: 0, 2 when it could not
run (one line on stderr), 130/143 after a second signal.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from kvs_toolkit import KvsError, Pipeline, open_stream
from kvs_toolkit.analysis import Analyzer
from kvs_toolkit.analysis.models import model_detector
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

PROGRAM = "onnx_detector"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = program_parser((__doc__ or "").split("\n\n")[0])
    add_live_stream_options(parser)
    parser.add_argument("--model", required=True, metavar="PATH", help="the .onnx file")
    parser.add_argument("--labels", metavar="FILE", help="class names, one a line")
    parser.add_argument(
        "--fps", type=positive_float, default=5.0, help="frames analysed a second (default 5)"
    )
    parser.add_argument(
        "--min-confidence", type=fraction, default=0.25, metavar="C",
        help="drop detections below this confidence (0..1, default 0.25)",
    )  # fmt: skip
    parser.add_argument(
        "--out", default="-", metavar="FILE.jsonl", help="JSON lines (default stdout)"
    )
    parser.add_argument("--max-fragments", type=positive_int, metavar="N", help="stop after N")
    return parser.parse_args(argv)


def detect(args: argparse.Namespace) -> int:
    aws = aws_from_args(args)
    aws.check()  # a missing region or credentials: one line, before any request
    # the detector registry's "onnx" detector, as kvs consume --model onnx:PATH makes it
    detector = model_detector(
        f"onnx:{args.model.removeprefix('onnx:')}",
        min_confidence=args.min_confidence,
        options={"labels": args.labels} if args.labels else None,
    )
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
    stats = analyzer.stats
    counts = ", ".join(f"{k} {v}" for k, v in stats.detections_by_label.most_common())
    p95 = stats.latency_p95
    print(
        f"kvs {PROGRAM}: {stats.frames_analysed} frames, latency p95 "
        f"{'-' if p95 is None else f'{p95:.0f} ms'}; labels: {counts or 'none'}",
        file=sys.stderr,
    )
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(args)
    try:
        return detect(args)
    except (KvsError, ValueError, OSError) as exc:  # ValueError: a bad --start
        return fail(PROGRAM, exc)
    except KeyboardInterrupt:  # Ctrl-C before the two-signal rule was in place
        return 130


if __name__ == "__main__":
    sys.exit(main())
