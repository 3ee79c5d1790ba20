"""Sans-I/O packaging of encoded frames into KVS fragments, and the re-send buffer.

:class:`Fragmenter` turns encoded frames into the bytes of a PutMedia body, one
key-frame-aligned fragment at a time, streaming each frame's SimpleBlock as it comes
(the Cluster has unknown size, as the C producer SDK writes it), so a frame reaches
the service without waiting for its fragment to end.

:class:`FragmentBuffer` keeps every fragment until the service acknowledges it, so a
new connection can send again what the old one lost. It is bounded in bytes; when full
it drops the *oldest* unacknowledged fragment (and counts it): a camera that cannot
upload for a long time keeps the most recent video, which is what its owner wants.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from kvs_toolkit.errors import MkvError
from kvs_toolkit.mkv import MkvWriter, Tag, TrackInfo
from kvs_toolkit.mkv.ebml import UNKNOWN_SIZE_BYTES, encode_id, uint_element
from kvs_toolkit.mkv.ids import CLUSTER, TIMECODE
from kvs_toolkit.mkv.writer import FragmentMetadata, FrameData, simple_block, tags_element

log = logging.getLogger(__name__)

DEFAULT_FRAGMENT_DURATION_MS: Final = 2000  # the C SDK's default key-frame fragmentation
DEFAULT_BUFFER_BYTES: Final = 64 * 1024 * 1024
# A SimpleBlock holds a signed 16-bit offset from its cluster (Matroska), and the
# service refuses fragments over 10 s (ErrorId 4002): cut before either.
_MAX_FRAGMENT_SPAN_MS: Final = 9_500
# Key frames come every fragment duration, stamped by a clock with jitter (a camera's
# arrival clock, a pipe read): one stamped a little early must still end the fragment,
# not double its length. Up to this much (and a quarter of the duration) early counts.
DEFAULT_CUT_TOLERANCE_MS: Final = 100


@dataclass(frozen=True, slots=True)
class EncodedFrame:
    """A frame ready for MKV: AVCC/HVCC payload (or audio), absolute time in ms."""

    data: bytes | memoryview
    timestamp_ms: int
    keyframe: bool
    track_number: int = 1


@dataclass(eq=False)
class PendingFragment:
    """A fragment's bytes, kept until the service acknowledges it."""

    timecode: int
    chunks: list[bytes] = field(default_factory=list)
    frames: int = 0
    complete: bool = False
    size: int = 0
    last_timestamp_ms: int = 0

    def append(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        self.size += len(chunk)

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)


