"""The codec registry: how to open FFmpeg's decoder for a Matroska track.

A :class:`CodecSetup` factory is registered per Matroska CodecID with
:func:`register_codec`; :func:`codec_setup` finds the one for a track. The video and
audio decoders open their FFmpeg contexts through :func:`open_context` and wrap payloads
with :func:`new_packet`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

import av
import av.error
from av.audio.codeccontext import AudioCodecContext
from av.video.codeccontext import VideoCodecContext

from kvs_toolkit.bitstream import parse_avcc, parse_hvcc, split_length_prefixed
from kvs_toolkit.errors import BitstreamError, DecodeError
from kvs_toolkit.mkv.model import TrackInfo

__all__ = [
    "CodecSetup",
    "SetupFactory",
    "codec_setup",
    "new_packet",
    "open_context",
    "register_codec",
    "registered_codecs",
]


@dataclass(frozen=True, slots=True)
class CodecSetup:
    """How to open FFmpeg's decoder for one track.

    ``nal_length_size`` is set for codecs whose packets are length-prefixed NAL units
    (H.264/H.265); ``nonref_check`` says whether a packet holds only non-reference
    pictures, so that a frame the sampler does not want can go unsent; ``slice_count``
    how many slices (slice segments) a packet's picture was coded in, which decides
    between FFmpeg's slice and frame threads.
    """

    decoder: str
    media: Literal["video", "audio"]
    extradata: bytes | None = None
    intra_only: bool = False
    nal_length_size: int | None = None
    nonref_check: Callable[[memoryview, int], bool] | None = None
    slice_count: Callable[[memoryview, int], int] | None = None
    sample_rate: int | None = None
    channels: int | None = None
    description: str = ""


SetupFactory = Callable[[TrackInfo], CodecSetup]
_REGISTRY: dict[str, SetupFactory] = {}


def register_codec(codec_id: str) -> Callable[[SetupFactory], SetupFactory]:
    """Decorator: register a :class:`CodecSetup` factory for a Matroska CodecID."""

    def decorate(factory: SetupFactory) -> SetupFactory:
        _REGISTRY[codec_id] = factory
        return factory

    return decorate


def registered_codecs() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


def codec_setup(track: TrackInfo) -> CodecSetup:
    """The decoder setup for ``track``; :class:`DecodeError` when it is not decodable."""
    factory = _REGISTRY.get(track.codec_id)
    if factory is None:
        raise DecodeError(
            f"track {track.number}: codec {track.codec_id!r} is not supported "
            f"(supported: {', '.join(registered_codecs())})"
        )
    return factory(track)


def _h264_nonref(data: memoryview, length_size: int) -> bool:
    # H.264 7.4.1: nal_ref_idc 0 on a slice (types 1-5) means no later picture uses it.
    vcl = False
    for nal in split_length_prefixed(data, length_size):
        header = nal[0]
        if 1 <= header & 0x1F <= 5:
            if header & 0x60:
                return False
            vcl = True
    return vcl


def _h265_nonref(data: memoryview, length_size: int) -> bool:
    # H.265 7.4.2.2: VCL types 0-14 with an even value are sub-layer non-reference
    # pictures (TRAIL_N, TSA_N, STSA_N, RADL_N, RASL_N, RSV_VCL_N10/12/14).
    vcl = False
    for nal in split_length_prefixed(data, length_size):
        kind = (nal[0] >> 1) & 0x3F
        if kind < 32:
            if kind >= 16 or kind % 2:
                return False
            vcl = True
    return vcl


def _h264_slices(data: memoryview, length_size: int) -> int:
    # H.264 7.4.1.2.3: an access unit's coded slices are NAL types 1-5.
    return sum(1 for nal in split_length_prefixed(data, length_size) if 1 <= nal[0] & 0x1F <= 5)


def _h265_slices(data: memoryview, length_size: int) -> int:
    # H.265 7.4.2.2: VCL NAL unit types are 0-31, one per slice segment.
    return sum(1 for nal in split_length_prefixed(data, length_size) if (nal[0] >> 1) & 0x3F < 32)


@register_codec("V_MPEG4/ISO/AVC")
def _avc(track: TrackInfo) -> CodecSetup:
    try:
        config = parse_avcc(track.codec_private)
    except BitstreamError as exc:
        raise DecodeError(f"track {track.number}: bad avcC CodecPrivate: {exc}") from exc
    return CodecSetup(
        "h264",
        "video",
        extradata=track.codec_private,
        nal_length_size=config.length_size,
        nonref_check=_h264_nonref,
        slice_count=_h264_slices,
        description=f"H.264 profile {config.profile_idc} level {config.level_idc}",
    )


@register_codec("V_MPEGH/ISO/HEVC")
def _hevc(track: TrackInfo) -> CodecSetup:
    try:
        config = parse_hvcc(track.codec_private)
    except BitstreamError as exc:
        raise DecodeError(f"track {track.number}: bad hvcC CodecPrivate: {exc}") from exc
    # A sub-layer non-reference picture may still be referenced from a higher temporal
    # sub-layer, so dropping one is only safe in a single-layer stream.
    single_layer = config.num_temporal_layers == 1
    return CodecSetup(
        "hevc",
        "video",
        extradata=track.codec_private,
        nal_length_size=config.length_size,
        nonref_check=_h265_nonref if single_layer else None,
        slice_count=_h265_slices,
        description=f"H.265 profile {config.general_profile_idc}",
    )


@register_codec("V_MJPEG")
def _mjpeg(track: TrackInfo) -> CodecSetup:
    return CodecSetup("mjpeg", "video", intra_only=True, description="MJPEG")


# BITMAPINFOHEADER biCompression FOURCC -> (FFmpeg decoder, intra-only). Only codecs whose
# VFW framing is one picture per frame with no CodecPrivate needs beyond the header.
_VFW_FOURCCS: Final[dict[bytes, tuple[str, bool]]] = {
    b"MJPG": ("mjpeg", True),
    b"mjpg": ("mjpeg", True),
    b"AVRn": ("mjpeg", True),
    b"JPEG": ("mjpeg", True),
    b"jpeg": ("mjpeg", True),
}
_BITMAPINFOHEADER_SIZE: Final = 40


@register_codec("V_MS/VFW/FOURCC")
def _vfw(track: TrackInfo) -> CodecSetup:
    private = track.codec_private
    if len(private) < _BITMAPINFOHEADER_SIZE:
        raise DecodeError(
            f"track {track.number}: V_MS/VFW/FOURCC CodecPrivate has {len(private)} bytes, "
            f"a BITMAPINFOHEADER needs {_BITMAPINFOHEADER_SIZE}"
        )
    # BITMAPINFOHEADER: biSize, biWidth, biHeight, biPlanes, biBitCount, biCompression...
    size, width, height = struct.unpack_from("<Iii", private, 0)
    fourcc = bytes(private[16:20])
    known = _VFW_FOURCCS.get(fourcc)
    if known is None:
        raise DecodeError(
            f"track {track.number}: V_MS/VFW/FOURCC with FOURCC {fourcc!r} is not supported "
            f"(supported: {', '.join(sorted(f.decode() for f in _VFW_FOURCCS))})"
        )
    decoder, intra = known
    extra = bytes(private[max(size, _BITMAPINFOHEADER_SIZE) :])
    return CodecSetup(
        decoder,
        "video",
        extradata=extra or None,
        intra_only=intra,
        description=f"VFW {fourcc.decode()} {width}x{abs(height)}",
    )


@register_codec("A_AAC")
def _aac(track: TrackInfo) -> CodecSetup:
    # CodecPrivate is the AudioSpecificConfig (ISO/IEC 14496-3 1.6.2.1), FFmpeg's extradata.
    return CodecSetup(
        "aac",
        "audio",
        extradata=track.codec_private or None,
        sample_rate=int(track.sampling_frequency) if track.sampling_frequency else None,
        channels=track.channels,
        description="AAC",
    )


# WAVEFORMATEX (wFormatTag, wBitsPerSample) -> FFmpeg decoder; None: any sample size.
_ACM_FORMATS: Final[dict[tuple[int, int | None], str]] = {
    (0x0001, 8): "pcm_u8",
    (0x0001, 16): "pcm_s16le",
    (0x0001, 24): "pcm_s24le",
    (0x0001, 32): "pcm_s32le",
    (0x0003, 32): "pcm_f32le",
    (0x0003, 64): "pcm_f64le",
    (0x0006, None): "pcm_alaw",  # G.711 A-law
    (0x0007, None): "pcm_mulaw",  # G.711 mu-law
}
_WAVEFORMATEX_SIZE: Final = 16  # without cbSize, as WAVEFORMAT/PCMWAVEFORMAT


@register_codec("A_MS/ACM")
def _acm(track: TrackInfo) -> CodecSetup:
    private = track.codec_private
    if len(private) < _WAVEFORMATEX_SIZE:
        raise DecodeError(
            f"track {track.number}: A_MS/ACM CodecPrivate has {len(private)} bytes, "
            f"a WAVEFORMATEX needs at least {_WAVEFORMATEX_SIZE}"
        )
    tag, channels, rate, _avg_bytes, _align, bits = struct.unpack_from("<HHIIHH", private, 0)
    decoder = _ACM_FORMATS.get((tag, bits)) or _ACM_FORMATS.get((tag, None))
    if decoder is None:
        raise DecodeError(
            f"track {track.number}: A_MS/ACM wFormatTag {tag:#06x} with {bits} bits per "
            "sample is not supported (PCM, IEEE float, G.711 A-law 0x0006, mu-law 0x0007)"
        )
    if channels == 0 or rate == 0:
        raise DecodeError(f"track {track.number}: WAVEFORMATEX says {channels} ch, {rate} Hz")
    return CodecSetup(
        decoder,
        "audio",
        sample_rate=rate,
        channels=channels,
        description=f"{decoder} {channels} ch {rate} Hz",
    )


def open_context(
    setup: CodecSetup, track: TrackInfo, threads: int, thread_type: str = "AUTO"
) -> av.CodecContext:
    """Open FFmpeg's decoder for ``track``; ``threads`` and ``thread_type`` (``AUTO``:
    frame and slice threads, ``SLICE``: no frame pipeline) apply to video."""
    try:
        ctx = av.CodecContext.create(setup.decoder, "r")
        if setup.extradata:
            ctx.extradata = setup.extradata
        if isinstance(ctx, VideoCodecContext):
            ctx.thread_type = thread_type
            ctx.thread_count = threads
        elif isinstance(ctx, AudioCodecContext):
            if setup.sample_rate:
                ctx.sample_rate = setup.sample_rate
            if setup.channels:
                ctx.layout = f"{setup.channels}c"
        ctx.open()
    except (av.error.FFmpegError, ValueError) as exc:
        raise DecodeError(
            f"track {track.number}: cannot open the {setup.decoder} decoder "
            f"({track.codec_id}): {exc}"
        ) from exc
    return ctx


def new_packet(data: memoryview, pts: int) -> av.Packet[Any]:
    # av_new_packet() allocates the AV_INPUT_BUFFER_PADDING_SIZE zero bytes FFmpeg may
    # read past the end; one copy of the payload into it.
    packet: av.Packet[Any] = av.Packet(len(data))
    memoryview(packet)[:] = data
    packet.pts = pts
    return packet
