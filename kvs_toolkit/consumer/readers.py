"""Fragment sources: a live stream (GetMedia), archived media by time range, MKV files.

Every reader is a :class:`FragmentSource`: iterate it for
:class:`~kvs_toolkit.mkv.Fragment` objects, read its :class:`ReaderStats`, ``stop()``
it from any thread, ``close()`` it when done::

    with LiveReader("front-door", start=StartSelector.now()) as reader:
        for fragment in reader:
            for frame in decoder.iter_decode(fragment):
                ...

* :class:`LiveReader` - GetMedia from any StartSelector, following the stream live.
  Each fragment is handed out as soon as its last byte arrived. A dropped or ended
  connection, and the service's session limit (~45 minutes; proactively at
  ``session_max_s``), are resumed from the last continuation token, so no fragment is
  lost or delivered twice (fragment numbers are also checked, as a guard). The
  GetDataEndpoint answer is cached and refreshed every ``endpoint_refresh_s`` and after
  endpoint errors. Errors back off exponentially with jitter; throttling
  (ClientLimitExceeded, ConnectionLimitExceeded) is retried, a missing stream or a
  refused signature raises :class:`~kvs_toolkit.errors.GetMediaError` at once. Fragments
  carrying ``AWS_KINESISVIDEO_ERROR_CODE`` are logged and counted (4000, fragment not
  found, is skipped). With a :class:`~kvs_toolkit.consumer.checkpoint.CheckpointStore`
  it resumes from the stream's checkpoint and saves one after each processed fragment.
* :class:`ArchiveReader` - ListFragments over a producer or server time range (all
  pages, sorted by timestamp then number: the service does not guarantee an order),
  then GetMediaForFragmentList in batches of at most 1000.
* :class:`FileReader` - a GetMedia capture or any MKV file on disk.

Memory stays bounded: one fragment at a time (an element larger than
``max_element_size`` is an error, see :class:`~kvs_toolkit.mkv.FragmentReader`), a
fixed window of recent fragment numbers, counters only in the stats.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, Final, Protocol, TypeVar, runtime_checkable

from kvs_toolkit.aws import AwsAccess
from kvs_toolkit.consumer.checkpoint import Checkpoint, CheckpointStore
from kvs_toolkit.consumer.clients import (
    NETWORK_ERRORS,
    TIMEOUTS,
    Retryable,
    Stopped,
    StreamClients,
    attempt_text,
    give_up_text,
    translate_error,
)
from kvs_toolkit.consumer.selectors import StartSelector, TimestampType, parse_timestamp
from kvs_toolkit.errors import GetMediaError, MkvError
from kvs_toolkit.getmedia import interrupt, iter_payload
from kvs_toolkit.mkv import DEFAULT_MAX_ELEMENT_SIZE, Fragment, FragmentReader
from kvs_toolkit.retry import RetryPolicy

if TYPE_CHECKING:
    # Annotations only: boto3 costs ~0.15 s to import, which a file read never needs.
    import boto3.session

__all__ = [
    "DEFAULT_ENDPOINT_REFRESH_S",
    "DEFAULT_SESSION_MAX_S",
    "MAX_FRAGMENT_LIST",
    "ArchiveReader",
    "Backoff",
    "FileReader",
    "FragmentInfo",
    "FragmentSource",
    "LiveReader",
    "ReaderStats",
    "StartSelector",
    "parse_timestamp",
]

log = logging.getLogger(__name__)

DEFAULT_REGION: Final = "us-east-1"
# docs/kvs-wire.md "GetMedia": a session ends after roughly 40-50 minutes; reconnect before
# the earliest end, and refresh the data endpoint about every 45 minutes.
DEFAULT_SESSION_MAX_S: Final = 40 * 60.0
DEFAULT_ENDPOINT_REFRESH_S: Final = 45 * 60.0
# No byte for this long: the stream is idle (or the connection silently dead). The
# reader reconnects from the continuation token, which costs one request.
DEFAULT_READ_TIMEOUT_S: Final = 30.0
DEFAULT_CONNECT_TIMEOUT_S: Final = 10.0
# GetMediaForFragmentList and ListFragments take at most 1000 (docs/kvs-wire.md "Limits").
MAX_FRAGMENT_LIST: Final = 1000
MAX_LIST_RESULTS: Final = 1000
# GetMedia error ids (docs/kvs-wire.md "GetMedia").
ERROR_FRAGMENT_NOT_FOUND: Final = 4000
_KMS_ERRORS: Final = range(4500, 4507)
# Fragment numbers remembered to drop a repeat (bounded memory).
_RECENT_NUMBERS: Final = 1024
_CHUNK: Final = 1 << 20


T = TypeVar("T")


# --- selectors and timestamps -------------------------------------------------------------
@dataclass
class ReaderStats:
    """What a reader did so far. Plain counters: read them from any thread.

    ``millis_behind_now``: the service's AWS_KINESISVIDEO_MILLIS_BEHIND_NOW of the
    latest fragment; ``wall_lag_ms``: local time minus its producer timestamp (includes
    clock skew between producer and consumer).
    """

    started: float = field(default_factory=time.monotonic)
    fragments: int = 0
    frames: int = 0
    bytes: int = 0
    connections: int = 0
    reconnects: int = 0
    session_rotations: int = 0
    idle_reconnects: int = 0
    duplicates: int = 0
    skipped: int = 0  # error fragments skipped (4000: fragment not found)
    errors: dict[int, int] = field(default_factory=dict)  # error fragments by ErrorId
    failures: int = 0  # failed requests and connections (retried)
    throttled: int = 0
    endpoint_refreshes: int = 0
    checkpoints_saved: int = 0
    listed: int = 0  # ArchiveReader: fragments ListFragments returned
    millis_behind_now: int | None = None
    wall_lag_ms: float | None = None
    last_fragment_number: str | None = None
    last_producer_timestamp: dt.datetime | None = None
    last_error: str | None = None

    @property
    def elapsed_s(self) -> float:
        return max(time.monotonic() - self.started, 1e-9)

    def count(self, fragment: Fragment) -> None:
        self.fragments += 1
        self.frames += len(fragment.frames)
        self.last_fragment_number = fragment.fragment_number
        behind = fragment.millis_behind_now
        if behind is not None:
            self.millis_behind_now = behind
        producer = fragment.producer_timestamp
        if producer is not None:
            self.last_producer_timestamp = producer
            self.wall_lag_ms = (time.time() - producer.timestamp()) * 1000

    def count_error(self, error_id: int) -> None:
        self.errors[error_id] = self.errors.get(error_id, 0) + 1


#: The readers' back-off is the project's one retry policy (kept under this name for
#: existing code).
Backoff = RetryPolicy


@runtime_checkable
class FragmentSource(Protocol):
    """Anything that yields fragments: the live, archive and file readers."""

    @property
    def stats(self) -> ReaderStats: ...

    def __iter__(self) -> Iterator[Fragment]: ...

    def stop(self) -> None:
        """Ask the iteration to end soon; safe from any thread."""
        ...

    def close(self) -> None:
        """Stop and release connections (and save a pending checkpoint)."""
        ...


# --- AWS clients ------------------------------------------------------------------------------
def _close_quietly(payload: Any) -> None:
    with contextlib.suppress(Exception):
        payload.close()


def _error_id(fragment: Fragment) -> int | None:
    """The fragment's ErrorId (GetMediaForFragmentList puts it in the code tag); -1 for an
    error without a numeric id; None for a fragment without error tags."""
    if fragment.error_id is not None:
        return fragment.error_id
    code = fragment.error_code
    if code is None:
        return None
    return int(code) if code.isdigit() else -1


def _describe_error(fragment: Fragment) -> str:
    parts = [f"ErrorId {_error_id(fragment)}"]
    if fragment.error_code and not fragment.error_code.isdigit():
        parts.append(fragment.error_code)
    if fragment.error_message:
        parts.append(fragment.error_message)
    if fragment.fragment_number:
        parts.append(f"fragment {fragment.fragment_number}")
    return ", ".join(parts)


def _number_value(number: str) -> int | None:
    # Fragment numbers are decimal and increase with ingestion order.
    return int(number) if number.isdigit() else None


# --- live -----------------------------------------------------------------------------------
class LiveReader:
    """Fragments of a stream through GetMedia, followed live, surviving reconnections.

    ``start``: a :class:`StartSelector` (or its :meth:`StartSelector.parse` text). With a
    ``checkpoint_store`` holding a checkpoint for ``checkpoint_key`` (default: the
    stream name), reading resumes right after it instead.

    A fragment counts as *processed* once the loop asks for the next one (or
    :meth:`commit` is called): only then is it checkpointed, so a crash while handling
    a fragment delivers that fragment again after the restart, and nothing is skipped.
    Checkpoints are saved every ``checkpoint_every`` processed fragments and/or every
    ``checkpoint_interval_s`` seconds, and by :meth:`commit` and :meth:`close`.

    ``session_max_s``: reconnect (from the continuation token) after this long on one
    connection. ``read_timeout_s``: a connection silent this long is replaced (an idle
    stream costs one request per timeout). ``max_retries``: consecutive failed attempts
    before giving up with :class:`GetMediaError` (None: never, what a live consumer
    usually wants). Iterate one loop at a time; :meth:`stop` may come from any thread
    and also interrupts a read that waits for data. ``stop_event`` lets other code stop
    the reader by setting an event; that is noticed at the next fragment, back-off or
    read timeout.
    """

    def __init__(
        self,
        stream_name: str | None = None,
        *,
        stream_arn: str | None = None,
        start: StartSelector | str = "now",
        endpoint_url: str | None = None,
        region: str | None = None,
        session: boto3.session.Session | None = None,
        aws: AwsAccess | None = None,
        checkpoint_store: CheckpointStore | None = None,
        checkpoint_key: str | None = None,
        checkpoint_every: int | None = 1,
        checkpoint_interval_s: float | None = None,
        session_max_s: float = DEFAULT_SESSION_MAX_S,
        endpoint_refresh_s: float = DEFAULT_ENDPOINT_REFRESH_S,
        read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        backoff: Backoff | None = None,
        max_retries: int | None = None,
        max_element_size: int = DEFAULT_MAX_ELEMENT_SIZE,
        stop_event: threading.Event | None = None,
    ) -> None:
        self.stats = ReaderStats()
        self._clients = StreamClients(
            stream_name,
            stream_arn,
            aws=aws,
            endpoint_url=endpoint_url,
            region=region,
            session=session,
            read_timeout_s=read_timeout_s,
            connect_timeout_s=connect_timeout_s,
            endpoint_refresh_s=endpoint_refresh_s,
            stats=self.stats,
        )
        self.name = self._clients.label
        self.start = StartSelector.parse(start) if isinstance(start, str) else start
        self.checkpoint_store = checkpoint_store
        self.checkpoint_key = checkpoint_key or self.name
        self.checkpoint_every = checkpoint_every
        self.checkpoint_interval_s = checkpoint_interval_s
        self.session_max_s = session_max_s
        self.backoff = backoff or Backoff()
        self.max_retries = max_retries
        self.max_element_size = max_element_size
        self._stop = stop_event or threading.Event()
        self._next_delay: float | None = None  # the back-off the last failure announced
        self._lock = threading.Lock()
        self._payload: Any = None
        self._resume: StartSelector | None = None
        self._checkpoint_loaded = False
        self._now_connected_at: dt.datetime | None = None
        self._idle = False
        self._recent: deque[str] = deque(maxlen=_RECENT_NUMBERS)
        self._recent_set: set[str] = set()
        self._last_value: int | None = None
        self._delivered: Fragment | None = None
        self._processed = True
        self._pending: Checkpoint | None = None
        self._unsaved = 0
        self._last_save = time.monotonic()

    # --- public ---------------------------------------------------------------------
    @property
    def resume_selector(self) -> StartSelector:
        """Where the next connection starts."""
        if self._resume is not None:
            return self._resume
        if self.start.kind == "NOW" and self._now_connected_at is not None:
            # Nothing delivered yet: NOW again would skip what arrived in between.
            return StartSelector.server_timestamp(self._now_connected_at)
        return self.start

    def __iter__(self) -> Iterator[Fragment]:
        fragments = self._fragments()
        try:
            for fragment in fragments:
                self._delivered = fragment
                self._processed = False
                yield fragment
                self._mark_processed(force=False)
        finally:
            fragments.close()  # ends the connection at once, also when the loop broke off

    def commit(self) -> None:
        """Mark the fragment last handed out as processed and save the checkpoint now."""
        if not self._processed:
            self._mark_processed(force=True)
        elif self._pending is not None:
            self._save()

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            payload = self._payload
        if payload is not None:
            interrupt(payload)

    def close(self) -> None:
        """Stop, save the checkpoint of processed fragments not yet saved, release clients.

        The fragment last handed out is not checkpointed unless :meth:`commit` said it
        was processed (or the loop asked for the next one)."""
        self.stop()
        if self._pending is not None:
            self._save()
        self._clients.close()

    def __enter__(self) -> LiveReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- checkpoints ------------------------------------------------------------------
    def _load_checkpoint(self) -> None:
        if self._checkpoint_loaded or self.checkpoint_store is None:
            return
        self._checkpoint_loaded = True
        checkpoint = self.checkpoint_store.load(self.checkpoint_key)
        if checkpoint is None:
            log.info("%s: no checkpoint, starting at %s", self.name, self.start)
            return
        self._resume = StartSelector.from_checkpoint(checkpoint)
        self._remember(checkpoint.fragment_number)
        log.info(
            "%s: resuming after checkpointed fragment %s", self.name, checkpoint.fragment_number
        )

    def _mark_processed(self, *, force: bool) -> None:
        fragment = self._delivered
        if self._processed or fragment is None:
            return
        self._processed = True
        if self.checkpoint_store is None or fragment.fragment_number is None:
            return
        self._pending = Checkpoint.of(fragment)
        self._unsaved += 1
        due = force or (
            self.checkpoint_every is not None and self._unsaved >= self.checkpoint_every
        )
        if not due and self.checkpoint_interval_s is not None:
            due = time.monotonic() - self._last_save >= self.checkpoint_interval_s
        if due:
            self._save()

    def _save(self) -> None:
        checkpoint, store = self._pending, self.checkpoint_store
        if checkpoint is None or store is None:
            return
        store.save(self.checkpoint_key, checkpoint)
        self._pending = None
        self._unsaved = 0
        self._last_save = time.monotonic()
        self.stats.checkpoints_saved += 1
        log.debug("%s: checkpoint at fragment %s", self.name, checkpoint.fragment_number)

    # --- connections ------------------------------------------------------------------
    def _fragments(self) -> Generator[Fragment, None, None]:
        self._load_checkpoint()
        failures = 0
        while not self._stop.is_set():
            if failures:
                delay = self._next_delay or self.backoff.delay(failures)
                self._next_delay = None
                if self._stop.wait(delay):
                    break
            try:
                payload = self._connect()
            except Retryable as exc:
                failures = self._failed(failures, exc)
                continue
            progressed = False
            try:
                for fragment in self._read(payload):
                    progressed = True
                    failures = 0
                    yield fragment
                    if self._stop.is_set():
                        return
            except Retryable as exc:
                if self._stop.is_set():
                    return
                if progressed:
                    self._failed(0, exc)  # counted; the first retry is immediate
                else:
                    failures = self._failed(failures, exc)
                continue
            finally:
                with self._lock:
                    self._payload = None
                _close_quietly(payload)
            if not progressed and not self._idle and not self._stop.is_set():
                failures += 1  # ended at once: do not spin on a server that hangs up

    def _failed(self, failures: int, exc: Retryable) -> int:
        self.stats.failures += 1
        self.stats.last_error = str(exc)
        if exc.throttled:
            self.stats.throttled += 1
        if exc.refresh_endpoint:
            self._clients.invalidate()
        attempts = failures + 1
        if self.max_retries is not None and attempts > self.max_retries:
            raise GetMediaError(give_up_text(str(exc), attempts)) from exc
        self._next_delay = self.backoff.delay(attempts)
        log.warning(
            "%s; %s, next in %.1f s",
            exc,
            attempt_text(attempts, self.max_retries),
            self._next_delay,
        )
        return attempts

    def _connect(self) -> Any:
        selector = self.resume_selector
        what = f"GetMedia {self.name}"
        if selector.kind == "NOW" and self._now_connected_at is None:
            self._now_connected_at = dt.datetime.now(dt.timezone.utc)
        try:
            client = self._clients.media()
            response = client.get_media(
                StartSelector=selector.to_api(),  # type: ignore[arg-type]
                **self._clients.stream,
            )
        except Exception as exc:
            translated = translate_error(exc, what)
            if translated is exc:
                raise
            raise translated from exc
        self.stats.connections += 1
        if self.stats.connections > 1:
            self.stats.reconnects += 1
        log.info("%s: connected, start %s", what, selector)
        payload = response["Payload"]
        with self._lock:
            self._payload = payload
        if self._stop.is_set():  # stop() came while connecting
            interrupt(payload)
        return payload

    def _read(self, payload: Any) -> Iterator[Fragment]:
        reader = FragmentReader(max_element_size=self.max_element_size)
        deadline = time.monotonic() + self.session_max_s
        self._idle = False
        try:
            for chunk in iter_payload(payload):
                self.stats.bytes += len(chunk)
                for fragment in reader.feed(chunk):
                    accepted = self._accept(fragment)
                    if accepted is not None:
                        yield accepted
                if self._stop.is_set():
                    return
                if time.monotonic() >= deadline:
                    self.stats.session_rotations += 1
                    log.info(
                        "%s: session reached %.0f s, reconnecting from the continuation token",
                        self.name,
                        self.session_max_s,
                    )
                    return
        except MkvError as exc:
            raise Retryable(f"GetMedia {self.name}: malformed response: {exc}") from exc
        except TIMEOUTS as exc:
            if self._stop.is_set():
                return
            self.stats.idle_reconnects += 1
            self._idle = True  # a quiet stream is no failure: reconnect without back-off
            log.debug("%s: no data for the read timeout, reconnecting (%s)", self.name, exc)
            return
        except NETWORK_ERRORS as exc:
            if self._stop.is_set():
                return
            raise Retryable(f"GetMedia {self.name}: connection lost ({exc})") from exc
        # The service ended the response. A media fragment without its trailing tags may
        # be incomplete: the next connection starts at it again. Error documents count.
        try:
            tail = reader.close(keep_truncated=True)
        except MkvError:
            tail = []
        for fragment in tail:
            if _error_id(fragment) is not None:
                self._accept(fragment)
        log.info("%s: the service ended the response", self.name)

    def _accept(self, fragment: Fragment) -> Fragment | None:
        error_id = _error_id(fragment)
        if error_id is not None:
            self._error_fragment(fragment, error_id)
            return None
        number = fragment.fragment_number
        if number is not None:
            if self._is_duplicate(number):
                self.stats.duplicates += 1
                log.debug("%s: dropped repeated fragment %s", self.name, number)
                return None
            self._remember(number)
        token = fragment.continuation_token
        if token:
            self._resume = StartSelector.continuation(token)
        elif number is not None:
            self._resume = StartSelector.after_fragment(number)
        self.stats.count(fragment)
        return fragment

    def _is_duplicate(self, number: str) -> bool:
        if number in self._recent_set:
            return True
        value = _number_value(number)
        return value is not None and self._last_value is not None and value <= self._last_value

    def _remember(self, number: str) -> None:
        if len(self._recent) == self._recent.maxlen:
            self._recent_set.discard(self._recent[0])
        self._recent.append(number)
        self._recent_set.add(number)
        value = _number_value(number)
        if value is not None:
            self._last_value = value if self._last_value is None else max(self._last_value, value)

    def _error_fragment(self, fragment: Fragment, error_id: int) -> None:
        self.stats.count_error(error_id)
        description = _describe_error(fragment)
        self.stats.last_error = description
        if error_id == ERROR_FRAGMENT_NOT_FOUND:
            self.stats.skipped += 1
            log.warning("%s: skipped a fragment that was not found (%s)", self.name, description)
            if fragment.continuation_token:
                self._resume = StartSelector.continuation(fragment.continuation_token)
            return
        if error_id in _KMS_ERRORS:
            raise GetMediaError(
                f"GetMedia {self.name}: the stream's KMS key cannot be used ({description})",
                error_id=error_id,
            )
        # 3002, 5000 and unknown ids: the service failed; resume from the last good token.
        raise Retryable(f"GetMedia {self.name}: error fragment ({description})")


# --- archive --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class FragmentInfo:
    """One ListFragments entry."""

    fragment_number: str
    size: int
    producer_timestamp: dt.datetime
    server_timestamp: dt.datetime
    duration_ms: int

    @classmethod
    def from_api(cls, entry: Any) -> FragmentInfo:
        return cls(
            fragment_number=entry["FragmentNumber"],
            size=int(entry.get("FragmentSizeInBytes", 0)),
            producer_timestamp=entry["ProducerTimestamp"],
            server_timestamp=entry["ServerTimestamp"],
            duration_ms=int(entry.get("FragmentLengthInMilliseconds", 0)),
        )


class ArchiveReader:
    """The archived fragments of a time range, in timestamp order.

    ``start``/``end`` bound the range (inclusive) on the producer or server timestamps
    (``timestamp_type``). ListFragments is paged ``page_size`` at a time and the whole
    listing sorted by (timestamp, fragment number); then GetMediaForFragmentList fetches
    ``batch_size`` fragments per request (at most 1000). Requests are retried with
    back-off up to ``max_retries`` times; a batch cut mid-way is resumed at the first
    fragment not yet delivered. Fragments answered with error 4000 (not found: expired
    since the listing) are skipped and counted.
    """

    def __init__(
        self,
        stream_name: str | None = None,
        start: dt.datetime | None = None,
        end: dt.datetime | None = None,
        *,
        stream_arn: str | None = None,
        timestamp_type: TimestampType = "PRODUCER_TIMESTAMP",
        endpoint_url: str | None = None,
        region: str | None = None,
        session: boto3.session.Session | None = None,
        aws: AwsAccess | None = None,
        page_size: int = MAX_LIST_RESULTS,
        batch_size: int = MAX_FRAGMENT_LIST,
        read_timeout_s: float = 60.0,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        backoff: Backoff | None = None,
        max_retries: int | None = 5,
        max_element_size: int = DEFAULT_MAX_ELEMENT_SIZE,
    ) -> None:
        if start is None or end is None:
            raise ValueError("ArchiveReader needs a start and an end")
        if start > end:
            raise ValueError(f"start {start.isoformat()} is after end {end.isoformat()}")
        if not 1 <= page_size <= MAX_LIST_RESULTS:
            raise ValueError(f"page_size must be 1..{MAX_LIST_RESULTS}, not {page_size}")
        if not 1 <= batch_size <= MAX_FRAGMENT_LIST:
            raise ValueError(f"batch_size must be 1..{MAX_FRAGMENT_LIST}, not {batch_size}")
        self.stats = ReaderStats()
        self._clients = StreamClients(
            stream_name,
            stream_arn,
            aws=aws,
            endpoint_url=endpoint_url,
            region=region,
            session=session,
            read_timeout_s=read_timeout_s,
            connect_timeout_s=connect_timeout_s,
            endpoint_refresh_s=DEFAULT_ENDPOINT_REFRESH_S,
            stats=self.stats,
        )
        self.name = self._clients.label
        self.start = start
        self.end = end
        self.timestamp_type: TimestampType = timestamp_type
        self.page_size = page_size
        self.batch_size = batch_size
        self.backoff = backoff or Backoff()
        self.max_retries = max_retries
        self.max_element_size = max_element_size
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._payload: Any = None

    def _call(self, what: str, request: Callable[[], T]) -> T:
        attempt = 0
        while True:
            try:
                return request()
            except Exception as exc:
                translated = translate_error(exc, what)
                if translated is exc:
                    raise
                if not isinstance(translated, Retryable):
                    raise translated from exc
                attempt = self._failed(attempt, translated)

    def _failed(self, attempt: int, exc: Retryable) -> int:
        self.stats.failures += 1
        self.stats.last_error = str(exc)
        if exc.throttled:
            self.stats.throttled += 1
        if exc.refresh_endpoint:
            self._clients.invalidate()
        attempt += 1
        if self._stop.is_set():
            raise Stopped
        if self.max_retries is not None and attempt > self.max_retries:
            raise GetMediaError(give_up_text(str(exc), attempt)) from exc
        delay = self.backoff.delay(attempt)
        log.warning("%s; %s, next in %.1f s", exc, attempt_text(attempt, self.max_retries), delay)
        if self._stop.wait(delay):
            raise Stopped
        return attempt

    def list_fragments(self) -> list[FragmentInfo]:
        """Every fragment in the range, sorted by (timestamp, fragment number)."""
        try:
            return self._list()
        except Stopped:
            raise GetMediaError(f"ListFragments {self.name}: stopped") from None

    def _list(self) -> list[FragmentInfo]:
        selector = {
            "FragmentSelectorType": self.timestamp_type,
            "TimestampRange": {"StartTimestamp": self.start, "EndTimestamp": self.end},
        }
        found: list[FragmentInfo] = []
        token: str | None = None
        while True:
            request: dict[str, Any] = {
                **self._clients.stream,
                "FragmentSelector": selector,
                "MaxResults": self.page_size,
            }
            if token:
                request["NextToken"] = token

            def page(request: dict[str, Any] = request) -> Any:
                return self._clients.archived("LIST_FRAGMENTS").list_fragments(**request)

            answer = self._call(f"ListFragments {self.name}", page)
            found.extend(FragmentInfo.from_api(f) for f in answer.get("Fragments", ()))
            token = answer.get("NextToken")
            if not token:
                break
        producer = self.timestamp_type == "PRODUCER_TIMESTAMP"

        def order(info: FragmentInfo) -> tuple[float, int, str]:
            stamp = info.producer_timestamp if producer else info.server_timestamp
            return (
                stamp.timestamp(),
                _number_value(info.fragment_number) or 0,
                info.fragment_number,
            )

        found.sort(key=order)
        self.stats.listed = len(found)
        log.info("%s: %d fragments between %s and %s", self.name, len(found), self.start, self.end)
        return found

    def __iter__(self) -> Iterator[Fragment]:
        try:
            numbers = [info.fragment_number for info in self._list()]
        except Stopped:
            return
        yield from self.get_fragments(numbers)

    def get_fragments(self, numbers: Sequence[str]) -> Iterator[Fragment]:
        """These fragments through GetMediaForFragmentList (batched), in this order."""
        for first in range(0, len(numbers), self.batch_size):
            remaining = list(numbers[first : first + self.batch_size])
            attempt = 0
            while remaining:
                if self._stop.is_set():
                    return
                try:
                    for fragment in self._fetch(remaining):
                        attempt = 0
                        yield fragment
                        if self._stop.is_set():
                            return
                except Retryable as exc:
                    try:
                        attempt = self._failed(attempt, exc)
                    except Stopped:
                        return
                    continue
                except Stopped:
                    return
                if self._stop.is_set():
                    return
                if remaining:
                    self.stats.skipped += len(remaining)
                    log.warning(
                        "%s: %d fragments missing from the response, e.g. %s",
                        self.name,
                        len(remaining),
                        remaining[0],
                    )
                break

    def _fetch(self, remaining: list[str]) -> Iterator[Fragment]:
        """One GetMediaForFragmentList request; removes what it delivers from ``remaining``."""
        what = f"GetMediaForFragmentList {self.name}"

        def request() -> Any:
            client = self._clients.archived("GET_MEDIA_FOR_FRAGMENT_LIST")
            return client.get_media_for_fragment_list(
                Fragments=list(remaining),
                **self._clients.stream,
            )

        payload = self._call(what, request)["Payload"]
        self.stats.connections += 1
        with self._lock:
            self._payload = payload
        reader = FragmentReader(max_element_size=self.max_element_size)
        try:
            try:
                for chunk in iter_payload(payload):
                    self.stats.bytes += len(chunk)
                    for fragment in reader.feed(chunk):
                        if self._take(fragment, remaining):
                            yield fragment
                tail = reader.close()
            except MkvError as exc:
                raise Retryable(f"{what}: malformed or cut response: {exc}") from exc
            except NETWORK_ERRORS as exc:
                if self._stop.is_set():
                    return
                raise Retryable(f"{what}: connection lost ({exc})") from exc
            for fragment in tail:
                if self._take(fragment, remaining):
                    yield fragment
        finally:
            with self._lock:
                self._payload = None
            _close_quietly(payload)

    def _take(self, fragment: Fragment, remaining: list[str]) -> bool:
        number = fragment.fragment_number
        if number in remaining:
            remaining.remove(number)
        error_id = _error_id(fragment)
        if error_id is None:
            self.stats.count(fragment)
            return True
        self.stats.count_error(error_id)
        description = _describe_error(fragment)
        self.stats.last_error = description
        if error_id in _KMS_ERRORS:
            raise GetMediaError(
                f"GetMediaForFragmentList {self.name}: the stream's KMS key cannot be used "
                f"({description})",
                error_id=error_id,
            )
        self.stats.skipped += 1
        log.warning("%s: skipped a fragment (%s)", self.name, description)
        return False

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            payload = self._payload
        if payload is not None:
            interrupt(payload)

    def close(self) -> None:
        self.stop()
        self._clients.close()

    def __enter__(self) -> ArchiveReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# --- files --------------------------------------------------------------------------------
class FileReader:
    """The fragments of a GetMedia capture or any MKV file (a path, or a binary stream).

    A file cut off mid-fragment yields the complete frames of that last fragment (its
    ``truncated`` flag set) unless ``keep_truncated`` is False, in which case the cut
    raises :class:`~kvs_toolkit.errors.MkvError`. Malformed data raises
    :class:`~kvs_toolkit.errors.MkvError` naming the file and the byte offset.
    """

    def __init__(
        self,
        source: str | os.PathLike[str] | IO[bytes],
        *,
        keep_truncated: bool = True,
        chunk_size: int = _CHUNK,
        max_element_size: int = DEFAULT_MAX_ELEMENT_SIZE,
    ) -> None:
        self.source = source
        self.name = getattr(source, "name", None) or str(source)
        if isinstance(source, (str, os.PathLike)):
            self.name = str(Path(source))
        self.keep_truncated = keep_truncated
        self.chunk_size = chunk_size
        self.max_element_size = max_element_size
        self.stats = ReaderStats()
        self._stop = threading.Event()

    def __iter__(self) -> Iterator[Fragment]:
        if isinstance(self.source, (str, os.PathLike)):
            try:
                stream: IO[bytes] = open(self.source, "rb")  # noqa: SIM115 - closed below
            except OSError as exc:
                raise MkvError(f"cannot read {self.name}: {exc.strerror or exc}") from exc
            with stream:
                yield from self._read(stream)
        else:
            yield from self._read(self.source)

    def _read(self, stream: IO[bytes]) -> Iterator[Fragment]:
        reader = FragmentReader(max_element_size=self.max_element_size)
        try:
            while chunk := stream.read(self.chunk_size):
                self.stats.bytes += len(chunk)
                for fragment in reader.feed(chunk):
                    yield self._counted(fragment)
                if self._stop.is_set():
                    return
            reader.feed(b"")  # raises an error the last chunk deferred: corruption, not a cut
            tail = reader.close(keep_truncated=self.keep_truncated)
            if reader.truncation is not None:
                log.warning("%s: %s", self.name, reader.truncation)
        except MkvError as exc:
            raise MkvError(f"{self.name}: {exc.message}", exc.offset) from exc
        for fragment in tail:
            yield self._counted(fragment)

    def _counted(self, fragment: Fragment) -> Fragment:
        error_id = _error_id(fragment)
        if error_id is not None:
            self.stats.count_error(error_id)
        self.stats.count(fragment)
        return fragment

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self.stop()

    def __enter__(self) -> FileReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
