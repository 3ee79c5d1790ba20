"""Decoding and analysis in worker processes (``FleetWorker(decode_pool="processes")``).

The reading stays in the worker's process (reader threads, parsing, leases,
checkpoints); each held stream is assigned to one of ``size`` decode processes, the
least loaded when the stream is taken up, and keeps it while it is held. The process
owns everything stateful about the stream: its
:class:`~kvs_toolkit.consumer.decode.FragmentDecoder` (decoder context, duplicate
filter) and its handler (e.g. a motion detector with its background model).

What crosses the process boundary, and why:

* **To the process: parsed fragments**, as bytes: the fragment's tags and tracks, and
  its frames' compressed payloads (0.5 MB for 2 s at 2 Mbit/s; the parser's zero-copy
  views of the read buffer are copied once into ``bytes``), pickled through a
  :func:`multiprocessing.Pipe`. One fragment is in flight per process at a time: the
  parent thread that serves a process sends one and reads its answers before it sends
  the next, so the pipe never holds more than one fragment. The bound before it is the
  worker's per-stream pending queue (``max_pending_fragments``); when that is full the
  stream's reader thread waits (TCP back-pressure on that one stream): no fragment is
  dropped, and the stream's lag grows and shows in its stats.
* **Back: small results.** Decoded frames never leave the process (a 1080p BGR frame is
  6.2 MB: copying it would cost more than decoding it). The per-frame analysis runs
  where the frame was decoded, and only what it returns (a record, detections; None
  for nothing) comes back, one message per frame, followed by one ``done`` message per
  fragment.

A process that dies (a crash in FFmpeg, the OOM killer, a stray SIGKILL) is noticed at
once through its sentinel, logged as an error with its exit status, and started again;
its streams start with fresh decoders there (the next fragment starts on a key frame).
The fragment that was in flight is sent once more, and the frames already delivered
from it are not delivered again; a fragment that kills its process twice is skipped
with an error. A process that cannot stay up (``MAX_DEATHS`` deaths within
``DEATH_WINDOW_S``) fails the worker: it stops, and says why in ``FleetWorker.failure``.

Processes are started with the ``spawn`` method (a fork of a process that runs threads
can inherit locks held by other threads), ignore SIGINT (Ctrl-C reaches the whole
process group: the parent decides when they stop; it finishes the fragments in flight
and then sends each process its end) and exit when the parent goes away (end of file
on their pipe). What they run - the decoder and handler factories - is pickled, so it
must be a module-level function or class (or a :func:`functools.partial` of one).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import multiprocessing.connection
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from kvs_toolkit.errors import DecodeError
from kvs_toolkit.mkv import Frame

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.context import SpawnProcess

    from kvs_toolkit.consumer.decode import FragmentDecoder
    from kvs_toolkit.consumer.frames import DecodedFrame
    from kvs_toolkit.mkv import Fragment

__all__ = ["DecodeProcess", "DecoderSpec", "PerStreamCallback", "ProcessDied"]

log = logging.getLogger(__name__)
_FRAME_FIELDS: Final = tuple(f.name for f in dataclasses.fields(Frame))

#: A process that dies this often within ``DEATH_WINDOW_S`` fails the pool.
MAX_DEATHS: Final = 3
DEATH_WINDOW_S: Final = 60.0
_STOP_TIMEOUT_S: Final = 5.0

#: What runs in a decode process: ``handler_factory(stream)`` gives the stream's
#: handler, called with each frame; what it returns (if not None) is sent back.
HandlerFactory = Callable[[str], Callable[["DecodedFrame"], Any]]


class ProcessDied(DecodeError):
    """The decode process died while a fragment was in flight."""


@dataclass(frozen=True, slots=True)
class DecoderSpec:
    """The worker's default decoder, as a picklable factory: one FFmpeg thread per
    decoder (the pool is the parallelism)."""

    keyframes_only: bool = False
    fps: float | None = None
    format: str = "bgr24"

    def __call__(self) -> FragmentDecoder:
        from kvs_toolkit.consumer.decode import FragmentDecoder

        return FragmentDecoder(
            keyframes_only=self.keyframes_only,
            fps=self.fps,
            format=self.format,  # type: ignore[arg-type]
            threads=1,
        )


@dataclass(frozen=True, slots=True)
class PerStreamCallback:
    """``on_frame(frame, stream)`` as a handler factory (picklable if it is)."""

    on_frame: Callable[[DecodedFrame, str], Any]

    def __call__(self, stream: str) -> Callable[[DecodedFrame], Any]:
        on_frame = self.on_frame
        return lambda frame: on_frame(frame, stream)


def pack_fragment(fragment: Fragment) -> tuple[Fragment, list[tuple[Any, ...]]]:
    """``fragment`` as picklable values: frames become tuples with ``bytes`` payloads
    (a :class:`memoryview` does not pickle)."""
    frames = [_frame_values(frame) for frame in fragment.frames]
    return dataclasses.replace(fragment, frames=()), frames


def _frame_values(frame: Frame) -> tuple[Any, ...]:
    return tuple(
        bytes(value) if isinstance(value, memoryview) else value
        for value in (getattr(frame, name) for name in _FRAME_FIELDS)
    )


def unpack_fragment(packed: tuple[Fragment, list[tuple[Any, ...]]]) -> Fragment:
    shell, frames = packed
    rebuilt = []
    for values in frames:
        kwargs = dict(zip(_FRAME_FIELDS, values, strict=True))
        kwargs["data"] = memoryview(kwargs["data"])
        rebuilt.append(Frame(**kwargs))
    return dataclasses.replace(shell, frames=tuple(rebuilt))


# --- the child ----------------------------------------------------------------------------
def _serve(
    conn: Connection,
    decoder_factory: Callable[[], FragmentDecoder],
    handler_factory: HandlerFactory,
) -> None:
    """A decode process: fragments in, one ``("frame", timestamp_ns, result)`` per
    frame and one ``("done", error)`` per fragment out."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    decoders: dict[str, FragmentDecoder] = {}
    handlers: dict[str, Callable[[DecodedFrame], Any]] = {}
    try:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                return  # the parent is gone
            if message is None:
                return
            kind, stream = message[0], message[1]
            if kind == "close":
                _close_stream(stream, decoders, handlers)
                continue
            if kind == "open":
                try:
                    _open_stream(stream, decoders, handlers, decoder_factory, handler_factory)
                except Exception:  # the first fragment tries again, and reports it
                    log.exception("%s: setting up the stream failed", stream)
                continue
            fragment = unpack_fragment(message[2])
            error: str | None = None
            try:
                decoder, handler = _open_stream(
                    stream, decoders, handlers, decoder_factory, handler_factory
                )
                for frame in decoder.iter_decode(fragment):
                    conn.send(("frame", frame.timestamp_ns, handler(frame)))
            except (EOFError, OSError, BrokenPipeError):
                return
            except Exception as exc:  # the stream goes on with its next fragment
                log.exception("%s: fragment %s failed", stream, fragment.fragment_number)
                error = repr(exc)
            conn.send(("done", error))
    finally:
        for stream in list(decoders) + [s for s in handlers if s not in decoders]:
            _close_stream(stream, decoders, handlers)


