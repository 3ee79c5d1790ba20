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

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, TextIO

import botocore.exceptions
from botocore.credentials import Credentials

from kvs_toolkit.acks import Ack
from kvs_toolkit.errors import KvsError, PutMediaError
from kvs_toolkit.mkv import TrackInfo
from kvs_toolkit.producer.credentials import (
    add_credential_arguments,
    aws_session,
    credentials_from_args,
    region_from_args,
    session_from_args,
)
from kvs_toolkit.producer.encoder import ENCODERS
from kvs_toolkit.producer.fragmenter import (
    DEFAULT_BUFFER_BYTES,
    DEFAULT_FRAGMENT_DURATION_MS,
    EncodedFrame,
)
from kvs_toolkit.producer.metrics import DEFAULT_INTERVAL_S as DEFAULT_METRICS_INTERVAL_S
from kvs_toolkit.producer.metrics import CloudWatchMetrics, MetricsPublisher
from kvs_toolkit.producer.sources import (
    FrameSource,
    SourceError,
    SourceOptions,
    iso_time_ms,
    open_source,
)
from kvs_toolkit.producer.spool import DEFAULT_SPOOL_MAX_BYTES
from kvs_toolkit.producer.uploader import AckLevel, Uploader, UploadStats

if TYPE_CHECKING:
    from mypy_boto3_kinesisvideo import KinesisVideoClient

__all__ = [
    "DataEndpointCache",
    "ProducerThread",
    "Progress",
    "add_produce_arguments",
    "cmd_produce",
    "parse_size",
    "parse_start_time",
    "parse_tags",
    "produce",
    "resolve_data_endpoint",
    "stop_on_signals",
]

log = logging.getLogger(__name__)

DEFAULT_REGION: Final = "us-east-1"
DEFAULT_RETENTION_HOURS: Final = 24
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


def _client(
    endpoint_url: str | None, region: str, credentials: Credentials | None
) -> KinesisVideoClient:
    # aws_session keeps refreshing credentials refreshing (the data endpoint is looked up
    # again long after start-up, when temporary credentials may have been renewed)
    return aws_session(credentials, region).client("kinesisvideo", endpoint_url=endpoint_url)


def resolve_data_endpoint(
    stream_name: str,
    *,
    endpoint_url: str | None = None,
    region: str = DEFAULT_REGION,
    credentials: Credentials | None = None,
    create_stream: bool = False,
    retention_hours: int = DEFAULT_RETENTION_HOURS,
    media_type: str = "video/h264",
    kms_key_id: str | None = None,
) -> tuple[str, int]:
    """(PUT_MEDIA data endpoint, the stream's retention in hours); blocking (boto3).

    ``endpoint_url`` is the control plane's (the emulator's, or None for AWS). With
    ``create_stream`` a missing stream is created (encrypted with ``kms_key_id``, else
    the service's default key) and waited for until ACTIVE.
    """
    client = _client(endpoint_url, region, credentials)
    try:
        try:
            info = client.describe_stream(StreamName=stream_name)["StreamInfo"]
        except client.exceptions.ResourceNotFoundException:
            if not create_stream:
                raise PutMediaError(
                    f"stream {stream_name!r} does not exist (use --create-stream)",
                    status=404,
                    error_code="ResourceNotFoundException",
                ) from None
            log.info("creating stream %s (retention %d h)", stream_name, retention_hours)
            options: dict[str, Any] = {} if kms_key_id is None else {"KmsKeyId": kms_key_id}
            client.create_stream(
                StreamName=stream_name,
                DataRetentionInHours=retention_hours,
                MediaType=media_type,
                **options,
            )
            info = _wait_active(client, stream_name)
        endpoint = client.get_data_endpoint(StreamName=stream_name, APIName="PUT_MEDIA")
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
    return endpoint["DataEndpoint"], int(info.get("DataRetentionInHours", 0))


