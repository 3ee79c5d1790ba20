"""``kvs consume``: read a stream (live, an archived range, or a file), decode, write JSON lines.

:func:`consume` is the loop behind the command, usable from code: fragments from any
:class:`~kvs_toolkit.consumer.readers.FragmentSource` through a
:class:`~kvs_toolkit.consumer.decode.FragmentDecoder`, one JSON object per decoded frame
(:func:`frame_record`), optionally a JPEG per frame. :func:`cmd_consume` builds the
reader from the command line (:func:`add_consume_arguments`) and shows progress on
stderr at most once per second.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TextIO

import boto3

from kvs_toolkit.consumer.checkpoint import JsonFileCheckpointStore
from kvs_toolkit.consumer.decode import FragmentDecoder
from kvs_toolkit.consumer.frames import DecodedFrame
from kvs_toolkit.consumer.readers import (
    ArchiveReader,
    FileReader,
    FragmentSource,
    LiveReader,
    ReaderStats,
    StartSelector,
    parse_timestamp,
)
from kvs_toolkit.errors import KvsError

__all__ = [
    "ConsumeResult",
    "Progress",
    "add_consume_arguments",
    "cmd_consume",
    "consume",
    "frame_record",
    "open_reader",
]

log = logging.getLogger(__name__)

# Exit status of a usage error (argparse uses 2 as well).
_EXIT_USAGE: Final = 2
_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def _epoch(value: dt.datetime | None) -> float | None:
    return None if value is None else round((value - _EPOCH) / dt.timedelta(seconds=1), 6)


def frame_record(frame: DecodedFrame, jpeg: str | None = None) -> dict[str, Any]:
    """The JSON line of one decoded frame (timestamps in epoch seconds)."""
    record: dict[str, Any] = {
        "fragment_number": frame.fragment_number,
        "producer_timestamp": _epoch(frame.producer_timestamp),
        "server_timestamp": _epoch(frame.server_timestamp),
        "timestamp": round(frame.timestamp_ns / 1e9, 6),
        "keyframe": frame.keyframe,
        "width": frame.width,
        "height": frame.height,
        "track": frame.track_number,
        "index": frame.index,
    }
    if jpeg is not None:
        record["jpeg"] = jpeg
    return record


def _write_jpeg(frame: DecodedFrame, folder: Path) -> str:
    import cv2

    name = f"frame-{frame.timestamp_ns // 1_000_000:013d}.jpg"
    path = folder / name
    if not cv2.imwrite(str(path), frame.image):
        raise KvsError(f"cannot write {path}")
    return name


@dataclass(frozen=True)
class Progress:
    """A snapshot of a consumer's work, for a progress display."""

    elapsed_s: float
    fragments: int
    frames: int
    frames_per_s: float
    megabytes_per_s: float
    lag_ms: float | None
    millis_behind_now: int | None
    done: bool = False

    @classmethod
    def of(
        cls, stats: ReaderStats, frames: int, *, live: bool = True, done: bool = False
    ) -> Progress:
        """From a reader's stats; lag only for a ``live`` reader (an archive is old)."""
        elapsed = stats.elapsed_s
        return cls(
            elapsed_s=elapsed,
            fragments=stats.fragments,
            frames=frames,
            frames_per_s=frames / elapsed,
            megabytes_per_s=stats.bytes / elapsed / 1e6,
            lag_ms=stats.wall_lag_ms if live else None,
            millis_behind_now=stats.millis_behind_now if live else None,
            done=done,
        )

    def line(self) -> str:
        lag = "-" if self.lag_ms is None else f"{self.lag_ms:.0f} ms"
        if self.millis_behind_now is not None:
            lag += f" (behind now {self.millis_behind_now} ms)"
        return (
            f"{self.elapsed_s:6.1f} s  fragments {self.fragments}  frames {self.frames} "
            f"({self.frames_per_s:.1f}/s)  {self.megabytes_per_s:.2f} MB/s  lag {lag}"
        )


