"""Headless Chromium and the official KVS WebRTC JS SDK against Python peers.

The emulator's web page (its WebRTC panel, with the vendored
``amazon-kinesis-video-streams-webrtc`` bundle) watches a Python master, and sends
Chromium's fake camera as a master to a Python viewer. Each test re-runs itself inside a
network namespace with nothing but ``lo`` (``unshare --net``, as root): the browser, the
emulator and the Python peer are all in it, ICE uses 127.0.0.1 host candidates
(``--allow-loopback-in-peer-connection``) and no STUN/TURN server, so no packet can go
anywhere but 127.0.0.1. Debian's ``chromium`` is driven by Playwright.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from kvs_toolkit.emulator import Emulator
from kvs_toolkit.producer.sources import SourceOptions, open_source
from kvs_toolkit.retry import RetryPolicy
from kvs_toolkit.webrtc.ice import LOOPBACK, use_host_addresses
from kvs_toolkit.webrtc.master import Master
from kvs_toolkit.webrtc.viewer import Viewer, ViewerFrame
from tests.webrtc.conftest import aws_for, client
from tests.webrtc.media import inside_namespace, run_in_loopback_namespace

log = logging.getLogger(__name__)

CHROMIUM = "/usr/bin/chromium"
FAST_RETRY = RetryPolicy(max_attempts=4, base_s=0.05, max_s=0.3)
WIDTH, HEIGHT = 320, 240
LEFT, RIGHT = (200, 40, 40), (40, 60, 200)  # RGB of the sample's two halves

_NEEDS_UNSHARE = pytest.mark.skipif(
    shutil.which("unshare") is None, reason="needs unshare (util-linux), root"
)
_NEEDS_CHROMIUM = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="needs Debian's chromium (apt-get install chromium)"
)


def _page_api(emulator: Emulator, path: str, body: Any = None, content_type: str = "") -> Any:
    """An unsigned request to the page's JSON API: (status, decoded JSON body)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        emulator.endpoint_url + path,
        data=data,
        headers={"Content-Type": content_type} if content_type else {},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_page_api_lists_channels_and_answers_the_wss_endpoint(emulator: Emulator) -> None:
    # ``emulator`` verifies SigV4: the page's routes still answer unsigned requests.
    kv = client("kinesisvideo", emulator)
    arn = kv.create_signaling_channel(ChannelName="cam")["ChannelARN"]
    kv.close()
    status, listed = _page_api(emulator, "/_emulator/api/channels")
    assert status == 200
    assert [(c["name"], c["arn"]) for c in listed["channels"]] == [("cam", arn)]
    channel = listed["channels"][0]
    assert (channel["master_connected"], channel["viewers"]) == (False, 0)
    assert channel["storage_status"] == "DISABLED"
    request = {
        "ChannelARN": arn,
        "SingleMasterChannelEndpointConfiguration": {"Protocols": ["WSS"], "Role": "VIEWER"},
    }
    status, answer = _page_api(
        emulator, "/_emulator/api/signaling-endpoint", request, "application/json"
    )
    assert status == 200
    [endpoint] = answer["ResourceEndpointList"]
    assert endpoint["Protocol"] == "WSS"
    assert endpoint["ResourceEndpoint"].startswith("wss://127.0.0.1:")
    # Not JSON: refused (another web site could send a form without a CORS preflight).
    status, error = _page_api(emulator, "/_emulator/api/signaling-endpoint", request, "text/plain")
    assert status == 400
    assert "as JSON" in json.dumps(error)


def _isolated(request: pytest.FixtureRequest) -> bool:
    """Outside the namespace: run this test again inside one and return False."""
    pytest.importorskip("playwright.async_api", reason="playwright is not installed")
    if inside_namespace():
        use_host_addresses(LOOPBACK)
        return True
    run_in_loopback_namespace(request.node.nodeid, timeout=60)
    return False


