"""HLS and DASH playback: GetHLSStreamingSessionURL, GetDASHStreamingSessionURL and the
session URLs a player fetches.

Operations (POST, SigV4, shapes of the botocore model ``kinesis-video-archived-media``):

* ``/getHLSStreamingSessionURL`` answers ``{"HLSStreamingSessionURL": URL}`` with URL
  ``<data endpoint>/hls/v1/getHLSMasterPlaylist.m3u8?SessionToken=...``
* ``/getDASHStreamingSessionURL`` answers ``{"DASHStreamingSessionURL": URL}`` with URL
  ``<data endpoint>/dash/v1/getDASHManifest.mpd?SessionToken=...``

Player requests (GET, authenticated by the session token alone, as the service's are,
so no SigV4; see :func:`_session_auth_middleware`), under ``/hls/v1/`` and ``/dash/v1/``:

* ``getHLSMasterPlaylist.m3u8``, ``getHLSMediaPlaylist.m3u8`` (HLS), ``getDASHManifest.mpd``
* ``getMP4InitFragment.mp4``: ``ftyp + moov``
* ``getMP4MediaFragment.mp4?FragmentNumber=N`` (HLS) or ``?SequenceNumber=$Number$``
  (DASH): one stored fragment as ``moof + mdat``
* ``getTSFragment.ts?FragmentNumber=N``: one stored fragment as MPEG-TS, every track

``TrackNumber=N`` on the fMP4 URLs selects one track: with an AAC track, HLS has an
audio rendition (``EXT-X-MEDIA``) with its own media playlist and DASH an audio
AdaptationSet, each over that track's init and media segments, as the service has.

Sessions live in memory until they expire (Expires, 300 s by default); a restarted
emulator forgets them. Segments are made on demand in worker threads (fMP4 written by
:mod:`.fmp4`, MPEG-TS remuxed by :mod:`.remux`) and kept in a byte-bounded LRU; init
segments are built from the Tracks alone. Playlists come from the sans-I/O builders in
:mod:`.playback`.

Deviations from the service, on purpose:

* A media playlist or segment URL without ``TrackNumber`` serves every track muxed
  (the service's always name one); with it, one track, as the service does.
* G.711 audio is left out of DASH (the fMP4 writer, like FFmpeg's mp4 muxer, has no
  G.711 sample entry); HLS refuses
  it, as the service does.
* Segment media is placed on the producer timeline whichever FragmentSelectorType
  chose the fragments (see :mod:`.playback`).
* Codec private data changing inside a session (a producer restarted with another
  resolution): HLS puts ``EXT-X-DISCONTINUITY`` before the first fragment of the new
  configuration whatever the DiscontinuityMode (RFC 8216 6.2.1), and for fMP4 a new
  ``EXT-X-MAP`` whose init segment URL names that fragment
  (``getMP4InitFragment.mp4?...&FragmentNumber=N``), which players built on MSE
  (hls.js) or AVFoundation append before the next segments (tested here the same
  way: each init then its segments, decoded with PyAV). FFmpeg's HLS demuxer does not
  re-read an ``EXT-X-MAP`` that changes (it decodes on with the first one's parameter
  sets); MPEG-TS segments carry them in band and play through in FFmpeg too. The
  tracks themselves (kinds and codecs) may not change: InvalidCodecPrivateDataException,
  as the service's "track changes aren't supported". DASH refuses any change with
  InvalidCodecPrivateDataException, as the service documents for DASH.
* Segments are checked against the session before the segment cache (which sessions
  share), from a cache of fragment heads read from the first bytes of each payload.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from aiohttp import web

from kvs_toolkit.emulator import fmp4
from kvs_toolkit.emulator.context import (
    EMULATOR,
    EmulatorContext,
    error_response,
    json_response,
    read_json,
)
from kvs_toolkit.emulator.errors import (
    ClientLimitExceededError,
    InvalidArgumentError,
    ResourceNotFoundError,
    ServiceError,
)
from kvs_toolkit.emulator.media import split_payload
from kvs_toolkit.emulator.playback import (
    CODEC_AAC,
    CODEC_ACM,
    MAX_FRAGMENT_MS,
    InvalidCodecPrivateDataError,
    InvalidMediaFrameError,
    MediaInfo,
    NoDataRetentionError,
    PlaylistEntry,
    Protocol,
    SessionExpiredError,
    SessionIndex,
    SessionParams,
    dash_manifest,
    hls_master_playlist,
    hls_media_playlist,
    media_info,
    order_for_playback,
    parse_session_request,
    peak_bandwidth,
    target_duration_s,
    timestamp_of,
    tracks_of_payload,
)
from kvs_toolkit.emulator.remux import ByteLRU, mpegts_segment
from kvs_toolkit.emulator.store import FragmentRecord, Store, StreamRecord, TimestampType
from kvs_toolkit.emulator.validation import query_int
from kvs_toolkit.errors import DecodeError, MkvError
from kvs_toolkit.timestamps import now_ms

__all__ = [
    "LIVE_IDLE_TIMEOUT_S",
    "PLAYBACK",
    "PlaybackSession",
    "PlaybackState",
    "install",
    "list_all_fragments",
]

log = logging.getLogger(__name__)

#: LIVE sessions answer ResourceNotFound when the stream got no fragment for this long
#: (the service's 30 s). Read at each request, so tests may set it lower.
LIVE_IDLE_TIMEOUT_S: float = 30.0
#: Bytes of remuxed segments kept per emulator.
SEGMENT_CACHE_BYTES: Final = 64 * 1024 * 1024
#: Sessions kept at most (expired ones are dropped first).
MAX_SESSIONS: Final = 10_000
#: Distinct codec configurations one HLS session follows (each is kept for its init
#: segment); past this a playlist request fails with InvalidCodecPrivateDataException.
MAX_CONFIGS_PER_SESSION: Final = 1000
#: Bytes of fragment heads (Info + Tracks) remembered across sessions.
HEAD_CACHE_BYTES: Final = 4 * 1024 * 1024
# A fragment's Info + Tracks are read from the first bytes of its stored payload; a
# larger head (CodecPrivate may be up to 1 MiB) costs a read of the whole payload.
_HEAD_PROBE_BYTES: Final = 8192
# A live session remembers this many entries beyond its playlist window, so a player a
# little behind can still fetch a DASH $Number$ that just left the manifest.
_LIVE_KEEP_EXTRA: Final = 64
_PAGE: Final = 1000

_HLS_PREFIX: Final = "/hls/v1/"
_DASH_PREFIX: Final = "/dash/v1/"
_M3U8: Final = "application/vnd.apple.mpegurl"
_MPD: Final = "application/dash+xml"


@dataclass(eq=False)
class PlaybackSession:
    """One HLS or DASH session: its request, stream, timeline origin and fragment index."""

    token: str
    params: SessionParams
    stream_name: str
    stream_id: int
    created_ms: int
    expires_ms: int
    origin_ms: int  # producer timestamp that is time 0 of every segment
    init_fragment_number: str  # the fragment whose tracks make the init segment
    head: bytes  # its Info + Tracks: every fragment played must have the same
    info: MediaInfo
    index: SessionIndex
    availability_start_ms: int  # DASH availabilityStartTime of a dynamic MPD
    first_fragment_number: str
    last_seen_number: str  # LIVE: newest fragment number looked at
    newest_server_ms: int  # LIVE: server timestamp of the newest fragment of the stream
    replay_first_ms: int = 0  # LIVE_REPLAY: selector timestamp of the first fragment
    exhausted: bool = False  # LIVE_REPLAY with an end: every fragment has been added
    target_duration: int = 1
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # HLS: the codec configurations (Info + Tracks) seen, numbered in order of
    # appearance (0 is ``head``), and the fragment that brought each one in, which
    # names its init segment.
    config_heads: list[bytes] = field(default_factory=list)
    config_fragments: list[str] = field(default_factory=list)
    config_by_head: dict[bytes, int] = field(default_factory=dict)

    @property
    def ended(self) -> bool:
        return self.params.mode == "ON_DEMAND" or self.exhausted

    def config_of(self, head: bytes, fragment_number: str) -> int:
        """The number of a fragment's codec configuration, a new one if not seen yet."""
        config = self.config_by_head.get(head)
        if config is None:
            if len(self.config_heads) >= MAX_CONFIGS_PER_SESSION:
                raise InvalidCodecPrivateDataError(
                    f"The codec private data changed more than {MAX_CONFIGS_PER_SESSION} "
                    "times in the streaming session."
                )
            config = len(self.config_heads)
            self.config_by_head[head] = config
            self.config_heads.append(head)
            self.config_fragments.append(fragment_number)
        return config


