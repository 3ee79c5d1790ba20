"""Decoding a GetMedia stream to BGR numpy frames, against PyAV decoding the same file.

The video is the camera-like clip of ``benchmarks.common.encoded_clip`` (H.264 libx264,
1920x1080 at 30 fps, 4 Mbit/s, a key frame every 2 s, no B-frames; its first 10 s, or
4 s with ``--quick``), cut without re-encoding into an MKV file with FFmpeg and cached
in the temp folder (it is deterministic). The same frames are packaged the way GetMedia
returns them: one EBML document per 2 s fragment with the AWS tags around the Cluster.

* Ours: :class:`kvs_toolkit.mkv.FragmentReader` fed the GetMedia bytes in 64 KiB chunks,
  :class:`kvs_toolkit.consumer.FragmentDecoder` (``format="bgr24"``, defaults) on each
  fragment; every frame's ``image`` is a BGR ndarray. Parsing is included.
* Reference: what a Python user writes with PyAV and no KVS in the way -
  ``av.open(file)``, ``container.decode(video=0)``, ``frame.to_ndarray(format="bgr24")``
  with PyAV's defaults. Two more rows give the reference what ours has, so the ratio is
  not only about them: the same FFmpeg threading (``thread_type="AUTO"``), and one
  :class:`~av.video.reformatter.VideoReformatter` reused for every frame
  (``to_ndarray(format=...)`` builds a new swscale context per frame; ours keeps one).
* Sampling: key frames only, and ``fps=1``, against our full decode.
* Model-ready batches: ours, then every 8 frames through
  :class:`kvs_toolkit.consumer.FrameBatcher` (640x640 letterbox, float32 NCHW RGB scaled
  to 0-1), against our plain BGR output; and the same with the decoder scaling each
  frame to the letterbox's inner size in its colour conversion
  (``FragmentDecoder(fit=(640, 640))``), so the batcher only pads and normalises.

Every contender consumes its frames as a real consumer would (each array is dropped
after use: a 1080p BGR frame is 6 MB), keeping only the ones the checks compare: both
must return every frame, and the first, a middle and the last frame must be
pixel-equal between ours and PyAV's, so a broken decode fails instead of looking fast.
Runs alternate between contenders; the best of the rounds is reported.

The last row, memory over live reading, is described at :func:`live_soak`.
"""

from __future__ import annotations

import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from benchmarks.common import (
    EmulatorProcess,
    Options,
    Result,
    RssGrowth,
    RssSampler,
    cache_dir,
    encoded_clip,
    fmt_mib,
    fmt_ratio,
    gc_paused,
    kvs_command,
    rss_growth,
    soak_seconds,
)
from benchmarks.producer_upload import child_environment
from kvs_toolkit.consumer import DecodedFrame, FragmentDecoder, FrameBatcher
from kvs_toolkit.mkv import FragmentReader, FrameData, MkvWriter, Tag, TrackInfo, getmedia_document
from kvs_toolkit.mkv.model import (
    TAG_CONTINUATION_TOKEN,
    TAG_FRAGMENT_NUMBER,
    TAG_MILLIS_BEHIND_NOW,
    TAG_PRODUCER_TIMESTAMP,
    TAG_SERVER_TIMESTAMP,
)
from kvs_toolkit.samples import SampleSpec

GOAL_RATIO: Final = 0.9
KEYFRAME_GOAL: Final = 10.0
CHUNK_SIZE: Final = 64 * 1024
START_MS: Final = 1_700_000_000_000
BATCH: Final = 8
MODEL_SIZE: Final = 640
#: Mean |difference| (0-255 levels) allowed between a decoder-scaled tensor and the
#: OpenCV-resized one of the same frame: swscale's filter widens with the shrink factor,
#: cv2.resize INTER_LINEAR does not, so 1080p -> 640x360 differs by a few levels.
SCALED_MEAN_ERROR_LIMIT: Final = 8.0


@dataclass(frozen=True, slots=True)
class Clip:
    spec: SampleSpec
    path: Path  # the MKV file the reference opens
    getmedia: bytes  # the same frames as a GetMedia stream
    frames: int
    keyframes: int


