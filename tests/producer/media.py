"""Real media for the producer tests, made with PyAV at test time, and checks on output."""

from __future__ import annotations

import io
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from kvs_toolkit import bitstream
from kvs_toolkit.mkv import Fragment, FragmentReader, TrackInfo
from kvs_toolkit.producer import EncodedFrame, Fragmenter, PendingFragment
from kvs_toolkit.samples import SampleSpec, render_frame

WIDTH, HEIGHT, FPS = 160, 96, 25


def has_encoder(name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
    except ValueError:  # av.codec.codec.UnknownCodecError
        return False
    return True


needs_x265 = pytest.mark.skipif(
    not has_encoder("libx265"), reason="this FFmpeg build has no libx265 encoder"
)

_OPTIONS: dict[str, Callable[[int, int], dict[str, str]]] = {
    "libx264": lambda gop, bf: {
        "preset": "ultrafast",
        "bf": str(bf),
        "g": str(gop),
        "sc_threshold": "0",
    },
    "libx265": lambda gop, bf: {
        "preset": "ultrafast",
        "x265-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes={bf}:log-level=none",
    },
    "mjpeg": lambda gop, bf: {},
}


@dataclass(frozen=True)
class Clip:
    """How to make a test clip."""

    codec: str = "libx264"
    frames: int = 50
    gop: int = FPS
    audio: str | None = None  # "aac" or "pcm_mulaw"
    bframes: int = 0
    width: int = WIDTH
    height: int = HEIGHT


def write_clip(target: Path | io.BytesIO, clip: Clip, container_format: str | None = None) -> None:
    """Encode ``clip`` (the sample's moving boxes; silence for audio) into ``target``."""
    spec = SampleSpec(width=clip.width, height=clip.height, fps=FPS)
    with av.open(target, "w", format=container_format) as out:
        video = out.add_stream(clip.codec, rate=FPS)
        video.width, video.height = clip.width, clip.height
        video.pix_fmt = "yuvj420p" if clip.codec == "mjpeg" else "yuv420p"
        video.time_base = Fraction(1, FPS)
        video.codec_context.options = _OPTIONS[clip.codec](clip.gop, clip.bframes)
        audio = None
        if clip.audio is not None:
            rate = 8000 if clip.audio == "pcm_mulaw" else 48000
            audio = out.add_stream(clip.audio, rate=rate)
            audio.layout = "mono" if clip.audio == "pcm_mulaw" else "stereo"
        for index in range(clip.frames):
            frame = av.VideoFrame.from_ndarray(render_frame(spec, index), format="bgr24")
            frame.pts = index
            frame.time_base = Fraction(1, FPS)
            for packet in video.encode(frame):
                out.mux(packet)
        for packet in video.encode(None):
            out.mux(packet)
        if audio is not None:
            write_silence(out, audio, clip.frames / FPS)


def write_silence(
    out: av.container.OutputContainer, audio: av.audio.AudioStream, seconds: float
) -> None:
    rate = audio.codec_context.sample_rate
    channels = audio.codec_context.channels
    step = 1024
    pts = 0
    while pts < seconds * rate:
        samples = np.zeros((1, step * channels), dtype=np.int16)
        frame = av.AudioFrame.from_ndarray(
            samples, format="s16", layout="mono" if channels == 1 else "stereo"
        )
        frame.sample_rate = rate
        frame.pts = pts
        frame.time_base = Fraction(1, rate)
        pts += step
        for packet in audio.encode(frame):
            out.mux(packet)
    for packet in audio.encode(None):
        out.mux(packet)


def annexb_stream(clip: Clip) -> bytes:
    """A raw Annex-B elementary stream (what rpicam-vid writes to stdout)."""
    out = io.BytesIO()
    write_clip(out, clip, "h264" if clip.codec == "libx264" else "hevc")
    return out.getvalue()


@dataclass(frozen=True)
class DemuxedPacket:
    data: bytes
    keyframe: bool
    pts_s: float | None


def demux(path: str | Path | io.BytesIO, kind: str = "video") -> list[DemuxedPacket]:
    """Every packet of the first ``kind`` stream, as PyAV demuxes it (independent check)."""
    with av.open(path) as container:
        stream = container.streams.video[0] if kind == "video" else container.streams.audio[0]
        return [
            DemuxedPacket(
                bytes(p),
                p.is_keyframe,
                None if p.pts is None else float(p.pts * p.time_base),
            )
            for p in container.demux(stream)
            if p.size
        ]


def to_avcc(packets: Iterable[DemuxedPacket]) -> list[bytes]:
    return [bitstream.annexb_to_avcc(p.data) for p in packets]


@dataclass
class Packaged:
    """Frames run through the Fragmenter and read back with the MKV reader."""

    tracks: list[TrackInfo]
    frames: list[EncodedFrame]
    body: bytes
    fragments: list[Fragment]
    pending: list[PendingFragment]

    def video(self) -> list[EncodedFrame]:
        return [f for f in self.frames if f.track_number == 1]

    def audio(self) -> list[EncodedFrame]:
        return [f for f in self.frames if f.track_number == 2]


def package(
    tracks: list[TrackInfo], frames: list[EncodedFrame], fragment_duration_ms: int = 1000
) -> Packaged:
    fragmenter = Fragmenter(tracks, fragment_duration_ms=fragment_duration_ms)
    pending: list[PendingFragment] = []
    for frame in frames:
        fragment, _completed = fragmenter.add(frame)
        if fragment is not None and fragment not in pending:
            pending.append(fragment)
    fragmenter.flush()
    body = fragmenter.header + b"".join(f.data for f in pending)
    reader = FragmentReader()
    fragments = reader.feed(body) + reader.close()
    return Packaged(tracks, frames, body, fragments, pending)


def decode_counts(body: bytes) -> tuple[int, int]:
    """(video frames, audio frames) FFmpeg decodes from an MKV byte stream."""
    with av.open(io.BytesIO(body)) as container:
        video = sum(1 for _ in container.decode(video=0))
    with av.open(io.BytesIO(body)) as container:
        audio = sum(1 for _ in container.decode(audio=0)) if container.streams.audio else 0
    return video, audio


def decoded_size(body: bytes) -> tuple[int, int]:
    with av.open(io.BytesIO(body)) as container:
        frame = next(container.decode(video=0))
        return frame.width, frame.height


def check_fragments(packaged: Packaged) -> None:
    """Every fragment starts on a video key frame and holds exactly one GOP's key frame."""
    assert packaged.fragments
    for fragment in packaged.fragments:
        video = [f for f in fragment.frames if f.track_number == 1]
        assert video[0].keyframe
        assert fragment.frames[0].keyframe
        assert sum(f.keyframe for f in video) == 1
        cluster = fragment.cluster_timecode
        assert cluster is not None
        assert all(f.timecode >= cluster for f in fragment.frames)


def strictly_increasing(values: list[int]) -> bool:
    return all(b > a for a, b in itertools.pairwise(values))
