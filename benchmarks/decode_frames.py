"""Decoding a GetMedia stream to BGR numpy frames, against PyAV decoding the same file.

The video is the camera-like clip of ``benchmarks.common.encoded_clip`` (H.264 libx264,
1920x1080 at 30 fps, 4 Mbit/s, a key frame every 2 s, no B-frames; its first 20 s, or
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
* Sampling: key frames only, with the decoder kept warm across fragments
  (``flush_each_fragment=False``: FFmpeg's frame threads decode several key frames at
  once) and with the default drain after every fragment (what a live consumer wants:
  each key frame out before the next fragment arrives); and ``fps=1``; all against our
  full decode.
* Model-ready batches: each frame into a :class:`kvs_toolkit.consumer.FrameBatcher` of 8
  as it is decoded (``batcher.add``; 640x640 letterbox, float32 NCHW RGB scaled to 0-1),
  against our plain BGR output; with the decoder handing each picture to the batcher
  (``FragmentDecoder(fit=batcher)``, the way to feed a model: swscale converts it once,
  straight to planar float RGB at the letterbox's inner size, written into its slot),
  and with full-size BGR frames resized by OpenCV in the batcher.
* Whole process: ``kvs consume --from-file`` on the 20 s MKV file (JSON lines to a
  file), against a plain PyAV script decoding the same file to BGR, both timed as child
  processes from start to exit (interpreter start-up and imports included).

Every contender consumes its frames as a real consumer would (each array is dropped
after use: a 1080p BGR frame is 6 MB), keeping only the ones the checks compare: both
must return every frame, and the first, a middle and the last frame must be
pixel-equal between ours and PyAV's, so a broken decode fails instead of looking fast.
Rounds are interleaved (each round runs every contender once, in turn, after one
warm-up round), because the machine is shared and noisy: a row's ratio is the median
over rounds of that round's ratio, and its frames/s are from the median times.

The last row, memory over live reading, is described at :func:`live_soak`.
"""

from __future__ import annotations

import resource
import shutil
import signal
import statistics
import subprocess
import sys
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
from kvs_toolkit.consumer import Batch, DecodedFrame, FragmentDecoder, FrameBatcher
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
#: OpenCV-resized one of the same frame. With fit=batcher swscale's FAST_BILINEAR (the
#: batcher's match for INTER_LINEAR) gives about half a level; an AREA filter (fit=size's
#: default, or interpolation="AREA") averages the 3x3 pixels each output pixel covers
#: where cv2.resize INTER_LINEAR samples between two, a few levels on this noisy texture.
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
    seconds = 4 if quick else 20
    spec = SampleSpec(width=camera.width, height=camera.height, fps=camera.fps, seconds=seconds)
    path = _cut_clip(camera.mkv, cache_dir() / f"{camera.mkv.stem}-first{seconds}s.mkv",
                     spec.frame_count)  # fmt: skip
    getmedia, frames, keyframes = package_as_getmedia(path.read_bytes())
    return Clip(spec, path, getmedia, frames, keyframes)


def one_frame_file(clip: Clip) -> Path:
    """The clip's first frame alone as an MKV file (cached): what a process's start-up
    costs, imports and opening included, with almost no decoding."""
    return _cut_clip(clip.path, clip.path.with_name(f"{clip.path.stem}-1frame.mkv"), 1)


def _cut_clip(source: Path, path: Path, frames: int) -> Path:
    """``source``'s first ``frames`` frames, cut without re-encoding into ``path`` (once:
    the cut is deterministic)."""
    if not path.exists():
        ffmpeg = shutil.which("ffmpeg")
        if ffmpeg is None:
            raise RuntimeError("the ffmpeg command is needed to cut the benchmark clip")
        partial = path.with_suffix(".partial.mkv")
        subprocess.run(
            [ffmpeg, "-v", "error", "-y", "-i", str(source), "-frames:v", str(frames),
             "-c", "copy", str(partial)],
            check=True,
        )  # fmt: skip
        partial.replace(path)
    return path


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


