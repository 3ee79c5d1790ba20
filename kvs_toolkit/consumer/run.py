"""``kvs consume``: read a stream (live, an archived range, HLS, or a file), decode, write
JSON lines.

Sources: live GetMedia (default), ``--archive START END`` (ListFragments +
GetMediaForFragmentList), ``--hls`` (an HLS session, LIVE or ON_DEMAND over
``--archive``), ``--hls-url URL`` (a session made elsewhere), ``--from-file``.

Checkpoints (live GetMedia): with ``--checkpoint PATH`` or ``--start checkpoint`` the
position is saved after each fragment whose every frame was written and flushed, in a
SQLite database by default (``$XDG_STATE_HOME/kvs-toolkit/checkpoints.sqlite3``; a
``.json`` path or ``dynamodb:TABLE`` pick the other stores), one row per stream and
``--consumer-group``. The contract is *at least once per fragment, with no gap*: a
crash before a fragment's checkpoint delivers that fragment again on restart (only
that one: the save follows each fragment), and a fragment that was completed and
checkpointed is never delivered again.

``--queue-size N`` reads and decodes in a thread and hands frames over through a
bounded queue; ``--queue-policy block`` (the default) slows the reader down to the
processor, ``drop-to-keyframe`` drops queued frames up to the newest key frame and
reports how many in the closing summary.

With ``--model`` every decoded frame also goes through a detector
(:mod:`kvs_toolkit.analysis`): its JSON line gains the analysis record (``detections``,
``stream_name``, ``frame_timestamp``, ``model``, ``latency_ms``), the records go to the
optional sinks (``--to-kinesis``, ``--to-s3``, ``--webhook``), frames with their boxes
drawn can be published into a second stream (``--annotate-to``), and a summary of the
detections per label ends the run on stderr.

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
import itertools
import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TextIO, TypeAlias

import boto3
import botocore.exceptions

from kvs_toolkit.analysis import (
    AnalysisError,
    AnalysisRecord,
    Analyzer,
    Detection,
    Detector,
    ResultSink,
    create_detector,
    create_sink,
)
from kvs_toolkit.consumer.checkpoint import Checkpoint, CheckpointStore, open_checkpoint_store
from kvs_toolkit.consumer.decode import FragmentDecoder
from kvs_toolkit.consumer.frame_queue import (
    QUEUE_POLICIES,
    FragmentDone,
    FrameQueue,
    QueueClosed,
    QueuePolicy,
)
from kvs_toolkit.consumer.frames import DecodedFrame
from kvs_toolkit.consumer.hls import HlsReader, PlaybackMode
from kvs_toolkit.consumer.readers import (
    ArchiveReader,
    FileReader,
    FragmentSource,
    LiveReader,
    ReaderStats,
    StartSelector,
    TimestampType,
    parse_timestamp,
)
from kvs_toolkit.errors import CheckpointError, KvsError
from kvs_toolkit.mkv import Fragment

if TYPE_CHECKING:
    from kvs_toolkit.analysis.annotate import AnnotatedPublisher

__all__ = [
    "ConsumeResult",
    "Progress",
    "add_consume_arguments",
    "cmd_consume",
    "consume",
    "frame_record",
    "model_detector",
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
    dropped_frames: int = 0  # by the drop-to-keyframe queue policy
    max_queue_depth: int = 0


def consume(
    source: FragmentSource,
    decoder: FragmentDecoder,
    out: TextIO,
    *,
    frames_dir: Path | None = None,
    max_fragments: int | None = None,
    on_frame: Callable[[DecodedFrame], None] | None = None,
    analyzer: Analyzer | None = None,
    on_record: Callable[[AnalysisRecord], None] | None = None,
    on_fragment_done: Callable[[Fragment], None] | None = None,
    queue_size: int | None = None,
    queue_policy: QueuePolicy = "block",
) -> ConsumeResult:
    """Decode what ``source`` yields and write one JSON line per frame to ``out``.

    With an ``analyzer`` (which must not sample: one record per frame) each line is the
    frame's fields plus its :class:`~kvs_toolkit.analysis.AnalysisRecord` (the
    analyzer's sinks get the record too, and ``on_record`` after them). Stops after
    ``max_fragments`` fragments (then a live reader's last fragment is committed: it was
    processed), or when the source ends or is stopped.

    ``on_fragment_done(fragment)`` runs once every frame of the fragment was written
    (and flushed): the moment to checkpoint it. With ``queue_size``, reading and
    decoding run in a thread and hand frames to this one through a
    :class:`~kvs_toolkit.consumer.frame_queue.FrameQueue` of that many frames with
    ``queue_policy`` (``block`` or ``drop-to-keyframe``); dropped frames count as
    processed for the checkpoint and are reported in the result.
    """
    if analyzer is not None and analyzer.sampler is not None:
        raise ValueError("consume() needs an Analyzer without fps sampling (one record a frame)")
    fragments = frames = jpegs = 0
    if frames_dir is not None:
        frames_dir.mkdir(parents=True, exist_ok=True)

    def emit(decoded: Iterable[DecodedFrame]) -> None:
        # ``decoded`` streams (FragmentDecoder.iter_decode): each frame is written and
        # dropped before the next is decoded, so a fragment's frames are never all held.
        nonlocal frames, jpegs
        pairs: Iterator[tuple[DecodedFrame, AnalysisRecord | None]]
        if analyzer is None:
            pairs = ((frame, None) for frame in decoded)
        else:
            # process() reads ahead of the records it yields by at most one batch, which
            # is all tee() keeps. zip(strict) exhausts process() too, which flushes the
            # sinks once per fragment.
            written, analysed = itertools.tee(decoded)
            pairs = zip(written, analyzer.process(analysed), strict=True)
        for frame, record in pairs:
            jpeg = None
            if frames_dir is not None:
                jpeg = _write_jpeg(frame, frames_dir)
                jpegs += 1
            line = frame_record(frame, jpeg)
            if record is not None:
                line.update(record.to_json())
                if on_record is not None:
                    on_record(record)
            out.write(json.dumps(line, separators=(",", ":")) + "\n")
            frames += 1
            if on_frame is not None:
                on_frame(frame)
        out.flush()

    if queue_size is not None:
        return _consume_queued(
            source, decoder, emit, FrameQueue(queue_size, queue_policy),
            max_fragments=max_fragments, on_fragment_done=on_fragment_done,
            counts=lambda: (frames, jpegs),
        )  # fmt: skip
    if max_fragments is None or max_fragments > 0:
        for fragment in source:
            emit(decoder.iter_decode(fragment))
            fragments += 1
            if on_fragment_done is not None:
                on_fragment_done(fragment)
            if max_fragments is not None and fragments >= max_fragments:
                break
    emit(decoder.flush())
    if isinstance(source, LiveReader):
        source.commit()
    return ConsumeResult(fragments, frames, jpegs)


def _consume_queued(
    source: FragmentSource,
    decoder: FragmentDecoder,
    emit: Callable[[Iterable[DecodedFrame]], None],
    frame_queue: FrameQueue,
    *,
    max_fragments: int | None,
    on_fragment_done: Callable[[Fragment], None] | None,
    counts: Callable[[], tuple[int, int]],
) -> ConsumeResult:
    fragments = 0
    failure: list[BaseException] = []

    def read() -> None:
        nonlocal fragments
        try:
            if max_fragments is None or max_fragments > 0:
                for fragment in source:
                    for frame in decoder.iter_decode(fragment):
                        frame_queue.put_frame(frame)
                    frame_queue.put_done(fragment)
                    fragments += 1
                    if max_fragments is not None and fragments >= max_fragments:
                        break
            for frame in decoder.flush():
                frame_queue.put_frame(frame)
        except QueueClosed:
            pass
        except BaseException as exc:  # handed to the processing thread, raised there
            failure.append(exc)
        finally:
            frame_queue.end()

    reader = threading.Thread(target=read, name="kvs-consume-reader", daemon=True)
    reader.start()
    try:
        while (item := frame_queue.get()) is not None:
            if isinstance(item, FragmentDone):
                if on_fragment_done is not None:
                    on_fragment_done(item.fragment)
            else:
                emit([item])
    finally:
        frame_queue.close()
        source.stop()
        reader.join()
    if failure:
        raise failure[0]
    frames, jpegs = counts()
    return ConsumeResult(fragments, frames, jpegs, frame_queue.dropped, frame_queue.max_depth)


# --- models ---------------------------------------------------------------------------------
# (argument after the ':', --min-confidence, --region) -> detector
_ModelFactory: TypeAlias = Callable[[str, float | None, str | None], Detector]


class _MinConfidence:
    """Drops the detections of ``detector`` below ``min_confidence`` (0..1)."""

    def __init__(self, detector: Detector, min_confidence: float) -> None:
        self.detector = detector
        self.min_confidence = min_confidence

    @property
    def name(self) -> str:
        return self.detector.name

    def detect(self, frames: Sequence[DecodedFrame]) -> list[list[Detection]]:
        return [
            [d for d in found if d.confidence >= self.min_confidence]
            for found in self.detector.detect(frames)
        ]


def _no_argument(name: str, argument: str) -> None:
    if argument:
        raise AnalysisError(f"model {name!r} takes no ':' argument (got {argument!r})")


def _motion(argument: str, min_confidence: float | None, region: str | None) -> Detector:
    _no_argument("motion", argument)
    return create_detector("motion", track=True)


def _haar_faces(argument: str, min_confidence: float | None, region: str | None) -> Detector:
    _no_argument("haar-faces", argument)
    return create_detector("haar-face")


def _rekognition(mode: str) -> _ModelFactory:
    def make(argument: str, min_confidence: float | None, region: str | None) -> Detector:
        _no_argument(f"rekognition-{mode}", argument)
        options: dict[str, Any] = {"mode": mode, "region_name": region}
        if min_confidence is not None:
            # Rekognition filters on its side too, in percent: fewer labels come back.
            options["min_confidence"] = min_confidence * 100.0
        return create_detector("rekognition", **options)

    return make


def _onnx(argument: str, min_confidence: float | None, region: str | None) -> Detector:
    if not argument:
        raise AnalysisError("model 'onnx' needs the model file: onnx:PATH")
    options: dict[str, Any] = {"model": argument}
    if min_confidence is not None:
        options["conf_threshold"] = min_confidence
    return create_detector("onnx", **options)


#: ``--model`` names: ``name`` or ``name:ARGUMENT``; anything else with a ':' is a plug-in.
MODELS: Final[dict[str, _ModelFactory]] = {
    "motion": _motion,
    "haar-faces": _haar_faces,
    "rekognition-labels": _rekognition("labels"),
    "rekognition-faces": _rekognition("faces"),
    "onnx": _onnx,
}


def model_detector(
    spec: str, *, min_confidence: float | None = None, region: str | None = None
) -> Detector:
    """The detector of a ``--model`` spec: a name of :data:`MODELS` (``onnx:PATH``) or a
    ``module:function`` plug-in; detections below ``min_confidence`` (0..1) are dropped.

    Raises :class:`~kvs_toolkit.analysis.AnalysisError` for an unknown or bad spec.
    """
    name, _, argument = spec.partition(":")
    factory = MODELS.get(name)
    if factory is not None:
        detector = factory(argument, min_confidence, region)
    elif argument:
        detector = create_detector(spec)
    else:
        known = ", ".join(name for name in MODELS if name != "onnx")
        raise AnalysisError(f"unknown model {spec!r} (known: {known}, onnx:PATH, module:function)")
    return detector if min_confidence is None else _MinConfidence(detector, min_confidence)


# --- the command ----------------------------------------------------------------------------
#: ``--start checkpoint``: after the saved checkpoint (the stream's start when none yet).
START_CHECKPOINT: Final = "checkpoint"


def _start(text: str) -> StartSelector | str:
    if text.strip().lower() == START_CHECKPOINT:
        return START_CHECKPOINT
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


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, not {text}")
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
        "producer:TIME, server:TIME (ISO 8601 or epoch seconds), token:TOKEN, or checkpoint "
        "(right after the last fragment processed, per --checkpoint; earliest when there is "
        "no checkpoint yet). A saved checkpoint always wins over the other values",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--from-file", metavar="PATH", help="read a GetMedia capture or MKV file ('-': stdin)"
    )
    where.add_argument(
        "--hls-url",
        metavar="URL",
        help="read an HLS session URL created elsewhere (fMP4, DisplayFragmentTimestamp ALWAYS)",
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
    parser.add_argument(
        "--hls",
        action="store_true",
        help="read through an HLS session (GetHLSStreamingSessionURL) instead of GetMedia: "
        "LIVE, or ON_DEMAND over the --archive range",
    )
    parser.add_argument(
        "--playback-mode",
        choices=("LIVE", "ON_DEMAND"),
        help="HLS playback mode (default: ON_DEMAND with --archive, else LIVE)",
    )
    parser.add_argument(
        "--idle-exit",
        type=_positive_float,
        metavar="S",
        help="live GetMedia and --hls LIVE: stop after S seconds without a new fragment",
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
        metavar="PATH",
        help="live GetMedia: save the last processed fragment here after each fragment and "
        "resume after it: a SQLite database (default with --start checkpoint: "
        "$XDG_STATE_HOME/kvs-toolkit/checkpoints.sqlite3), a .json file, or dynamodb:TABLE",
    )
    parser.add_argument(
        "--consumer-group",
        default="default",
        metavar="NAME",
        help="independent consumers of one stream keep separate checkpoints (default: default)",
    )
    parser.add_argument(
        "--queue-size",
        type=_positive_int,
        metavar="N",
        help="read and decode in a thread, handing at most N frames to processing",
    )
    parser.add_argument(
        "--queue-policy",
        choices=QUEUE_POLICIES,
        default="block",
        help="when the queue is full: block the reader (default) or drop-to-keyframe "
        "(drop queued frames up to the newest key frame; counted in the summary)",
    )
    parser.add_argument("--max-fragments", type=int, metavar="N", help="stop after N fragments")
    parser.add_argument(
        "--duration", type=_positive_float, metavar="S", help="stop after S seconds"
    )
    parser.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no progress on stderr"
    )
    analysis = parser.add_argument_group("analysis (with --model)")
    analysis.add_argument(
        "--model",
        metavar="SPEC",
        help="analyse every frame: motion, haar-faces, rekognition-labels, rekognition-faces, "
        "onnx:PATH or module:function; --out then gets one record per frame with detections",
    )
    analysis.add_argument(
        "--min-confidence",
        type=_fraction,
        metavar="C",
        help="drop detections below this confidence (0..1)",
    )
    analysis.add_argument(
        "--to-kinesis", metavar="STREAM", help="also send records to this Kinesis data stream"
    )
    analysis.add_argument(
        "--to-s3",
        metavar="s3://BUCKET/PREFIX",
        help="also store per frame the record (.json) and the annotated frame (.jpg) in S3",
    )
    analysis.add_argument("--webhook", metavar="URL", help="also POST records to this URL")
    analysis.add_argument(
        "--annotate-to",
        metavar="STREAM",
        help="publish the frames with their boxes drawn into this KVS stream (created if "
        "missing; when publishing falls behind the oldest waiting frames are dropped)",
    )


def _uses_checkpoints(args: argparse.Namespace) -> bool:
    return bool(args.checkpoint) or args.start == START_CHECKPOINT


def open_checkpoints(args: argparse.Namespace) -> CheckpointStore | None:
    """The checkpoint store the command line asks for (None without --checkpoint and
    --start checkpoint); ValueError for a bad combination, CheckpointError for a bad store."""
    if not _uses_checkpoints(args):
        return None
    for option, given in (("--from-file", args.from_file), ("--archive", args.archive),
                          ("--hls", args.hls), ("--hls-url", args.hls_url)):  # fmt: skip
        if given:
            raise ValueError(f"--checkpoint applies to live streams (GetMedia), not {option}")
    return open_checkpoint_store(args.checkpoint, consumer_group=args.consumer_group)


def resolve_start(args: argparse.Namespace, store: CheckpointStore | None) -> StartSelector:
    """Where a live read starts: right after the stream's checkpoint when there is one,
    else ``--start`` (``checkpoint`` without a checkpoint: the earliest fragment)."""
    if store is not None and args.stream:
        saved = store.load(args.stream)
        if saved is not None:
            log.info("%s: resuming after fragment %s", args.stream, saved.fragment_number)
            return StartSelector.from_checkpoint(saved)
    if args.start == START_CHECKPOINT:
        return StartSelector.earliest()
    start: StartSelector = args.start
    return start


def open_reader(
    args: argparse.Namespace,
    session: boto3.session.Session | None = None,
    checkpoints: CheckpointStore | None = None,
) -> FragmentSource:
    """The reader the command line asks for (raises ValueError for a bad combination).

    Checkpoints are not the reader's business here: :func:`cmd_consume` saves them
    after each fragment is fully processed (``consume(on_fragment_done=...)``)."""
    if args.from_file:
        if _uses_checkpoints(args):
            raise ValueError("--checkpoint applies to live streams, not --from-file")
        return FileReader(sys.stdin.buffer if args.from_file == "-" else args.from_file)
    timestamp_type: TimestampType = (
        "SERVER_TIMESTAMP" if args.timestamp_type == "server" else "PRODUCER_TIMESTAMP"
    )
    if args.hls_url:
        return HlsReader(session_url=args.hls_url, timestamp_type=timestamp_type,
                         idle_exit_s=args.idle_exit)  # fmt: skip
    if not args.stream:
        raise ValueError("--stream is required (or --from-file, --hls-url)")
    if args.playback_mode and not args.hls:
        raise ValueError("--playback-mode applies to --hls")
    if args.idle_exit and args.archive and not args.hls:
        raise ValueError("--idle-exit applies to live reading, not --archive")
    if args.hls:
        mode: PlaybackMode = args.playback_mode or ("ON_DEMAND" if args.archive else "LIVE")
        if mode == "ON_DEMAND" and not args.archive:
            raise ValueError("--hls --playback-mode ON_DEMAND needs --archive START END")
        start, end = args.archive or (None, None)
        if mode == "LIVE" and args.archive:
            raise ValueError("--hls LIVE follows the stream's live edge: leave out --archive")
        return HlsReader(
            args.stream,
            playback_mode=mode,
            start=start,
            end=end,
            timestamp_type=timestamp_type,
            endpoint_url=args.endpoint_url,
            region=args.region,
            session=session,
            idle_exit_s=args.idle_exit,
        )
    if args.archive:
        if _uses_checkpoints(args):
            raise ValueError("--checkpoint applies to live streams, not --archive")
        start, end = args.archive
        return ArchiveReader(
            args.stream,
            start,
            end,
            timestamp_type=timestamp_type,
            endpoint_url=args.endpoint_url,
            region=args.region,
            session=session,
        )
    return LiveReader(
        args.stream,
        start=resolve_start(args, checkpoints),
        endpoint_url=args.endpoint_url,
        region=args.region,
        session=session,
    )


class _IdleWatch:
    """Stops ``source`` once no fragment arrived for ``seconds`` (``--idle-exit``)."""

    def __init__(self, source: FragmentSource, seconds: float) -> None:
        self.source = source
        self.seconds = seconds
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kvs-consume-idle", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        seen = self.source.stats.fragments
        last_change = time.monotonic()
        while not self._cancel.wait(min(0.1, self.seconds / 4)):
            count = self.source.stats.fragments
            now = time.monotonic()
            if count != seen:
                seen, last_change = count, now
            elif now - last_change >= self.seconds:
                log.info("no new fragment for %.1f s: stopping (--idle-exit)", self.seconds)
                self.source.stop()
                return

    def cancel(self) -> None:
        self._cancel.set()
        self._thread.join()


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


def _sink_specs(args: argparse.Namespace) -> list[str]:
    specs = []
    if args.to_kinesis:
        specs.append(f"kinesis:{args.to_kinesis}")
    if args.to_s3:
        if not args.to_s3.startswith("s3://"):
            raise ValueError(f"--to-s3 takes s3://BUCKET/PREFIX, not {args.to_s3}")
        specs.append(f"s3:{args.to_s3}")
    if args.webhook:
        specs.append(f"webhook:{args.webhook}")
    return specs


def _open_analyzer(args: argparse.Namespace) -> Analyzer:
    detector = model_detector(args.model, min_confidence=args.min_confidence, region=args.region)
    sinks: list[ResultSink] = []
    for spec in _sink_specs(args):
        aws = {"region_name": args.region} if not spec.startswith("webhook:") else {}
        sinks.append(create_sink(spec, **aws))
    stream_name = args.stream or (Path(args.from_file).name if args.from_file else None)
    # One frame a batch: a live consumer must not hold frames back waiting for a batch.
    return Analyzer(detector, sinks, batch_size=1, stream_name=stream_name)


def _summary(analyzer: Analyzer, publisher: AnnotatedPublisher | None) -> str:
    stats = analyzer.stats
    labels = ", ".join(
        f"{label} {count}" for label, count in stats.detections_by_label.most_common()
    )
    p50, p95 = stats.latency_p50, stats.latency_p95
    latency = "-" if p50 is None or p95 is None else f"p50 {p50:.1f} ms, p95 {p95:.1f} ms"
    text = (
        f"{analyzer.detector.name}: {stats.frames_analysed} frames analysed, "
        f"{stats.detections} detections ({labels or 'none'}), latency {latency}"
    )
    if publisher is not None:
        text += "\n" + publisher.stats.line()
    return text


def cmd_consume(args: argparse.Namespace) -> int:
    """``kvs consume --stream NAME ...``: decode frames to JSON lines until done or Ctrl-C.

    Returns 0, or 2 for a bad combination of options; reading errors raise
    :class:`~kvs_toolkit.errors.KvsError` (GetMediaError, MkvError, ...).
    """
    if args.max_fragments is not None and args.max_fragments < 0:
        print("kvs consume: --max-fragments must not be negative", file=sys.stderr)
        return _EXIT_USAGE
    model_options = (args.to_kinesis, args.to_s3, args.webhook, args.annotate_to)
    if args.model is None and (args.min_confidence is not None or any(model_options)):
        print(
            "kvs consume: --min-confidence, --to-kinesis, --to-s3, --webhook and --annotate-to "
            "need --model",
            file=sys.stderr,
        )
        return _EXIT_USAGE
    analyzer: Analyzer | None = None
    if args.model is not None:
        try:
            analyzer = _open_analyzer(args)
        except (AnalysisError, ValueError, botocore.exceptions.BotoCoreError) as exc:
            print(f"kvs consume: {exc}", file=sys.stderr)
            return _EXIT_USAGE
    session = boto3.session.Session(region_name=args.region) if not args.from_file else None
    try:
        checkpoints = open_checkpoints(args)
        source = open_reader(args, session, checkpoints)
    except (ValueError, CheckpointError) as exc:
        if analyzer is not None:
            analyzer.close()
        print(f"kvs consume: {exc}", file=sys.stderr)
        return _EXIT_USAGE
    on_fragment_done: Callable[[Fragment], None] | None = None
    if checkpoints is not None and args.stream:
        store, key = checkpoints, args.stream

        def on_fragment_done(fragment: Fragment) -> None:
            # Saved once every frame of the fragment is written and flushed: a crash
            # before this line delivers the fragment again, never skips it.
            if fragment.fragment_number is not None:
                store.save(key, Checkpoint.of(fragment))

    publisher: AnnotatedPublisher | None = None
    if args.annotate_to:
        from kvs_toolkit.analysis.annotate import AnnotatedPublisher

        publisher = AnnotatedPublisher(
            args.annotate_to,
            endpoint_url=args.endpoint_url,
            region=args.region,
            credentials=session.get_credentials() if session is not None else None,
        )

    def annotate(record: AnalysisRecord) -> None:
        if publisher is not None and record.frame is not None:
            publisher.submit(record.frame, record.detections)

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
    idle_watch: _IdleWatch | None = None
    if args.idle_exit is not None and isinstance(source, LiveReader):
        idle_watch = _IdleWatch(source, args.idle_exit)  # HlsReader does it itself
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
                analyzer=analyzer,
                on_record=annotate if publisher is not None else None,
                on_fragment_done=on_fragment_done,
                queue_size=args.queue_size,
                queue_policy=args.queue_policy,
            )
    finally:
        if timer is not None:
            timer.cancel()
        if idle_watch is not None:
            idle_watch.cancel()
        source.close()
        decoder.close()
        # Sinks and the publisher deliver what they hold even after an error; their own
        # errors are raised only when the run itself succeeded.
        closing_errors: list[Exception] = []
        for closer in (analyzer, publisher):
            if closer is None:
                continue
            try:
                closer.close()
            except Exception as exc:
                log.error("%s", exc)
                closing_errors.append(exc)
    if closing_errors:
        raise closing_errors[0]
    if analyzer is not None:
        print(_summary(analyzer, publisher), file=sys.stderr)
    if args.queue_size is not None:
        print(
            f"queue: {args.queue_policy}, size {args.queue_size}, at most "
            f"{result.max_queue_depth} frames waiting, {result.dropped_frames} frames dropped",
            file=sys.stderr,
        )
    log.info(
        "consumed %d fragments, %d frames in %.1f s",
        result.fragments,
        result.frames,
        time.monotonic() - started,
    )
    return 0
