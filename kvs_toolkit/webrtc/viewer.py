"""A KVS WebRTC viewer: the master's video as decoded numpy frames with timestamps.

``async for frame in Viewer(aws, "cam").frames()`` connects to the channel as a viewer,
offers to receive video (H.264 or VP8, whichever the master answers), and yields each
decoded picture as a :class:`ViewerFrame`. It ends when the master stops sending (its
track ends) or the connection fails. With ``on_audio`` it also asks for the master's
audio and calls ``on_audio`` with each decoded :class:`ViewerAudio` chunk.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from kvs_toolkit.errors import SignalingError
from kvs_toolkit.webrtc.client import SignalingClient, service_ice_servers
from kvs_toolkit.webrtc.ice import ice_servers_from_service, rtc_configuration
from kvs_toolkit.webrtc.messages import OutgoingMessage, SessionDescription

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    from aiortc import RTCIceServer

    from kvs_toolkit.aws import AwsAccess
    from kvs_toolkit.retry import RetryPolicy

__all__ = ["Viewer", "ViewerAudio", "ViewerFrame"]

log = logging.getLogger(__name__)

#: How long the master may take to answer an offer before the viewer gives up.
ANSWER_TIMEOUT_S: Final = 15.0


@dataclass(frozen=True, slots=True)
class ViewerFrame:
    """One decoded picture from the master.

    ``image`` is ``(height, width, 3)`` uint8 in ``pixel_format`` order (``bgr24`` by
    default), a new array (no memory shared with the decoder). ``timestamp`` is the
    sender's presentation time in seconds, from its RTP clock, relative to the first
    frame; ``received_at`` the local wall-clock time (epoch seconds) it was decoded.
    """

    index: int
    image: npt.NDArray[np.uint8]
    timestamp: float
    received_at: float
    width: int
    height: int

    def record(self) -> dict[str, Any]:
        """The JSON line of this frame, in the shape ``kvs consume`` writes."""
        return {
            "fragment_number": None,
            "producer_timestamp": None,
            "server_timestamp": round(self.received_at, 6),
            "timestamp": round(self.timestamp, 6),
            "keyframe": None,
            "width": self.width,
            "height": self.height,
            "track": 1,
            "index": self.index,
        }


@dataclass(frozen=True, slots=True)
class ViewerAudio:
    """20 ms or so of the master's audio: ``samples`` int16, shape ``(n, channels)``,
    at ``sample_rate`` (48 kHz from Opus); ``timestamp`` as for :class:`ViewerFrame`."""

    samples: npt.NDArray[np.int16]
    sample_rate: int
    timestamp: float


class Viewer:
    """A viewer of ``channel_name``; see the module docstring.

    ``client_id`` defaults to a random one. ``ice_servers``: default the service's
    (the region's STUN server and GetIceServerConfig's TURN; none from the emulator).
    ``connected_at`` / ``first_frame_at`` (``time.monotonic()``) measure
    connect-to-first-frame.
    """

    def __init__(
        self,
        aws: AwsAccess,
        channel_name: str,
        *,
        client_id: str | None = None,
        ca_file: str | Path | None = None,
        retry: RetryPolicy | None = None,
        pixel_format: str = "bgr24",
        ice_servers: Sequence[RTCIceServer] | None = None,
        on_audio: Callable[[ViewerAudio], None] | None = None,
    ) -> None:
        self.client_id = client_id or f"viewer-{uuid.uuid4().hex[:12]}"
        self.pixel_format = pixel_format
        self.on_audio = on_audio
        self._audio_task: asyncio.Task[None] | None = None
        self.aws = aws
        self.ice_servers = None if ice_servers is None else list(ice_servers)
        self.signaling = SignalingClient(
            aws, channel_name, role="VIEWER", client_id=self.client_id, ca_file=ca_file, retry=retry
        )
        self.connected_at: float | None = None
        self.first_frame_at: float | None = None
        self._pc: Any = None
        self._track: asyncio.Future[Any] | None = None
        self._messages: AsyncIterator[Any] | None = None

    async def frames(self) -> AsyncGenerator[ViewerFrame, None]:
        """Connect, negotiate and yield the master's frames until its video ends."""
        from aiortc.mediastreams import MediaStreamError

        self.connected_at = time.monotonic()
        await self.signaling.open()
        reader: asyncio.Task[None] | None = None
        try:
            track = await self._negotiate()
            reader = asyncio.ensure_future(self._read_signaling())
            origin: int | None = None
            index = 0
            while True:
                try:
                    frame = await track.recv()
                except MediaStreamError:
                    return
                if origin is None:
                    origin = frame.pts
                    self.first_frame_at = time.monotonic()
                image = frame.to_ndarray(format=self.pixel_format)
                yield ViewerFrame(
                    index=index,
                    image=image,
                    timestamp=float((frame.pts - origin) * frame.time_base),
                    received_at=time.time(),
                    width=frame.width,
                    height=frame.height,
                )
                index += 1
        finally:
            if reader is not None:
                reader.cancel()
            await self.close()

    async def close(self) -> None:
        if self._audio_task is not None:
            self._audio_task.cancel()
            await asyncio.gather(self._audio_task, return_exceptions=True)
            self._audio_task = None
        if self._pc is not None:
            await self._pc.close()
            self._pc = None
        await self.signaling.close()

    async def _negotiate(self) -> Any:
        from aiortc import RTCPeerConnection, RTCSessionDescription

        loop = asyncio.get_running_loop()
        if self.ice_servers is None:
            endpoint = self.signaling.endpoint
            assert endpoint is not None
            found = await asyncio.to_thread(service_ice_servers, self.aws, endpoint, self.client_id)
            self.ice_servers = ice_servers_from_service(found)
        pc = RTCPeerConnection(rtc_configuration(self.ice_servers))
        self._pc = pc
        self._track = loop.create_future()
        failed: asyncio.Future[str] = loop.create_future()

        @pc.on("track")
        def on_track(track: Any) -> None:
            if track.kind == "video" and self._track is not None and not self._track.done():
                self._track.set_result(track)
            elif track.kind == "audio" and self.on_audio is not None:
                self._audio_task = asyncio.ensure_future(self._read_audio(track, self.on_audio))

        @pc.on("connectionstatechange")
        def on_state() -> None:
            log.info("viewer %s: %s", self.client_id, pc.connectionState)
            if pc.connectionState == "failed" and not failed.done():
                failed.set_result(pc.connectionState)

        pc.addTransceiver("video", direction="recvonly")
        if self.on_audio is not None:
            pc.addTransceiver("audio", direction="recvonly")
        pc.createDataChannel("kvsDataChannel")
        await pc.setLocalDescription(await pc.createOffer())
        local = pc.localDescription
        await self.signaling.send(OutgoingMessage.offer(SessionDescription("offer", local.sdp)))
        messages = self._messages = aiter(self.signaling)
        deadline = loop.time() + ANSWER_TIMEOUT_S
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise SignalingError(f"viewer {self.client_id}: no answer from the master")
            try:
                message = await asyncio.wait_for(anext(messages), remaining)
            except asyncio.TimeoutError:
                continue
            if message.message_type == "SDP_ANSWER":
                answer = message.description()
                await pc.setRemoteDescription(RTCSessionDescription(sdp=answer.sdp, type="answer"))
                break
            if message.message_type == "STATUS_RESPONSE" and message.status is not None:
                raise SignalingError(
                    f"viewer {self.client_id}: the offer was refused: "
                    f"{message.status.error_type} {message.status.description}"
                )
            if message.message_type == "GO_AWAY":
                # reconnected by the client: offer again on the new connection
                await self.signaling.send(
                    OutgoingMessage.offer(SessionDescription("offer", local.sdp))
                )
        done, _ = await asyncio.wait(
            {self._track, failed}, timeout=ANSWER_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
        )
        if self._track not in done:
            raise SignalingError(f"viewer {self.client_id}: the connection to the master failed")
        return self._track.result()

    @staticmethod
    async def _read_audio(track: Any, on_audio: Callable[[ViewerAudio], None]) -> None:
        from aiortc.mediastreams import MediaStreamError

        origin: int | None = None
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if origin is None:
                origin = frame.pts
            channels = len(frame.layout.channels)
            on_audio(
                ViewerAudio(
                    samples=frame.to_ndarray().reshape(-1, channels),
                    sample_rate=frame.sample_rate,
                    timestamp=float((frame.pts - origin) * frame.time_base),
                )
            )

    async def _read_signaling(self) -> None:
        from aiortc.sdp import candidate_from_sdp

        assert self._messages is not None
        try:
            async for message in self._messages:
                if message.message_type == "ICE_CANDIDATE" and self._pc is not None:
                    value = message.candidate()
                    text = value.candidate.removeprefix("candidate:")
                    if text:
                        candidate = candidate_from_sdp(text)
                        candidate.sdpMid = value.sdp_mid
                        candidate.sdpMLineIndex = value.sdp_mline_index
                        await self._pc.addIceCandidate(candidate)
        except SignalingError as exc:
            log.warning("viewer %s: signaling ended: %s", self.client_id, exc)
