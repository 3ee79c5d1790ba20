"""``Pipeline``: fragments -> decoded frames -> optional queue -> analyzer -> records
-> sinks -> checkpoint, the loop behind ``kvs consume`` and every program in consumers/.

::

    from kvs_toolkit import Pipeline, open_stream

    with open_stream("cam-1", endpoint_url=url, start="earliest") as stream:
        result = Pipeline(stream.source, analyzer=analyzer, out=sys.stdout).run()

Order of work per fragment: every frame of a fragment is decoded, analysed and written
(and the output flushed) before the fragment's checkpoint is saved, so a crash can
repeat the records of one fragment but never lose one. The analyzer is anything with
``process(frames) -> records`` (:class:`kvs_toolkit.analysis.Analyzer`): this layer
knows its shape, not the analysis package.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TextIO

from kvs_toolkit.consumer.checkpoint import Checkpoint, CheckpointStore
from kvs_toolkit.consumer.decode import FragmentDecoder
from kvs_toolkit.consumer.frame_queue import FragmentDone, FrameQueue, QueueClosed, QueuePolicy
from kvs_toolkit.consumer.frames import DecodedFrame
from kvs_toolkit.consumer.readers import FragmentSource, LiveReader, ReaderStats
from kvs_toolkit.errors import KvsError
from kvs_toolkit.mkv import Fragment
from kvs_toolkit.timestamps import epoch_seconds

__all__ = [
    "ConsumeResult",
    "FrameAnalyzer",
    "Pipeline",
    "Progress",
    "consume",
    "frame_record",
]


class AnalysisRecordLike(Protocol):
    @property
    def frame(self) -> DecodedFrame | None: ...

    def to_json(self) -> dict[str, Any]: ...


class FrameAnalyzer(Protocol):
    """What :class:`Pipeline` needs of an analyzer: one record per frame, in order."""

    @property
    def sampler(self) -> object | None: ...

    def process(self, frames: Iterable[DecodedFrame]) -> Iterator[Any]: ...


def frame_record(frame: DecodedFrame, jpeg: str | None = None) -> dict[str, Any]:
    """The JSON line of one decoded frame (timestamps in epoch seconds)."""
    record: dict[str, Any] = {
        "fragment_number": frame.fragment_number,
        "producer_timestamp": epoch_seconds(frame.producer_timestamp),
        "server_timestamp": epoch_seconds(frame.server_timestamp),
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
    out: TextIO | None,
    *,
    frames_dir: Path | None = None,
    max_fragments: int | None = None,
    on_frame: Callable[[DecodedFrame], None] | None = None,
    analyzer: FrameAnalyzer | None = None,
    on_record: Callable[[Any], None] | None = None,
    on_fragment_done: Callable[[Fragment], None] | None = None,
    queue_size: int | None = None,
    queue_policy: QueuePolicy = "block",
    max_frames: int | None = None,
) -> ConsumeResult:
    """Decode what ``source`` yields and write one JSON line per frame to ``out``.

    With an ``analyzer`` (which must not sample: one record per frame) each line is the
    frame's fields plus its :class:`~kvs_toolkit.analysis.AnalysisRecord` (the
    analyzer's sinks get the record too, and ``on_record`` after them). Stops after
    ``max_fragments`` fragments (then a live reader's last fragment is committed: it was
    processed), after ``max_frames`` frames (the fragment in progress is not committed:
    a resumed run starts with it again), or when the source ends or is stopped.

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
        pairs: Iterator[tuple[DecodedFrame, Any]]
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
            if record is not None and on_record is not None:
                on_record(record)
            if out is not None:
                line = frame_record(frame, jpeg)
                if record is not None:
                    line.update(record.to_json())
                out.write(json.dumps(line, separators=(",", ":")) + "\n")
            frames += 1
            if on_frame is not None:
                on_frame(frame)
            if max_frames is not None and frames >= max_frames:
                if out is not None:
                    out.flush()
                raise _Enough
        if out is not None:
            out.flush()

    if max_frames is not None and max_frames <= 0:
        return ConsumeResult(0, 0, 0)
    if queue_size is not None:
        return _consume_queued(
            source, decoder, emit, FrameQueue(queue_size, queue_policy),
            max_fragments=max_fragments, on_fragment_done=on_fragment_done,
            counts=lambda: (frames, jpegs),
        )  # fmt: skip
    try:
        if max_fragments is None or max_fragments > 0:
            for fragment in source:
                emit(decoder.iter_decode(fragment))
                fragments += 1
                if on_fragment_done is not None:
                    on_fragment_done(fragment)
                if max_fragments is not None and fragments >= max_fragments:
                    break
        emit(decoder.flush())
    except _Enough:
        source.stop()
        return ConsumeResult(fragments, frames, jpegs)
    if isinstance(source, LiveReader):
        source.commit()
    return ConsumeResult(fragments, frames, jpegs)


