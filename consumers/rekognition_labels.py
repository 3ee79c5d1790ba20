#!/usr/bin/env python3
"""Label a Kinesis Video Streams stream with Amazon Rekognition and write JSON lines.

    python consumers/rekognition_labels.py --stream front-door --out labels.jsonl
    python consumers/rekognition_labels.py --stream front-door --fps 0.5 --min-confidence 80

One frame every ``1/--fps`` seconds goes to Rekognition DetectLabels (priced per image:
keep the rate low; at most 5 calls a second, throttling retried with back-off, and
frames that hardly changed since the last call are not sent again when
``--min-change`` is set). Each analysed frame gives one JSON line: fragment number,
producer/server timestamps, frame timestamp and the labels with their boxes. A count
per label is printed at the end. Credentials and region come from the usual AWS chain.
Ctrl-C stops.
"""

from __future__ import annotations

import argparse
import logging
import sys

from kvs_toolkit.analysis import Analyzer, JsonLinesSink, RekognitionDetector
from kvs_toolkit.consumer import FragmentDecoder, LiveReader
from kvs_toolkit.errors import KvsError


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stream", required=True)
    parser.add_argument("--region", default=None)
    parser.add_argument("--start", default="now", help="now, earliest, fragment:N, producer:TIME")
    parser.add_argument("--fps", type=float, default=1.0, help="frames sent a second (cost!)")
    parser.add_argument("--min-confidence", type=float, default=70.0, help="percent")
    parser.add_argument(
        "--min-change",
        type=float,
        default=0.0,
        help="skip frames that changed less than this (0..1) since the last",
    )
    parser.add_argument("--out", default="-", help="JSON lines file (default stdout)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    reader = LiveReader(args.stream, start=args.start, region=args.region)
    decoder = FragmentDecoder(fps=args.fps)
    detector = RekognitionDetector(
        "labels",
        region_name=args.region,
        min_confidence=args.min_confidence,
        min_change=args.min_change,
    )
    analyzer = Analyzer(
        detector,
        [JsonLinesSink(None if args.out == "-" else args.out)],
        batch_size=1,
        stream_name=args.stream,
        keep_frames=False,
    )
    try:
        with reader, decoder, analyzer:
            for fragment in reader:
                analyzer.run(decoder.iter_decode(fragment))
    except KeyboardInterrupt:
        pass
    except KvsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    counts = ", ".join(f"{k} {v}" for k, v in analyzer.stats.detections_by_label.most_common())
    print(
        f"{analyzer.stats.frames_analysed} frames, {detector.stats.images_sent} Rekognition calls "
        f"(about ${detector.stats.estimated_cost:.3f}); labels: {counts or 'none'}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
