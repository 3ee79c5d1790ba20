"""The sans-I/O MKV/EBML core: a streaming reader and the producer-side writer.

Reading::

    reader = FragmentReader()
    for chunk in chunks:
        for fragment in reader.feed(chunk):
            print(fragment.fragment_number, len(fragment.frames))
    reader.close()

Writing: see :class:`~kvs_toolkit.mkv.writer.MkvWriter`.
"""

from kvs_toolkit.mkv.blocks import BlockFrames, iter_blocks, parse_block
from kvs_toolkit.mkv.model import (
    TRACK_TYPE_AUDIO,
    TRACK_TYPE_VIDEO,
    Fragment,
    Frame,
    Tag,
    TrackInfo,
)
from kvs_toolkit.mkv.reader import (
    DEFAULT_MAX_ELEMENT_SIZE,
    ClusterEnd,
    ClusterStart,
    ClusterTimecode,
    DocumentStart,
    Event,
    FragmentReader,
    FrameRead,
    MkvReader,
    SegmentEnd,
    SegmentInfo,
    SegmentStart,
    TagsRead,
    TracksRead,
    read_fragments,
)
from kvs_toolkit.mkv.writer import (
    FragmentMetadata,
    FrameData,
    MkvWriter,
    getmedia_document,
    tags_element,
    validate_fragment_tags,
)

__all__ = [
    "DEFAULT_MAX_ELEMENT_SIZE",
    "TRACK_TYPE_AUDIO",
    "TRACK_TYPE_VIDEO",
    "BlockFrames",
    "ClusterEnd",
    "ClusterStart",
    "ClusterTimecode",
    "DocumentStart",
    "Event",
    "Fragment",
    "FragmentMetadata",
    "FragmentReader",
    "Frame",
    "FrameData",
    "FrameRead",
    "MkvReader",
    "MkvWriter",
    "SegmentEnd",
    "SegmentInfo",
    "SegmentStart",
    "Tag",
    "TagsRead",
    "TrackInfo",
    "TracksRead",
    "getmedia_document",
    "iter_blocks",
    "parse_block",
    "read_fragments",
    "tags_element",
    "validate_fragment_tags",
]