@dataclass(eq=False)
class PlaybackState:
    """Every session of one emulator and its segment cache (``app[PLAYBACK]``)."""

    sessions: dict[str, PlaybackSession] = field(default_factory=dict)
    cache: ByteLRU = field(default_factory=lambda: ByteLRU(SEGMENT_CACHE_BYTES))
    heads: ByteLRU = field(default_factory=lambda: ByteLRU(HEAD_CACHE_BYTES))

    def add(self, session: PlaybackSession, now_ms: int) -> None:
        if len(self.sessions) >= MAX_SESSIONS:
            self.prune(now_ms)
        if len(self.sessions) >= MAX_SESSIONS:
            raise ClientLimitExceededError(
                f"The emulator keeps at most {MAX_SESSIONS} streaming sessions."
            )
        self.sessions[session.token] = session

    def prune(self, now_ms: int) -> None:
        for token in [t for t, s in self.sessions.items() if s.expires_ms <= now_ms]:
            del self.sessions[token]

    def get(self, request: web.Request, now_ms: int) -> PlaybackSession:
        token = request.query.get("SessionToken")
        if not token:
            raise InvalidArgumentError("SessionToken is required.")
        session = self.sessions.get(token)
        if session is None:
            raise SessionExpiredError("The streaming session token is not valid.")
        if now_ms >= session.expires_ms:
            del self.sessions[token]
            raise SessionExpiredError("Streaming session token is expired.")
        return session


