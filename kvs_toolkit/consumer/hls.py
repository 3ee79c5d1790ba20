"""Read a stream through HLS: GetHLSStreamingSessionURL, playlists, fMP4 segments.

:class:`HlsReader` is a :class:`~kvs_toolkit.consumer.readers.FragmentSource` like the
GetMedia, archive and file readers: it yields :class:`~kvs_toolkit.mkv.Fragment`
objects, one per HLS media segment (a KVS fragment: the service makes one segment per
fragment), so the same :class:`~kvs_toolkit.consumer.FragmentDecoder` - sampling,
pixel formats, duplicate filter - turns them into frames::

    with HlsReader("front-door", playback_mode="LIVE", endpoint_url=url) as reader:
        for frame in FragmentDecoder(fps=2).decode_all(reader):
            print(frame.fragment_number, frame.timestamp)

How a segment becomes a fragment:

* the init segment (``EXT-X-MAP``) and the media segment are demuxed together with
  PyAV from memory; the video track's ``avcC``/``hvcC`` becomes the CodecPrivate, each
  sample a frame (payload, key-frame flag, timestamp), nothing is decoded here;
* the fragment number is the segment URL's ``FragmentNumber`` query parameter (the
  service's ``getMP4MediaFragment.mp4?FragmentNumber=...`` layout);
* ``EXT-X-PROGRAM-DATE-TIME`` (the session must be created with
  ``DisplayFragmentTimestamp=ALWAYS``, which this reader does) is the fragment's
  producer (or server, per the selector) timestamp, and each frame's own timestamp is
  that plus its offset from the segment's ``tfdt``: the same absolute timestamps
  GetMedia gives. Without it, frame timestamps are the segments' media times. A
  frame's ``mkv_timestamp_ns`` is its media time in the session; HLS carries no
  server timestamp, so ``server_timestamp`` is None (with a PRODUCER_TIMESTAMP
  selector; with SERVER_TIMESTAMP it is the one the playlist gives, and the producer
  timestamp is None).

The reader fetches the playlists and segments itself over HTTP (urllib3), one segment
at a time, each at most ``max_segment_bytes`` (the service's fragments are at most
50 MB). LIVE sessions re-poll the media playlist (every half target duration when it
did not change, RFC 8216 6.3.4) and fetch only segments not seen before. A session
this reader created is renewed when its token expires (HTTP 403 after ``Expires``
seconds: 300 by default) and the reading goes on, skipping segments already seen. The
reading ends at ``EXT-X-ENDLIST``, when the service answers 404 (a LIVE session whose
stream got no fragment for 30 s), after ``idle_exit_s`` without a new segment, or on
:meth:`HlsReader.stop`. Network errors and 5xx answers are retried with back-off.

Only fMP4 sessions (ContainerFormat FRAGMENTED_MP4, the default) are read: MPEG-TS
segments carry Annex-B without a CodecPrivate and raise
:class:`~kvs_toolkit.errors.DecodeError`.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal

import av
import av.error
import urllib3
import urllib3.exceptions

from kvs_toolkit.aws import AwsAccess
from kvs_toolkit.consumer.clients import (
    Retryable,
    Stopped,
    StreamClients,
    attempt_text,
    give_up_text,
    translate_error,
)
from kvs_toolkit.consumer.readers import (
    DEFAULT_CONNECT_TIMEOUT_S,
    DEFAULT_ENDPOINT_REFRESH_S,
    Backoff,
    ReaderStats,
)
from kvs_toolkit.consumer.selectors import TimestampType
from kvs_toolkit.errors import DecodeError, GetMediaError, NoFragmentsError
from kvs_toolkit.mkv import Fragment, Tag, TrackInfo
from kvs_toolkit.mkv.model import (
    TAG_FRAGMENT_NUMBER,
    TAG_PRODUCER_TIMESTAMP,
    TAG_SERVER_TIMESTAMP,
    Frame,
)
from kvs_toolkit.timestamps import EPOCH

if TYPE_CHECKING:
    import boto3.session

__all__ = [
    "DEFAULT_MAX_SEGMENT_BYTES",
    "HlsReader",
    "MediaPlaylist",
    "PlaybackMode",
    "PlaylistSegment",
    "is_master_playlist",
    "parse_master_playlist",
    "parse_media_playlist",
    "segment_fragment",
]

log = logging.getLogger(__name__)

PlaybackMode = Literal["LIVE", "LIVE_REPLAY", "ON_DEMAND"]

# docs/kvs-wire.md "Limits": a fragment is at most 50 MB; an fMP4 segment adds a few boxes.
DEFAULT_MAX_SEGMENT_BYTES: Final = 64 * 1024 * 1024
# Playlists are text; the service's hold at most 5000 segments (HLSMaxResults).
MAX_PLAYLIST_BYTES: Final = 4 * 1024 * 1024
# Segments remembered to fetch only new ones from a re-polled LIVE playlist (bounded).
_SEEN_WINDOW: Final = 8192
_CHUNK: Final = 1 << 16
# Matroska CodecIDs of what an fMP4 segment may carry, by FFmpeg codec name.
_CODEC_IDS: Final = {"h264": "V_MPEG4/ISO/AVC", "hevc": "V_MPEGH/ISO/HEVC"}
_NS: Final = 1_000_000_000


# --- playlists (sans-I/O) ---------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class PlaylistSegment:
    """One media segment of a media playlist (RFC 8216 4.3.2), its URIs made absolute."""

    uri: str
    duration_s: float
    sequence: int
    program_date_time: dt.datetime | None = None
    discontinuity: bool = False
    map_uri: str | None = None

    @property
    def fragment_number(self) -> str | None:
        """The ``FragmentNumber`` query parameter of the URI (the service's layout)."""
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.uri).query)
        values = query.get("FragmentNumber")
        return values[0] if values else None