class Fragmenter:
    """Encoded frames in, PutMedia body bytes out (sans-I/O).

    ``add(frame)`` returns the bytes to send now and the fragment they belong to. A new
    fragment starts on a video key frame once the current one is at least
    ``fragment_duration_ms`` long (or would exceed the service's limits). A key frame
    up to ``cut_tolerance_ms`` early also starts one (default: 100 ms, at most a quarter
    of the duration), so a key-frame interval equal to the fragment duration, stamped by
    a jittery clock, gives fragments of that duration rather than twice it.
    """

    def __init__(
        self,
        tracks: Sequence[TrackInfo],
        *,
        fragment_duration_ms: int = DEFAULT_FRAGMENT_DURATION_MS,
        metadata: FragmentMetadata | None = None,
        cut_tolerance_ms: int | None = None,
    ) -> None:
        if fragment_duration_ms < 0:  # 0: a fragment per key frame
            raise ValueError(f"fragment_duration_ms must not be negative: {fragment_duration_ms}")
        self.writer = MkvWriter(tracks)
        self.metadata = metadata or FragmentMetadata()
        self.fragment_duration_ms = fragment_duration_ms
        if cut_tolerance_ms is None:
            cut_tolerance_ms = min(DEFAULT_CUT_TOLERANCE_MS, fragment_duration_ms // 4)
        if cut_tolerance_ms < 0 or 0 < fragment_duration_ms <= cut_tolerance_ms:
            raise ValueError(
                f"cut_tolerance_ms must be in [0, {fragment_duration_ms}), not {cut_tolerance_ms}"
            )
        self.cut_tolerance_ms = cut_tolerance_ms
        self._video = {t.number for t in tracks if t.track_type == 1}
        self.current: PendingFragment | None = None
        self.header = self.writer.header()

    def add(self, frame: EncodedFrame) -> tuple[PendingFragment | None, list[PendingFragment]]:
        """Add a frame. Returns (the fragment it went into, fragments it completed).

        Frames before the first key frame are dropped (a decoder could not use them).
        """
        completed: list[PendingFragment] = []
        current = self.current
        is_video = frame.track_number in self._video
        starts_fragment = is_video and frame.keyframe
        if current is not None and starts_fragment:
            age = frame.timestamp_ms - current.timecode
            if age >= self.fragment_duration_ms - self.cut_tolerance_ms:
                completed.append(self._close())
                current = None
        if current is not None and frame.timestamp_ms - current.timecode > _MAX_FRAGMENT_SPAN_MS:
            # No key frame for too long: the fragment must end; frames until the next
            # key frame cannot start a new one and are dropped.
            log.warning("no key frame for %d ms: closing the fragment", _MAX_FRAGMENT_SPAN_MS)
            completed.append(self._close())
            current = None
        if current is None:
            if not starts_fragment:
                return None, completed
            current = PendingFragment(timecode=frame.timestamp_ms)
            current.append(
                tags_element(self.metadata.take())
                + encode_id(CLUSTER)
                + UNKNOWN_SIZE_BYTES
                + uint_element(TIMECODE, frame.timestamp_ms)
            )
            self.current = current
        if frame.timestamp_ms < current.timecode:
            raise MkvError(
                f"frame at {frame.timestamp_ms} ms is before its fragment ({current.timecode} ms)"
            )
        block = simple_block(
            FrameData(frame.track_number, frame.timestamp_ms, frame.data, keyframe=frame.keyframe),
            current.timecode,
        )
        current.append(block)
        current.frames += 1
        current.last_timestamp_ms = max(current.last_timestamp_ms, frame.timestamp_ms)
        return current, completed

    def _close(self) -> PendingFragment:
        assert self.current is not None
        fragment = self.current
        fragment.complete = True
        self.current = None
        return fragment

    def flush(self, *, end_of_fragment_tag: bool = True) -> PendingFragment | None:
        """Close the current fragment (at the end of the source).

        Appends the ``AWS_KINESISVIDEO_END_OF_FRAGMENT`` tag so the service knows the
        unknown-size Cluster is over without waiting for another fragment.
        """
        if self.current is None:
            return None
        if end_of_fragment_tag:
            self.current.append(tags_element([Tag("AWS_KINESISVIDEO_END_OF_FRAGMENT", "")]))
        return self._close()


class FragmentBuffer:
    """Fragments sent but not yet acknowledged, oldest first, bounded in bytes."""

    def __init__(self, max_bytes: int = DEFAULT_BUFFER_BYTES) -> None:
        self.max_bytes = max_bytes
        self._fragments: OrderedDict[int, PendingFragment] = OrderedDict()
        self.bytes = 0
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._fragments)

    def __contains__(self, fragment: object) -> bool:
        return (
            isinstance(fragment, PendingFragment)
            and self._fragments.get(fragment.timecode) is fragment
        )

    def add(self, fragment: PendingFragment) -> list[PendingFragment]:
        """Keep ``fragment``; returns the oldest fragments dropped to make room."""
        dropped = []
        self._fragments[fragment.timecode] = fragment
        self.bytes += fragment.size
        while self.bytes > self.max_bytes and len(self._fragments) > 1:
            _, oldest = self._fragments.popitem(last=False)
            self.bytes -= oldest.size
            self.dropped += 1
            dropped.append(oldest)
        return dropped

    def grew(self, fragment: PendingFragment, added: int) -> list[PendingFragment]:
        """Account for bytes appended to a buffered fragment."""
        if fragment.timecode not in self._fragments:
            return []
        self.bytes += added
        dropped = []
        while self.bytes > self.max_bytes and len(self._fragments) > 1:
            timecode, oldest = next(iter(self._fragments.items()))
            if oldest is fragment:
                break
            del self._fragments[timecode]
            self.bytes -= oldest.size
            self.dropped += 1
            dropped.append(oldest)
        return dropped

    def acknowledge(self, timecode: int) -> PendingFragment | None:
        """The service persisted (or received) the fragment at ``timecode``."""
        fragment = self._fragments.pop(timecode, None)
        if fragment is not None:
            self.bytes -= fragment.size
        return fragment

    def pending(self) -> list[PendingFragment]:
        """What a new connection must send again, oldest first."""
        return list(self._fragments.values())
