"""A KVS WebRTC master: streams a producer source to every viewer of a channel (aiortc).

The source is any :class:`~kvs_toolkit.producer.sources.FrameSource` (file, camera,
RTSP, Annex-B pipe, numpy). It is read once, in a thread, and fanned out to every
viewer's track (:class:`SourceFanout`). H.264 frames are passed through without
re-encoding (AVCC turned back into Annex-B with the parameter sets in front of each
key frame, then packetised by aiortc); other codecs (H.265) are decoded and encoded
again by aiortc's H.264 encoder (libx264), as is everything when ``encode=True``.
The source's audio (AAC, G.711) is decoded and sent as Opus to viewers that offer to
receive audio. A data channel a viewer opens is answered by echoing its messages.

A viewer joining late starts at the next key frame. Each viewer's offer is answered
with H.264 only; aiortc gathers its candidates before answering, so the master sends
no trickled candidates, and takes the viewer's ones (a browser trickles them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from kvs_toolkit import bitstream
from kvs_toolkit.errors import SignalingError
from kvs_toolkit.webrtc.client import SignalingClient, service_ice_servers
from kvs_toolkit.webrtc.ice import ice_servers_from_service, rtc_configuration
from kvs_toolkit.webrtc.messages import IncomingMessage, OutgoingMessage, SessionDescription

if TYPE_CHECKING:
    from aiortc import RTCIceServer, RTCPeerConnection

    from kvs_toolkit.aws import AwsAccess
    from kvs_toolkit.mkv import TrackInfo
    from kvs_toolkit.producer.fragmenter import EncodedFrame
    from kvs_toolkit.producer.sources import FrameSource
    from kvs_toolkit.retry import RetryPolicy

__all__ = ["Master", "SourceFanout"]

log = logging.getLogger(__name__)

_CODEC_H264: Final = "V_MPEG4/ISO/AVC"
_CODEC_H265: Final = "V_MPEGH/ISO/HEVC"
_CODEC_AAC: Final = "A_AAC"
_CODEC_ACM: Final = "A_MS/ACM"
_WAVE_ALAW: Final = 6
_WAVE_MULAW: Final = 7
_OPUS_RATE: Final = 48_000
_OPUS_FRAME: Final = 960  # 20 ms
#: Frames a viewer may fall behind before it skips to the next key frame (about 4 s).
_QUEUE_FRAMES: Final = 120
_TIME_BASE: Final = Fraction(1, 1000)
# An access unit delimiter (NAL type 9): a NAL unit of its own that decodes to no
# picture; two bytes, as RTP receivers refuse shorter NAL units.
_DELIMITER: Final = b"\x00\x00\x00\x01\x09\xf0"


@dataclass(eq=False)
class _Subscriber:
    queue: asyncio.Queue[EncodedFrame | None]
    track_number: int = 1
    waiting_for_keyframe: bool = True


class SourceFanout:
    """One :class:`FrameSource` read in a thread, its frames handed to every
    subscriber's queue on the event loop (video: track 1, audio: track 2).

    Reading starts with the first subscription (so a file plays from its start to the
    first viewer). A video subscriber gets frames from the next key frame on; one that
    falls :data:`_QUEUE_FRAMES` behind drops what it has and waits for the next key
    frame (an audio one just drops what waits). ``None`` in a queue means the source
    ended.
    """

    def __init__(self, source: FrameSource) -> None:
        self.source = source
        self._subscribers: list[_Subscriber] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.ended = asyncio.Event()
        self.error: BaseException | None = None
        self.frames_read = 0

    @property
    def video_track(self) -> TrackInfo:
        return next(t for t in self.source.tracks if t.number == 1)

    @property
    def audio_track(self) -> TrackInfo | None:
        return next((t for t in self.source.tracks if t.number == 2), None)

    def subscribe(self, track_number: int = 1) -> asyncio.Queue[EncodedFrame | None]:
        subscriber = _Subscriber(
            asyncio.Queue(_QUEUE_FRAMES), track_number, waiting_for_keyframe=track_number == 1
        )
        self._subscribers.append(subscriber)
        if self.ended.is_set():
            subscriber.queue.put_nowait(None)
        elif self._thread is None:
            self._loop = asyncio.get_running_loop()
            self._thread = threading.Thread(target=self._pump, name="webrtc-source", daemon=True)
            self._thread.start()
        return subscriber.queue

    def unsubscribe(self, queue: asyncio.Queue[EncodedFrame | None]) -> None:
        self._subscribers = [s for s in self._subscribers if s.queue is not queue]

    def _pump(self) -> None:
        assert self._loop is not None
        try:
            for frame in self.source:
                if self._stop.is_set():
                    break
                if frame.track_number == 1:
                    self.frames_read += 1
                self._loop.call_soon_threadsafe(self._deliver, frame)
        except BaseException as exc:  # reported to the master, not lost in the thread
            self.error = exc
        finally:
            self.source.close()
            with contextlib.suppress(RuntimeError):  # the loop is gone
                self._loop.call_soon_threadsafe(self._finish)

    def _deliver(self, frame: EncodedFrame) -> None:
        for subscriber in self._subscribers:
            if subscriber.track_number != frame.track_number:
                continue
            if subscriber.waiting_for_keyframe:
                if not frame.keyframe:
                    continue
                subscriber.waiting_for_keyframe = False
            try:
                subscriber.queue.put_nowait(frame)
            except asyncio.QueueFull:
                log.warning("a viewer fell %d frames behind: dropping them", _QUEUE_FRAMES)
                while not subscriber.queue.empty():
                    subscriber.queue.get_nowait()
                subscriber.waiting_for_keyframe = subscriber.track_number == 1

    def _finish(self) -> None:
        self.ended.set()
        for subscriber in self._subscribers:
            with contextlib.suppress(asyncio.QueueFull):
                subscriber.queue.put_nowait(None)

    def stop(self) -> None:
        self._stop.set()


def _annexb_maker(track: TrackInfo) -> Callable[[EncodedFrame], bytes]:
    config = bitstream.parse_avcc(track.codec_private)
    parameter_sets = bitstream.join_annexb([*config.sps, *config.pps])

    def annexb(frame: EncodedFrame) -> bytes:
        data = bitstream.avcc_to_annexb(frame.data, config.length_size)
        # mp4/mkv key frames carry no SPS/PPS in band: a WebRTC decoder needs them.
        return parameter_sets + data if frame.keyframe else data

    return annexb


def _make_track(fanout: SourceFanout, encode: bool) -> Any:
    """A video track of ``fanout`` for one viewer: packets (pass-through) or frames."""
    import av
    from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

    info = fanout.video_track
    passthrough = info.codec_id == _CODEC_H264 and not encode
    queue = fanout.subscribe()

    class SourceTrack(MediaStreamTrack):
        kind = "video"

        def __init__(self) -> None:
            super().__init__()
            self._origin: int | None = None
            self._annexb = _annexb_maker(info) if passthrough else None
            self._decoder: Any = None
            self._pending: list[Any] = []
            self._last_pts: int | None = None
            self._flushed = False
            self._ended = False

        def _pts(self, frame: EncodedFrame) -> int:
            if self._origin is None:
                self._origin = frame.timestamp_ms
            return frame.timestamp_ms - self._origin

        async def _next(self) -> EncodedFrame | None:
            frame = None if self._ended else await queue.get()
            if frame is None:
                self._ended = True
            return frame

        def _end(self) -> None:
            self.stop()
            raise MediaStreamError

        async def recv(self) -> Any:
            if self._annexb is not None:
                frame = await self._next()
                if frame is None:
                    if self._last_pts is None or self._flushed:
                        self._end()
                    # A receiver's jitter buffer hands a frame on when the next one's
                    # packets arrive: a delimiter as one more access unit releases the
                    # real last frame.
                    self._flushed = True
                    packet = av.Packet(_DELIMITER)
                    packet.pts = (self._last_pts or 0) + 1
                else:
                    packet = av.Packet(self._annexb(frame))
                    packet.pts = self._last_pts = self._pts(frame)
                packet.time_base = _TIME_BASE
                return packet
            while not self._pending:
                frame = await self._next()
                if frame is None:
                    self._end()
                else:
                    self._pending = await asyncio.to_thread(self._decode, frame)
            return self._pending.pop(0)

        def _decode(self, frame: EncodedFrame) -> list[Any]:
            if self._decoder is None:
                name = {_CODEC_H264: "h264", _CODEC_H265: "hevc"}.get(info.codec_id)
                if name is None:
                    raise MediaStreamError(f"cannot decode {info.codec_id}")
                self._decoder = av.CodecContext.create(name, "r")
                self._decoder.extradata = info.codec_private
            packet = av.Packet(bytes(frame.data))
            packet.pts = self._pts(frame)
            packet.time_base = _TIME_BASE
            decoded = []
            for picture in self._decoder.decode(packet):
                picture.time_base = _TIME_BASE
                decoded.append(picture)
            return decoded

        def stop(self) -> None:
            fanout.unsubscribe(queue)
            super().stop()

    return SourceTrack()


def _audio_decoder(info: TrackInfo) -> Any:
    """A PyAV decoder for the source's audio track: AAC, or G.711 in A_MS/ACM."""
    import av

    decoder: Any
    if info.codec_id == _CODEC_AAC:
        decoder = av.CodecContext.create("aac", "r")
        decoder.extradata = info.codec_private
        return decoder
    if info.codec_id == _CODEC_ACM and len(info.codec_private) >= 2:
        tag = int.from_bytes(info.codec_private[:2], "little")
        name = {_WAVE_ALAW: "pcm_alaw", _WAVE_MULAW: "pcm_mulaw"}.get(tag)
        if name is not None:
            decoder = av.CodecContext.create(name, "r")
            decoder.sample_rate = int(info.sampling_frequency or 8000)
            decoder.layout = "stereo" if info.channels == 2 else "mono"
            return decoder
    return None


