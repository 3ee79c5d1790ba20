"""``kvs demo``: the toolkit end to end with nothing but this repository.

Today it generates a sample video, packages it the way a KVS producer does (key-frame
aligned fragments with fragment metadata, ABSOLUTE timecodes) with the MKV writer,
reads it back with the streaming reader, and prints the fragment table.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from kvs_toolkit.inspect import InspectResult, to_table
from kvs_toolkit.mkv import FragmentReader, MkvWriter, TrackInfo
from kvs_toolkit.mkv.writer import FragmentMetadata, FrameData
from kvs_toolkit.samples import SampleSpec, write_ground_truth, write_sample

log = logging.getLogger(__name__)


def package_for_kvs(source: Path, start_ms: int) -> bytes:
    """Re-package an MKV file's video as a PutMedia body: one cluster per key frame."""
    reader = FragmentReader()
    fragments = reader.feed(source.read_bytes()) + reader.close()
    track = fragments[0].video_track
    if track is None:
        raise ValueError(f"{source} has no video track")
    writer = MkvWriter(
        [TrackInfo(1, track.codec_id, track.codec_private, width=track.width, height=track.height)]
    )
    metadata = FragmentMetadata()
    metadata.put("source", source.name)
    frames = [
        f for fragment in fragments for f in fragment.frames if f.track_number == track.number
    ]
    origin = frames[0].timestamp_ns
    parts = [writer.header()]
    current: list[FrameData] = []
    for frame in frames:
        if frame.keyframe and current:
            parts.append(writer.fragment(current[0].timecode, current, metadata.take()))
            current = []
            metadata.put("fragment-index", str(len(parts) - 1), persistent=False)
        timecode = start_ms + (frame.timestamp_ns - origin) // 1_000_000
        current.append(FrameData(1, timecode, frame.data, keyframe=frame.keyframe))
    parts.append(writer.fragment(current[0].timecode, current, metadata.take()))
    return b"".join(parts)


def run_demo(args: argparse.Namespace) -> int:
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    spec = SampleSpec(seconds=args.seconds)
    started = time.perf_counter()
    video = write_sample(out / "sample.mkv", spec)
    write_ground_truth(out / "sample-truth.jsonl", spec)
    print(f"sample: {video} ({spec.frame_count} frames, {spec.width}x{spec.height} H.264)")
    body = package_for_kvs(video, int(time.time() * 1000))
    (out / "putmedia-body.mkv").write_bytes(body)
    reader = FragmentReader()
    result = InspectResult(fragments=reader.feed(body) + reader.close(), size=len(body))
    print(to_table(result))
    print(f"done in {time.perf_counter() - started:.1f} s; results in {out}/")
    return 0
