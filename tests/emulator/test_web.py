"""The emulator's web page: its JSON API, its files, and a real browser playing a stream.

Every test runs against a real emulator that verifies SigV4 (``emulator`` fixture): the
page's routes answer unsigned requests, the KVS operations still demand signatures.
Media is real H.264 (the sample video, encoded with libx264 at test time) uploaded with
the producer. The browser test drives Debian's ``chromium`` with Playwright and skips
when either is missing.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import re
import shutil
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from botocore.credentials import Credentials

from kvs_toolkit.emulator import Emulator
from kvs_toolkit.emulator.store import FragmentMeta, FragmentRecord
from kvs_toolkit.emulator.web import DATA_RATE_WINDOW_MS, STATIC_DIR, latest_fragments
from kvs_toolkit.getmedia import iter_fragments
from kvs_toolkit.producer.run import ProducerThread, produce
from kvs_toolkit.producer.sources import SourceOptions, open_source
from kvs_toolkit.samples import SampleSpec, write_sample
from tests.emulator.conftest import ACCESS_KEY, SECRET, ClientFactory
from tests.emulator.helpers import RawResponse, raw_post

CREDENTIALS = Credentials(ACCESS_KEY, SECRET)
TAGS = {"site": "lab", "camera": "1"}
HLS_JS = STATIC_DIR / "vendor" / "hls.js" / "hls.min.js"
KVS_WEBRTC_JS = STATIC_DIR / "vendor" / "kvs-webrtc" / "kvs-webrtc.min.js"


@pytest.fixture(scope="module")
def sample_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 s of 320x180 H.264 at 25 fps with a key frame every second."""
    spec = SampleSpec(width=320, height=180, fps=25, seconds=4.0, gop_seconds=1.0)
    return write_sample(tmp_path_factory.mktemp("web") / "sample.mkv", spec)


def _produce(emulator: Emulator, video: Path, stream: str) -> None:
    """Upload the whole sample as fast as possible, in 1 s fragments, with TAGS."""
    source = open_source(str(video), SourceOptions(realtime=False, fragment_duration_ms=1000))
    stats = asyncio.run(
        produce(
            source,
            emulator.endpoint_url,
            stream,
            tags=TAGS,
            credentials=CREDENTIALS,
            fragment_duration_ms=1000,
            create_stream=True,
        )
    )
    assert stats.acked == stats.fragments == 4


def _get(url: str, path: str, method: str = "GET") -> RawResponse:
    parts = urlsplit(url)
    assert parts.hostname is not None
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        body = response.read()
        return RawResponse(response.status, {k.lower(): v for k, v in response.getheaders()}, body)
    finally:
        conn.close()


def _ms(value: datetime) -> int:
    return round(value.timestamp() * 1000)


def _error(response: RawResponse) -> tuple[str, str]:
    body = response.json()  # the service writes "message" or "Message" by error type
    return response.headers["x-amzn-errortype"], body.get("message", body.get("Message"))


# --- JSON API ---------------------------------------------------------------------------------