PLAYBACK = web.AppKey("kvs_playback", PlaybackState)


# --- store queries --------------------------------------------------------------------------


async def list_all_fragments(
    ctx: EmulatorContext,
    stream_name: str,
    *,
    timestamp_type: TimestampType | None = None,
    start_ms: int | None = None,
    end_ms: int | None = None,
    after: str | None = None,
    limit: int | None = None,
) -> list[FragmentRecord]:
    """Every fragment matching (all pages), in fragment-number order; at most ``limit``."""
    out: list[FragmentRecord] = []
    while True:
        page = await ctx.store.list_fragments(
            stream_name,
            timestamp_type=timestamp_type,
            start_ms=start_ms,
            end_ms=end_ms,
            after_fragment_number=after,
            limit=_PAGE,
        )
        out.extend(page.fragments)
        if page.next_token is None or not page.fragments:
            return out
        if limit is not None and len(out) >= limit:
            return out[:limit]
        after = page.fragments[-1].fragment_number


def _read_heads(store: Store, cache: ByteLRU, records: Sequence[FragmentRecord]) -> list[bytes]:
    """The Info + Tracks of each fragment (blocking: a few KiB read per fragment not
    cached yet)."""
    heads = []
    for record in records:
        key = (record.stream_id, record.fragment_number)
        head = cache.get(key)
        if head is None:
            # The store keeps each payload at record.offset in record.path (see
            # Store.read_payload); only its first bytes are needed here.
            try:
                with open(store.data_dir / record.path, "rb") as f:
                    f.seek(record.offset)
                    prefix = f.read(min(record.length, _HEAD_PROBE_BYTES))
                length = fmp4.head_length(prefix)
                head = (
                    prefix[:length]
                    if length is not None
                    else split_payload(store.read_payload(record))[0]
                )
            except (OSError, MkvError) as exc:
                raise InvalidMediaFrameError(
                    f"The stored fragment {record.fragment_number} cannot be read: {exc}"
                ) from exc
            cache.put(key, head)
        heads.append(head)
    return heads


async def _add_records(
    request: web.Request, session: PlaybackSession, records: Sequence[FragmentRecord]
) -> None:
    """Add fragments to the session's index; for HLS with their codec configurations.

    Their heads land in the head cache, so that a segment request of a listed fragment
    is checked and served from the segment cache without a store query.
    """
    if not records:
        return
    store = request.app[EMULATOR].store.sync
    heads = await asyncio.to_thread(_read_heads, store, request.app[PLAYBACK].heads, records)
    hls = session.params.protocol == "HLS"
    for record, head in zip(records, heads, strict=True):
        session.index.add(record, session.config_of(head, record.fragment_number) if hls else 0)