def sample_clip(quick: bool) -> Clip:
    camera = encoded_clip()
    seconds = 4 if quick else 10
    spec = SampleSpec(width=camera.width, height=camera.height, fps=camera.fps, seconds=seconds)
    path = cache_dir() / f"{camera.mkv.stem}-first{seconds}s.mkv"
    if not path.exists():
        ffmpeg = shutil.which("ffmpeg")
        if ffmpeg is None:
            raise RuntimeError("the ffmpeg command is needed to cut the benchmark clip")
        partial = path.with_suffix(".partial.mkv")
        subprocess.run(
            [ffmpeg, "-v", "error", "-y", "-i", str(camera.mkv), "-frames:v",
             str(spec.frame_count), "-c", "copy", str(partial)],
            check=True,
        )  # fmt: skip
        partial.replace(path)
    getmedia, frames, keyframes = package_as_getmedia(path.read_bytes())
    return Clip(spec, path, getmedia, frames, keyframes)


def package_as_getmedia(source: bytes) -> tuple[bytes, int, int]:
    """An MKV file's video as GetMedia documents, one per key-frame-aligned fragment."""
    reader = FragmentReader()
    fragments = reader.feed(source) + reader.close()
    track = fragments[0].video_track
    if track is None:
        raise RuntimeError("the sample has no video track")
    frames = [f for fragment in fragments for f in fragment.frames if f.track_number == 1]
    origin = frames[0].timestamp_ns
    writer = MkvWriter([TrackInfo(1, track.codec_id, track.codec_private, width=track.width,
                                  height=track.height)])  # fmt: skip
    groups: list[list[FrameData]] = []
    for frame in frames:
        if frame.keyframe or not groups:
            groups.append([])
        timecode = START_MS + (frame.timestamp_ns - origin) // 1_000_000
        groups[-1].append(FrameData(1, timecode, bytes(frame.data), frame.keyframe))
    documents = []
    for n, group in enumerate(groups):
        timecode = group[0].timecode
        seconds = f"{timecode // 1000}.{timecode % 1000:03d}"
        number = f"{91343852333181432392682062607743920146159169392 + n}"
        documents.append(
            getmedia_document(
                writer,
                timecode,
                group,
                tags_before=[
                    Tag(TAG_FRAGMENT_NUMBER, number),
                    Tag(TAG_SERVER_TIMESTAMP, seconds),
                    Tag(TAG_PRODUCER_TIMESTAMP, seconds),
                ],
                tags_after=[Tag(TAG_MILLIS_BEHIND_NOW, "0"), Tag(TAG_CONTINUATION_TOKEN, number)],
            )
        )
    return b"".join(documents), len(frames), len(groups)


@dataclass
class Collected:
    """What a contender produced: how many outputs, and the few the checks compare."""

    keep: frozenset[int] | None  # indexes to keep (None: all)
    count: int = 0
    kept: dict[int, np.ndarray] = field(default_factory=dict)

    def add(self, array: np.ndarray) -> None:
        if self.keep is None or self.count in self.keep:
            self.kept[self.count] = array.copy() if array.base is not None else array
        self.count += 1


def _chunks(data: bytes) -> Iterator[memoryview]:
    view = memoryview(data)
    for start in range(0, len(view), CHUNK_SIZE):
        yield view[start : start + CHUNK_SIZE]


def _fragments_decoded(clip: Clip, decoder: FragmentDecoder) -> Iterator[list[DecodedFrame]]:
    reader = FragmentReader()
    for chunk in _chunks(clip.getmedia):
        for fragment in reader.feed(chunk):
            yield decoder.decode(fragment)
    for fragment in reader.close():
        yield decoder.decode(fragment)
    yield decoder.flush()


def decode_ours(clip: Clip, keep: frozenset[int] | None, **options: Any) -> Collected:
    out = Collected(keep)
    for frames in _fragments_decoded(clip, FragmentDecoder(**options)):
        for frame in frames:
            out.add(frame.image)
    return out


