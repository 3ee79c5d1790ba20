"""Matroska blocks without copies: a SimpleBlock or BlockGroup in, its frames as views.

The one block parser of the package: :class:`~kvs_toolkit.mkv.reader.MkvReader` uses it
for streams, and :func:`iter_blocks` walks a Cluster that is already in memory (a
stored fragment, a GetMedia document) for callers that need no events. Every frame is
a ``memoryview`` into the caller's buffer (Matroska 10.1 block structure, 10.3 lacing).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from kvs_toolkit.errors import MkvError
from kvs_toolkit.mkv import ids
from kvs_toolkit.mkv.ebml import decode_uint, iter_children, read_vint

__all__ = ["BlockFrames", "iter_blocks", "parse_block", "parse_block_group", "split_laces"]


@dataclass(frozen=True, slots=True)
class BlockFrames:
    """One block. ``timecode`` is absolute (the Cluster's plus the block's relative one)
    in TimecodeScale units; ``duration`` is a BlockGroup's BlockDuration in the same
    units. ``frames`` are views into the parsed buffer: they share its memory."""

    track_number: int
    timecode: int
    keyframe: bool
    invisible: bool
    discardable: bool
    frames: tuple[memoryview, ...]
    offset: int
    duration: int | None = None


def parse_block(
    payload: bytes | memoryview,
    cluster_timecode: int | None,
    offset: int,
    *,
    simple: bool = True,
    has_reference: bool = False,
    duration: int | None = None,
) -> BlockFrames:
    """Parse a SimpleBlock's (or a BlockGroup's Block's) payload at absolute ``offset``."""
    if cluster_timecode is None:
        raise MkvError("block before the Cluster's Timecode", offset)
    view = memoryview(payload)
    end = len(view)
    track, track_len = read_vint(view, 0, end, offset)
    header_end = track_len + 3
    if header_end > end:
        raise MkvError("truncated block header", offset)
    relative = int.from_bytes(view[track_len : track_len + 2], "big", signed=True)
    flags = view[track_len + 2]
    lacing = (flags >> 1) & 0x03
    frames = (view[header_end:],) if lacing == 0 else split_laces(view, header_end, lacing, offset)
    return BlockFrames(
        track_number=track,
        timecode=cluster_timecode + relative,
        keyframe=bool(flags & 0x80) if simple else not has_reference,
        invisible=bool(flags & 0x08),
        discardable=bool(flags & 0x01) if simple else False,
        frames=frames,
        offset=offset,
        duration=duration,
    )


def parse_block_group(
    payload: bytes | memoryview, cluster_timecode: int | None, data_offset: int
) -> BlockFrames | None:
    """A BlockGroup's block (None if it holds no Block), keyframe from ReferenceBlock."""
    block: memoryview | None = None
    block_offset = data_offset
    has_reference = False
    duration: int | None = None
    for child_id, child, child_offset in iter_children(payload, data_offset):
        if child_id == ids.BLOCK:
            block, block_offset = child, child_offset
        elif child_id == ids.REFERENCE_BLOCK:
            has_reference = True
        elif child_id == ids.BLOCK_DURATION:
            duration = decode_uint(child, child_offset)
    if block is None:
        return None
    return parse_block(
        block,
        cluster_timecode,
        block_offset,
        simple=False,
        has_reference=has_reference,
        duration=duration,
    )


def iter_blocks(cluster_body: bytes | memoryview, offset: int = 0) -> Iterator[BlockFrames]:
    """The blocks of a Cluster's body held in memory (its children), in order.

    ``offset`` is the absolute offset of the body, for error messages. Frames are views
    into ``cluster_body``: nothing is copied.
    """
    timecode: int | None = None
    for element_id, data, at in iter_children(cluster_body, offset):
        if element_id == ids.TIMECODE:
            timecode = decode_uint(data, at)
        elif element_id == ids.SIMPLE_BLOCK:
            yield parse_block(data, timecode, at)
        elif element_id == ids.BLOCK_GROUP:
            block = parse_block_group(data, timecode, at)
            if block is not None:
                yield block


def split_laces(view: memoryview, pos: int, lacing: int, offset: int) -> tuple[memoryview, ...]:
    """Split a laced block (Matroska 10.3: Xiph=1, fixed=2, EBML=3) into frames."""
    end = len(view)
    if pos >= end:
        raise MkvError("truncated lacing header", offset)
    count = view[pos] + 1
    pos += 1
    sizes: list[int] = []
    if lacing == 1:  # Xiph: each size is a run of 255s plus a final byte
        for _ in range(count - 1):
            size = 0
            while True:
                if pos >= end:
                    raise MkvError("truncated Xiph lace sizes", offset)
                byte = view[pos]
                pos += 1
                size += byte
                if byte != 255:
                    break
            sizes.append(size)
    elif lacing == 3:  # EBML: first size unsigned, then signed differences
        size, length = read_vint(view, pos, end, offset)
        pos += length
        sizes.append(size)
        for _ in range(count - 2):
            raw, length = read_vint(view, pos, end, offset)
            pos += length
            size += raw - ((1 << (7 * length - 1)) - 1)
            if size < 0:
                raise MkvError("negative EBML lace size", offset)
            sizes.append(size)
    else:  # fixed-size lacing
        total = end - pos
        if total % count:
            raise MkvError(f"fixed lacing: {total} bytes do not split into {count} frames", offset)
        sizes = [total // count] * (count - 1)
    laces: list[memoryview] = []
    for size in sizes:
        if pos + size > end:
            raise MkvError("lace sizes overrun the block", offset)
        laces.append(view[pos : pos + size])
        pos += size
    laces.append(view[pos:end])
    return tuple(laces)
