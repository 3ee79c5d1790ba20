"""Stored fragment payloads and the GetMedia documents rendered from them (sans-I/O).

A stored payload is ``Info + Tracks + Cluster`` (the Cluster sized, with the producer
timestamp as an absolute 1 ms timecode). GetMedia and GetMediaForFragmentList send each
fragment as its own EBML document, as the service does (docs/kvs-wire.md "GetMedia")::

    EBML header, Segment (unknown size):
        Info, Tracks,
        Tags {producer's tags, FRAGMENT_NUMBER, SERVER_TIMESTAMP, PRODUCER_TIMESTAMP},
        Cluster,
        Tags {MILLIS_BEHIND_NOW, CONTINUATION_TOKEN}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from kvs_toolkit.errors import MkvError
from kvs_toolkit.mkv import Tag, TrackInfo, ids
from kvs_toolkit.mkv.ebml import UNKNOWN_SIZE_BYTES, encode_id, read_element_id, read_size
from kvs_toolkit.mkv.model import (
    TAG_CONTINUATION_TOKEN,
    TAG_ERROR_CODE,
    TAG_ERROR_CODE_ALT,
    TAG_ERROR_ID,
    TAG_EXCEPTION_MESSAGE,
    TAG_FRAGMENT_NUMBER,
    TAG_MILLIS_BEHIND_NOW,
    TAG_PRODUCER_TIMESTAMP,
    TAG_SERVER_TIMESTAMP,
)
from kvs_toolkit.mkv.writer import MkvWriter, ebml_header, tags_element

_SEGMENT_START: Final = encode_id(ids.SEGMENT) + UNKNOWN_SIZE_BYTES
_EBML_HEADER: Final = ebml_header()


def stored_payload(tracks: Sequence[TrackInfo], cluster_bytes: bytes) -> bytes:
    """What the archive keeps for one fragment: Info, Tracks and the sized Cluster."""
    writer = MkvWriter(tracks, title="", muxing_app="kvs-toolkit emulator", segment_uid=b"\0" * 16)
    return writer.info() + writer.tracks_element() + cluster_bytes


def split_payload(payload: bytes) -> tuple[bytes, bytes]:
    """``(Info + Tracks, Cluster)`` of a stored payload."""
    pos = 0
    end = len(payload)
    for _ in range(2):  # skip Info and Tracks
        _element, id_len = read_element_id(payload, pos, end)
        size, size_len = read_size(payload, pos + id_len, end)
        if id_len == 0 or size_len == 0 or size < 0:
            raise MkvError("stored fragment payload is corrupt", pos)
        pos += id_len + size_len + size
    return payload[:pos], payload[pos:]


def epoch_seconds(ms: int) -> str:
    """Milliseconds as the service's decimal seconds string ("1511852109.126")."""
    return f"{ms // 1000}.{ms % 1000:03d}"


def getmedia_fragment(
    payload: bytes,
    *,
    fragment_number: str,
    server_timestamp_ms: int,
    producer_timestamp_ms: int,
    producer_tags: Sequence[tuple[str, str]] = (),
    millis_behind_now: int | None = None,
    continuation_token: str | None = None,
) -> bytes:
    """One stored fragment as a GetMedia/GetMediaForFragmentList EBML document."""
    head, cluster = split_payload(payload)
    before = [Tag(name, value) for name, value in producer_tags]
    before += [
        Tag(TAG_FRAGMENT_NUMBER, fragment_number),
        Tag(TAG_SERVER_TIMESTAMP, epoch_seconds(server_timestamp_ms)),
        Tag(TAG_PRODUCER_TIMESTAMP, epoch_seconds(producer_timestamp_ms)),
    ]
    after = []
    if millis_behind_now is not None:
        after.append(Tag(TAG_MILLIS_BEHIND_NOW, str(millis_behind_now)))
    if continuation_token is not None:
        after.append(Tag(TAG_CONTINUATION_TOKEN, continuation_token))
    return b"".join(
        (_EBML_HEADER, _SEGMENT_START, head, tags_element(before), cluster, tags_element(after))
    )


def getmedia_error(error_id: int, error_code: str) -> bytes:
    """A document with only GetMedia's error tags (ERROR_CODE, ERROR_ID)."""
    tags = [Tag(TAG_ERROR_CODE, error_code), Tag(TAG_ERROR_ID, str(error_id))]
    return b"".join((_EBML_HEADER, _SEGMENT_START, tags_element(tags)))


def fragment_list_error(fragment_number: str, error_code: int, message: str) -> bytes:
    """GetMediaForFragmentList's error document, with the tag names its reference gives."""
    tags = [
        Tag(TAG_FRAGMENT_NUMBER, fragment_number),
        Tag(TAG_ERROR_CODE_ALT, str(error_code)),
        Tag(TAG_EXCEPTION_MESSAGE, message),
    ]
    return b"".join((_EBML_HEADER, _SEGMENT_START, tags_element(tags)))
