"""``Producer``: the one class a Python user reaches for to put video into a stream.

::

    from kvs_toolkit import Producer

    with Producer("cam-1", endpoint_url="http://127.0.0.1:4567", create_stream=True) as p:
        p.upload("sample.mp4")                   # a file, URL or camera:N; blocks

    with Producer("cam-1", endpoint_url=..., create_stream=True) as p:
        for image in images:                     # numpy frames, encoded to H.264
            p.put_frame(image)
    # leaving the block flushes the last fragment and waits for its acknowledgements

Synchronous and asynchronous use: :meth:`upload` blocks, :meth:`upload_async` is its
coroutine. :meth:`put_frame` (numpy images) and :meth:`put_encoded` (an H.264/H.265
Annex-B stream, e.g. a hardware encoder's output, passed through) run the upload in a
background thread that :meth:`close` ends. AWS access follows :mod:`kvs_toolkit.aws`:
placeholder credentials against a local endpoint when none are configured, and every
request (PutMedia included) signed.
"""

from __future__ import annotations

import io
import logging
import queue
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from kvs_toolkit.aws import AwsAccess
from kvs_toolkit.errors import KvsError
from kvs_toolkit.producer.fragmenter import DEFAULT_BUFFER_BYTES, DEFAULT_FRAGMENT_DURATION_MS
from kvs_toolkit.producer.run import (
    DEFAULT_RETENTION_HOURS,
    ProducerThread,
    ProgressCallback,
    produce,
)
from kvs_toolkit.producer.uploader import UploadStats

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from kvs_toolkit.producer.sources import FrameSource, NumpySource

__all__ = ["Producer"]

log = logging.getLogger(__name__)


