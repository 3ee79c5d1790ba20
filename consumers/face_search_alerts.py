#!/usr/bin/env python3
"""Follow a Rekognition Video face-search processor's results and print who was seen.

    python consumers/face_search_alerts.py --data-stream door-results
    python consumers/face_search_alerts.py --data-stream door-results --once \\
        --kvs-endpoint-url http://127.0.0.1:4567 --position door.position.json

Reads the processor's Kinesis data stream (every shard; ``kvs rekognition-processor
create ... --collection-id`` makes such a processor), joins each frame record to its KVS
fragment (ListFragments; ``--kvs-endpoint-url`` for the local emulator) and prints one
line per face: the frame's producer time, the stream and fragment, and the matched
face's ExternalImageId (or FaceId) with its similarity, or "unknown face".
``--position`` keeps the place in each shard across restarts. Ctrl-C stops.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from kvs_toolkit.analysis import FaceSearchResults, FragmentIndex, ResultsPosition
from kvs_toolkit.analysis.sinks import AnalysisRecord
from kvs_toolkit.errors import KvsError


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--data-stream", required=True, help="Kinesis data stream name or ARN")
    parser.add_argument("--region", default=None)
    parser.add_argument("--kvs-endpoint-url", help="KVS endpoint for ListFragments")
    parser.add_argument("--position", type=Path, help="JSON file: resume here, save here")
    parser.add_argument(
        "--from",
        dest="initial",
        choices=("trim-horizon", "latest"),
        default="latest",
        help="where a shard without a position starts",
    )
    parser.add_argument("--min-similarity", type=float, default=80.0, help="percent")
    parser.add_argument("--once", action="store_true", help="one pass, then exit")
    parser.add_argument("--poll-interval", type=float, default=1.0, help="seconds")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    try:
        reader = FaceSearchResults(
            args.data_stream,
            region_name=args.region,
            fragments=FragmentIndex(endpoint_url=args.kvs_endpoint_url, region_name=args.region),
            position=ResultsPosition.load(args.position) if args.position else None,
            initial="LATEST" if args.initial == "latest" else "TRIM_HORIZON",
        )

        def save(position: ResultsPosition) -> None:
            if args.position:
                position.save(args.position)

        records = (
            reader.read()
            if args.once
            else reader.follow(poll_interval=args.poll_interval, on_pass=save)
        )
        try:
            for record in records:
                for line in describe(record, args.min_similarity / 100):
                    print(line, flush=True)
        finally:
            save(reader.position)
    except KvsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    if reader.stats.malformed:
        print(f"skipped {reader.stats.malformed} malformed records", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
