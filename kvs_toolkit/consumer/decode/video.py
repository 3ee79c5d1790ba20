"""Video: :class:`FragmentDecoder`, fragments in, :class:`DecodedFrame` objects out (see
the package docstring for sampling, threading and robustness)."""

from __future__ import annotations

import logging
import os
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import Final

import av.error
from av.video.codeccontext import VideoCodecContext
from av.video.frame import VideoFrame
from av.video.reformatter import VideoReformatter

from kvs_toolkit.consumer.decode.codecs import CodecSetup, codec_setup, new_packet, open_context
from kvs_toolkit.consumer.decode.fragments import DecodeStats, FragmentContext, select_track
from kvs_toolkit.consumer.decode.sampling import DuplicateFilter, FrameSampler
from kvs_toolkit.consumer.frames import (
    PIXEL_FORMATS,
    DecodedFrame,
    PictureSink,
    PixelFormat,
    fit_size,
    frame_to_ndarray,
)
from kvs_toolkit.errors import BitstreamError, DecodeError
from kvs_toolkit.memory import reuse_frame_buffers
from kvs_toolkit.mkv.model import TRACK_TYPE_VIDEO, Fragment, Frame, TrackInfo

__all__ = ["FragmentDecoder"]

log = logging.getLogger(__name__)

# Without a flush per fragment, metadata of packets that never produced a frame (the
# decoder dropped them) would pile up; keep at most this many.
_MAX_PENDING: Final = 512
# MKV timestamps are rounded to the TimecodeScale (1 ms in KVS): a frame due at 33.33 ms
# A broken producer can send nothing but corrupt frames: warn about the first ones, then
# only every so often (the rest go to DEBUG; the stats count them all).
_WARN_FIRST: Final = 20
_WARN_EVERY: Final = 1000


