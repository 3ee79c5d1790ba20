"""HLS and DASH playback sessions without I/O: requests, fragment windows, playlists, MPDs.

Everything here is a pure function of decoded JSON, fragment records and the current
time; :mod:`kvs_toolkit.emulator.hls` does the HTTP and storage around it.

* :func:`parse_session_request` validates a GetHLSStreamingSessionURL /
  GetDASHStreamingSessionURL body with the service's rules and defaults into
  :class:`SessionParams`.
* :class:`SessionIndex` numbers the fragments a session shows (HLS media sequence
  numbers, DASH ``$Number$``), remembers the discontinuities between them and keeps a
  bounded window of them for a live session.
* :func:`hls_master_playlist`, :func:`hls_media_playlist` and :func:`dash_manifest`
  render text from entries.
* :func:`media_info` checks the tracks of a session's first fragment (the service's
  codec requirements) and gives the RFC 6381 ``CODECS`` values and the picture size.

Timeline: segments are placed on the *producer* timeline, relative to the session's
origin (the producer timestamp of its first fragment): that is what the media in the
segments carries (``tfdt``, TS timestamps), whichever timestamp selected the fragments.
"""

from __future__ import annotations

import datetime as dt
import math
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from kvs_toolkit.bitstream import parse_avcc, parse_h264_sps, parse_h265_sps, parse_hvcc
from kvs_toolkit.emulator.errors import InvalidArgumentError, NotAuthorizedError, ServiceError
from kvs_toolkit.emulator.store import FragmentRecord, TimestampType
from kvs_toolkit.emulator.validation import (
    optional_int,
    optional_str,
    require_object,
    timestamp_ms,
)
from kvs_toolkit.errors import BitstreamError, MkvError
from kvs_toolkit.mkv import TRACK_TYPE_AUDIO, TRACK_TYPE_VIDEO, FragmentReader, TrackInfo
from kvs_toolkit.mkv.ebml import UNKNOWN_SIZE_BYTES, encode_id
from kvs_toolkit.mkv.ids import SEGMENT
from kvs_toolkit.mkv.writer import ebml_header

__all__ = [
    "DISCONTINUITY_TOLERANCE_MS",
    "MAX_FRAGMENT_MS",
    "ContainerFormat",
    "DiscontinuityMode",
    "InvalidCodecPrivateDataError",
    "InvalidMediaFrameError",
    "MediaInfo",
    "MissingCodecPrivateDataError",
    "NoDataRetentionError",
    "PlaybackMode",
    "PlaylistEntry",
    "Protocol",
    "SessionExpiredError",
    "SessionIndex",
    "SessionParams",
    "TrackMedia",
    "UnsupportedStreamMediaTypeError",
    "dash_manifest",
    "hls_master_playlist",
    "hls_media_playlist",
    "iso8601",
    "media_info",
    "order_for_playback",
    "parse_session_request",
    "parse_timestamp_ms",
    "timestamp_of",
    "tracks_of_payload",
]

PlaybackMode = Literal["LIVE", "LIVE_REPLAY", "ON_DEMAND"]
ContainerFormat = Literal["FRAGMENTED_MP4", "MPEG_TS"]
DiscontinuityMode = Literal["ALWAYS", "NEVER", "ON_DISCONTINUITY"]
Protocol = Literal["HLS", "DASH"]

# Service limits, from the botocore model kinesis-video-archived-media/2017-09-30 and
# its documentation.
MIN_EXPIRES_S: Final = 300
MAX_EXPIRES_S: Final = 43_200
DEFAULT_EXPIRES_S: Final = 300
MAX_FRAGMENT_RESULTS: Final = 5000  # HLSMaxResults / DASHMaxResults
DEFAULT_LIVE_RESULTS: Final = 5
DEFAULT_ON_DEMAND_RESULTS: Final = 1000
MAX_RANGE_MS: Final = 24 * 3600 * 1000  # EndTimestamp within 24 hours of StartTimestamp
# A fragment lasts at most 10 s (PutMedia's limit): how long before a time the fragment
# holding it may start.
MAX_FRAGMENT_MS: Final = 10_000
# ON_DISCONTINUITY: "a gap or overlap of more than 50 milliseconds".
DISCONTINUITY_TOLERANCE_MS: Final = 50

