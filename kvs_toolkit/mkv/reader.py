"""Sans-I/O streaming MKV reader: bytes in (any chunking), events and fragments out.

:class:`MkvReader` turns bytes into :data:`Event` objects; :class:`FragmentReader`
groups those into :class:`~kvs_toolkit.mkv.model.Fragment` objects. Neither does I/O.

How it stays linear and bounded (the habits of h11's receive buffer):

* Bytes accumulate in one ``bytearray``; a read position moves forward and consumed
  bytes are dropped in amortised O(1) per byte. Nothing already parsed is parsed again.
* The reader buffers at most one element it must read whole (a block, a Tags or Tracks
  element) plus the chunk being fed. Such an element claiming more than
  ``max_element_size`` is an error before anything is allocated.
* Elements it does not need (SeekHead, Cues, Void, unknown IDs) are skipped by size
  without being buffered, however large they claim to be.
* Tags are bounded on their own: a Tags element larger than ``max_tags_size``, more
  than ``max_tags`` SimpleTags between two Clusters, or SimpleTags nested deeper than
  ``max_depth`` are errors. Nested SimpleTags are walked with an explicit stack, never
  by recursion, so depth costs no Python frames.
* Segments and Clusters are descended into, so their size (known or unknown) costs
  nothing; an unknown-size one ends where an element that cannot be its child starts
  (RFC 8794 section 6.2; only Segment and Cluster may have unknown size in Matroska).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Final, TypeAlias

from kvs_toolkit.errors import MkvError
from kvs_toolkit.mkv import ids
from kvs_toolkit.mkv.blocks import BlockFrames, parse_block, parse_block_group
from kvs_toolkit.mkv.ebml import (
    UNKNOWN_SIZE,
    decode_float,
    decode_string,
    decode_uint,
    iter_children,
    read_element_id,
    read_size,
)
from kvs_toolkit.mkv.model import (
    TAG_CONTINUATION_TOKEN,
    Fragment,
    Frame,
    Tag,
    TrackInfo,
)

# 64 MiB: above the service's 50 MB fragment limit (docs/kvs-wire.md "Limits"), so any single
# frame KVS accepts fits, while a garbage size cannot make us allocate gigabytes.
DEFAULT_MAX_ELEMENT_SIZE: Final = 64 * 1024 * 1024
# Tags: the service keeps 10 metadata items per fragment (docs/kvs-wire.md "Limits"), and
# GetMedia adds a handful; a producer's header tags are dozens. These bounds leave
# room for any real stream while a tag flood costs bounded memory and time.
DEFAULT_MAX_TAGS_SIZE: Final = 1024 * 1024
DEFAULT_MAX_TAGS: Final = 4096
DEFAULT_MAX_DEPTH: Final = 32
# A Matroska EBML header is a few dozen bytes; anything huge is not an MKV stream.
_MAX_EBML_HEADER_SIZE: Final = 4096
# Drop consumed bytes once this many have piled up at the front of the buffer.
_COMPACT_THRESHOLD: Final = 1 << 16


# --- events ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class DocumentStart:
    """An EBML header: a new EBML document (in GetMedia, a new fragment) starts."""

    offset: int
    doc_type: str


@dataclass(frozen=True, slots=True)
class SegmentStart:
    offset: int
    size: int | None


@dataclass(frozen=True, slots=True)
class SegmentEnd:
    offset: int


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    offset: int
    timecode_scale_ns: int
    title: str
    muxing_app: str
    writing_app: str
    segment_uid: bytes
    duration: float | None


@dataclass(frozen=True, slots=True)
class TracksRead:
    offset: int
    tracks: tuple[TrackInfo, ...]


@dataclass(frozen=True, slots=True)
class TagsRead:
    """One Tags element, with its SimpleTags flattened in document order."""

    offset: int
    tags: tuple[Tag, ...]
    end: int


@dataclass(frozen=True, slots=True)
class ClusterStart:
    offset: int
    size: int | None


@dataclass(frozen=True, slots=True)
class ClusterTimecode:
    offset: int
    timecode: int


@dataclass(frozen=True, slots=True)
class FrameRead:
    frame: Frame


@dataclass(frozen=True, slots=True)
class ClusterEnd:
    offset: int


Event: TypeAlias = (
    DocumentStart
    | SegmentStart
    | SegmentEnd
    | SegmentInfo
    | TracksRead
    | TagsRead
    | ClusterStart
    | ClusterTimecode
    | FrameRead
    | ClusterEnd
)


# --- element handling tables ------------------------------------------------------------
_DESCEND: Final = frozenset({ids.SEGMENT, ids.CLUSTER})
# Read whole, then parsed from memory: small metadata and the blocks themselves.
_READ_WHOLE: Final = frozenset(
    {
        ids.EBML,
        ids.INFO,
        ids.TRACKS,
        ids.TAGS,
        ids.TIMECODE,
        ids.SIMPLE_BLOCK,
        ids.BLOCK_GROUP,
    }
)
# IDs that may not appear inside an unknown-size parent; they close it (RFC 8794 6.2).
_CLOSES_CLUSTER: Final = ids.SEGMENT_CHILDREN | {ids.EBML, ids.SEGMENT}
_CLOSES_SEGMENT: Final = frozenset({ids.EBML, ids.SEGMENT})


@dataclass(slots=True)
class _OpenMaster:
    element_id: int
    offset: int
    end: int | None  # absolute end offset; None while the size is unknown


class MkvReader:
    """Incremental MKV/EBML parser. Feed bytes; get events.

    >>> reader = MkvReader()
    >>> events = reader.feed(chunk)      # any chunking
    >>> events += reader.close()         # at end of input

    Raises :class:`~kvs_toolkit.errors.MkvError` (with the absolute byte offset) on
    malformed, truncated or over-limit input. Nothing parsed before the error is lost:
    a ``feed`` that parsed events and then met an error returns the events, and the
    error is raised by the next call (and is visible at once as :attr:`error`).
    """

    def __init__(
        self,
        *,
        max_element_size: int = DEFAULT_MAX_ELEMENT_SIZE,
        max_tags_size: int = DEFAULT_MAX_TAGS_SIZE,
        max_tags: int = DEFAULT_MAX_TAGS,
        max_depth: int = DEFAULT_MAX_DEPTH,
    ) -> None:
        self.max_element_size = max_element_size
        self.max_tags_size = max_tags_size
        self.max_tags = max_tags
        self.max_depth = max_depth
        self._tags_since_cluster = 0
        self._buf = bytearray()
        self._pos = 0  # read position inside _buf
        self._base = 0  # absolute offset of _buf[0]
        self._skip = 0  # bytes of a skipped element still to discard
        self._need = 0  # bytes needed at _pos before trying again
        self._stack: list[_OpenMaster] = []
        self._seen_header = False
        self._cluster_timecode: int | None = None
        self._timecode_scale = 1_000_000
        self._closed = False
        self._failed: MkvError | None = None

    @property
    def offset(self) -> int:
        """Absolute offset of the next byte to parse."""
        return self._base + self._pos

    @property
    def buffered(self) -> int:
        """Bytes held but not yet parsed (bounded by one element plus one chunk)."""
        return len(self._buf) - self._pos

    @property
    def tags_since_cluster(self) -> int:
        """SimpleTags read since the last Cluster started (or since the start)."""
        return self._tags_since_cluster

    @property
    def skipping(self) -> int:
        """Bytes of a skipped element (Void, unknown ID, ...) still to come.

        Non-zero at the end of input means an element claimed more bytes than the
        input held.
        """
        return self._skip

    @property
    def error(self) -> MkvError | None:
        """The error that stopped parsing, if any (raised by the next ``feed``/``close``)."""
        return self._failed

    def feed(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Parse as much of the input so far as possible."""
        if self._failed is not None:
            raise self._failed
        if self._closed:
            raise MkvError("feed() after close()", self.offset)
        if self._skip:
            # Discard skipped bytes straight from the chunk, without buffering them.
            dropped = min(self._skip, len(data))
            self._skip -= dropped
            self._base += dropped
            data = memoryview(data)[dropped:]
        if data:
            self._buf += data
        if self._need and len(self._buf) - self._pos < self._need:
            return []
        events: list[Event] = []
        try:
            self._parse(events)
        except MkvError as exc:
            self._failed = exc
            if not events:
                raise
            # Hand out what was parsed before the error; the next call raises it.
            return events
        self._compact()
        return events

    def close(self) -> list[Event]:
        """Signal end of input: closes open unknown-size elements, or raises if truncated."""
        if self._failed is not None:
            raise self._failed
        if self._closed:
            return []
        self._closed = True
        events: list[Event] = []
        remaining = len(self._buf) - self._pos
        if self._skip or remaining:
            raise MkvError(
                "input ends in the middle of an element "
                f"({self._skip or remaining} bytes short or dangling)",
                self.offset,
            )
        while self._stack:
            top = self._stack[-1]
            if top.end is not None and top.end != self.offset:
                raise MkvError(
                    f"input ends inside element 0x{top.element_id:X} "
                    f"({top.end - self.offset} bytes missing)",
                    self.offset,
                )
            self._pop(events, self.offset)
        if not self._seen_header and self.offset > 0:
            raise MkvError("no EBML header: not an MKV stream", 0)
        return events

    # --- internals ----------------------------------------------------------------------
    def _compact(self) -> None:
        if self._pos >= _COMPACT_THRESHOLD and self._pos * 2 >= len(self._buf):
            del self._buf[: self._pos]
            self._base += self._pos
            self._pos = 0

    def _pop(self, events: list[Event], at: int) -> None:
        top = self._stack.pop()
        if top.element_id == ids.CLUSTER:
            self._cluster_timecode = None
            events.append(ClusterEnd(at))
        elif top.element_id == ids.SEGMENT:
            events.append(SegmentEnd(at))

    def _parse(self, events: list[Event]) -> None:
        buf = self._buf
        end = len(buf)
        stack = self._stack
        while True:
            pos = self._pos
            here = self._base + pos
            # Close sized masters whose data is complete.
            while stack and stack[-1].end is not None and here >= stack[-1].end:
                if here > stack[-1].end:  # pragma: no cover - children are checked on entry
                    raise MkvError("element overran its parent", here)
                self._pop(events, here)
            if pos >= end:
                self._need = 0
                return
            element_id, id_len = read_element_id(buf, pos, end, self._base)
            if id_len == 0:
                self._need = 1 + (end - pos)
                return
            size, size_len = read_size(buf, pos + id_len, end, self._base)
            if size_len == 0:
                self._need = id_len + 1 + (end - pos - id_len)
                return
            header_len = id_len + size_len

            if not self._seen_header:
                if element_id != ids.EBML:
                    raise MkvError(
                        f"not an MKV stream: expected an EBML header, found element "
                        f"0x{element_id:X}",
                        here,
                    )
                self._seen_header = True

            # An element that cannot be a child of an unknown-size parent ends it.
            while stack and stack[-1].end is None:
                parent = stack[-1].element_id
                if (parent == ids.CLUSTER and element_id in _CLOSES_CLUSTER) or (
                    parent == ids.SEGMENT and element_id in _CLOSES_SEGMENT
                ):
                    self._pop(events, here)
                    continue
                break

            if size == UNKNOWN_SIZE and element_id not in _DESCEND:
                raise MkvError(
                    f"element 0x{element_id:X} has unknown size (only Segment and Cluster may)",
                    here,
                )
            parent_end = stack[-1].end if stack else None
            if (
                size != UNKNOWN_SIZE
                and parent_end is not None
                and here + header_len + size > parent_end
            ):
                raise MkvError(
                    f"element 0x{element_id:X} of {size} bytes overruns its parent "
                    f"by {here + header_len + size - parent_end} bytes",
                    here,
                )

            if element_id in _DESCEND:
                self._enter(events, element_id, here, header_len, size)
                self._pos = pos + header_len
                continue

            if element_id in _READ_WHOLE and self._in_place_for(element_id):
                if element_id == ids.EBML:
                    limit = _MAX_EBML_HEADER_SIZE
                elif element_id == ids.TAGS:
                    limit = min(self.max_tags_size, self.max_element_size)
                else:
                    limit = self.max_element_size
                if size > limit:
                    raise MkvError(
                        f"element 0x{element_id:X} claims {size} bytes, over the "
                        f"{limit}-byte limit",
                        here,
                    )
                total = header_len + size
                if end - pos < total:
                    self._need = total
                    return
                self._need = 0
                data_start = pos + header_len
                # One copy out of the receive buffer (a bytearray slice would copy twice).
                with memoryview(buf) as view:
                    payload = view[data_start : data_start + size].tobytes()
                self._pos = pos + total
                self._handle(events, element_id, payload, here, here + header_len)
                continue

            # Skip by size: Void, CRC-32, SeekHead, Cues, unknown IDs, misplaced elements.
            available = end - pos - header_len
            if size <= available:
                self._pos = pos + header_len + size
                continue
            self._skip = size - available
            self._base += end
            self._buf.clear()
            buf = self._buf
            end = 0
            self._pos = 0
            self._need = 0
            return

    def _in_place_for(self, element_id: int) -> bool:
        """Whether ``element_id`` sits where this reader interprets it."""
        parent = self._stack[-1].element_id if self._stack else None
        if element_id == ids.EBML:
            return parent is None
        if element_id in (ids.TIMECODE, ids.SIMPLE_BLOCK, ids.BLOCK_GROUP):
            return parent == ids.CLUSTER
        return parent == ids.SEGMENT

    def _enter(
        self, events: list[Event], element_id: int, here: int, header_len: int, size: int
    ) -> None:
        parent = self._stack[-1].element_id if self._stack else None
        known = None if size == UNKNOWN_SIZE else size
        end = None if known is None else here + header_len + known
        if element_id == ids.SEGMENT:
            if parent is not None:
                raise MkvError("Segment nested inside another element", here)
            self._stack.append(_OpenMaster(element_id, here, end))
            events.append(SegmentStart(here, known))
            return
        if parent != ids.SEGMENT:
            raise MkvError("Cluster outside a Segment", here)
        if known is not None and known > 0 and known > (1 << 40):
            raise MkvError(f"Cluster claims an absurd size of {known} bytes", here)
        self._stack.append(_OpenMaster(element_id, here, end))
        self._cluster_timecode = None
        self._tags_since_cluster = 0
        events.append(ClusterStart(here, known))

    def _handle(
        self, events: list[Event], element_id: int, payload: bytes, offset: int, data_offset: int
    ) -> None:
        if element_id == ids.SIMPLE_BLOCK:
            self._block(events, parse_block(payload, self._cluster_timecode, offset))
        elif element_id == ids.TIMECODE:
            self._cluster_timecode = decode_uint(payload, offset)
            events.append(ClusterTimecode(offset, self._cluster_timecode))
        elif element_id == ids.BLOCK_GROUP:
            if self._cluster_timecode is None:
                raise MkvError("block before the Cluster's Timecode", offset)
            block = parse_block_group(payload, self._cluster_timecode, data_offset)
            if block is not None:
                self._block(events, block)
        elif element_id == ids.EBML:
            doc_type = "matroska"
            for child_id, child, _ in iter_children(payload, data_offset):
                if child_id == ids.DOC_TYPE:
                    doc_type = decode_string(child)
            if doc_type not in ("matroska", "webm"):
                raise MkvError(f"unsupported EBML DocType {doc_type!r}", offset)
            events.append(DocumentStart(offset, doc_type))
        elif element_id == ids.INFO:
            info = _parse_info(payload, data_offset, offset)
            self._timecode_scale = info.timecode_scale_ns
            events.append(info)
        elif element_id == ids.TRACKS:
            events.append(TracksRead(offset, _parse_tracks(payload, data_offset)))
        elif element_id == ids.TAGS:
            end = data_offset + len(payload)
            # The budget counts every Tags element since the last Cluster, so many small
            # ones cost no more than one big one.
            budget = self.max_tags - self._tags_since_cluster
            tags = _parse_tags(payload, data_offset, budget, self.max_depth, self.max_tags)
            self._tags_since_cluster += len(tags)
            events.append(TagsRead(offset, tags, end))

    def _block(self, events: list[Event], block: BlockFrames) -> None:
        timestamp_ns = block.timecode * self._timecode_scale
        for lace in block.frames:
            events.append(
                FrameRead(
                    Frame(
                        track_number=block.track_number,
                        timecode=block.timecode,
                        timestamp_ns=timestamp_ns,
                        keyframe=block.keyframe,
                        data=lace,
                        invisible=block.invisible,
                        discardable=block.discardable,
                        offset=block.offset,
                    )
                )
            )


