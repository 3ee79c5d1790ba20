"""Annex-B H.264/H.265 on a pipe (stdin): access units passed through, never re-encoded;
a container file on stdin is recognised (:func:`container_kind`)."""

from __future__ import annotations

import logging
import os
import stat
import sys
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, BinaryIO, Final

from kvs_toolkit.bitstream import AccessUnit, AccessUnitSplitter, Codec
from kvs_toolkit.errors import BitstreamError, SourceError
from kvs_toolkit.producer.fragmenter import EncodedFrame
from kvs_toolkit.producer.sources.base import (
    DEFAULT_CHUNK_SIZE,
    VIDEO_TRACK,
    ArrivalClock,
    FixedRateClock,
    FrameClock,
    FrameSource,
    SourceOptions,
    codec_private_from,
    register_source,
)

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)
# Enough of a file's start to tell a container (an MPEG-TS packet is 188 bytes).
_PEEK_BYTES: Final = 189


# ---------------------------------------------------------------------------------------
# Annex-B on a pipe


class AnnexBSource(FrameSource):
    """An H.264/H.265 Annex-B elementary stream read from a binary stream (stdin, a pipe).

    The stream is split into access units with :class:`AccessUnitSplitter`; the
    CodecPrivate is built from the parameter sets of the first key frame that carries
    them (access units before it are dropped: nothing could decode them). Frames are
    passed through, converted to AVCC, never re-encoded. Timestamps come from ``clock``
    (default: the wall clock as each access unit arrives). ``live=False`` marks a
    recording (see :attr:`FrameSource.live`).
    """

    def __init__(
        self,
        stream: BinaryIO,
        *,
        codec: Codec = "h264",
        clock: FrameClock | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        description: str = "stdin",
        live: bool = True,
    ) -> None:
        super().__init__(description)
        self.live = live
        self._stream = stream
        self.codec: Codec = codec
        self._clock: FrameClock = clock or ArrivalClock()
        self._chunk_size = chunk_size
        self.dropped = 0  # access units before the first usable key frame
        self.bytes_read = 0

    def _frames(self) -> Generator[EncodedFrame, None, None]:
        splitter = AccessUnitSplitter(self.codec)
        # read1 returns what the pipe has instead of waiting for a full chunk.
        read: Callable[[int], bytes] = getattr(self._stream, "read1", self._stream.read)
        while True:
            try:
                chunk = read(self._chunk_size)
            except OSError as exc:
                raise SourceError(f"{self.description}: read failed: {exc}") from exc
            if not self.bytes_read and chunk:
                kind = container_kind(chunk)
                if kind is not None:
                    raise SourceError(
                        f"{self.description} carries a {kind} file, not an H.264/H.265 "
                        "Annex-B stream: give the file itself (kvs produce FILE) or redirect "
                        "it (kvs produce - < FILE)"
                    )
            self.bytes_read += len(chunk)
            try:
                units = splitter.feed(chunk) if chunk else splitter.flush()
            except BitstreamError as exc:
                raise BitstreamError(f"{self.description}: {exc}") from exc
            for unit in units:
                frame = self._frame(unit)
                if frame is not None:
                    yield frame
            if not chunk:
                break
        if self._tracks is None:
            raise SourceError(
                f"{self.description}: ended after {self.bytes_read} bytes without a "
                f"{self.codec} key frame carrying its parameter sets"
            )

    def _frame(self, unit: AccessUnit) -> EncodedFrame | None:
        if self._tracks is None:
            codec_private = (
                codec_private_from(unit.nal_units, self.codec) if unit.keyframe else None
            )
            if codec_private is None:
                self.dropped += 1
                log.debug("%s: dropped an access unit before the first key frame", self.description)
                return None
            from kvs_toolkit.producer.encoder import video_track

            self._set_tracks([video_track(self.codec, codec_private, VIDEO_TRACK)])
        return EncodedFrame(unit.to_avcc(), self._clock(), unit.keyframe, VIDEO_TRACK)


def container_kind(head: bytes) -> str | None:
    """The container a file starting with ``head`` is (``"MKV"``, ``"MP4"``, ...), or
    None for anything else (an Annex-B elementary stream starts with zero bytes)."""
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "MKV/WebM"
    if head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"):
        return "MP4/MOV"
    if head.startswith(b"FLV"):
        return "FLV"
    if head.startswith(b"RIFF"):
        return "AVI"
    if head[:1] == b"\x47" and (len(head) < 189 or head[188:189] == b"\x47"):
        return "MPEG-TS"
    return None


@register_source("-")
def _stdin_source(spec: str, options: SourceOptions) -> FrameSource:
    use_fps = options.clock == "fps" or (options.clock == "auto" and options.fps is not None)
    if use_fps and options.fps is None:
        raise SourceError("clock 'fps' needs --fps")
    clock: FrameClock = FixedRateClock(options.fps) if use_fps and options.fps else ArrivalClock()
    # stdin redirected from a file (`kvs produce - < clip.h264`), or --fast, is a
    # recording: read at the upload's pace. A pipe is a camera unless --fast says not.
    try:
        from_file = stat.S_ISREG(os.fstat(sys.stdin.fileno()).st_mode)
    except (OSError, ValueError):  # no real descriptor (tests replacing sys.stdin)
        from_file = False
    if from_file:
        # A container file redirected to stdin is read as the file it is (a new
        # descriptor of the same file, from its start). On a pipe, peeking would wait for
        # the writer: the source checks its first chunk instead (AnnexBSource).
        with open(f"/proc/self/fd/{sys.stdin.fileno()}", "rb") as again:
            kind = container_kind(again.read(_PEEK_BYTES))
        if kind is not None:
            from kvs_toolkit.producer.sources.container import FileSource

            return FileSource(f"/proc/self/fd/{sys.stdin.fileno()}", options)
    return AnnexBSource(
        sys.stdin.buffer,
        codec=options.codec,
        clock=clock,
        chunk_size=options.chunk_size,
        live=options.realtime and not from_file,
    )
