"""Wire types of the MKV core: tracks, tags, frames and fragments."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Final

# Track types (Matroska TrackType)
TRACK_TYPE_VIDEO: Final = 1
TRACK_TYPE_AUDIO: Final = 2

# The tags GetMedia and GetMediaForFragmentList add to each fragment (docs/kvs-wire.md,
# "GetMedia"). GetMediaForFragmentList's documentation spells three of them differently;
# the accessors below accept both.
TAG_FRAGMENT_NUMBER: Final = "AWS_KINESISVIDEO_FRAGMENT_NUMBER"
TAG_SERVER_TIMESTAMP: Final = "AWS_KINESISVIDEO_SERVER_TIMESTAMP"
TAG_SERVER_TIMESTAMP_ALT: Final = "AWS_KINESISVIDEO_SERVER_SIDE_TIMESTAMP"
TAG_PRODUCER_TIMESTAMP: Final = "AWS_KINESISVIDEO_PRODUCER_TIMESTAMP"
TAG_PRODUCER_TIMESTAMP_ALT: Final = "AWS_KINESISVIDEO_PRODUCER_SIDE_TIMESTAMP"
TAG_MILLIS_BEHIND_NOW: Final = "AWS_KINESISVIDEO_MILLIS_BEHIND_NOW"
TAG_CONTINUATION_TOKEN: Final = "AWS_KINESISVIDEO_CONTINUATION_TOKEN"
TAG_ERROR_CODE: Final = "AWS_KINESISVIDEO_ERROR_CODE"
TAG_ERROR_CODE_ALT: Final = "AWS_KINESISVIDEO_EXCEPTION_ERROR_CODE"
TAG_ERROR_ID: Final = "AWS_KINESISVIDEO_ERROR_ID"
TAG_EXCEPTION_MESSAGE: Final = "AWS_KINESISVIDEO_EXCEPTION_MESSAGE"
# A producer writes this (empty value) to close a fragment early.
TAG_END_OF_FRAGMENT: Final = "AWS_KINESISVIDEO_END_OF_FRAGMENT"
AWS_TAG_PREFIX: Final = "AWS"


@dataclass(frozen=True, slots=True)
class TrackInfo:
    """One TrackEntry: what a decoder needs to open the track."""

    number: int
    codec_id: str
    codec_private: bytes = b""
    track_type: int = TRACK_TYPE_VIDEO
    uid: int = 0
    name: str = ""
    width: int | None = None
    height: int | None = None
    sampling_frequency: float | None = None
    channels: int | None = None
    bit_depth: int | None = None
    default_duration_ns: int | None = None


@dataclass(frozen=True, slots=True)
class Tag:
    """One SimpleTag: a name and its string value (TagBinary values are kept as bytes)."""

    name: str
    value: str
    binary: bytes | None = None


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame of a fragment.

    ``timecode`` is absolute in the segment's TimecodeScale units (cluster timecode plus
    the block's relative timecode); ``timestamp_ns`` is the same in nanoseconds.
    ``data`` is a zero-copy view into the buffer of the block the frame came from.
    """

    track_number: int
    timecode: int
    timestamp_ns: int
    keyframe: bool
    data: memoryview
    invisible: bool = False
    discardable: bool = False
    offset: int = 0

    @property
    def timestamp(self) -> float:
        """The frame's timestamp in seconds."""
        return self.timestamp_ns / 1e9


def _parse_epoch_seconds(value: str | None) -> dt.datetime | None:
    if value is None or value == "":
        return None
    try:
        seconds = Decimal(value)
    except InvalidOperation:
        return None
    if not seconds.is_finite():
        return None
    # Decimal keeps the milliseconds exact ("1511852109.126" has no binary error).
    micros = int(seconds * 1_000_000)
    try:
        return dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(microseconds=micros)
    except OverflowError:
        return None