def _usable_cores() -> int:
    """The cores this process may run on (its affinity: a pinned worker has fewer)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True, slots=True)
class _Pending:
    context: FragmentContext
    track_number: int
    mkv_timestamp_ns: int
    keyframe: bool
    index: int
    keep: bool


class FragmentDecoder:
    """Decodes the video frames of fragments into :class:`DecodedFrame` objects.

    ``format``: ``bgr24`` (OpenCV order, the default), ``rgb24`` or ``gray`` (a zero-copy
    view of the luma plane when no resize is asked; see :class:`DecodedFrame`).
    ``width``/``height``: resize in swscale while converting (either alone keeps the
    other at the frame's size). ``fit=(W, H)`` (or an int for a square) instead: scale
    each frame, keeping its aspect ratio, to the largest size inside W x H
    (:func:`~kvs_toolkit.consumer.frames.fit_size`: the inner picture of a letterbox;
    it follows resolution changes), so ``FrameBatcher(size=(W, H))`` only pads:
    ``FragmentDecoder(fit=batcher.size)``. Either way each frame's
    :attr:`DecodedFrame.source_size` is the decoded picture's size. ``interpolation``:
    swscale's filter (a name of :class:`av.video.reformatter.Interpolation`); by default
    swscale's own (bilinear) for ``width``/``height`` and ``AREA`` for ``fit``: a model
    input is a large shrink (1080p to 640x360 is 3x), where swscale's bilinear filter
    widens with the factor and costs more than the whole same-size conversion (1.5 ms
    against 1.1 ms a 1080p frame here), while ``AREA`` averages the pixels it covers
    for 1.0 ms, about one grey level (mean) from the bilinear result. ``track``: the
    track number to decode (default: the first video track of each fragment).

    ``fit=batcher`` (a :class:`~kvs_toolkit.consumer.FrameBatcher`, or any
    :class:`~kvs_toolkit.consumer.frames.PictureSink`): the decoder hands each picture
    to the batcher, which has swscale convert it straight into the next slot of its
    tensor (planar float RGB at the inner size: no BGR image in between), and each
    frame's ``image`` is the picture's luma plane (``gray``, a zero-copy view), for
    whatever else looks at the frame; pass each frame to ``batcher.add`` as it is
    yielded (:meth:`iter_decode`, :meth:`decode_all`) to count it in the batch.
    ``format`` must then be left as it is (or ``gray``), and the filter is the
    batcher's unless ``interpolation`` is given (see ``FrameBatcher.write_picture``).

    Sampling (see the module docstring): ``keyframes_only``, ``fps`` or ``every``
    (seconds), and ``skip_nonref`` (allow leaving out non-reference pictures that the
    sampler does not want; on by default).

    ``flush_each_fragment`` (default True) drains the decoder at the end of every
    fragment, so all of a fragment's frames come out before :meth:`iter_decode` ends
    (and in the list :meth:`decode` returns), which is what a live consumer wants (the
    next fragment can be seconds away). KVS fragments start on a key frame, so nothing
    is lost. With False, frames still inside a threaded decoder come out with the next
    fragment, and :meth:`flush` returns the rest at the end. A drain only happens when
    the decoder holds a frame: otherwise it stays open and warm, and a fragment that
    does not start with a key frame (an MKV file's cluster cut mid-GOP) goes on decoding.

    Key frames only: with the default drain each key frame is decoded on one thread
    (one picture per fragment cannot be split across cores) and comes out before
    :meth:`iter_decode` ends, which is what a live consumer and a per-fragment
    checkpoint need. ``flush_each_fragment=False`` keeps FFmpeg's frame threads busy
    with several key frames at once - about twice the key frames per second on two
    cores, for files, archives and batch jobs - and each comes out a few fragments
    later (``threads`` - 1) or from :meth:`flush`, with its own fragment's metadata.

    ``drop_duplicates`` (default True): a fragment that repeats one of the last
    fragments is dropped and counted in ``stats.duplicate_fragments``.

    ``threads``: FFmpeg decoder threads (0: one per core this process may run on).
    Which kind is chosen from the first key frame: a stream whose pictures are coded in
    at least as many slices as there are threads (many cameras' hardware encoders, x264
    with slice threads) is decoded with slice threads, each picture split across the
    cores and out of the call that sent it; other streams with frame threads, which
    decode several pictures at once (and hold ``threads`` - 1 of them inside). On this
    2-core machine a 1080p stream of two-slice pictures decoded 13% faster with slice
    threads and a one-slice re-encode of it 40% faster with frame threads.
    ``convert_threads``: swscale threads per conversion; None
    (the default) picks 1 with frame threads, which keep the other cores decoding
    ahead while a frame is converted (and at 720p one swscale thread measured faster
    than automatic threading even alone), and 0 (swscale's choice) with slice threads,
    where the conversion is the part left on one core.
    """

    def __init__(
        self,
        *,
        format: PixelFormat = "bgr24",
        width: int | None = None,
        height: int | None = None,
        fit: int | tuple[int, int] | PictureSink | None = None,
        interpolation: str | None = None,
        keyframes_only: bool = False,
        fps: float | None = None,
        every: float | None = None,
        skip_nonref: bool = True,
        track: int | None = None,
        drop_duplicates: bool = True,
        flush_each_fragment: bool = True,
        threads: int = 0,
        convert_threads: int | None = None,
    ) -> None:
        if format not in PIXEL_FORMATS:
            raise ValueError(f"format must be one of {sorted(PIXEL_FORMATS)}, not {format!r}")
        if fps is not None and every is not None:
            raise ValueError("give fps or every, not both")
        for name, value in (("width", width), ("height", height)):
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive, not {value}")
        self._sink: PictureSink | None = None
        if isinstance(fit, PictureSink):
            if format == "rgb24":
                raise ValueError("fit=batcher gives gray frames: the colour goes into the batch")
            format = "gray"
            self._sink, fit = fit, fit.size
        if fit is not None:
            if width is not None or height is not None:
                raise ValueError("give fit or width/height, not both")
            fit_box = (fit, fit) if isinstance(fit, int) else tuple(fit)
            if len(fit_box) != 2 or min(fit_box) <= 0:
                raise ValueError(f"fit must be a positive (width, height), not {fit}")
        self.fit: tuple[int, int] | None = None if fit is None else (fit_box[0], fit_box[1])
        self.format: PixelFormat = format
        self.width = width
        self.height = height
        # With fit=batcher, None lets the batcher choose (it matches its own resize).
        area = fit is not None and self._sink is None
        self.interpolation = "AREA" if interpolation is None and area else interpolation
        self.keyframes_only = keyframes_only
        self.skip_nonref = skip_nonref
        self.track = track
        self.flush_each_fragment = flush_each_fragment
        self.threads = threads
        self.convert_threads = convert_threads
        # swscale threads for the decoder open now (convert_threads, or chosen with it)
        self._convert_threads = 1 if convert_threads is None else convert_threads
        self._sampler: FrameSampler | None = None
        if fps is not None:
            self._sampler = FrameSampler.per_second(fps)
        elif every is not None:
            self._sampler = FrameSampler.every(every)
        self._duplicates = DuplicateFilter() if drop_duplicates else None
        self._reformatter = VideoReformatter()
        # Each decoded frame's pixels are a large new buffer: let glibc reuse them
        # instead of mapping fresh pages for every frame (kvs_toolkit.memory).
        reuse_frame_buffers()
        self._ctx: VideoCodecContext | None = None
        self._setup: CodecSetup | None = None
        self._threading: str | None = None
        self._codec_key: tuple[str, bytes] | None = None
        self._pending: dict[int, _Pending] = {}
        self._next_pts = 0
        self._need_keyframe = True
        self._problems = 0
        # The iteration (a generator of _guarded) allowed to use the decoder; None: none.
        self._active: object | None = None
        self.stats = DecodeStats()

    # --- public -------------------------------------------------------------------------
    @property
    def codec(self) -> CodecSetup | None:
        """The setup of the decoder currently open (None before the first frame)."""
        return self._setup

    @property
    def threading(self) -> str | None:
        """FFmpeg's threading for the decoder open now: ``"slice"`` or ``"frame"`` (frame
        and slice threads); None before the first frame (see ``threads``)."""
        return self._threading

    def decode(self, fragment: Fragment) -> list[DecodedFrame]:
        """Decode one fragment; return its frames (plus any a previous call left inside).

        The frames of :meth:`iter_decode`, all at once: prefer iterating that when the
        frames are handled one by one (a 2 s 1080p30 fragment in BGR is 373 MB).
        """
        return list(self.iter_decode(fragment))

    def iter_decode(self, fragment: Fragment) -> Iterator[DecodedFrame]:
        """Decode one fragment, yielding each frame as soon as FFmpeg returns it (plus any
        a previous call left inside): the same frames, in the same order, with the same
        stats and warnings as :meth:`decode`, but only a few held at a time.

        Lazy: nothing happens (not even the duplicate check or ``stats.fragments``)
        until the first frame is asked for, so a :class:`DecodeError` for an
        unsupported codec is raised by that first ``next()``.

        One iteration at a time. If it ends early - the caller breaks out or drops the
        iterator, an exception is raised inside it or by the caller's code while it is
        suspended, or another :meth:`iter_decode`, :meth:`decode`, :meth:`flush` or
        :meth:`close` on this decoder starts - the rest of the fragment is skipped (its
        packets are never sent), the frames the decoder still holds are discarded
        (counted in ``stats.packets_without_frame``) and ``stats.iterations_abandoned``
        counts it. The decoder then waits for a key frame, which the next KVS fragment
        starts with, so it decodes normally. A superseded iterator yields nothing more.
        The skipped fragment still counts as seen for duplicate dropping.
        """
        return self._guarded(self._fragment_frames(fragment))

    def decode_all(self, fragments: Iterable[Fragment]) -> Iterator[DecodedFrame]:
        """Decode a stream of fragments, then flush: every frame, in order, each as soon
        as it is decoded. One iteration, ending early as :meth:`iter_decode` does."""
        return self._guarded(self._stream_frames(fragments))

    def flush(self) -> list[DecodedFrame]:
        """Drain the decoder: the frames it still holds (end of stream)."""
        return list(self._guarded(self._drain()))

    def close(self) -> None:
        """Release the decoder (frames still inside are discarded; an unfinished
        :meth:`iter_decode` yields nothing more)."""
        self._active = None
        self._ctx = None
        self._setup = None
        self._threading = None
        self._codec_key = None
        self._pending.clear()

    def __enter__(self) -> FragmentDecoder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- internals ----------------------------------------------------------------------
    def _guarded(self, frames: Generator[DecodedFrame, None, None]) -> Iterator[DecodedFrame]:
        """Run ``frames`` as the decoder's one active iteration (see :meth:`iter_decode`)."""
        self._abandon_active()
        token = object()
        self._active = token
        finished = False
        try:
            for frame in frames:
                yield frame
                if self._active is not token:
                    return  # superseded while suspended: the state is another's now
            finished = True
        finally:
            frames.close()
            if self._active is token:
                self._active = None
                if not finished:
                    self._discard_held()

    def _abandon_active(self) -> None:
        if self._active is not None:
            self._active = None
            self._discard_held()

    def _discard_held(self) -> None:
        # An iteration ended mid-fragment: the packets after it are never sent, so what
        # the decoder holds would come out with the next fragment's frames, and a frame
        # it needs as a reference may be missing. Start clean from the next key frame.
        self.stats.iterations_abandoned += 1
        self.stats.packets_without_frame += len(self._pending)
        self._pending.clear()
        self._need_keyframe = True
        if self._ctx is not None:
            self._ctx.flush_buffers()
        log.debug("iteration ended early: the rest of the fragment and held frames dropped")

    def _fragment_frames(self, fragment: Fragment) -> Generator[DecodedFrame, None, None]:
        self.stats.fragments += 1
        if self._duplicates is not None and self._duplicates.seen(fragment):
            self.stats.duplicate_fragments += 1
            log.info(
                "dropped duplicate fragment %s (producer timestamp %s, %d frames)",
                fragment.fragment_number,
                fragment.producer_timestamp,
                len(fragment.frames),
            )
            return
        track = select_track(fragment, self.track, TRACK_TYPE_VIDEO)
        if track is None or not fragment.frames:
            return
        ctx, setup = yield from self._decoder_for(track, fragment)
        context = FragmentContext.of(fragment)
        index = 0
        for frame in fragment.frames:
            if frame.track_number != track.number:
                continue
            keep = self._admit(frame, setup, context)
            if keep is not None:
                pending = _Pending(
                    context, track.number, frame.timestamp_ns, frame.keyframe, index, keep
                )
                yield from self._send(ctx, frame, pending)
            index += 1
        if self.flush_each_fragment:
            yield from self._drain()

    def _stream_frames(self, fragments: Iterable[Fragment]) -> Generator[DecodedFrame, None, None]:
        for fragment in fragments:
            yield from self._fragment_frames(fragment)
        yield from self._drain()

    def _decoder_for(
        self, track: TrackInfo, fragment: Fragment
    ) -> Generator[DecodedFrame, None, tuple[VideoCodecContext, CodecSetup]]:
        key = (track.codec_id, track.codec_private)
        if self._ctx is not None and self._setup is not None and key == self._codec_key:
            return self._ctx, self._setup
        setup = codec_setup(track)
        if setup.media != "video":
            raise DecodeError(f"track {track.number} ({track.codec_id}) is not a video track")
        if self._ctx is not None:
            # CodecPrivate changed mid-stream (new resolution, new encoder settings): the
            # frames still inside the old decoder belong to the old configuration.
            yield from self._drain()
            self.stats.codec_changes += 1
            log.info("track %d: CodecPrivate changed, re-opening the decoder", track.number)
        first_key = next(
            (f for f in fragment.frames if f.track_number == track.number and f.keyframe), None
        )
        thread_type = self._thread_type(setup, first_key)
        if self.convert_threads is None:
            self._convert_threads = 0 if thread_type == "SLICE" else 1
        ctx = open_context(setup, track, self.threads, thread_type)
        self._threading = "slice" if thread_type == "SLICE" else "frame"
        if not isinstance(ctx, VideoCodecContext):  # pragma: no cover - registry guarantees
            raise DecodeError(f"{setup.decoder} is not a video decoder")
        if self.keyframes_only:
            ctx.skip_frame = "NONKEY"
        self._ctx, self._setup, self._codec_key = ctx, setup, key
        self._need_keyframe = True
        self._reformatter = VideoReformatter()
        self.stats.decoder_opens += 1
        self.stats.by_codec[setup.decoder] = self.stats.by_codec.get(setup.decoder, 0) + 1
        log.debug(
            "track %d: opened %s (%s), %s threads",
            track.number, setup.decoder, setup.description, thread_type.lower(),
        )  # fmt: skip
        return ctx, setup

    def _thread_type(self, setup: CodecSetup, first_key: Frame | None) -> str:
        """FFmpeg's threading for this stream: ``SLICE`` or ``AUTO`` (frame and slice)."""
        if self.keyframes_only:
            # Drained after every fragment: one picture per fragment, so frame threads
            # can never overlap two, and their pipeline only adds a hand-off and a drain
            # per key frame. Without them each key frame comes out of the decode call
            # that sent it, nothing is left inside at the fragment's end, and the
            # decoder stays open and warm (see _drain). Kept warm across fragments
            # (flush_each_fragment=False), frame threads decode several key frames at once.
            return "SLICE" if self.flush_each_fragment else "AUTO"
        if first_key is None or setup.slice_count is None or setup.nal_length_size is None:
            return "AUTO"
        try:
            slices = setup.slice_count(first_key.data, setup.nal_length_size)
        except (BitstreamError, IndexError):
            return "AUTO"  # the decoder will judge the damaged packet
        return "SLICE" if slices >= (self.threads or _usable_cores()) else "AUTO"

    def _admit(self, frame: Frame, setup: CodecSetup, context: FragmentContext) -> bool | None:
        """None: do not send the packet. Otherwise send it, and convert it if True."""
        if self.keyframes_only and not frame.keyframe:
            self.stats.packets_skipped += 1
            return None
        if self._need_keyframe and not setup.intra_only:
            if not frame.keyframe:
                self.stats.packets_before_keyframe += 1
                return None
            self._need_keyframe = False
        if self._sampler is None or self._sampler.keep(frame.timestamp_ns + context.offset_ns):
            return True
        if setup.intra_only or (self.skip_nonref and self._is_nonref(frame, setup)):
            self.stats.packets_skipped += 1
            return None
        return False

    @staticmethod
    def _is_nonref(frame: Frame, setup: CodecSetup) -> bool:
        if setup.nonref_check is None or setup.nal_length_size is None:
            return False
        try:
            return setup.nonref_check(frame.data, setup.nal_length_size)
        except BitstreamError:
            return False  # let the decoder judge a damaged packet

    def _send(
        self, ctx: VideoCodecContext, frame: Frame, pending: _Pending
    ) -> Iterator[DecodedFrame]:
        pts = self._next_pts
        self._next_pts += 1
        packet = new_packet(frame.data, pts)
        self._pending[pts] = pending
        if len(self._pending) > _MAX_PENDING:
            del self._pending[next(iter(self._pending))]
            self.stats.packets_without_frame += 1
        self.stats.packets_sent += 1
        try:
            decoded = ctx.decode(packet)
        except av.error.FFmpegError as exc:
            # With frame threading the error may belong to an earlier packet of the
            # pipeline; either way that picture is lost and the stream goes on.
            self.stats.decode_errors += 1
            self._warn(
                "fragment %s frame %d: decoder rejected the data, skipped: %s",
                pending.context.fragment_number,
                pending.index,
                exc,
            )
            return
        yield from self._emit(decoded)

    def _warn(self, message: str, *args: object) -> None:
        self._problems += 1
        count = self._problems
        if count <= _WARN_FIRST or count % _WARN_EVERY == 0:
            log.warning(message + " [problem %d of this decoder]", *args, count)
        else:
            log.debug(message, *args)

    def _drain(self) -> Generator[DecodedFrame, None, None]:
        ctx = self._ctx
        if ctx is None or not self._pending:
            # Every packet sent has come out (or was counted lost): nothing to drain, and
            # no reason to reset the decoder and wait for the next key frame.
            return
        try:
            decoded = ctx.decode(None)
        except av.error.FFmpegError as exc:
            self.stats.decode_errors += 1
            log.warning("decoder failed while draining: %s", exc)
            decoded = []
        yield from self._emit(decoded)
        ctx.flush_buffers()
        self.stats.packets_without_frame += len(self._pending)
        self._pending.clear()
        self._need_keyframe = True

    def _emit(self, decoded: list[VideoFrame]) -> Iterator[DecodedFrame]:
        for picture in decoded:
            self.stats.frames_decoded += 1
            pending = self._pending.pop(picture.pts, None) if picture.pts is not None else None
            if pending is None:
                self.stats.frames_unmatched += 1  # a frame we cannot place: skip it
                log.debug("decoder returned a frame with unknown pts %s", picture.pts)
                continue
            if picture.is_corrupt:
                self.stats.corrupt_frames += 1
                self._warn(
                    "fragment %s frame %d: decoded with errors (corrupt data), skipped",
                    pending.context.fragment_number,
                    pending.index,
                )
                continue
            if not pending.keep:
                self.stats.frames_not_sampled += 1
                continue
            width, height = self.width, self.height
            if self._sink is not None:  # fit=batcher: the colour goes into its tensor
                image, shared = self._sink.write_picture(
                    picture, interpolation=self.interpolation, threads=self._convert_threads
                )
            else:
                if self.fit is not None:
                    width, height = fit_size(picture.width, picture.height, self.fit)
                image, shared = frame_to_ndarray(
                    picture,
                    self.format,
                    self._reformatter,
                    width=width,
                    height=height,
                    interpolation=self.interpolation,
                    threads=self._convert_threads,
                )
            context = pending.context
            self.stats.frames_converted += 1
            yield DecodedFrame(
                image=image,
                format=self.format,
                track_number=pending.track_number,
                fragment_number=context.fragment_number,
                producer_timestamp=context.producer_timestamp,
                server_timestamp=context.server_timestamp,
                timestamp_ns=pending.mkv_timestamp_ns + context.offset_ns,
                mkv_timestamp_ns=pending.mkv_timestamp_ns,
                keyframe=pending.keyframe,
                index=pending.index,
                shares_decoder_memory=shared,
                decoded_size=(
                    None
                    if image.shape[:2] == (picture.height, picture.width)
                    else (picture.width, picture.height)
                ),
            )