def test_streams_api_matches_what_the_service_apis_say(
    emulator: Emulator, make_client: ClientFactory, sample_video: Path
) -> None:
    _produce(emulator, sample_video, "web-cam")
    kv = make_client("kinesisvideo", emulator.endpoint_url)
    kv.create_stream(StreamName="empty", DataRetentionInHours=0)
    archived = make_client("kinesis-video-archived-media", emulator.endpoint_url)

    response = _get(emulator.endpoint_url, "/_emulator/api/streams")  # unsigned

    assert response.status == 200
    assert response.headers["content-type"] == "application/json"
    data = response.json()
    assert data["data_rate_window_ms"] == DATA_RATE_WINDOW_MS == 10_000
    assert data["truncated"] is False
    empty, cam = data["streams"]  # in name order
    assert empty["name"] == "empty" and empty["retention_hours"] == 0
    assert empty["fragment_count"] == 0 and empty["data_rate_bps"] == 0
    assert empty["first_fragment"] is None and empty["last_fragment"] is None

    described = kv.describe_stream(StreamName="web-cam")["StreamInfo"]
    assert cam["name"] == "web-cam"
    assert cam["arn"] == described["StreamARN"]
    assert cam["status"] == described["Status"] == "ACTIVE"
    assert cam["retention_hours"] == described["DataRetentionInHours"] == 24
    assert cam["media_type"] == described["MediaType"] == "video/h264"
    assert cam["creation_time_ms"] == _ms(described["CreationTime"])
    listed = sorted(
        archived.list_fragments(StreamName="web-cam")["Fragments"],
        key=lambda f: f["FragmentNumber"],
    )
    assert cam["fragment_count"] == len(listed) == 4
    for key, fragment in (("first_fragment", listed[0]), ("last_fragment", listed[-1])):
        assert cam[key] == {
            "fragment_number": fragment["FragmentNumber"],
            "producer_timestamp_ms": _ms(fragment["ProducerTimestamp"]),
            "server_timestamp_ms": _ms(fragment["ServerTimestamp"]),
            "duration_ms": fragment["FragmentLengthInMilliseconds"],
            "size": fragment["FragmentSizeInBytes"],
            "tags": [{"name": "site", "value": "lab"}, {"name": "camera", "value": "1"}],
        }
    # The data rate: bits of the fragments received in the 10 s before now_ms.
    window_start = data["now_ms"] - DATA_RATE_WINDOW_MS
    received = [
        f["FragmentSizeInBytes"]
        for f in listed
        if window_start <= _ms(f["ServerTimestamp"]) <= data["now_ms"]
    ]
    assert len(received) == 4  # uploaded just now, as fast as possible
    assert cam["data_rate_bps"] == sum(received) * 8 * 1000 // DATA_RATE_WINDOW_MS > 0


def test_fragments_api_gives_timestamps_sizes_and_the_producers_tags(
    emulator: Emulator, make_client: ClientFactory, sample_video: Path
) -> None:
    _produce(emulator, sample_video, "web-cam")
    archived = make_client("kinesis-video-archived-media", emulator.endpoint_url)
    listed = archived.list_fragments(StreamName="web-cam")["Fragments"]
    numbers = sorted(f["FragmentNumber"] for f in listed)
    # The tags as a GetMedia reader sees them in the stored fragments.
    media = archived.get_media_for_fragment_list(StreamName="web-cam", Fragments=numbers)
    stored_tags = [
        [{"name": t.name, "value": t.value} for t in fragment.producer_tags]
        for fragment in iter_fragments(media["Payload"])
    ]

    data = _get(emulator.endpoint_url, "/_emulator/api/fragments?stream=web-cam").json()

    assert data["stream"] == "web-cam"
    fragments = data["fragments"]
    assert [f["fragment_number"] for f in fragments] == numbers  # oldest first
    assert [f["tags"] for f in fragments] == stored_tags
    assert stored_tags[0] == [{"name": "site", "value": "lab"}, {"name": "camera", "value": "1"}]
    by_number = {f["FragmentNumber"]: f for f in listed}
    for fragment in fragments:
        expected = by_number[fragment["fragment_number"]]
        assert fragment["producer_timestamp_ms"] == _ms(expected["ProducerTimestamp"])
        assert fragment["server_timestamp_ms"] == _ms(expected["ServerTimestamp"])
        assert fragment["duration_ms"] == expected["FragmentLengthInMilliseconds"] == 1000
        assert fragment["size"] == expected["FragmentSizeInBytes"]

    latest_two = _get(emulator.endpoint_url, "/_emulator/api/fragments?stream=web-cam&limit=2")
    assert [f["fragment_number"] for f in latest_two.json()["fragments"]] == numbers[-2:]


