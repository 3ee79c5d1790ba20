"""Write the deterministic sample videos and their ground truth.

    python samples/generate.py OUT_DIR [--codec h264|hevc|mjpeg] [--size 640x360]
                               [--fps 25] [--seconds 10]

Each run writes ``sample-<codec>-<W>x<H>.mkv`` and ``...-truth.jsonl`` (one line per
frame with the boxes a detector should find). The tests and ``kvs demo`` use the same
generator (``kvs_toolkit.samples``), so nothing binary needs to live in git.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kvs_toolkit.samples import SampleSpec, write_ground_truth, write_sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--codec", choices=("h264", "hevc", "mjpeg"), default="h264")
    parser.add_argument("--size", default="640x360")
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    spec = SampleSpec(width, height, args.fps, args.seconds, args.codec)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.out_dir / f"sample-{args.codec}-{width}x{height}"
    video = write_sample(stem.with_suffix(".mkv"), spec)
    truth = write_ground_truth(Path(f"{stem}-truth.jsonl"), spec)
    print(f"wrote {video} ({video.stat().st_size} bytes, {spec.frame_count} frames) and {truth}")


if __name__ == "__main__":
    main()
