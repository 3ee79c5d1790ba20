"""Amazon Kinesis Video Streams with WebRTC from Python.

- :class:`SignalingClient`: the signaling channel's WebSocket (asyncio, SigV4
  presigned, reconnecting), with the sans-I/O message codec in :mod:`.messages`;
- :class:`Master`: serves a producer source to every viewer (aiortc; H.264 passed
  through);
- :class:`Viewer`: the master's video as decoded numpy frames.

aiortc is an optional dependency (``pip install kvs-toolkit[webrtc]``); it is imported
when a master or viewer starts. :func:`use_host_addresses` and
:func:`rtc_configuration` (in :mod:`.ice`) keep a local session on loopback.
"""

from __future__ import annotations

from kvs_toolkit.webrtc.client import ChannelEndpoint, SignalingClient, presign_url
from kvs_toolkit.webrtc.ice import LOOPBACK, rtc_configuration, use_host_addresses
from kvs_toolkit.webrtc.master import Master, SourceFanout
from kvs_toolkit.webrtc.messages import (
    IceCandidate,
    IncomingMessage,
    OutgoingMessage,
    SessionDescription,
    StatusResponse,
)
from kvs_toolkit.webrtc.viewer import Viewer, ViewerAudio, ViewerFrame

__all__ = [
    "LOOPBACK",
    "ChannelEndpoint",
    "IceCandidate",
    "IncomingMessage",
    "Master",
    "OutgoingMessage",
    "SessionDescription",
    "SignalingClient",
    "SourceFanout",
    "StatusResponse",
    "Viewer",
    "ViewerAudio",
    "ViewerFrame",
    "presign_url",
    "rtc_configuration",
    "use_host_addresses",
]