def _parse_info(payload: bytes, data_offset: int, offset: int) -> SegmentInfo:
    scale = 1_000_000
    title = muxing_app = writing_app = ""
    uid = b""
    duration: float | None = None
    for child_id, child, child_offset in iter_children(payload, data_offset):
        if child_id == ids.TIMECODE_SCALE:
            scale = decode_uint(child, child_offset)
            if scale == 0:
                raise MkvError("TimecodeScale is 0", child_offset)
        elif child_id == ids.TITLE:
            title = decode_string(child)
        elif child_id == ids.MUXING_APP:
            muxing_app = decode_string(child)
        elif child_id == ids.WRITING_APP:
            writing_app = decode_string(child)
        elif child_id == ids.SEGMENT_UID:
            uid = bytes(child)
        elif child_id == ids.DURATION:
            duration = decode_float(child, child_offset)
    return SegmentInfo(offset, scale, title, muxing_app, writing_app, uid, duration)


def _parse_tracks(payload: bytes, data_offset: int) -> tuple[TrackInfo, ...]:
    tracks: list[TrackInfo] = []
    for child_id, entry, entry_offset in iter_children(payload, data_offset):
        if child_id != ids.TRACK_ENTRY:
            continue
        fields: dict[str, object] = {}
        for field_id, value, field_offset in iter_children(entry, entry_offset):
            if field_id == ids.TRACK_NUMBER:
                fields["number"] = decode_uint(value, field_offset)
            elif field_id == ids.TRACK_UID:
                fields["uid"] = decode_uint(value, field_offset)
            elif field_id == ids.TRACK_TYPE:
                fields["track_type"] = decode_uint(value, field_offset)
            elif field_id == ids.CODEC_ID:
                fields["codec_id"] = decode_string(value)
            elif field_id == ids.CODEC_PRIVATE:
                fields["codec_private"] = bytes(value)
            elif field_id == ids.TRACK_NAME:
                fields["name"] = decode_string(value)
            elif field_id == ids.DEFAULT_DURATION:
                fields["default_duration_ns"] = decode_uint(value, field_offset)
            elif field_id == ids.VIDEO:
                for video_id, v, v_offset in iter_children(value, field_offset):
                    if video_id == ids.PIXEL_WIDTH:
                        fields["width"] = decode_uint(v, v_offset)
                    elif video_id == ids.PIXEL_HEIGHT:
                        fields["height"] = decode_uint(v, v_offset)
            elif field_id == ids.AUDIO:
                for audio_id, a, a_offset in iter_children(value, field_offset):
                    if audio_id == ids.SAMPLING_FREQUENCY:
                        fields["sampling_frequency"] = decode_float(a, a_offset)
                    elif audio_id == ids.CHANNELS:
                        fields["channels"] = decode_uint(a, a_offset)
                    elif audio_id == ids.BIT_DEPTH:
                        fields["bit_depth"] = decode_uint(a, a_offset)
        if "number" not in fields:
            raise MkvError("TrackEntry without a TrackNumber", entry_offset)
        fields.setdefault("codec_id", "")
        tracks.append(TrackInfo(**fields))  # type: ignore[arg-type]
    return tuple(tracks)


