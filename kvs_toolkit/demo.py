"""``kvs demo``: the whole loop with nothing but this repository.

1. Generate a deterministic sample video (moving squares with known positions).
2. Start the embedded KVS emulator on a free loopback port with a temporary data dir.
3. Stream the sample with the producer in real time, with fragment metadata tags.
4. Consume the stream live with GetMedia, decode frames, run the motion detector.
5. Print what happens as it happens; at the end write, under the output folder:
   ``detections.jsonl``, ``contact-sheet.png``, ``timeline.png`` and ``summary.json``.

``--serve`` then leaves the emulator running and prints its endpoint and the URL of its
web page, where the stream plays in a browser.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TextIO

import boto3
import cv2
import numpy as np
from botocore.config import Config
from botocore.credentials import Credentials

from kvs_toolkit.analysis import Analyzer, MotionDetector, contact_sheet, timeline_png
from kvs_toolkit.analysis.base import box_iou
from kvs_toolkit.analysis.sinks import AnalysisRecord, JsonLinesSink
from kvs_toolkit.consumer import FragmentDecoder
from kvs_toolkit.emulator import Emulator
from kvs_toolkit.emulator.web import page_url
from kvs_toolkit.errors import MkvError
from kvs_toolkit.getmedia import interrupt, iter_fragments
from kvs_toolkit.mkv import Fragment
from kvs_toolkit.producer.run import Progress, produce
from kvs_toolkit.producer.sources import SourceOptions, open_source
from kvs_toolkit.samples import SampleSpec, ground_truth, write_ground_truth, write_sample

log = logging.getLogger(__name__)

STREAM: Final = "kvs-demo"
# The emulator accepts any credentials unless told to verify SigV4.
DEMO_CREDENTIALS: Final = Credentials("demo-access-key", "demo-secret-key")
REGION: Final = "us-east-1"
TAGS: Final = {"camera": "sample-moving-squares", "site": "kvs-toolkit-demo"}
# Frames the motion detector looks at per second of video.
ANALYSIS_FPS: Final = 5.0
# Where kvs_toolkit.samples draws its clock on the 640x360 sample (x, y, w, h): the
# motion detector ignores it, the clock ticking is not motion to report.
CLOCK_ZONE: Final = (0, 320, 200, 40)


@dataclass
class FragmentSeen:
    number: str
    producer_ts: float
    frames: int
    lag_ms: float
    millis_behind_now: int | None
    tags: dict[str, str]


@dataclass
class DemoConsumer:
    """Reads the stream live (GetMedia NOW), decodes and analyses it in a thread."""

    endpoint: str
    output: Path
    out: TextIO
    fragments: list[FragmentSeen] = field(default_factory=list)
    records: list[AnalysisRecord] = field(default_factory=list)
    labels: Counter[str] = field(default_factory=Counter)
    decoded: int = 0
    connected: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _payload: Any = None

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self._run, name="demo-consumer", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()
        if self._payload is not None:
            interrupt(self._payload)  # ends the blocking read of the live response

    def _run(self) -> None:
        try:
            self._consume()
        except BaseException as exc:  # reported by the main thread
            if not self._stop.is_set():
                self.error = exc

    def _consume(self) -> None:
        media = boto3.client(
            "kinesis-video-media",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=DEMO_CREDENTIALS.access_key,
            aws_secret_access_key=DEMO_CREDENTIALS.secret_key,
            config=Config(read_timeout=120),
        )
        response = media.get_media(StreamName=STREAM, StartSelector={"StartSelectorType": "NOW"})
        self._payload = response["Payload"]
        self.connected.set()
        decoder = FragmentDecoder(format="bgr24")
        detector = MotionDetector(track=True, warmup=10, ignore_zones=[CLOCK_ZONE])
        sink = JsonLinesSink(self.output / "detections.jsonl")
        with Analyzer(
            detector, [sink], fps=ANALYSIS_FPS, batch_size=1, stream_name=STREAM
        ) as analyzer:
            try:
                for fragment in iter_fragments(self._payload, keep_truncated=True):
                    if self._stop.is_set():
                        break
                    self._on_fragment(fragment, decoder, analyzer)
            except MkvError:
                if not self._stop.is_set():
                    raise  # else: the read was cut short on purpose
            finally:
                self._payload.close()

    def _on_fragment(
        self, fragment: Fragment, decoder: FragmentDecoder, analyzer: Analyzer
    ) -> None:
        frames = decoder.decode(fragment)
        self.decoded += len(frames)
        found: Counter[str] = Counter()
        for record in analyzer.process(frames):
            self.records.append(record)
            found.update(d.label for d in record.detections)
        self.labels.update(found)
        producer = fragment.producer_timestamp
        producer_s = producer.timestamp() if producer else 0.0
        seen = FragmentSeen(
            number=fragment.fragment_number or "?",
            producer_ts=producer_s,
            frames=len(fragment.frames),
            lag_ms=(time.time() - producer_s) * 1000 if producer else 0.0,
            millis_behind_now=fragment.millis_behind_now,
            tags={t.name: t.value for t in fragment.producer_tags},
        )
        self.fragments.append(seen)
        labels = ", ".join(f"{n} {label}" for label, n in sorted(found.items())) or "none"
        print(
            f"  consumer  fragment …{seen.number[-8:]}  {seen.frames} frames, "
            f"{len(frames)} decoded, detections: {labels}, "
            f"lag {seen.lag_ms:.0f} ms (behind now {seen.millis_behind_now} ms)",
            file=self.out,
            flush=True,
        )


def _say(out: TextIO, text: str) -> None:
    print(text, file=out, flush=True)


def _create_stream(endpoint: str) -> None:
    control = boto3.client(
        "kinesisvideo",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=DEMO_CREDENTIALS.access_key,
        aws_secret_access_key=DEMO_CREDENTIALS.secret_key,
    )
    control.create_stream(StreamName=STREAM, DataRetentionInHours=1, MediaType="video/h264")


def ground_truth_match(
    records: list[AnalysisRecord], spec: SampleSpec, start: float
) -> tuple[int, int]:
    """(objects found, objects present) over the frames the detector reported on.

    ``start`` is the producer timestamp of the sample's first frame. An object counts as
    found when a detection overlaps its true box with IoU >= 0.3 (a motion box hugs
    what changed between frames, a little looser or tighter than the object itself).
    """
    found = present = 0
    for record in records:
        if not record.detections:
            continue  # warm-up, or a frame the detector saw nothing in
        index = round((record.frame_timestamp - start) * spec.fps) % spec.frame_count
        truth = np.array(
            [[b.x, b.y, b.x + b.width, b.y + b.height] for b in ground_truth(spec, index)],
            dtype=float,
        )
        detected = np.array([[d.box.x, d.box.y, d.box.x2, d.box.y2] for d in record.detections])
        present += len(truth)
        found += int((box_iou(truth, detected).max(axis=1) >= 0.3).sum())
    return found, present


def _fragment_band(
    fragments: list[FragmentSeen], latencies: list[float], width: int, label_width: int
) -> np.ndarray:
    """A strip under the timeline: one block per fragment with its ack latency."""
    band = np.full((64, width, 3), 30, dtype=np.uint8)  # the timeline's dark background
    for text, y in (("fragments", 24), ("ack latency", 52)):
        cv2.putText(band, text, (8, y), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (200, 200, 200), 1)
    if not fragments:
        return band
    start = fragments[0].producer_ts
    end = fragments[-1].producer_ts + 2.0
    span = max(end - start, 1e-3)
    plot = width - label_width - 10
    for n, fragment in enumerate(fragments):
        x0 = label_width + int((fragment.producer_ts - start) / span * plot)
        x1 = label_width + int((fragment.producer_ts + 2.0 - start) / span * plot) - 2
        colour = (200, 140, 60) if n % 2 == 0 else (230, 180, 110)
        cv2.rectangle(band, (x0, 8), (x1, 30), colour, -1)
        cv2.putText(
            band, fragment.number[-4:], (x0 + 3, 25), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1
        )
        if n < len(latencies):
            cv2.putText(
                band, f"{latencies[n]:.0f} ms", (x0 + 3, 52),
                cv2.FONT_HERSHEY_SIMPLEX, 0.4, (220, 220, 220), 1,
            )  # fmt: skip
    return band


def run_demo(
    output: Path, *, seconds: float = 10.0, serve: bool = False, out: TextIO = sys.stdout
) -> int:
    """Run the demo, writing its results under ``output``; ``serve`` leaves the emulator
    running at the end until Ctrl-C."""
    started = time.perf_counter()
    output.mkdir(parents=True, exist_ok=True)
    spec = SampleSpec(width=640, height=360, fps=25, seconds=seconds, gop_seconds=2.0)
    video = write_sample(output / "sample.mkv", spec)
    write_ground_truth(output / "sample-truth.jsonl", spec)
    _say(out, f"1/5 sample: {video} ({spec.frame_count} frames, 640x360 H.264, 25 fps)")

    with Emulator() as emulator:
        endpoint = emulator.endpoint_url
        _say(out, f"2/5 emulator at {endpoint} (data in {emulator.data_dir})")
        _create_stream(endpoint)
        consumer = DemoConsumer(endpoint, output, out)
        thread = consumer.start()
        if not consumer.connected.wait(30):
            raise RuntimeError("the live consumer did not connect")
        _say(out, f"3/5 live consumer connected (GetMedia NOW on {STREAM})")
        _say(out, f"4/5 producing in real time with tags {TAGS}")

        def progress(report: Progress) -> None:
            _say(out, f"  producer  {report.line()}")

        source = open_source(str(video), SourceOptions(realtime=True, fragment_duration_ms=2000))
        stats = asyncio.run(
            produce(
                source,
                endpoint,
                STREAM,
                tags=TAGS,
                credentials=DEMO_CREDENTIALS,
                region=REGION,
                progress=progress,
            )
        )
        deadline = time.monotonic() + 20
        while len(consumer.fragments) < stats.acked and time.monotonic() < deadline:
            if consumer.error is not None:
                break
            time.sleep(0.05)
        consumer.stop()
        thread.join(10)
        if consumer.error is not None:
            raise consumer.error
        if serve:
            _say(out, f"emulator left running at {endpoint}; stream {STREAM!r}")
            _say(out, f"  watch it in a browser: {page_url(endpoint)}")
            _say(out, "  e.g. kvs inspect, boto3 with endpoint_url, or GetHLSStreamingSessionURL")
            _say(out, "press Ctrl-C to stop")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass

    latencies = list(stats.ack_latency_ms)
    records = consumer.records
    events = [(r.frame_timestamp, r.detections) for r in records]
    sheet_items = [(r.frame, r.detections) for r in records if r.frame is not None]
    contact_sheet(sheet_items, columns=4, thumb_width=320, path=output / "contact-sheet.png")
    timeline = timeline_png(events, width=1000, label_width=180)
    band = _fragment_band(consumer.fragments, latencies, timeline.shape[1], 180)
    cv2.imwrite(str(output / "timeline.png"), np.vstack([timeline, band]))
    start = consumer.fragments[0].producer_ts if consumer.fragments else 0.0
    found, present = ground_truth_match(records, spec, start)
    ack_mean = round(float(np.mean(latencies)), 1) if latencies else None
    summary: dict[str, Any] = {
        "stream": STREAM,
        "sample": {"frames": spec.frame_count, "fps": spec.fps, "seconds": spec.seconds},
        "fragments_sent": stats.fragments,
        "fragments_acked": stats.acked,
        "fragments_received": len(consumer.fragments),
        "frames_sent": stats.frames,
        "frames_decoded": consumer.decoded,
        "frames_analysed": len(records),
        "detections_per_label": dict(consumer.labels),
        "ground_truth_objects_found": found,
        "ground_truth_objects_present": present,
        "ack_latency_ms": {
            "mean": ack_mean,
            "max": round(max(latencies), 1) if latencies else None,
        },
        "lag_ms_mean": round(float(np.mean([f.lag_ms for f in consumer.fragments])), 1)
        if consumer.fragments
        else None,
        "fragment_tags": consumer.fragments[0].tags if consumer.fragments else {},
        "seconds": round(time.perf_counter() - started, 1),
    }
    (output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _say(out, "5/5 results:")
    _say(
        out,
        f"  {summary['fragments_acked']}/{summary['fragments_sent']} fragments acked, "
        f"{summary['fragments_received']} received live, {consumer.decoded} frames decoded, "
        f"{len(records)} analysed",
    )
    _say(out, f"  detections: {dict(consumer.labels)}; ground truth found {found}/{present}")
    _say(out, f"  ack latency mean {ack_mean} ms (from a fragment's last byte to PERSISTED)")
    for name in ("detections.jsonl", "contact-sheet.png", "timeline.png", "summary.json"):
        _say(out, f"  wrote {output / name}")
    _say(out, f"done in {summary['seconds']} s")
    complete = stats.acked == stats.fragments and len(consumer.fragments) == stats.acked
    return 0 if complete else 1
