"""Frame sources: the options, the clocks, the :class:`FrameSource` interface and the
registry that :func:`open_source` resolves a spec through.

PyAV, OpenCV, numpy and the encoder module (which loads PyAV) are imported by the
sources that use them, not here: ``kvs produce -`` passes a pipe through with none of
them, and each costs 15 MB or more of resident memory on a Raspberry Pi (issue 5's
memory goal: under 80 MB)."""

from __future__ import annotations

import datetime
import logging
import time
import urllib.parse
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Final, Literal, Protocol, TypeAlias

from kvs_toolkit import bitstream
from kvs_toolkit.bitstream import BytesLike, Codec
from kvs_toolkit.errors import SourceError
from kvs_toolkit.mkv import TrackInfo
from kvs_toolkit.producer.fragmenter import DEFAULT_FRAGMENT_DURATION_MS, EncodedFrame

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from kvs_toolkit.producer.encoder import Encoder

log = logging.getLogger(__name__)

VIDEO_TRACK: Final = 1
AUDIO_TRACK: Final = 2
DEFAULT_CHUNK_SIZE: Final = 64 * 1024


@dataclass(frozen=True)
class SourceOptions:
    """How a source reads and, where it must, encodes.

    ``realtime`` paces a file to its presentation times (``False``: as fast as
    possible); ``loop`` replays it with timestamps that keep increasing. ``fps`` is the
    camera's rate, or for stdin the rate its timestamps are computed at. ``clock`` picks
    a live source's timestamps: ``"arrival"`` (wall clock as each frame arrives),
    ``"fps"`` (first frame's arrival + n / fps) or ``"auto"`` (fps when ``fps`` is given
    for stdin, else arrival). ``codec``/``encoder``/``bitrate`` apply when encoding
    (``codec`` is also the stdin stream's codec).

    ``start_time_ms`` stamps a file's first frame with that absolute time (epoch ms)
    instead of the wall clock: a recording uploaded later keeps the time it was made.
    ``"source"`` takes it from the file's ``creation_time`` metadata.
    """

    realtime: bool = True
    loop: bool = False
    fps: float | None = None
    codec: Codec = "h264"
    encoder: str = "auto"
    bitrate: int | None = None
    audio: bool = True
    width: int | None = None
    height: int | None = None
    fragment_duration_ms: int = DEFAULT_FRAGMENT_DURATION_MS
    clock: Literal["auto", "arrival", "fps"] = "auto"
    chunk_size: int = DEFAULT_CHUNK_SIZE
    start_time_ms: int | Literal["source"] | None = None

    def encoder_for(self, width: int, height: int, fps: float) -> Encoder:
        """An :class:`Encoder` with these options for frames of this size and rate."""
        from kvs_toolkit.producer.encoder import Encoder

        return Encoder(
            width - width % 2,
            height - height % 2,
            fps,
            codec=self.codec,
            encoder=self.encoder,
            fragment_duration_ms=self.fragment_duration_ms,
            bitrate=self.bitrate,
        )


# ---------------------------------------------------------------------------------------
# Clocks


class FrameClock(Protocol):
    def __call__(self) -> int:
        """The timestamp (absolute ms) of the frame arriving now."""
        ...


class ArrivalClock:
    """Wall-clock milliseconds at arrival, forced strictly increasing."""

    def __init__(self, now: Callable[[], float] = time.time) -> None:
        self._now = now
        self._last = -1

    def __call__(self) -> int:
        ms = max(int(self._now() * 1000), self._last + 1)
        self._last = ms
        return ms


class FixedRateClock:
    """The first frame's arrival plus ``n / fps``: even spacing whatever the jitter."""

    def __init__(self, fps: float, now: Callable[[], float] = time.time) -> None:
        if fps <= 0:
            raise ValueError(f"fps must be positive, not {fps}")
        self.fps = fps
        self._now = now
        self._first: int | None = None
        self._count = 0

    def __call__(self) -> int:
        if self._first is None:
            self._first = int(self._now() * 1000)
        ms = self._first + round(self._count * 1000 / self.fps)
        self._count += 1
        return ms


# ---------------------------------------------------------------------------------------
# The interface