_MODES: Final = ("LIVE", "LIVE_REPLAY", "ON_DEMAND")
_SELECTOR_TYPES: Final = ("PRODUCER_TIMESTAMP", "SERVER_TIMESTAMP")
_CONTAINERS: Final = ("FRAGMENTED_MP4", "MPEG_TS")
_DISCONTINUITY_MODES: Final = ("ALWAYS", "NEVER", "ON_DISCONTINUITY")
_ALWAYS_NEVER: Final = ("ALWAYS", "NEVER")

CODEC_AVC: Final = "V_MPEG4/ISO/AVC"
CODEC_HEVC: Final = "V_MPEGH/ISO/HEVC"
CODEC_AAC: Final = "A_AAC"
CODEC_ACM: Final = "A_MS/ACM"  # G.711 in a WAVEFORMATEX

# The namespace of the kvs:fn / kvs:ts attributes DisplayFragmentNumber and
# DisplayFragmentTimestamp add to DASH S elements. The service's URI is not documented;
# this one is the emulator's.
KVS_DASH_NAMESPACE: Final = "urn:kvs-toolkit:emulator:dash:2024"
_MPD_NAMESPACE: Final = "urn:mpeg:dash:schema:mpd:2011"


# --- the service's errors that only these operations answer ---------------------------------


class NoDataRetentionError(ServiceError):
    code = "NoDataRetentionException"
    status = 400


class UnsupportedStreamMediaTypeError(ServiceError):
    code = "UnsupportedStreamMediaTypeException"
    status = 400


class MissingCodecPrivateDataError(ServiceError):
    code = "MissingCodecPrivateDataException"
    status = 400


class InvalidCodecPrivateDataError(ServiceError):
    code = "InvalidCodecPrivateDataException"
    status = 400


class InvalidMediaFrameError(ServiceError):
    code = "InvalidMediaFrameException"
    status = 400


class SessionExpiredError(NotAuthorizedError):
    """An expired or unknown session token on a playlist, manifest or segment request.

    The model lists NotAuthorizedException for "the token has expired"; its HTTP status
    there is 401, but its documentation and the service answer a player with 403
    ("Streaming session token is expired"), and these GET requests are not boto3
    operations, so 403 it is.
    """

    status = 403


# --- requests -------------------------------------------------------------------------------


def parse_timestamp_ms(value: Any, what: str) -> int:
    """Epoch seconds (a JSON number, as botocore sends timestamps) as integer ms."""
    return timestamp_ms(value, what)


def _enum(body: Mapping[str, Any], key: str, allowed: Sequence[str], default: str) -> str:
    value = optional_str(body, key)
    if value is None:
        return default
    if value not in allowed:
        raise InvalidArgumentError(
            f"{key} {value!r} is not valid; it must be one of {', '.join(allowed)}."
        )
    return value


@dataclass(frozen=True, slots=True)
class SessionParams:
    """A validated GetHLSStreamingSessionURL / GetDASHStreamingSessionURL request."""

    protocol: Protocol
    mode: PlaybackMode
    selector: TimestampType
    start_ms: int | None
    end_ms: int | None
    container: ContainerFormat
    discontinuity: DiscontinuityMode
    display_timestamp: bool
    display_fragment_number: bool
    expires_s: int
    max_results: int

    def in_range(self, record: FragmentRecord) -> bool:
        """Whether the session's time range (if any) holds the fragment's start."""
        ts = timestamp_of(record, self.selector)
        if self.start_ms is not None and ts < self.start_ms:
            return False
        return self.end_ms is None or ts <= self.end_ms