def _live_idle_ms() -> int:
    return round(LIVE_IDLE_TIMEOUT_S * 1000)


def _no_recent_fragments() -> ResourceNotFoundError:
    return ResourceNotFoundError(
        f"No fragments found in the stream for the last {LIVE_IDLE_TIMEOUT_S:g} seconds."
    )


async def _initial_fragments(
    ctx: EmulatorContext, stream: StreamRecord, params: SessionParams, now_ms: int
) -> list[FragmentRecord]:
    """The fragments a new session starts with, in playback order (may be empty)."""
    name = stream.name
    if params.mode == "LIVE":
        latest = await ctx.store.latest_fragment(name)
        if latest is None or latest.server_timestamp_ms < now_ms - _live_idle_ms():
            raise _no_recent_fragments()
        lookback = min(params.max_results * MAX_FRAGMENT_MS, 3_600_000)
        recent: deque[FragmentRecord] = deque(maxlen=params.max_results)
        recent.extend(
            await list_all_fragments(
                ctx,
                name,
                timestamp_type="SERVER_TIMESTAMP",
                start_ms=latest.server_timestamp_ms - lookback,
            )
        )
        return list(recent) or [latest]
    assert params.start_ms is not None
    if params.mode == "ON_DEMAND":
        # Fragment-number order is server-timestamp order: SERVER_TIMESTAMP can stop early.
        records = await list_all_fragments(
            ctx,
            name,
            timestamp_type=params.selector,
            start_ms=params.start_ms,
            end_ms=params.end_ms,
            limit=params.max_results if params.selector == "SERVER_TIMESTAMP" else None,
        )
        return order_for_playback(records, params.selector)[: params.max_results]
    # LIVE_REPLAY: the session starts with the first fragment of the range; the rest join
    # as time passes (see _refresh).
    end = params.end_ms if params.end_ms is not None else now_ms + 3_600_000
    for window_end in (min(end, params.start_ms + 60_000), end):
        records = await list_all_fragments(
            ctx,
            name,
            timestamp_type=params.selector,
            start_ms=params.start_ms,
            end_ms=window_end,
            limit=1 if params.selector == "SERVER_TIMESTAMP" else None,
        )
        if records:
            return order_for_playback(records, params.selector)[:1]
    return []


async def _refresh(request: web.Request, session: PlaybackSession, now_ms: int) -> None:
    """Add the fragments that joined a LIVE or LIVE_REPLAY session since the last look."""
    ctx = request.app[EMULATOR]
    params = session.params
    if params.mode == "ON_DEMAND" or session.exhausted:
        return
    stream = await ctx.store.get_stream(session.stream_name)
    if stream.stream_id != session.stream_id:
        raise ResourceNotFoundError(f"The stream {session.stream_name} was deleted.")
    if params.mode == "LIVE":
        new = await list_all_fragments(ctx, session.stream_name, after=session.last_seen_number)
        await _add_records(request, session, new)
        if new:
            session.last_seen_number = new[-1].fragment_number
            newest = max(r.server_timestamp_ms for r in new)
            session.newest_server_ms = max(session.newest_server_ms, newest)
        if session.newest_server_ms < now_ms - _live_idle_ms():
            raise _no_recent_fragments()
        return
    # LIVE_REPLAY: a fragment joins once the time since the session started reaches its
    # distance from the first fragment (fragments are added as their time elapses).
    horizon = session.replay_first_ms + (now_ms - session.created_ms)
    upper = horizon if params.end_ms is None else min(horizon, params.end_ms)
    last = session.index.last
    lower = params.start_ms if last is None else timestamp_of(last, params.selector)
    if lower is None or upper < lower:
        return
    records = await list_all_fragments(
        ctx, session.stream_name, timestamp_type=params.selector, start_ms=lower, end_ms=upper
    )
    await _add_records(request, session, order_for_playback(records, params.selector))
    if params.end_ms is not None and horizon >= params.end_ms:
        session.exhausted = True


