#!/usr/bin/env python3
"""Run a local ONNX object detector (a YOLO export) on a Kinesis Video Streams stream.

    pip install onnxruntime
    python consumers/onnx_detector.py --stream front-door --model yolov8n.onnx \\
        --labels coco.names --fps 5 --out detections.jsonl

Frames are decoded at ``--fps``, letterboxed to the network's input, run with ONNX
Runtime on the CPU, and the boxes (non-maximum suppressed) are written as one JSON line
per analysed frame, with the fragment number and timestamps; a count per label is
printed at the end. Nothing leaves the machine except the GetMedia request.
Credentials come from the usual AWS chain. Ctrl-C stops.
"""

from __future__ import annotations

import argparse
import logging
import sys

from kvs_toolkit.analysis import Analyzer, JsonLinesSink, OnnxDetector
from kvs_toolkit.consumer import FragmentDecoder, LiveReader
from kvs_toolkit.errors import KvsError


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stream", required=True)
    parser.add_argument("--endpoint-url", help="control plane, e.g. the local emulator")
    parser.add_argument("--region", default=None)
    parser.add_argument("--start", default="now", help="now, earliest, fragment:N, producer:TIME")
    parser.add_argument("--model", required=True, help="the .onnx file")
    parser.add_argument("--labels", help="class names, one a line")
    parser.add_argument("--fps", type=float, default=5.0, help="frames analysed a second")
    parser.add_argument("--min-confidence", type=float, default=0.25, help="0..1")
    parser.add_argument("--out", default="-", help="JSON lines file (default stdout)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    try:
        detector = OnnxDetector(args.model, labels=args.labels, conf_threshold=args.min_confidence)
    except KvsError as exc:  # no onnxruntime, missing or invalid model
        print(f"error: {exc}", file=sys.stderr)
        return 2
    reader = LiveReader(
        args.stream, start=args.start, endpoint_url=args.endpoint_url, region=args.region
    )
    decoder = FragmentDecoder(fps=args.fps)
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
    p95 = analyzer.stats.latency_p95
    print(
        f"{analyzer.stats.frames_analysed} frames, latency p95 "
        f"{'-' if p95 is None else f'{p95:.0f} ms'}; labels: {counts or 'none'}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