def _make_audio_track(fanout: SourceFanout) -> Any:
    """An audio track of ``fanout`` for one viewer, or None when the source has no audio
    this master can decode. Frames go to aiortc as 20 ms of s16 48 kHz (its Opus
    encoder's input, one RTP packet each)."""
    import av
    from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

    info = fanout.audio_track
    if info is None:
        return None
    decoder = _audio_decoder(info)
    if decoder is None:
        log.warning("audio %s is not sent: only AAC and G.711 are decoded", info.codec_id)
        return None
    queue = fanout.subscribe(2)
    layout = "stereo" if info.channels == 2 else "mono"

    class SourceAudioTrack(MediaStreamTrack):
        kind = "audio"

        def __init__(self) -> None:
            super().__init__()
            self._resampler = av.AudioResampler(
                format="s16", layout=layout, rate=_OPUS_RATE, frame_size=_OPUS_FRAME
            )
            self._pending: list[Any] = []
            self._pts = 0

        async def recv(self) -> Any:
            while not self._pending:
                frame = await queue.get()
                if frame is None:
                    fanout.unsubscribe(queue)
                    self.stop()
                    raise MediaStreamError
                self._pending = await asyncio.to_thread(self._decode, frame)
            return self._pending.pop(0)

        def _decode(self, frame: EncodedFrame) -> list[Any]:
            out = []
            try:
                decoded = decoder.decode(av.Packet(bytes(frame.data)))
            except av.FFmpegError as exc:  # a corrupt frame is skipped, not fatal
                log.warning("audio frame not decoded: %s", exc)
                return []
            for samples in decoded:
                samples.pts = None
                for chunk in self._resampler.resample(samples):
                    chunk.pts = self._pts
                    chunk.time_base = Fraction(1, _OPUS_RATE)
                    self._pts += chunk.samples
                    out.append(chunk)
            return out

        def stop(self) -> None:
            fanout.unsubscribe(queue)
            super().stop()

    return SourceAudioTrack()