def parse_session_request(
    body: Mapping[str, Any], protocol: Protocol, now_ms: int
) -> SessionParams:
    """Validate a session request as the service does; apply the documented defaults."""
    mode: PlaybackMode = _enum(body, "PlaybackMode", _MODES, "LIVE")  # type: ignore[assignment]
    selector_key = "HLSFragmentSelector" if protocol == "HLS" else "DASHFragmentSelector"
    selector_type: TimestampType = "SERVER_TIMESTAMP"
    start_ms = end_ms = None
    raw_selector = body.get(selector_key)
    if raw_selector is not None:
        selector = require_object(raw_selector, selector_key)
        selector_type = _enum(  # type: ignore[assignment]
            selector, "FragmentSelectorType", _SELECTOR_TYPES, "SERVER_TIMESTAMP"
        )
        raw_range = selector.get("TimestampRange")
        if raw_range is not None:
            if mode == "LIVE":
                raise InvalidArgumentError(
                    "TimestampRange must not be set when PlaybackMode is LIVE."
                )
            time_range = require_object(raw_range, "TimestampRange")
            if time_range.get("StartTimestamp") is None:
                raise InvalidArgumentError("StartTimestamp is required in a TimestampRange.")
            start_ms = parse_timestamp_ms(time_range["StartTimestamp"], "StartTimestamp")
            if time_range.get("EndTimestamp") is not None:
                end_ms = parse_timestamp_ms(time_range["EndTimestamp"], "EndTimestamp")
    if mode != "LIVE" and start_ms is None:
        raise InvalidArgumentError(
            f"{selector_key} with a TimestampRange is required when PlaybackMode is {mode}."
        )
    if mode == "ON_DEMAND" and end_ms is None:
        raise InvalidArgumentError("EndTimestamp is required when PlaybackMode is ON_DEMAND.")
    if start_ms is not None and end_ms is not None:
        if end_ms <= start_ms:
            raise InvalidArgumentError("EndTimestamp must be later than StartTimestamp.")
        if end_ms - start_ms > MAX_RANGE_MS:
            raise InvalidArgumentError("EndTimestamp must be within 24 hours of StartTimestamp.")
    if selector_type == "SERVER_TIMESTAMP" and end_ms is not None and end_ms > now_ms:
        raise InvalidArgumentError(
            "EndTimestamp must be in the past when FragmentSelectorType is SERVER_TIMESTAMP."
        )
    container: ContainerFormat = "FRAGMENTED_MP4"
    if protocol == "HLS":
        container = _enum(body, "ContainerFormat", _CONTAINERS, "FRAGMENTED_MP4")  # type: ignore[assignment]
    default_discontinuity = "ALWAYS" if selector_type == "SERVER_TIMESTAMP" else "NEVER"
    discontinuity: DiscontinuityMode = "NEVER"
    if protocol == "HLS":
        discontinuity = _enum(  # type: ignore[assignment]
            body, "DiscontinuityMode", _DISCONTINUITY_MODES, default_discontinuity
        )
    display_timestamp = _enum(body, "DisplayFragmentTimestamp", _ALWAYS_NEVER, "NEVER") == "ALWAYS"
    display_number = False
    if protocol == "DASH":
        display_number = _enum(body, "DisplayFragmentNumber", _ALWAYS_NEVER, "NEVER") == "ALWAYS"
    expires = optional_int(body, "Expires")
    if expires is None:
        expires = DEFAULT_EXPIRES_S
    if not MIN_EXPIRES_S <= expires <= MAX_EXPIRES_S:
        raise InvalidArgumentError(
            f"Expires {expires} is outside the range {MIN_EXPIRES_S}..{MAX_EXPIRES_S}."
        )
    results_key = (
        "MaxMediaPlaylistFragmentResults" if protocol == "HLS" else "MaxManifestFragmentResults"
    )
    max_results = optional_int(body, results_key)
    if max_results is None:
        max_results = DEFAULT_ON_DEMAND_RESULTS if mode == "ON_DEMAND" else DEFAULT_LIVE_RESULTS
    if not 1 <= max_results <= MAX_FRAGMENT_RESULTS:
        raise InvalidArgumentError(
            f"{results_key} {max_results} is outside the range 1..{MAX_FRAGMENT_RESULTS}."
        )
    return SessionParams(
        protocol=protocol,
        mode=mode,
        selector=selector_type,
        start_ms=start_ms,
        end_ms=end_ms,
        container=container,
        discontinuity=discontinuity,
        display_timestamp=display_timestamp,
        display_fragment_number=display_number,
        expires_s=expires,
        max_results=max_results,
    )


# --- fragment selection ---------------------------------------------------------------------


def timestamp_of(record: FragmentRecord | PlaylistEntry, selector: TimestampType) -> int:
    if isinstance(record, PlaylistEntry):
        return record.producer_ms if selector == "PRODUCER_TIMESTAMP" else record.server_ms
    if selector == "PRODUCER_TIMESTAMP":
        return record.producer_timestamp_ms
    return record.server_timestamp_ms