def _open_stream(
    stream: str,
    decoders: dict[str, FragmentDecoder],
    handlers: dict[str, Callable[[DecodedFrame], Any]],
    decoder_factory: Callable[[], FragmentDecoder],
    handler_factory: HandlerFactory,
) -> tuple[FragmentDecoder, Callable[[DecodedFrame], Any]]:
    decoder = decoders.get(stream)
    if decoder is None:
        decoder = decoders[stream] = decoder_factory()
    handler = handlers.get(stream)
    if handler is None:
        handler = handlers[stream] = handler_factory(stream)
    return decoder, handler


def _close_stream(
    stream: str,
    decoders: dict[str, FragmentDecoder],
    handlers: dict[str, Callable[[DecodedFrame], Any]],
) -> None:
    decoder = decoders.pop(stream, None)
    if decoder is not None:
        decoder.close()
    close = getattr(handlers.pop(stream, None), "close", None)
    if callable(close):
        try:
            close()
        except Exception:
            log.exception("%s: the stream handler's close() failed", stream)


# --- the parent's handle on one process ----------------------------------------------------
class DecodeProcess:
    """One decode process and the streams assigned to it.

    :meth:`deliver` is called by one thread at a time (the worker's dispatcher thread
    for this process); :meth:`assign` / :meth:`release` from any thread.
    """

    def __init__(
        self,
        index: int,
        decoder_factory: Callable[[], FragmentDecoder],
        handler_factory: HandlerFactory,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.index = index
        self._decoder_factory = decoder_factory
        self._handler_factory = handler_factory
        self._monotonic = monotonic
        self._context = multiprocessing.get_context("spawn")
        self._lock = threading.Lock()
        self.streams: set[str] = set()
        self.deaths: deque[float] = deque()
        self.restarts = 0
        self.process: SpawnProcess | None = None
        self.conn: Connection | None = None
        self.start()

    def start(self) -> None:
        parent, child = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=_serve,
            args=(child, self._decoder_factory, self._handler_factory),
            name=f"kvs-fleet-decode-{self.index}",
            daemon=True,
        )
        process.start()
        child.close()  # the child's end lives in the child only: its death is our EOF
        self.process, self.conn = process, parent

    @property
    def load(self) -> int:
        return len(self.streams)

    def assign(self, stream: str) -> None:
        with self._lock:
            self.streams.add(stream)

    def release(self, stream: str) -> None:
        with self._lock:
            self.streams.discard(stream)

    def describe(self) -> str:
        process = self.process
        if process is None:
            return f"decode process {self.index}"
        code = process.exitcode
        if code is None:
            status = "running"
        elif code < 0:
            try:
                status = f"killed by {signal.Signals(-code).name}"
            except ValueError:
                status = f"killed by signal {-code}"
        else:
            status = f"exit status {code}"
        return f"decode process {self.index} (pid {process.pid}, {status})"

    # --- one fragment -------------------------------------------------------------------
    def deliver(
        self,
        stream: str,
        fragment: Fragment,
        on_frame: Callable[[int, Any], None],
    ) -> str | None:
        """Send ``fragment``, call ``on_frame(timestamp_ns, result)`` for each frame as
        its answer arrives; return the error the process reported, if any.

        :class:`ProcessDied` if the process died meanwhile (``on_frame`` was called for
        the frames it delivered before)."""
        conn, process = self.conn, self.process
        assert conn is not None and process is not None
        try:
            conn.send(("fragment", stream, pack_fragment(fragment)))
        except (BrokenPipeError, OSError) as exc:
            raise ProcessDied(self.describe()) from exc
        while True:
            if not conn.poll():
                ready = multiprocessing.connection.wait([conn, process.sentinel])
                if conn not in ready and not conn.poll():
                    process.join(1.0)
                    raise ProcessDied(self.describe())
            try:
                message = conn.recv()
            except (EOFError, OSError) as exc:
                process.join(1.0)
                raise ProcessDied(self.describe()) from exc
            if message[0] == "done":
                error: str | None = message[1]
                return error
            on_frame(message[1], message[2])

    def open_stream(self, stream: str) -> None:
        """Have the process build the stream's decoder and handler now (best effort)."""
        self._post("open", stream)

    def close_stream(self, stream: str) -> None:
        """Drop the stream's decoder and handler in the process (best effort)."""
        self._post("close", stream)

    def _post(self, kind: str, stream: str) -> None:
        conn = self.conn
        if conn is None:
            return
        with contextlib.suppress(BrokenPipeError, OSError):
            conn.send((kind, stream, None))

    def died(self) -> bool:
        """Record a death; False when the process died too often to be started again."""
        now = self._monotonic()
        self.deaths.append(now)
        while self.deaths and now - self.deaths[0] > DEATH_WINDOW_S:
            self.deaths.popleft()
        self._discard()
        return len(self.deaths) < MAX_DEATHS

    def restart(self) -> None:
        self.restarts += 1
        self.start()

    def _discard(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if self.process is not None:
            self.process.join(0.5)
            if self.process.is_alive():
                self.process.kill()
                self.process.join(_STOP_TIMEOUT_S)

    def stop(self, timeout: float = _STOP_TIMEOUT_S) -> None:
        """Ask the process to finish (after the fragment it is on), then make sure."""
        conn, process = self.conn, self.process
        if conn is not None:
            with contextlib.suppress(BrokenPipeError, OSError):
                conn.send(None)
        if process is not None:
            process.join(timeout)
            if process.is_alive():
                log.warning("%s did not stop in %.1f s: killed", self.describe(), timeout)
                process.kill()
                process.join(_STOP_TIMEOUT_S)
            process.close()
        if conn is not None:
            conn.close()
        self.conn = self.process = None
