"""KVS WebRTC signaling messages, sans I/O: text in, messages out, and back.

Clients send ``{"action", "messagePayload", "recipientClientId"?, "correlationId"?}``;
the service sends ``{"senderClientId", "messageType", "messagePayload",
"statusResponse"?}``. ``messagePayload`` is base64 of a JSON object: an SDP
(``{"type": "offer"|"answer", "sdp"}``) or an ICE candidate (``{"candidate",
"sdpMid", "sdpMLineIndex"}``); system messages (``GO_AWAY``,
``RECONNECT_ICE_SERVER``, ``STATUS_RESPONSE``) have an empty payload. See
docs/kvs-wire.md for the service's limits.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias

from kvs_toolkit.errors import SignalingError

__all__ = [
    "MAX_MESSAGE_CHARS",
    "MAX_PAYLOAD_CHARS",
    "Action",
    "IceCandidate",
    "IncomingMessage",
    "OutgoingMessage",
    "SessionDescription",
    "StatusResponse",
    "parse_incoming",
]

Action: TypeAlias = Literal["SDP_OFFER", "SDP_ANSWER", "ICE_CANDIDATE"]
ACTIONS: Final = ("SDP_OFFER", "SDP_ANSWER", "ICE_CANDIDATE")
#: The service's limit on ``messagePayload`` (10 k characters of base64).
MAX_PAYLOAD_CHARS: Final = 10_000
#: What the codec accepts from the service in one WebSocket message (bounded parsing).
MAX_MESSAGE_CHARS: Final = 64 * 1024


def _encode_payload(data: Mapping[str, Any]) -> str:
    return base64.b64encode(json.dumps(data, separators=(",", ":")).encode()).decode("ascii")


def _decode_payload(text: str) -> dict[str, Any]:
    try:
        value = json.loads(base64.b64decode(text, validate=True))
    except (binascii.Error, ValueError) as exc:
        raise SignalingError(f"messagePayload is not base64 of JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise SignalingError("messagePayload is not a JSON object")
    return value


@dataclass(frozen=True, slots=True)
class SessionDescription:
    """An SDP offer or answer."""

    type: Literal["offer", "answer"]
    sdp: str

    def to_payload(self) -> str:
        return _encode_payload({"type": self.type, "sdp": self.sdp})

    @classmethod
    def from_payload(cls, text: str) -> SessionDescription:
        value = _decode_payload(text)
        kind, sdp = value.get("type"), value.get("sdp")
        if kind not in ("offer", "answer") or not isinstance(sdp, str):
            raise SignalingError("an SDP payload needs type offer|answer and an sdp string")
        return cls(kind, sdp)


@dataclass(frozen=True, slots=True)
class IceCandidate:
    """A trickled ICE candidate (``candidate`` is the SDP attribute value)."""

    candidate: str
    sdp_mid: str | None = None
    sdp_mline_index: int | None = None

    def to_payload(self) -> str:
        return _encode_payload(
            {
                "candidate": self.candidate,
                "sdpMid": self.sdp_mid,
                "sdpMLineIndex": self.sdp_mline_index,
            }
        )

    @classmethod
    def from_payload(cls, text: str) -> IceCandidate:
        value = _decode_payload(text)
        candidate = value.get("candidate")
        mid = value.get("sdpMid")
        index = value.get("sdpMLineIndex")
        if not isinstance(candidate, str):
            raise SignalingError("an ICE candidate payload needs a candidate string")
        if mid is not None and not isinstance(mid, str):
            raise SignalingError("sdpMid must be a string")
        if index is not None and (isinstance(index, bool) or not isinstance(index, int)):
            raise SignalingError("sdpMLineIndex must be an integer")
        return cls(candidate, mid, index)


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """A message to the service; :meth:`encode` is the WebSocket text."""

    action: Action
    payload: str  # base64, as made by SessionDescription/IceCandidate.to_payload
    recipient_client_id: str | None = None
    correlation_id: str | None = None

    def encode(self) -> str:
        if len(self.payload) > MAX_PAYLOAD_CHARS:
            raise SignalingError(
                f"{self.action} payload of {len(self.payload)} characters is over the "
                f"service's limit of {MAX_PAYLOAD_CHARS}"
            )
        body: dict[str, str] = {"action": self.action, "messagePayload": self.payload}
        if self.recipient_client_id is not None:
            body["recipientClientId"] = self.recipient_client_id
        if self.correlation_id is not None:
            body["correlationId"] = self.correlation_id
        return json.dumps(body, separators=(",", ":"))

    @classmethod
    def offer(cls, description: SessionDescription, **kw: Any) -> OutgoingMessage:
        return cls("SDP_OFFER", description.to_payload(), **kw)

    @classmethod
    def answer(cls, description: SessionDescription, **kw: Any) -> OutgoingMessage:
        return cls("SDP_ANSWER", description.to_payload(), **kw)

    @classmethod
    def candidate(cls, candidate: IceCandidate, **kw: Any) -> OutgoingMessage:
        return cls("ICE_CANDIDATE", candidate.to_payload(), **kw)


@dataclass(frozen=True, slots=True)
class StatusResponse:
    """Why the service refused a message (``correlation_id`` names it)."""

    correlation_id: str | None
    error_type: str
    status_code: str
    description: str


@dataclass(frozen=True, slots=True)
class IncomingMessage:
    """A message from the service."""

    message_type: str
    sender_client_id: str
    payload: str
    status: StatusResponse | None = None

    def description(self) -> SessionDescription:
        return SessionDescription.from_payload(self.payload)

    def candidate(self) -> IceCandidate:
        return IceCandidate.from_payload(self.payload)


def _text(body: Mapping[str, Any], *keys: str) -> str:
    for key in keys:
        value = body.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            raise SignalingError(f"{key} must be a string")
        return value
    return ""


def parse_incoming(text: str | bytes) -> IncomingMessage | None:
    """One WebSocket text from the service as a message; ``None`` for an empty one
    (the service's keep-alives are empty)."""
    if len(text) > MAX_MESSAGE_CHARS:
        raise SignalingError(
            f"a signaling message of {len(text)} characters is over {MAX_MESSAGE_CHARS}"
        )
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    if not text.strip():
        return None
    try:
        body = json.loads(text)
    except ValueError as exc:
        raise SignalingError(f"a signaling message is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise SignalingError("a signaling message is not a JSON object")
    message_type = _text(body, "messageType", "MessageType")
    if not message_type:
        raise SignalingError("a signaling message has no messageType")
    status: StatusResponse | None = None
    raw_status = body.get("statusResponse") or body.get("StatusResponse")
    if isinstance(raw_status, dict):
        status = StatusResponse(
            correlation_id=_text(raw_status, "correlationId") or None,
            error_type=_text(raw_status, "errorType"),
            status_code=str(raw_status.get("statusCode", "")),
            description=_text(raw_status, "description"),
        )
    return IncomingMessage(
        message_type=message_type,
        sender_client_id=_text(body, "senderClientId", "SenderClientId"),
        payload=_text(body, "messagePayload", "MessagePayload"),
        status=status,
    )
