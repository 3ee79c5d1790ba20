"""What every benchmark module shares: the result row, the run options and timing helpers.

A benchmark module in this folder exposes ``run(options: Options) -> list[Result]``; the
runner (``python -m benchmarks``) finds it, calls it and prints its rows in one table.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Final, TypeVar

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from kvs_toolkit.samples import SampleSpec

T = TypeVar("T")

# Throughputs are in decimal megabytes (10**6 bytes), as network rates are.
MB = 1_000_000


@dataclass(frozen=True, slots=True)
class Options:
    """How the runner asks a benchmark to run."""

    quick: bool = False
    long: bool = False  # memory-over-time rows run their full length (10 min, 1 h)


@dataclass(frozen=True, slots=True)
class Result:
    """One row of the table. Cells are preformatted; ``met`` says whether the goal was met.

    ``notes`` are printed under the table: how a number was measured, what was capped or
    extrapolated. A benchmark states its method there rather than in the cells.
    """

    benchmark: str
    ours: str
    reference: str
    ratio: str
    goal: str
    met: bool | None = None
    notes: tuple[str, ...] = field(default=())


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector around a timed section, as ``timeit`` does."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def repeat(fn: Callable[[], T], repeats: int) -> tuple[tuple[float, ...], T]:
    """Run ``fn`` ``repeats`` times; return each run's seconds and the last result."""
    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    seconds: list[float] = []
    result: T
    for _ in range(repeats):
        with gc_paused():
            start = time.perf_counter()
            result = fn()
            seconds.append(time.perf_counter() - start)
    return tuple(seconds), result


def fmt_rate(mb_per_s: float) -> str:
    """A throughput with about three significant digits."""
    if mb_per_s >= 100:
        return f"{mb_per_s:,.0f} MB/s"
    if mb_per_s >= 10:
        return f"{mb_per_s:.1f} MB/s"
    if mb_per_s >= 1:
        return f"{mb_per_s:.2f} MB/s"
    return f"{mb_per_s:.3f} MB/s"


def fmt_ratio(ratio: float) -> str:
    if ratio >= 100:
        return f"{ratio:,.0f}x"
    if ratio >= 10:
        return f"{ratio:.1f}x"
    return f"{ratio:.2f}x"


def fmt_size(n_bytes: float) -> str:
    """A byte count in decimal MB (the unit of the throughput columns)."""
    return f"{n_bytes / MB:g} MB" if n_bytes % 100_000 == 0 else f"{n_bytes / MB:.2f} MB"


# ---------------------------------------------------------------------------------------
# Long runs, caches, processes and memory


# ``--long`` (or this variable, in seconds) sets how long the memory-over-time rows run.
LONG_ENV: Final = "KVS_BENCH_LONG_S"


def soak_seconds(options: Options, *, short: float, quick: float, long: float) -> float:
    """How long a memory-over-time row runs: ``KVS_BENCH_LONG_S`` if set, else ``long``
    with ``--long``, ``quick`` with ``--quick`` and ``short`` in a plain run."""
    text = os.environ.get(LONG_ENV)
    if text:
        try:
            seconds = float(text)
        except ValueError:
            raise SystemExit(f"{LONG_ENV} must be a number of seconds, not {text!r}") from None
        if seconds <= 0:
            raise SystemExit(f"{LONG_ENV} must be positive, not {text!r}")
        return seconds
    if options.long:
        return long
    return quick if options.quick else short


def cache_dir() -> Path:
    """Where benchmarks keep the deterministic media they make once (the temp folder)."""
    folder = Path(tempfile.gettempdir()) / "kvs-toolkit-bench"
    folder.mkdir(exist_ok=True)
    return folder