def order_for_playback(
    records: Iterable[FragmentRecord], selector: TimestampType
) -> list[FragmentRecord]:
    """Fragments in the selector's timestamp order, as a session plays them.

    With PRODUCER_TIMESTAMP, fragments with the same start timestamp are one fragment
    re-sent: only the one with the largest fragment number is kept (the service's rule).
    """
    ordered = sorted(records, key=lambda r: (timestamp_of(r, selector), r.fragment_number))
    if selector != "PRODUCER_TIMESTAMP":
        return ordered
    kept: list[FragmentRecord] = []
    for record in ordered:
        if kept and kept[-1].producer_timestamp_ms == record.producer_timestamp_ms:
            kept[-1] = record  # sorted by number within a timestamp: the newest wins
        else:
            kept.append(record)
    return kept


@dataclass(frozen=True, slots=True)
class PlaylistEntry:
    """One fragment as a session shows it: its sequence number and timing."""

    sequence: int
    fragment_number: str
    producer_ms: int
    server_ms: int
    duration_ms: int
    size: int
    discontinuity: bool  # a discontinuity marker goes before this entry
    # Which of the session's codec configurations (distinct Info + Tracks, numbered from
    # 0 in order of appearance) the fragment has: a change needs a new fMP4 init segment.
    config: int = 0


class SessionIndex:
    """The fragments a session has shown, numbered 1, 2, 3... in playback order.

    The numbers are HLS media sequence numbers and DASH ``$Number$`` values, stable for
    the life of the session. A fragment is added only if it comes after the last one
    (by the selector's timestamp, and for LIVE by fragment number too): the service
    never adds a fragment older than the newest one shown. ``keep`` bounds how many
    entries are remembered (a live session trims the oldest; sequence numbers go on).
    """

    def __init__(
        self,
        selector: TimestampType,
        discontinuity: DiscontinuityMode,
        *,
        keep: int | None = None,
    ) -> None:
        self.selector = selector
        self.discontinuity = discontinuity
        self.keep = keep
        self._entries: deque[PlaylistEntry] = deque()
        self._numbers: dict[str, int] = {}
        self._next_sequence = 1
        self._trimmed_discontinuities = 0
        self._last: PlaylistEntry | None = None

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def last(self) -> PlaylistEntry | None:
        return self._last

    @property
    def entries(self) -> tuple[PlaylistEntry, ...]:
        return tuple(self._entries)

    def add(self, record: FragmentRecord, config: int = 0) -> PlaylistEntry | None:
        """Append a fragment; None (and nothing changes) if it is not newer than the last.

        ``config`` numbers the fragment's codec configuration; a change from the last
        entry's is always a discontinuity (RFC 8216 6.2.1: a change of encoding
        parameters needs EXT-X-DISCONTINUITY), whatever the DiscontinuityMode.
        """
        last = self._last
        if last is not None:
            if record.fragment_number in self._numbers:
                return None
            if timestamp_of(record, self.selector) < timestamp_of(last, self.selector):
                return None
            if (
                self.selector == "PRODUCER_TIMESTAMP"
                and record.producer_timestamp_ms == last.producer_ms
            ):
                return None  # a re-sent fragment: the first one shown stays
        entry = PlaylistEntry(
            sequence=self._next_sequence,
            fragment_number=record.fragment_number,
            producer_ms=record.producer_timestamp_ms,
            server_ms=record.server_timestamp_ms,
            duration_ms=record.duration_ms,
            size=record.size,
            discontinuity=last is not None
            and (config != last.config or self._is_discontinuity(last, record)),
            config=config,
        )
        self._next_sequence += 1
        self._entries.append(entry)
        self._numbers[entry.fragment_number] = entry.sequence
        self._last = entry
        if self.keep is not None:
            while len(self._entries) > self.keep:
                old = self._entries.popleft()
                del self._numbers[old.fragment_number]
                self._trimmed_discontinuities += old.discontinuity
        return entry

    def _is_discontinuity(self, last: PlaylistEntry, record: FragmentRecord) -> bool:
        if self.discontinuity == "ALWAYS":
            return True
        if self.discontinuity == "NEVER":
            return False
        expected = last.producer_ms + last.duration_ms
        return abs(record.producer_timestamp_ms - expected) > DISCONTINUITY_TOLERANCE_MS

    def window(self, count: int, *, newest: bool) -> tuple[PlaylistEntry, ...]:
        """The ``count`` newest (live) or oldest (on demand) entries, in order."""
        if count >= len(self._entries):
            return tuple(self._entries)
        if newest:
            return tuple(self._entries)[len(self._entries) - count :]
        return tuple(self._entries)[:count]

    def by_sequence(self, sequence: int) -> PlaylistEntry | None:
        if not self._entries:
            return None
        position = sequence - self._entries[0].sequence
        if 0 <= position < len(self._entries):
            return self._entries[position]
        return None

    def sequence_of(self, fragment_number: str) -> int | None:
        return self._numbers.get(fragment_number)

    def discontinuity_sequence(self, first: PlaylistEntry | None) -> int:
        """EXT-X-DISCONTINUITY-SEQUENCE for a playlist starting at ``first`` (RFC 8216
        4.3.3.3): the discontinuity number of ``first``, i.e. every marker up to and
        including its own (a playlist does not print the marker of its first entry)."""
        count = self._trimmed_discontinuities
        for entry in self._entries:
            if first is None or entry.sequence > first.sequence:
                break
            count += entry.discontinuity
        return count