def decoded_frames(clip: Clip, decoder: FragmentDecoder) -> Iterator[DecodedFrame]:
    """The GetMedia bytes in 64 KiB chunks through the reader and ``decoder``, each frame
    as soon as it is decoded (``iter_decode``: a consumer holds one frame at a time, not
    a fragment's 60 x 6 MB, which would also make every fragment fault in fresh pages)."""
    reader = FragmentReader()
    for chunk in _chunks(clip.getmedia):
        for fragment in reader.feed(chunk):
            yield from decoder.iter_decode(fragment)
    for fragment in reader.close():
        yield from decoder.iter_decode(fragment)
    yield from decoder.flush()


def decode_ours(clip: Clip, keep: frozenset[int] | None, **options: Any) -> Collected:
    out = Collected(keep)
    for frame in decoded_frames(clip, FragmentDecoder(**options)):
        out.add(frame.image)
    return out


def decode_batched(
    clip: Clip, keep: frozenset[int] | None, *, decoder_scales: bool = False
) -> Collected:
    """Ours, each frame into a model-ready tensor of ``BATCH`` as soon as it is decoded
    (``FrameBatcher.add``), a batch handed on every ``BATCH`` frames (kept: batch n's
    first frame's slice, as index n * BATCH). ``decoder_scales``: the decoder hands each
    picture to the batcher (``fit=batcher``), whose swscale converts it straight to planar
    float RGB at the letterbox's inner size in its slot; otherwise the decoder makes full
    1080p BGR frames and the batcher resizes them with OpenCV."""
    batcher = FrameBatcher(MODEL_SIZE, batch_size=BATCH)
    decoder = FragmentDecoder(fit=batcher) if decoder_scales else FragmentDecoder()
    out = Collected(keep)

    def emit(batch: Batch | None) -> None:
        if batch is None:
            return
        if out.keep is None or out.count in out.keep:
            out.kept[out.count] = batch.tensor[0].copy()
        out.count += len(batch)

    for frame in decoded_frames(clip, decoder):
        emit(batcher.add(frame))
    emit(batcher.flush())
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


def keyframe_packets(clip: Clip) -> tuple[bytes, list[bytes], float]:
    """The video track's CodecPrivate, its key frames' payloads (parsed beforehand) and
    the key frames' share of the video bytes."""
    reader = FragmentReader()
    fragments = reader.feed(clip.getmedia) + reader.close()
    track = fragments[0].video_track
    if track is None:
        raise RuntimeError("the sample has no video track")
    keys = [bytes(f.data) for fragment in fragments for f in fragment.frames if f.keyframe]
    total = sum(len(f.data) for fragment in fragments for f in fragment.frames)
    return track.codec_private, keys, sum(map(len, keys)) / total


def decode_keyframes_ffmpeg_only(extradata: bytes, keys: Sequence[bytes]) -> Collected:
    """The ceiling of any key-frames-only consumer: FFmpeg's H.264 decoder fed nothing
    but the key-frame packets (parsed beforehand), frame threads on every core as our
    warm decoder has, no colour conversion, nothing of Python per frame but the call."""
    ctx = av.CodecContext.create("h264", "r")
    ctx.extradata = extradata
    ctx.thread_type = "AUTO"
    ctx.thread_count = 0
    ctx.open()
    out = Collected(frozenset())
    for pts, data in enumerate(keys):
        packet = av.Packet(data)
        packet.pts = pts
        out.count += len(ctx.decode(packet))
    out.count += len(ctx.decode(None))
    return out


def _time(fn: Callable[[], Collected]) -> tuple[float, float, Collected]:
    """Wall time, CPU time of this process (every thread, FFmpeg's too) and the result."""
    with gc_paused():
        start, start_cpu = time.perf_counter(), time.process_time()
        result = fn()
        return time.perf_counter() - start, time.process_time() - start_cpu, result