# --- operations -----------------------------------------------------------------------------


async def _create_session(request: web.Request, protocol: Protocol) -> PlaybackSession:
    ctx = request.app[EMULATOR]
    state = request.app[PLAYBACK]
    body = await read_json(request)
    now = now_ms()
    params = parse_session_request(body, protocol, now)
    stream = await ctx.resolve_stream(body)
    if stream.retention_hours == 0:
        raise NoDataRetentionError(
            f"The stream {stream.name} does not retain data (DataRetentionInHours is 0)."
        )
    records = await _initial_fragments(ctx, stream, params, now)
    if not records:
        raise ResourceNotFoundError("No fragments found in the requested time range.")
    first = records[0]
    payload = await ctx.store.read_payload(first)
    head, _cluster = split_payload(payload)
    audio = (CODEC_AAC,) if protocol == "HLS" else (CODEC_AAC, CODEC_ACM)
    info = media_info(
        tracks_of_payload(payload), audio_codecs=audio, bandwidth=peak_bandwidth(records)
    )
    keep = None if params.mode == "ON_DEMAND" else params.max_results + _LIVE_KEEP_EXTRA
    index = SessionIndex(params.selector, params.discontinuity, keep=keep)
    origin = min(r.producer_timestamp_ms for r in records)
    last = records[-1]
    window_end = last.producer_timestamp_ms + last.duration_ms - origin
    session = PlaybackSession(
        token=secrets.token_urlsafe(48),
        params=params,
        stream_name=stream.name,
        stream_id=stream.stream_id,
        created_ms=now,
        expires_ms=now + params.expires_s * 1000,
        origin_ms=origin,
        init_fragment_number=first.fragment_number,
        head=head,
        info=info,
        index=index,
        # Every segment listed at creation is available at once.
        availability_start_ms=min(origin, now - window_end),
        first_fragment_number=min(r.fragment_number for r in records),
        last_seen_number=max(r.fragment_number for r in records),
        newest_server_ms=max(r.server_timestamp_ms for r in records),
        replay_first_ms=timestamp_of(first, params.selector),
    )
    session.config_of(head, first.fragment_number)
    await _add_records(request, session, records)
    session.target_duration = target_duration_s(index.entries)
    state.prune(now)
    state.add(session, now)
    return session


async def get_hls_streaming_session_url(request: web.Request) -> web.Response:
    session = await _create_session(request, "HLS")
    endpoint = request.app[EMULATOR].data_endpoint(request)
    url = f"{endpoint}{_HLS_PREFIX}getHLSMasterPlaylist.m3u8?SessionToken={session.token}"
    return json_response({"HLSStreamingSessionURL": url})


async def get_dash_streaming_session_url(request: web.Request) -> web.Response:
    session = await _create_session(request, "DASH")
    endpoint = request.app[EMULATOR].data_endpoint(request)
    url = f"{endpoint}{_DASH_PREFIX}getDASHManifest.mpd?SessionToken={session.token}"
    return json_response({"DASHStreamingSessionURL": url})


# --- player requests ------------------------------------------------------------------------


def _session(request: web.Request, protocol: Protocol | None = None) -> PlaybackSession:
    session = request.app[PLAYBACK].get(request, now_ms())
    if protocol is not None and session.params.protocol != protocol:
        raise InvalidArgumentError(f"The session token is not for an {protocol} session.")
    return session


def _text(body: str, content_type: str) -> web.Response:
    response = web.Response(text=body, content_type=content_type)
    response.headers["Cache-Control"] = "no-cache"
    return response


def _track(request: web.Request, session: PlaybackSession) -> tuple[int | None, int | None]:
    """The request's TrackNumber and that track's stream index; (None, None): every track."""
    text = request.query.get("TrackNumber")
    if text is None:
        return None, None
    number = query_int(text, "TrackNumber", 0, 2**64 - 1)
    position = session.info.position(number)
    if position is None:
        raise InvalidArgumentError(f"TrackNumber {text!r} is not a track of the session.")
    return number, position