def _write_halves(path: Path, seconds: int = 2, fps: int = 30) -> Path:
    """H.264 (libx264, no B-frames) whose left half is LEFT and right half RIGHT, with a
    small white square that moves along the bottom (so every frame differs)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.time_base = Fraction(1, fps)
        stream.codec_context.gop_size = fps
        stream.codec_context.options = {"preset": "ultrafast", "tune": "zerolatency", "bf": "0"}
        for index in range(seconds * fps):
            image = np.empty((HEIGHT, WIDTH, 3), dtype=np.uint8)
            image[:, : WIDTH // 2] = LEFT
            image[:, WIDTH // 2 :] = RIGHT
            x = index * 4 % (WIDTH - 16)
            image[HEIGHT - 24 : HEIGHT - 8, x : x + 16] = 255
            frame = av.VideoFrame.from_ndarray(image, "rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def _spki_sha256(cert_file: Path) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


@asynccontextmanager
async def _browser(emulator: Emulator, *extra: str) -> AsyncIterator[tuple[Any, list[str]]]:
    """A page of headless chromium that trusts the emulator's wss:// certificate."""
    from playwright.async_api import async_playwright

    # The JS SDK only connects to wss://. Rather than --ignore-certificate-errors, chromium
    # trusts exactly the emulator's server key (from its local CA, signaling_tls.py): the
    # SPKI pin is honoured with a --user-data-dir, which every launch here has anyway.
    server_cert = emulator.data_dir / "signaling" / "tls" / "server.pem"
    errors: list[str] = []
    with tempfile.TemporaryDirectory(prefix="kvs-chromium-") as profile:
        async with async_playwright() as playwright:
            context = await playwright.chromium.launch_persistent_context(
                profile,  # a fresh --user-data-dir
                executable_path=CHROMIUM,
                headless=True,
                args=[
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--allow-loopback-in-peer-connection",
                    # host candidates as 127.0.0.1, not mDNS names aioice cannot resolve here
                    "--disable-features=WebRtcHideLocalIpsWithMdns",
                    f"--ignore-certificate-errors-spki-list={_spki_sha256(server_cert)}",
                    *extra,
                ],
            )
            try:
                page = await context.new_page()
                page.on("pageerror", lambda error: errors.append(str(error)))
                page.on(
                    "console",
                    lambda m: errors.append(m.text) if m.type == "error" else None,
                )
                yield page, errors
            finally:
                await context.close()


async def _run(body: Callable[[Emulator, Path], Awaitable[None]]) -> None:
    # No SigV4 verification: the page gives the JS SDK placeholder credentials.
    async with Emulator() as emulator:
        kv = client("kinesisvideo", emulator)
        await asyncio.to_thread(kv.create_signaling_channel, ChannelName="cam")
        kv.close()
        ca = emulator.data_dir / "signaling" / "tls" / "ca.pem"
        await asyncio.wait_for(body(emulator, ca), 45)


async def _wait(
    page: Any, errors: list[str], expression: str, timeout_ms: int, arg: Any = None
) -> None:
    """Wait for ``expression`` (a function: the page's CSP has no 'unsafe-eval'); on a
    timeout fail with the panel's status and the page's errors."""
    from playwright.async_api import TimeoutError as PlaywrightTimeout

    try:
        await page.wait_for_function(expression, arg=arg, timeout=timeout_ms)
    except PlaywrightTimeout:
        status = await page.inner_text("#rtc-status")
        raise AssertionError(f"not met: {expression}\nstatus: {status}\nerrors: {errors}") from None


async def _channel_row(page: Any, emulator: Emulator, master: str) -> Any:
    await page.goto(emulator.endpoint_url + "/")
    row = page.locator('#channels tr[data-channel="cam"]')
    await row.wait_for(timeout=5000)
    await page.wait_for_function(
        """(master) => { const row = document.querySelector('#channels tr[data-channel="cam"]');
            return row && row.children[1].textContent === master; }""",
        arg=master,
        timeout=8000,
    )
    return row


_CANVAS = """() => {
    const video = document.querySelector('#rtc-video');
    const canvas = document.createElement('canvas');
    canvas.width = video.videoWidth;
    canvas.height = video.videoHeight;
    const context = canvas.getContext('2d');
    context.drawImage(video, 0, 0);
    const mean = (x, y) => {
        const data = context.getImageData(x, y, 40, 40).data;
        const sum = [0, 0, 0];
        for (let i = 0; i < data.length; i += 4) {
            sum[0] += data[i]; sum[1] += data[i + 1]; sum[2] += data[i + 2];
        }
        return sum.map((s) => s / (data.length / 4));
    };
    const w = canvas.width, h = canvas.height;
    return {left: mean(w / 4 - 20, h / 2 - 40), right: mean(3 * w / 4 - 20, h / 2 - 40)};
}"""