def _parse_tags(
    payload: bytes, data_offset: int, budget: int, max_depth: int, limit: int
) -> tuple[Tag, ...]:
    tags: list[Tag] = []
    for child_id, tag, tag_offset in iter_children(payload, data_offset):
        if child_id != ids.TAG:
            continue
        for tag_child_id, simple, simple_offset in iter_children(tag, tag_offset):
            if tag_child_id == ids.SIMPLE_TAG:
                _collect_simple_tags(
                    simple, simple_offset, tags, budget=budget, max_depth=max_depth, limit=limit
                )
    return tuple(tags)


def _collect_simple_tags(
    payload: memoryview, offset: int, out: list[Tag], *, budget: int, max_depth: int, limit: int
) -> None:
    """A SimpleTag and its nested SimpleTags, depth first in document order.

    An explicit stack instead of recursion: 5,000 nested SimpleTags are an MkvError at
    ``max_depth``, not a RecursionError.
    """
    stack: list[tuple[memoryview, int, int]] = [(payload, offset, 1)]
    while stack:
        data, at, depth = stack.pop()
        if depth > max_depth:
            raise MkvError(f"SimpleTags nested deeper than {max_depth} levels", at)
        if len(out) >= budget:
            raise MkvError(f"more than {limit} SimpleTags between two Clusters", at)
        name = ""
        value = ""
        binary: bytes | None = None
        nested: list[tuple[memoryview, int, int]] = []
        for child_id, child, child_offset in iter_children(data, at):
            if child_id == ids.TAG_NAME:
                name = decode_string(child)
            elif child_id == ids.TAG_STRING:
                value = decode_string(child)
            elif child_id == ids.TAG_BINARY:
                binary = bytes(child)
            elif child_id == ids.SIMPLE_TAG:
                nested.append((child, child_offset, depth + 1))
        out.append(Tag(name, value, binary))
        stack.extend(reversed(nested))