def _append(emulator: Emulator, stream: str, payload: bytes, server_ms: int) -> FragmentRecord:
    meta = FragmentMeta(
        producer_timestamp_ms=server_ms - 1000,
        duration_ms=1000,
        server_timestamp_ms=server_ms,
        tags=(("n", str(server_ms)),),
    )
    return emulator.store.sync.append_fragment(stream, payload, meta)


def _count(emulator: Emulator, stream: str) -> int | None:
    for listed in _get(emulator.endpoint_url, "/_emulator/api/streams").json()["streams"]:
        if listed["name"] == stream:
            return int(listed["fragment_count"])
    return None


def test_fragment_count_follows_appends_retention_and_deletion(
    emulator: Emulator, make_client: ClientFactory, sample_video: Path
) -> None:
    _produce(emulator, sample_video, "web-cam")
    store = emulator.store.sync
    payload = store.read_payload(store.earliest_fragment("web-cam"))  # type: ignore[arg-type]
    kv = make_client("kinesisvideo", emulator.endpoint_url)
    kv.create_stream(StreamName="kept-1h", DataRetentionInHours=1)
    now = int(time.time() * 1000)
    for i in range(5):  # three hours old: past the retention
        _append(emulator, "kept-1h", payload, now - 3 * 3_600_000 + i * 1000)
    for i in range(3):
        _append(emulator, "kept-1h", payload, now - 10_000 + i * 1000)
    assert _count(emulator, "kept-1h") == 8
    assert _count(emulator, "web-cam") == 4

    assert store.purge_expired() == 5
    assert _count(emulator, "kept-1h") == 3
    _append(emulator, "kept-1h", payload, now)
    assert _count(emulator, "kept-1h") == 4

    kv.delete_stream(StreamARN=kv.describe_stream(StreamName="kept-1h")["StreamInfo"]["StreamARN"])
    kv.create_stream(StreamName="kept-1h", DataRetentionInHours=1)  # a new stream, same name
    assert _count(emulator, "kept-1h") == 0
    archived = make_client("kinesis-video-archived-media", emulator.endpoint_url)
    archived_count = len(archived.list_fragments(StreamName="web-cam")["Fragments"])
    assert _count(emulator, "web-cam") == archived_count == 4


def test_latest_fragments_widen_the_window_until_enough(
    emulator: Emulator, make_client: ClientFactory, sample_video: Path
) -> None:
    _produce(emulator, sample_video, "web-cam")
    store = emulator.store.sync
    payload = store.read_payload(store.earliest_fragment("web-cam"))  # type: ignore[arg-type]
    make_client("kinesisvideo", emulator.endpoint_url).create_stream(
        StreamName="sparse", DataRetentionInHours=24
    )
    now = int(time.time() * 1000)
    # 80 fragments 5 s apart: 60 of them span 295 s, ten times the first window.
    appended = [_append(emulator, "sparse", payload, now - 400_000 + i * 5000) for i in range(80)]
    numbers = [r.fragment_number for r in appended]

    async def latest(limit: int) -> list[str]:
        return [
            r.fragment_number for r in await latest_fragments(emulator.context, "sparse", limit)
        ]

    def run(limit: int) -> list[str]:
        return asyncio.run_coroutine_threadsafe(latest(limit), emulator.loop).result(10)

    assert run(60) == numbers[-60:]
    assert run(1) == numbers[-1:]
    assert run(500) == numbers  # fewer than asked: all of them
    response = _get(emulator.endpoint_url, "/_emulator/api/fragments?stream=sparse&limit=60")
    assert [f["fragment_number"] for f in response.json()["fragments"]] == numbers[-60:]
    assert response.json()["fragments"][-1]["tags"] == [{"name": "n", "value": str(now - 5000)}]
    # After a two-day gap in server time: the newest ones, then the ones before the gap.
    later = [_append(emulator, "sparse", payload, now + 2 * 86_400_000 + i) for i in range(3)]
    numbers += [r.fragment_number for r in later]
    assert run(10) == numbers[-10:]
    assert run(3) == numbers[-3:]