class _Enough(Exception):
    """``max_frames`` frames were written (internal)."""


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
                try:
                    emit([item])
                except _Enough:
                    break
    finally:
        frame_queue.close()
        source.stop()
        reader.join()
    if failure:
        raise failure[0]
    frames, jpegs = counts()
    return ConsumeResult(fragments, frames, jpegs, frame_queue.dropped, frame_queue.max_depth)


def checkpoint_saver(store: CheckpointStore, key: str) -> Callable[[Fragment], None]:
    """``on_fragment_done`` that saves the fragment as ``key``'s checkpoint (called once
    every frame of the fragment is written and flushed)."""

    def save(fragment: Fragment) -> None:
        # a crash before this line delivers the fragment again, never skips it
        if fragment.fragment_number is not None:
            store.save(key, Checkpoint.of(fragment))

    return save


class Pipeline:
    """source -> decode -> optional queue -> analyzer -> JSON lines / callbacks ->
    checkpoint. :meth:`run` blocks until the source ends, :meth:`stop` is called (from
    any thread) or a limit is reached; it returns a :class:`ConsumeResult`.

    ``out`` gets one JSON line per frame (:func:`frame_record`, plus the analysis record
    with an ``analyzer``); ``on_frame``/``on_record`` are called per frame/record.
    ``checkpoints`` + ``checkpoint_key`` save each fully processed fragment.
    """

    def __init__(
        self,
        source: FragmentSource,
        *,
        decoder: FragmentDecoder | None = None,
        analyzer: FrameAnalyzer | None = None,
        out: TextIO | None = None,
        frames_dir: Path | None = None,
        on_frame: Callable[[DecodedFrame], None] | None = None,
        on_record: Callable[[Any], None] | None = None,
        checkpoints: CheckpointStore | None = None,
        checkpoint_key: str | None = None,
        queue_size: int | None = None,
        queue_policy: QueuePolicy = "block",
        max_fragments: int | None = None,
        max_frames: int | None = None,
    ) -> None:
        if checkpoints is not None and not checkpoint_key:
            raise ValueError("checkpoints need a checkpoint_key (the stream name)")
        self.source = source
        self.decoder = decoder or FragmentDecoder()
        self.analyzer = analyzer
        self.out = out
        self.frames_dir = frames_dir
        self.on_frame = on_frame
        self.on_record = on_record
        self.on_fragment_done = (
            checkpoint_saver(checkpoints, checkpoint_key)
            if checkpoints is not None and checkpoint_key
            else None
        )
        self.queue_size = queue_size
        self.queue_policy: QueuePolicy = queue_policy
        self.max_fragments = max_fragments
        self.max_frames = max_frames
        self.frames = 0

    @property
    def stats(self) -> ReaderStats:
        return self.source.stats

    def _count(self, frame: DecodedFrame) -> None:
        self.frames += 1
        if self.on_frame is not None:
            self.on_frame(frame)

    def run(self) -> ConsumeResult:
        return consume(
            self.source,
            self.decoder,
            self.out,
            frames_dir=self.frames_dir,
            max_fragments=self.max_fragments,
            on_frame=self._count,
            analyzer=self.analyzer,
            on_record=self.on_record,
            on_fragment_done=self.on_fragment_done,
            queue_size=self.queue_size,
            queue_policy=self.queue_policy,
            max_frames=self.max_frames,
        )

    def stop(self) -> None:
        """End :meth:`run` soon (safe from any thread and signal handlers)."""
        self.source.stop()