# --- tracks ---------------------------------------------------------------------------------


_SEGMENT_START: Final = encode_id(SEGMENT) + UNKNOWN_SIZE_BYTES


def tracks_of_payload(payload: bytes) -> tuple[TrackInfo, ...]:
    """The TrackEntries of a stored fragment payload (Info + Tracks + Cluster)."""
    reader = FragmentReader()
    try:
        fragments = reader.feed(ebml_header() + _SEGMENT_START + payload) + reader.close()
    except MkvError as exc:
        raise InvalidMediaFrameError(f"the stored fragment cannot be parsed: {exc}") from exc
    if not fragments:
        raise InvalidMediaFrameError("the stored fragment has no cluster")
    return fragments[0].tracks


@dataclass(frozen=True, slots=True)
class TrackMedia:
    """One track as playlists and manifests describe it."""

    number: int
    kind: Literal["video", "audio"]
    codec: str  # RFC 6381 (``avc1.64001E``, ``mp4a.40.2``); ``alaw``/``ulaw`` for G.711
    sampling_rate: int | None = None

    @property
    def in_mp4(self) -> bool:
        """Whether an MP4 output can carry it (FFmpeg's mp4 muxer has no G.711)."""
        return self.codec not in ("alaw", "ulaw")


@dataclass(frozen=True, slots=True)
class MediaInfo:
    """What a master playlist or MPD says about a session's media."""

    tracks: tuple[TrackMedia, ...]  # video first
    width: int | None
    height: int | None
    bandwidth: int  # bits per second

    @property
    def codecs(self) -> tuple[str, ...]:
        return tuple(t.codec for t in self.tracks)

    @property
    def codecs_attribute(self) -> str:
        return ",".join(self.codecs)

    @property
    def video(self) -> TrackMedia | None:
        return next((t for t in self.tracks if t.kind == "video"), None)

    @property
    def audio(self) -> TrackMedia | None:
        return next((t for t in self.tracks if t.kind == "audio"), None)

    @property
    def mp4_tracks(self) -> tuple[TrackMedia, ...]:
        return tuple(t for t in self.tracks if t.in_mp4)

    def position(self, number: int) -> int | None:
        """Where track ``number`` is in the Tracks element (its FFmpeg stream index)."""
        return next((i for i, t in enumerate(self.tracks) if t.number == number), None)


def _audio_codec(track: TrackInfo, allowed: Sequence[str]) -> str:
    if track.codec_id not in allowed:
        raise UnsupportedStreamMediaTypeError(
            f"Track {track.number} has codec ID {track.codec_id}; "
            f"the audio track must be {' or '.join(allowed)}."
        )
    if not track.codec_private:
        raise MissingCodecPrivateDataError(f"Track {track.number} has no codec private data.")
    if track.codec_id == CODEC_AAC:
        # ISO/IEC 14496-3 1.6.2.1: audioObjectType is 5 bits, 31 escapes to 32 + 6 bits.
        data = track.codec_private
        object_type = data[0] >> 3
        if object_type == 31:
            if len(data) < 2:
                raise InvalidCodecPrivateDataError(
                    f"Track {track.number}: the AudioSpecificConfig is truncated."
                )
            object_type = 32 + (((data[0] & 0x07) << 3) | (data[1] >> 5))
        if object_type == 0:
            raise InvalidCodecPrivateDataError(
                f"Track {track.number}: the AudioSpecificConfig has audioObjectType 0."
            )
        return f"mp4a.40.{object_type}"
    # A_MS/ACM: a WAVEFORMATEX; wFormatTag 6 is A-law, 7 mu-law.
    data = track.codec_private
    tag = int.from_bytes(data[:2], "little") if len(data) >= 2 else 0
    if tag == 6:
        return "alaw"
    if tag == 7:
        return "ulaw"
    raise UnsupportedStreamMediaTypeError(
        f"Track {track.number}: WAVEFORMATEX format tag {tag} is not G.711."
    )