async def get_hls_master_playlist(request: web.Request) -> web.Response:
    session = _session(request, "HLS")
    token = session.token

    def media_playlist_uri(track: int) -> str:
        if session.params.container == "MPEG_TS":  # every track in each TS segment
            return f"getHLSMediaPlaylist.m3u8?SessionToken={token}"
        return f"getHLSMediaPlaylist.m3u8?SessionToken={token}&TrackNumber={track}"

    return _text(hls_master_playlist(session.info, media_playlist_uri), _M3U8)


async def _window(request: web.Request, session: PlaybackSession) -> tuple[PlaylistEntry, ...]:
    async with session.lock:
        await _refresh(request, session, now_ms())
        live = session.params.mode != "ON_DEMAND"
        entries = session.index.window(session.params.max_results, newest=live)
        session.target_duration = max(session.target_duration, target_duration_s(entries))
        return entries


async def get_hls_media_playlist(request: web.Request) -> web.Response:
    session = _session(request, "HLS")
    track, _position = _track(request, session)
    entries = await _window(request, session)
    token = session.token
    if session.params.container == "FRAGMENTED_MP4":
        # One track's init and segments; without TrackNumber, every track muxed.
        track_query = "" if track is None else f"&TrackNumber={track}"
        first_init = f"getMP4InitFragment.mp4?SessionToken={token}{track_query}"

        def map_uri(entry: PlaylistEntry) -> str:
            # A later codec configuration's init is named by the fragment that brought it.
            if entry.config == 0:
                return first_init
            return f"{first_init}&FragmentNumber={session.config_fragments[entry.config]}"

        def segment_uri(entry: PlaylistEntry) -> str:
            return (
                f"getMP4MediaFragment.mp4?FragmentNumber={entry.fragment_number}"
                f"&SessionToken={token}{track_query}"
            )
    else:

        def segment_uri(entry: PlaylistEntry) -> str:
            return f"getTSFragment.ts?FragmentNumber={entry.fragment_number}&SessionToken={token}"

    mp4 = session.params.container == "FRAGMENTED_MP4"
    playlist = hls_media_playlist(
        entries,
        segment_uri=segment_uri,
        map_uri=map_uri if mp4 else None,
        discontinuity_sequence=session.index.discontinuity_sequence(
            entries[0] if entries else None
        ),
        target_duration=session.target_duration,
        program_date_time=session.params.selector if session.params.display_timestamp else None,
        ended=session.ended,
        playlist_type="VOD" if session.params.mode == "ON_DEMAND" else None,
    )
    return _text(playlist, _M3U8)


async def get_dash_manifest(request: web.Request) -> web.Response:
    session = _session(request, "DASH")
    entries = await _window(request, session)
    params = session.params
    token = session.token
    manifest = dash_manifest(
        entries,
        info=session.info,
        origin_ms=session.origin_ms,
        init_uri=lambda track: f"getMP4InitFragment.mp4?SessionToken={token}&TrackNumber={track}",
        media_uri_template=lambda track: (
            f"getMP4MediaFragment.mp4?SessionToken={token}&TrackNumber={track}"
            "&SequenceNumber=$Number$"
        ),
        dynamic=not session.ended,
        availability_start_ms=session.availability_start_ms,
        publish_ms=now_ms(),
        fragment_timestamp=params.selector if params.display_timestamp else None,
        fragment_number=params.display_fragment_number,
    )
    return _text(manifest, _MPD)


async def _cached(
    request: web.Request, key: tuple[object, ...], make: Callable[[], bytes]
) -> bytes:
    """The segment bytes for ``key``; on a miss ``make`` (which reads the stored
    fragment and remuxes it: blocking) runs in one worker thread. A hit reads nothing
    from the store."""
    cache = request.app[PLAYBACK].cache
    data = cache.get(key)
    if data is None:
        try:
            data = await asyncio.to_thread(make)
        except DecodeError as exc:
            raise InvalidMediaFrameError(str(exc)) from exc
        cache.put(key, data)
    return data


def _binary(data: bytes, content_type: str) -> web.Response:
    return web.Response(body=data, content_type=content_type)


