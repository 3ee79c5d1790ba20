"""Run a producer: a frame source into a stream, with progress; and ``kvs produce``.

:func:`produce` reads a :class:`~kvs_toolkit.producer.sources.FrameSource` in a thread
of its own (sources block on files, pipes and cameras, and pace in real time), hands
the frames to the event loop through a bounded queue, and feeds them to the
:class:`~kvs_toolkit.producer.uploader.Uploader`. It finds the stream's PutMedia
endpoint with GetDataEndpoint (creating the stream first if asked), applies persistent
fragment metadata, and reports progress through a callback and ``logging``.

:class:`ProducerThread` runs :func:`produce` in a background thread for synchronous
code (e.g. a :class:`~kvs_toolkit.producer.sources.NumpySource` fed by ``put_frame``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from kvs_toolkit.acks import Ack
from kvs_toolkit.aws import AwsAccess, DataEndpointCache, call_with_retry
from kvs_toolkit.errors import KvsError, PutMediaError
from kvs_toolkit.mkv import TrackInfo
from kvs_toolkit.producer.defaults import DEFAULT_INTERVAL_S as DEFAULT_METRICS_INTERVAL_S
from kvs_toolkit.producer.defaults import DEFAULT_RETENTION_HOURS
from kvs_toolkit.producer.fragmenter import (
    DEFAULT_BUFFER_BYTES,
    DEFAULT_FRAGMENT_DURATION_MS,
    EncodedFrame,
)
from kvs_toolkit.producer.metrics import CloudWatchMetrics, MetricsPublisher
from kvs_toolkit.producer.sources import FrameSource, SourceError
from kvs_toolkit.producer.spool import DEFAULT_SPOOL_MAX_BYTES
from kvs_toolkit.producer.uploader import AckLevel, Uploader, UploadStats

if TYPE_CHECKING:
    from botocore.credentials import Credentials
    from mypy_boto3_kinesisvideo import KinesisVideoClient

__all__ = [
    "DEFAULT_RETENTION_HOURS",
    "ProducerThread",
    "Progress",
    "produce",
    "resolve_data_endpoint",
]

log = logging.getLogger(__name__)

# Frames waiting between the source thread and the uploader: a few seconds of video
# (and as many again in the batch the event loop is handing to the uploader).
_QUEUE_FRAMES: Final = 128
# A recording (FrameSource.live False) can wait, so it needs no seconds of slack: a
# short queue keeps ~4 MB of 1080p frames out of memory (the stdin RSS goal).
_RECORDING_QUEUE_FRAMES: Final = 16
# A recording is read only while fewer bytes than this (of complete fragments) wait for
# acks in memory: a file or a piped recording sent at 200x real time would otherwise
# fill the buffer (and RSS) faster than the service persists it. Four 2 s fragments of
# 1080p at 4 Mbit/s: enough to keep the connection busy while acks come.
_READ_AHEAD_BYTES: Final = 4 * 1024 * 1024
_MIB: Final = 1024 * 1024
_STREAM_ACTIVE_TIMEOUT_S: Final = 60.0
# GetDataEndpoint at most this often while reconnecting (its limit is a few TPS).
_DATA_ENDPOINT_MIN_INTERVAL_S: Final = 60.0
_MEDIA_TYPES: Final = {"V_MPEG4/ISO/AVC": "video/h264", "V_MPEGH/ISO/HEVC": "video/h265"}


@dataclass(frozen=True)
class Progress:
    """A snapshot of an upload, for a progress display."""

    elapsed_s: float
    frames: int  # all frames sent (video and audio)
    video_frames: int
    frames_per_s: float  # video frames
    payload_bytes: int
    megabytes_per_s: float
    fragments: int
    acked: int
    ack_latency_ms: float | None  # mean of the latest acknowledgements
    dropped_fragments: int
    errors: int
    pending: int = 0  # fragments not yet acknowledged (memory and spool)
    buffer_bytes: int = 0  # memory buffer use
    buffer_max_bytes: int = 0
    spool_bytes: int = 0  # spool use (0 without a spool)
    reconnects: int = 0
    done: bool = False

    def line(self) -> str:
        """One human-readable status line."""
        latency = "-" if self.ack_latency_ms is None else f"{self.ack_latency_ms:.0f} ms"
        text = (
            f"{self.elapsed_s:6.1f} s  {self.video_frames} frames ({self.frames_per_s:.1f}/s)  "
            f"{self.megabytes_per_s:.2f} MB/s  fragments {self.acked}/{self.fragments} acked  "
            f"{self.pending} pending  ack latency {latency}  "
            f"buffer {self.buffer_bytes / _MIB:.1f}/{self.buffer_max_bytes / _MIB:.0f} MiB  "
            f"reconnects {self.reconnects}"
        )
        if self.spool_bytes:
            text += f"  spool {self.spool_bytes / _MIB:.1f} MiB"
        if self.dropped_fragments or self.errors:
            text += f"  dropped {self.dropped_fragments}  errors {self.errors}"
        return text


ProgressCallback = Callable[[Progress], None]


# ---------------------------------------------------------------------------------------
# Control plane


def resolve_data_endpoint(
    stream_name: str,
    *,
    aws: AwsAccess,
    create_stream: bool = False,
    retention_hours: int = DEFAULT_RETENTION_HOURS,
    media_type: str = "video/h264",
    kms_key_id: str | None = None,
) -> tuple[str, int]:
    """(PUT_MEDIA data endpoint, the stream's retention in hours); blocking (boto3).

    With ``create_stream`` a missing stream is created (encrypted with ``kms_key_id``,
    else the service's default key) and waited for until ACTIVE. An unreachable
    endpoint is retried with ``aws.retry`` (:func:`~kvs_toolkit.aws.call_with_retry`).
    """
    import botocore.exceptions

    client = aws.client("kinesisvideo")
    try:

        def describe() -> Any:
            return client.describe_stream(StreamName=stream_name)["StreamInfo"]

        try:
            info = call_with_retry(aws, "DescribeStream", describe)
        except client.exceptions.ResourceNotFoundException:
            if not create_stream:
                raise PutMediaError(
                    f"stream {stream_name!r} does not exist (use --create-stream)",
                    status=404,
                    error_code="ResourceNotFoundException",
                ) from None
            log.info("creating stream %s (retention %d h)", stream_name, retention_hours)
            extra: dict[str, Any] = {} if kms_key_id is None else {"KmsKeyId": kms_key_id}
            call_with_retry(
                aws,
                "CreateStream",
                lambda: client.create_stream(
                    StreamName=stream_name,
                    DataRetentionInHours=retention_hours,
                    MediaType=media_type,
                    **extra,
                ),
            )
            info = _wait_active(client, stream_name)
        endpoint = call_with_retry(
            aws,
            "GetDataEndpoint",
            lambda: client.get_data_endpoint(StreamName=stream_name, APIName="PUT_MEDIA"),
        )
    except botocore.exceptions.ClientError as exc:
        error = exc.response.get("Error", {})
        raise PutMediaError(
            f"control plane call for {stream_name!r} failed: {error.get('Code')}: "
            f"{error.get('Message')}",
            status=exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode"),
            error_code=error.get("Code"),
        ) from exc
    except botocore.exceptions.BotoCoreError as exc:
        raise PutMediaError(f"control plane call for {stream_name!r} failed: {exc}") from exc
    finally:
        client.close()
    return endpoint["DataEndpoint"], int(info.get("DataRetentionInHours", 0))


def _wait_active(client: KinesisVideoClient, stream_name: str) -> Any:
    deadline = time.monotonic() + _STREAM_ACTIVE_TIMEOUT_S
    while True:
        info = client.describe_stream(StreamName=stream_name)["StreamInfo"]
        if info.get("Status") == "ACTIVE":
            return info
        if time.monotonic() > deadline:
            raise PutMediaError(f"stream {stream_name!r} is still {info.get('Status')}")
        time.sleep(0.5)


# ---------------------------------------------------------------------------------------
# The source thread


class _FrameHandoff:
    """A bounded queue from the source thread to the event loop, taken in batches.

    Handing over one frame at a time through ``run_coroutine_threadsafe`` made the
    source thread wait for the loop on every frame (~70x real time for 1080p30
    pass-through); here the thread only appends under a lock, and wakes the loop (one
    ``call_soon_threadsafe``) only when the loop is waiting for items, which then takes
    everything waiting at once.

    When full (``max_items``) :meth:`put` blocks the source thread: a source is never
    dropped from, it is read more slowly. After :meth:`stop` or :meth:`close` no more
    items are taken in; :meth:`close` also forgets what waits (the upload is over).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, max_items: int) -> None:
        self._loop = loop
        self._max_items = max_items
        self._items: deque[object] = deque()
        self._changed = threading.Condition()
        self._stopped = False
        self._loop_waiting = False
        self._ready = asyncio.Event()  # set (on the loop) when items or a wake-up came

    def put(self, item: object) -> bool:
        """Add ``item`` (source thread), waiting for room; False if no longer taken."""
        with self._changed:
            while len(self._items) >= self._max_items and not self._stopped:
                self._changed.wait()
            if self._stopped:
                return False
            self._items.append(item)
            if not self._loop_waiting:
                return True  # the loop is busy: it takes this with the rest of its batch
            self._loop_waiting = False
        try:
            self._loop.call_soon_threadsafe(self._ready.set)
        except RuntimeError:  # the loop is closed
            return False
        return True

    def take_nowait(self) -> list[object]:
        """Everything waiting, oldest first (event loop); may be empty."""
        with self._changed:
            items = list(self._items)
            self._items.clear()
            self._loop_waiting = False
            self._changed.notify_all()  # room for a source thread waiting in put()
        return items

    async def take(self) -> list[object]:
        """Everything waiting, after waiting for at least one item or :meth:`wake`."""
        with self._changed:
            if not self._items:
                self._ready.clear()
                self._loop_waiting = True
                waiting = True
            else:
                waiting = False
        if waiting:
            await self._ready.wait()
        return self.take_nowait()

    def wake(self) -> None:
        """End a :meth:`take` waiting on the loop (it returns what waits, maybe nothing)."""
        self._ready.set()

    def stop(self) -> None:
        """Take no more items (any thread); what already waits can still be taken."""
        with self._changed:
            self._stopped = True
            self._changed.notify_all()

    def close(self) -> None:
        """Take no more items and forget what waits, releasing a blocked source thread."""
        with self._changed:
            self._stopped = True
            self._items.clear()
            self._changed.notify_all()


class _SourceThread(threading.Thread):
    """Iterates a source and hands its tracks, frames and end (or error) to the loop."""

    def __init__(self, source: FrameSource, handoff: _FrameHandoff) -> None:
        super().__init__(name=f"source {source.description}", daemon=True)
        self.source = source
        self.handoff = handoff

    def run(self) -> None:
        put = self.handoff.put
        try:
            if not put(self.source.tracks):
                return
            for frame in self.source:
                if not put(frame):
                    return  # stopped: the loop takes no more
            put(_SourceEnd())
        except BaseException as exc:  # handed to the loop, raised there
            put(_SourceEnd(exc))
        finally:
            self.source.close()


@dataclass(frozen=True)
class _SourceEnd:
    error: BaseException | None = None


class _ProgressMeter:
    def __init__(self, uploader: Uploader) -> None:
        self.uploader = uploader
        self.started = time.monotonic()
        self.payload_bytes = 0
        self.video_frames = 0

    def snapshot(self, *, done: bool = False) -> Progress:
        self.uploader.update_use()
        stats = self.uploader.stats
        elapsed = max(time.monotonic() - self.started, 1e-9)
        latencies = list(stats.ack_latency_ms)[-20:]
        return Progress(
            elapsed_s=elapsed,
            frames=stats.frames,
            video_frames=self.video_frames,
            frames_per_s=self.video_frames / elapsed,
            payload_bytes=self.payload_bytes,
            megabytes_per_s=self.payload_bytes / elapsed / 1e6,
            fragments=stats.fragments,
            acked=stats.acked,
            ack_latency_ms=sum(latencies) / len(latencies) if latencies else None,
            dropped_fragments=stats.dropped_fragments,
            errors=sum(stats.errors.values()),
            pending=self.uploader.pending_fragments(),
            buffer_bytes=stats.buffer_bytes,
            buffer_max_bytes=self.uploader.buffer.max_bytes,
            spool_bytes=stats.spool_bytes,
            reconnects=stats.reconnects,
            done=done,
        )


def _media_type(tracks: list[TrackInfo]) -> str:
    return next(
        (_MEDIA_TYPES[t.codec_id] for t in tracks if t.codec_id in _MEDIA_TYPES), "video/h264"
    )


async def produce(
    source: FrameSource,
    endpoint: str | None = None,
    stream_name: str | None = None,
    *,
    aws: AwsAccess | None = None,
    tags: Mapping[str, str] | None = None,
    credentials: Credentials | None = None,
    region: str | None = None,
    fragment_duration_ms: int = DEFAULT_FRAGMENT_DURATION_MS,
    create_stream: bool = False,
    retention_hours: int = DEFAULT_RETENTION_HOURS,
    progress: ProgressCallback | None = None,
    progress_interval_s: float = 1.0,
    data_endpoint: str | None = None,
    ack_level: AckLevel | None = None,
    stop: asyncio.Event | None = None,
    close_timeout_s: float = 30.0,
    duration_s: float | None = None,
    kms_key_id: str | None = None,
    buffer_bytes: int = DEFAULT_BUFFER_BYTES,
    spool_dir: str | os.PathLike[str] | None = None,
    spool_max_bytes: int = DEFAULT_SPOOL_MAX_BYTES,
    cloudwatch_namespace: str | None = None,
    metrics_interval_s: float = DEFAULT_METRICS_INTERVAL_S,
    metrics: MetricsPublisher | None = None,
) -> UploadStats:
    """Upload everything ``source`` yields to ``stream_name``; returns the upload's stats.

    ``aws`` says how to reach the service (:class:`~kvs_toolkit.aws.AwsAccess`); without
    it one is made from ``endpoint`` (the control plane's URL: the emulator's, or None
    for AWS), ``region`` and ``credentials`` (None: the usual chain, or placeholder
    credentials for a local endpoint). PutMedia is signed with the same credentials as
    the control plane. The PutMedia endpoint is found with GetDataEndpoint (looked up
    again for each new connection, at most once a minute), unless ``data_endpoint``
    gives it directly. ``tags`` become persistent fragment metadata.
    Fragments are released on PERSISTED acks, or RECEIVED for a stream with no
    retention (which gets no PERSISTED), unless ``ack_level`` says otherwise. Setting
    ``stop`` (or reaching ``duration_s``) ends the upload gracefully: the source stops,
    the last fragment is flushed and acknowledged. ``progress`` is called about every
    ``progress_interval_s`` and once at the end; ``stats.all_acknowledged`` says
    whether everything was acknowledged.

    ``create_stream`` makes a missing stream (``retention_hours``, ``kms_key_id``).
    ``buffer_bytes`` bounds the memory buffer; ``spool_dir`` / ``spool_max_bytes`` add
    the on-disk spool (see :class:`~kvs_toolkit.producer.uploader.Uploader`).
    ``cloudwatch_namespace`` publishes metrics every ``metrics_interval_s`` with
    :class:`~kvs_toolkit.producer.metrics.CloudWatchMetrics` (or pass ``metrics``).
    """
    if not stream_name:
        raise ValueError("produce() needs a stream_name")
    if aws is None:
        aws = AwsAccess(region_name=region, endpoint_url=endpoint, credentials_override=credentials)
    # resolved before the source thread starts: a missing region or credential fails here
    credentials = await asyncio.to_thread(lambda: aws.credentials)
    region = aws.region
    loop = asyncio.get_running_loop()
    handoff = _FrameHandoff(loop, _QUEUE_FRAMES if source.live else _RECORDING_QUEUE_FRAMES)
    thread = _SourceThread(source, handoff)
    thread.start()
    uploader: Uploader | None = None
    ticker: asyncio.Task[None] | None = None
    stop = stop or asyncio.Event()
    watcher = asyncio.create_task(_wake_on_stop(handoff, stop))
    deadline = None if duration_s is None else loop.call_later(duration_s, stop.set)
    if metrics is None and cloudwatch_namespace is not None:
        metrics = CloudWatchMetrics(
            cloudwatch_namespace,
            stream_name,
            interval_s=metrics_interval_s,
            region=region,
            credentials=credentials,
        )
    try:
        batch = await handoff.take()
        while not batch and not stop.is_set():
            batch = await handoff.take()
        first = batch[0] if batch else None
        if not isinstance(first, list):
            _raise_if_error(first)
            raise SourceError(f"{source.description}: stopped before the tracks were known")
        tracks: list[TrackInfo] = first
        del batch[0]  # the rest are frames, sent below
        retention = retention_hours
        endpoint_provider: DataEndpointCache | None = None
        if data_endpoint is None:
            resolved, retention = await asyncio.to_thread(
                resolve_data_endpoint,
                stream_name,
                aws=aws,
                create_stream=create_stream,
                retention_hours=retention_hours,
                media_type=_media_type(tracks),
                kms_key_id=kms_key_id,
            )
            data_endpoint = resolved
            endpoint_provider = DataEndpointCache(
                aws,
                {"StreamName": stream_name},
                "PUT_MEDIA",
                endpoint=resolved,
                refresh_s=_DATA_ENDPOINT_MIN_INTERVAL_S,
            )
        level: AckLevel = ack_level or ("PERSISTED" if retention > 0 else "RECEIVED")
        log.info("PutMedia to %s (stream %s, acks %s)", data_endpoint, stream_name, level)
        uploader = Uploader(
            data_endpoint,
            stream_name,
            tracks,
            credentials=credentials,
            region=region,
            fragment_duration_ms=fragment_duration_ms,
            ack_level=level,
            on_ack=_log_ack,
            buffer_bytes=buffer_bytes,
            spool_dir=spool_dir,
            spool_max_bytes=spool_max_bytes,
            metrics=metrics,
            endpoint_provider=endpoint_provider,
        )
        for name, value in (tags or {}).items():
            uploader.put_fragment_metadata(name, value, persistent=True)
        meter = _ProgressMeter(uploader)
        await uploader.start()
        ticker = asyncio.create_task(_tick(meter, progress, progress_interval_s))
        video_track = tracks[0].number
        # A live source is never waited for (a full buffer drops its oldest fragment);
        # a recorded one waits for acks instead, so nothing is dropped, even in an outage.
        read_ahead = None if source.live else min(buffer_bytes // 2, _READ_AHEAD_BYTES)
        ended = False
        while True:
            for item in batch:
                if isinstance(item, EncodedFrame):
                    if read_ahead is not None and uploader.waiting_bytes > read_ahead:
                        await _room_or_stop(uploader, read_ahead, stop)
                    uploader.put_frame(item)
                    meter.payload_bytes += len(item.data)
                    if item.track_number == video_track:
                        meter.video_frames += 1
                elif isinstance(item, _SourceEnd):
                    _raise_if_error(item)
                    ended = True
                    break
            if ended:
                break
            if stop.is_set():
                # frames the source already handed over are sent, not thrown away (at
                # most the hand-off's bound: the source thread stops adding)
                handoff.stop()
                batch = handoff.take_nowait()
                if not batch:
                    break
            else:
                batch = await handoff.take()
        stats = await uploader.close(close_timeout_s)
        uploader = None
        final = meter.snapshot(done=True)
        log.info("upload finished: %s", final.line())
        if progress is not None:
            progress(final)
        return stats
    finally:
        if deadline is not None:
            deadline.cancel()
        handoff.close()  # unblocks a source thread waiting for room
        source.abandon()  # and user code waiting to put frames into the source
        for task in (watcher, ticker):
            if task is not None:
                task.cancel()
        if uploader is not None:
            # Leaving on an error: still send what was read (the error is raised anyway).
            with contextlib.suppress(KvsError):
                await uploader.close(close_timeout_s)
        await asyncio.to_thread(thread.join, 2.0)


def _raise_if_error(item: object) -> None:
    if isinstance(item, _SourceEnd) and item.error is not None:
        raise item.error


async def _room_or_stop(uploader: Uploader, max_bytes: int, stop: asyncio.Event) -> None:
    room = asyncio.ensure_future(uploader.wait_for_room(max_bytes))
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({room, stopped}, return_when=asyncio.FIRST_COMPLETED)
    for waiter in (room, stopped):
        waiter.cancel()


async def _wake_on_stop(handoff: _FrameHandoff, stop: asyncio.Event) -> None:
    await stop.wait()
    handoff.wake()  # the consumer may be waiting in take(): it sees the stop


async def _tick(meter: _ProgressMeter, progress: ProgressCallback | None, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        snapshot = meter.snapshot()
        log.debug("%s", snapshot.line())
        if progress is not None:
            progress(snapshot)


def _log_ack(ack: Ack) -> None:
    log.debug("ack %s %s", ack.event_type.value, ack.fragment_timecode)


class ProducerThread(threading.Thread):
    """:func:`produce` in a background thread with its own event loop.

    For synchronous code: start it, feed the source (e.g. ``NumpySource.put_frame``),
    end the source (``finish()``), then :meth:`result` waits and returns the stats or
    raises the upload's error. :meth:`stop` ends the upload early but gracefully.
    """

    def __init__(self, source: FrameSource, *args: Any, **kwargs: Any) -> None:
        super().__init__(name="kvs-producer", daemon=True)
        self._call = (source, args, kwargs)
        self._stats: UploadStats | None = None
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._ready = threading.Event()

    def run(self) -> None:
        source, args, kwargs = self._call

        async def main() -> UploadStats:
            self._loop = asyncio.get_running_loop()
            self._stop_event = asyncio.Event()
            self._ready.set()
            return await produce(source, *args, stop=self._stop_event, **kwargs)

        try:
            self._stats = asyncio.run(main())
        except BaseException as exc:
            self._error = exc
        finally:
            self._ready.set()

    def stop(self) -> None:
        """End the upload gracefully (flush and wait for the last acks)."""
        self._ready.wait()
        if self._loop is not None and self._stop_event is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop_event.set)

    def result(self, timeout: float | None = None) -> UploadStats:
        """Wait for the upload to end; its stats, or its exception raised here."""
        self.join(timeout)
        if self.is_alive():
            raise TimeoutError("the producer is still running")
        if self._error is not None:
            raise self._error
        assert self._stats is not None
        return self._stats