# --- fragments ----------------------------------------------------------------------------
class FragmentReader:
    """Groups reader events into fragments.

    A fragment is one EBML document of a GetMedia stream (the service sends every
    fragment as its own document), or one Cluster when a document holds several (a plain
    MKV file or a producer's PutMedia stream). Tags are attached to the fragment whose
    part of the stream they sit in: tags before a document's first Cluster and after its
    last go with that Cluster; tags between two Clusters go with the later one, which is
    where a producer writes a fragment's metadata.

    A fragment is handed out as soon as it is known to be complete: when the Tags
    carrying ``AWS_KINESISVIDEO_CONTINUATION_TOKEN`` after its Cluster arrive (GetMedia
    writes them last), or when the next Cluster or document starts, or at ``close()``.
    """

    def __init__(
        self,
        *,
        max_element_size: int = DEFAULT_MAX_ELEMENT_SIZE,
        max_tags_size: int = DEFAULT_MAX_TAGS_SIZE,
        max_tags: int = DEFAULT_MAX_TAGS,
        max_depth: int = DEFAULT_MAX_DEPTH,
    ) -> None:
        self._reader = MkvReader(
            max_element_size=max_element_size,
            max_tags_size=max_tags_size,
            max_tags=max_tags,
            max_depth=max_depth,
        )
        self._max_tags = max_tags
        self._tracks: tuple[TrackInfo, ...] = ()
        self._scale = 1_000_000
        self._document = -1
        self._tags: list[Tag] = []  # tags of the fragment being built, up to its Cluster
        self._trailing: list[Tag] = []  # tags after the Cluster of the fragment being built
        self._frames: list[Frame] = []
        self._cluster_timecode: int | None = None
        self._has_cluster = False
        self._start = 0
        self.fragments_read = 0
        # Set by close(keep_truncated=True) when the input ended inside an element.
        self.truncation: MkvError | None = None

    @property
    def offset(self) -> int:
        return self._reader.offset

    @property
    def buffered(self) -> int:
        return self._reader.buffered

    @property
    def tracks(self) -> tuple[TrackInfo, ...]:
        return self._tracks

    def feed(self, data: bytes | bytearray | memoryview) -> list[Fragment]:
        """Parse ``data``; return the fragments it completed."""
        return self._consume(self._reader.feed(data))

    def close(self, *, keep_truncated: bool = False) -> list[Fragment]:
        """End of input: return the last fragment.

        Input that ends inside an element raises :class:`MkvError`. With
        ``keep_truncated`` the frames that were complete are returned instead, as a
        fragment whose ``truncated`` flag is set (a capture cut off mid-fragment).
        """
        try:
            events = self._reader.close()
        except MkvError as exc:
            if not keep_truncated:
                raise
            self.truncation = exc
            out: list[Fragment] = []
            if self._has_cluster or self._tags or self._frames:
                self._emit(out, self._reader.offset, with_trailing=True, truncated=True)
            return out
        out = self._consume(events)
        self._finish_document(out, self._reader.offset)
        return out

    def _consume(self, events: Iterable[Event]) -> list[Fragment]:
        out: list[Fragment] = []
        for event in events:
            if isinstance(event, FrameRead):
                self._frames.append(event.frame)
            elif isinstance(event, TagsRead):
                if len(self._tags) + len(self._trailing) + len(event.tags) > self._max_tags:
                    # Many small Tags elements add up: the bound is per fragment.
                    raise MkvError(f"more than {self._max_tags} tags in one fragment", event.offset)
                if self._has_cluster:
                    self._trailing.extend(event.tags)
                    if any(t.name == TAG_CONTINUATION_TOKEN for t in event.tags):
                        self._emit(out, event.end, with_trailing=True)
                else:
                    self._tags.extend(event.tags)
            elif isinstance(event, ClusterStart):
                if self._has_cluster:
                    self._emit(out, event.offset, with_trailing=False)
                self._has_cluster = True
            elif isinstance(event, ClusterTimecode):
                self._cluster_timecode = event.timecode
            elif isinstance(event, DocumentStart):
                self._finish_document(out, event.offset)
                self._document += 1
                self._start = event.offset
            elif isinstance(event, TracksRead):
                self._tracks = event.tracks
            elif isinstance(event, SegmentInfo):
                self._scale = event.timecode_scale_ns
        return out

    def _finish_document(self, out: list[Fragment], at: int) -> None:
        # A document with tags and no Cluster (KVS sends such fragments, for example
        # with an error code) is a fragment of its own with no frames.
        if self._has_cluster or self._tags:
            self._emit(out, at, with_trailing=True)

    def _emit(
        self, out: list[Fragment], end: int, *, with_trailing: bool, truncated: bool = False
    ) -> None:
        tags = (*self._tags, *self._trailing) if with_trailing else tuple(self._tags)
        out.append(
            Fragment(
                tags=tags,
                tracks=self._tracks,
                cluster_timecode=self._cluster_timecode if self._has_cluster else None,
                frames=tuple(self._frames),
                timecode_scale_ns=self._scale,
                offset=self._start,
                size=end - self._start,
                document_index=max(self._document, 0),
                truncated=truncated,
            )
        )
        self.fragments_read += 1
        # Tags after a Cluster that did not end its document belong to the next Cluster.
        self._tags = [] if with_trailing else self._trailing
        self._trailing = []
        self._frames = []
        self._cluster_timecode = None
        self._has_cluster = False
        self._start = end


def read_fragments(
    chunks: Iterable[bytes | bytearray | memoryview],
    *,
    max_element_size: int = DEFAULT_MAX_ELEMENT_SIZE,
) -> Iterator[Fragment]:
    """Fragments from an iterable of byte chunks (a file, a socket, a botocore stream)."""
    reader = FragmentReader(max_element_size=max_element_size)
    for chunk in chunks:
        yield from reader.feed(chunk)
    yield from reader.close()
