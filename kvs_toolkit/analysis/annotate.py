"""Publish analysed frames, boxes drawn, into another KVS stream (the "Rekognized stream").

:class:`AnnotatedPublisher` takes frames with their detections from the analysis loop
and returns at once; a background thread draws the boxes and labels
(:func:`~kvs_toolkit.analysis.draw.draw_detections`) and hands the picture to a
:class:`~kvs_toolkit.Producer` (which encodes it to H.264 and uploads it, with the
producer's endpoint refresh, buffer and acks)::

    producer = Producer("cam-1-annotated", endpoint_url=emulator_url, create_stream=True)
    with AnnotatedPublisher(producer) as publisher:
        for record in analyzer.process(frames):
            publisher.submit(record.frame, record.detections)
    publisher.stats.published

The annotated frames keep the source frames' timestamps (producer clock, milliseconds),
so a frame of the annotated stream can be matched with its source frame and its JSON
record. Between the analysis loop and the thread sits a bounded queue: when the
encoder or the network cannot keep up, the oldest waiting frame is dropped (counted in
:attr:`PublisherStats.dropped`) so that analysis never waits for publishing and the
annotated stream stays close to live.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Final, Literal

import numpy as np

from kvs_toolkit.analysis.base import AnalysisError, Detection
from kvs_toolkit.analysis.draw import draw_detections
from kvs_toolkit.consumer.frames import DecodedFrame, Image
from kvs_toolkit.errors import KvsError

if TYPE_CHECKING:
    from kvs_toolkit.producer.producer import Producer

__all__ = ["AnnotatedPublisher", "PublisherStats"]

log = logging.getLogger(__name__)

#: Frames waiting to be drawn and encoded: about two seconds of 30 fps video.
DEFAULT_QUEUE_FRAMES: Final = 64
# Without --fps the frame rate (needed for the key frame interval) is estimated from
# the first two frames' timestamps; this is the fallback when they are equal.
_FALLBACK_FPS: Final = 25.0


@dataclass(slots=True)
class PublisherStats:
    """Counters of a publisher; ``published`` frames went to the Uploader."""

    submitted: int = 0
    dropped: int = 0
    published: int = 0
    fragments: int = 0
    acked: int = 0

    def line(self) -> str:
        return (
            f"annotated: {self.published} of {self.submitted} frames published, "
            f"{self.dropped} dropped (queue full), fragments {self.acked}/{self.fragments} acked"
        )


@dataclass(frozen=True, slots=True)
class _Item:
    image: Image
    format: str
    timestamp_ms: int
    detections: tuple[Detection, ...]


class AnnotatedPublisher:
    """Frames with their boxes drawn, handed to ``producer`` (a :class:`~kvs_toolkit.Producer`
    of the annotated stream, which encodes and uploads them).

    ``fps``: the frame rate of the submitted frames (sets the key frame interval);
    estimated from the first two frames when None. ``queue_frames``: the bound of the
    queue in front of the encoder (drop oldest when full).

    :meth:`submit` never blocks. :meth:`close` publishes what is queued, closes the
    producer (flush, wait for the last acknowledgements) and raises the thread's error
    if it failed (an error also stops later :meth:`submit` calls from queueing).
    """

    def __init__(
        self,
        producer: Producer,
        *,
        fps: float | None = None,
        queue_frames: int = DEFAULT_QUEUE_FRAMES,
    ) -> None:
        if queue_frames < 1:
            raise ValueError("queue_frames must be at least 1")
        self.producer = producer
        self.stream_name = producer.stream_name
        self.fps = fps
        self.stats = PublisherStats()
        self._queue: collections.deque[_Item] = collections.deque()
        self._queue_frames = queue_frames
        self._ready = threading.Condition()
        self._closing = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"kvs-annotate-{self.stream_name}", daemon=True
        )
        self._thread.start()

    # --- the analysis side -------------------------------------------------------------
    def submit(self, frame: DecodedFrame, detections: Sequence[Detection]) -> None:
        """Queue ``frame`` with its ``detections`` (the frame's image is not copied:
        decoded frames are not written to afterwards)."""
        if self._error is not None:
            raise AnalysisError(f"publishing to {self.stream_name} failed: {self._error}")
        item = _Item(frame.image, frame.format, frame.timestamp_ns // 1_000_000, tuple(detections))
        with self._ready:
            if self._closing:
                raise AnalysisError("the publisher is closed")
            self.stats.submitted += 1
            if len(self._queue) >= self._queue_frames:
                self._queue.popleft()
                self.stats.dropped += 1
            self._queue.append(item)
            self._ready.notify()

    def close(self) -> PublisherStats:
        """Publish what is queued, wait for the last acks, stop the thread."""
        with self._ready:
            self._closing = True
            self._ready.notify()
        self._thread.join()
        if self._error is None:
            try:
                stats = self.producer.close()
            except KvsError as exc:
                self._error = exc
            else:
                if stats is not None:
                    self.stats.fragments = stats.fragments
                    self.stats.acked = stats.acked
        if self._error is not None:
            raise AnalysisError(
                f"publishing to {self.stream_name} failed: {self._error}"
            ) from self._error
        return self.stats

    def __enter__(self) -> AnnotatedPublisher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # --- the publishing thread ----------------------------------------------------------
    def _take(self) -> _Item | None:
        """The oldest queued item; None once closing and empty."""
        with self._ready:
            while not self._queue and not self._closing:
                self._ready.wait()
            return self._queue.popleft() if self._queue else None

    def _run(self) -> None:
        try:
            self._publish()
        except BaseException as exc:  # raised again by close()
            log.error("publishing annotated frames to %s failed: %s", self.stream_name, exc)
            self._error = exc
            with self._ready:
                self._queue.clear()

    def _publish(self) -> None:
        first = self._take()
        if first is None:
            return
        second: _Item | None = None
        fps = self.fps
        if fps is None:
            second = self._take()
            step_ms = None if second is None else second.timestamp_ms - first.timestamp_ms
            fps = 1000.0 / step_ms if step_ms and step_ms > 0 else _FALLBACK_FPS
        size = first.image.shape[:2]
        item: _Item | None = first
        while item is not None:
            image = draw_detections(item.image, item.detections, format=item.format)
            if image.shape[:2] != size:
                raise AnalysisError(
                    f"frame size changed from {size[1]}x{size[0]} to "
                    f"{image.shape[1]}x{image.shape[0]}: cannot publish into one track"
                )
            if image.ndim == 2:  # gray frames are published as BGR
                import cv2

                image = np.ascontiguousarray(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR), np.uint8)
            pixel_format: Literal["bgr24", "rgb24"] = "rgb24" if item.format == "rgb24" else "bgr24"
            self.producer.put_frame(image, item.timestamp_ms, fps=fps, pixel_format=pixel_format)
            self.stats.published += 1
            if second is not None:
                item, second = second, None
            else:
                item = self._take()
