"""What both decoders keep per fragment and per decoder: where a fragment sits in time,
which track to decode, and the counters of the work done."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Final

from kvs_toolkit.mkv.model import Fragment, TrackInfo

__all__ = ["DecodeStats", "FragmentContext", "select_track"]

_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


@dataclass(slots=True)
class DecodeStats:
    """Counters of a decoder's work, for logs and tests."""

    fragments: int = 0
    duplicate_fragments: int = 0
    packets_sent: int = 0
    packets_skipped: int = 0  # never sent: keyframes_only, or not sampled and droppable
    packets_before_keyframe: int = 0  # never sent: no key frame since the decoder (re)started
    decode_errors: int = 0  # packets the decoder rejected
    frames_decoded: int = 0  # pictures out of the decoder
    frames_converted: int = 0  # returned as DecodedFrame
    frames_not_sampled: int = 0  # decoded (others depend on them) but not converted
    corrupt_frames: int = 0  # flagged corrupt by the decoder, skipped
    packets_without_frame: int = 0  # sent, no picture came back (rejected or dropped)
    frames_unmatched: int = 0  # pictures whose pts matches no packet sent (never expected)
    decoder_opens: int = 0
    codec_changes: int = 0
    iterations_abandoned: int = 0  # ended early: the rest of that fragment skipped
    audio_samples: int = 0
    by_codec: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FragmentContext:
    fragment_number: str | None
    producer_timestamp: dt.datetime | None
    server_timestamp: dt.datetime | None
    offset_ns: int  # MKV timestamp + offset = absolute timestamp

    @classmethod
    def of(cls, fragment: Fragment) -> FragmentContext:
        producer = fragment.producer_timestamp
        offset = 0
        if producer is not None and fragment.cluster_timecode is not None:
            producer_ns = (producer - _EPOCH) // dt.timedelta(microseconds=1) * 1000
            offset = producer_ns - fragment.cluster_timecode * fragment.timecode_scale_ns
        return cls(fragment.fragment_number, producer, fragment.server_timestamp, offset)


def select_track(fragment: Fragment, number: int | None, track_type: int) -> TrackInfo | None:
    if number is not None:
        return fragment.track(number)
    return next((t for t in fragment.tracks if t.track_type == track_type), None)