@dataclass(frozen=True, slots=True)
class MediaPlaylist:
    segments: tuple[PlaylistSegment, ...]
    target_duration_s: float
    media_sequence: int = 0
    ended: bool = False
    playlist_type: str | None = None


def _attributes(text: str) -> dict[str, str]:
    """An attribute list (RFC 8216 4.2): ``A=1,B="x,y"`` -> {"A": "1", "B": "x,y"}."""
    out: dict[str, str] = {}
    rest = text
    while rest:
        name, sep, rest = rest.partition("=")
        if not sep:
            break
        if rest.startswith('"'):
            value, _, rest = rest[1:].partition('"')
            rest = rest.partition(",")[2]
        else:
            value, _, rest = rest.partition(",")
        out[name.strip()] = value
    return out


def _program_date_time(value: str, line_number: int) -> dt.datetime:
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise GetMediaError(
            f"HLS playlist line {line_number}: EXT-X-PROGRAM-DATE-TIME {value!r} is not an "
            "ISO 8601 date-time"
        ) from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)


def _lines(text: str) -> list[str]:
    lines = text.splitlines()
    if not lines or lines[0].strip() != "#EXTM3U":
        raise GetMediaError("not an HLS playlist: the first line is not #EXTM3U")
    return lines


def is_master_playlist(text: str) -> bool:
    return "#EXT-X-STREAM-INF" in text


def parse_master_playlist(text: str, base_url: str) -> list[str]:
    """The media playlist URIs of a master playlist's variants, in order, absolute."""
    lines = _lines(text)
    uris: list[str] = []
    expect_uri = False
    for raw in lines[1:]:
        line = raw.strip()
        if line.startswith("#EXT-X-STREAM-INF"):
            expect_uri = True
        elif line and not line.startswith("#") and expect_uri:
            uris.append(urllib.parse.urljoin(base_url, line))
            expect_uri = False
    if not uris:
        raise GetMediaError("HLS master playlist has no variant (EXT-X-STREAM-INF with a URI)")
    return uris