def decode_batched(
    clip: Clip, keep: frozenset[int] | None, *, decoder_scales: bool = False
) -> Collected:
    """Ours, then every ``BATCH`` frames into one model-ready tensor (kept: batch n's
    first frame's slice, as index n * BATCH). ``decoder_scales``: the decoder's swscale
    scales to the letterbox's inner size (``fit=batcher.size``) in its colour conversion,
    so the batcher only pads and normalises; otherwise it resizes full frames with OpenCV."""
    batcher = FrameBatcher(MODEL_SIZE, batch_size=BATCH)
    decoder = FragmentDecoder(fit=batcher.size) if decoder_scales else FragmentDecoder()
    out = Collected(keep)
    waiting: list[DecodedFrame] = []

    def emit(frames: Sequence[DecodedFrame]) -> None:
        tensor = batcher(frames).tensor
        if out.keep is None or out.count in out.keep:
            out.kept[out.count] = tensor[0].copy()
        out.count += len(frames)

    for frames in _fragments_decoded(clip, decoder):
        waiting += frames
        while len(waiting) >= BATCH:
            emit(waiting[:BATCH])
            del waiting[:BATCH]
    if waiting:
        emit(waiting)
    return out


def _reference_frames(clip: Clip, thread_type: str | None) -> Iterable[av.VideoFrame]:
    with av.open(str(clip.path)) as container:
        stream = container.streams.video[0]
        if thread_type is not None:
            stream.thread_type = thread_type
        yield from container.decode(video=0)


def decode_reference(
    clip: Clip, keep: frozenset[int] | None, thread_type: str | None = None
) -> Collected:
    out = Collected(keep)
    for frame in _reference_frames(clip, thread_type):
        out.add(frame.to_ndarray(format="bgr24"))
    return out


def decode_reference_reused_reformatter(clip: Clip, keep: frozenset[int] | None) -> Collected:
    reformatter = VideoReformatter()
    out = Collected(keep)
    for frame in _reference_frames(clip, None):
        out.add(reformatter.reformat(frame, format="bgr24").to_ndarray())
    return out


def _time(fn: Callable[[], Collected]) -> tuple[float, Collected]:
    with gc_paused():
        start = time.perf_counter()
        result = fn()
        return time.perf_counter() - start, result


def _check_same(ours: Collected, reference: Collected, who: str) -> None:
    if ours.count != reference.count:
        raise RuntimeError(f"{who}: {ours.count} frames, the reference {reference.count}")
    for index in sorted(ours.kept):
        if not np.array_equal(ours.kept[index], reference.kept[index]):
            raise RuntimeError(f"{who}: frame {index} differs from the reference decode")


def race(
    rounds: int, contenders: dict[str, Callable[[], Collected]]
) -> tuple[dict[str, list[float]], dict[str, Collected]]:
    """Run each contender once per round, in turn (so drift hits all alike)."""
    seconds: dict[str, list[float]] = {name: [] for name in contenders}
    last: dict[str, Collected] = {}
    for name, fn in contenders.items():  # warm-up: page cache, swscale tables, threads
        last[name] = fn()
    for _ in range(rounds):
        for name, fn in contenders.items():
            elapsed, last[name] = _time(fn)
            seconds[name].append(elapsed)
    return seconds, last


def _fps(frames: int, seconds: Sequence[float]) -> float:
    return frames / min(seconds)


def run(options: Options | None = None, *, quick: bool | None = None) -> list[Result]:
    """The benchmark rows. ``run(Options(quick=True))`` as the runner calls it, or
    ``run(quick=True)``."""
    if options is None:
        options = Options(quick=bool(quick))
    elif quick is not None:
        options = Options(quick=quick)
    rows = decode_rows(options)
    rows.append(live_soak_row(options))
    return rows