@dataclass(eq=False)
class _Session:
    pc: RTCPeerConnection
    track: Any
    audio: Any = None


class Master:
    """A channel's master serving ``source`` to its viewers.

    ``await master.run()`` connects to the channel and answers viewers until the source
    ends (then returns once viewers got the last frame) or :meth:`stop` is called.
    ``ca_file``: the emulator's CA for ``wss://``. ``encode``: decode and encode again
    with libx264 even for H.264 (the benchmark's reference). ``storage``: once connected,
    call JoinStorageSession so the service records the media into the channel's stream
    (WebRTC ingestion; the channel's media storage must be ENABLED).
    ``reconnect_on_go_away=False``: stop when the service says GO_AWAY (another master
    took the channel) instead of reconnecting (see :class:`SignalingClient`).
    ``ice_servers``: default the service's (the region's STUN server and
    GetIceServerConfig's TURN servers; none from the emulator).
    """

    def __init__(
        self,
        aws: AwsAccess,
        channel_name: str,
        source: FrameSource,
        *,
        ca_file: str | Path | None = None,
        encode: bool = False,
        retry: RetryPolicy | None = None,
        storage: bool = False,
        reconnect_on_go_away: bool = True,
        ice_servers: Sequence[RTCIceServer] | None = None,
    ) -> None:
        self.aws = aws
        self.channel_name = channel_name
        self.fanout = SourceFanout(source)
        self.encode = encode
        self.storage = storage
        self.ice_servers = None if ice_servers is None else list(ice_servers)
        self.signaling = SignalingClient(
            aws,
            channel_name,
            role="MASTER",
            ca_file=ca_file,
            retry=retry,
            reconnect_on_go_away=reconnect_on_go_away,
        )
        self.sessions: dict[str, _Session] = {}
        self._stopped = asyncio.Event()
        self.connected = asyncio.Event()

    def stop(self) -> None:
        self._stopped.set()

    async def run(self) -> None:
        await self.signaling.open()
        if self.ice_servers is None:
            endpoint = self.signaling.endpoint
            assert endpoint is not None
            found = await asyncio.to_thread(service_ice_servers, self.aws, endpoint)
            self.ice_servers = ice_servers_from_service(found)
        self.connected.set()
        reader = asyncio.ensure_future(self._read_signaling())
        ended = asyncio.ensure_future(self.fanout.ended.wait())
        stopped = asyncio.ensure_future(self._stopped.wait())
        try:
            if self.storage:
                from kvs_toolkit.webrtc.storage import join_storage_session

                endpoint = self.signaling.endpoint
                assert endpoint is not None
                await asyncio.to_thread(join_storage_session, self.aws, endpoint)
            done, _ = await asyncio.wait(
                {reader, ended, stopped}, return_when=asyncio.FIRST_COMPLETED
            )
            if reader in done:
                reader.result()  # signaling gave up: raise its error
            if ended in done:
                await self._drain()
            if self.fanout.error is not None:
                raise SignalingError(
                    f"the source failed: {self.fanout.error}"
                ) from self.fanout.error
        finally:
            for task in (reader, ended, stopped):
                task.cancel()
            await asyncio.gather(reader, ended, stopped, return_exceptions=True)
            await self.close()

    async def _drain(self, timeout: float = 5.0) -> None:
        # The source ended: give each viewer's sender time to send the last frames.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline and any(
            s.track.readyState != "ended" for s in self.sessions.values()
        ):
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # the last packets leave the sender's loop

    async def close(self) -> None:
        self.fanout.stop()
        sessions, self.sessions = list(self.sessions.values()), {}
        await asyncio.gather(*(s.pc.close() for s in sessions), return_exceptions=True)
        await self.signaling.close()

    async def _read_signaling(self) -> None:
        async for message in self.signaling:
            try:
                await self._handle(message)
            except SignalingError as exc:
                log.warning("viewer %s: %s", message.sender_client_id or "?", exc)

    async def _handle(self, message: IncomingMessage) -> None:
        kind = message.message_type
        if kind == "SDP_OFFER":
            await self._answer(message.sender_client_id, message.description())
        elif kind == "ICE_CANDIDATE":
            await self._add_candidate(message)
        elif kind == "STATUS_RESPONSE" and message.status is not None:
            log.warning(
                "signaling refused a message: %s %s",
                message.status.error_type,
                message.status.description,
            )
        elif kind in ("GO_AWAY", "RECONNECT_ICE_SERVER"):
            log.info("signaling: %s", kind)

    async def _answer(self, viewer: str, offer: SessionDescription) -> None:
        from aiortc import RTCPeerConnection, RTCRtpSender, RTCSessionDescription

        old = self.sessions.pop(viewer, None)
        if old is not None:
            await old.pc.close()
        pc = RTCPeerConnection(rtc_configuration(self.ice_servers))
        track = _make_track(self.fanout, self.encode)
        # audio when the source has it and the viewer asks for it
        audio = _make_audio_track(self.fanout) if "\nm=audio " in offer.sdp else None
        session = _Session(pc, track, audio)
        self.sessions[viewer] = session

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            log.info("viewer %s: %s", viewer, pc.connectionState)
            if pc.connectionState in ("failed", "closed"):
                track.stop()
                if audio is not None:
                    audio.stop()
                if self.sessions.get(viewer) is session:
                    del self.sessions[viewer]
                await pc.close()

        @pc.on("datachannel")
        def on_datachannel(channel: Any) -> None:
            def on_message(message: Any) -> None:
                # The KVS samples echo data-channel messages back; so does this master.
                channel.send(message)

            channel.on("message", on_message)

        # The transceiver exists before the offer is applied so that its codec
        # preference (H.264 only) is what the offer is matched against.
        transceiver = pc.addTransceiver(track, direction="sendonly")
        transceiver.setCodecPreferences(
            [
                c
                for c in RTCRtpSender.getCapabilities("video").codecs
                if c.mimeType.lower() in ("video/h264", "video/rtx")
            ]
        )
        if audio is not None:
            pc.addTransceiver(audio, direction="sendonly")
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer.sdp, type="offer"))
        except Exception as exc:  # aiortc raises its own errors for unusable offers
            await pc.close()
            del self.sessions[viewer]
            raise SignalingError(f"cannot use the offer (it must accept H.264): {exc}") from exc
        answer = await pc.createAnswer()
        await pc.setLocalDescription(answer)
        local = pc.localDescription
        await self.signaling.send(
            OutgoingMessage.answer(
                SessionDescription("answer", local.sdp), recipient_client_id=viewer
            )
        )
        log.info("viewer %s: answered", viewer)

    async def _add_candidate(self, message: IncomingMessage) -> None:
        from aiortc.sdp import candidate_from_sdp

        session = self.sessions.get(message.sender_client_id)
        if session is None:
            return
        value = message.candidate()
        text = value.candidate.removeprefix("candidate:")
        if not text:
            return  # end of candidates
        candidate = candidate_from_sdp(text)
        candidate.sdpMid = value.sdp_mid
        candidate.sdpMLineIndex = value.sdp_mline_index
        await session.pc.addIceCandidate(candidate)