@dataclass(frozen=True)
class ConsumeResult:
    fragments: int
    frames: int
    jpegs: int


def consume(
    source: FragmentSource,
    decoder: FragmentDecoder,
    out: TextIO,
    *,
    frames_dir: Path | None = None,
    max_fragments: int | None = None,
    on_frame: Callable[[DecodedFrame], None] | None = None,
) -> ConsumeResult:
    """Decode what ``source`` yields and write one JSON line per frame to ``out``.

    Stops after ``max_fragments`` fragments (then a live reader's last fragment is
    committed: it was processed), or when the source ends or is stopped.
    """
    fragments = frames = jpegs = 0
    if frames_dir is not None:
        frames_dir.mkdir(parents=True, exist_ok=True)

    def emit(decoded: list[DecodedFrame]) -> None:
        nonlocal frames, jpegs
        for frame in decoded:
            jpeg = None
            if frames_dir is not None:
                jpeg = _write_jpeg(frame, frames_dir)
                jpegs += 1
            out.write(json.dumps(frame_record(frame, jpeg), separators=(",", ":")) + "\n")
            frames += 1
            if on_frame is not None:
                on_frame(frame)
        out.flush()

    if max_fragments is None or max_fragments > 0:
        for fragment in source:
            emit(decoder.decode(fragment))
            fragments += 1
            if max_fragments is not None and fragments >= max_fragments:
                break
    emit(decoder.flush())
    if isinstance(source, LiveReader):
        source.commit()
    return ConsumeResult(fragments, frames, jpegs)


