"""The sans-I/O signaling message codec."""

from __future__ import annotations

import base64
import json

import pytest

from kvs_toolkit.errors import SignalingError
from kvs_toolkit.webrtc.messages import (
    MAX_MESSAGE_CHARS,
    IceCandidate,
    OutgoingMessage,
    SessionDescription,
    parse_incoming,
)


def test_outgoing_round_trip() -> None:
    offer = SessionDescription("offer", "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n")
    text = OutgoingMessage.offer(offer, correlation_id="c1").encode()
    body = json.loads(text)
    assert body["action"] == "SDP_OFFER"
    assert body["correlationId"] == "c1"
    assert "recipientClientId" not in body
    assert SessionDescription.from_payload(body["messagePayload"]) == offer
    candidate = IceCandidate("candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host", "0", 0)
    body = json.loads(OutgoingMessage.candidate(candidate, recipient_client_id="v").encode())
    assert body["recipientClientId"] == "v"
    assert IceCandidate.from_payload(body["messagePayload"]) == candidate


def test_payload_limit() -> None:
    big = SessionDescription("offer", "a" * 8000)
    with pytest.raises(SignalingError, match="over the service's limit of 10000"):
        OutgoingMessage.offer(big).encode()


def test_incoming_shapes() -> None:
    payload = SessionDescription("answer", "v=0").to_payload()
    message = parse_incoming(
        json.dumps({"senderClientId": "", "messageType": "SDP_ANSWER", "messagePayload": payload})
    )
    assert message is not None
    assert message.description() == SessionDescription("answer", "v=0")
    # capitalised keys, as some SDKs send, are read too
    message = parse_incoming(json.dumps({"MessageType": "GO_AWAY", "SenderClientId": "x"}))
    assert message is not None
    assert (message.message_type, message.sender_client_id) == ("GO_AWAY", "x")
    status = parse_incoming(
        json.dumps(
            {
                "messageType": "STATUS_RESPONSE",
                "statusResponse": {
                    "correlationId": "c9",
                    "errorType": "InvalidArgumentException",
                    "statusCode": "400",
                    "description": "bad",
                },
            }
        )
    )
    assert status is not None and status.status is not None
    assert status.status.correlation_id == "c9"
    assert status.status.status_code == "400"
    assert parse_incoming("") is None  # the service's keep-alive


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("not json", "not JSON"),
        ("[1]", "not a JSON object"),
        ('{"messagePayload": "eA=="}', "no messageType"),
        ('{"messageType": 5}', "must be a string"),
        ("x" * (MAX_MESSAGE_CHARS + 1), "over"),
    ],
)
def test_malformed_incoming(text: str, error: str) -> None:
    with pytest.raises(SignalingError, match=error):
        parse_incoming(text)


@pytest.mark.parametrize(
    "payload",
    [
        "%%%",
        base64.b64encode(b"[1, 2]").decode(),
        base64.b64encode(b'{"type": "pranswer", "sdp": "v=0"}').decode(),
        base64.b64encode(b'{"type": "offer"}').decode(),
    ],
)
def test_malformed_descriptions(payload: str) -> None:
    with pytest.raises(SignalingError):
        SessionDescription.from_payload(payload)


def test_malformed_candidates() -> None:
    for value in ({"sdpMid": "0"}, {"candidate": "c", "sdpMLineIndex": "0"}):
        with pytest.raises(SignalingError):
            IceCandidate.from_payload(base64.b64encode(json.dumps(value).encode()).decode())


def test_kvs_stun_uri() -> None:
    from kvs_toolkit.webrtc.client import kvs_stun_uri

    assert kvs_stun_uri("eu-west-1") == "stun:stun.kinesisvideo.eu-west-1.amazonaws.com:443"
    assert kvs_stun_uri("cn-north-1") == "stun:stun.kinesisvideo.cn-north-1.amazonaws.com.cn:443"