def parse_media_playlist(text: str, base_url: str) -> MediaPlaylist:
    """A media playlist's segments (URIs resolved against ``base_url``) and attributes.

    Raises :class:`~kvs_toolkit.errors.GetMediaError` naming the line for a malformed
    playlist.
    """
    lines = _lines(text)
    segments: list[PlaylistSegment] = []
    target = 0.0
    media_sequence = 0
    ended = False
    playlist_type: str | None = None
    map_uri: str | None = None
    duration: float | None = None
    pdt: dt.datetime | None = None
    discontinuity = False
    for number, raw in enumerate(lines[1:], start=2):
        line = raw.strip()
        if not line:
            continue
        tag, _, value = line.partition(":")
        try:
            if tag == "#EXT-X-TARGETDURATION":
                target = float(value)
            elif tag == "#EXT-X-MEDIA-SEQUENCE":
                media_sequence = int(value)
            elif tag == "#EXT-X-PLAYLIST-TYPE":
                playlist_type = value.strip()
            elif tag == "#EXT-X-ENDLIST":
                ended = True
            elif tag == "#EXT-X-MAP":
                uri = _attributes(value).get("URI")
                if not uri:
                    raise GetMediaError(f"HLS playlist line {number}: EXT-X-MAP without a URI")
                map_uri = urllib.parse.urljoin(base_url, uri)
            elif tag == "#EXT-X-PROGRAM-DATE-TIME":
                pdt = _program_date_time(value, number)
            elif tag == "#EXT-X-DISCONTINUITY":
                discontinuity = True
            elif tag == "#EXTINF":
                duration = float(value.partition(",")[0])
            elif not line.startswith("#"):
                if duration is None:
                    raise GetMediaError(
                        f"HLS playlist line {number}: segment {line!r} without #EXTINF"
                    )
                segments.append(
                    PlaylistSegment(
                        uri=urllib.parse.urljoin(base_url, line),
                        duration_s=duration,
                        sequence=media_sequence + len(segments),
                        program_date_time=pdt,
                        discontinuity=discontinuity,
                        map_uri=map_uri,
                    )
                )
                duration, pdt, discontinuity = None, None, False
        except ValueError as exc:
            raise GetMediaError(f"HLS playlist line {number}: bad value in {line!r}") from exc
    if is_master_playlist(text):
        raise GetMediaError("expected an HLS media playlist, got a master playlist")
    return MediaPlaylist(tuple(segments), target, media_sequence, ended, playlist_type)


# --- segments to fragments ------------------------------------------------------------------
def _epoch_text(moment: dt.datetime) -> str:
    micros = (moment - EPOCH) // dt.timedelta(microseconds=1)
    return f"{micros // 1_000_000}.{micros % 1_000_000:06d}"