def _check_tracks(session: PlaybackSession, head: bytes, fragment_number: str) -> None:
    """Whether a fragment's Info + Tracks may play in the session (blocking).

    DASH and GetClip allow no change of codec private data (the service's "CPD changes
    aren't supported during a streaming session"); HLS allows it (a new init segment
    after a discontinuity) as long as the tracks stay the same kinds with the same
    codecs (the service's "track changes aren't supported").
    """
    if head == session.head:
        return
    if session.params.protocol != "HLS":
        raise InvalidCodecPrivateDataError(
            f"The tracks of fragment {fragment_number} differ from the session's first "
            "fragment: the codec private data may not change inside a DASH session."
        )
    tracks, _scale = fmp4.parse_head(head)
    audio = (CODEC_AAC,)
    info = media_info(tracks, audio_codecs=audio)
    if [(t.kind, t.codec.split(".")[0]) for t in info.tracks] != [
        (t.kind, t.codec.split(".")[0]) for t in session.info.tracks
    ]:
        raise InvalidCodecPrivateDataError(
            f"The tracks of fragment {fragment_number} ({info.codecs_attribute}) differ from "
            f"the session's ({session.info.codecs_attribute}): tracks may not change inside "
            "a session, only their codec private data."
        )


async def get_mp4_init_fragment(request: web.Request) -> web.Response:
    session = _session(request)
    if session.params.container != "FRAGMENTED_MP4":
        raise InvalidArgumentError("The session's ContainerFormat is MPEG_TS.")
    _number, position = _track(request, session)
    # Built from the tracks alone (fmp4.init_segment): no stored fragment is read. With
    # FragmentNumber, the init of the codec configuration that fragment brought in.
    number = request.query.get("FragmentNumber")
    config = 0
    if number is not None:
        if number not in session.config_fragments:
            raise ResourceNotFoundError(
                f"Fragment {number} does not start a codec configuration of the session."
            )
        config = session.config_fragments.index(number)
    head = session.config_heads[config]
    key = ("init", head, position)

    def make() -> bytes:
        _check_tracks(session, head, session.config_fragments[config])
        return fmp4.init_segment(fmp4.parse_head(head)[0], stream_index=position)

    return _binary(await _cached(request, key, make), "video/mp4")


def _requested_number(request: web.Request, session: PlaybackSession) -> str:
    """The fragment number a segment request names (FragmentNumber, or DASH's
    SequenceNumber through the session's index)."""
    number = request.query.get("FragmentNumber")
    sequence_text = request.query.get("SequenceNumber")
    if number is None and sequence_text is not None:
        if not (sequence_text.isascii() and sequence_text.isdigit()) or len(sequence_text) > 18:
            raise InvalidArgumentError(f"SequenceNumber {sequence_text[:40]!r} is not a number.")
        entry = session.index.by_sequence(int(sequence_text))
        if entry is None:
            raise ResourceNotFoundError(f"No fragment with sequence number {sequence_text}.")
        number = entry.fragment_number
    if number is None:
        raise InvalidArgumentError("FragmentNumber is required.")
    if not number.isdigit():
        raise InvalidArgumentError(f"FragmentNumber {number!r} is not a fragment number.")
    return number


def _session_payload(store: Store, heads: ByteLRU, session: PlaybackSession, number: str) -> bytes:
    """The stored payload of a fragment of the session, checked (blocking)."""
    record = store.get_fragment(session.stream_name, number)
    if record is None or record.stream_id != session.stream_id:
        raise ResourceNotFoundError(f"Fragment {number} was not found in the stream.")
    params = session.params
    allowed = (
        params.in_range(record)
        if params.start_ms is not None
        else record.fragment_number >= session.first_fragment_number
    )
    if not allowed:
        raise ResourceNotFoundError(f"Fragment {number} is not part of the streaming session.")
    payload = store.read_payload(record)
    length = fmp4.head_length(payload)
    if length is None:
        raise DecodeError(f"the stored fragment {number} is corrupt: it has no Info and Tracks")
    head = payload[:length]
    heads.put((record.stream_id, number), head)
    _check_tracks(session, head, number)
    return payload