def rss_bytes(pid: int) -> int | None:
    """Resident set size of a process now (``VmRSS``), None once it has gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return None


@dataclass
class RssSampler:
    """Samples a process's RSS every ``interval_s`` in a thread, until stopped."""

    pid: int
    interval_s: float = 5.0
    samples: list[tuple[float, int]] = field(default_factory=list)  # (seconds, bytes)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._started = time.monotonic()

    def start(self) -> RssSampler:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def stop(self) -> list[tuple[float, int]]:
        self._stop.set()
        self._thread.join()
        return self.samples

    def _run(self) -> None:
        while True:
            rss = rss_bytes(self.pid)
            if rss is None:
                return
            self.samples.append((time.monotonic() - self._started, rss))
            if self._stop.wait(self.interval_s):
                return


@dataclass(frozen=True)
class RssGrowth:
    """How a process's RSS moved after its warm-up: the figures of a memory-flat row."""

    warm_bytes: int  # median of the first window after warm-up
    final_bytes: int  # median of the last window
    peak_bytes: int
    samples: int
    seconds: float

    @property
    def growth_bytes(self) -> int:
        return self.final_bytes - self.warm_bytes


def rss_growth(samples: list[tuple[float, int]], warmup_s: float) -> RssGrowth:
    """Growth from the first to the last window (each a tenth of the run after warm-up,
    at least five samples), comparing medians so transient peaks (a fragment's frames
    decoded at once) do not decide."""
    settled = [(t, rss) for t, rss in samples if t >= warmup_s]
    if len(settled) < 4:
        raise RuntimeError(f"only {len(settled)} RSS samples after the {warmup_s:g} s warm-up")
    window = min(max(5, len(settled) // 10), len(settled) // 2)
    first = sorted(rss for _, rss in settled[:window])
    last = sorted(rss for _, rss in settled[-window:])
    return RssGrowth(
        warm_bytes=first[len(first) // 2],
        final_bytes=last[len(last) // 2],
        peak_bytes=max(rss for _, rss in settled),
        samples=len(settled),
        seconds=settled[-1][0] - settled[0][0],
    )


def fmt_mib(n_bytes: float) -> str:
    """Memory in MB as ``/usr/bin/time`` users read it (MiB, written MB)."""
    return f"{n_bytes / 2**20:.1f} MB"


def max_rss_of(time_v_stderr: str) -> int:
    """``Maximum resident set size`` from ``/usr/bin/time -v`` output, in bytes."""
    for line in time_v_stderr.splitlines():
        if "Maximum resident set size" in line:
            return int(line.rsplit(":", 1)[1]) * 1024
    raise RuntimeError("no 'Maximum resident set size' in /usr/bin/time -v output")


def kvs_command() -> list[str]:
    """The ``kvs`` command of this interpreter's environment."""
    script = Path(sys.executable).with_name("kvs")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "kvs_toolkit.cli"]


class EmulatorProcess:
    """``kvs emulator --port 0`` in a child process (its CPU and memory are not ours)."""

    def __init__(self, data_dir: Path) -> None:
        self.process = subprocess.Popen(
            [*kvs_command(), "emulator", "--port", "0", "--data-dir", str(data_dir)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        if not line.startswith("http://"):
            self.close()
            raise RuntimeError(f"the emulator did not print its URL (got {line!r})")
        self.endpoint_url = line

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> EmulatorProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------
# A realistic encoded clip


@dataclass(frozen=True)
class EncodedClip:
    """A deterministic H.264 clip: Annex-B elementary stream, the same in MKV, and the
    byte size of each access unit (to pace it like a camera)."""

    width: int
    height: int
    fps: int
    seconds: float
    bitrate: int
    annexb: Path
    mkv: Path
    unit_sizes: tuple[int, ...]

    @property
    def frames(self) -> int:
        return len(self.unit_sizes)

    def units(self) -> list[bytes]:
        """The access units, Annex-B, in decoding order."""
        data = self.annexb.read_bytes()
        out, at = [], 0
        for size in self.unit_sizes:
            out.append(data[at : at + size])
            at += size
        return out


def encoded_clip(
    width: int = 1920,
    height: int = 1080,
    fps: int = 30,
    seconds: float = 30.0,
    *,
    bitrate: int = 4_000_000,
    gop_seconds: float = 2.0,
) -> EncodedClip:
    """Make (once, cached) a clip like a camera's hardware encoder gives: libx264 at a
    fixed bitrate, a key frame every ``gop_seconds`` with SPS/PPS in band, no B-frames.

    The picture is the sample's moving boxes and clock over a drifting noise texture, so
    the encoder spends its bitrate as on a real scene instead of coding a flat
    background in a few bytes.
    """
    import av

    from kvs_toolkit.samples import SampleSpec

    name = f"camera-{width}x{height}p{fps}-{seconds:g}s-{bitrate // 1000}k-gop{gop_seconds:g}"
    folder = cache_dir()
    annexb, mkv, index = (folder / f"{name}{ext}" for ext in (".h264", ".mkv", ".json"))
    if not (annexb.exists() and mkv.exists() and index.exists()):
        spec = SampleSpec(width=width, height=height, fps=fps, seconds=seconds)
        gop = round(fps * gop_seconds)
        codec = av.CodecContext.create("libx264", "w")
        codec.width, codec.height, codec.pix_fmt = width, height, "yuv420p"
        codec.time_base = Fraction(1, fps)
        codec.framerate = Fraction(fps)
        codec.bit_rate = bitrate
        codec.gop_size = gop
        codec.options = {
            "preset": "veryfast",
            "bf": "0",
            "keyint": str(gop),
            "min-keyint": str(gop),
            "sc_threshold": "0",
            "repeat-headers": "1",
            "maxrate": str(bitrate),
            "bufsize": str(bitrate),
        }  # x264 params for VBV: see _vbv in kvs_toolkit.producer.encoder
        texture = camera_texture(width, height, fps)
        units: list[bytes] = []
        for index_ in range(spec.frame_count):
            image = camera_frame(spec, index_, texture)
            frame = av.VideoFrame.from_ndarray(image, format="bgr24").reformat(format="yuv420p")
            frame.pts = index_
            units += [bytes(p) for p in codec.encode(frame)]
        units += [bytes(p) for p in codec.encode(None)]
        partial = annexb.with_suffix(".partial")
        partial.write_bytes(b"".join(units))
        _annexb_to_mkv(partial, mkv, fps)
        partial.replace(annexb)
        index.write_text(json.dumps([len(u) for u in units]))
    sizes = tuple(json.loads(index.read_text()))
    return EncodedClip(width, height, fps, seconds, bitrate, annexb, mkv, sizes)


def camera_texture(width: int, height: int, fps: int) -> npt.NDArray[np.int16]:
    """A fixed noise texture, wider than the frame, that :func:`camera_frame` drifts."""
    import numpy as np

    rng = np.random.default_rng(20261126)
    return rng.integers(-14, 15, size=(height, width + fps * 8, 1), dtype=np.int16)


def camera_frame(
    spec: SampleSpec, index: int, texture: npt.NDArray[np.int16]
) -> npt.NDArray[np.uint8]:
    """Frame ``index`` of the sample (boxes and clock) over the texture, 4 px further
    each frame: detail for the encoder to spend bits on, as a real scene has."""
    import numpy as np

    from kvs_toolkit.samples import render_frame

    shift = (index * 4) % (spec.fps * 8)
    noisy = render_frame(spec, index).astype(np.int16)
    noisy += texture[:, shift : shift + spec.width]
    return np.clip(noisy, 0, 255).astype(np.uint8)


def _annexb_to_mkv(annexb: Path, mkv: Path, fps: int) -> None:
    """Remux without re-encoding with FFmpeg's command (a raw stream has no timestamps:
    ``-framerate`` gives them)."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise RuntimeError("the ffmpeg command is needed to make the benchmark clip (apt ffmpeg)")
    partial = mkv.with_suffix(".partial.mkv")
    subprocess.run(
        [ffmpeg, "-v", "error", "-y", "-framerate", str(fps), "-f", "h264", "-i", str(annexb),
         "-c", "copy", str(partial)],
        check=True,
    )  # fmt: skip
    partial.replace(mkv)
