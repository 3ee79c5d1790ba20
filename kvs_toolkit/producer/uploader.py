"""The resilient PutMedia uploader: frames in, fragments acknowledged out.

One task keeps a PutMedia connection open and streams the body; another reads the
acknowledgements on the same connection. Every fragment stays in a bounded
:class:`~kvs_toolkit.producer.fragmenter.FragmentBuffer` until the service acknowledges
it; after a dropped connection, an HTTP error or a retriable ERROR ack (4000, 4003,
5000, 5001, as the C producer SDK retries), a new connection sends again everything
not yet acknowledged, with exponential back-off between attempts. Connections are
rotated before the service's ~45 minute limit (ErrorId 4003).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

import aiohttp
from botocore.credentials import Credentials

from kvs_toolkit.acks import Ack, AckEventType
from kvs_toolkit.errors import PutMediaError
from kvs_toolkit.mkv import TrackInfo
from kvs_toolkit.mkv.writer import FragmentMetadata
from kvs_toolkit.producer.fragmenter import (
    DEFAULT_BUFFER_BYTES,
    DEFAULT_FRAGMENT_DURATION_MS,
    EncodedFrame,
    FragmentBuffer,
    Fragmenter,
    PendingFragment,
)
from kvs_toolkit.putmedia import PutMediaSession

log = logging.getLogger(__name__)

# The service ends a PutMedia connection after about 45 minutes (ErrorId 4003).
DEFAULT_ROTATE_AFTER_S: Final = 40 * 60
_BACKOFF_MAX_S: Final = 30.0


@dataclass
class UploadStats:
    frames: int = 0
    fragments: int = 0
    acked: int = 0
    errors: dict[int, int] = field(default_factory=dict)
    dropped_fragments: int = 0
    connections: int = 0
    bytes_sent: int = 0
    # the latest acknowledgement latencies only: a producer runs for months
    ack_latency_ms: deque[float] = field(default_factory=lambda: deque(maxlen=1000))


AckLevel = Literal["PERSISTED", "RECEIVED"]


class Uploader:
    """Upload encoded frames to one stream, surviving connection loss.

    ``ack_level`` is the event that releases a fragment from the buffer: PERSISTED by
    default; RECEIVED for a stream with no retention (the service sends no PERSISTED).
    ``on_ack`` is called with every acknowledgement (for progress display).
    """

    def __init__(
        self,
        endpoint: str,
        stream_name: str,
        tracks: Sequence[TrackInfo],
        *,
        credentials: Credentials | None = None,
        region: str = "us-east-1",
        fragment_duration_ms: int = DEFAULT_FRAGMENT_DURATION_MS,
        buffer_bytes: int = DEFAULT_BUFFER_BYTES,
        ack_level: AckLevel = "PERSISTED",
        rotate_after_s: float = DEFAULT_ROTATE_AFTER_S,
        metadata: FragmentMetadata | None = None,
        on_ack: Callable[[Ack], None] | None = None,
        endpoint_provider: Callable[[], str] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.stream_name = stream_name
        self.credentials = credentials
        self.region = region
        self.ack_level = AckEventType(ack_level)
        self.rotate_after_s = rotate_after_s
        self.fragmenter = Fragmenter(
            tracks, fragment_duration_ms=fragment_duration_ms, metadata=metadata
        )
        self.buffer = FragmentBuffer(buffer_bytes)
        self.stats = UploadStats()
        self._on_ack = on_ack
        self._endpoint_provider = endpoint_provider
        self._new_data = asyncio.Event()
        self._all_acked = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._fatal: PutMediaError | None = None
        self._sent_at: dict[int, float] = {}

    # --- the producer side ----------------------------------------------------------
    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"putmedia-{self.stream_name}")

    def put_fragment_metadata(self, name: str, value: str, *, persistent: bool = True) -> None:
        """Attach metadata to the next fragment (and every later one if persistent)."""
        self.fragmenter.metadata.put(name, value, persistent=persistent)

    def put_frame(self, frame: EncodedFrame) -> None:
        """Queue one encoded frame (never blocks: the buffer's bound applies)."""
        if self._fatal is not None:
            raise self._fatal
        fragment, completed = self.fragmenter.add(frame)
        for done in completed:
            self._fragment_done(done)
        if fragment is None:
            return
        self.stats.frames += 1
        if fragment.frames == 1:
            self.stats.fragments += 1
            self._count_dropped(self.buffer.add(fragment))
        else:
            self._count_dropped(self.buffer.grew(fragment, len(fragment.chunks[-1])))
        self._all_acked.clear()
        self._new_data.set()

    def _fragment_done(self, fragment: PendingFragment) -> None:
        # Ack latency counts from the moment the fragment is complete on our side: an
        # unknown-size Cluster cannot be acknowledged before its end is known.
        self._sent_at[fragment.timecode] = time.monotonic()
        self._new_data.set()

    def _count_dropped(self, dropped: list[PendingFragment]) -> None:
        for fragment in dropped:
            self.stats.dropped_fragments += 1
            self._sent_at.pop(fragment.timecode, None)
            log.warning(
                "buffer full (%d bytes): dropped unacknowledged fragment %d",
                self.buffer.max_bytes,
                fragment.timecode,
            )

    async def close(self, timeout: float = 30.0) -> UploadStats:
        """End the upload: flush the last fragment, wait for its ack, close."""
        last = self.fragmenter.flush()
        if last is not None:
            self._count_dropped(self.buffer.grew(last, len(last.chunks[-1])))
            self._fragment_done(last)
        self._closing = True
        if len(self.buffer) == 0:
            self._all_acked.set()
        try:
            await asyncio.wait_for(self._all_acked.wait(), timeout)
        except asyncio.TimeoutError:
            log.warning("%d fragments still unacknowledged at close", len(self.buffer))
        finally:
            if self._task is not None:
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
        if self._fatal is not None:
            raise self._fatal
        return self.stats

    # --- the connection side --------------------------------------------------------
    async def _run(self) -> None:
        attempt = 0
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10)
        ) as http:
            while True:
                started = time.monotonic()
                try:
                    await self._connection(http)
                    attempt = 0
                except PutMediaError as exc:
                    if exc.status in (400, 401, 403, 404) and exc.error_code not in (
                        "ConnectionLimitExceededException",
                        "ClientLimitExceededException",
                    ):
                        # A wrong stream or credential will not fix itself: stop and say so.
                        self._fatal = exc
                        self._all_acked.set()
                        log.error("PutMedia failed for good: %s", exc)
                        return
                    log.warning("PutMedia connection failed: %s", exc)
                if time.monotonic() - started > 60:
                    attempt = 0
                attempt += 1
                delay = min(_BACKOFF_MAX_S, 0.2 * 2 ** min(attempt, 8)) * random.uniform(0.5, 1)
                await asyncio.sleep(delay)

    async def _connection(self, http: aiohttp.ClientSession) -> None:
        if self._endpoint_provider is not None:
            self.endpoint = self._endpoint_provider()
        session = PutMediaSession(
            http,
            self.endpoint,
            self.stream_name,
            credentials=self.credentials,
            region=self.region,
        )
        async with session:
            self.stats.connections += 1
            tasks = {
                asyncio.create_task(self._read_acks(session)),
                asyncio.create_task(self._write(session)),
            }
            try:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                # Both tasks end with the connection, also when this task is cancelled
                # (close()); gather, not suppress(CancelledError), so that cancellation
                # propagates instead of being swallowed here.
                for task in tasks:
                    task.cancel()
                results = await asyncio.gather(*tasks, return_exceptions=True)
                self.stats.bytes_sent += session.bytes_sent
            errors = [r for r in results if isinstance(r, Exception)]  # not CancelledError
            if errors:
                raise errors[0]

    async def _write(self, session: PutMediaSession) -> None:
        opened = time.monotonic()
        await session.write(self.fragmenter.header)
        sent: dict[int, int] = {}
        while True:
            self._new_data.clear()
            for fragment in self.buffer.pending():
                count = sent.get(fragment.timecode, 0)
                if count < len(fragment.chunks):
                    for chunk in fragment.chunks[count:]:
                        await session.write(chunk)
                    sent[fragment.timecode] = len(fragment.chunks)
            if self._closing and all(f.complete for f in self.buffer.pending()):
                await session.finish()
                await asyncio.Event().wait()  # the ack reader ends the connection
            if time.monotonic() - opened > self.rotate_after_s and self._at_fragment_start():
                log.info("rotating the PutMedia connection after %.0f s", self.rotate_after_s)
                await session.finish()
                await asyncio.sleep(2)  # let the last acks arrive
                raise PutMediaError("connection rotated")
            await self._new_data.wait()

    def _at_fragment_start(self) -> bool:
        current = self.fragmenter.current
        return current is None or current.frames <= 1

    async def _read_acks(self, session: PutMediaSession) -> None:
        async for ack in session.acks():
            if self._on_ack is not None:
                self._on_ack(ack)
            if ack.event_type == AckEventType.ERROR:
                error_id = ack.error_id or 0
                self.stats.errors[error_id] = self.stats.errors.get(error_id, 0) + 1
                log.warning(
                    "fragment %s: ERROR %s %s", ack.fragment_timecode, error_id, ack.error_code
                )
                if ack.retriable:
                    raise PutMediaError(
                        f"retriable error {error_id}", error_id=error_id, error_code=ack.error_code
                    )
                if ack.fragment_timecode is not None:
                    # The service will never take this fragment: skip it, as the C SDK does.
                    self.buffer.acknowledge(ack.fragment_timecode)
                    self._sent_at.pop(ack.fragment_timecode, None)
                    self._check_all_acked()
                continue
            if ack.event_type == self.ack_level and ack.fragment_timecode is not None:
                if self.buffer.acknowledge(ack.fragment_timecode) is not None:
                    self.stats.acked += 1
                    sent = self._sent_at.pop(ack.fragment_timecode, None)
                    if sent is not None:
                        self.stats.ack_latency_ms.append((time.monotonic() - sent) * 1000)
                self._check_all_acked()
        raise PutMediaError("the service closed the PutMedia connection")

    def _check_all_acked(self) -> None:
        if self._closing and len(self.buffer) == 0:
            self._all_acked.set()