@pytest.mark.parametrize(
    ("path", "status", "error", "message"),
    [
        (
            "/_emulator/api/fragments",
            400,
            "InvalidArgumentException",
            "The query parameter 'stream' (a stream name) is required.",
        ),
        (
            "/_emulator/api/fragments?stream=web-cam&limit=0",
            400,
            "InvalidArgumentException",
            "limit '0' must be a whole number from 1 to 500.",
        ),
        (
            "/_emulator/api/fragments?stream=web-cam&limit=many",
            400,
            "InvalidArgumentException",
            "limit 'many' must be a whole number from 1 to 500.",
        ),
        (
            "/_emulator/api/fragments?stream=a/b",
            400,
            "InvalidArgumentException",
            "StreamName 'a/b' must match the pattern [a-zA-Z0-9_.-]+",
        ),
        (
            "/_emulator/api/fragments?stream=nobody",
            404,
            "ResourceNotFoundException",
            "The requested stream nobody is not found.",
        ),
        (
            "/_emulator/static/nothing.js",
            404,
            "ResourceNotFoundException",
            "No file 'nothing.js' in the web page's static files.",
        ),
        (  # only the listed files are served: nothing else of the package
            "/_emulator/static/../web.py",
            404,
            "ResourceNotFoundException",
            "No file '../web.py' in the web page's static files.",
        ),
        (
            "/_emulator/static/%2e%2e/web.py",
            404,
            "ResourceNotFoundException",
            "No file '../web.py' in the web page's static files.",
        ),
    ],
)
def test_api_errors_are_clear(
    emulator: Emulator, path: str, status: int, error: str, message: str
) -> None:
    response = _get(emulator.endpoint_url, path)
    assert response.status == status
    code, text = _error(response)
    assert code == error
    assert message in text


