"""Real media for the consumer tests, made with PyAV and packaged the way GetMedia sends it.

Nothing here is a fake: the video comes from libx264/libx265/FFmpeg's MJPEG encoder
(through ``kvs_toolkit.samples`` or directly), the audio from FFmpeg's AAC and G.711
encoders, and every fragment is a whole EBML document with the AWS tags around its
Cluster, written by the project's MKV writer.

The reference decoder here is deliberately independent of the code under test: it
converts AVCC to Annex-B with its own few lines, feeds FFmpeg's H.264 *parser* and a
fresh single-threaded decoder opened without extradata, and converts with
``VideoFrame.to_ndarray``.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import numpy.typing as npt

from kvs_toolkit.mkv import (
    TRACK_TYPE_AUDIO,
    Fragment,
    FragmentReader,
    FrameData,
    MkvWriter,
    Tag,
    TrackInfo,
    getmedia_document,
)
from kvs_toolkit.mkv.model import (
    TAG_CONTINUATION_TOKEN,
    TAG_FRAGMENT_NUMBER,
    TAG_MILLIS_BEHIND_NOW,
    TAG_PRODUCER_TIMESTAMP,
    TAG_SERVER_TIMESTAMP,
)
from kvs_toolkit.samples import SampleSpec, ground_truth, render_frame, write_sample

Image = npt.NDArray[np.uint8]

# 2023-11-14T22:13:20Z: ABSOLUTE timecodes are epoch milliseconds, as KVS producers write.
PRODUCER_START_MS = 1_700_000_000_000


def read_fragments(data: bytes) -> list[Fragment]:
    reader = FragmentReader()
    return reader.feed(data) + reader.close(keep_truncated=True)


# --- packaging --------------------------------------------------------------------------------
def _seconds(ms: int) -> str:
    return f"{ms // 1000}.{ms % 1000:03d}"


def getmedia_stream(
    tracks: Sequence[TrackInfo],
    frames: Sequence[FrameData],
    *,
    fragment_ms: int = 0,
    first_fragment: int = 1,
) -> bytes:
    """``frames`` (sorted by timecode) as GetMedia documents, one per fragment.

    A fragment starts at a video key frame once the current one spans ``fragment_ms``;
    without a video track, every ``fragment_ms``.
    """
    writer = MkvWriter(tracks)
    video = {t.number for t in tracks if t.track_type != TRACK_TYPE_AUDIO}
    groups: list[list[FrameData]] = []
    for frame in frames:
        starts = frame.track_number in video and frame.keyframe if video else True
        if not groups or (starts and frame.timecode - groups[-1][0].timecode >= fragment_ms):
            groups.append([])
        groups[-1].append(frame)
    documents = []
    for n, group in enumerate(groups):
        timecode = group[0].timecode
        number = f"9134385233318143239{first_fragment + n:028d}"
        documents.append(
            getmedia_document(
                writer,
                timecode,
                group,
                tags_before=[
                    Tag(TAG_FRAGMENT_NUMBER, number),
                    Tag(TAG_SERVER_TIMESTAMP, _seconds(timecode + 750)),
                    Tag(TAG_PRODUCER_TIMESTAMP, _seconds(timecode)),
                ],
                tags_after=[
                    Tag(TAG_MILLIS_BEHIND_NOW, "1200"),
                    Tag(TAG_CONTINUATION_TOKEN, number),
                ],
            )
        )
    return b"".join(documents)


def frames_of(
    source: bytes, start_ms: int = PRODUCER_START_MS
) -> tuple[TrackInfo, list[FrameData]]:
    """The video track and frames of an MKV file written by FFmpeg's muxer, re-timed to
    absolute milliseconds from ``start_ms``."""
    fragments = read_fragments(source)
    track = fragments[0].video_track
    assert track is not None
    frames = [f for fragment in fragments for f in fragment.frames if f.track_number == 1]
    origin = min(f.timestamp_ns for f in frames)
    out = [
        FrameData(1, start_ms + (f.timestamp_ns - origin) // 1_000_000, bytes(f.data), f.keyframe)
        for f in frames
    ]
    return track, out


def bitmapinfoheader(width: int, height: int, fourcc: bytes = b"MJPG") -> bytes:
    """A 40-byte BITMAPINFOHEADER as the KVS producers write for V_MS/VFW/FOURCC."""
    return struct.pack("<IiiHH4sIiiII", 40, width, height, 1, 24, fourcc, width * height * 3,
                       0, 0, 0, 0)  # fmt: skip


@dataclass
class SampleStream:
    spec: SampleSpec
    data: bytes  # the GetMedia byte stream
    fragments: list[Fragment]
    frame_count: int


def sample_stream(spec: SampleSpec, directory: Path, *, fragment_ms: int = 1000) -> SampleStream:
    """``kvs_toolkit.samples`` video packaged as GetMedia. MJPEG goes out the way KVS
    producers send it: ``V_MS/VFW/FOURCC`` with a BITMAPINFOHEADER."""
    path = write_sample(directory / f"sample-{spec.codec}-{spec.width}x{spec.height}.mkv", spec)
    track, frames = frames_of(path.read_bytes())
    if spec.codec == "mjpeg":
        track = TrackInfo(1, "V_MS/VFW/FOURCC", bitmapinfoheader(spec.width, spec.height),
                          width=spec.width, height=spec.height)  # fmt: skip
        frames = [FrameData(1, f.timecode, f.data, keyframe=True) for f in frames]
    else:
        track = TrackInfo(1, track.codec_id, track.codec_private, width=spec.width,
                          height=spec.height)  # fmt: skip
    data = getmedia_stream([track], frames, fragment_ms=fragment_ms)
    return SampleStream(spec, data, read_fragments(data), len(frames))


def bframe_video(
    codec: str = "libx264", count: int = 50, fps: int = 25, width: int = 320, height: int = 180
) -> bytes:
    """An MKV with B-frames that are not references (two B-frames, no B-pyramid), so
    there are non-reference pictures to leave undecoded."""
    spec = SampleSpec(width=width, height=height, fps=fps, seconds=count / fps)
    out = io.BytesIO()
    with av.open(out, "w", format="matroska") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = Fraction(1, fps)
        if codec == "libx264":
            stream.codec_context.options = {
                "preset": "veryfast",
                "bf": "2",
                "b-pyramid": "none",
                "keyint": "25",
                "min-keyint": "25",
                "sc_threshold": "0",
            }
        else:
            stream.codec_context.options = {
                "preset": "ultrafast",
                "x265-params": "bframes=2:b-pyramid=0:b-adapt=0:keyint=25:min-keyint=25:"
                "scenecut=0:log-level=error",
            }
        for index in range(count):
            frame = av.VideoFrame.from_ndarray(render_frame(spec, index), format="bgr24")
            frame.pts = index
            frame.time_base = Fraction(1, fps)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return out.getvalue()


# --- audio --------------------------------------------------------------------------------
def sine(frequency: float, seconds: float, rate: int, channels: int) -> npt.NDArray[np.float32]:
    t = np.arange(round(seconds * rate), dtype=np.float64) / rate
    wave = 0.5 * np.sin(2 * np.pi * frequency * t)
    return np.repeat(wave[np.newaxis, :], channels, axis=0).astype(np.float32)


def encode_audio(
    samples: npt.NDArray[np.float32], rate: int, codec: str
) -> tuple[bytes, list[tuple[int, bytes]]]:
    """Encode ``(channels, n)`` float samples; return extradata and (pts in samples,
    packet) pairs. ``codec``: ``aac``, ``pcm_alaw`` or ``pcm_mulaw``."""
    channels = samples.shape[0]
    ctx = av.CodecContext.create(codec, "w")
    assert isinstance(ctx, av.AudioCodecContext)
    ctx.sample_rate = rate
    ctx.layout = "stereo" if channels == 2 else "mono"
    ctx.format = "fltp" if codec == "aac" else "s16"
    ctx.time_base = Fraction(1, rate)
    ctx.open()
    frame_size = ctx.frame_size or 160  # G.711: 20 ms packets at 8 kHz, as RTP sends them
    packets: list[tuple[int, bytes]] = []
    for start in range(0, samples.shape[1], frame_size):
        chunk = samples[:, start : start + frame_size]
        if codec == "aac":
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="fltp",
                                               layout=ctx.layout.name)  # fmt: skip
        else:
            pcm = np.round(chunk.T * 32767).astype(np.int16).reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout=ctx.layout.name)
        frame.sample_rate = rate
        frame.pts = start
        frame.time_base = Fraction(1, rate)
        packets += [(p.pts or 0, bytes(p)) for p in ctx.encode(frame)]
    packets += [(p.pts or 0, bytes(p)) for p in ctx.encode(None)]
    return bytes(ctx.extradata or b""), packets


def waveformatex(tag: int, channels: int, rate: int, bits: int) -> bytes:
    align = channels * max(bits, 8) // 8
    return struct.pack("<HHIIHHH", tag, channels, rate, rate * align, align, bits, 0)


# --- the independent reference decoder ----------------------------------------------------
def _avcc_nal_units(data: bytes, length_size: int) -> list[bytes]:
    units, pos = [], 0
    while pos < len(data):
        size = int.from_bytes(data[pos : pos + length_size], "big")
        pos += length_size
        units.append(data[pos : pos + size])
        pos += size
    return units


def _avcc_record(record: bytes) -> tuple[int, list[bytes]]:
    """(NAL length size, SPS + PPS) of an avcC record (ISO/IEC 14496-15 5.3.3.1)."""
    length_size = (record[4] & 0x03) + 1
    pos, sets = 5, []
    for count_mask in (0x1F, 0xFF):  # SPS count (5 bits), then PPS count
        count = record[pos] & count_mask
        pos += 1
        for _ in range(count):
            size = int.from_bytes(record[pos : pos + 2], "big")
            sets.append(record[pos + 2 : pos + 2 + size])
            pos += 2 + size
    return length_size, sets


def reference_decode_h264(
    codec_private: bytes,
    payloads: Sequence[bytes],
    format: str = "bgr24",
    width: int | None = None,
    height: int | None = None,
) -> list[Image]:
    """Decode AVCC payloads with FFmpeg's H.264 parser and a fresh decoder (no extradata,
    default single-threaded setup), converting with ``to_ndarray``."""
    length_size, parameter_sets = _avcc_record(codec_private)
    start = b"\x00\x00\x00\x01"
    stream = b"".join(start + nal for nal in parameter_sets)
    stream += b"".join(
        start + nal for payload in payloads for nal in _avcc_nal_units(payload, length_size)
    )
    ctx = av.CodecContext.create("h264", "r")
    assert isinstance(ctx, av.VideoCodecContext)
    frames = [f for packet in [*ctx.parse(stream), *ctx.parse(None)] for f in ctx.decode(packet)]
    frames += ctx.decode(None)
    return [
        np.asarray(f.to_ndarray(format=format, width=width, height=height), dtype=np.uint8)
        for f in frames
    ]


def box_means_match(image: Image, spec: SampleSpec, index: int, tolerance: float = 25) -> bool:
    """Whether every ground-truth box of frame ``index`` is in ``image`` with the colour
    the sample renders it in (mean over the box interior, away from coded edges)."""
    expected = render_frame(spec, index)
    for box in ground_truth(spec, index):
        m = max(2, box.width // 6)
        inner = (slice(box.y + m, box.y + box.height - m), slice(box.x + m, box.x + box.width - m))
        got = image[inner].reshape(-1, 3).mean(axis=0)
        want = expected[inner].reshape(-1, 3).mean(axis=0)
        if np.abs(got - want).max() > tolerance:
            return False
    return True