class DataEndpointCache:
    """The stream's PUT_MEDIA endpoint, looked up again for a new connection.

    The uploader calls it (from a worker thread: boto3 blocks) before every connection:
    at start, at each rotation before the 45-minute limit (docs/kvs-wire.md "GetMedia" asks
    consumers to refresh the endpoint about that often, and the same holds for a
    producer), and on each reconnection after a failure, when the endpoint may have
    moved. GetDataEndpoint is called at most once per ``min_interval_s`` (a reconnection
    storm must not become a control-plane storm); a failed lookup keeps the last
    endpoint, since in an outage the control plane is as unreachable as the data plane.
    """

    def __init__(
        self,
        stream_name: str,
        endpoint: str,
        *,
        endpoint_url: str | None = None,
        region: str = DEFAULT_REGION,
        credentials: Credentials | None = None,
        min_interval_s: float = _DATA_ENDPOINT_MIN_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream_name = stream_name
        self.endpoint = endpoint
        self.lookups = 0
        self._endpoint_url = endpoint_url
        self._region = region
        self._credentials = credentials
        self._min_interval_s = min_interval_s
        self._clock = clock
        self._looked_up_at = clock()  # ``endpoint`` was just looked up
        self._client: KinesisVideoClient | None = None

    def __call__(self) -> str:
        now = self._clock()
        if now - self._looked_up_at < self._min_interval_s:
            return self.endpoint
        self._looked_up_at = now
        self.lookups += 1
        try:
            if self._client is None:
                self._client = _client(self._endpoint_url, self._region, self._credentials)
            found = self._client.get_data_endpoint(
                StreamName=self.stream_name, APIName="PUT_MEDIA"
            )["DataEndpoint"]
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            log.warning("GetDataEndpoint failed, keeping %s: %s", self.endpoint, exc)
            return self.endpoint
        if found != self.endpoint:
            log.info("data endpoint of %s is now %s", self.stream_name, found)
            self.endpoint = found
        return self.endpoint


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
    endpoint: str | None,
    stream_name: str,
    *,
    tags: Mapping[str, str] | None = None,
    credentials: Credentials | None = None,
    region: str = DEFAULT_REGION,
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

    ``endpoint`` is the control-plane endpoint URL (the emulator's; None for AWS in
    ``region``): the PutMedia endpoint is found with GetDataEndpoint, unless
    ``data_endpoint`` gives it directly. ``tags`` become persistent fragment metadata.
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
                endpoint_url=endpoint,
                region=region,
                credentials=credentials,
                create_stream=create_stream,
                retention_hours=retention_hours,
                media_type=_media_type(tracks),
                kms_key_id=kms_key_id,
            )
            data_endpoint = resolved
            endpoint_provider = DataEndpointCache(
                stream_name,
                resolved,
                endpoint_url=endpoint,
                region=region,
                credentials=credentials,
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
        for task in (watcher, ticker):
            if task is not None:
                task.cancel()
        if uploader is not None:
            # Leaving on an error: still send what was read (the error is raised anyway).
            with contextlib.suppress(KvsError):
                await uploader.close(close_timeout_s)
        await asyncio.to_thread(thread.join, 2.0)


def stop_on_signals() -> asyncio.Event:
    """An event the first SIGINT (Ctrl-C) or SIGTERM (systemd's stop) sets, for
    ``produce(stop=...)``: the producer flushes its last fragment and waits for acks.
    Each handler goes after it fires, so a second signal kills. Call it on the running
    loop; where signal handlers cannot be installed (Windows, a thread other than the
    main one) the event is only set by whoever else holds it."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: signal.Signals) -> None:
        log.warning("%s: flushing the last fragment", signum.name)
        stop.set()
        loop.remove_signal_handler(signum)

    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, on_signal, signum)
    return stop


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


# ---------------------------------------------------------------------------------------
# kvs produce


def parse_start_time(text: str) -> int | Literal["source"]:
    """``--start-time``: "source", or an ISO 8601 time (UTC unless it says) as epoch ms."""
    if text == "source":
        return "source"
    try:
        return iso_time_ms(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an ISO 8601 time (2026-11-26T08:00:00Z) or 'source': {text!r}"
        ) from None


def parse_tags(pairs: list[str] | None) -> dict[str, str]:
    """``["site=porch", "cam=1"]`` -> ``{"site": "porch", "cam": "1"}``."""
    tags: dict[str, str] = {}
    for pair in pairs or ():
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise argparse.ArgumentTypeError(f"--tag takes KEY=VALUE, not {pair!r}")
        tags[name] = value
    return tags


_SIZE_UNITS: Final = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(text: str) -> int:
    """``"512M"`` -> 536870912: bytes, with an optional K/M/G/T suffix (powers of 1024)."""
    cleaned = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = cleaned[-1:] if cleaned[-1:] in _SIZE_UNITS else ""
    number = cleaned[: len(cleaned) - len(unit)]
    try:
        value = float(number) * _SIZE_UNITS[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a size is a number of bytes with an optional K, M, G or T suffix, not {text!r}"
        ) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"a size must be positive, not {text!r}")
    return int(value)


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, not {text!r}")
    return value


def add_produce_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``kvs produce``."""
    parser.add_argument(
        "source",
        help="video file, URL (rtsp://, rtmp://, http://), camera:N, or - for an "
        "H.264/H.265 Annex-B stream on stdin",
    )
    parser.add_argument("--stream", required=True, help="stream name")
    parser.add_argument(
        "--endpoint-url", help="control plane endpoint (e.g. the emulator); default: AWS"
    )
    parser.add_argument("--region", help="AWS region (default: AWS_REGION or the profile's)")
    parser.add_argument(
        "--tag",
        action="append",
        metavar="KEY=VALUE",
        help="persistent fragment metadata (repeatable)",
    )
    parser.add_argument(
        "--fragment-duration",
        type=float,
        default=DEFAULT_FRAGMENT_DURATION_MS / 1000,
        metavar="SECONDS",
        help="fragment length; also the key-frame interval when encoding (default 2.0)",
    )
    pacing = parser.add_mutually_exclusive_group()
    pacing.add_argument(
        "--realtime",
        dest="realtime",
        action="store_true",
        default=True,
        help="send a file at its frame rate (the default)",
    )
    pacing.add_argument(
        "--fast",
        "--no-realtime",
        dest="realtime",
        action="store_false",
        help="send a file as fast as the service acknowledges it, not at its frame rate "
        "(for stdin: the pipe carries a recording, not a camera; automatic when stdin "
        "is a file)",
    )
    parser.add_argument("--loop", action="store_true", help="replay the file forever")
    parser.add_argument(
        "--start-time",
        type=parse_start_time,
        metavar="TIME",
        help="stamp a file's first frame with this time instead of now: ISO 8601 "
        "(2026-11-26T08:00:00Z) or 'source' for the file's creation_time (upload a "
        "recording with the time it was made)",
    )
    parser.add_argument(
        "--fps",
        type=float,
        help="camera frame rate; for stdin, timestamps at this rate instead of arrival time",
    )
    parser.add_argument(
        "--codec",
        choices=("h264", "h265"),
        default="h264",
        help="codec of the stdin stream, and of the encoder when encoding (default h264)",
    )
    parser.add_argument(
        "--encoder",
        choices=("auto", *ENCODERS),
        default="auto",
        help="auto: the hardware encoder when it opens, else libx264/libx265",
    )
    parser.add_argument("--bitrate", type=int, help="encoder bitrate in bit/s (default: CRF)")
    parser.add_argument("--width", type=int, help="camera width")
    parser.add_argument("--height", type=int, help="camera height")
    parser.add_argument("--no-audio", dest="audio", action="store_false", help="drop audio")
    parser.add_argument(
        "--create-stream", action="store_true", help="create the stream if it does not exist"
    )
    parser.add_argument(
        "--retention-hours",
        type=int,
        default=DEFAULT_RETENTION_HOURS,
        help="retention of a stream created with --create-stream (default 24)",
    )
    parser.add_argument(
        "--kms-key-id",
        metavar="KEY",
        help="KMS key (id, ARN or alias) of a stream created with --create-stream "
        "(default: the service's key)",
    )
    parser.add_argument(
        "--duration",
        type=_positive_seconds,
        metavar="SECONDS",
        help="stop gracefully after this long (flush and wait for the last acks)",
    )
    parser.add_argument(
        "--close-timeout",
        type=_positive_seconds,
        default=30.0,
        metavar="SECONDS",
        help="at the end, how long to wait for the last acks (default 30); what is not "
        "acknowledged by then stays in --spool-dir for the next run",
    )
    parser.add_argument(
        "--buffer-max-bytes",
        type=parse_size,
        default=DEFAULT_BUFFER_BYTES,
        metavar="SIZE",
        help="memory for unacknowledged fragments; when full the oldest is dropped (default 64M)",
    )
    parser.add_argument(
        "--spool-dir",
        metavar="DIR",
        help="also keep unacknowledged fragments in this directory: through long outages "
        "and across restarts (sent first when the producer starts again)",
    )
    parser.add_argument(
        "--spool-max-bytes",
        type=parse_size,
        default=DEFAULT_SPOOL_MAX_BYTES,
        metavar="SIZE",
        help="bound of --spool-dir; when full the oldest fragment is dropped (default 1G)",
    )
    parser.add_argument(
        "--cloudwatch-namespace",
        metavar="NAMESPACE",
        help="publish upload metrics to CloudWatch in this namespace "
        "(needs cloudwatch:PutMetricData)",
    )
    parser.add_argument(
        "--metrics-interval",
        type=_positive_seconds,
        default=DEFAULT_METRICS_INTERVAL_S,
        metavar="SECONDS",
        help="CloudWatch metrics period (default 60)",
    )
    add_credential_arguments(parser)


class StatusLine:
    """Progress on stderr: one line, at most once per second (rewritten on a terminal)."""

    def __init__(self, out: TextIO | None = None, every_s: float = 1.0) -> None:
        self.out = out if out is not None else sys.stderr
        self.every_s = every_s
        self._last = 0.0
        self._tty = self.out.isatty()

    def __call__(self, progress: Progress) -> None:
        now = time.monotonic()
        if not progress.done and now - self._last < self.every_s:
            return
        self._last = now
        if self._tty:
            self.out.write("\r\x1b[K" + progress.line() + ("\n" if progress.done else ""))
        else:
            self.out.write(progress.line() + "\n")
        self.out.flush()


def cmd_produce(args: argparse.Namespace) -> int:
    """``kvs produce SOURCE --stream NAME ...``: upload until the source ends or Ctrl-C."""
    tags = parse_tags(args.tag)
    fragment_ms = round(args.fragment_duration * 1000)
    if fragment_ms <= 0:
        raise SourceError("--fragment-duration must be positive")
    options = SourceOptions(
        realtime=args.realtime,
        loop=args.loop,
        fps=args.fps,
        codec=args.codec,
        encoder=args.encoder,
        bitrate=args.bitrate,
        audio=args.audio,
        width=args.width,
        height=args.height,
        fragment_duration_ms=fragment_ms,
        start_time_ms=args.start_time,
    )
    session = session_from_args(args)
    credentials = credentials_from_args(args, session)
    if credentials is None:
        log.warning("no AWS credentials found: PutMedia requests go unsigned")
    region = region_from_args(args, session, DEFAULT_REGION)
    source = open_source(args.source, options)

    async def main() -> UploadStats:
        stop = stop_on_signals()
        return await produce(
            source,
            args.endpoint_url,
            args.stream,
            tags=tags,
            credentials=credentials,
            region=region,
            fragment_duration_ms=fragment_ms,
            create_stream=args.create_stream,
            retention_hours=args.retention_hours,
            kms_key_id=args.kms_key_id,
            progress=StatusLine(),
            stop=stop,
            close_timeout_s=args.close_timeout,
            duration_s=args.duration,
            buffer_bytes=args.buffer_max_bytes,
            spool_dir=args.spool_dir,
            spool_max_bytes=args.spool_max_bytes,
            cloudwatch_namespace=args.cloudwatch_namespace,
            metrics_interval_s=args.metrics_interval,
        )

    stats = asyncio.run(main())
    if not stats.all_acknowledged:
        # exit status 0 only when everything produced was acknowledged
        log.warning(
            "not everything was acknowledged: %d fragments dropped, %d unacknowledged%s, "
            "errors by id: %s",
            stats.dropped_fragments,
            stats.unacknowledged,
            " (kept in the spool)" if stats.spool_fragments else "",
            stats.errors,
        )
        return 1
    return 0