def _check_same(ours: Collected, reference: Collected, who: str) -> None:
    if ours.count != reference.count:
        raise RuntimeError(f"{who}: {ours.count} frames, the reference {reference.count}")
    for index in sorted(ours.kept):
        if not np.array_equal(ours.kept[index], reference.kept[index]):
            raise RuntimeError(f"{who}: frame {index} differs from the reference decode")


def race(
    rounds: int, contenders: dict[str, Callable[[], Collected]]
) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, Collected]]:
    """Run each contender once per round, in turn (so drift hits all alike); wall and
    CPU seconds per contender and round, and each one's last output."""
    seconds: dict[str, list[float]] = {name: [] for name in contenders}
    cpu: dict[str, list[float]] = {name: [] for name in contenders}
    last: dict[str, Collected] = {}
    for name, fn in contenders.items():  # warm-up: page cache, swscale tables, threads
        last[name] = fn()
    for _ in range(rounds):
        for name, fn in contenders.items():
            elapsed, used, last[name] = _time(fn)
            seconds[name].append(elapsed)
            cpu[name].append(used)
    return seconds, cpu, last


def median_ratio(seconds: dict[str, list[float]], name: str, reference: str) -> float:
    """How many times faster ``name`` was than ``reference``: the median over rounds of
    each round's ratio (both ran in that round, under the same load)."""
    return statistics.median(
        ref / ours for ours, ref in zip(seconds[name], seconds[reference], strict=True)
    )


def run(options: Options | None = None, *, quick: bool | None = None) -> list[Result]:
    """The benchmark rows. ``run(Options(quick=True))`` as the runner calls it, or
    ``run(quick=True)``."""
    if options is None:
        options = Options(quick=bool(quick))
    elif quick is not None:
        options = Options(quick=quick)
    rows = decode_rows(options)
    rows.append(whole_process_row(options))
    rows.append(live_soak_row(options))
    return rows


