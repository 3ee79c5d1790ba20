"""WebRTC ingestion: JoinStorageSession (``kinesis-video-webrtc-storage``).

A master of a channel whose media storage is ENABLED calls JoinStorageSession; the
service then joins the channel as one more peer, sends the master an SDP offer over
signaling, and records the master's media into the configured stream. The emulator
does the same with aiortc (:class:`StorageSession`): an in-process signaling peer
(client id ``kvs-storage-...``) offers to receive H.264, and the access units it
receives are stored **as received** (no decoding), one fragment per key frame
(key-frame aligned, as the service's ingestion fragments), through the emulator's
store, so GetMedia, HLS and the web page play them.

The H.264 is taken from the RTP packets themselves: aiortc hands a receiver only
decoded pictures, so the session listens to its receiver's packets (wrapping the
receiver's packet handler, an aiortc internal, then letting it run as before) and
reassembles access units with aiortc's own jitter buffer and H.264 depayloader.
Candidates are gathered as aioice gathers them for this process (a loopback-only
process sets that up with ``kvs_toolkit.webrtc.ice.use_host_addresses``); no STUN/TURN
server is used. Audio is not recorded.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web

from kvs_toolkit import bitstream
from kvs_toolkit.emulator.channels import CHANNELS, ChannelRecord, parse_channel_arn
from kvs_toolkit.emulator.context import EMULATOR, EmulatorContext, json_response, read_json
from kvs_toolkit.emulator.errors import InvalidArgumentError, ServiceError
from kvs_toolkit.emulator.media import stored_payload
from kvs_toolkit.emulator.signaling import HUB, SignalingHub
from kvs_toolkit.emulator.store import FragmentMeta
from kvs_toolkit.errors import BitstreamError
from kvs_toolkit.mkv import TrackInfo
from kvs_toolkit.mkv.writer import FrameData, cluster

__all__ = ["FragmentAssembler", "StorageSession", "install"]

logger = logging.getLogger(__name__)

_RTP_CLOCK: Final = 90_000
_H264_RTPMAP = re.compile(r"a=rtpmap:(\d+) H264/90000", re.IGNORECASE)
_ANSWER_TIMEOUT_S: Final = 15.0
_STRIP: Final = frozenset({bitstream.H264NalType.AUD})


class AccessDeniedError(ServiceError):
    code = "AccessDeniedException"
    status = 403


@dataclass(frozen=True, slots=True)
class StoredFragment:
    """A finished fragment ready for the store."""

    track: TrackInfo
    frames: tuple[FrameData, ...]
    producer_timestamp_ms: int
    duration_ms: int


@dataclass
class FragmentAssembler:
    """Sans-I/O: Annex-B access units with RTP timestamps in, key-frame-aligned
    fragments out. Frames before the first key frame (with SPS and PPS) are dropped;
    ``start_ms`` (epoch ms) is the first key frame's time."""

    start_ms: int
    track: TrackInfo | None = None
    _origin: int | None = None
    _frames: list[FrameData] = field(default_factory=list)
    dropped: int = 0

    def push(self, annexb: bytes, rtp_timestamp: int) -> StoredFragment | None:
        nals = [
            bytes(n)
            for n in bitstream.split_annexb(annexb)
            if n and bitstream.nal_type(n) not in _STRIP
        ]
        if not nals:
            return None
        keyframe = bitstream.is_keyframe(nals)
        if self.track is None:
            if not keyframe:
                self.dropped += 1
                return None
            try:
                private = bitstream.build_codec_private(nals)
            except BitstreamError:  # a key frame without SPS/PPS: wait for one that has
                self.dropped += 1
                return None
            sps = bitstream.parse_avcc(private).sps[0]
            parsed = bitstream.parse_h264_sps(sps)
            self.track = TrackInfo(
                number=1,
                codec_id="V_MPEG4/ISO/AVC",
                codec_private=private,
                name="webrtc",
                width=parsed.width,
                height=parsed.height,
            )
            self._origin = rtp_timestamp
        assert self._origin is not None
        # RTP timestamps wrap at 2**32 (13 hours at 90 kHz): count from the first one.
        offset_ms = ((rtp_timestamp - self._origin) % (1 << 32)) * 1000 // _RTP_CLOCK
        finished = self.flush() if keyframe and self._frames else None
        self._frames.append(
            FrameData(
                1,
                self.start_ms + offset_ms,
                bitstream.join_length_prefixed(nals),
                keyframe=keyframe,
            )
        )
        return finished

    def flush(self) -> StoredFragment | None:
        if not self._frames or self.track is None:
            return None
        frames, self._frames = tuple(self._frames), []
        times = [f.timecode for f in frames]
        span = times[-1] - times[0]
        duration = span + (span // (len(times) - 1) if len(times) > 1 else 0)
        return StoredFragment(self.track, frames, times[0], duration)


class StorageSession:
    """The emulator as a peer of one channel's master, recording into a stream."""

    def __init__(self, ctx: EmulatorContext, hub: SignalingHub, channel: ChannelRecord) -> None:
        self.ctx = ctx
        self.hub = hub
        self.channel = channel
        self.client_id = f"kvs-storage-{secrets.token_hex(6)}"
        self.assembler = FragmentAssembler(start_ms=int(time.time() * 1000))
        self.fragments_stored = 0
        self.frames_stored = 0
        self._answer: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._closed = asyncio.Event()
        self._pc: Any = None
        self._stream_name: str | None = None
        self._storing: set[asyncio.Future[None]] = set()

    async def _on_message(self, message: dict[str, Any]) -> None:
        kind = message.get("messageType")
        if kind == "SDP_ANSWER" and not self._answer.done():
            self._answer.set_result(message.get("messagePayload", ""))
        elif kind == "ICE_CANDIDATE" and self._pc is not None:
            await self._add_candidate(message.get("messagePayload", ""))
        elif kind == "GO_AWAY":
            self._closed.set()

    async def _add_candidate(self, payload: str) -> None:
        from aiortc.sdp import candidate_from_sdp

        try:
            value = json.loads(base64.b64decode(payload))
            text = str(value.get("candidate", "")).removeprefix("candidate:")
        except (ValueError, AttributeError):
            return
        if text:
            candidate = candidate_from_sdp(text)
            candidate.sdpMid = value.get("sdpMid")
            candidate.sdpMLineIndex = value.get("sdpMLineIndex")
            await self._pc.addIceCandidate(candidate)

    async def run(self) -> None:
        """Offer, record until the master leaves, store the last fragment."""
        from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

        stream_arn = self.channel.storage_stream_arn
        assert stream_arn is not None
        stream = await self.ctx.store.get_stream_by_arn(stream_arn)
        self._stream_name = stream.name
        peer = self.hub.new_peer(None, self.channel.name, self.client_id, sink=self._on_message)
        await self.hub.attach(peer)
        pc = self._pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        try:

            def on_state() -> None:
                if pc.connectionState in ("failed", "closed"):
                    self._closed.set()

            pc.on("connectionstatechange", on_state)
            transceiver = pc.addTransceiver("video", direction="recvonly")
            await pc.setLocalDescription(await pc.createOffer())
            offer = {"type": "offer", "sdp": pc.localDescription.sdp}
            text = json.dumps(
                {
                    "action": "SDP_OFFER",
                    "messagePayload": base64.b64encode(json.dumps(offer).encode()).decode(),
                }
            )
            await self.hub.receive(peer, text, self.channel.message_ttl_seconds)
            payload = await asyncio.wait_for(self._answer, _ANSWER_TIMEOUT_S)
            answer = json.loads(base64.b64decode(payload))
            payload_types = {int(pt) for pt in _H264_RTPMAP.findall(answer["sdp"])}
            if not payload_types:
                raise InvalidArgumentError("the master's answer has no H.264")
            self._tap(transceiver.receiver, payload_types)
            await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
            logger.info(
                "storage session %s: recording channel %s into stream %s",
                self.client_id,
                self.channel.name,
                stream.name,
            )
            await self._closed.wait()
        finally:
            await pc.close()
            self.hub.detach(peer)
            await asyncio.gather(*self._storing, return_exceptions=True)
            fragment = self.assembler.flush()
            if fragment is not None:
                await self._store(fragment)
            logger.info(
                "storage session %s ended: %d fragments, %d frames stored",
                self.client_id,
                self.fragments_stored,
                self.frames_stored,
            )

    def _tap(self, receiver: Any, payload_types: set[int]) -> None:
        from aiortc.codecs.h264 import h264_depayload
        from aiortc.jitterbuffer import JitterBuffer

        jitter = JitterBuffer(capacity=128, is_video=True)
        handle: Callable[..., Awaitable[None]] = receiver._handle_rtp_packet

        async def tapped(packet: Any, arrival_time_ms: int) -> None:
            if packet.payload_type in payload_types and packet.payload:
                try:
                    packet._data = h264_depayload(packet.payload)
                except ValueError:
                    packet = None
                if packet is not None:
                    _, frame = jitter.add(packet)
                    if frame is not None:
                        fragment = self.assembler.push(frame.data, frame.timestamp)
                        if fragment is not None:
                            storing = asyncio.ensure_future(self._store(fragment))
                            self._storing.add(storing)
                            storing.add_done_callback(self._storing.discard)
            await handle(packet, arrival_time_ms=arrival_time_ms)

        receiver._handle_rtp_packet = tapped

    async def _store(self, fragment: StoredFragment) -> None:
        assert self._stream_name is not None
        payload = stored_payload(
            (fragment.track,), cluster(fragment.producer_timestamp_ms, fragment.frames, sized=True)
        )
        meta = FragmentMeta(
            producer_timestamp_ms=fragment.producer_timestamp_ms,
            duration_ms=fragment.duration_ms,
        )
        try:
            await self.ctx.store.append_fragment(self._stream_name, payload, meta)
        except ServiceError as exc:  # the stream was deleted meanwhile
            logger.warning("storage session %s: %s", self.client_id, exc)
            return
        self.fragments_stored += 1
        self.frames_stored += len(fragment.frames)


SESSIONS = web.AppKey("kvs_webrtc_storage_sessions", dict[str, StorageSession])


async def join_storage_session(request: web.Request) -> web.Response:
    ctx = request.app[EMULATOR]
    body = await read_json(request)
    arn = body.get("channelArn")
    if not isinstance(arn, str):
        raise InvalidArgumentError("channelArn is required.")
    parse_channel_arn(arn, "channelArn")
    channel = request.app[CHANNELS].get_by_arn(arn)
    if channel.storage_status != "ENABLED" or channel.storage_stream_arn is None:
        raise InvalidArgumentError(
            f"The channel {channel.name} has no media storage configuration ENABLED."
        )
    hub = request.app[HUB]
    master = hub.master(channel.name)
    if master is None or master.retired:
        raise InvalidArgumentError(
            f"No master is connected to channel {channel.name}: connect it to signaling first."
        )
    sessions = request.app[SESSIONS]
    old = sessions.get(channel.name)
    if old is not None:
        old._closed.set()
    session = StorageSession(ctx, hub, channel)
    sessions[channel.name] = session

    async def run() -> None:
        try:
            await session.run()
        except (ServiceError, asyncio.TimeoutError) as exc:
            logger.warning("storage session for %s failed: %s", channel.name, exc)
        finally:
            if sessions.get(channel.name) is session:
                del sessions[channel.name]

    ctx.spawn(run(), name=f"storage {channel.name}")
    return json_response({})


def install(app: web.Application) -> None:
    """The ``kinesis-video-webrtc-storage`` routes (after :mod:`.signaling`'s installer)."""
    app[SESSIONS] = {}
    app.router.add_post("/joinStorageSession", join_storage_session)
