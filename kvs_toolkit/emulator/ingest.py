"""Sans-I/O PutMedia ingest: an upload's bytes in, fragment events out.

The HTTP handler feeds the request body to :class:`IngestSession` as it arrives and
turns the events into acknowledgements and storage calls. All the service's checks on
a PutMedia stream live here (docs/kvs-wire.md "PutMedia acknowledgements", the API reference):

* 4006 invalid MKV, or more than one Segment (fatal: the connection ends);
* 4012 more than 3 tracks (fatal);
* 4010 a frame for a track the Tracks element does not declare;
* 4011 a fragment with no frame for a declared track;
* 4004 a fragment timecode lower than the previous fragment's;
* 4001 a fragment over the size limit, 4002 over the duration limit;
* 4009 fragment metadata over the limits;
* 4007 a producer timestamp outside what the service (and botocore's datetime) takes.

Tags after a Cluster belong to the next fragment, except those closed by
``AWS_KINESISVIDEO_END_OF_FRAGMENT`` and those at the end of the upload: the C producer
SDK sends a stream's pending fragment metadata and the end-of-fragment tag after the
last Cluster when it stops, so these join the fragment they close. A fragment is
therefore complete when the next Cluster starts, when an end-of-fragment tag arrives,
at the end of the upload, or (so acks do not wait) when its Cluster has ended and
nothing else is pending.

Bounded work: Tags before a Cluster are capped in count and bytes (4009, fatal), and
one Tags element in size (4006), so a tag flood costs bounded memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Final, TypeAlias

from kvs_toolkit.errors import FragmentMetadataError, MkvError
from kvs_toolkit.mkv import (
    ClusterEnd,
    ClusterStart,
    ClusterTimecode,
    Event,
    FrameRead,
    MkvReader,
    SegmentEnd,
    SegmentInfo,
    SegmentStart,
    Tag,
    TagsRead,
    TrackInfo,
    TracksRead,
)
from kvs_toolkit.mkv.model import TAG_END_OF_FRAGMENT, Frame
from kvs_toolkit.mkv.writer import MAX_TRACKS, FrameData, cluster, validate_fragment_tags

# Service limits (docs/kvs-wire.md "Limits").
MAX_FRAGMENT_BYTES: Final = 50 * 1000 * 1000
MAX_FRAGMENT_DURATION_MS: Final = 10_000
# Producer timestamps from epoch 0 to the end of year 9999 UTC (what botocore's
# datetime can hold); a later one would be stored and then break ListFragments.
MAX_PRODUCER_TIMESTAMP_MS: Final = 253_402_300_799_999
# Pending tags between Clusters (header tags are dozens; a fragment keeps 10 items).
# Small on purpose: the tags parsed before a flood is refused are what it costs.
MAX_PENDING_TAGS: Final = 200
MAX_PENDING_TAG_BYTES: Final = 64 * 1024
# One Tags element; SimpleTag nesting.
MAX_TAGS_ELEMENT_BYTES: Final = 64 * 1024
MAX_TAG_DEPTH: Final = 8
_INT16_MAX: Final = 32767
# Bytes parsed between two checks of the limits (see IngestSession.feed).
FEED_SLICE: Final = 16 * 1024


@dataclass(frozen=True, slots=True)
class IngestLimits:
    max_fragment_bytes: int = MAX_FRAGMENT_BYTES
    max_fragment_duration_ms: int = MAX_FRAGMENT_DURATION_MS
    max_pending_tags: int = MAX_PENDING_TAGS
    max_pending_tag_bytes: int = MAX_PENDING_TAG_BYTES


@dataclass(frozen=True, slots=True)
class FragmentStarted:
    """The first bytes of a fragment arrived (a BUFFERING ack).

    ``index`` counts the upload's fragments from 0; the complete or rejected event of
    the same fragment carries it too.
    """

    timecode: int
    index: int = 0


@dataclass(frozen=True, slots=True)
class FragmentComplete:
    """A whole, valid fragment, rewritten with absolute 1 ms timecodes for storage."""

    timecode: int  # the Cluster timecode as the producer sent it (acks echo it)
    producer_timestamp_ms: int
    duration_ms: int
    tags: tuple[Tag, ...]
    tracks: tuple[TrackInfo, ...]
    frames: tuple[FrameData, ...]
    cluster_bytes: bytes
    frame_count: int
    index: int = 0


@dataclass(frozen=True, slots=True)
class FragmentRejected:
    """An ERROR ack. ``fatal`` errors end the upload."""

    error_id: int
    timecode: int | None
    reason: str
    fatal: bool = False
    index: int | None = None


IngestEvent: TypeAlias = FragmentStarted | FragmentComplete | FragmentRejected


@dataclass
class _Building:
    timecode: int | None = None
    start_offset: int = 0
    frames: list[Frame] = field(default_factory=list)
    tags: tuple[Tag, ...] = ()
    error: FragmentRejected | None = None
    index: int = 0


class IngestSession:
    """One PutMedia upload. ``feed(bytes) -> events``; ``close() -> events`` at the end.

    ``producer_start_ms`` is the ``x-amzn-producer-start-timestamp`` header in ms;
    with ``relative`` timecodes cluster timecodes are added to it.
    """

    def __init__(
        self,
        *,
        relative: bool = False,
        producer_start_ms: int = 0,
        limits: IngestLimits | None = None,
        last_producer_timestamp_ms: int | None = None,
    ) -> None:
        self.limits = limits or IngestLimits()
        self._relative = relative
        self._start_ms = producer_start_ms
        # the service allows 64 MiB elements at most (one block of a 50 MB fragment)
        self._reader = MkvReader(
            max_element_size=max(self.limits.max_fragment_bytes, 1 << 20),
            max_tags_size=MAX_TAGS_ELEMENT_BYTES,
            max_tags=self.limits.max_pending_tags,
            max_depth=MAX_TAG_DEPTH,
        )
        self._scale = 1_000_000
        self._tracks: tuple[TrackInfo, ...] = ()
        self._track_numbers: frozenset[int] = frozenset()
        self._pending_tags: list[Tag] = []
        self._pending_tag_bytes = 0
        self._building: _Building | None = None
        # A fragment whose Cluster ended; it may still get closing tags.
        self._closing: _Building | None = None
        self._closing_end = 0
        self._started = 0
        self._segments = 0
        self._fragments_seen = 0
        self._last_timecode_ms = last_producer_timestamp_ms
        self.failed = False
        self.fragments_accepted = 0
        self.bytes_received = 0

    def feed(self, data: bytes | bytearray | memoryview) -> list[IngestEvent]:
        """Parse ``data``; return the events it completed.

        The reader is fed in slices of :data:`FEED_SLICE` bytes and the limits are
        checked after each, so a chunk full of Tags costs at most one slice of parsing
        past the point where it is refused.
        """
        if len(data) <= FEED_SLICE:
            return self._feed(data)
        view = memoryview(data)
        out: list[IngestEvent] = []
        for start in range(0, len(view), FEED_SLICE):
            if self.failed:
                break
            out.extend(self._feed(view[start : start + FEED_SLICE]))
        return out

    def _feed(self, data: bytes | bytearray | memoryview) -> list[IngestEvent]:
        if self.failed:
            return []
        self.bytes_received += len(data)
        try:
            events = self._reader.feed(data)
        except MkvError as exc:
            return self._fail(self._error_id(), f"invalid MKV: {exc}")
        out = self._handle(events)
        if self._reader.error is not None and not self.failed:
            out.extend(self._fail(self._error_id(), f"invalid MKV: {self._reader.error}"))
            return out
        if (
            self._closing is not None
            and not self._pending_tags
            and self._reader.buffered == 0
            and not self.failed
        ):
            # Nothing after the ended Cluster yet: answer now rather than wait for the
            # next fragment (closing tags may still come, but not in this fragment then).
            out.append(self._finish_closing())
        building = self._building
        if (
            building is not None
            and building.error is None
            and self._reader.offset - building.start_offset > self.limits.max_fragment_bytes
        ):
            # Refuse before buffering more of it: memory stays bounded by the limit.
            building.error = FragmentRejected(
                4001,
                building.timecode,
                f"fragment over {self.limits.max_fragment_bytes} bytes",
            )
            building.frames.clear()
        return out

    def close(self) -> list[IngestEvent]:
        """End of the request body."""
        if self.failed:
            return []
        skipping = self._reader.skipping
        try:
            events = self._reader.close()
        except MkvError as exc:
            # The body ended mid-element: the partial fragment is discarded, nothing of
            # it is stored (docs/kvs-wire.md "PutMedia acknowledgements"). What was
            # complete before it is still answered.
            out: list[IngestEvent] = []
            if self._closing is not None:
                self._closing.tags += tuple(self._pending_tags)
                self._pending_tags = []
                out.append(self._finish_closing())
            if skipping:
                # An element that claimed more bytes than the upload held swallowed
                # whatever followed it: say so instead of dropping it in silence.
                out.extend(self._fail(4006, f"invalid MKV: {exc}"))
            self._building = None
            self.failed = True
            return out
        out = self._handle(events)
        if self._closing is not None and not self.failed:
            # Tags after the last Cluster close the last fragment.
            self._closing.tags += tuple(self._pending_tags)
            self._pending_tags = []
            out.append(self._finish_closing())
        return out

    def _fail(self, error_id: int, reason: str) -> list[IngestEvent]:
        self.failed = True
        timecode = self._building.timecode if self._building else None
        index = self._building.index if self._building else None
        self._building = None
        return [FragmentRejected(error_id, timecode, reason, fatal=True, index=index)]

    def _error_id(self) -> int:
        # Too many tags before a Cluster is the metadata limit (4009), not bad MKV.
        if self._reader.tags_since_cluster + 1 >= self.limits.max_pending_tags:
            return 4009
        return 4006

    def _finish_closing(self) -> IngestEvent:
        closing, self._closing = self._closing, None
        assert closing is not None
        return self._finish(closing, self._closing_end)

    def _handle(self, events: list[Event]) -> list[IngestEvent]:
        out: list[IngestEvent] = []
        for event in events:
            if isinstance(event, FrameRead):
                building = self._building
                if building is None or building.error is not None:
                    continue
                if event.frame.track_number not in self._track_numbers:
                    building.error = FragmentRejected(
                        4010,
                        building.timecode,
                        f"frame for track {event.frame.track_number}, not in the MKV header",
                    )
                    building.frames.clear()
                    continue
                building.frames.append(event.frame)
            elif isinstance(event, ClusterStart):
                if self._closing is not None:
                    out.append(self._finish_closing())
                self._building = _Building(
                    start_offset=event.offset, tags=tuple(self._pending_tags), index=self._started
                )
                self._started += 1
                self._pending_tags = []
                self._pending_tag_bytes = 0
            elif isinstance(event, ClusterTimecode):
                if self._building is not None and self._building.timecode is None:
                    self._building.timecode = event.timecode
                    out.append(FragmentStarted(event.timecode, self._building.index))
            elif isinstance(event, ClusterEnd):
                if self._closing is not None:  # pragma: no cover - a ClusterStart came first
                    out.append(self._finish_closing())
                if self._building is not None:
                    self._closing, self._closing_end = self._building, event.offset
                self._building = None
            elif isinstance(event, TagsRead):
                kept = [t for t in event.tags if t.name != TAG_END_OF_FRAGMENT]
                end_of_fragment = len(kept) < len(event.tags)
                if end_of_fragment and self._closing is not None:
                    # END_OF_FRAGMENT after a Cluster closes that fragment, with the
                    # tags sent since it.
                    self._closing.tags += (*self._pending_tags, *kept)
                    self._pending_tags = []
                    self._pending_tag_bytes = 0
                    out.append(self._finish_closing())
                    continue
                self._pending_tags.extend(kept)
                self._pending_tag_bytes += event.end - event.offset
                if (
                    len(self._pending_tags) > self.limits.max_pending_tags
                    or self._pending_tag_bytes > self.limits.max_pending_tag_bytes
                ):
                    out.extend(
                        self._fail(
                            4009,
                            f"more than {self.limits.max_pending_tags} tags or "
                            f"{self.limits.max_pending_tag_bytes} bytes of tags before a Cluster",
                        )
                    )
                    return out
            elif isinstance(event, TracksRead):
                if len(event.tracks) > MAX_TRACKS:
                    out.extend(self._fail(4012, f"{len(event.tracks)} tracks (at most 3)"))
                    return out
                self._tracks = event.tracks
                self._track_numbers = frozenset(t.number for t in event.tracks)
            elif isinstance(event, SegmentInfo):
                self._scale = event.timecode_scale_ns
            elif isinstance(event, SegmentStart):
                self._segments += 1
                if self._segments > 1:
                    out.extend(self._fail(4006, "more than one MKV Segment in one PutMedia"))
                    return out
            elif isinstance(event, SegmentEnd):
                pass
        return out

    def _to_ms(self, timecode: int) -> int:
        ms = timecode * self._scale // 1_000_000
        return self._start_ms + ms if self._relative else ms

    def _finish(self, building: _Building, end_offset: int) -> IngestEvent:
        event = self._check(building, end_offset)
        if isinstance(event, FragmentRejected):
            return replace(event, index=building.index)
        return event

    def _check(self, building: _Building, end_offset: int) -> IngestEvent:
        timecode = building.timecode
        if building.error is not None:
            return building.error
        if end_offset - building.start_offset > self.limits.max_fragment_bytes:
            return FragmentRejected(
                4001, timecode, f"fragment over {self.limits.max_fragment_bytes} bytes"
            )
        if timecode is None:
            return FragmentRejected(4006, None, "Cluster without a Timecode")
        declared = {t.number for t in self._tracks}
        present = {f.track_number for f in building.frames}
        if missing := declared - present:
            return FragmentRejected(
                4011, timecode, f"no frames for track(s) {sorted(missing)} in this fragment"
            )
        try:
            # Tags before the first Cluster also carry the producer's MKV header tags:
            # real GetMedia captures show the service accepting dozens of them there
            # (output-get-media-non-increasing-timecode.mkv), so the item count is
            # enforced from the second fragment of an upload on.
            validate_fragment_tags(building.tags, check_count=self._fragments_seen > 0)
        except FragmentMetadataError as exc:
            return FragmentRejected(4009, timecode, str(exc))
        finally:
            self._fragments_seen += 1
        producer_ms = self._to_ms(timecode)
        frame_ms = [self._to_ms(f.timecode) for f in building.frames]
        first, last = min(frame_ms), max(frame_ms)
        if not (
            0 <= producer_ms <= MAX_PRODUCER_TIMESTAMP_MS
            and first >= 0
            and last <= MAX_PRODUCER_TIMESTAMP_MS
        ):
            return FragmentRejected(
                4007,
                timecode,
                f"producer timestamp {producer_ms} ms is outside 0..{MAX_PRODUCER_TIMESTAMP_MS}",
            )
        if last - first > self.limits.max_fragment_duration_ms:
            return FragmentRejected(
                4002,
                timecode,
                f"fragment spans {last - first} ms "
                f"(at most {self.limits.max_fragment_duration_ms})",
            )
        # Each fragment is compared with the one sent just before it in this upload
        # ("within a PutMedia call, you cannot send fragments out of order").
        previous, self._last_timecode_ms = self._last_timecode_ms, producer_ms
        if previous is not None and producer_ms < previous:
            return FragmentRejected(
                4004,
                timecode,
                f"fragment timecode {producer_ms} ms is lower than the previous "
                f"fragment's {previous} ms",
            )
        frames = tuple(
            FrameData(
                f.track_number,
                ms,
                f.data,
                keyframe=f.keyframe,
                invisible=f.invisible,
                discardable=f.discardable,
            )
            for f, ms in zip(building.frames, frame_ms, strict=True)
        )
        # Stored with the producer timestamp as an absolute 1 ms cluster timecode, which
        # is what GetMedia returns for the fragment, unless a block would then be too far
        # from it for a 16-bit block timecode (a legal MKV with a coarse TimecodeScale
        # can put it there): then the cluster starts at the first frame.
        cluster_timecode = min(producer_ms, first)
        if last - cluster_timecode > _INT16_MAX:
            cluster_timecode = first
        try:
            cluster_bytes = cluster(cluster_timecode, frames, sized=True)
        except MkvError as exc:
            return FragmentRejected(4006, timecode, f"the fragment cannot be stored: {exc}")
        self.fragments_accepted += 1
        return FragmentComplete(
            timecode=timecode,
            producer_timestamp_ms=producer_ms,
            duration_ms=_duration_ms(frame_ms),
            tags=building.tags,
            tracks=self._tracks,
            frames=frames,
            cluster_bytes=cluster_bytes,
            frame_count=len(frames),
            index=building.index,
        )


def _duration_ms(frame_ms: list[int]) -> int:
    """First to last frame, plus one average frame interval."""
    if len(frame_ms) < 2:
        return 0
    ordered = sorted(frame_ms)
    span = ordered[-1] - ordered[0]
    return span + span // (len(ordered) - 1)