def decode_rows(options: Options) -> list[Result]:
    clip = sample_clip(options.quick)
    rounds = 3 if options.quick else 7
    frames = clip.frames
    spec = clip.spec
    checked = frozenset({0, frames // 2, frames - 1, spec.fps})
    batch_checked = frozenset({0, BATCH * (frames // BATCH // 2)})
    extradata, key_packets, key_share = keyframe_packets(clip)
    seconds, cpu, outputs = race(
        rounds,
        {
            "ours": lambda: decode_ours(clip, checked),
            "reference": lambda: decode_reference(clip, checked),
            "reference-auto": lambda: decode_reference(clip, checked, "AUTO"),
            "reference-reformatter": lambda: decode_reference_reused_reformatter(clip, checked),
            "keyframes": lambda: decode_ours(
                clip, None, keyframes_only=True, flush_each_fragment=False
            ),
            "keyframes-drained": lambda: decode_ours(clip, None, keyframes_only=True),
            "keyframes-ffmpeg": lambda: decode_keyframes_ffmpeg_only(extradata, key_packets),
            "fps1": lambda: decode_ours(clip, None, fps=1),
            "batched-scaled": lambda: decode_batched(clip, batch_checked, decoder_scales=True),
            "batched": lambda: decode_batched(clip, batch_checked),
        },
    )
    if outputs["reference"].count != frames:
        raise RuntimeError(f"reference decoded {outputs['reference'].count} of {frames} frames")
    _check_same(outputs["ours"], outputs["reference"], "ours")
    _check_same(outputs["reference-auto"], outputs["reference"], "reference (AUTO threads)")
    _check_same(outputs["reference-reformatter"], outputs["reference"], "reference (reformatter)")
    expected_fps1 = round(spec.seconds)
    fps1 = outputs["fps1"]
    for name in ("keyframes", "keyframes-drained"):
        keyframes = outputs[name]
        if keyframes.count != clip.keyframes:
            raise RuntimeError(f"{name}: {keyframes.count} key frames, want {clip.keyframes}")
        if not np.array_equal(keyframes.kept[0], outputs["reference"].kept[0]):
            raise RuntimeError(f"{name}: the first frame differs from the reference decode")
        # Key frame n is frame n * GOP of the full decode (a 2 s GOP: 60 frames).
        middle = spec.fps * 2 * (clip.keyframes // 2)
        if middle in outputs["reference"].kept and not np.array_equal(
            keyframes.kept[clip.keyframes // 2], outputs["reference"].kept[middle]
        ):
            raise RuntimeError(f"{name}: key frame {clip.keyframes // 2} differs from PyAV's")
    if outputs["keyframes-ffmpeg"].count != clip.keyframes:
        raise RuntimeError(f"FFmpeg alone decoded {outputs['keyframes-ffmpeg'].count} key frames")
    if fps1.count != expected_fps1:
        raise RuntimeError(f"fps=1 returned {fps1.count} frames, want {expected_fps1}")
    if not np.array_equal(fps1.kept[1], outputs["reference"].kept[spec.fps]):
        raise RuntimeError("fps=1: the frame at 1 s differs from the reference decode")
    batched = outputs["batched"]
    if batched.count != frames:
        raise RuntimeError(f"batches held {batched.count} of {frames} frames")
    # The tensor of frame 0 must be PyAV's frame 0 letterboxed by hand: cv2.resize to
    # 640x360, grey 114 pads, RGB, NCHW, x / 255.
    expected = _letterboxed_by_hand(outputs["reference"].kept[0])
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

    def fps(name: str) -> float:
        return frames / statistics.median(seconds[name])

    method = (
        f"decode to BGR: {what}, {frames} frames ({clip.keyframes} fragments of 2 s); "
        f"{rounds} interleaved rounds after one warm-up round, each running every "
        "contender once in turn; ratio = median over rounds of that round's time ratio; "
        "frames/s = frames of the stream / median wall time. Median frames/s: "
        + ", ".join(f"{name} {fps(name):,.0f}" for name in seconds)
        + ". Per-round ratios (ours / PyAV default): "
        + ", ".join(
            f"{ref / ours:.2f}"
            for ours, ref in zip(seconds["ours"], seconds["reference"], strict=True)
        )
        + "; key frames (warm) / ours: "
        + ", ".join(
            f"{ours / key:.1f}"
            for key, ours in zip(seconds["keyframes"], seconds["ours"], strict=True)
        )
        + "; decoder-scaled batches / ours: "
        + ", ".join(
            f"{ours / b:.2f}"
            for b, ours in zip(seconds["batched-scaled"], seconds["ours"], strict=True)
        )
        + ". CPU time (all threads; blind to the use of both cores, but barely moved by "
        "other load on the machine), median ratios: ours / PyAV default "
        f"{median_ratio(cpu, 'ours', 'reference'):.2f}, key frames (warm) / ours "
        f"{median_ratio(cpu, 'keyframes', 'ours'):.1f}, key frames (drained) / ours "
        f"{median_ratio(cpu, 'keyframes-drained', 'ours'):.1f}, decoder-scaled batches / ours "
        f"{median_ratio(cpu, 'batched-scaled', 'ours'):.2f}, OpenCV batches / ours "
        f"{median_ratio(cpu, 'batched', 'ours'):.2f}; CPU seconds (median): "
        + ", ".join(f"{name} {statistics.median(values):.2f}" for name, values in cpu.items())
        + "."
    )
    check = (
        "decode to BGR: every run returns all frames; first, middle and last frames are "
        "pixel-equal to PyAV's; both key-frame rows return one frame per fragment, the "
        f"first pixel-equal to PyAV's, and {expected_fps1} frames at fps=1, the 1 s one "
        "pixel-equal to PyAV's; the batches hold every frame and frame 0's tensor equals "
        "PyAV's frame 0 letterboxed by hand (cv2.resize, pads, RGB, NCHW, /255); the "
        f"decoder-scaled batches hold every frame and are within {SCALED_MEAN_ERROR_LIMIT:g} "
        f"grey levels (mean, measured {scaled_error:.1f}) of the OpenCV-resized ones."
    )
    sampling = (
        "sampling rows: key frames only never sends the other packets to FFmpeg. Warm: "
        "FragmentDecoder(keyframes_only=True, flush_each_fragment=False) - frame threads "
        "overlap successive key frames, and each comes out a few fragments later (or at "
        "flush()): for files, archives and batch jobs. Drained (the default, for live "
        "reading): one key frame per fragment, so no frame pipeline; slice threads split "
        "a picture across cores when the encoder wrote several slices (this clip's "
        "encoder, libx264 with PyAV's slice threads, wrote two per picture). fps=1 "
        "still decodes every frame of this stream (all its P-frames are references) and "
        "saves the BGR conversion of the frames it drops. The ceiling row is FFmpeg's "
        "decoder given only the key-frame packets (parsed beforehand; frame threads, no "
        "conversion): no key-frames-only reader of this stream can beat it, so it bounds "
        "the key-frame ratio. Here the key frames carry "
        f"{key_share:.0%} of the video's bytes (a noise texture a P-frame predicts but an "
        "I-frame must code); ours (warm) reached "
        f"{median_ratio(seconds, 'keyframes', 'keyframes-ffmpeg'):.0%} of the ceiling's "
        "speed (median over rounds), the rest being GetMedia parsing of all 600 frames, "
        "the duplicate check and one BGR conversion per key frame."
    )
    batches = (
        f"batches rows: ours plus FrameBatcher({MODEL_SIZE}, batch_size={BATCH}), each frame "
        "written into its slot as it is decoded (batcher.add; float32 NCHW RGB x/255, "
        "pads written once per slot, buffers reused), against ours returning plain 1080p "
        "BGR frames. Decoder scaling: FragmentDecoder(fit=batcher) hands each picture to the "
        "batcher, whose swscale converts it straight to planar float RGB (gbrpf32le, 0-1) "
        f"at the letterbox's inner size ({MODEL_SIZE}x360; FAST_BILINEAR, the batcher's match "
        "for cv2 INTER_LINEAR, the same picture as the OpenCV row within a grey level), "
        "swscale writing the three planes into the slot's channel rows themselves "
        "(kvs_toolkit.consumer.direct_scale; before it, copying them in from swscale's own "
        "frame cost a fifth of the conversion); no BGR image in between. "
        "OpenCV: full-size BGR frames, cv2.resize in the batcher, then cv2.split and one "
        "contiguous multiply per channel. Writing each frame at once, while its pixels are "
        "in the cache, instead of 8 at batch time, was most of the gain."
    )
    notes = (method, check, sampling, batches)

    def row(benchmark: str, pair: tuple[str, str], reference_label: str, goal: str) -> Result:
        name, reference_name = pair
        ratio = median_ratio(seconds, name, reference_name)
        met: bool | None = None
        if goal != "-":
            target = float(goal.split()[1].rstrip("x"))
            strict = goal.startswith("> ")  # "> 1x": must beat it; ">= 0.9x": may equal it
            met = ratio > target if strict else ratio >= target
        return Result(
            benchmark=benchmark,
            ours=f"{fps(name):,.0f} frames/s",
            reference=f"{fps(reference_name):,.0f} frames/s ({reference_label})",
            ratio=fmt_ratio(ratio),
            goal=goal,
            met=met,
            notes=notes,
        )

    to_pyav = f">= {GOAL_RATIO:g}x PyAV from a file"
    return [
        row(f"decode GetMedia to BGR numpy, {what}", ("ours", "reference"), "PyAV, file", to_pyav),
        row("decode to BGR, reference with the same FFmpeg threading (AUTO)",
            ("ours", "reference-auto"), "PyAV, file, AUTO", f">= {GOAL_RATIO:g}x"),
        row("decode to BGR, reference reusing one VideoReformatter",
            ("ours", "reference-reformatter"), "PyAV, file, reused sws", f">= {GOAL_RATIO:g}x"),
        row(f"sampling: key frames only ({clip.keyframes} of {frames} frames, 2 s GOP), "
            "decoder kept warm (flush_each_fragment=False)",
            ("keyframes", "ours"), "ours, every frame", f">= {KEYFRAME_GOAL:g}x full decode"),
        row("sampling: key frames only, drained after each fragment (default; live)",
            ("keyframes-drained", "ours"), "ours, every frame", "-"),
        row("sampling: key frames only, FFmpeg alone (the ceiling: C decode of the key-frame "
            "packets, no parsing, no conversion)", ("keyframes-ffmpeg", "ours"),
            "ours, every frame", "-"),
        row(f"sampling: fps=1 ({expected_fps1} of {frames} frames)", ("fps1", "ours"),
            "ours, every frame", "> 1x full decode"),
        row(f"model-ready {MODEL_SIZE}x{MODEL_SIZE} letterboxed float32 batches of {BATCH}, "
            "decoder scaling (fit=batcher)", ("batched-scaled", "ours"),
            "ours, plain BGR", f">= {GOAL_RATIO:g}x plain BGR"),
        row(f"model-ready {MODEL_SIZE}x{MODEL_SIZE} letterboxed float32 batches of {BATCH}, "
            "full frames resized by OpenCV", ("batched", "ours"),
            "ours, plain BGR", f">= {GOAL_RATIO:g}x plain BGR"),
    ]  # fmt: skip


def _letterboxed_by_hand(bgr: np.ndarray) -> np.ndarray:
    import cv2

    height, width = bgr.shape[:2]
    scale = min(MODEL_SIZE / width, MODEL_SIZE / height)
    inner_w, inner_h = round(width * scale), round(height * scale)
    canvas = np.full((MODEL_SIZE, MODEL_SIZE, 3), 114, dtype=np.uint8)
    x, y = (MODEL_SIZE - inner_w) // 2, (MODEL_SIZE - inner_h) // 2
    canvas[y : y + inner_h, x : x + inner_w] = cv2.resize(
        bgr, (inner_w, inner_h), interpolation=cv2.INTER_LINEAR
    )
    tensor: np.ndarray = np.multiply(canvas[..., ::-1].transpose(2, 0, 1), np.float32(1 / 255))
    return tensor


# ---------------------------------------------------------------------------------------
# The whole process: `kvs consume --from-file` against a plain PyAV script

#: What a Python user writes to decode a file to BGR with PyAV (PyAV's defaults).
PLAIN_PYAV_SCRIPT: Final = """
import sys
import av
count = 0
with av.open(sys.argv[1]) as container:
    for frame in container.decode(video=0):
        image = frame.to_ndarray(format="bgr24")
        count += 1
print(count)
"""


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed_process(command: Sequence[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Wall and CPU seconds of ``command`` as a child process, and its stdout."""
    start, start_cpu = time.perf_counter(), _children_cpu()
    done = subprocess.run(command, capture_output=True, env=env, check=False)
    elapsed = time.perf_counter() - start
    used = _children_cpu() - start_cpu
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command[:3])} ... exited with {done.returncode}: "
            f"{done.stderr.decode(errors='replace')[-2000:]}"
        )
    return elapsed, used, done.stdout.decode()


def whole_process_row(options: Options) -> Result:
    """``kvs consume --from-file CLIP.mkv --out FILE`` against ``python PLAIN_PYAV_SCRIPT
    CLIP.mkv``, each a fresh process per round, rounds interleaved; plus the start-up of
    each (both on a one-frame file) for the notes."""
    clip = sample_clip(options.quick)
    rounds = 3 if options.quick else 7
    env = child_environment()
    # An installed package has its bytecode compiled (pip does it); a checkout run with
    # PYTHONDONTWRITEBYTECODE compiles every project module from source at each start
    # (~0.1 s for kvs consume), which the PyAV script, importing only site-packages,
    # never pays. Bytecode goes to the benchmark's cache folder, not into the checkout.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(cache_dir() / "pycache")
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "frames.jsonl"
        ours = [*kvs_command(), "consume", "--from-file", str(clip.path), "--out", str(out),
                "--overwrite", "--no-progress"]  # fmt: skip
        plain = [sys.executable, "-c", PLAIN_PYAV_SCRIPT, str(clip.path)]
        first_frame = one_frame_file(clip)
        one = str(Path(folder) / "one.jsonl")
        ours_startup = [*kvs_command(), "consume", "--from-file", str(first_frame), "--out", one,
                        "--overwrite", "--no-progress"]  # fmt: skip
        plain_startup = [sys.executable, "-c", PLAIN_PYAV_SCRIPT, str(first_frame)]
        times: dict[str, list[float]] = {"ours": [], "plain": [], "ours-start": [],
                                         "plain-start": []}  # fmt: skip
        commands = {"ours": ours, "plain": plain, "ours-start": ours_startup,
                    "plain-start": plain_startup}  # fmt: skip
        for command in commands.values():  # warm-up: page cache, .pyc files
            _timed_process(command, env)
        cpu: dict[str, list[float]] = {name: [] for name in commands}
        plain_frames = 0
        for _ in range(rounds):
            for name, command in commands.items():
                elapsed, used, stdout = _timed_process(command, env)
                times[name].append(elapsed)
                cpu[name].append(used)
                if name == "plain":
                    plain_frames = int(stdout.strip())
        with out.open("rb") as lines:
            our_frames = sum(1 for _ in lines)
    if our_frames != clip.frames or plain_frames != clip.frames:
        raise RuntimeError(
            f"whole process: kvs consume wrote {our_frames} records, the PyAV script decoded "
            f"{plain_frames} frames, the file has {clip.frames}"
        )
    ratio = median_ratio(times, "ours", "plain")
    median = {name: statistics.median(values) for name, values in times.items()}
    what = f"{clip.spec.width}x{clip.spec.height}p{clip.spec.fps}, {clip.spec.seconds:g} s"
    return Result(
        benchmark=f"whole process: kvs consume --from-file, {what} MKV, every frame to BGR",
        ours=f"{median['ours']:.2f} s",
        reference=f"{median['plain']:.2f} s (plain PyAV script, BGR)",
        ratio=fmt_ratio(ratio),
        goal=f">= {GOAL_RATIO:g}x",
        met=ratio >= GOAL_RATIO,
        notes=(
            f"whole process: `kvs consume --from-file CLIP.mkv --out FILE --no-progress` "
            f"(one JSON line per frame, {clip.frames} frames) against `python -c SCRIPT "
            "CLIP.mkv` (av.open, decode(video=0), to_ndarray(format='bgr24'), PyAV's "
            f"defaults), each a fresh process (bytecode cached, as in an installed package), "
            f"{rounds} interleaved rounds after a warm-up; "
            "ratio = median over rounds of (script time / kvs time); per round: "
            + ", ".join(f"{p / o:.2f}" for o, p in zip(times["ours"], times["plain"], strict=True))
            + f". Start-up (median; the same two commands on a one-frame file): kvs "
            f"{median['ours-start']:.2f} s, the script {median['plain-start']:.2f} s. CPU seconds "
            "(median; all threads): "
            + ", ".join(f"{name} {statistics.median(values):.2f}" for name, values in cpu.items())
            + f"; CPU ratio script / kvs {median_ratio(cpu, 'ours', 'plain'):.2f}.",
        ),
    )


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
                 "--overwrite", "--no-progress"],
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
