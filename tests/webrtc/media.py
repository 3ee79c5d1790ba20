"""Test media for WebRTC: H.264 clips whose pictures carry their frame index.

The index is written as 12 black/white blocks (one bit each) along the top of the
picture, big enough to survive lossy coding, so a receiver can tell which frame it got.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import numpy.typing as npt
import pytest

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
# Inside a batch run: the file each test's outcome is written to (tests/webrtc/conftest.py).
RESULTS = "KVS_WEBRTC_NETNS_RESULTS"
# Tests marked ``loopback_namespace`` are re-run inside the namespace together: one
# pytest process per test file for all of that file's marked tests the session selected
# (filled in by tests/webrtc/conftest.py), instead of one process (a second of pytest
# and import start-up) per test. Each test still runs inside the namespace, in its own
# emulator, and fails with its own outcome there.
MARK = "loopback_namespace"
SELECTED: dict[str, list[str]] = {}  # test file -> its marked node ids, in run order
_OUTCOMES: dict[str, dict[str, Outcome]] = {}  # test file -> node id -> outcome


@dataclass
class Outcome:
    """A test's result inside the namespace: ``passed``, ``failed`` or ``skipped``."""

    status: str = "passed"
    details: list[str] = field(default_factory=list)


def run_in_loopback_namespace(nodeid: str, timeout: float = 100) -> None:
    """Run the pytest ``nodeid`` again inside a new network namespace with only ``lo``
    (up): whatever it does, no packet can leave the machine. Needs root (``unshare``).

    A test marked ``loopback_namespace`` runs there with the other marked tests of its
    file (``timeout`` each), once, and gets its own outcome; others run alone."""
    module = nodeid.split("::", 1)[0]
    batch = SELECTED.get(module, [])
    if nodeid not in batch:
        done = _run_inside([nodeid], timeout, results=None)
        assert done.returncode == 0, f"{nodeid} in the namespace:\n{done.stdout}\n{done.stderr}"
        return
    if module not in _OUTCOMES:
        _OUTCOMES[module] = _run_batch(batch, timeout * len(batch))
    outcome = _OUTCOMES[module][nodeid]
    text = "\n".join(outcome.details)
    if outcome.status == "skipped":
        pytest.skip(f"inside the namespace: {text}")
    assert outcome.status == "passed", f"{nodeid} in the namespace:\n{text}"


def _run_inside(
    nodeids: list[str], timeout: float, results: Path | None
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, **{INSIDE: "1"})
    if results is not None:
        env[RESULTS] = str(results)
    first = "-x " if results is None else ""
    command = (
        f"ip link set lo up && exec {shlex.quote(sys.executable)} -m pytest -q {first}"
        f"-p no:cacheprovider {' '.join(shlex.quote(n) for n in nodeids)}"
    )
    try:
        return subprocess.run(
            ["unshare", "--net", "sh", "-c", command],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"{nodeids} timed out in the namespace:\n{exc.stdout!r}") from exc


def _run_batch(nodeids: list[str], timeout: float) -> dict[str, Outcome]:
    """Run ``nodeids`` in one pytest process inside the namespace; each one's outcome
    (a test with no reported outcome failed: the run's whole output is its reason)."""
    with tempfile.TemporaryDirectory(prefix="kvs-netns-") as folder:
        results = Path(folder) / "results.jsonl"
        results.touch()
        done = _run_inside(nodeids, timeout, results)
        reports = [json.loads(line) for line in results.read_text().splitlines()]
    outcomes: dict[str, Outcome] = {}
    for report in reports:
        outcome = outcomes.setdefault(report["nodeid"], Outcome())
        if report["outcome"] == "failed":
            outcome.status = "failed"
        elif report["outcome"] == "skipped" and outcome.status == "passed":
            outcome.status = "skipped"
        if report["outcome"] != "passed":
            outcome.details.append(f"--- {report['when']}: {report['outcome']}")
            outcome.details.append(report["longrepr"])
            outcome.details.extend(report["sections"])
    whole = f"exit {done.returncode}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    for nodeid in nodeids:
        if nodeid not in outcomes:
            outcomes[nodeid] = Outcome("failed", ["no outcome reported", whole])
    return outcomes


def record_outcome(report: pytest.TestReport) -> None:
    """Inside a batch run: append ``report`` (one phase of a test) to the results file."""
    path = os.environ.get(RESULTS)
    if not path or not inside_namespace():
        return
    failed_or_skipped = report.failed or report.skipped
    record = {
        "nodeid": report.nodeid,
        "when": report.when,
        "outcome": report.outcome,
        "longrepr": str(report.longrepr) if failed_or_skipped else "",
        "sections": [f"--- {title}\n{text}" for title, text in report.sections]
        if report.failed
        else [],
    }
    with open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps(record) + "\n")


def inside_namespace() -> bool:
    return os.environ.get(INSIDE) == "1"