def segment_fragment(
    init: bytes,
    media: bytes,
    *,
    fragment_number: str | None = None,
    program_date_time: dt.datetime | None = None,
    timestamp_type: TimestampType = "PRODUCER_TIMESTAMP",
) -> Fragment:
    """One fMP4 segment (with its init segment) as a :class:`~kvs_toolkit.mkv.Fragment`
    of its video track: the samples undecoded, with the tags GetMedia would carry.

    Frame timestamps: ``program_date_time`` plus each sample's offset from the segment's
    first decode time (``tfdt``); without it, the samples' media times.
    """
    try:
        container = av.open(io.BytesIO(init + media), mode="r", format="mp4")
    except (av.error.FFmpegError, ValueError) as exc:
        raise DecodeError(f"HLS segment {fragment_number}: not an fMP4 segment: {exc}") from exc
    with container:
        if not container.streams.video:
            raise DecodeError(f"HLS segment {fragment_number}: no video track")
        stream = container.streams.video[0]
        codec = stream.codec_context
        codec_id = _CODEC_IDS.get(codec.name)
        if codec_id is None:
            raise DecodeError(
                f"HLS segment {fragment_number}: codec {codec.name!r} is not supported "
                f"(supported: {', '.join(sorted(_CODEC_IDS))})"
            )
        extradata = bytes(codec.extradata or b"")
        if not extradata:
            raise DecodeError(f"HLS segment {fragment_number}: the init segment has no avcC/hvcC")
        time_base = stream.time_base or Fraction(1, 90_000)
        samples: list[tuple[int, int, bool, bytes]] = []  # (pts ns, dts ns, key, data)
        try:
            for packet in container.demux(stream):
                if packet.size == 0 or packet.pts is None:
                    continue  # the demuxer's end-of-stream packet
                dts = packet.dts if packet.dts is not None else packet.pts
                samples.append(
                    (
                        int(packet.pts * time_base * _NS),
                        int(dts * time_base * _NS),
                        packet.is_keyframe,
                        bytes(packet),
                    )
                )
        except av.error.FFmpegError as exc:
            raise DecodeError(f"HLS segment {fragment_number}: cannot demux: {exc}") from exc
        track = TrackInfo(
            number=1, codec_id=codec_id, codec_private=extradata, width=codec.width,
            height=codec.height,
        )  # fmt: skip
    # tfdt: the decode time of the first sample; EXT-X-PROGRAM-DATE-TIME is its wall time.
    base_ms = samples[0][1] // 1_000_000 if samples else 0
    frames = tuple(
        Frame(1, pts // 1_000_000, pts, key, memoryview(data)) for pts, _dts, key, data in samples
    )
    tags: list[Tag] = []
    if fragment_number is not None:
        tags.append(Tag(TAG_FRAGMENT_NUMBER, fragment_number))
    if program_date_time is not None:
        name = TAG_SERVER_TIMESTAMP if timestamp_type == "SERVER_TIMESTAMP" else (
            TAG_PRODUCER_TIMESTAMP
        )  # fmt: skip
        tags.append(Tag(name, _epoch_text(program_date_time)))
    return Fragment(
        tags=tuple(tags),
        tracks=(track,),
        cluster_timecode=base_ms,
        frames=frames,
        size=len(media),
    )


# --- the reader -----------------------------------------------------------------------------
class _SessionGone(Exception):
    """The playlist answered 404: the LIVE session ended (no fragments lately)."""


class _SessionExpired(Exception):
    """403: the session token expired (after Expires seconds) or is unknown."""


# Renewed sessions in a row that brought no new segment before the reader gives up.
_MAX_FRUITLESS_RENEWALS: Final = 3


class HlsReader:
    """Fragments of a stream read through an HLS session (see the module docstring).

    Give ``stream_name`` (or ``stream_arn``) to create the session with
    GetHLSStreamingSessionURL (``playback_mode`` LIVE, LIVE_REPLAY from ``start``, or
    ON_DEMAND over ``start``..``end`` on ``timestamp_type``), or ``session_url`` to read
    a session created elsewhere (then ``timestamp_type`` says what its
    PROGRAM-DATE-TIME is). ``idle_exit_s``: end a LIVE read after this long without a
    new segment. ``poll_interval_s`` overrides the playlist re-poll interval.
    """

    def __init__(
        self,
        stream_name: str | None = None,
        *,
        session_url: str | None = None,
        stream_arn: str | None = None,
        playback_mode: PlaybackMode = "LIVE",
        start: dt.datetime | None = None,
        end: dt.datetime | None = None,
        timestamp_type: TimestampType = "PRODUCER_TIMESTAMP",
        endpoint_url: str | None = None,
        region: str | None = None,
        session: boto3.session.Session | None = None,
        aws: AwsAccess | None = None,
        expires_s: int | None = None,
        max_results: int | None = None,
        idle_exit_s: float | None = None,
        poll_interval_s: float | None = None,
        max_segment_bytes: int = DEFAULT_MAX_SEGMENT_BYTES,
        read_timeout_s: float = 30.0,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        backoff: Backoff | None = None,
        max_retries: int | None = 5,
    ) -> None:
        if session_url is None and stream_name is None and stream_arn is None:
            raise ValueError("HlsReader needs a stream (name or ARN) or a session_url")
        if playback_mode not in ("LIVE", "LIVE_REPLAY", "ON_DEMAND"):
            raise ValueError(
                f"playback_mode must be LIVE, LIVE_REPLAY or ON_DEMAND, not {playback_mode!r}"
            )
        if session_url is None and playback_mode == "ON_DEMAND" and (start is None or end is None):
            raise ValueError("an ON_DEMAND HLS session needs a start and an end")
        if session_url is None and playback_mode == "LIVE_REPLAY" and start is None:
            raise ValueError("a LIVE_REPLAY HLS session needs a start")
        if start is not None and end is not None and start > end:
            raise ValueError(f"start {start.isoformat()} is after end {end.isoformat()}")
        if max_segment_bytes <= 0:
            raise ValueError("max_segment_bytes must be positive")
        self.stats = ReaderStats()
        self._clients: StreamClients | None = None
        if session_url is None:
            self._clients = StreamClients(
                stream_name,
                stream_arn,
                aws=aws,
                endpoint_url=endpoint_url,
                region=region,
                session=session,
                read_timeout_s=read_timeout_s,
                connect_timeout_s=connect_timeout_s,
                endpoint_refresh_s=DEFAULT_ENDPOINT_REFRESH_S,
                stats=self.stats,
            )
        self.name = stream_name or stream_arn or "HLS session"
        self.session_url = session_url
        self.playback_mode: PlaybackMode = playback_mode
        self.start = start
        self.end = end
        self.timestamp_type: TimestampType = timestamp_type
        self.expires_s = expires_s
        self.max_results = max_results
        self.idle_exit_s = idle_exit_s
        self.poll_interval_s = poll_interval_s
        self.max_segment_bytes = max_segment_bytes
        self.backoff = backoff or Backoff()
        self.max_retries = max_retries
        self._http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=connect_timeout_s, read=read_timeout_s),
            retries=False,
        )
        self._stop = threading.Event()
        self._seen: deque[str] = deque(maxlen=_SEEN_WINDOW)
        self._seen_set: set[str] = set()
        self._init_cache: tuple[str, bytes] | None = None

    # --- the session --------------------------------------------------------------------
    def create_session(self) -> str:
        """GetHLSStreamingSessionURL for this reader's stream and mode (fMP4,
        DisplayFragmentTimestamp ALWAYS); the session URL."""
        clients = self._clients
        if clients is None:
            raise GetMediaError("this HlsReader reads a given session URL")
        selector: dict[str, Any] = {"FragmentSelectorType": self.timestamp_type}
        if self.start is not None:
            time_range: dict[str, Any] = {"StartTimestamp": self.start}
            if self.end is not None:
                time_range["EndTimestamp"] = self.end
            selector["TimestampRange"] = time_range
        request: dict[str, Any] = {
            **clients.stream,
            "PlaybackMode": self.playback_mode,
            "ContainerFormat": "FRAGMENTED_MP4",
            "DisplayFragmentTimestamp": "ALWAYS",
        }
        if self.playback_mode != "LIVE" or self.start is not None:
            request["HLSFragmentSelector"] = selector
        if self.expires_s is not None:
            request["Expires"] = self.expires_s
        if self.max_results is not None:
            request["MaxMediaPlaylistFragmentResults"] = self.max_results
        what = f"GetHLSStreamingSessionURL {self.name}"
        attempt = 0
        while True:
            try:
                client = clients.archived("GET_HLS_STREAMING_SESSION_URL")
                url: str = client.get_hls_streaming_session_url(**request)["HLSStreamingSessionURL"]
                log.info("%s: HLS %s session %s", self.name, self.playback_mode, url)
                return url
            except Exception as exc:
                translated = translate_error(exc, what)
                if translated is exc:
                    raise
                if not isinstance(translated, Retryable):
                    raise translated from exc
                if translated.refresh_endpoint:
                    clients.invalidate()
                attempt = self._failed(attempt, str(translated))

    # --- HTTP ---------------------------------------------------------------------------
    def _failed(self, attempt: int, message: str) -> int:
        self.stats.failures += 1
        self.stats.last_error = message
        attempt += 1
        if self.max_retries is not None and attempt > self.max_retries:
            raise GetMediaError(give_up_text(message, attempt))
        delay = self.backoff.delay(attempt)
        log.warning(
            "%s; %s, next in %.1f s", message, attempt_text(attempt, self.max_retries), delay
        )
        if self._stop.wait(delay):
            raise Stopped
        return attempt

    def _get(self, url: str, what: str, limit: int) -> bytes:
        """GET ``url`` (at most ``limit`` bytes), retrying network errors and 5xx."""
        attempt = 0
        while True:
            if self._stop.is_set():
                raise Stopped
            try:
                response = self._http.request("GET", url, preload_content=False)
            except urllib3.exceptions.HTTPError as exc:
                attempt = self._failed(attempt, f"HLS {what}: connection failed ({exc})")
                continue
            try:
                status = response.status
                if status == 200:
                    return self._body(response, what, limit)
                detail = response.read(4096).decode("utf-8", "replace").strip()
            except urllib3.exceptions.HTTPError as exc:
                attempt = self._failed(attempt, f"HLS {what}: connection lost ({exc})")
                continue
            finally:
                response.release_conn()
            self.stats.connections += 1
            if status == 404:
                raise _SessionGone(f"HLS {what}: 404 {detail}")
            if status == 403:
                raise _SessionExpired(f"HLS {what}: HTTP 403 {detail}")
            if status >= 500 or status == 429:
                attempt = self._failed(attempt, f"HLS {what}: HTTP {status} {detail}")
                continue
            raise GetMediaError(f"HLS {what}: HTTP {status} {detail}")

    def _body(self, response: Any, what: str, limit: int) -> bytes:
        declared = response.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise GetMediaError(
                f"HLS {what}: {declared} bytes, more than the limit of {limit} bytes"
            )
        chunks: list[bytes] = []
        size = 0
        for chunk in response.stream(_CHUNK):
            size += len(chunk)
            if size > limit:
                raise GetMediaError(f"HLS {what}: more than the limit of {limit} bytes")
            chunks.append(chunk)
        self.stats.connections += 1
        self.stats.bytes += size
        return b"".join(chunks)

    # --- iteration ----------------------------------------------------------------------
    def __iter__(self) -> Iterator[Fragment]:
        try:
            yield from self._read()
        except Stopped:
            return
        except NoFragmentsError as exc:
            if self.playback_mode == "LIVE":
                raise
            # an empty range of an existing stream is an empty read, as ArchiveReader's
            log.warning("%s", exc)

    def _media_playlist_url(self) -> str:
        url = self.session_url or self.create_session()
        text = self._get(url, "playlist", MAX_PLAYLIST_BYTES).decode("utf-8", "replace")
        if is_master_playlist(text):
            # The first variant: the service's master playlist has one, over the video.
            return parse_master_playlist(text, url)[0]
        return url

    def _open(self) -> str:
        try:
            return self._media_playlist_url()
        except (_SessionGone, _SessionExpired) as exc:
            raise GetMediaError(f"{self.name}: {exc}") from None

    def _renew(self, exc: _SessionExpired, fruitless: int) -> str:
        """A new session after the old one expired (only for sessions this reader made)."""
        if self._clients is None:
            raise GetMediaError(f"{self.name}: {exc} (the session URL expired)") from None
        if fruitless >= _MAX_FRUITLESS_RENEWALS:
            raise GetMediaError(
                f"{self.name}: {exc} (new sessions expired {fruitless} times in a row)"
            ) from None
        self.stats.session_rotations += 1
        last = self.stats.last_producer_timestamp
        if self.playback_mode == "LIVE_REPLAY" and last is not None:
            self.start = last  # go on from there; segments already seen are skipped
        log.info("%s: %s; creating a new HLS session", self.name, exc)
        self._init_cache = None
        return self._open()

    def _read(self) -> Iterator[Fragment]:
        playlist_url = self._open()
        last_new = time.monotonic()
        fruitless = 0
        while not self._stop.is_set():
            try:
                text = self._get(playlist_url, "media playlist", MAX_PLAYLIST_BYTES)
            except _SessionGone as exc:
                log.info("%s: the HLS session ended (%s)", self.name, exc)
                return
            except _SessionExpired as exc:
                fruitless += 1
                playlist_url = self._renew(exc, fruitless)
                continue
            playlist = parse_media_playlist(text.decode("utf-8", "replace"), playlist_url)
            new = False
            expired: _SessionExpired | None = None
            for segment in playlist.segments:
                key = segment.fragment_number or str(segment.sequence)
                if key in self._seen_set:
                    continue
                try:
                    fragment = self._fetch(segment)
                except _SessionGone as exc:
                    # Expired between the playlist and the fetch: skipped, as a player does.
                    self.stats.skipped += 1
                    log.warning("%s: segment %s is gone (%s)", self.name, key, exc)
                    fragment = None
                except _SessionExpired as exc:
                    expired = exc
                    break
                self._remember(key)
                new = True
                fruitless = 0
                if fragment is not None:
                    self.stats.count(fragment)
                    yield fragment
                if self._stop.is_set():
                    return
            if expired is not None:
                fruitless += 0 if new else 1
                playlist_url = self._renew(expired, fruitless)
                continue
            if playlist.ended or self.playback_mode == "ON_DEMAND":
                return
            now = time.monotonic()
            if new:
                last_new = now
            elif self.idle_exit_s is not None and now - last_new >= self.idle_exit_s:
                log.info("%s: no new HLS segment for %.1f s, done", self.name, self.idle_exit_s)
                return
            # RFC 8216 6.3.4: reload after the target duration, or half of it when the
            # playlist did not change.
            target = playlist.target_duration_s or 1.0
            wait = self.poll_interval_s or (target if new else target / 2)
            if self._stop.wait(wait):
                return

    def _fetch(self, segment: PlaylistSegment) -> Fragment:
        number = segment.fragment_number
        init = b""
        if segment.map_uri is not None:
            if self._init_cache is None or self._init_cache[0] != segment.map_uri:
                self._init_cache = (
                    segment.map_uri,
                    self._get(segment.map_uri, "init segment", self.max_segment_bytes),
                )
            init = self._init_cache[1]
        elif segment.uri.split("?", 1)[0].endswith(".ts"):
            raise DecodeError(
                f"{self.name}: MPEG-TS HLS segments cannot be read; create the session with "
                "ContainerFormat FRAGMENTED_MP4"
            )
        media = self._get(segment.uri, f"segment {number or segment.sequence}",
                          self.max_segment_bytes)  # fmt: skip
        return segment_fragment(
            init,
            media,
            fragment_number=number,
            program_date_time=segment.program_date_time,
            timestamp_type=self.timestamp_type,
        )

    def _remember(self, key: str) -> None:
        if len(self._seen) == self._seen.maxlen:
            self._seen_set.discard(self._seen[0])
        self._seen.append(key)
        self._seen_set.add(key)

    # --- life cycle ---------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self.stop()
        self._http.clear()
        if self._clients is not None:
            self._clients.close()

    def __enter__(self) -> HlsReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
