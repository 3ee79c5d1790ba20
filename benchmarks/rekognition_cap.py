"""The per-frame Rekognition detector's calls-per-second cap, measured at a server.

A real HTTP server on 127.0.0.1 (stdlib ``ThreadingHTTPServer``) answers Rekognition's
``DetectLabels`` (JSON protocol: ``X-Amz-Target: RekognitionService.DetectLabels``)
with a valid answer and records when each request arrives. A real botocore client,
pointed at it with ``endpoint_url``, signs and sends every call of a
:class:`~kvs_toolkit.analysis.RekognitionDetector` that is fed frames as fast as it
takes them (change filter off, so every frame is a call).

* Ours: the most requests that arrived in any 1-second window (sliding, half-open
  ``[t, t + 1)`` starting at every arrival), for caps of 5 and 2 calls/s with the
  detector's default burst of 1.
* Reference: the cap itself.

A token bucket alone spaces the *starts* of calls ``1/cap`` apart, so the server saw
``cap`` + 1 requests in some 1 s window whenever one request took a few milliseconds
longer to arrive than the one ``cap`` calls later (measured: 6 at cap 5, 3 at cap 2).
The detector now also holds a :class:`~kvs_toolkit.analysis.CallWindow`, which starts a
call only while fewer than ``cap`` calls are in flight or answered within the last
second: a request arrives before its response leaves, so no window can hold more.

Goal (issue 7): the Rekognition path never exceeds its calls-per-second cap.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final

import boto3
from botocore.config import Config

from benchmarks.common import Options, Result
from kvs_toolkit.analysis import RekognitionDetector
from kvs_toolkit.samples import SampleSpec, render_frame

WINDOW_SECONDS: Final = 1.0
ANSWER: Final = json.dumps(
    {
        "Labels": [
            {
                "Name": "Box",
                "Confidence": 97.5,
                "Instances": [
                    {
                        "Confidence": 97.5,
                        "BoundingBox": {"Left": 0.1, "Top": 0.2, "Width": 0.3, "Height": 0.4},
                    }
                ],
                "Parents": [],
            }
        ],
        "LabelModelVersion": "3.0",
    }
).encode()


class _Recorder(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.arrivals: list[float] = []
        self.targets: set[str] = set()
        self.lock = threading.Lock()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as botocore's pool expects
    server: _Recorder

    def do_POST(self) -> None:
        arrived = time.monotonic()
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        target = self.headers.get("X-Amz-Target", "")
        json.loads(body)  # the request must be JSON, as the service's protocol says
        with self.server.lock:
            self.server.arrivals.append(arrived)
            self.server.targets.add(target)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(len(ANSWER)))
        self.end_headers()
        self.wfile.write(ANSWER)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def window_counts(times: list[float], window: float = WINDOW_SECONDS) -> list[int]:
    """For each of ``times`` (sorted), how many fall in ``[t, t + window)``; every
    window holding the most is one that starts at some arrival."""
    ordered = sorted(times)
    counts = []
    end = 0
    for start, moment in enumerate(ordered):
        while end < len(ordered) and ordered[end] < moment + window:
            end += 1
        counts.append(end - start)
    return counts


def max_in_window(times: list[float], window: float = WINDOW_SECONDS) -> int:
    """The most of ``times`` in any half-open window ``[t, t + window)``."""
    return max(window_counts(times, window), default=0)


def measure(cap: float, calls: int) -> tuple[int, list[float], float, set[str]]:
    """Max arrivals in a 1 s window, all arrival times, seconds taken and the targets."""
    server = _Recorder()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        client = boto3.client(
            "rekognition",
            endpoint_url=f"http://127.0.0.1:{server.server_address[1]}",
            region_name="us-east-1",
            aws_access_key_id="AKIDBENCHMARK",
            aws_secret_access_key="benchmark-secret",
            config=Config(retries={"mode": "standard", "max_attempts": 1}),
        )
        detector = RekognitionDetector(
            "labels",
            client=client,
            max_calls_per_second=cap,
            min_change=0.0,
        )
        spec = SampleSpec(width=640, height=360, fps=25, seconds=2.0)
        frames = [render_frame(spec, index % spec.frame_count) for index in range(calls)]
        start = time.monotonic()
        for image in frames:
            found = detector.detect_image(image)
            if [d.label for d in found] != ["Box"]:
                raise RuntimeError(f"unexpected detections {found}")
        elapsed = time.monotonic() - start
        client.close()
    finally:
        server.shutdown()
        server.server_close()
    if len(server.arrivals) != calls or detector.stats.images_sent != calls:
        raise RuntimeError(f"{len(server.arrivals)} requests arrived for {calls} calls")
    return max_in_window(server.arrivals), server.arrivals, elapsed, server.targets


def run(options: Options | None = None) -> list[Result]:
    options = options or Options()
    seconds = 3.0 if options.quick else 8.0
    results = []
    for cap in (5.0, 2.0):
        calls = round(cap * seconds) + 1
        most, arrivals, elapsed, targets = measure(cap, calls)
        gaps = [b - a for a, b in itertools.pairwise(arrivals)]
        over = sum(count > cap for count in window_counts(arrivals))
        rate = (calls - 1) / (arrivals[-1] - arrivals[0])
        notes = (
            f"rekognition_cap: RekognitionDetector('labels', max_calls_per_second=cap, "
            "burst 1, min_change 0) fed frames back to back through a real botocore client "
            "(SigV4, JSON protocol) to a ThreadingHTTPServer on 127.0.0.1 that answers "
            f"{', '.join(sorted(targets))} and records arrival times. Cap {cap:g}/s: {calls} "
            f"calls in {elapsed:.2f} s ({rate:.2f} "
            f"calls/s between first and last arrival), shortest gap between arrivals "
            f"{min(gaps) * 1000:.1f} ms (the cap's spacing: {1000 / cap:.0f} ms); "
            f"{over} of the {len(arrivals)} windows starting at an arrival hold more than "
            "the cap.",
        )
        results.append(
            Result(
                benchmark=f"rekognition: calls in any 1 s window, cap {cap:g}/s",
                ours=f"max {most} calls ({calls} calls, {rate:.2f} calls/s)",
                reference=f"cap {cap:g} calls/s",
                ratio=f"{most / cap:.2f}x",
                goal="never above the cap",
                met=most <= cap,
                notes=notes,
            )
        )
    return results


if __name__ == "__main__":
    for result in run(Options(quick=True)):
        print(result)