def decode_rows(options: Options) -> list[Result]:
    clip = sample_clip(options.quick)
    rounds = 2 if options.quick else 3
    frames = clip.frames
    spec = clip.spec
    checked = frozenset({0, frames // 2, frames - 1, spec.fps})
    batch_checked = frozenset({0, BATCH * (frames // BATCH // 2)})
    seconds, outputs = race(
        rounds,
        {
            "ours": lambda: decode_ours(clip, checked),
            "reference": lambda: decode_reference(clip, checked),
            "reference-auto": lambda: decode_reference(clip, checked, "AUTO"),
            "reference-reformatter": lambda: decode_reference_reused_reformatter(clip, checked),
            "keyframes": lambda: decode_ours(clip, None, keyframes_only=True),
            "fps1": lambda: decode_ours(clip, None, fps=1),
            "batched": lambda: decode_batched(clip, batch_checked),
            "batched-scaled": lambda: decode_batched(clip, batch_checked, decoder_scales=True),
        },
    )
    if outputs["reference"].count != frames:
        raise RuntimeError(f"reference decoded {outputs['reference'].count} of {frames} frames")
    _check_same(outputs["ours"], outputs["reference"], "ours")
    _check_same(outputs["reference-auto"], outputs["reference"], "reference (AUTO threads)")
    _check_same(outputs["reference-reformatter"], outputs["reference"], "reference (reformatter)")
    expected_fps1 = round(spec.seconds)
    keyframes, fps1 = outputs["keyframes"], outputs["fps1"]
    if keyframes.count != clip.keyframes or fps1.count != expected_fps1:
        raise RuntimeError(
            f"sampling returned {keyframes.count} key frames (want {clip.keyframes}) "
            f"and {fps1.count} frames at 1 fps (want {expected_fps1})"
        )
    if not np.array_equal(fps1.kept[1], outputs["reference"].kept[spec.fps]):
        raise RuntimeError("fps=1: the frame at 1 s differs from the reference decode")
    if not np.array_equal(keyframes.kept[0], outputs["reference"].kept[0]):
        raise RuntimeError("key frames only: the first frame differs from the reference decode")
    batched = outputs["batched"]
    if batched.count != frames:
        raise RuntimeError(f"batches held {batched.count} of {frames} frames")
    # The tensor of frame 0 must be what FrameBatcher makes of PyAV's frame 0.
    expected = FrameBatcher(MODEL_SIZE)([outputs["reference"].kept[0]]).tensor[0]
    if not np.array_equal(batched.kept[0], expected):
        raise RuntimeError("batches: frame 0's tensor differs from PyAV's frame 0 letterboxed")
    scaled = outputs["batched-scaled"]
    if scaled.count != frames:
        raise RuntimeError(f"decoder-scaled batches held {scaled.count} of {frames} frames")
    # Same letterbox, pixels from swscale's filter instead of cv2.resize: close, not equal.
    scaled_error = max(
        float(np.abs(scaled.kept[index] - batched.kept[index]).mean() * 255)
        for index in batch_checked
    )
    if scaled_error > SCALED_MEAN_ERROR_LIMIT:
        raise RuntimeError(
            f"decoder-scaled batches differ from the OpenCV-resized ones by {scaled_error:.1f} "
            f"grey levels on average (limit {SCALED_MEAN_ERROR_LIMIT:g})"
        )

    what = f"{spec.width}x{spec.height}p{spec.fps} H.264 4 Mbit/s, {spec.seconds:g} s"
    speed = {name: _fps(frames, times) for name, times in seconds.items()}

    def median_fps(name: str) -> str:
        return f"{frames / statistics.median(seconds[name]):,.0f}"

    method = (
        f"decode to BGR: {what}, {frames} frames ({clip.keyframes} fragments of 2 s); "
        f"best of {rounds} rounds, each round runs every contender in turn after one "
        "warm-up; frames/s is frames of the stream per second of wall time. Medians: ours "
        f"{median_fps('ours')}, PyAV {median_fps('reference')}, PyAV AUTO threads "
        f"{median_fps('reference-auto')}, PyAV reused reformatter "
        f"{median_fps('reference-reformatter')}, key frames only {median_fps('keyframes')}, "
        f"fps=1 {median_fps('fps1')}, 640x640 float32 batches {median_fps('batched')}, the "
        f"same with the decoder scaling {median_fps('batched-scaled')} frames/s."
    )
    check = (
        "decode to BGR: every run returns all frames; first, middle and last frames are "
        "pixel-equal to PyAV's; sampling returns one frame per fragment (key frames, the "
        f"first pixel-equal to PyAV's) and {expected_fps1} frames (fps=1), the 1 s one "
        "pixel-equal to PyAV's; the batches hold every frame and frame 0's tensor equals "
        "FrameBatcher applied to PyAV's frame 0; the decoder-scaled batches hold every "
        "frame and their checked tensors are within "
        f"{SCALED_MEAN_ERROR_LIMIT:g} grey levels (mean, measured {scaled_error:.1f}) of "
        "the OpenCV-resized ones."
    )
    sampling = (
        "sampling rows: key frames only never sends the other packets to FFmpeg; fps=1 "
        "still decodes every frame of this stream (all its P-frames are references) and "
        "saves the BGR conversion of the frames it drops."
    )
    batches = (
        f"batches row: ours plus FrameBatcher({MODEL_SIZE}, batch_size={BATCH}) on every "
        f"{BATCH} decoded 1080p frames (letterbox with cv2.resize, float32 NCHW RGB x/255, "
        "buffers reused), frames/s against ours returning plain BGR frames. Decoder-scaled "
        f"row: FragmentDecoder(fit=({MODEL_SIZE}, {MODEL_SIZE})) has swscale convert each "
        "frame straight to 640x360 BGR (the letterbox's inner size, default bilinear), and "
        "FrameBatcher only copies it in, pads and normalises (same LetterboxParams)."
    )
    notes = (method, check, sampling, batches)

    def row(benchmark: str, pair: tuple[str, str], reference_label: str, goal: str) -> Result:
        name, reference_name = pair
        ratio = speed[name] / speed[reference_name]
        target = float(goal.split()[1].rstrip("x"))
        strict = goal.startswith("> ")  # "> 1x": must beat it; ">= 0.9x": may equal it
        return Result(
            benchmark=benchmark,
            ours=f"{speed[name]:,.0f} frames/s",
            reference=f"{speed[reference_name]:,.0f} frames/s ({reference_label})",
            ratio=fmt_ratio(ratio),
            goal=goal,
            met=ratio > target if strict else ratio >= target,
            notes=notes,
        )

    to_pyav = f">= {GOAL_RATIO:g}x PyAV from a file"
    return [
        row(f"decode GetMedia to BGR numpy, {what}", ("ours", "reference"), "PyAV, file", to_pyav),
        row("decode to BGR, reference with the same FFmpeg threading (AUTO)",
            ("ours", "reference-auto"), "PyAV, file, AUTO", f">= {GOAL_RATIO:g}x"),
        row("decode to BGR, reference reusing one VideoReformatter",
            ("ours", "reference-reformatter"), "PyAV, file, reused sws", f">= {GOAL_RATIO:g}x"),
        row(f"sampling: key frames only ({clip.keyframes} of {frames} frames, 2 s GOP)",
            ("keyframes", "ours"), "ours, every frame", f">= {KEYFRAME_GOAL:g}x full decode"),
        row(f"sampling: fps=1 ({expected_fps1} of {frames} frames)", ("fps1", "ours"),
            "ours, every frame", "> 1x full decode"),
        row(f"model-ready {MODEL_SIZE}x{MODEL_SIZE} letterboxed float32 batches of {BATCH}",
            ("batched", "ours"), "ours, plain BGR", f">= {GOAL_RATIO:g}x plain BGR"),
        row(f"model-ready {MODEL_SIZE}x{MODEL_SIZE} letterboxed float32 batches of {BATCH}, "
            f"decoder scaling (fit={MODEL_SIZE})", ("batched-scaled", "ours"),
            "ours, plain BGR", f">= {GOAL_RATIO:g}x plain BGR"),
    ]  # fmt: skip


# ---------------------------------------------------------------------------------------
# Memory over an hour of live reading


def _stream_has_fragments(endpoint_url: str, stream: str) -> bool:
    import json
    import urllib.error
    import urllib.request

    url = f"{endpoint_url}/_emulator/api/fragments?stream={stream}"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return False
    fragments = body.get("fragments", body) if isinstance(body, dict) else body
    return bool(fragments)


def live_soak(seconds: float, interval_s: float) -> tuple[RssGrowth, int]:
    """``kvs consume`` following a live 1080p30 stream for ``seconds``, every frame
    decoded to BGR, while ``kvs produce FILE --loop`` feeds it in real time; the
    consumer's RSS growth after warm-up and the frames it delivered."""
    clip = encoded_clip()
    env = child_environment()
    with tempfile.TemporaryDirectory() as folder, EmulatorProcess(Path(folder)) as emulator:
        producer = subprocess.Popen(
            [*kvs_command(), "produce", str(clip.mkv), "--stream", "live", "--endpoint-url",
             emulator.endpoint_url, "--create-stream", "--loop", "--no-audio"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )  # fmt: skip
        out = Path(folder) / "frames.jsonl"
        try:
            deadline = time.monotonic() + 60
            while not _stream_has_fragments(emulator.endpoint_url, "live"):
                if producer.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the producer feeding the live stream did not start")
                time.sleep(0.5)
            consumer = subprocess.Popen(
                [*kvs_command(), "consume", "--stream", "live", "--endpoint-url",
                 emulator.endpoint_url, "--duration", f"{seconds:g}", "--out", str(out),
                 "--no-progress"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env=env,
            )  # fmt: skip
            sampler = RssSampler(consumer.pid, interval_s).start()
            _, stderr = consumer.communicate(timeout=seconds + 120)
            samples = sampler.stop()
            if consumer.returncode != 0:
                raise RuntimeError(
                    f"kvs consume exited with {consumer.returncode}: "
                    f"{stderr.decode(errors='replace')[-2000:]}"
                )
        finally:
            producer.send_signal(signal.SIGINT)
            try:
                producer.wait(30)
            except subprocess.TimeoutExpired:
                producer.kill()
                producer.wait()
        with out.open("rb") as lines:
            frames = sum(1 for _ in lines)
    warmup = min(60.0, seconds / 4)
    return rss_growth(samples, warmup), frames


def live_soak_row(options: Options) -> Result:
    seconds = soak_seconds(options, short=30.0, quick=8.0, long=3600.0)
    interval = 5.0 if seconds >= 120 else 1.0 if seconds >= 20 else 0.5
    growth, frames = live_soak(seconds, interval)
    expected = seconds * 30
    if frames < 0.8 * expected - 90:
        raise RuntimeError(f"live reading delivered {frames} frames in {seconds:g} s")
    length = f"{seconds / 60:g} min" if seconds >= 120 else f"{seconds:g} s"
    return Result(
        benchmark=f"consumer memory over {length} of live 1080p30 reading, every frame to BGR",
        ours=f"{growth.growth_bytes / 2**20:+.1f} MB RSS",
        reference=f"{fmt_mib(growth.warm_bytes)} after warm-up, peak {fmt_mib(growth.peak_bytes)}",
        ratio="-",
        goal="growth < 5 MB over 1 h",
        met=growth.growth_bytes < 5 * 2**20,
        notes=(
            f"consumer memory over time: `kvs consume --stream live --duration {seconds:g}` "
            "(LiveReader, GetMedia from NOW, every frame decoded to BGR) against the emulator "
            "while `kvs produce CLIP.mkv --loop` feeds the 1080p30 clip in real time; "
            f"{frames} frames delivered; RSS from /proc/PID/status every {interval:g} s, "
            f"{growth.samples} samples after a {min(60.0, seconds / 4):g} s warm-up; growth = "
            "median of the last tenth minus median of the first tenth. The goal is over an "
            "hour: `python -m benchmarks --long` (or KVS_BENCH_LONG_S=3600) runs that; a "
            "plain run is shorter and only a smoke check.",
        ),
    )
