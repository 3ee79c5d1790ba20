"""Files and network streams through FFmpeg (PyAV): H.264/H.265 passed through, other
video encoded; AAC and G.711 audio passed along."""

from __future__ import annotations

import functools
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Final

from kvs_toolkit import bitstream
from kvs_toolkit.bitstream import BytesLike, Codec
from kvs_toolkit.errors import SourceError
from kvs_toolkit.mkv import TRACK_TYPE_AUDIO, TrackInfo
from kvs_toolkit.producer.fragmenter import EncodedFrame
from kvs_toolkit.producer.sources.base import (
    AUDIO_TRACK,
    VIDEO_TRACK,
    FrameSource,
    SourceOptions,
    codec_private_from,
    iso_time_ms,
    redact_url,
    register_source,
)

if TYPE_CHECKING:
    import av
    from av.audio.stream import AudioStream
    from av.container import InputContainer
    from av.video.stream import VideoStream

    from kvs_toolkit.producer.encoder import Encoder

log = logging.getLogger(__name__)

_DEFAULT_FPS: Final = 25.0
# How far (in stream time) one track may run ahead of the other while the interleaver
# waits for the other; beyond it frames go out anyway (an audio track that ended).
_INTERLEAVE_WINDOW_MS: Final = 2000.0
# Video frames to wait for an audio track's configuration before giving up on audio.
_AUDIO_CONFIG_WAIT_FRAMES: Final = 300
_EARLY_AUDIO: Final = 512
# FFmpeg codec name -> the codec passed through without re-encoding.
_PASS_THROUGH: Final[dict[str, Codec]] = {"h264": "h264", "hevc": "h265"}


# ---------------------------------------------------------------------------------------
# Files and network streams through FFmpeg


@dataclass(slots=True)
class _Timed:
    """A frame with its position in decoding order (ms from the source's start)."""

    frame: EncodedFrame
    order_ms: float


class _Interleaver:
    """Merges video (in decoding order) and audio into one time-ordered stream.

    Containers interleave loosely (an mp4 may hold a second of audio ahead of its
    video); the Fragmenter needs every frame of a fragment at or after its key frame.
    Audio that would land before the key frame already sent is dropped (it can only
    happen with B-frames, by less than their reordering delay).
    """

    def __init__(self, *, has_audio: bool, window_ms: float = _INTERLEAVE_WINDOW_MS) -> None:
        self.has_audio = has_audio
        self.window_ms = window_ms
        self._video: deque[_Timed] = deque()
        self._audio: deque[_Timed] = deque()
        self._last_keyframe_ms: int | None = None
        self.dropped_audio = 0

    def push(self, item: _Timed) -> list[_Timed]:
        (self._video if item.frame.track_number == VIDEO_TRACK else self._audio).append(item)
        # With no audio (or no longer any), nothing needs to wait.
        return self._drain(final=not self.has_audio)

    def flush(self) -> list[_Timed]:
        return self._drain(final=True)

    def _drain(self, *, final: bool) -> list[_Timed]:
        out = []
        video, audio = self._video, self._audio
        while video or audio:
            if video and audio:
                source = video if video[0].order_ms <= audio[0].order_ms else audio
            else:
                source = video or audio
                if not final and source[-1].order_ms - source[0].order_ms < self.window_ms:
                    break
            out.append(source.popleft())
        return self._emit(out)

    def _emit(self, items: list[_Timed]) -> list[_Timed]:
        out = []
        for item in items:
            frame = item.frame
            if frame.track_number == VIDEO_TRACK:
                if frame.keyframe:
                    self._last_keyframe_ms = frame.timestamp_ms
            elif self._last_keyframe_ms is not None and frame.timestamp_ms < self._last_keyframe_ms:
                self.dropped_audio += 1
                log.debug("dropped audio at %d ms: before its key frame", frame.timestamp_ms)
                continue
            out.append(item)
        return out


