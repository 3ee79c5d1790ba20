"""Hostile input against the emulator run as a subprocess: every answer is an error in
the service's shape (or an ERROR ack), nothing costs another stream its data, and the
process stays up with bounded memory. The fixture fails any test after which the
emulator logged a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from kvs_toolkit.acks import Ack, AckEventType
from kvs_toolkit.mkv import Tag, ids
from kvs_toolkit.mkv.ebml import element, encode_id, encode_size, string_element
from kvs_toolkit.mkv.writer import FrameData, MkvWriter, cluster, tags_element

from .conftest import ACCESS_KEY, SECRET, ClientFactory
from .process import (
    BASE_MS,
    EMPTY_SHA256,
    VIDEO,
    EmulatorProcess,
    call,
    create_stream,
    frames,
    put_media,
    request,
    run_emulator,
    sdk_upload,
    signed_headers,
)

_REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def emu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    with run_emulator(tmp_path_factory.mktemp("hostile")) as process:
        yield process


def kinds(acks: list[Ack]) -> list[str]:
    return [
        f"ERROR {a.error_id}" if a.event_type == AckEventType.ERROR else a.event_type.value
        for a in acks
        if a.event_type != AckEventType.IDLE
    ]


def header() -> bytes:
    return MkvWriter([VIDEO], segment_uid=b"\x02" * 16).header()


def nested_simple_tags(depth: int) -> bytes:
    """A Tags element with ``depth`` SimpleTags nested in each other (built without
    recursion, innermost first)."""
    inner = string_element(ids.TAG_NAME, "deep") + string_element(ids.TAG_STRING, "x")
    simple = element(ids.SIMPLE_TAG, inner)
    for _ in range(depth - 1):
        simple = element(ids.SIMPLE_TAG, string_element(ids.TAG_NAME, "d") + simple)
    return element(ids.TAGS, element(ids.TAG, simple))


# --- GetMedia -------------------------------------------------------------------------------


def test_getmedia_checks_its_input_before_answering(
    emu: EmulatorProcess, make_client: ClientFactory
) -> None:
    create_stream(emu.url, "gm")
    media = make_client("kinesis-video-media", emu.url)
    for selector in (
        {"StartSelectorType": "FRAGMENT_NUMBER", "AfterFragmentNumber": "not-a-number"},
        {"StartSelectorType": "CONTINUATION_TOKEN", "ContinuationToken": "12ab"},
    ):
        with pytest.raises(ClientError) as info:
            media.get_media(StreamName="gm", StartSelector=selector)
        assert info.value.response["Error"]["Code"] == "InvalidArgumentException"
    # botocore will not send these; a raw client can.
    for start in (b"1e300", b"-1e300", b"NaN"):
        body = b'{"StreamName":"gm","StartSelector":{"StartSelectorType":"PRODUCER_TIMESTAMP",'
        reply = request(emu.url, "/getMedia", body + b'"StartTimestamp":' + start + b"}}")
        assert reply.status == 400, reply.body


# --- one stream cannot hurt another -----------------------------------------------------------


def test_out_of_range_timestamp_is_4007_and_costs_no_other_stream_anything(
    emu: EmulatorProcess, make_client: ClientFactory
) -> None:
    create_stream(emu.url, "victim")
    create_stream(emu.url, "attacker")
    count = 60
    results: dict[str, list[Ack]] = {}

    def victim() -> None:
        fragments = [frames(BASE_MS + 2000 * n, count=2, size=100) for n in range(count)]
        results["victim"] = put_media(emu.url, "victim", sdk_upload(fragments)).acks()

    thread = threading.Thread(target=victim)
    thread.start()
    huge = 1 << 62  # ms: past year 9999, and far past what SQLite's int64 holds in us
    attacker = [header()] + [
        cluster(huge + n, [FrameData(1, huge + n, b"\x00" * 50, keyframe=True)])
        for n in range(count)
    ]
    results["attacker"] = put_media(emu.url, "attacker", attacker).acks()
    thread.join(60)
    assert kinds(results["victim"]).count("PERSISTED") == count
    assert "ERROR 4007" in kinds(results["attacker"])
    assert "PERSISTED" not in kinds(results["attacker"])
    archived = make_client("kinesis-video-archived-media", emu.url)
    assert archived.list_fragments(StreamName="attacker")["Fragments"] == []
    assert len(archived.list_fragments(StreamName="victim")["Fragments"]) == count


# --- bounded parsing ----------------------------------------------------------------------------


def test_huge_tags_element_is_refused_at_once(emu: EmulatorProcess) -> None:
    create_stream(emu.url, "tags-claim")
    rss_before = emu.rss_bytes()
    claim = encode_id(ids.TAGS) + encode_size(45_000_000)
    filler = (b"\x00" * 65536 for _ in range(200))  # 13 MB of the claimed 45 MB
    reply = put_media(emu.url, "tags-claim", [header(), claim, *filler])
    assert kinds(reply.acks()) == ["ERROR 4006"]
    assert emu.rss_bytes() - rss_before < 40_000_000


def test_tag_flood_before_the_first_cluster_is_bounded(emu: EmulatorProcess) -> None:
    create_stream(emu.url, "tag-flood")
    create_stream(emu.url, "bystander")
    rss_before = emu.rss_bytes()
    small = tags_element([Tag(f"n{i}", "v" * 40) for i in range(200)])

    def flood() -> Iterator[bytes]:
        yield header()
        for _ in range(2000):  # about 20 MB of small Tags elements, no Cluster
            yield small

    slowest = 0.0
    stop = threading.Event()

    def bystander() -> None:
        nonlocal slowest
        while not stop.is_set():
            started = time.monotonic()
            reply = call(emu.url, "/describeStream", {"StreamName": "bystander"})
            assert reply.status == 200
            slowest = max(slowest, time.monotonic() - started)
            time.sleep(0.01)

    thread = threading.Thread(target=bystander)
    thread.start()
    try:
        reply = put_media(emu.url, "tag-flood", flood())
    finally:
        stop.set()
        thread.join(30)
    assert kinds(reply.acks()) == ["ERROR 4009"]
    assert emu.rss_bytes() - rss_before < 60_000_000
    assert slowest < 2.0


def test_deep_nesting_is_an_error_ack_not_a_crash(emu: EmulatorProcess) -> None:
    create_stream(emu.url, "deep")
    reply = put_media(emu.url, "deep", [header(), nested_simple_tags(5000)])
    assert reply.status == 200
    assert kinds(reply.acks()) == ["ERROR 4006"]
    # still serving, with valid uploads after it
    ok = put_media(emu.url, "deep", sdk_upload([frames(BASE_MS)]))
    assert kinds(ok.acks()) == ["BUFFERING", "RECEIVED", "PERSISTED"]


def test_deep_nesting_in_kvs_inspect_is_a_clean_error(tmp_path: Path) -> None:
    path = tmp_path / "deep.mkv"
    path.write_bytes(header() + nested_simple_tags(5000) + sdk_upload([frames(BASE_MS)])[1])
    result = subprocess.run(
        [sys.executable, "-m", "kvs_toolkit.cli", "inspect", str(path)],
        capture_output=True,
        check=False,
        timeout=60,
        env={"PYTHONPATH": str(_REPO), "PATH": "/usr/bin:/bin"},
    )
    assert b"Traceback" not in result.stderr
    assert b"nested deeper" in result.stderr
    assert result.returncode != 0


def test_a_void_claiming_more_than_the_upload_holds_is_an_error_ack(
    emu: EmulatorProcess,
) -> None:
    create_stream(emu.url, "void")
    void = encode_id(ids.VOID) + encode_size(10_000_000) + b"\x00" * 1000
    after = cluster(BASE_MS + 2000, frames(BASE_MS + 2000))
    # Between fragments (the first closed by END_OF_FRAGMENT): it is kept, the rest is
    # an error.
    reply = put_media(emu.url, "void", [*sdk_upload([frames(BASE_MS)]), void, after])
    assert kinds(reply.acks()) == ["BUFFERING", "RECEIVED", "PERSISTED", "ERROR 4006"]
    # Inside an unknown-size Cluster (a Void may sit there): that fragment's error.
    upload = sdk_upload([frames(BASE_MS + 4000)], end_of_fragment=False)
    reply = put_media(emu.url, "void", [*upload, void, after])
    assert kinds(reply.acks()) == ["BUFFERING", "ERROR 4006"]


def test_a_block_the_writer_cannot_retime_is_stored(
    emu: EmulatorProcess, make_client: ClientFactory
) -> None:
    # Legal MKV: TimecodeScale 1 s, a block 100 units (100 s) after its Cluster's time.
    create_stream(emu.url, "coarse")
    writer = MkvWriter([VIDEO], timecode_scale_ns=1_000_000_000, segment_uid=b"\x03" * 16)
    start_s = BASE_MS // 1000
    block = FrameData(1, start_s + 100, b"\x11" * 100, keyframe=True)
    reply = put_media(emu.url, "coarse", [writer.header(), cluster(start_s, [block])])
    assert kinds(reply.acks()) == ["BUFFERING", "RECEIVED", "PERSISTED"]
    archived = make_client("kinesis-video-archived-media", emu.url)
    (fragment,) = archived.list_fragments(StreamName="coarse")["Fragments"]
    assert fragment["ProducerTimestamp"].timestamp() == start_s


# --- numbers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b'{"StreamName":"nums","MaxResults":' + b"9" * 4300 + b"}",
        b'{"StreamName":"nums","MaxResults":' + b"9" * 5000 + b"}",
        b'{"StreamName":"nums","FragmentSelector":{"FragmentSelectorType":'
        b'"PRODUCER_TIMESTAMP","TimestampRange":{"StartTimestamp":NaN,"EndTimestamp":1}}}',
        b'{"StreamName":"nums","FragmentSelector":{"FragmentSelectorType":'
        b'"PRODUCER_TIMESTAMP","TimestampRange":{"StartTimestamp":0,"EndTimestamp":Infinity}}}',
        b'{"StreamName":"nums","FragmentSelector":{"FragmentSelectorType":'
        b'"PRODUCER_TIMESTAMP","TimestampRange":{"StartTimestamp":0,"EndTimestamp":1e300}}}',
    ],
)
def test_numbers_in_json_are_4xx(emu: EmulatorProcess, body: bytes) -> None:
    create_stream(emu.url, "nums") if not _exists(emu, "nums") else None
    reply = request(emu.url, "/listFragments", body, {"Content-Type": "application/json"})
    assert 400 <= reply.status < 500, reply.body
    assert reply.headers["x-amzn-errortype"] in {
        "InvalidArgumentException",
        "SerializationException",
    }
    assert json.loads(reply.body)["Message"]


def _exists(emu: EmulatorProcess, name: str) -> bool:
    return call(emu.url, "/describeStream", {"StreamName": name}).status == 200


@pytest.mark.parametrize("limit", ["%C2%B2", "9" * 4300, "-1", "1e3", "%EF%BC%95"])
def test_numbers_in_query_strings_are_4xx(emu: EmulatorProcess, limit: str) -> None:
    create_stream(emu.url, "qs") if not _exists(emu, "qs") else None
    reply = request(emu.url, f"/_emulator/api/fragments?stream=qs&limit={limit}", b"", method="GET")
    assert reply.status == 400, reply.body


@pytest.mark.parametrize("value", ["nan", "inf", "1e300", "-5"])
def test_producer_start_timestamp_out_of_range_is_4xx(emu: EmulatorProcess, value: str) -> None:
    create_stream(emu.url, "start") if not _exists(emu, "start") else None
    extra = {"x-amzn-producer-start-timestamp": value, "x-amzn-fragment-timecode-type": "RELATIVE"}
    reply = put_media(emu.url, "start", sdk_upload([frames(0)]), extra=extra)
    assert reply.status == 400
    assert reply.headers["x-amzn-errortype"] == "InvalidArgumentException"


# --- DNS rebinding ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/_emulator/api/streams",
        "/hls/v1/getHLSMasterPlaylist.m3u8?SessionToken=x",
        "/dash/v1/getDASHManifest.mpd?SessionToken=x",
    ],
)
def test_browser_routes_answer_only_to_the_emulators_names(emu: EmulatorProcess, path: str) -> None:
    refused = request(emu.url, path, b"", method="GET", host=f"evil.example:{emu.port}")
    assert refused.status == 403
    assert refused.headers["x-amzn-errortype"] == "AccessDeniedException"
    for host in (f"127.0.0.1:{emu.port}", f"localhost:{emu.port}"):
        reply = request(emu.url, path, b"", method="GET", host=host)
        assert reply.headers.get("x-amzn-errortype") != "AccessDeniedException"


# --- SigV4 --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def signed_emu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    with run_emulator(
        tmp_path_factory.mktemp("sigv4"),
        "--verify-sigv4", f"{ACCESS_KEY}:{SECRET}", "--region", "eu-central-1",
    ) as process:  # fmt: skip
        yield process


def _signed_call(emu: EmulatorProcess, path: str, payload: dict[str, Any], **sign: Any) -> Any:
    body = json.dumps(payload).encode()
    netloc = f"127.0.0.1:{emu.port}"
    headers = signed_headers(
        f"http://{netloc}{path}", body, {"host": netloc, "Content-Type": "application/json"},
        **sign,
    )  # fmt: skip
    if "payload_hash" in sign:
        headers["X-Amz-Content-SHA256"] = sign["payload_hash"]
    headers = {k: v for k, v in headers.items() if k.lower() != "host"}
    return request(emu.url, path, body, headers)


def test_sigv4_region_must_be_the_emulators(signed_emu: EmulatorProcess) -> None:
    good = _signed_call(signed_emu, "/listStreams", {}, region="eu-central-1")
    assert good.status == 200, good.body
    bad = _signed_call(signed_emu, "/listStreams", {}, region="us-east-1")
    assert bad.status == 403
    assert bad.headers["x-amzn-errortype"] == "InvalidSignatureException"


def test_sigv4_payload_hash_rules(signed_emu: EmulatorProcess) -> None:
    region = "eu-central-1"
    # UNSIGNED-PAYLOAD is not taken for a JSON API ...
    unsigned = _signed_call(
        signed_emu, "/listStreams", {}, region=region, payload_hash="UNSIGNED-PAYLOAD"
    )
    assert unsigned.status == 403
    # ... nor a declared hash that is not 64 hex digits,
    short = _signed_call(signed_emu, "/listStreams", {}, region=region, payload_hash="abc")
    assert short.status == 403
    # ... but PutMedia takes it, as the service does (404: authenticated, no such stream).
    netloc = f"127.0.0.1:{signed_emu.port}"
    headers = signed_headers(
        f"http://{netloc}/putMedia", b"",
        {"host": netloc, "x-amzn-stream-name": "none", "X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"},
        region=region, payload_hash="UNSIGNED-PAYLOAD",
    )  # fmt: skip
    headers = {k: v for k, v in headers.items() if k.lower() != "host"}
    reply = request(signed_emu.url, "/putMedia", [b"\x1a\x45\xdf\xa3"], headers)
    assert reply.status == 404, reply.body
    assert EMPTY_SHA256  # the C SDK's hash is covered in test_official_clients


def test_a_stream_flooded_with_refused_uploads_is_throttled_alone(emu: EmulatorProcess) -> None:
    create_stream(emu.url, "flooded")
    create_stream(emu.url, "neighbour")
    answers = [put_media(emu.url, "flooded", [header(), nested_simple_tags(50)]) for _ in range(30)]
    throttled = [a for a in answers if a.status == 400]
    assert throttled, [a.status for a in answers]
    assert all(a.headers["x-amzn-errortype"] == "ClientLimitExceededException" for a in throttled)
    assert all(kinds(a.acks()) == ["ERROR 4006"] for a in answers if a.status == 200)
    ok = put_media(emu.url, "neighbour", sdk_upload([frames(BASE_MS)]))
    assert kinds(ok.acks()) == ["BUFFERING", "RECEIVED", "PERSISTED"]
