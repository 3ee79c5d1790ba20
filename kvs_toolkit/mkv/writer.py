"""The producer-side MKV writer KVS expects (docs/kvs-wire.md "The MKV a producer sends").

Sans-I/O: every method returns ``bytes`` for the caller to send. A PutMedia body is
``writer.header()`` followed by ``writer.fragment(...)`` for each fragment::

    writer = MkvWriter([TrackInfo(1, "V_MPEG4/ISO/AVC", avcc, width=1280, height=720)])
    body = [writer.header()]
    body.append(writer.fragment(timecode_ms, frames, metadata.take()))

:func:`getmedia_document` writes one fragment the way GetMedia returns it: a complete
EBML document with the AWS tags around the Cluster.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from kvs_toolkit.errors import FragmentMetadataError, MkvError
from kvs_toolkit.mkv import ids
from kvs_toolkit.mkv.ebml import (
    UNKNOWN_SIZE_BYTES,
    element,
    encode_id,
    encode_size,
    float_element,
    string_element,
    uint_element,
)
from kvs_toolkit.mkv.model import (
    AWS_TAG_PREFIX,
    TAG_END_OF_FRAGMENT,
    TRACK_TYPE_AUDIO,
    TRACK_TYPE_VIDEO,
    Tag,
    TrackInfo,
)

# Service limits for fragment metadata (docs/kvs-wire.md "Fragment metadata"; PutMedia ErrorId
# 4009 when exceeded).
MAX_METADATA_ITEMS: Final = 10
MAX_METADATA_NAME_BYTES: Final = 128
MAX_METADATA_VALUE_BYTES: Final = 256
# CodecPrivate is at most 1 MiB (docs/kvs-wire.md "Tracks").
MAX_CODEC_PRIVATE_BYTES: Final = 1024 * 1024
# At most 3 tracks per stream.
MAX_TRACKS: Final = 3
# A SimpleBlock's timecode is a signed 16-bit offset from its Cluster's (Matroska 10.1).
_INT16_MIN: Final = -(1 << 15)
_INT16_MAX: Final = (1 << 15) - 1

_SIMPLE_BLOCK_ID: Final = encode_id(ids.SIMPLE_BLOCK)
_CLUSTER_START: Final = encode_id(ids.CLUSTER) + UNKNOWN_SIZE_BYTES
_SEGMENT_START: Final = encode_id(ids.SEGMENT) + UNKNOWN_SIZE_BYTES


@dataclass(frozen=True, slots=True)
class FrameData:
    """A frame to write: track, absolute timecode (TimecodeScale units), flags, payload.

    Video payloads must already be in AVCC/HVCC form (length-prefixed NAL units).
    """

    track_number: int
    timecode: int
    data: bytes | bytearray | memoryview
    keyframe: bool = False
    invisible: bool = False
    discardable: bool = False


def ebml_header() -> bytes:
    """The EBML header the C producer SDK writes (docs/kvs-wire.md "EBML header and Segment")."""
    return element(
        ids.EBML,
        b"".join(
            (
                uint_element(ids.EBML_VERSION, 1),
                uint_element(ids.EBML_READ_VERSION, 1),
                uint_element(ids.EBML_MAX_ID_LENGTH, 4),
                uint_element(ids.EBML_MAX_SIZE_LENGTH, 8),
                string_element(ids.DOC_TYPE, "matroska"),
                uint_element(ids.DOC_TYPE_VERSION, 2),
                uint_element(ids.DOC_TYPE_READ_VERSION, 2),
            )
        ),
    )


def tags_element(tags: Iterable[Tag]) -> bytes:
    """A Tags element with one Tag > SimpleTag per item, as the C producer SDK writes."""
    items = []
    for tag in tags:
        simple = [string_element(ids.TAG_NAME, tag.name)]
        if tag.binary is not None:
            simple.append(element(ids.TAG_BINARY, tag.binary))
        else:
            simple.append(string_element(ids.TAG_STRING, tag.value))
        items.append(element(ids.TAG, element(ids.SIMPLE_TAG, b"".join(simple))))
    return element(ids.TAGS, b"".join(items)) if items else b""


def track_entry(track: TrackInfo) -> bytes:
    """One TrackEntry element."""
    if not 1 <= track.number <= 127:
        raise MkvError(f"track number {track.number} out of range 1-127")
    if len(track.codec_private) > MAX_CODEC_PRIVATE_BYTES:
        raise MkvError(
            f"CodecPrivate of track {track.number} is {len(track.codec_private)} bytes "
            f"(the service allows {MAX_CODEC_PRIVATE_BYTES})"
        )
    parts = [
        uint_element(ids.TRACK_NUMBER, track.number),
        uint_element(ids.TRACK_UID, track.uid or track.number),
        uint_element(ids.TRACK_TYPE, track.track_type),
        string_element(ids.CODEC_ID, track.codec_id),
    ]
    if track.name:
        parts.append(string_element(ids.TRACK_NAME, track.name))
    if track.default_duration_ns:
        parts.append(uint_element(ids.DEFAULT_DURATION, track.default_duration_ns))
    if track.codec_private:
        parts.append(element(ids.CODEC_PRIVATE, track.codec_private))
    if track.track_type == TRACK_TYPE_VIDEO and track.width and track.height:
        parts.append(
            element(
                ids.VIDEO,
                uint_element(ids.PIXEL_WIDTH, track.width)
                + uint_element(ids.PIXEL_HEIGHT, track.height),
            )
        )
    if track.track_type == TRACK_TYPE_AUDIO:
        audio = []
        if track.sampling_frequency:
            audio.append(float_element(ids.SAMPLING_FREQUENCY, track.sampling_frequency))
        if track.channels:
            audio.append(uint_element(ids.CHANNELS, track.channels))
        if track.bit_depth:
            audio.append(uint_element(ids.BIT_DEPTH, track.bit_depth))
        if audio:
            parts.append(element(ids.AUDIO, b"".join(audio)))
    return element(ids.TRACK_ENTRY, b"".join(parts))


def simple_block(frame: FrameData, cluster_timecode: int) -> bytes:
    """One SimpleBlock element for ``frame`` inside a Cluster at ``cluster_timecode``."""
    relative = frame.timecode - cluster_timecode
    if not _INT16_MIN <= relative <= _INT16_MAX:
        raise MkvError(
            f"frame at timecode {frame.timecode} is {relative} units from its cluster "
            f"({cluster_timecode}); a block can be at most {_INT16_MAX} away"
        )
    flags = (
        (0x80 if frame.keyframe else 0)
        | (0x08 if frame.invisible else 0)
        | (0x01 if frame.discardable else 0)
    )
    header = b"".join(
        (
            encode_size(frame.track_number),  # track number as a vint
            relative.to_bytes(2, "big", signed=True),
            bytes((flags,)),
        )
    )
    return b"".join(
        (_SIMPLE_BLOCK_ID, encode_size(len(header) + len(frame.data)), header, frame.data)
    )


def cluster(cluster_timecode: int, frames: Sequence[FrameData], *, sized: bool = False) -> bytes:
    """A Cluster holding ``frames`` (unknown size, as a live producer writes it)."""
    body = b"".join(
        (
            uint_element(ids.TIMECODE, cluster_timecode),
            *(simple_block(f, cluster_timecode) for f in frames),
        )
    )
    if sized:
        return element(ids.CLUSTER, body)
    return _CLUSTER_START + body


class MkvWriter:
    """Writes the MKV stream a PutMedia upload carries.

    One EBML header and one unknown-size Segment (Info, Tracks), then for each fragment
    its metadata Tags followed by an unknown-size Cluster that starts on a key frame.
    """

    def __init__(
        self,
        tracks: Sequence[TrackInfo],
        *,
        timecode_scale_ns: int = 1_000_000,
        title: str = "kvs-toolkit",
        muxing_app: str = "kvs-toolkit",
        writing_app: str = "kvs-toolkit",
        segment_uid: bytes | None = None,
    ) -> None:
        if not 1 <= len(tracks) <= MAX_TRACKS:
            raise MkvError(f"{len(tracks)} tracks: the service takes 1 to {MAX_TRACKS}")
        numbers = [t.number for t in tracks]
        if len(set(numbers)) != len(numbers):
            raise MkvError(f"duplicate track numbers {numbers}")
        self.tracks = tuple(tracks)
        self.timecode_scale_ns = timecode_scale_ns
        self.title = title
        self.muxing_app = muxing_app
        self.writing_app = writing_app
        self.segment_uid = segment_uid if segment_uid is not None else os.urandom(16)
        self._track_numbers = frozenset(numbers)
        self._video_tracks = frozenset(t.number for t in tracks if t.track_type == TRACK_TYPE_VIDEO)
        self._tracks_element = element(ids.TRACKS, b"".join(track_entry(t) for t in tracks))

    def info(self) -> bytes:
        return element(
            ids.INFO,
            b"".join(
                (
                    element(ids.SEGMENT_UID, self.segment_uid),
                    uint_element(ids.TIMECODE_SCALE, self.timecode_scale_ns),
                    string_element(ids.TITLE, self.title),
                    string_element(ids.MUXING_APP, self.muxing_app),
                    string_element(ids.WRITING_APP, self.writing_app),
                )
            ),
        )

    def tracks_element(self) -> bytes:
        return self._tracks_element

    def header(self) -> bytes:
        """EBML header, Segment start (unknown size), Info and Tracks."""
        return b"".join((ebml_header(), _SEGMENT_START, self.info(), self._tracks_element))

    def fragment(
        self,
        cluster_timecode: int,
        frames: Sequence[FrameData],
        tags: Iterable[Tag] = (),
    ) -> bytes:
        """The fragment's metadata Tags (if any) and its Cluster.

        ``frames`` must start with a key frame when the stream has a video track (the
        service cuts fragments at key frames) and use only the declared tracks.
        """
        self._check_frames(frames)
        return tags_element(tags) + cluster(cluster_timecode, frames)

    def _check_frames(self, frames: Sequence[FrameData]) -> None:
        for frame in frames:
            if frame.track_number not in self._track_numbers:
                raise MkvError(
                    f"frame for track {frame.track_number}, which the Tracks element does "
                    f"not declare ({sorted(self._track_numbers)})"
                )
        first_video = next((f for f in frames if f.track_number in self._video_tracks), None)
        if first_video is not None and not first_video.keyframe:
            raise MkvError("a fragment must start on a key frame")


def getmedia_document(
    writer: MkvWriter,
    cluster_timecode: int,
    frames: Sequence[FrameData],
    *,
    tags_before: Iterable[Tag] = (),
    tags_after: Iterable[Tag] = (),
) -> bytes:
    """One fragment as GetMedia returns it: a whole EBML document.

    EBML header, unknown-size Segment with Info and Tracks, ``tags_before`` (the
    producer's tags and FRAGMENT_NUMBER / SERVER_TIMESTAMP / PRODUCER_TIMESTAMP), the
    Cluster, then ``tags_after`` (MILLIS_BEHIND_NOW, CONTINUATION_TOKEN).
    """
    return b"".join(
        (
            writer.header(),
            tags_element(tags_before),
            cluster(cluster_timecode, frames),
            tags_element(tags_after),
        )
    )


class FragmentMetadata:
    """Fragment metadata with the service's rules (docs/kvs-wire.md "Fragment metadata").

    Persistent items go out with every fragment until changed or cleared (an empty
    value clears one); one-shot items go out with the next fragment only. At most 10
    items per fragment, names up to 128 bytes not starting with ``AWS``, values up to
    256 bytes. Breaking a rule raises :class:`FragmentMetadataError` at once, before
    anything reaches the service (which would answer with ErrorId 4009).
    """

    def __init__(self) -> None:
        self._persistent: dict[str, str] = {}
        self._once: list[Tag] = []

    def put(self, name: str, value: str, *, persistent: bool = True) -> None:
        _check_metadata_item(name, value)
        if persistent:
            if value == "":
                self._persistent.pop(name, None)
                return
            added = name not in self._persistent
            if added and self._count() + 1 > MAX_METADATA_ITEMS:
                raise FragmentMetadataError(
                    f"fragment metadata {name!r}: more than {MAX_METADATA_ITEMS} items per fragment"
                )
            self._persistent[name] = value
            return
        if self._count() + 1 > MAX_METADATA_ITEMS:
            raise FragmentMetadataError(
                f"fragment metadata {name!r}: more than {MAX_METADATA_ITEMS} items per fragment"
            )
        self._once.append(Tag(name, value))

    def _count(self) -> int:
        return len(self._persistent) + len(self._once)

    def peek(self) -> tuple[Tag, ...]:
        """The items the next fragment will carry, without consuming one-shot items."""
        return (*(Tag(n, v) for n, v in self._persistent.items()), *self._once)

    def take(self) -> tuple[Tag, ...]:
        """The items for the next fragment; one-shot items are consumed."""
        items = self.peek()
        self._once = []
        return items


def _check_metadata_item(name: str, value: str) -> None:
    if not name:
        raise FragmentMetadataError("fragment metadata name must not be empty")
    if name.startswith(AWS_TAG_PREFIX):
        raise FragmentMetadataError(
            f"fragment metadata name {name!r} starts with {AWS_TAG_PREFIX!r}, "
            "which the service reserves"
        )
    name_bytes = len(name.encode("utf-8"))
    if name_bytes > MAX_METADATA_NAME_BYTES:
        raise FragmentMetadataError(
            f"fragment metadata name {name[:32]!r}... is {name_bytes} bytes "
            f"(at most {MAX_METADATA_NAME_BYTES})"
        )
    value_bytes = len(value.encode("utf-8"))
    if value_bytes > MAX_METADATA_VALUE_BYTES:
        raise FragmentMetadataError(
            f"fragment metadata {name!r}: value is {value_bytes} bytes "
            f"(at most {MAX_METADATA_VALUE_BYTES})"
        )


def validate_fragment_tags(tags: Sequence[Tag], *, check_count: bool = True) -> None:
    """Check a fragment's producer tags against the service's limits (ErrorId 4009)."""
    if check_count and len(tags) > MAX_METADATA_ITEMS:
        raise FragmentMetadataError(
            f"{len(tags)} fragment metadata items (at most {MAX_METADATA_ITEMS})"
        )
    for tag in tags:
        if tag.name != TAG_END_OF_FRAGMENT:
            _check_metadata_item(tag.name, tag.value)
