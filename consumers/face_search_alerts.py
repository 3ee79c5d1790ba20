#!/usr/bin/env python3
"""Follow a Rekognition Video face-search processor's results and print who was seen.

    python consumers/face_search_alerts.py --data-stream door-results
    python consumers/face_search_alerts.py --data-stream door-results --once \\
        --endpoint-url http://127.0.0.1:4567 --position door.position.json

Reads the processor's Kinesis data stream (every shard; ``kvs rekognition-processor
create ... --collection-id`` makes such a processor), joins each frame record to its KVS
fragment (ListFragments; ``--endpoint-url`` is Kinesis Video's, e.g. the local
emulator; the data stream's endpoint is AWS's, or ``AWS_ENDPOINT_URL_KINESIS``) and
prints one line per face: the frame's producer time, the stream and fragment, and the
matched face's ExternalImageId (or FaceId) with its similarity, or "unknown face"
below ``--min-similarity`` (0..1, as every confidence in kvs-toolkit). ``--position``
keeps the place in each shard across restarts. The AWS options are ``kvs consume``'s
(``--profile``, ``--region``, ``--endpoint-url``, ``--max-attempts``). Ctrl-C (or
SIGTERM) stops after the current pass and saves the position; a second one exits at
once. Exit status: 0, 2 when it could not run (one line on stderr), 130/143 after a
second signal.
"""

from __future__ import annotations

import argparse
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path

from botocore.config import Config

from kvs_toolkit import KvsError
from kvs_toolkit.analysis import FaceSearchResults, FragmentIndex, ResultsPosition
from kvs_toolkit.analysis.sinks import AnalysisRecord
from kvs_toolkit.cli.common import (
    EXIT_OK,
    GracefulStop,
    aws_from_args,
    configure_logging,
    fail,
)
from kvs_toolkit.cli.options import fraction, positive_float, program_parser

PROGRAM = "face_search_alerts"


def describe(record: AnalysisRecord, min_similarity: float) -> list[str]:
    """One line per face in ``record``; matches below ``min_similarity`` (0..1) count
    as unknown."""
    moment = datetime.fromtimestamp(record.frame_timestamp, timezone.utc).isoformat(
        timespec="milliseconds"
    )
    where = f"{record.stream_name or '?'} fragment {record.fragment_number}"
    lines = []
    for face in record.detections:
        name = face.label.removeprefix("face:") if face.label.startswith("face:") else None
        if name is not None and face.confidence >= min_similarity:
            lines.append(f"{moment}  {where}  {name} ({face.confidence:.0%})")
        else:
            lines.append(f"{moment}  {where}  unknown face")
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = program_parser((__doc__ or "").split("\n\n")[0])
    parser.add_argument("--data-stream", required=True, help="Kinesis data stream name or ARN")
    parser.add_argument("--position", type=Path, help="JSON file: resume here, save here")
    parser.add_argument(
        "--from", dest="initial", choices=("trim-horizon", "latest"), default="latest",
        help="where a shard without a position starts (default latest)",
    )  # fmt: skip
    parser.add_argument(
        "--min-similarity", type=fraction, default=0.8, metavar="C",
        help="matches below this similarity (0..1, default 0.8) are unknown faces",
    )  # fmt: skip
    parser.add_argument("--once", action="store_true", help="one pass, then exit")
    parser.add_argument(
        "--poll-interval", type=positive_float, default=1.0, metavar="S", help="default 1"
    )
    return parser.parse_args(argv)


def alerts(args: argparse.Namespace) -> int:
    aws = aws_from_args(args)
    aws.check()  # a missing region or credentials: one line, before any request
    attempts = aws.retry.max_attempts  # --max-attempts (0: botocore's default)
    config = Config(retries={"mode": "standard", "total_max_attempts": attempts or 3})
    reader = FaceSearchResults(
        args.data_stream,
        client=aws.client("kinesis", config=config),
        fragments=FragmentIndex(
            endpoint_url=aws.endpoint_url, region_name=aws.region, session=aws.session
        ),
        position=ResultsPosition.load(args.position) if args.position else None,
        initial="LATEST" if args.initial == "latest" else "TRIM_HORIZON",
    )

    def save(position: ResultsPosition) -> None:
        if args.position:
            position.save(args.position)

    stopping = threading.Event()
    stop = GracefulStop(PROGRAM, stopping.set, "stopping after the current pass")
    records = (
        reader.read()
        if args.once
        else reader.follow(poll_interval=args.poll_interval, stop=stopping, on_pass=save)
    )
    faces = 0
    try:
        with stop.installed():
            for record in records:
                for line in describe(record, args.min_similarity):
                    print(line, flush=True)
                    faces += 1
    finally:
        save(reader.position)
    print(f"kvs {PROGRAM}: {faces} faces", file=sys.stderr)
    if reader.stats.malformed:
        print(f"kvs {PROGRAM}: skipped {reader.stats.malformed} malformed records", file=sys.stderr)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(args)
    try:
        return alerts(args)
    except (KvsError, OSError, ValueError) as exc:  # a bad --position file
        return fail(PROGRAM, exc)
    except KeyboardInterrupt:  # Ctrl-C before the two-signal rule was in place
        return 130


if __name__ == "__main__":
    sys.exit(main())