def _video_codec(track: TrackInfo) -> tuple[str, int, int]:
    if not track.codec_private:
        raise MissingCodecPrivateDataError(f"Track {track.number} has no codec private data.")
    try:
        if track.codec_id == CODEC_AVC:
            avc = parse_avcc(track.codec_private)
            if not avc.sps:
                raise InvalidCodecPrivateDataError(f"Track {track.number}: the avcC has no SPS.")
            sps = parse_h264_sps(avc.sps[0])
            return sps.codec_string, sps.width, sps.height
        hevc = parse_hvcc(track.codec_private)
        if not hevc.sps:
            raise InvalidCodecPrivateDataError(f"Track {track.number}: the hvcC has no SPS.")
        sps265 = parse_h265_sps(hevc.sps[0])
        return sps265.codec_string, sps265.width, sps265.height
    except BitstreamError as exc:
        raise InvalidCodecPrivateDataError(
            f"Track {track.number}: the codec private data is not valid: {exc}"
        ) from exc


def media_info(
    tracks: Sequence[TrackInfo],
    *,
    audio_codecs: Sequence[str] = (CODEC_AAC,),
    bandwidth: int = 0,
) -> MediaInfo:
    """Check a fragment's tracks against the service's requirements; describe them.

    Track 1 (the first) must be H.264 or H.265 video with an avcC/hvcC record, or AAC
    for an audio-only stream; an optional second track must be audio of
    ``audio_codecs`` (AAC for HLS, AAC or G.711 for DASH and GetClip).
    """
    if not tracks or len(tracks) > 2:
        raise UnsupportedStreamMediaTypeError(
            f"The stream has {len(tracks)} tracks; playback needs one video track and at "
            "most one audio track."
        )
    first, *rest = tracks
    described: list[TrackMedia] = []
    width = height = None
    if first.track_type == TRACK_TYPE_VIDEO and first.codec_id in (CODEC_AVC, CODEC_HEVC):
        codec, width, height = _video_codec(first)
        described.append(TrackMedia(first.number, "video", codec))
    elif first.track_type == TRACK_TYPE_AUDIO and first.codec_id == CODEC_AAC and not rest:
        described.append(_audio_track(first, (CODEC_AAC,)))
    else:
        raise UnsupportedStreamMediaTypeError(
            f"The codec ID of track {first.number} is {first.codec_id}; it must be "
            f"{CODEC_AVC} or {CODEC_HEVC} (or {CODEC_AAC} for audio only)."
        )
    for track in rest:
        if track.track_type != TRACK_TYPE_AUDIO:
            raise UnsupportedStreamMediaTypeError(
                f"Track {track.number} must be an audio track ({' or '.join(audio_codecs)})."
            )
        described.append(_audio_track(track, audio_codecs))
    return MediaInfo(tuple(described), width=width, height=height, bandwidth=max(1, bandwidth))


def _audio_track(track: TrackInfo, allowed: Sequence[str]) -> TrackMedia:
    rate = round(track.sampling_frequency) if track.sampling_frequency else None
    return TrackMedia(track.number, "audio", _audio_codec(track, allowed), rate)


def peak_bandwidth(entries: Iterable[FragmentRecord | PlaylistEntry]) -> int:
    """The highest bit rate of the fragments (bits per second), for BANDWIDTH."""
    peak = 0
    for entry in entries:
        duration = entry.duration_ms
        size = entry.size
        if duration > 0:
            peak = max(peak, math.ceil(size * 8 * 1000 / duration))
    return peak


# --- HLS ------------------------------------------------------------------------------------


