"""Python master -> Python viewer through the emulator, over loopback only.

Each test re-runs itself inside a network namespace that has nothing but ``lo``
(``unshare --net``; the tests need root), with ICE host candidates on 127.0.0.1 and no
STUN/TURN server: no packet can go anywhere but 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from kvs_toolkit.emulator import Emulator, server
from kvs_toolkit.emulator.signaling import HUB, SignalingLimits, installer
from kvs_toolkit.emulator.webrtc_storage import SESSIONS
from kvs_toolkit.errors import SignalingError
from kvs_toolkit.producer.sources import FileSource, SourceOptions
from kvs_toolkit.retry import RetryPolicy
from kvs_toolkit.webrtc.ice import LOOPBACK, use_host_addresses
from kvs_toolkit.webrtc.master import Master
from kvs_toolkit.webrtc.viewer import Viewer, ViewerAudio, ViewerFrame
from tests.media import read_fragments
from tests.webrtc.conftest import ACCESS_KEY, SECRET, aws_for, client
from tests.webrtc.media import (
    decode_clip,
    inside_namespace,
    read_index,
    run_in_loopback_namespace,
    write_clip,
)

pytestmark = [
    pytest.mark.skipif(
        shutil.which("unshare") is None, reason="needs unshare (util-linux) and root"
    ),
    pytest.mark.loopback_namespace,
]

FAST_RETRY = RetryPolicy(max_attempts=4, base_s=0.05, max_s=0.3)


def _isolated(request: pytest.FixtureRequest) -> bool:
    """Outside the namespace: run this test again inside one and return False."""
    if inside_namespace():
        use_host_addresses(LOOPBACK)
        return True
    run_in_loopback_namespace(request.node.nodeid)
    return False


def _run(
    body: Callable[[Emulator, Path], Awaitable[None]], limits: SignalingLimits | None = None
) -> None:
    others = [i for i in server.DEFAULT_ROUTE_INSTALLERS if i.__module__ != installer.__module__]

    async def main() -> None:
        emulator = Emulator(
            credentials={ACCESS_KEY: SECRET}, route_installers=[*others, installer(limits)]
        )
        async with emulator:
            kv = client("kinesisvideo", emulator)
            await asyncio.to_thread(kv.create_signaling_channel, ChannelName="cam")
            kv.close()
            ca = emulator.data_dir / "signaling" / "tls" / "ca.pem"
            await asyncio.wait_for(body(emulator, ca), 90)

    asyncio.run(main())


def _master(emulator: Emulator, ca: Path, clip: Path, **kw: Any) -> Master:
    source = FileSource(clip, SourceOptions(realtime=True))
    return Master(aws_for(emulator), "cam", source, ca_file=ca, retry=FAST_RETRY, **kw)


def _viewer(emulator: Emulator, ca: Path, client_id: str | None = None) -> Viewer:
    return Viewer(aws_for(emulator), "cam", ca_file=ca, client_id=client_id, retry=FAST_RETRY)


def _decode_count(url: str) -> int:
    with av.open(url) as container:
        return sum(1 for _ in container.decode(video=0))


async def _until(condition: Callable[[], bool], timeout: float = 20) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def _watch(viewer: Viewer, limit: int | None = None) -> list[ViewerFrame]:
    frames: list[ViewerFrame] = []
    async for frame in viewer.frames():
        frames.append(frame)
        if limit is not None and len(frames) >= limit:
            break
    return frames


def test_every_frame_arrives_in_order(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    if not _isolated(request):
        return
    clip = write_clip(tmp_path / "clip.mp4", 60)
    reference = decode_clip(clip)

    async def body(emulator: Emulator, ca: Path) -> None:
        master = _master(emulator, ca, clip)
        serving = asyncio.ensure_future(master.run())
        await asyncio.wait_for(master.connected.wait(), 10)
        viewer = _viewer(emulator, ca)
        frames = await _watch(viewer)
        await serving
        assert [read_index(f.image) for f in frames] == list(range(60))
        # H.264 passed through: the viewer decodes exactly what PyAV decodes from the file
        for frame, expected in zip(frames, reference, strict=True):
            assert np.array_equal(frame.image, expected)
        times = [f.timestamp for f in frames]
        assert times[0] == 0.0
        assert times[-1] == pytest.approx(59 / 30, abs=0.002)
        assert viewer.first_frame_at is not None and viewer.connected_at is not None

    _run(body)


def test_dropped_signaling_connection(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """The master's signaling connection drops mid-stream: media goes on peer to peer,
    the master reconnects, and a second viewer is served after the drop."""
    if not _isolated(request):
        return
    clip = write_clip(tmp_path / "clip.mp4", 90)

    async def body(emulator: Emulator, ca: Path) -> None:
        master = _master(emulator, ca, clip)
        serving = asyncio.ensure_future(master.run())
        await asyncio.wait_for(master.connected.wait(), 10)
        first = asyncio.ensure_future(_watch(_viewer(emulator, ca, "first")))
        hub = emulator._runner.app[HUB]  # type: ignore[union-attr]
        await _until(
            lambda: (
                "first" in master.sessions
                and master.sessions["first"].pc.connectionState == "connected"
            )
        )
        peer = hub.master("cam")
        await peer.ws.close()  # the service drops the master's WebSocket
        second = await _watch(_viewer(emulator, ca, "second"), limit=5)
        assert master.signaling.connections == 2
        # a late viewer starts at a key frame (every 30th frame of the clip)
        assert read_index(second[0].image) % 30 == 0
        frames = await first
        await serving
        assert [read_index(f.image) for f in frames] == list(range(90))

    _run(body)


def test_master_replaced(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    if not _isolated(request):
        return
    old_clip = write_clip(tmp_path / "old.mp4", 300)
    new_clip = write_clip(tmp_path / "new.mp4", 30)

    async def body(emulator: Emulator, ca: Path) -> None:
        old = _master(emulator, ca, old_clip, reconnect_on_go_away=False)
        old_serving = asyncio.ensure_future(old.run())
        await asyncio.wait_for(old.connected.wait(), 10)
        new = _master(emulator, ca, new_clip)
        new_serving = asyncio.ensure_future(new.run())
        await asyncio.wait_for(new.connected.wait(), 10)
        await asyncio.wait_for(old_serving, 10)  # GO_AWAY ended the old master
        frames = await _watch(_viewer(emulator, ca))
        await new_serving
        assert [read_index(f.image) for f in frames] == list(range(30))
        assert np.array_equal(frames[0].image, decode_clip(new_clip)[0])

    _run(body)


def test_viewer_limit(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    if not _isolated(request):
        return
    clip = write_clip(tmp_path / "clip.mp4", 60)

    async def body(emulator: Emulator, ca: Path) -> None:
        master = _master(emulator, ca, clip)
        serving = asyncio.ensure_future(master.run())
        await asyncio.wait_for(master.connected.wait(), 10)
        watching = asyncio.ensure_future(_watch(_viewer(emulator, ca, "one")))
        await _until(lambda: "one" in master.sessions)
        with pytest.raises(SignalingError, match="HTTP 400"):
            await _watch(_viewer(emulator, ca, "two"))
        frames = await watching
        await serving
        assert len(frames) == 60

    _run(body, SignalingLimits(max_viewers=1))


def test_ingestion_records_the_master_into_the_stream(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """WebRTC ingestion: the emulator joins as a peer and stores the master's H.264 as
    received, key-frame aligned; GetMedia returns every frame."""
    if not _isolated(request):
        return
    clip = write_clip(tmp_path / "clip.mp4", 60, gop=30)
    reference = decode_clip(clip)

    async def body(emulator: Emulator, ca: Path) -> None:
        kv = client("kinesisvideo", emulator)
        # boto3 blocks: off the loop, which serves the emulator too
        created = await asyncio.to_thread(
            kv.create_stream, StreamName="recorded", DataRetentionInHours=1
        )
        info = await asyncio.to_thread(kv.describe_signaling_channel, ChannelName="cam")
        await asyncio.to_thread(
            kv.update_media_storage_configuration,
            ChannelARN=info["ChannelInfo"]["ChannelARN"],
            MediaStorageConfiguration={"StreamARN": created["StreamARN"], "Status": "ENABLED"},
        )
        kv.close()
        master = _master(emulator, ca, clip, storage=True)
        await master.run()  # the storage session is its only viewer
        sessions = emulator._runner.app[SESSIONS]  # type: ignore[union-attr]
        await _until(lambda: not sessions)  # the session stored its last fragment
        media = client("kinesis-video-media", emulator)
        fragments = await asyncio.to_thread(read_fragments, media, "recorded", 2)
        media.close()
        # HLS plays it too (ON_DEMAND over the recorded fragments)
        archived = client("kinesis-video-archived-media", emulator)
        start = fragments[0].frames[0].timestamp_ns / 1e9 - 1
        hls_url = (
            await asyncio.to_thread(
                archived.get_hls_streaming_session_url,
                StreamName="recorded",
                PlaybackMode="ON_DEMAND",
                HLSFragmentSelector={
                    "FragmentSelectorType": "PRODUCER_TIMESTAMP",
                    "TimestampRange": {"StartTimestamp": start, "EndTimestamp": start + 60},
                },
            )
        )["HLSStreamingSessionURL"]
        archived.close()
        hls_frames = await asyncio.to_thread(_decode_count, hls_url)
        assert hls_frames == 60
        # key-frame aligned: each fragment starts on a key frame, 30 frames each
        assert [len(f.frames) for f in fragments] == [30, 30]
        assert all(f.frames[0].keyframe for f in fragments)
        decoder = av.CodecContext.create("h264", "r")
        decoder.extradata = fragments[0].tracks[0].codec_private
        pictures = []
        for fragment in fragments:
            for frame in fragment.frames:
                pictures += decoder.decode(av.Packet(bytes(frame.data)))
        pictures += decoder.decode(None)
        images = [p.to_ndarray(format="bgr24") for p in pictures]
        assert [read_index(i) for i in images] == list(range(60))
        for image, expected in zip(images, reference, strict=True):
            assert np.array_equal(image, expected)

    _run(body)


def test_audio_and_video(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """A source with AAC: the viewer that asks for audio gets the tone as Opus, and
    every video frame as before."""
    if not _isolated(request):
        return
    clip = write_clip(tmp_path / "tone.mp4", 60, tone_hz=440.0)

    async def body(emulator: Emulator, ca: Path) -> None:
        master = _master(emulator, ca, clip)
        serving = asyncio.ensure_future(master.run())
        await asyncio.wait_for(master.connected.wait(), 10)
        chunks: list[ViewerAudio] = []
        viewer = Viewer(
            aws_for(emulator), "cam", ca_file=ca, retry=FAST_RETRY, on_audio=chunks.append
        )
        frames = await _watch(viewer)
        await serving
        assert [read_index(f.image) for f in frames] == list(range(60))
        assert chunks and chunks[0].sample_rate == 48_000
        samples = np.concatenate([c.samples[:, 0] for c in chunks]).astype(np.float64)
        # about the clip's 2 s (the last packets may still be in flight when video ends)
        assert 1.5 <= len(samples) / 48_000 <= 2.3
        spectrum = np.abs(np.fft.rfft(samples[4800:]))  # past the codec's start-up
        peak_hz = np.argmax(spectrum) * 48_000 / (len(samples) - 4800)
        assert abs(peak_hz - 440.0) < 5

    _run(body)