class _Pacer:
    """Sleeps until each frame's time when pacing in real time."""

    def __init__(self, realtime: bool) -> None:
        self.realtime = realtime
        self.start = time.monotonic()

    def wait(self, order_ms: float) -> None:
        if self.realtime:
            delay = self.start + order_ms / 1000 - time.monotonic()
            if delay > 0:
                time.sleep(delay)


class _VideoPassThrough:
    """H.264/H.265 packets to AVCC payloads, without decoding."""

    def __init__(self, codec: Codec, extradata: bytes | None) -> None:
        self.codec: Codec = codec
        self.codec_private: bytes | None = None
        self.annexb = True
        if extradata and extradata[0] == 1:
            # avcC/hvcC (mp4, mkv): packets are length-prefixed already; pass both as-is.
            self.annexb = False
            self.codec_private = bytes(extradata)
        elif extradata:
            self.codec_private = codec_private_from(bitstream.split_annexb(extradata), codec)

    def payload(self, data: bytes, keyframe: bool) -> bytes | None:
        if not self.annexb:
            return data
        nal_units = bitstream.split_annexb(data)
        if self.codec_private is None:
            if not keyframe:
                return None
            self.codec_private = codec_private_from(nal_units, self.codec)
            if self.codec_private is None:
                return None
        return bitstream.join_length_prefixed(nal_units)


# --- audio pass-through -----------------------------------------------------------------


def adts_to_asc(data: BytesLike) -> tuple[bytes, int]:
    """(AudioSpecificConfig, header length) of an ADTS frame (ISO/IEC 14496-3 1.A.2).

    MPEG-TS carries AAC as ADTS frames; Matroska wants the raw frame and the
    AudioSpecificConfig in CodecPrivate.
    """
    if len(data) < 7 or data[0] != 0xFF or data[1] & 0xF6 != 0xF0:
        raise SourceError("AAC packet is neither raw nor an ADTS frame (no ADTS sync word)")
    if data[6] & 0x03:
        raise SourceError("ADTS frames with several raw data blocks are not supported")
    profile = data[2] >> 6
    rate_index = (data[2] >> 2) & 0x0F
    channels = ((data[2] & 0x01) << 2) | (data[3] >> 6)
    header = 7 if data[1] & 0x01 else 9  # protection_absent: no CRC
    config = ((profile + 1) << 11) | (rate_index << 7) | (channels << 3)
    return config.to_bytes(2, "big"), header


@dataclass
class _AudioPassThrough:
    codec_id: str
    sample_rate: int
    channels: int
    codec_private: bytes | None = None
    bit_depth: int | None = None
    adts: bool = False  # AAC in ADTS frames (MPEG-TS): no extradata, a header per frame

    def payload(self, data: bytes) -> bytes:
        if self.adts:
            # Strip the header; its AudioSpecificConfig is the CodecPrivate.
            config, header = adts_to_asc(data)
            if self.codec_private is None:
                self.codec_private = config
            return data[header:]
        return data

    def track(self) -> TrackInfo | None:
        if self.codec_private is None:
            return None
        return TrackInfo(
            AUDIO_TRACK,
            self.codec_id,
            self.codec_private,
            track_type=TRACK_TYPE_AUDIO,
            name="audio",
            sampling_frequency=float(self.sample_rate),
            channels=self.channels,
            bit_depth=self.bit_depth,
        )


def _aac(stream: AudioStream) -> _AudioPassThrough:
    ctx = stream.codec_context
    extradata = ctx.extradata or None
    return _AudioPassThrough(
        "A_AAC", ctx.sample_rate, ctx.channels, extradata, adts=extradata is None
    )