def iso8601(ms: int) -> str:
    """Epoch ms as ``2024-05-01T12:00:00.123Z`` (EXT-X-PROGRAM-DATE-TIME, MPD times)."""
    moment = dt.datetime.fromtimestamp(ms / 1000, tz=dt.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def hls_master_playlist(info: MediaInfo, media_playlist_uri: Callable[[int], str]) -> str:
    """The master playlist: one variant over the session's media playlists.

    ``media_playlist_uri(track_number)`` is the URI of a track's media playlist. With a
    video and an audio track, the audio becomes an ``EXT-X-MEDIA`` rendition with its
    own playlist (fMP4, as the service does) unless both URIs are the same (MPEG-TS,
    whose segments carry every track).
    """
    attributes = [f"BANDWIDTH={info.bandwidth}"]
    if info.width and info.height:
        attributes.append(f"RESOLUTION={info.width}x{info.height}")
    attributes.append(f'CODECS="{info.codecs_attribute}"')
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-INDEPENDENT-SEGMENTS"]
    video, audio = info.video, info.audio
    variant_uri = media_playlist_uri(video.number if video else info.tracks[0].number)
    if video is not None and audio is not None:
        audio_uri = media_playlist_uri(audio.number)
        if audio_uri != variant_uri:
            lines.append(
                '#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="audio",NAME="audio",DEFAULT=YES,'
                f'AUTOSELECT=YES,URI="{audio_uri}"'
            )
            attributes.append('AUDIO="audio"')
    lines += [f"#EXT-X-STREAM-INF:{','.join(attributes)}", variant_uri, ""]
    return "\n".join(lines)


def target_duration_s(entries: Iterable[PlaylistEntry]) -> int:
    """EXT-X-TARGETDURATION: every EXTINF rounded to the nearest integer must fit."""
    longest = max((e.duration_ms for e in entries), default=1000)
    return max(1, math.floor(longest / 1000 + 0.5))


def hls_media_playlist(
    entries: Sequence[PlaylistEntry],
    *,
    segment_uri: Callable[[PlaylistEntry], str],
    map_uri: str | Callable[[PlaylistEntry], str] | None,
    discontinuity_sequence: int = 0,
    target_duration: int | None = None,
    program_date_time: TimestampType | None = None,
    ended: bool = False,
    playlist_type: Literal["VOD", "EVENT"] | None = None,
) -> str:
    """A media playlist (RFC 8216) over ``entries``.

    ``map_uri`` is the fMP4 initialization segment (``EXT-X-MAP``; None for MPEG-TS),
    or a function of an entry giving the init segment of its codec configuration: a new
    ``EXT-X-MAP`` goes before the first entry whose URI differs from the one before
    (RFC 8216 4.3.2.5: a map applies to every segment after it until the next).
    ``program_date_time`` adds ``EXT-X-PROGRAM-DATE-TIME`` with that timestamp of each
    fragment (DisplayFragmentTimestamp ALWAYS). ``ended`` adds ``EXT-X-ENDLIST``.
    """
    target = max(target_duration or 0, target_duration_s(entries))
    lines = [
        "#EXTM3U",
        f"#EXT-X-VERSION:{7 if map_uri else 3}",
        f"#EXT-X-TARGETDURATION:{target}",
        f"#EXT-X-MEDIA-SEQUENCE:{entries[0].sequence if entries else 0}",
    ]
    if discontinuity_sequence:
        lines.append(f"#EXT-X-DISCONTINUITY-SEQUENCE:{discontinuity_sequence}")
    if playlist_type is not None:
        lines.append(f"#EXT-X-PLAYLIST-TYPE:{playlist_type}")
    lines.append("#EXT-X-INDEPENDENT-SEGMENTS")
    map_of: Callable[[PlaylistEntry], str] | None = (
        (lambda _entry: map_uri) if isinstance(map_uri, str) else map_uri
    )
    current_map: str | None = None
    if isinstance(map_uri, str) and not entries:
        lines.append(f'#EXT-X-MAP:URI="{map_uri}"')
    for position, entry in enumerate(entries):
        if entry.discontinuity and position > 0:
            lines.append("#EXT-X-DISCONTINUITY")
        if map_of is not None and (uri := map_of(entry)) != current_map:
            lines.append(f'#EXT-X-MAP:URI="{uri}"')
            current_map = uri
        if program_date_time is not None:
            lines.append(
                f"#EXT-X-PROGRAM-DATE-TIME:{iso8601(timestamp_of(entry, program_date_time))}"
            )
        lines.append(f"#EXTINF:{entry.duration_ms / 1000:.3f},")
        lines.append(segment_uri(entry))
    if ended:
        lines.append("#EXT-X-ENDLIST")
    lines.append("")
    return "\n".join(lines)


# --- DASH -----------------------------------------------------------------------------------


def _duration(ms: int) -> str:
    return f"PT{max(0, ms) / 1000:.3f}S"


def dash_manifest(
    entries: Sequence[PlaylistEntry],
    *,
    info: MediaInfo,
    origin_ms: int,
    init_uri: Callable[[int], str],
    media_uri_template: Callable[[int], str],
    dynamic: bool,
    availability_start_ms: int = 0,
    publish_ms: int = 0,
    update_period_s: float = 1.0,
    fragment_timestamp: TimestampType | None = None,
    fragment_number: bool = False,
) -> str:
    """An MPD over ``entries``: one Period, an AdaptationSet per track an MP4 can carry
    (video, then audio), each with a SegmentTemplate whose ``$Number$`` is the entries'
    sequence numbers and a SegmentTimeline in ms on the producer timeline since
    ``origin_ms`` (as the segments' ``tfdt``).

    ``init_uri(track_number)`` and ``media_uri_template(track_number)`` give the
    SegmentTemplate's URIs. ``fragment_timestamp`` / ``fragment_number`` add the
    ``kvs:ts`` (epoch ms) / ``kvs:fn`` attributes of DisplayFragmentTimestamp /
    DisplayFragmentNumber to every S element.
    """
    ET.register_namespace("", _MPD_NAMESPACE)
    ET.register_namespace("kvs", KVS_DASH_NAMESPACE)

    def q(name: str) -> str:
        return f"{{{_MPD_NAMESPACE}}}{name}"

    starts = [max(0, e.producer_ms - origin_ms) for e in entries]
    longest = max((e.duration_ms for e in entries), default=1000)
    span = (starts[-1] + entries[-1].duration_ms - starts[0]) if entries else 0
    mpd = ET.Element(
        q("MPD"),
        {
            "profiles": "urn:mpeg:dash:profile:isoff-live:2011",
            "type": "dynamic" if dynamic else "static",
            "minBufferTime": _duration(max(2000, longest)),
        },
    )
    if dynamic:
        mpd.set("availabilityStartTime", iso8601(availability_start_ms))
        mpd.set("publishTime", iso8601(publish_ms))
        mpd.set("minimumUpdatePeriod", _duration(round(update_period_s * 1000)))
        mpd.set("timeShiftBufferDepth", _duration(max(span, longest)))
        mpd.set("suggestedPresentationDelay", _duration(3 * longest))
    else:
        mpd.set("mediaPresentationDuration", _duration(span))
    period = ET.SubElement(mpd, q("Period"), {"id": "0", "start": "PT0S"})
    for set_id, track in enumerate(info.mp4_tracks):
        adaptation = ET.SubElement(
            period,
            q("AdaptationSet"),
            {
                "id": str(set_id),
                "contentType": track.kind,
                "mimeType": f"{track.kind}/mp4",
                "segmentAlignment": "true",
                "startWithSAP": "1",
            },
        )
        representation = ET.SubElement(
            adaptation,
            q("Representation"),
            {"id": str(track.number), "codecs": track.codec, "bandwidth": str(info.bandwidth)},
        )
        if track.kind == "video" and info.width and info.height:
            representation.set("width", str(info.width))
            representation.set("height", str(info.height))
        if track.kind == "audio" and track.sampling_rate:
            representation.set("audioSamplingRate", str(track.sampling_rate))
        template = ET.SubElement(
            representation,
            q("SegmentTemplate"),
            {
                "timescale": "1000",
                "presentationTimeOffset": "0" if dynamic or not starts else str(starts[0]),
                "initialization": init_uri(track.number),
                "media": media_uri_template(track.number),
                "startNumber": str(entries[0].sequence if entries else 1),
            },
        )
        timeline = ET.SubElement(template, q("SegmentTimeline"))
        for start, entry in zip(starts, entries, strict=True):
            segment = ET.SubElement(
                timeline, q("S"), {"t": str(start), "d": str(entry.duration_ms)}
            )
            if fragment_number:
                segment.set(f"{{{KVS_DASH_NAMESPACE}}}fn", entry.fragment_number)
            if fragment_timestamp is not None:
                segment.set(
                    f"{{{KVS_DASH_NAMESPACE}}}ts", str(timestamp_of(entry, fragment_timestamp))
                )
    body = ET.tostring(mpd, encoding="unicode")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + body + "\n"
