"""Decoding a GetMedia stream to BGR numpy frames, against PyAV decoding the same file.

The video is ``kvs_toolkit.samples`` H.264 (libx264, 1280x720, 25 fps, a key frame every
2 s, no B-frames; 20 s, or 8 s with ``--quick``), written to an MKV file by FFmpeg's
muxer and cached in the temp folder (it is deterministic). The same frames are packaged
the way GetMedia returns them: one EBML document per 2 s fragment with the AWS tags
around the Cluster.

* Ours: :class:`kvs_toolkit.mkv.FragmentReader` fed the GetMedia bytes in 64 KiB chunks,
  :class:`kvs_toolkit.consumer.FragmentDecoder` (``format="bgr24"``, defaults) on each
  fragment; every frame's ``image`` is a BGR ndarray. Parsing is included.
* Reference: what a Python user writes with PyAV and no KVS in the way -
  ``av.open(file)``, ``container.decode(video=0)``, ``frame.to_ndarray(format="bgr24")``
  with PyAV's defaults. Two more rows give the reference what ours has, so the ratio is
  not only about them: the same FFmpeg threading (``thread_type="AUTO"``), and one
  :class:`~av.video.reformatter.VideoReformatter` reused for every frame
  (``to_ndarray(format=...)`` builds a new swscale context per frame; ours keeps one).

Both must return every frame, and the first, a middle and the last frame must be
pixel-equal between them, so a broken decode fails instead of looking fast. Runs
alternate between ours and the reference; the best of the rounds is reported.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from benchmarks.common import Options, Result, fmt_ratio, gc_paused
from kvs_toolkit.consumer import FragmentDecoder
from kvs_toolkit.mkv import FragmentReader, FrameData, MkvWriter, Tag, TrackInfo, getmedia_document
from kvs_toolkit.mkv.model import (
    TAG_CONTINUATION_TOKEN,
    TAG_FRAGMENT_NUMBER,
    TAG_MILLIS_BEHIND_NOW,
    TAG_PRODUCER_TIMESTAMP,
    TAG_SERVER_TIMESTAMP,
)
from kvs_toolkit.samples import SampleSpec, write_sample

GOAL_RATIO: Final = 0.9
CHUNK_SIZE: Final = 64 * 1024
START_MS: Final = 1_700_000_000_000


@dataclass(frozen=True, slots=True)
class Clip:
    spec: SampleSpec
    path: Path  # the MKV file the reference opens
    getmedia: bytes  # the same frames as a GetMedia stream
    frames: int
    keyframes: int


def sample_clip(quick: bool) -> Clip:
    spec = SampleSpec(width=1280, height=720, fps=25, seconds=8.0 if quick else 20.0)
    folder = Path(tempfile.gettempdir()) / "kvs-toolkit-bench"
    folder.mkdir(exist_ok=True)
    path = folder / f"sample-{spec.codec}-{spec.width}x{spec.height}-{spec.seconds:g}s.mkv"
    if not path.exists():
        partial = path.with_suffix(".partial.mkv")
        write_sample(partial, spec)
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


def _chunks(data: bytes) -> Iterator[memoryview]:
    view = memoryview(data)
    for start in range(0, len(view), CHUNK_SIZE):
        yield view[start : start + CHUNK_SIZE]


def decode_ours(clip: Clip, **options: Any) -> list[np.ndarray]:
    reader = FragmentReader()
    decoder = FragmentDecoder(**options)
    images = []
    for chunk in _chunks(clip.getmedia):
        for fragment in reader.feed(chunk):
            images += [frame.image for frame in decoder.decode(fragment)]
    for fragment in reader.close():
        images += [frame.image for frame in decoder.decode(fragment)]
    images += [frame.image for frame in decoder.flush()]
    return images


def decode_reference(clip: Clip, thread_type: str | None = None) -> list[np.ndarray]:
    images = []
    with av.open(str(clip.path)) as container:
        stream = container.streams.video[0]
        if thread_type is not None:
            stream.thread_type = thread_type
        for frame in container.decode(video=0):
            images.append(frame.to_ndarray(format="bgr24"))
    return images


def decode_reference_reused_reformatter(clip: Clip) -> list[np.ndarray]:
    reformatter = VideoReformatter()
    images = []
    with av.open(str(clip.path)) as container:
        for frame in container.decode(video=0):
            images.append(reformatter.reformat(frame, format="bgr24").to_ndarray())
    return images


def _time(fn: Callable[[], list[np.ndarray]]) -> tuple[float, list[np.ndarray]]:
    with gc_paused():
        start = time.perf_counter()
        images = fn()
        return time.perf_counter() - start, images


def _check_same(ours: Sequence[np.ndarray], reference: Sequence[np.ndarray], who: str) -> None:
    if len(ours) != len(reference):
        raise RuntimeError(f"{who}: {len(ours)} frames, the reference {len(reference)}")
    for index in (0, len(ours) // 2, len(ours) - 1):
        if not np.array_equal(ours[index], reference[index]):
            raise RuntimeError(f"{who}: frame {index} differs from the reference decode")


def race(
    rounds: int, contenders: dict[str, Callable[[], list[np.ndarray]]]
) -> tuple[dict[str, list[float]], dict[str, list[np.ndarray]]]:
    """Run each contender once per round, in turn (so drift hits all alike)."""
    seconds: dict[str, list[float]] = {name: [] for name in contenders}
    last: dict[str, list[np.ndarray]] = {}
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
    clip = sample_clip(options.quick)
    rounds = 3 if options.quick else 7
    seconds, images = race(
        rounds,
        {
            "ours": lambda: decode_ours(clip),
            "reference": lambda: decode_reference(clip),
            "reference-auto": lambda: decode_reference(clip, "AUTO"),
            "reference-reformatter": lambda: decode_reference_reused_reformatter(clip),
            "keyframes": lambda: decode_ours(clip, keyframes_only=True),
            "fps1": lambda: decode_ours(clip, fps=1),
        },
    )
    frames = clip.frames
    if len(images["reference"]) != frames:
        raise RuntimeError(f"reference decoded {len(images['reference'])} of {frames} frames")
    _check_same(images["ours"], images["reference"], "ours")
    _check_same(images["reference-auto"], images["reference"], "reference (AUTO threads)")
    _check_same(images["reference-reformatter"], images["reference"], "reference (reformatter)")
    expected_fps1 = round(clip.spec.seconds)
    if len(images["keyframes"]) != clip.keyframes or len(images["fps1"]) != expected_fps1:
        raise RuntimeError(
            f"sampling returned {len(images['keyframes'])} key frames (want {clip.keyframes}) "
            f"and {len(images['fps1'])} frames at 1 fps (want {expected_fps1})"
        )
    if not np.array_equal(images["fps1"][1], images["reference"][clip.spec.fps]):
        raise RuntimeError("fps=1: the frame at 1 s differs from the reference decode")

    spec = clip.spec
    what = f"{spec.width}x{spec.height} H.264, {spec.seconds:g} s, {frames} frames"
    ours = _fps(frames, seconds["ours"])
    reference = _fps(frames, seconds["reference"])
    reference_auto = _fps(frames, seconds["reference-auto"])
    reference_reformatter = _fps(frames, seconds["reference-reformatter"])
    keyframes = _fps(frames, seconds["keyframes"])
    fps1 = _fps(frames, seconds["fps1"])

    def median_fps(name: str) -> str:
        return f"{frames / statistics.median(seconds[name]):,.0f}"

    method = (
        f"decode to BGR: {what} ({clip.keyframes} fragments of 2 s); best of {rounds} "
        "rounds, each round runs every contender in turn after one warm-up; frames/s is "
        "frames of the stream per second of wall time. Medians: ours "
        f"{median_fps('ours')}, PyAV {median_fps('reference')}, PyAV AUTO threads "
        f"{median_fps('reference-auto')}, PyAV reused reformatter "
        f"{median_fps('reference-reformatter')}, key frames only {median_fps('keyframes')}, "
        f"fps=1 {median_fps('fps1')} frames/s."
    )
    check = (
        "decode to BGR: every run returns all frames; first, middle and last frames are "
        "pixel-equal to PyAV's; sampling returns one frame per fragment (key frames) and "
        f"{expected_fps1} frames (fps=1), the 1 s one pixel-equal to PyAV's."
    )
    sampling = (
        "sampling rows: key frames only never sends the other packets to FFmpeg; fps=1 "
        "still decodes every frame of this stream (all its P-frames are references) and "
        "saves the BGR conversion of the frames it drops."
    )
    notes = (method, check, sampling)
    return [
        Result(
            benchmark=f"decode GetMedia to BGR numpy, {what}",
            ours=f"{ours:,.0f} frames/s",
            reference=f"{reference:,.0f} frames/s (PyAV, file)",
            ratio=fmt_ratio(ours / reference),
            goal=f">= {GOAL_RATIO:g}x PyAV from a file",
            met=ours / reference >= GOAL_RATIO,
            notes=notes,
        ),
        Result(
            benchmark="decode to BGR, reference with the same FFmpeg threading (AUTO)",
            ours=f"{ours:,.0f} frames/s",
            reference=f"{reference_auto:,.0f} frames/s (PyAV, file, AUTO)",
            ratio=fmt_ratio(ours / reference_auto),
            goal=f">= {GOAL_RATIO:g}x",
            met=ours / reference_auto >= GOAL_RATIO,
            notes=notes,
        ),
        Result(
            benchmark="decode to BGR, reference reusing one VideoReformatter",
            ours=f"{ours:,.0f} frames/s",
            reference=f"{reference_reformatter:,.0f} frames/s (PyAV, file, reused sws)",
            ratio=fmt_ratio(ours / reference_reformatter),
            goal=f">= {GOAL_RATIO:g}x",
            met=ours / reference_reformatter >= GOAL_RATIO,
            notes=notes,
        ),
        Result(
            benchmark=f"sampling: key frames only ({clip.keyframes} of {frames} frames)",
            ours=f"{keyframes:,.0f} frames/s",
            reference=f"{ours:,.0f} frames/s (ours, every frame)",
            ratio=fmt_ratio(keyframes / ours),
            goal="> 1x full decode",
            met=keyframes > ours,
            notes=notes,
        ),
        Result(
            benchmark=f"sampling: fps=1 ({expected_fps1} of {frames} frames)",
            ours=f"{fps1:,.0f} frames/s",
            reference=f"{ours:,.0f} frames/s (ours, every frame)",
            ratio=fmt_ratio(fps1 / ours),
            goal="> 1x full decode",
            met=fps1 > ours,
            notes=notes,
        ),
    ]