class _ChunkPipe(io.RawIOBase):
    """A blocking binary stream fed from another thread, for :class:`AnnexBSource`.

    Bounded: :meth:`feed` blocks while ``max_chunks`` chunks wait (back-pressure on the
    caller of :meth:`Producer.put_encoded` rather than unbounded memory).
    """

    def __init__(self, max_chunks: int = 64) -> None:
        super().__init__()
        self._chunks: queue.Queue[bytes | None] = queue.Queue(max_chunks)
        self._pending = b""
        self._ended = False

    def readable(self) -> bool:
        return True

    def feed(self, data: bytes) -> None:
        if data:
            self._chunks.put(bytes(data))

    def end(self) -> None:
        self._chunks.put(None)

    def readinto(self, buffer: Any) -> int:
        if not self._pending:
            if self._ended:
                return 0
            chunk = self._chunks.get()
            if chunk is None:
                self._ended = True
                return 0
            self._pending = chunk
        count = min(len(buffer), len(self._pending))
        buffer[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count


class Producer:
    """Uploads to one stream; a context manager that flushes and waits for acks.

    ``endpoint_url``/``region``/``profile`` build the :class:`~kvs_toolkit.aws.AwsAccess`
    (or pass ``aws``). ``create_stream`` makes a missing stream (``retention_hours``).
    ``tags`` become persistent fragment metadata on every fragment. The other keyword
    arguments are :func:`~kvs_toolkit.producer.run.produce`'s.
    """

    def __init__(
        self,
        stream_name: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        profile: str | None = None,
        aws: AwsAccess | None = None,
        create_stream: bool = False,
        retention_hours: int = DEFAULT_RETENTION_HOURS,
        tags: Mapping[str, str] | None = None,
        fragment_duration_ms: int = DEFAULT_FRAGMENT_DURATION_MS,
        buffer_bytes: int = DEFAULT_BUFFER_BYTES,
        close_timeout_s: float = 30.0,
        progress: ProgressCallback | None = None,
        **produce_options: Any,
    ) -> None:
        self.stream_name = stream_name
        self.aws = aws or AwsAccess(region_name=region, endpoint_url=endpoint_url, profile=profile)
        self.fragment_duration_ms = fragment_duration_ms
        self.close_timeout_s = close_timeout_s
        self._options: dict[str, Any] = {
            "create_stream": create_stream,
            "retention_hours": retention_hours,
            "tags": dict(tags or {}),
            "fragment_duration_ms": fragment_duration_ms,
            "buffer_bytes": buffer_bytes,
            "close_timeout_s": close_timeout_s,
            "progress": progress,
            **produce_options,
        }
        self._thread: ProducerThread | None = None
        self._numpy: NumpySource | None = None
        self._pipe: _ChunkPipe | None = None
        self._lock = threading.Lock()
        self.stats: UploadStats | None = None

    # --- whole sources ----------------------------------------------------------------
    def _source(self, source: str | FrameSource, realtime: bool, loop: bool) -> FrameSource:
        from kvs_toolkit.producer.sources import SourceOptions, open_source

        if not isinstance(source, str):
            return source
        options = SourceOptions(
            realtime=realtime, loop=loop, fragment_duration_ms=self.fragment_duration_ms
        )
        return open_source(source, options)

    async def upload_async(
        self,
        source: str | FrameSource,
        *,
        realtime: bool = False,
        loop: bool = False,
        duration_s: float | None = None,
    ) -> UploadStats:
        """Upload a file, URL, ``camera:N`` or a :class:`FrameSource` to the end (or
        ``duration_s``); returns the upload's stats. A file is sent as fast as the
        service acknowledges it unless ``realtime``."""
        stats = await produce(
            self._source(source, realtime, loop),
            stream_name=self.stream_name,
            aws=self.aws,
            duration_s=duration_s,
            **self._options,
        )
        self.stats = stats
        return stats

    def upload(
        self,
        source: str | FrameSource,
        *,
        realtime: bool = False,
        loop: bool = False,
        duration_s: float | None = None,
    ) -> UploadStats:
        """:meth:`upload_async`, blocking (it must not be called on a running loop)."""
        thread = ProducerThread(
            self._source(source, realtime, loop),
            stream_name=self.stream_name,
            aws=self.aws,
            duration_s=duration_s,
            **self._options,
        )
        thread.start()
        stats = thread.result()
        self.stats = stats
        return stats

    # --- frame by frame ---------------------------------------------------------------
    def _start(self, source: FrameSource) -> None:
        self._thread = ProducerThread(
            source, stream_name=self.stream_name, aws=self.aws, **self._options
        )
        self._thread.start()

    def put_frame(
        self,
        image: npt.NDArray[np.uint8],
        timestamp_ms: int | None = None,
        *,
        fps: float = 30.0,
        pixel_format: Literal["bgr24", "rgb24"] = "bgr24",
    ) -> None:
        """Encode one image (H.264, key frames every fragment) and queue it; timestamps
        default to now. ``fps`` and ``pixel_format`` are taken from the first call."""
        with self._lock:
            if self._pipe is not None:
                raise KvsError("put_frame() after put_encoded(): one kind of input per Producer")
            if self._numpy is None:
                from kvs_toolkit.producer.sources import NumpySource, SourceOptions

                self._numpy = NumpySource(
                    fps,
                    SourceOptions(fragment_duration_ms=self.fragment_duration_ms),
                    pixel_format=pixel_format,
                )
                self._start(self._numpy)
        try:
            self._numpy.put_frame(image, timestamp_ms)
        except KvsError:
            self._raise_upload_error()
            raise

    def _raise_upload_error(self) -> None:
        """The upload's own error, when it ended (rather than the source's echo of it)."""
        thread = self._thread
        if thread is not None and not thread.is_alive():
            thread.result()

    def put_encoded(
        self, data: bytes, *, codec: Literal["h264", "h265"] = "h264", fps: float | None = None
    ) -> None:
        """Queue bytes of an H.264/H.265 Annex-B stream (any chunking: access units are
        found in the stream), passed through without re-encoding. Timestamps are the
        arrival time of each access unit, or evenly spaced at ``fps``."""
        with self._lock:
            if self._numpy is not None:
                raise KvsError("put_encoded() after put_frame(): one kind of input per Producer")
            if self._pipe is None:
                from kvs_toolkit.producer.sources import (
                    AnnexBSource,
                    ArrivalClock,
                    FixedRateClock,
                )

                self._pipe = _ChunkPipe()
                clock = FixedRateClock(fps) if fps else ArrivalClock()
                source = AnnexBSource(
                    self._pipe,  # type: ignore[arg-type]
                    codec=codec,
                    clock=clock,
                    description="put_encoded",
                )
                self._start(source)
        self._pipe.feed(data)

    def close(self) -> UploadStats | None:
        """End frame-by-frame input: flush the last fragment, wait for its acks (at most
        ``close_timeout_s``); the stats, or the upload's error raised here. None when
        nothing was put."""
        with self._lock:
            thread, numpy_source, pipe = self._thread, self._numpy, self._pipe
            self._thread = self._numpy = self._pipe = None
        if thread is None:
            return self.stats
        if numpy_source is not None:
            numpy_source.finish()
        if pipe is not None:
            pipe.end()
        self.stats = thread.result()
        return self.stats

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if exc_info[0] is None:
            self.close()
            return
        try:
            self.close()
        except KvsError as exc:  # the original error is the one to see
            if exc is not exc_info[1]:  # (not when it is the upload's error itself)
                log.warning("closing the producer after an error: %s", exc)
