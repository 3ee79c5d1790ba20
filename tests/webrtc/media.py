"""Test media for WebRTC: H.264 clips whose pictures carry their frame index.

The index is written as 12 black/white blocks (one bit each) along the top of the
picture, big enough to survive lossy coding, so a receiver can tell which frame it got.
"""

from __future__ import annotations

import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import numpy.typing as npt

BITS = 12
BLOCK = 24


def indexed_picture(index: int, width: int, height: int) -> npt.NDArray[np.uint8]:
    """An RGB picture: a gradient that moves with ``index`` and the index's bits on top."""
    x = np.arange(width, dtype=np.int32)[None, :]
    y = np.arange(height, dtype=np.int32)[:, None]
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:, :, 0] = ((x + index * 4) % 256).astype(np.uint8)
    image[:, :, 1] = ((y + index * 2) % 256).astype(np.uint8)
    image[:, :, 2] = 128
    image[: BLOCK + 8] = 128
    for bit in range(BITS):
        value = 255 if index >> bit & 1 else 0
        image[4 : 4 + BLOCK, 4 + bit * BLOCK : 4 + (bit + 1) * BLOCK - 4] = value
    return image


def read_index(image: npt.NDArray[np.uint8]) -> int:
    """The index :func:`indexed_picture` wrote (any 3-channel order)."""
    gray = image[4 : 4 + BLOCK].mean(axis=2)
    index = 0
    for bit in range(BITS):
        block = gray[4:-4, 4 + bit * BLOCK + 4 : 4 + (bit + 1) * BLOCK - 8]
        if block.mean() > 128:
            index |= 1 << bit
    return index


def write_clip(
    path: Path,
    count: int,
    *,
    width: int = 320,
    height: int = 240,
    fps: int = 30,
    gop: int = 30,
    tone_hz: float | None = None,
) -> Path:
    """An MP4 of ``count`` indexed H.264 frames (libx264, no B-frames); with
    ``tone_hz`` also an AAC track (48 kHz mono) of that sine, as long as the video."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = Fraction(1, fps)
        stream.codec_context.gop_size = gop
        stream.codec_context.options = {"preset": "ultrafast", "tune": "zerolatency", "bf": "0"}
        audio = None
        if tone_hz is not None:
            audio = container.add_stream("aac", rate=48_000)
            audio.layout = "mono"
        for index in range(count):
            frame = av.VideoFrame.from_ndarray(indexed_picture(index, width, height), "rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
        if audio is not None and tone_hz is not None:
            total = count * 48_000 // fps
            t = np.arange(total) / 48_000
            tone = (0.5 * np.sin(2 * np.pi * tone_hz * t)).astype(np.float32)
            for start in range(0, total, 1024):
                chunk = tone[start : start + 1024]
                samples = av.AudioFrame.from_ndarray(chunk[None, :], format="fltp", layout="mono")
                samples.sample_rate = 48_000
                samples.pts = start
                container.mux(audio.encode(samples))
            container.mux(audio.encode(None))
    return path


def decode_clip(path: Path) -> list[npt.NDArray[np.uint8]]:
    """Every picture of ``path`` as bgr24, decoded by PyAV (the reference)."""
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]


INSIDE = "KVS_WEBRTC_NETNS"


def run_in_loopback_namespace(nodeid: str, timeout: float = 100) -> None:
    """Run the pytest ``nodeid`` again inside a new network namespace with only ``lo``
    (up): whatever it does, no packet can leave the machine. Needs root (``unshare``)."""
    env = dict(os.environ, **{INSIDE: "1"})
    command = (
        f"ip link set lo up && exec {sys.executable} -m pytest -q -x -p no:cacheprovider {nodeid}"
    )
    try:
        done = subprocess.run(
            ["unshare", "--net", "sh", "-c", command],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"{nodeid} timed out in the namespace:\n{exc.stdout!r}") from exc
    assert done.returncode == 0, f"{nodeid} in the namespace:\n{done.stdout}\n{done.stderr}"


def inside_namespace() -> bool:
    return os.environ.get(INSIDE) == "1"