@_NEEDS_UNSHARE
@_NEEDS_CHROMIUM
@pytest.mark.loopback_namespace
def test_page_watches_a_python_master(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    if not _isolated(request):
        return
    clip = _write_halves(tmp_path / "halves.mp4")

    async def body(emulator: Emulator, ca: Path) -> None:
        source = open_source(str(clip), SourceOptions(realtime=True, loop=True))
        master = Master(aws_for(emulator), "cam", source, ca_file=ca, retry=FAST_RETRY)
        serving = asyncio.ensure_future(master.run())
        try:
            await asyncio.wait_for(master.connected.wait(), 10)
            async with _browser(emulator) as (page, errors):
                row = await _channel_row(page, emulator, "connected")
                await row.locator("button.watch").click()
                await _wait(
                    page,
                    errors,
                    """() => { const v = document.querySelector('#rtc-video');
                        return v.dataset.firstFrameMs && v.readyState >= 2 && !v.paused; }""",
                    15000,
                )
                first_ms = int(await page.get_attribute("#rtc-video", "data-first-frame-ms"))
                log.info("browser viewer: first frame %d ms after Watch", first_ms)
                before = await page.evaluate(
                    "() => document.querySelector('#rtc-video').currentTime"
                )
                await _wait(
                    page,
                    errors,
                    "(t) => document.querySelector('#rtc-video').currentTime > t + 0.5",
                    5000,
                    before,
                )
                size = await page.evaluate(
                    "() => [document.querySelector('#rtc-video').videoWidth,"
                    " document.querySelector('#rtc-video').videoHeight]"
                )
                assert size == [WIDTH, HEIGHT]
                colours = await page.evaluate(_CANVAS)
                for name, expected in (("left", LEFT), ("right", RIGHT)):
                    got = colours[name]
                    assert all(abs(g - e) < 25 for g, e in zip(got, expected, strict=True)), (
                        name,
                        got,
                        expected,
                    )
                status = await page.inner_text("#rtc-status")
                assert status.startswith("Watching cam live"), status
                assert errors == []
        finally:
            master.stop()
            await asyncio.wait_for(serving, 10)

    asyncio.run(_run(body))


@_NEEDS_UNSHARE
@_NEEDS_CHROMIUM
@pytest.mark.loopback_namespace
def test_python_viewer_receives_the_pages_camera(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    if not _isolated(request):
        return

    async def body(emulator: Emulator, ca: Path) -> None:
        fake_camera = ("--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream")
        async with _browser(emulator, *fake_camera) as (page, errors):
            row = await _channel_row(page, emulator, "none")
            await row.locator("button.camera").click()
            await _wait(
                page,
                errors,
                "() => document.querySelector('#rtc-status').textContent"
                ".startsWith('Master of cam: waiting for viewers')",
                10000,
            )
            viewer = Viewer(aws_for(emulator), "cam", ca_file=ca, retry=FAST_RETRY)
            frames: list[ViewerFrame] = []
            async for frame in viewer.frames():
                frames.append(frame)
                if len(frames) >= 45:
                    break
            assert viewer.first_frame_at is not None and viewer.connected_at is not None
            log.info(
                "python viewer: first frame %.0f ms after connect",
                (viewer.first_frame_at - viewer.connected_at) * 1000,
            )
            # Chromium's fake camera: 640x480 by default, a moving picture.
            assert {(f.width, f.height) for f in frames} == {(640, 480)}
            assert all(f.image.shape == (480, 640, 3) for f in frames)
            assert [f.index for f in frames] == list(range(45))
            assert frames[-1].timestamp > frames[0].timestamp
            assert not np.array_equal(frames[0].image, frames[-1].image)
            status = await page.inner_text("#rtc-status")
            assert "sending the camera to 1 viewer(s)" in status, status
            assert errors == []

    asyncio.run(_run(body))
