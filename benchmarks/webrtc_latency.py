"""KVS WebRTC on loopback: glass-to-glass latency, connect-to-first-frame, master CPU.

The issue's numbers: "Glass to glass on loopback, 1280x720 at 30 frames/s, Python master
-> Python viewer: p50 < 80 ms, p99 < 150 ms. Time from viewer connect to first decoded
frame < 1 s. Pass-through master CPU < 10% of the same master encoding with libx264."

Everything runs in a network namespace with only ``lo`` (the module re-runs itself
under ``unshare --net``), ICE on 127.0.0.1, no STUN/TURN, signaling through the
emulator (``wss://`` with its local CA).

* Media: a 1280x720 30 fps H.264 clip (libx264 ultrafast, zerolatency, a key frame a
  second), each picture carrying its frame index in blocks along the top.
* Glass to glass: master and viewer in this process. "Glass" is the moment the
  master's source releases frame i (a FileSource paced in real time, wrapped to note
  the time); the viewer reads i back from the decoded picture and notes its arrival.
  Reference: decoding the same frame with PyAV here, no network (what a viewer pays
  at least); the ratio is ours / reference at p50.
* Connect to first frame: ``Viewer.frames()`` called -> first decoded picture
  (signaling connect, offer/answer, ICE, DTLS, first key frame).
* CPU: the master as its own process (``kvs webrtc master``), once passing H.264
  through and once with ``--encode`` (decode + libx264 through aiortc), each serving
  the whole clip to one viewer; its user+system CPU seconds while streaming (from the
  viewer's first frame to its last, read from ``/proc/PID/stat``), so Python start-up
  and imports, the same in both, are left out; the whole-process figure is a note.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any, Final

from benchmarks.common import Options, Result, fmt_ratio

_INSIDE: Final = "KVS_WEBRTC_BENCH_NETNS"
# The test helpers' credentials: their boto3 clients and AwsAccess sign with these.
from tests.webrtc.conftest import ACCESS_KEY as _ACCESS_KEY  # noqa: E402
from tests.webrtc.conftest import REGION as _REGION  # noqa: E402
from tests.webrtc.conftest import SECRET as _SECRET  # noqa: E402

_ROOT: Final = Path(__file__).resolve().parents[1]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def _timed_source(clip: Path, released: dict[int, float]) -> Any:
    from kvs_toolkit.producer.fragmenter import EncodedFrame
    from kvs_toolkit.producer.sources import FileSource, FrameSource, SourceOptions

    class TimedSource(FrameSource):
        """A paced FileSource noting when each video frame is released."""

        def __init__(self) -> None:
            super().__init__(f"timed {clip}")
            self.inner = FileSource(clip, SourceOptions(realtime=True))

        def _frames(self) -> Generator[EncodedFrame, None, None]:
            self._set_tracks(self.inner.tracks)
            index = 0
            for frame in self.inner:
                if frame.track_number == 1:
                    released[index] = time.time()
                    index += 1
                yield frame

        def close(self) -> None:
            self.inner.close()
            super().close()

    return TimedSource()


async def _latency(emulator: Any, ca: Path, clip: Path) -> dict[str, Any]:
    from kvs_toolkit.webrtc.master import Master
    from kvs_toolkit.webrtc.viewer import Viewer
    from tests.webrtc.conftest import aws_for
    from tests.webrtc.media import read_index

    released: dict[int, float] = {}
    master = Master(aws_for(emulator), "bench", _timed_source(clip, released), ca_file=ca)
    serving = asyncio.ensure_future(master.run())
    await master.connected.wait()
    viewer = Viewer(aws_for(emulator), "bench", ca_file=ca)
    arrivals: dict[int, float] = {}
    async for frame in viewer.frames():
        arrivals[read_index(frame.image)] = frame.received_at
    await serving
    latencies = [(arrivals[i] - released[i]) * 1000 for i in arrivals if i in released]
    assert viewer.first_frame_at is not None and viewer.connected_at is not None
    return {
        "frames": len(arrivals),
        "sent": len(released),
        "latencies_ms": latencies,
        "first_frame_s": viewer.first_frame_at - viewer.connected_at,
    }


def _decode_reference_ms(clip: Path) -> list[float]:
    import av

    times = []
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        decoder = av.CodecContext.create("h264", "r")
        decoder.extradata = stream.codec_context.extradata
        for packet in container.demux(stream):
            if packet.size == 0:
                continue
            start = time.perf_counter()
            for picture in decoder.decode(packet):
                picture.to_ndarray(format="bgr24")
            times.append((time.perf_counter() - start) * 1000)
    return times


async def _master_cpu(emulator: Any, ca: Path, clip: Path, encode: bool) -> dict[str, float]:
    from kvs_toolkit.webrtc.viewer import Viewer
    from tests.webrtc.conftest import aws_for

    env = dict(
        os.environ,
        AWS_ACCESS_KEY_ID=_ACCESS_KEY,
        AWS_SECRET_ACCESS_KEY=_SECRET,
        PYTHONPATH=str(_ROOT),
    )
    command = [
        sys.executable,
        "-m",
        "kvs_toolkit.cli",
        "--endpoint-url",
        emulator.endpoint_url,
        "--region",
        _REGION,
        "webrtc",
        "master",
        "--channel",
        "bench",
        "--loopback",
        "--ca-file",
        str(ca),
        str(clip),
        *(["--encode"] if encode else []),
    ]
    process = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
    hub = emulator._runner.app[_hub_key()]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while hub.master("bench") is None:
        if loop.time() > deadline:
            process.kill()
            raise RuntimeError("the master process did not connect")
        await asyncio.sleep(0.05)
    frames = 0
    streaming_start = streaming_end = 0.0
    async for _ in Viewer(aws_for(emulator), "bench", ca_file=ca).frames():
        if frames == 0:
            streaming_start = _cpu_seconds(process.pid)
        streaming_end = _cpu_seconds(process.pid)
        frames += 1
    _, status, usage = await asyncio.to_thread(os.wait4, process.pid, 0)
    if status != 0:
        raise RuntimeError(f"the master process failed ({status})")
    return {
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "streaming_cpu_s": streaming_end - streaming_start,
        "frames": frames,
    }


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _hub_key() -> Any:
    from kvs_toolkit.emulator.signaling import HUB

    return HUB


def _measure(seconds: float) -> dict[str, Any]:
    """Inside the namespace: every measurement, as JSON-able numbers."""
    from kvs_toolkit.emulator import Emulator
    from kvs_toolkit.webrtc.ice import LOOPBACK, use_host_addresses
    from tests.webrtc.conftest import client
    from tests.webrtc.media import write_clip

    use_host_addresses(LOOPBACK)
    with tempfile.TemporaryDirectory(prefix="kvs-webrtc-bench-") as tmp:
        clip = write_clip(
            Path(tmp) / "clip.mp4", int(seconds * 30), width=1280, height=720, fps=30, gop=30
        )
        reference = _decode_reference_ms(clip)

        async def main() -> dict[str, Any]:
            async with Emulator(credentials={_ACCESS_KEY: _SECRET}) as emulator:
                kv = client("kinesisvideo", emulator)
                await asyncio.to_thread(kv.create_signaling_channel, ChannelName="bench")
                kv.close()
                ca = emulator.data_dir / "signaling" / "tls" / "ca.pem"
                latency = await _latency(emulator, ca, clip)
                passthrough = await _master_cpu(emulator, ca, clip, encode=False)
                encoded = await _master_cpu(emulator, ca, clip, encode=True)
                return {
                    "latency": latency,
                    "reference_decode_ms": reference,
                    "passthrough": passthrough,
                    "encoded": encoded,
                    "clip_frames": int(seconds * 30),
                }

        return asyncio.run(main())


def run(options: Options) -> list[Result]:
    seconds = 4.0 if options.quick else 10.0
    if os.environ.get(_INSIDE) == "1":
        data = _measure(seconds)
    else:
        env = dict(os.environ, **{_INSIDE: "1"}, PYTHONPATH=str(_ROOT))
        inner = f"ip link set lo up && exec {sys.executable} -m benchmarks.webrtc_latency {seconds}"
        done = subprocess.run(
            ["unshare", "--net", "sh", "-c", inner],
            env=env,
            cwd=_ROOT,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"webrtc_latency in the namespace failed:\n{done.stderr[-3000:]}")
        data = json.loads(done.stdout.strip().splitlines()[-1])
    return _results(data)


def _results(data: dict[str, Any]) -> list[Result]:
    latency = data["latency"]
    ms = latency["latencies_ms"]
    p50, p99 = _percentile(ms, 50), _percentile(ms, 99)
    ref = data["reference_decode_ms"]
    ref50, ref99 = _percentile(ref, 50), _percentile(ref, 99)
    first = latency["first_frame_s"]
    cpu_pass = data["passthrough"]["streaming_cpu_s"]
    cpu_enc = data["encoded"]["streaming_cpu_s"]
    notes = (
        f"1280x720 30 fps, {data['clip_frames']} frames; viewer got {latency['frames']} of "
        f"{latency['sent']} (latency run), {data['passthrough']['frames']} / "
        f"{data['encoded']['frames']} (CPU runs: pass-through / --encode)",
        "glass to glass: source releases frame i -> viewer decoded picture with index i, "
        "same process (2 shared cores); reference: PyAV decode + bgr24 of the same frame",
        "CPU: the master process's user+system seconds (/proc/PID/stat) from the viewer's "
        "first frame to its last; whole process lifetime (wait4, start-up and signaling "
        f"included): {data['passthrough']['cpu_s']:.2f} s pass-through, "
        f"{data['encoded']['cpu_s']:.2f} s --encode",
    )
    return [
        Result(
            "webrtc glass-to-glass p50 (720p30, loopback)",
            f"{p50:.1f} ms",
            f"{ref50:.1f} ms (decode only)",
            fmt_ratio(p50 / ref50) if ref50 > 0 else "-",
            "< 80 ms",
            p50 < 80,
            notes,
        ),
        Result(
            "webrtc glass-to-glass p99",
            f"{p99:.1f} ms",
            f"{ref99:.1f} ms (decode only)",
            fmt_ratio(p99 / ref99) if ref99 > 0 else "-",
            "< 150 ms",
            p99 < 150,
        ),
        Result(
            "webrtc connect to first frame",
            f"{first * 1000:.0f} ms",
            "-",
            "-",
            "< 1 s",
            first < 1.0,
        ),
        Result(
            "webrtc master CPU, pass-through vs libx264",
            f"{cpu_pass:.2f} s",
            f"{cpu_enc:.2f} s (--encode)",
            f"{100 * cpu_pass / cpu_enc:.1f}%",
            "< 10%",
            cpu_pass < 0.1 * cpu_enc,
        ),
    ]


if __name__ == "__main__":
    sys.stdout.write(json.dumps(_measure(float(sys.argv[1]))) + "\n")