@dataclass(frozen=True, slots=True)
class Fragment:
    """A fragment: one EBML document of a GetMedia stream, or one Cluster of an MKV file.

    ``tags`` holds every SimpleTag found in the fragment's part of the stream, in stream
    order, wherever it sits (before Info, before or after the Cluster). ``truncated``
    marks the last fragment of an input that ended mid-fragment (read with
    ``FragmentReader.close(keep_truncated=True)``): its frames are the complete ones.
    """

    tags: tuple[Tag, ...]
    tracks: tuple[TrackInfo, ...]
    cluster_timecode: int | None
    frames: tuple[Frame, ...]
    timecode_scale_ns: int = 1_000_000
    offset: int = 0
    size: int = 0
    document_index: int = 0
    truncated: bool = False
    _tag_index: dict[str, str] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # First occurrence wins: a name repeated in one fragment keeps its first value.
        index = self._tag_index
        for tag in self.tags:
            index.setdefault(tag.name, tag.value)

    # --- tags -----------------------------------------------------------------------
    def tag(self, name: str, *alternatives: str) -> str | None:
        """The value of the first tag called ``name`` (or one of ``alternatives``)."""
        for candidate in (name, *alternatives):
            value = self._tag_index.get(candidate)
            if value is not None:
                return value
        return None

    @property
    def producer_tags(self) -> tuple[Tag, ...]:
        """The tags a producer wrote (names not starting with ``AWS``)."""
        return tuple(t for t in self.tags if not t.name.startswith(AWS_TAG_PREFIX))

    @property
    def fragment_number(self) -> str | None:
        return self.tag(TAG_FRAGMENT_NUMBER)

    @property
    def server_timestamp(self) -> dt.datetime | None:
        return _parse_epoch_seconds(self.tag(TAG_SERVER_TIMESTAMP, TAG_SERVER_TIMESTAMP_ALT))

    @property
    def producer_timestamp(self) -> dt.datetime | None:
        return _parse_epoch_seconds(self.tag(TAG_PRODUCER_TIMESTAMP, TAG_PRODUCER_TIMESTAMP_ALT))

    @property
    def millis_behind_now(self) -> int | None:
        value = self.tag(TAG_MILLIS_BEHIND_NOW)
        try:
            return None if value is None else int(value)
        except ValueError:
            return None

    @property
    def continuation_token(self) -> str | None:
        return self.tag(TAG_CONTINUATION_TOKEN)

    @property
    def error_code(self) -> str | None:
        return self.tag(TAG_ERROR_CODE, TAG_ERROR_CODE_ALT)

    @property
    def error_id(self) -> int | None:
        value = self.tag(TAG_ERROR_ID)
        try:
            return None if value is None else int(value)
        except ValueError:
            return None

    @property
    def error_message(self) -> str | None:
        return self.tag(TAG_EXCEPTION_MESSAGE)

    # --- frames and tracks ------------------------------------------------------------
    def track(self, number: int) -> TrackInfo | None:
        return next((t for t in self.tracks if t.number == number), None)

    @property
    def video_track(self) -> TrackInfo | None:
        return next((t for t in self.tracks if t.track_type == TRACK_TYPE_VIDEO), None)

    @property
    def keyframe_count(self) -> int:
        return sum(1 for f in self.frames if f.keyframe)

    @property
    def start_timestamp_ns(self) -> int | None:
        """Timestamp of the earliest frame (or of the cluster when it has no frames)."""
        if self.frames:
            return min(f.timestamp_ns for f in self.frames)
        if self.cluster_timecode is None:
            return None
        return self.cluster_timecode * self.timecode_scale_ns

    @property
    def duration_ns(self) -> int:
        """Span from the first to the last frame plus one frame interval where known."""
        if not self.frames:
            return 0
        stamps = sorted(f.timestamp_ns for f in self.frames)
        span = stamps[-1] - stamps[0]
        if len(stamps) > 1:
            span += span // (len(stamps) - 1)
        else:
            track = self.track(self.frames[0].track_number)
            span += track.default_duration_ns or 0 if track else 0
        return span

    @property
    def payload_size(self) -> int:
        return sum(len(f.data) for f in self.frames)


def tags_from_pairs(pairs: Sequence[tuple[str, str]]) -> tuple[Tag, ...]:
    """Convenience: ``[("a", "1")]`` to ``(Tag("a", "1"),)``."""
    return tuple(Tag(name, value) for name, value in pairs)
