"""Publish analysed frames, boxes drawn, into another KVS stream (the "Rekognized stream").

:class:`AnnotatedPublisher` takes frames with their detections from the analysis loop
and returns at once; a background thread draws the boxes and labels
(:func:`~kvs_toolkit.analysis.draw.draw_detections`), re-encodes the picture with our
:class:`~kvs_toolkit.producer.encoder.Encoder` and uploads it with our
:class:`~kvs_toolkit.producer.uploader.Uploader` (PutMedia)::

    with AnnotatedPublisher("cam-1-annotated", endpoint_url=emulator_url) as publisher:
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

import asyncio
import collections
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Final

import boto3
from botocore.credentials import Credentials

from kvs_toolkit.analysis.base import AnalysisError, Detection
from kvs_toolkit.analysis.draw import draw_detections
from kvs_toolkit.consumer.frames import DecodedFrame, Image
from kvs_toolkit.producer.encoder import Encoder
from kvs_toolkit.producer.fragmenter import DEFAULT_FRAGMENT_DURATION_MS, EncodedFrame
from kvs_toolkit.producer.run import DEFAULT_REGION, resolve_data_endpoint
from kvs_toolkit.producer.uploader import Uploader

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
    """Frames with their boxes drawn, re-encoded (H.264) and uploaded to ``stream_name``.

    ``endpoint_url``: the control plane (the emulator's; None for AWS); the PutMedia
    endpoint comes from GetDataEndpoint, and the stream is created when missing
    (``create_stream``). ``fps``: the frame rate of the submitted frames (sets the key
    frame interval, one per ``fragment_duration_ms``); estimated from the first two
    frames when None. ``queue_frames``: the bound of the queue (drop oldest when full).

    :meth:`submit` never blocks. :meth:`close` publishes what is queued, flushes the
    encoder, waits for the last acknowledgements and raises the thread's error if it
    failed (an error also stops later :meth:`submit` calls from queueing).
    """

    def __init__(
        self,
        stream_name: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        credentials: Credentials | None = None,
        fps: float | None = None,
        queue_frames: int = DEFAULT_QUEUE_FRAMES,
        fragment_duration_ms: int = DEFAULT_FRAGMENT_DURATION_MS,
        create_stream: bool = True,
        bitrate: int | None = None,
        close_timeout_s: float = 30.0,
    ) -> None:
        if queue_frames < 1:
            raise ValueError("queue_frames must be at least 1")
        session = boto3.session.Session(region_name=region)
        self.stream_name = stream_name
        self.endpoint_url = endpoint_url
        self.region = region or session.region_name or DEFAULT_REGION
        self.credentials = credentials if credentials is not None else session.get_credentials()
        self.fps = fps
        self.fragment_duration_ms = fragment_duration_ms
        self.create_stream = create_stream
        self.bitrate = bitrate
        self.close_timeout_s = close_timeout_s
        self.stats = PublisherStats()
        self._queue: collections.deque[_Item] = collections.deque()
        self._queue_frames = queue_frames
        self._ready = threading.Condition()
        self._closing = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"kvs-annotate-{stream_name}", daemon=True
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
            asyncio.run(self._publish())
        except BaseException as exc:  # raised again by close()
            log.error("publishing annotated frames to %s failed: %s", self.stream_name, exc)
            self._error = exc
            with self._ready:
                self._queue.clear()

    async def _publish(self) -> None:
        first = await asyncio.to_thread(self._take)
        if first is None:
            return
        second: _Item | None = None
        fps = self.fps
        if fps is None:
            second = await asyncio.to_thread(self._take)
            step_ms = None if second is None else second.timestamp_ms - first.timestamp_ms
            fps = 1000.0 / step_ms if step_ms else _FALLBACK_FPS
        height, width = first.image.shape[:2]
        encoder = Encoder(
            width,
            height,
            fps,
            codec="h264",
            encoder="libx264",
            fragment_duration_ms=self.fragment_duration_ms,
            bitrate=self.bitrate,
        )
        # The track's CodecPrivate comes from the first key frame: encode before the
        # Uploader exists.
        pending = await asyncio.to_thread(self._encode, encoder, first)
        endpoint, retention = await asyncio.to_thread(
            resolve_data_endpoint,
            self.stream_name,
            endpoint_url=self.endpoint_url,
            region=self.region,
            credentials=self.credentials,
            create_stream=self.create_stream,
        )
        uploader = Uploader(
            endpoint,
            self.stream_name,
            [encoder.track()],
            credentials=self.credentials,
            region=self.region,
            fragment_duration_ms=self.fragment_duration_ms,
            ack_level="PERSISTED" if retention > 0 else "RECEIVED",
        )
        await uploader.start()
        try:
            for encoded in pending:
                uploader.put_frame(encoded)
            self.stats.published += 1
            item = second if second is not None else await asyncio.to_thread(self._take)
            while item is not None:
                for encoded in await asyncio.to_thread(self._encode, encoder, item):
                    uploader.put_frame(encoded)
                self.stats.published += 1
                item = await asyncio.to_thread(self._take)
            for encoded in encoder.flush():
                uploader.put_frame(encoded)
        finally:
            stats = await uploader.close(self.close_timeout_s)
            self.stats.fragments = stats.fragments
            self.stats.acked = stats.acked

    def _encode(self, encoder: Encoder, item: _Item) -> list[EncodedFrame]:
        image = draw_detections(item.image, item.detections, format=item.format)
        if image.shape[:2] != (encoder.height, encoder.width):
            raise AnalysisError(
                f"frame size changed from {encoder.width}x{encoder.height} to "
                f"{image.shape[1]}x{image.shape[0]}: cannot publish into one track"
            )
        return encoder.encode(image, item.timestamp_ms)