class FrameSource(ABC):
    """Encoded frames and the tracks they belong to.

    Subclasses implement :meth:`_frames`, a generator that calls :meth:`_set_tracks` as
    soon as the tracks are known (for an encoder or a pipe: after the first key frame).
    Reading :attr:`tracks` runs the generator until then, keeping the frames it made for
    the iteration. A source is single-use; :meth:`close` (or ``with``) releases it and
    must be called from the thread that iterates.

    :attr:`live` says how the producer treats a source that outruns the upload. A live
    one (a camera, a network stream, a pipe from a camera's encoder, a file paced in
    real time) cannot wait: its frames always go into the bounded buffer, which drops
    its oldest fragment when full. A recorded one (a file read as fast as possible,
    stdin redirected from a file) is read only as fast as the service acknowledges,
    so memory stays small and nothing is dropped, even through an outage.
    """

    live: bool = True

    def __init__(self, description: str) -> None:
        self.description = description
        self._tracks: list[TrackInfo] | None = None
        self._pending: deque[EncodedFrame] = deque()
        self._generator: Generator[EncodedFrame, None, None] | None = None
        self._closed = False

    @abstractmethod
    def _frames(self) -> Generator[EncodedFrame, None, None]:
        """Yield encoded frames; call :meth:`_set_tracks` before or with the first one."""

    @property
    def tracks(self) -> list[TrackInfo]:
        """The stream's tracks (video is track 1). May block reading the source."""
        generator = self._running()
        while self._tracks is None:
            try:
                frame = next(generator)
            except StopIteration:
                raise SourceError(
                    f"{self.description}: ended before a decodable video frame"
                ) from None
            self._pending.append(frame)
        return list(self._tracks)

    def _set_tracks(self, tracks: Iterable[TrackInfo]) -> None:
        self._tracks = list(tracks)
        log.info(
            "%s: tracks %s",
            self.description,
            ", ".join(
                f"{t.number}:{t.codec_id}"
                + (f" {t.width}x{t.height}" if t.width else "")
                + (f" {t.sampling_frequency:g} Hz x{t.channels}" if t.sampling_frequency else "")
                for t in self._tracks
            ),
        )

    def _running(self) -> Generator[EncodedFrame, None, None]:
        if self._closed:
            raise SourceError(f"{self.description}: the source is closed")
        if self._generator is None:
            self._generator = self._frames()
        return self._generator

    def __iter__(self) -> Iterator[EncodedFrame]:
        generator = self._running()
        while self._pending:
            yield self._pending.popleft()
        yield from generator

    def abandon(self) -> None:
        """The reader is gone (the upload ended): producers of frames waiting to hand
        one over give up. Safe from any thread; unlike :meth:`close` it does not touch
        the generator, which another thread may be running."""
        self._closed = True

    def close(self) -> None:
        """Stop reading and release the file, device or stream."""
        self._closed = True
        if self._generator is not None:
            self._generator.close()

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# ---------------------------------------------------------------------------------------
# The registry

SourceFactory: TypeAlias = Callable[[str, SourceOptions], FrameSource]
#: scheme (the part of the source string before ``:``; ``-`` for stdin) -> factory.
#: ``file`` is the fallback for strings with no registered scheme.
SOURCES: dict[str, SourceFactory] = {}


def register_source(*schemes: str) -> Callable[[SourceFactory], SourceFactory]:
    """Register a factory ``(source string, options) -> FrameSource`` for ``schemes``."""

    def decorate(factory: SourceFactory) -> SourceFactory:
        for scheme in schemes:
            SOURCES[scheme] = factory
        return factory

    return decorate


def open_source(spec: str, options: SourceOptions | None = None) -> FrameSource:
    """The source for ``spec``: ``-``, ``camera:N``, a URL, or a file path."""
    scheme, sep, _rest = spec.partition(":")
    key = spec if spec == "-" else scheme.lower() if sep else "file"
    factory = SOURCES.get(key, SOURCES["file"])
    return factory(spec, options or SourceOptions())


def iso_time_ms(text: str) -> int:
    """An ISO 8601 time as epoch milliseconds (UTC when it names no zone, as FFmpeg's
    creation_time does); ValueError if it is not one."""
    when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return round(when.timestamp() * 1000)


def redact_url(url: str) -> str:
    """``url`` with its password (``rtsp://user:secret@host``) replaced by ``***``."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def contiguous(image: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """``image`` C-contiguous (PyAV and OpenCV want it); a copy only when it is not."""
    import numpy as np  # only the numpy and camera sources need it (the stdin RSS goal)

    return np.ascontiguousarray(image)


def codec_private_from(nal_units: Iterable[BytesLike], codec: Codec) -> bytes | None:
    """avcC/hvcC from these NAL units' parameter sets, or None when some are missing."""
    nal_units = list(nal_units)
    sets = bitstream.parameter_sets(nal_units, codec)
    if not sets.sps or not sets.pps or (codec == "h265" and not sets.vps):
        return None
    return bitstream.build_codec_private(nal_units, codec)