def test_hls_session_route_is_the_operation_without_sigv4(
    emulator: Emulator, make_client: ClientFactory, sample_video: Path
) -> None:
    _produce(emulator, sample_video, "web-cam")
    url = emulator.endpoint_url
    live = json.dumps({"StreamName": "web-cam", "PlaybackMode": "LIVE"}).encode()

    answer = raw_post(url, "/_emulator/api/hls-session", live)  # unsigned

    assert answer.status == 200
    session_url = answer.json()["HLSStreamingSessionURL"]
    assert session_url.startswith(f"{url}/hls/v1/getHLSMasterPlaylist.m3u8?SessionToken=")
    master = _get(url, session_url[len(url) :])
    assert master.status == 200 and master.body.startswith(b"#EXTM3U")
    # The same request through the signed operation gives the same kind of session.
    archived = make_client("kinesis-video-archived-media", url)
    signed = archived.get_hls_streaming_session_url(StreamName="web-cam", PlaybackMode="LIVE")
    assert signed["HLSStreamingSessionURL"].split("?")[0] == session_url.split("?")[0]

    # The operation itself still demands a signature; so does anything off the page.
    unsigned_operation = raw_post(url, "/getHLSStreamingSessionURL", live)
    assert unsigned_operation.status == 403
    assert _get(url, "/favicon.ico").status == 403

    # Errors of the operation come back as the operation's errors.
    on_demand = {"StreamName": "web-cam", "PlaybackMode": "ON_DEMAND"}
    refused = raw_post(url, "/_emulator/api/hls-session", json.dumps(on_demand).encode())
    assert _error(refused) == (
        "InvalidArgumentException",
        "HLSFragmentSelector with a TimestampRange is required when PlaybackMode is ON_DEMAND.",
    )
    make_client("kinesisvideo", url).create_stream(StreamName="live-only", DataRetentionInHours=0)
    no_retention = raw_post(
        url, "/_emulator/api/hls-session", b'{"StreamName": "live-only", "PlaybackMode": "LIVE"}'
    )
    assert _error(no_retention) == (
        "NoDataRetentionException",
        "The stream live-only does not retain data (DataRetentionInHours is 0).",
    )
    # A form post (which any web site can make a browser send) is refused.
    form = raw_post(
        url,
        "/_emulator/api/hls-session",
        b"StreamName=web-cam",
        {"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert form.status == 400
    assert _error(form) == (
        "InvalidArgumentException",
        "Send the GetHLSStreamingSessionURL request as JSON "
        "(Content-Type: application/json, not 'application/x-www-form-urlencoded').",
    )


# --- the page and its files -------------------------------------------------------------------


def test_page_and_files_are_served_with_their_content_types(emulator: Emulator) -> None:
    url = emulator.endpoint_url
    page = _get(url, "/")  # unsigned, on an emulator that verifies SigV4
    assert page.status == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    html = page.body.decode()
    scripts = re.findall(r'<script src="([^"]+)"', html)
    assert scripts == [
        "_emulator/static/vendor/hls.js/hls.min.js",
        "_emulator/static/vendor/kvs-webrtc/kvs-webrtc.min.js",
        "_emulator/static/page.js",
    ]
    assert re.findall(r'<link rel="stylesheet" href="([^"]+)"', html) == [
        "_emulator/static/page.css"
    ]
    for path, content_type in [
        ("vendor/hls.js/hls.min.js", "text/javascript; charset=utf-8"),
        ("page.js", "text/javascript; charset=utf-8"),
        ("page.css", "text/css; charset=utf-8"),
        ("vendor/hls.js/LICENSE", "text/plain; charset=utf-8"),
        ("vendor/hls.js/README.md", "text/plain; charset=utf-8"),
        ("vendor/kvs-webrtc/kvs-webrtc.min.js", "text/javascript; charset=utf-8"),
        ("vendor/kvs-webrtc/LICENSE", "text/plain; charset=utf-8"),
    ]:
        response = _get(url, f"/_emulator/static/{path}")
        assert response.status == 200, path
        assert response.headers["content-type"] == content_type
        assert response.body == (STATIC_DIR / path).read_bytes()
    assert _get(url, "/_emulator/static/page.js", method="HEAD").status == 200


def test_vendored_hls_js_is_the_release_its_readme_names() -> None:
    readme = (HLS_JS.parent / "README.md").read_text()
    version = re.search(r"Version: \*\*(1\.\d+\.\d+)\*\*", readme)
    assert version is not None
    assert f"hls.js-{version[1]}.tgz" in readme
    head = HLS_JS.read_bytes()
    assert hashlib.sha256(head).hexdigest() in readme
    assert b"Apache License, Version 2.0" in (HLS_JS.parent / "LICENSE").read_bytes()
    # The release's own version string is inside the bundle.
    assert f'"{version[1]}"'.encode() in head


def test_vendored_kvs_webrtc_sdk_is_the_release_its_readme_names() -> None:
    readme = (KVS_WEBRTC_JS.parent / "README.md").read_text()
    version = re.search(r"Version: \*\*(2\.\d+\.\d+)\*\*", readme)
    assert version is not None
    assert f"amazon-kinesis-video-streams-webrtc-{version[1]}.tgz" in readme
    bundle = KVS_WEBRTC_JS.read_bytes()
    assert hashlib.sha256(bundle).hexdigest() in readme
    assert b"Apache License" in (KVS_WEBRTC_JS.parent / "LICENSE").read_bytes()
    assert (KVS_WEBRTC_JS.parent / "kvs-webrtc.LICENSE").is_file()
    # The release's own version string is inside the bundle, which defines KVSWebRTC.
    assert f'VERSION="{version[1]}"'.encode() in bundle
    assert b"window.KVSWebRTC=" in bundle


# --- a real browser -------------------------------------------------------------------------


@pytest.fixture
def browser_page() -> Iterator[Any]:
    """A Playwright page in headless Debian chromium (skips when either is missing)."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            yield page
            assert errors == []
        finally:
            browser.close()


_PLAYING = """() => {
    const video = document.querySelector('#video');
    return !video.paused && video.readyState >= 3
        && video.getVideoPlaybackQuality().totalVideoFrames > 0;
}"""
_PLAYBACK = """() => {
    const video = document.querySelector('#video');
    return {time: video.currentTime, frames: video.getVideoPlaybackQuality().totalVideoFrames,
            width: video.videoWidth, height: video.videoHeight};
}"""


def _wait_until_playing(page: Any) -> dict[str, Any]:
    page.wait_for_function(_PLAYING, timeout=8000)
    before: dict[str, Any] = page.evaluate(_PLAYBACK)
    page.wait_for_function(
        f"() => document.querySelector('#video').currentTime > {before['time']} + 0.4", timeout=5000
    )
    after: dict[str, Any] = page.evaluate(_PLAYBACK)
    assert after["frames"] > before["frames"] > 0
    assert (after["width"], after["height"]) == (320, 180)
    return after


@pytest.mark.slow
def test_browser_lists_the_stream_and_plays_it_live_and_on_demand(
    emulator: Emulator, sample_video: Path, browser_page: Any
) -> None:
    page = browser_page
    assert page.evaluate(
        """() => MediaSource.isTypeSupported('video/mp4; codecs="avc1.64000d"')"""
    ), "this chromium cannot play H.264 in Media Source Extensions"
    source = open_source(
        str(sample_video), SourceOptions(realtime=True, loop=True, fragment_duration_ms=1000)
    )
    producer = ProducerThread(
        source,
        emulator.endpoint_url,
        "web-cam",
        tags=TAGS,
        credentials=CREDENTIALS,
        fragment_duration_ms=1000,
        create_stream=True,
    )
    producer.start()
    try:
        deadline = time.monotonic() + 10
        while (_count(emulator, "web-cam") or 0) < 2:
            assert time.monotonic() < deadline, "the producer uploaded nothing"
            time.sleep(0.1)

        page.goto(emulator.endpoint_url + "/")
        row = page.locator('#streams tr[data-stream="web-cam"]')
        row.wait_for(timeout=5000)
        assert row.locator("td").nth(1).inner_text() == "ACTIVE"
        first_count = int(row.locator("td").nth(3).inner_text())
        assert first_count >= 2

        row.click()  # plays LIVE, the default mode
        live = _wait_until_playing(page)
        assert page.inner_text("#player-title") == "web-cam · LIVE"
        assert page.inner_text("#player-status").startswith("Playing web-cam (LIVE) from ")
        # The timeline and the table show the fragments with the producer's tags.
        titles = page.locator("#timeline rect.fragment title").all_text_contents()
        assert len(titles) >= first_count
        assert all("site = lab\ncamera = 1" in title for title in titles)
        assert page.locator("#fragments tbody tr").first.locator("td").nth(5).inner_text() == (
            "site=lab, camera=1"
        )
        # The list keeps up with the fragments that arrive (one a second).
        page.wait_for_function(
            """(count) => Number(document.querySelector(
                '#streams tr[data-stream="web-cam"] td:nth-child(4)').textContent) > count""",
            arg=first_count,
            timeout=5000,
        )

        page.click('button[data-mode="ON_DEMAND"]')
        page.wait_for_function(
            "() => document.querySelector('#player-status').textContent"
            ".startsWith('Playing web-cam (ON_DEMAND)')",
            timeout=8000,
        )
        on_demand = _wait_until_playing(page)
        assert page.get_attribute('button[data-mode="ON_DEMAND"]', "aria-pressed") == "true"
        assert live["frames"] > 0 and on_demand["frames"] > 0
    finally:
        producer.stop()
        producer.result(15)