async def _segment(
    request: web.Request,
    session: PlaybackSession,
    kind: str,
    position: int | None,
    make: Callable[[bytes, int], bytes],
) -> bytes:
    """A media segment: ``make(payload, sequence)`` on a cache miss.

    A fragment the session lists, with its head in the head cache, is checked without
    I/O and a cached segment is served at once. Otherwise one worker thread looks the
    fragment up, checks it, reads it and makes the segment (one hand-off, not three).
    """
    state = request.app[PLAYBACK]
    number = _requested_number(request, session)
    sequence = session.index.sequence_of(number)
    key = (kind, session.stream_id, number, session.origin_ms, sequence or 1, position)
    head = state.heads.get((session.stream_id, number)) if sequence is not None else None
    if head is not None:
        _check_tracks(session, head, number)
        cached = state.cache.get(key)
        if cached is not None:
            return cached
    store = request.app[EMULATOR].store.sync

    def produce() -> bytes:
        return make(_session_payload(store, state.heads, session, number), sequence or 1)

    try:
        data = await asyncio.to_thread(produce)
    except DecodeError as exc:
        raise InvalidMediaFrameError(str(exc)) from exc
    state.cache.put(key, data)
    return data


async def get_mp4_media_fragment(request: web.Request) -> web.Response:
    session = _session(request)
    if session.params.container != "FRAGMENTED_MP4":
        raise InvalidArgumentError("The session's ContainerFormat is MPEG_TS.")
    _number, position = _track(request, session)
    origin = session.origin_ms

    def make(payload: bytes, sequence: int) -> bytes:
        return fmp4.media_segment(
            fmp4.read_stored_fragment(payload),
            origin_ms=origin,
            sequence_number=sequence,
            stream_index=position,
        )

    data = await _segment(request, session, "fmp4", position, make)
    return _binary(data, "video/mp4")


async def get_ts_fragment(request: web.Request) -> web.Response:
    session = _session(request, "HLS")
    if session.params.container != "MPEG_TS":
        raise InvalidArgumentError("The session's ContainerFormat is FRAGMENTED_MP4.")
    origin = session.origin_ms

    def make(payload: bytes, _sequence: int) -> bytes:
        return mpegts_segment(payload, origin_ms=origin)

    data = await _segment(request, session, "ts", None, make)
    return _binary(data, "video/mp2t")


# --- installation ---------------------------------------------------------------------------

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_SESSION_ROUTES: Final[dict[str, _Handler]] = {
    f"{_HLS_PREFIX}getHLSMasterPlaylist.m3u8": get_hls_master_playlist,
    f"{_HLS_PREFIX}getHLSMediaPlaylist.m3u8": get_hls_media_playlist,
    f"{_HLS_PREFIX}getMP4InitFragment.mp4": get_mp4_init_fragment,
    f"{_HLS_PREFIX}getMP4MediaFragment.mp4": get_mp4_media_fragment,
    f"{_HLS_PREFIX}getTSFragment.ts": get_ts_fragment,
    f"{_DASH_PREFIX}getDASHManifest.mpd": get_dash_manifest,
    f"{_DASH_PREFIX}getMP4InitFragment.mp4": get_mp4_init_fragment,
    f"{_DASH_PREFIX}getMP4MediaFragment.mp4": get_mp4_media_fragment,
}


@web.middleware
async def _session_auth_middleware(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """Serve session URLs without SigV4: the session token is their credential.

    A player fetches them with plain GETs, so the application's SigV4 middleware must
    not see them. Installed outermost by :func:`install`, this calls the route's own
    handler directly for those paths and turns a ServiceError into the service's error
    shape itself; every other request goes down the normal middleware chain.
    """
    route = _SESSION_ROUTES.get(request.path)
    if route is None or request.method not in ("GET", "HEAD"):
        return await handler(request)
    try:
        response = await route(request)
    except ServiceError as exc:
        response = error_response(exc)
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        response = error_response(ServiceError("The emulator failed to process the request."))
    # Browser players (hls.js, dash.js) fetch from another origin.
    response.headers["Access-Control-Allow-Origin"] = "*"
    return response


def install(app: web.Application) -> None:
    """Add the HLS/DASH operations, the session routes and the session store."""
    app[PLAYBACK] = PlaybackState()
    app.middlewares.insert(0, _session_auth_middleware)
    app.router.add_post("/getHLSStreamingSessionURL", get_hls_streaming_session_url)
    app.router.add_post("/getDASHStreamingSessionURL", get_dash_streaming_session_url)
    for path, handler in _SESSION_ROUTES.items():
        app.router.add_get(path, handler)
