"""``open_stream``: a stream (live, an archived range, HLS, or a file) as decoded frames.

::

    from kvs_toolkit import open_stream

    with open_stream("cam-1", endpoint_url="http://127.0.0.1:4567", start="earliest",
                     idle_exit_s=2) as frames:
        for frame in frames:                 # DecodedFrame: numpy image + timestamps
            print(frame.timestamp_ns, frame.image.shape, frame.keyframe)

Frames are decoded by FFmpeg/swscale into numpy arrays (``format``: ``bgr24``,
``rgb24`` or ``gray``), one fragment at a time (bounded memory). ``stream.source`` is
the underlying :class:`~kvs_toolkit.consumer.readers.FragmentSource`, for a
:class:`~kvs_toolkit.consumer.pipeline.Pipeline`.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from types import TracebackType
from typing import IO

from kvs_toolkit.aws import AwsAccess
from kvs_toolkit.consumer.decode import FragmentDecoder
from kvs_toolkit.consumer.frames import DecodedFrame, PixelFormat
from kvs_toolkit.consumer.hls import HlsReader
from kvs_toolkit.consumer.idle import IdleWatch, stop_when_idle
from kvs_toolkit.consumer.readers import (
    ArchiveReader,
    FileReader,
    FragmentSource,
    LiveReader,
    StartSelector,
)

__all__ = ["FrameStream", "open_stream"]


class FrameStream:
    """Decoded frames of a :class:`FragmentSource`; iterate once, then :meth:`close`."""

    def __init__(
        self, source: FragmentSource, decoder: FragmentDecoder, idle: IdleWatch | None = None
    ) -> None:
        self.source = source
        self.decoder = decoder
        self._idle = idle

    def __iter__(self) -> Iterator[DecodedFrame]:
        for fragment in self.source:
            yield from self.decoder.iter_decode(fragment)
        yield from self.decoder.flush()

    def stop(self) -> None:
        """End the iteration soon (safe from any thread)."""
        self.source.stop()

    def close(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self.source.close()
        self.decoder.close()

    def __enter__(self) -> FrameStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def open_stream(
    stream_name: str | None = None,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    profile: str | None = None,
    aws: AwsAccess | None = None,
    start: StartSelector | str = "now",
    archive: tuple[dt.datetime, dt.datetime] | None = None,
    hls: bool = False,
    file: str | os.PathLike[str] | IO[bytes] | None = None,
    idle_exit_s: float | None = None,
    fps: float | None = None,
    keyframes_only: bool = False,
    format: PixelFormat = "bgr24",
) -> FrameStream:
    """Open a stream for reading as decoded frames.

    Live GetMedia from ``start`` (``now``, ``earliest``, ``fragment:N``,
    ``producer:TIME``...) by default; ``archive=(start, end)`` reads that range
    (ListFragments + GetMediaForFragmentList, or an ON_DEMAND HLS session with ``hls``);
    ``hls`` alone follows a LIVE HLS session; ``file`` reads a GetMedia capture or MKV
    file (no AWS at all). ``idle_exit_s`` ends a live read after that long without a new
    fragment. ``fps`` / ``keyframes_only`` sample before decoding.
    """
    decoder = FragmentDecoder(format=format, fps=fps, keyframes_only=keyframes_only)
    source: FragmentSource
    if file is not None:
        source = FileReader(file)
        return FrameStream(source, decoder)
    if not stream_name:
        raise ValueError("open_stream() needs a stream name (or file=)")
    if aws is None:
        aws = AwsAccess(region_name=region, endpoint_url=endpoint_url, profile=profile)
    if hls:
        begin, end = archive or (None, None)
        source = HlsReader(
            stream_name,
            playback_mode="ON_DEMAND" if archive else "LIVE",
            start=begin,
            end=end,
            aws=aws,
            idle_exit_s=idle_exit_s,
        )
    elif archive is not None:
        source = ArchiveReader(stream_name, archive[0], archive[1], aws=aws)
    else:
        source = LiveReader(
            stream_name,
            start=start,
            aws=aws,
            max_retries=None if aws.retry.max_attempts is None else aws.retry.max_attempts - 1,
        )
        if idle_exit_s is not None:  # (HlsReader watches by itself)
            return FrameStream(source, decoder, stop_when_idle(source, idle_exit_s))
    return FrameStream(source, decoder)