def _g711(format_tag: int, stream: AudioStream) -> _AudioPassThrough:
    # A_MS/ACM: CodecPrivate is a WAVEFORMATEX (wFormatTag 7 mu-law, 6 A-law, 8 bits).
    ctx = stream.codec_context
    rate, channels = ctx.sample_rate, ctx.channels
    waveformatex = b"".join(
        (
            format_tag.to_bytes(2, "little"),
            channels.to_bytes(2, "little"),
            rate.to_bytes(4, "little"),
            (rate * channels).to_bytes(4, "little"),  # nAvgBytesPerSec
            channels.to_bytes(2, "little"),  # nBlockAlign
            (8).to_bytes(2, "little"),  # wBitsPerSample
            (0).to_bytes(2, "little"),  # cbSize
        )
    )
    return _AudioPassThrough("A_MS/ACM", rate, channels, waveformatex, bit_depth=8)


#: FFmpeg audio codec name -> pass-through track (the audio KVS plays back).
_AUDIO_CODECS: Final[dict[str, Callable[[AudioStream], _AudioPassThrough]]] = {
    "aac": _aac,
    "pcm_mulaw": functools.partial(_g711, 7),
    "pcm_alaw": functools.partial(_g711, 6),
}


def _seconds(value: int | None, time_base: Fraction | None) -> float | None:
    if value is None or time_base is None:
        return None
    # int * int / int is one correctly rounded float; Fraction arithmetic per packet
    # cost more than the rest of pass-through at 200x real time.
    return value * time_base.numerator / time_base.denominator


#: Containers whose header describes every stream (codec, size, configuration) and
#: whose packets all carry timestamps: FFmpeg need not decode frames to probe them.
_SELF_DESCRIBING_FORMATS: Final = frozenset({"matroska,webm", "mov,mp4,m4a,3gp,3g2,mj2"})


