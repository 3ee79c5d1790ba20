"""PutMedia acknowledgement wire type and decoder."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvs_toolkit.acks import Ack, AckDecoder, AckEventType
from kvs_toolkit.errors import PutMediaError

from .conftest import feed_three_ways

SAMPLE = (
    b'{"EventType":"BUFFERING","FragmentTimecode":1595833960258,"FragmentNumber":"913"}\n'
    b'{"EventType":"RECEIVED","FragmentTimecode":1595833960258,"FragmentNumber":"913"}\n'
    b'{"EventType":"PERSISTED","FragmentTimecode":1595833960258,"FragmentNumber":"913"}\n'
    b'{"EventType":"IDLE"}'  # brace-matched, no newline: the C SDK's way
    b'{"EventType":"ERROR","FragmentTimecode":1595833962258,"ErrorId":4004,'
    b'"ErrorCode":"FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS"}\r\n'
)


class _Decoder(AckDecoder):
    def close(self) -> list[Ack]:  # type: ignore[override]
        super().close()
        return []


def test_decode_any_chunking() -> None:
    results = feed_three_ways(_Decoder, SAMPLE)
    assert all(r == results[0] for r in results)
    acks = list(results[0])
    assert [a.event_type for a in acks] == [
        AckEventType.BUFFERING,
        AckEventType.RECEIVED,
        AckEventType.PERSISTED,
        AckEventType.IDLE,
        AckEventType.ERROR,
    ]
    assert acks[2].fragment_number == "913"
    assert acks[2].fragment_timecode == 1595833960258
    assert (acks[4].error_id, acks[4].error_code) == (
        4004,
        "FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS",
    )
    assert not acks[4].retriable
    assert Ack.error(5000).retriable


def test_round_trip_bytes() -> None:
    for ack in (
        Ack(AckEventType.PERSISTED, 12, "99"),
        Ack(AckEventType.IDLE),
        Ack.error(4006, 7),
    ):
        assert Ack.parse(bytes(ack)) == ack
        assert bytes(Ack.parse(bytes(ack))) == bytes(ack)


def test_documented_wrapper_shape_and_braces_in_strings() -> None:
    decoder = AckDecoder()
    (ack,) = decoder.feed(
        b'{"Acknowledgement": {"EventType": "RECEIVED", "FragmentNumber": "a}{b"}}'
    )
    assert ack.fragment_number == "a}{b"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"<html>502 Bad Gateway</html>", "unexpected bytes between acknowledgements"),
        (b'{"EventType":"NOPE"}', "unknown acknowledgement EventType 'NOPE'"),
        (b'{"EventType":"ERROR","ErrorId":"x"}', "malformed acknowledgement field"),
        (b"{" + b" " * 70_000, "larger than 65536 bytes"),
    ],
)
def test_malformed(data: bytes, message: str) -> None:
    with pytest.raises(PutMediaError, match=message):
        AckDecoder().feed(data)


def test_cut_off_ack_is_an_error_at_close() -> None:
    decoder = AckDecoder()
    decoder.feed(b'{"EventType":"REC')
    with pytest.raises(PutMediaError, match="ended inside an acknowledgement"):
        decoder.close()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.integers(1, 50))
def test_any_bytes_decode_or_raise_putmedia_error(data: bytes, chunk: int) -> None:
    decoder = AckDecoder()
    try:
        for pos in range(0, len(data), chunk):
            decoder.feed(data[pos : pos + chunk])
        decoder.close()
    except PutMediaError:
        pass