# --- the command ----------------------------------------------------------------------------
def _start(text: str) -> StartSelector:
    try:
        return StartSelector.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _time(text: str) -> dt.datetime:
    try:
        return parse_timestamp(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {text}")
    return value


def add_consume_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``kvs consume``."""
    parser.add_argument("--stream", help="stream name (not needed with --from-file)")
    parser.add_argument(
        "--endpoint-url", help="control plane endpoint (e.g. the emulator); default: AWS"
    )
    parser.add_argument("--region", help="AWS region (default: AWS_REGION or the profile's)")
    parser.add_argument(
        "--start",
        type=_start,
        default=StartSelector.now(),
        metavar="WHERE",
        help="live start: now (default), earliest, fragment:N (after fragment N), "
        "producer:TIME, server:TIME (ISO 8601 or epoch seconds), token:TOKEN",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--from-file", metavar="PATH", help="read a GetMedia capture or MKV file ('-': stdin)"
    )
    where.add_argument(
        "--archive",
        nargs=2,
        type=_time,
        metavar=("START", "END"),
        help="read the archived fragments of this time range instead of following live",
    )
    parser.add_argument(
        "--timestamp-type",
        choices=("producer", "server"),
        default="producer",
        help="which timestamps --archive selects on (default producer)",
    )
    parser.add_argument("--fps", type=_positive_float, help="decode at most N frames a second")
    parser.add_argument(
        "--keyframes-only", action="store_true", help="decode key frames only (cheapest)"
    )
    parser.add_argument(
        "--out", default="-", metavar="FILE.jsonl", help="JSON lines output (default stdout)"
    )
    parser.add_argument("--frames-dir", metavar="DIR", help="also save every frame as a JPEG")
    parser.add_argument(
        "--checkpoint",
        metavar="FILE",
        help="resume from and save the position in this JSON file (live streams)",
    )
    parser.add_argument("--max-fragments", type=int, metavar="N", help="stop after N fragments")
    parser.add_argument(
        "--duration", type=_positive_float, metavar="S", help="stop after S seconds"
    )
    parser.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no progress on stderr"
    )


def open_reader(
    args: argparse.Namespace, session: boto3.session.Session | None = None
) -> FragmentSource:
    """The reader the command line asks for (raises ValueError for a bad combination)."""
    if args.from_file:
        if args.checkpoint:
            raise ValueError("--checkpoint applies to live streams, not --from-file")
        return FileReader(sys.stdin.buffer if args.from_file == "-" else args.from_file)
    if not args.stream:
        raise ValueError("--stream is required (or --from-file)")
    if args.archive:
        if args.checkpoint:
            raise ValueError("--checkpoint applies to live streams, not --archive")
        start, end = args.archive
        return ArchiveReader(
            args.stream,
            start,
            end,
            timestamp_type="SERVER_TIMESTAMP"
            if args.timestamp_type == "server"
            else "PRODUCER_TIMESTAMP",
            endpoint_url=args.endpoint_url,
            region=args.region,
            session=session,
        )
    return LiveReader(
        args.stream,
        start=args.start,
        endpoint_url=args.endpoint_url,
        region=args.region,
        session=session,
        checkpoint_store=JsonFileCheckpointStore(args.checkpoint) if args.checkpoint else None,
    )


class _ProgressThread:
    """Prints :class:`Progress` on stderr once per second (one rewritten line on a tty)."""

    def __init__(
        self,
        stats: ReaderStats,
        frames: Callable[[], int],
        *,
        live: bool,
        out: TextIO | None = None,
    ) -> None:
        self.stats = stats
        self.frames = frames
        self.live = live
        self.out = out if out is not None else sys.stderr
        self._tty = self.out.isatty()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kvs-consume-progress", daemon=True)

    def _show(self, progress: Progress) -> None:
        if self._tty:
            self.out.write("\r\x1b[K" + progress.line() + ("\n" if progress.done else ""))
        else:
            self.out.write(progress.line() + "\n")
        self.out.flush()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            self._show(Progress.of(self.stats, self.frames(), live=self.live))

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        self._thread.start()
        try:
            yield
        finally:
            self._stop.set()
            self._thread.join()
        # Not after an error: the error message is the last word.
        self._show(Progress.of(self.stats, self.frames(), live=self.live, done=True))


def cmd_consume(args: argparse.Namespace) -> int:
    """``kvs consume --stream NAME ...``: decode frames to JSON lines until done or Ctrl-C.

    Returns 0, or 2 for a bad combination of options; reading errors raise
    :class:`~kvs_toolkit.errors.KvsError` (GetMediaError, MkvError, ...).
    """
    if args.max_fragments is not None and args.max_fragments < 0:
        print("kvs consume: --max-fragments must not be negative", file=sys.stderr)
        return _EXIT_USAGE
    session = boto3.session.Session(region_name=args.region) if not args.from_file else None
    try:
        source = open_reader(args, session)
    except ValueError as exc:
        print(f"kvs consume: {exc}", file=sys.stderr)
        return _EXIT_USAGE
    decoder = FragmentDecoder(fps=args.fps, keyframes_only=args.keyframes_only)
    frames_dir = Path(args.frames_dir) if args.frames_dir else None
    frame_count = 0

    def counted(_frame: DecodedFrame) -> None:
        nonlocal frame_count
        frame_count += 1

    timer = None
    if args.duration is not None:
        timer = threading.Timer(args.duration, source.stop)
        timer.daemon = True
        timer.start()
    progress = (
        _ProgressThread(
            source.stats, lambda: frame_count, live=isinstance(source, LiveReader)
        ).running()
        if args.progress
        else contextlib.nullcontext()
    )
    started = time.monotonic()
    try:
        with contextlib.ExitStack() as stack:
            out: TextIO = sys.stdout
            if args.out != "-":
                try:
                    out = stack.enter_context(open(args.out, "w", encoding="utf-8"))
                except OSError as exc:
                    print(f"kvs consume: cannot write {args.out}: {exc.strerror}", file=sys.stderr)
                    return _EXIT_USAGE
            stack.enter_context(progress)
            result = consume(
                source,
                decoder,
                out,
                frames_dir=frames_dir,
                max_fragments=args.max_fragments,
                on_frame=counted,
            )
    finally:
        if timer is not None:
            timer.cancel()
        source.close()
        decoder.close()
    log.info(
        "consumed %d fragments, %d frames in %.1f s",
        result.fragments,
        result.frames,
        time.monotonic() - started,
    )
    return 0