class ContainerSource(FrameSource):
    """Video (and audio) from anything FFmpeg demuxes: a file or a network stream.

    H.264/H.265 is passed through; other video is decoded and encoded with
    :class:`Encoder` (then :attr:`encoder` is set). Timestamps are the wall clock at
    the first packet plus each frame's presentation offset; with ``loop`` every pass
    continues where the previous one ended. ``realtime`` paces frames to their times.
    """

    def __init__(
        self,
        target: str,
        options: SourceOptions | None = None,
        *,
        av_options: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> None:
        super().__init__(redact_url(target))  # logs and errors never show a password
        self.target = target
        self.options = options or SourceOptions()
        self._av_options = dict(av_options or {})
        self._timeout = timeout
        self.encoder: Encoder | None = None  # set when the video is re-encoded
        self.passes = 0
        self.video_codec: str | None = None
        self._video: _VideoPassThrough | None = None
        self._audio: _AudioPassThrough | None = None
        self._interleaver: _Interleaver | None = None
        self._waiting_for_audio = 0

    #: Whether :meth:`_open` may first try probing without decoding (local files: a
    #: second open costs milliseconds, not a network round trip).
    _probe_without_decoding = False

    # --- opening ----------------------------------------------------------------------
    def _open(self) -> InputContainer:
        import av

        try:
            if self._probe_without_decoding:
                # avformat_find_stream_info decodes frames to describe the streams: 60 ms
                # of a 1080p file's 150 ms pass-through at 200x real time. A MKV/MP4
                # header says all we need, so probe with the decoders skipping every
                # frame (skip_frame only reaches the probe's decoders, not ours).
                container = av.open(
                    self.target,
                    "r",
                    options={**self._av_options, "skip_frame": "all"},
                    timeout=self._timeout,
                )
                if container.format.name in _SELF_DESCRIBING_FORMATS:
                    return container
                container.close()  # e.g. a raw .h264 or MPEG-TS: timing needs the decoder
            return av.open(
                self.target, "r", options=self._av_options or None, timeout=self._timeout
            )
        except (av.FFmpegError, OSError) as exc:
            raise SourceError(f"cannot open {self.description}: {self._reason(exc)}") from exc

    def _reason(self, exc: Exception) -> str:
        """What went wrong, without the URL FFmpeg repeats (it would show the password)."""
        reason = getattr(exc, "strerror", None)
        return str(reason) if reason else str(exc).replace(self.target, self.description)

    def _streams(self, container: InputContainer) -> tuple[VideoStream, AudioStream | None]:
        if not container.streams.video:
            raise SourceError(f"{self.description}: no video stream")
        video = container.streams.video[0]
        audio = None
        if self.options.audio:
            audio = next(
                (s for s in container.streams.audio if s.codec_context.name in _AUDIO_CODECS),
                None,
            )
            if audio is None and container.streams.audio:
                names = [s.codec_context.name for s in container.streams.audio]
                log.warning(
                    "%s: audio %s cannot be passed through: dropped", self.description, names
                )
        return video, audio

    def _setup(self, video: VideoStream, audio: AudioStream | None) -> None:
        name = video.codec_context.name
        self.video_codec = name
        codec = _PASS_THROUGH.get(name)
        if codec is not None:
            self._video = _VideoPassThrough(codec, video.codec_context.extradata)
            log.info("%s: passing %s through without re-encoding", self.description, codec)
        else:
            log.info("%s: re-encoding %s video as %s", self.description, name, self.options.codec)
        if audio is not None:
            self._audio = _AUDIO_CODECS[audio.codec_context.name](audio)
        self._interleaver = _Interleaver(has_audio=self._audio is not None)

    def _start_ms(self, container: InputContainer) -> int:
        """The first frame's producer timestamp (epoch ms)."""
        start = self.options.start_time_ms
        if start is None:
            return int(time.time() * 1000)
        if start != "source":
            return start
        created = container.metadata.get("creation_time")
        if not created:
            raise SourceError(f"{self.description}: no creation_time in the file's metadata")
        try:
            start_ms = iso_time_ms(created)
        except ValueError:
            raise SourceError(
                f"{self.description}: creation_time {created!r} is not an ISO 8601 time"
            ) from None
        log.info("%s: first frame stamped %s (the file's creation_time)", self.description, created)
        return start_ms

    def _video_rate(self, video: VideoStream) -> float:
        rate = video.average_rate or video.guessed_rate or video.base_rate
        if rate and 0 < rate <= 1000:
            return float(rate)
        return self.options.fps or _DEFAULT_FPS

    def _maybe_set_tracks(self, *, final: bool = False) -> None:
        if self._tracks is not None:
            return
        video = self._video_track()
        if video is None:
            return
        tracks = [video]
        if self._audio is not None:
            audio = self._audio.track()
            if audio is None:
                self._waiting_for_audio += 1
                if not final and self._waiting_for_audio < _AUDIO_CONFIG_WAIT_FRAMES:
                    return
                log.warning("%s: no audio configuration arrived: audio dropped", self.description)
                self._audio = None
                assert self._interleaver is not None
                self._interleaver.has_audio = False
            else:
                tracks.append(audio)
        self._set_tracks(tracks)

    def _video_track(self) -> TrackInfo | None:
        from kvs_toolkit.producer.encoder import video_track

        if self._video is not None and self._video.codec_private is not None:
            return video_track(self._video.codec, self._video.codec_private, VIDEO_TRACK)
        if self.encoder is not None and self.encoder.codec_private is not None:
            return self.encoder.track()
        return None

    # --- reading ----------------------------------------------------------------------
    def _frames(self) -> Generator[EncodedFrame, None, None]:
        offset_ms = 0.0
        start_ms: int | None = None
        pacer = _Pacer(self.options.realtime)
        while True:
            container = self._open()
            try:
                video, audio = self._streams(container)
                if self.passes == 0:
                    self._setup(video, audio)
                    start_ms = self._start_ms(container)
                    pacer = _Pacer(self.options.realtime)
                assert start_ms is not None
                reader = _Pass(
                    self,
                    container,
                    video=video,
                    audio=audio,
                    start_ms=start_ms,
                    offset_ms=offset_ms,
                )
                for item in reader.items():
                    pacer.wait(item.order_ms)
                    yield item.frame
                span_ms = reader.span_ms
            finally:
                container.close()
            self.passes += 1
            self._maybe_set_tracks(final=True)
            if not self.options.loop:
                break
            if span_ms <= 0:
                raise SourceError(f"{self.description}: nothing to replay (no video frames)")
            offset_ms += span_ms
            log.debug("%s: pass %d done, replaying", self.description, self.passes)
        if self.encoder is not None:
            yield from self.encoder.flush()
        if self._tracks is None:
            raise SourceError(f"{self.description}: no decodable video frame")


class _Pass:
    """One read of the container, start to end."""

    def __init__(
        self,
        source: ContainerSource,
        container: InputContainer,
        *,
        video: VideoStream,
        audio: AudioStream | None,
        start_ms: int,
        offset_ms: float,
    ) -> None:
        self.source = source
        self.container = container
        self.video = video
        self.audio = audio if source._audio is not None else None
        self.start_ms = start_ms
        self.offset_ms = offset_ms
        self.rate = source._video_rate(video)
        self.origin: float | None = None  # first video frame's time in this pass (s)
        self.end_s = 0.0  # latest frame end relative to the origin
        self.video_count = 0
        # audio before the first video packet (kept until the origin is known; bounded,
        # as a live stream may carry audio long before its video)
        self._early_audio: deque[tuple[float, float, bytes]] = deque(maxlen=_EARLY_AUDIO)
        assert source._interleaver is not None
        self.interleaver = source._interleaver

    @property
    def span_ms(self) -> float:
        return self.end_s * 1000

    def items(self) -> Iterator[_Timed]:
        import av

        streams = (self.video, self.audio) if self.audio is not None else (self.video,)
        try:
            for packet in self.container.demux(streams):
                if packet.size == 0:
                    continue  # the demuxer's end-of-stream marker
                if packet.stream.index == self.video.index:
                    produced = self._video_packet(packet)
                else:
                    produced = self._audio_packet(packet)
                for item in produced:
                    yield from self.interleaver.push(item)
            if self.source._video is None:  # re-encoding: drain the decoder
                for item in self._decoded(None):
                    yield from self.interleaver.push(item)
        except av.FFmpegError as exc:
            reason = self.source._reason(exc)
            raise SourceError(f"{self.source.description}: read failed: {reason}") from exc
        yield from self.interleaver.flush()

    def _relative_ms(self, seconds: float) -> float:
        assert self.origin is not None
        return self.offset_ms + (seconds - self.origin) * 1000

    def _set_origin(self, seconds: float) -> list[_Timed]:
        self.origin = seconds
        early, self._early_audio = self._early_audio, deque(maxlen=_EARLY_AUDIO)
        return [item for t, d, data in early for item in self._audio_item(t, d, data)]

    # --- video ------------------------------------------------------------------------
    def _video_packet(self, packet: av.Packet[Any]) -> list[_Timed]:
        if self.source._video is None:
            return self._decoded(packet)
        index = self.video_count
        self.video_count += 1
        time_base = packet.time_base  # PyAV builds a new Fraction on every access
        pts = _seconds(packet.pts, time_base)
        dts = _seconds(packet.dts, time_base)
        # Raw elementary streams (.h264) have no timestamps: count frames at the rate.
        pts = pts if pts is not None else index / self.rate
        dts = dts if dts is not None else pts
        out = self._set_origin(pts) if self.origin is None else []
        duration = _seconds(packet.duration, time_base) or 1 / self.rate
        self.end_s = max(self.end_s, pts - self._origin + duration)
        payload = self.source._video.payload(bytes(packet), packet.is_keyframe)
        if payload is None:
            log.debug("%s: dropped a frame before the first key frame", self.source.description)
            return out
        self.source._maybe_set_tracks()
        frame = EncodedFrame(
            payload,
            self.start_ms + round(self._relative_ms(pts)),
            packet.is_keyframe,
            VIDEO_TRACK,
        )
        # Decoding order, except that a key frame goes at its presentation time: with
        # B-frames its dts is earlier, and audio between the two belongs before it.
        order = pts if packet.is_keyframe else dts
        out.append(_Timed(frame, self._relative_ms(order)))
        return out

    @property
    def _origin(self) -> float:
        assert self.origin is not None
        return self.origin

    def _decoded(self, packet: av.Packet[Any] | None) -> list[_Timed]:
        import av

        try:
            frames = self.video.decode(packet)
        except av.InvalidDataError as exc:
            # A corrupt packet costs its frame, not the stream (the decoder resyncs).
            log.warning("%s: undecodable video packet skipped: %s", self.source.description, exc)
            return []
        out: list[_Timed] = []
        for decoded in frames:
            index = self.video_count
            self.video_count += 1
            t = _seconds(decoded.pts, decoded.time_base)
            t = t if t is not None else index / self.rate
            if self.origin is None:
                out += self._set_origin(t)
            self.end_s = max(self.end_s, t - self._origin + 1 / self.rate)
            if self.source.encoder is None:
                self.source.encoder = self.source.options.encoder_for(
                    decoded.width, decoded.height, self.rate
                )
            timestamp = self.start_ms + round(self._relative_ms(t))
            for frame in self.source.encoder.encode_frame(decoded, timestamp):
                self.source._maybe_set_tracks()
                out.append(_Timed(frame, frame.timestamp_ms - self.start_ms))
        return out

    # --- audio ------------------------------------------------------------------------
    def _audio_packet(self, packet: av.Packet[Any]) -> list[_Timed]:
        time_base = packet.time_base
        t = _seconds(packet.pts, time_base)
        if t is None:
            return []
        duration = _seconds(packet.duration, time_base) or 0.0
        if self.origin is None:
            self._early_audio.append((t, duration, bytes(packet)))
            return []
        return self._audio_item(t, duration, bytes(packet))

    def _audio_item(self, t: float, duration: float, data: bytes) -> list[_Timed]:
        if t < self._origin:
            return []  # before the first video frame: no fragment could hold it
        audio = self.source._audio
        if audio is None:
            return []  # given up on (its configuration never came)
        payload = audio.payload(data)
        self.end_s = max(self.end_s, t - self._origin + duration)
        relative = self._relative_ms(t)
        frame = EncodedFrame(payload, self.start_ms + round(relative), True, AUDIO_TRACK)
        return [_Timed(frame, relative)]


class FileSource(ContainerSource):
    """A local video file (any container FFmpeg opens)."""

    _probe_without_decoding = True

    def __init__(self, path: str | os.PathLike[str], options: SourceOptions | None = None) -> None:
        path = os.fspath(path)
        if not os.path.exists(path):
            raise SourceError(f"{path}: no such file")
        if os.path.isdir(path):
            raise SourceError(f"{path}: is a directory, not a video file")
        super().__init__(path, options)
        self.live = self.options.realtime  # read as fast as possible: a recording


#: FFmpeg protocol options per URL scheme: RTSP over TCP (UDP loses packets on the
#: open internet, and every lost packet is a broken frame).
_URL_OPTIONS: Final[dict[str, dict[str, str]]] = {
    "rtsp": {"rtsp_transport": "tcp"},
    "rtsps": {"rtsp_transport": "tcp"},
}
_URL_TIMEOUT_S: Final = 10.0


class UrlSource(ContainerSource):
    """A network stream FFmpeg opens: rtsp(s)://, rtmp(s)://, http(s)://, srt://, udp://."""

    def __init__(self, url: str, options: SourceOptions | None = None) -> None:
        scheme = url.partition(":")[0].lower()
        super().__init__(url, options, av_options=_URL_OPTIONS.get(scheme), timeout=_URL_TIMEOUT_S)


@register_source("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "srt", "udp", "tcp")
def _url_source(spec: str, options: SourceOptions) -> FrameSource:
    return UrlSource(spec, options)


@register_source("file")
def _file_source(spec: str, options: SourceOptions) -> FrameSource:
    path = spec.removeprefix("file://") if spec.startswith("file://") else spec
    path = path.removeprefix("file:") if path.startswith("file:") else path
    return FileSource(path, options)
