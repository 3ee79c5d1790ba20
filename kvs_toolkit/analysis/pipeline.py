"""Frames in, detections out: :class:`Analyzer` runs a detector over decoded frames and
hands one :class:`~kvs_toolkit.analysis.sinks.AnalysisRecord` per analysed frame to its
sinks, in frame order, whether or not anything was found::

    analyzer = Analyzer("motion", ["jsonl:results.jsonl"], fps=5, stream_name="cam-1")
    for record in analyzer.process(frames):      # frames: any iterable of DecodedFrame
        ...
    analyzer.close()
    analyzer.stats.latency_p95

The pictures for a run (:func:`contact_sheet`, :func:`timeline_png`) live in
:mod:`kvs_toolkit.analysis.draw` and are re-exported here.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final

import numpy as np

from kvs_toolkit.analysis.base import AnalysisError, Detector, create_detector
from kvs_toolkit.analysis.draw import contact_sheet, draw_detections, timeline_png
from kvs_toolkit.analysis.sinks import AnalysisRecord, ResultSink, create_sink
from kvs_toolkit.consumer.decode import FrameSampler
from kvs_toolkit.consumer.frames import DecodedFrame

__all__ = [
    "AnalysisStats",
    "Analyzer",
    "contact_sheet",
    "draw_detections",
    "timeline_png",
]

log = logging.getLogger(__name__)

#: Latencies kept for the percentiles: the most recent ones (bounded memory).
LATENCY_WINDOW: Final = 10_000


@dataclass(slots=True)
class AnalysisStats:
    """Counters of a run. Latency percentiles cover the last ``LATENCY_WINDOW`` frames."""

    frames_seen: int = 0
    frames_analysed: int = 0
    frames_not_sampled: int = 0
    batches: int = 0
    detect_seconds: float = 0.0
    detections_by_label: Counter[str] = field(default_factory=Counter)
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))

    @property
    def detections(self) -> int:
        return sum(self.detections_by_label.values())

    def latency_percentile(self, percent: float) -> float | None:
        if not self.latencies_ms:
            return None
        return float(np.percentile(np.fromiter(self.latencies_ms, dtype=np.float64), percent))

    @property
    def latency_p50(self) -> float | None:
        return self.latency_percentile(50)

    @property
    def latency_p95(self) -> float | None:
        return self.latency_percentile(95)

    def to_json(self) -> dict[str, Any]:
        def rounded(value: float | None) -> float | None:
            return None if value is None else round(value, 3)

        return {
            "frames_seen": self.frames_seen,
            "frames_analysed": self.frames_analysed,
            "frames_not_sampled": self.frames_not_sampled,
            "batches": self.batches,
            "detections": self.detections,
            "detections_by_label": dict(sorted(self.detections_by_label.items())),
            "detect_seconds": round(self.detect_seconds, 3),
            "latency_ms_p50": rounded(self.latency_p50),
            "latency_ms_p95": rounded(self.latency_p95),
        }


class Analyzer:
    """Runs ``detector`` over frames and writes a record per analysed frame to ``sinks``.

    ``detector`` and each sink may be objects or specs (``"motion"``,
    ``"jsonl:out.jsonl"``; see :func:`~kvs_toolkit.analysis.create_detector` and
    :func:`~kvs_toolkit.analysis.create_sink`). ``fps``: analyse at most that many frames
    per second of video (by frame timestamp; others are skipped without a record).
    ``batch_size``: frames per ``detect`` call; a batch waits until it is full, so keep
    it small (1) for live streams where latency matters. ``latency_ms`` in a record is
    the time from the frame's arrival in :meth:`process` to its detections being ready,
    batching wait included. ``keep_frames``: records carry their frame (needed by the
    S3 sink and :func:`contact_sheet`; turn off to free frames sooner).
    """

    def __init__(
        self,
        detector: Detector | str,
        sinks: Sequence[ResultSink | str] = (),
        *,
        fps: float | None = None,
        batch_size: int = 8,
        stream_name: str | None = None,
        keep_frames: bool = True,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.detector = create_detector(detector) if isinstance(detector, str) else detector
        self.sinks = [create_sink(s) if isinstance(s, str) else s for s in sinks]
        self.sampler = FrameSampler.per_second(fps) if fps is not None else None
        self.batch_size = batch_size
        self.stream_name = stream_name
        self.keep_frames = keep_frames
        self.stats = AnalysisStats()
        self._clock = clock
        self._closed = False

    def process(self, frames: Iterable[DecodedFrame]) -> Iterator[AnalysisRecord]:
        """Analyse ``frames`` lazily, yielding each record after the sinks got it. The
        sinks are flushed when the frames run out."""
        batch: list[DecodedFrame] = []
        arrivals: list[float] = []
        for frame in frames:
            self.stats.frames_seen += 1
            if self.sampler is not None and not self.sampler.keep(frame.timestamp_ns):
                self.stats.frames_not_sampled += 1
                continue
            batch.append(frame)
            arrivals.append(self._clock())
            if len(batch) >= self.batch_size:
                yield from self._analyse(batch, arrivals)
                batch, arrivals = [], []
        if batch:
            yield from self._analyse(batch, arrivals)
        self.flush()

    def run(self, frames: Iterable[DecodedFrame]) -> AnalysisStats:
        """Analyse all ``frames``, then flush the sinks; return the stats."""
        for _record in self.process(frames):
            pass
        return self.stats

    def _analyse(
        self, batch: Sequence[DecodedFrame], arrivals: Sequence[float]
    ) -> Iterator[AnalysisRecord]:
        started = self._clock()
        results = self.detector.detect(batch)
        finished = self._clock()
        if len(results) != len(batch):
            raise AnalysisError(
                f"detector {self.detector.name} returned {len(results)} results for a batch "
                f"of {len(batch)} frames"
            )
        self.stats.batches += 1
        self.stats.detect_seconds += finished - started
        for frame, found, arrival in zip(batch, results, arrivals, strict=True):
            latency_ms = (finished - arrival) * 1000.0
            record = AnalysisRecord.from_frame(
                frame,
                found,
                model=self.detector.name,
                latency_ms=latency_ms,
                stream_name=self.stream_name,
                keep_frame=self.keep_frames,
            )
            for sink in self.sinks:
                sink.write(record)
            self.stats.frames_analysed += 1
            self.stats.latencies_ms.append(latency_ms)
            self.stats.detections_by_label.update(d.label for d in found)
            yield record

    def flush(self) -> None:
        for sink in self.sinks:
            sink.flush()

    def close(self) -> None:
        """Flush and close every sink (once)."""
        if self._closed:
            return
        self._closed = True
        errors: list[Exception] = []
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as exc:  # close the others, then report
                log.error("closing sink %r failed: %s", sink, exc)
                errors.append(exc)
        if errors:
            raise errors[0]

    def __enter__(self) -> Analyzer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
