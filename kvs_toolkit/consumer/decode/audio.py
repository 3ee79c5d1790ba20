"""Audio: :class:`AudioDecoder`, the audio tracks of fragments as float32 PCM."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Final

import av.error
import numpy as np
from av.audio.codeccontext import AudioCodecContext
from av.audio.frame import AudioFrame

from kvs_toolkit.consumer.decode.codecs import CodecSetup, codec_setup, new_packet, open_context
from kvs_toolkit.consumer.decode.fragments import DecodeStats, FragmentContext
from kvs_toolkit.consumer.decode.sampling import DuplicateFilter
from kvs_toolkit.consumer.frames import DecodedAudio, Samples
from kvs_toolkit.errors import DecodeError
from kvs_toolkit.mkv.model import TRACK_TYPE_AUDIO, Fragment, Frame, TrackInfo

__all__ = ["AudioDecoder", "audio_frame_to_float"]

log = logging.getLogger(__name__)

_INT_SCALE: Final = {"i2": 1 / 32768.0, "i4": 1 / 2147483648.0}


def audio_frame_to_float(frame: AudioFrame) -> Samples:
    """A decoded audio frame as float32 ``(channels, samples)``, integer formats scaled
    to [-1, 1). Vectorised; one copy (the conversion to float)."""
    raw = frame.to_ndarray()
    channels = frame.layout.nb_channels
    if not frame.format.is_planar:
        # Packed: one plane of interleaved samples, (1, samples * channels).
        raw = raw.reshape(-1, channels).T
    kind = raw.dtype.str[1:]
    samples: Samples
    if kind in _INT_SCALE:
        samples = np.multiply(raw, np.float32(_INT_SCALE[kind]), dtype=np.float32)
    elif kind == "u1":
        samples = np.subtract(raw, np.float32(128), dtype=np.float32) * np.float32(1 / 128)
    else:
        samples = raw.astype(np.float32, copy=False)
    return samples


@dataclass(slots=True)
class _AudioTrack:
    ctx: AudioCodecContext
    setup: CodecSetup
    key: tuple[str, bytes]


class AudioDecoder:
    """Decodes the audio tracks of fragments to float32 PCM, one chunk per track per
    fragment (see :class:`~kvs_toolkit.consumer.DecodedAudio`).

    AAC (``A_AAC``, AudioSpecificConfig CodecPrivate) and ``A_MS/ACM`` (WAVEFORMATEX:
    G.711 A-law / mu-law with FFmpeg's ``pcm_alaw`` / ``pcm_mulaw``, integer and float
    PCM). ``track`` picks one track number; by default every audio track is decoded.
    The decoder is not flushed between fragments: AAC frames overlap, and a reset would
    click at every fragment boundary.
    """

    def __init__(self, *, track: int | None = None, drop_duplicates: bool = True) -> None:
        self.track = track
        self._duplicates = DuplicateFilter() if drop_duplicates else None
        self._tracks: dict[int, _AudioTrack] = {}
        self.stats = DecodeStats()

    def decode(self, fragment: Fragment) -> list[DecodedAudio]:
        """Decode one fragment: one :class:`DecodedAudio` per audio track with samples."""
        self.stats.fragments += 1
        if self._duplicates is not None and self._duplicates.seen(fragment):
            self.stats.duplicate_fragments += 1
            log.info("dropped duplicate fragment %s", fragment.fragment_number)
            return []
        if self.track is not None:
            wanted = [t for t in fragment.tracks if t.number == self.track]
        else:
            wanted = [t for t in fragment.tracks if t.track_type == TRACK_TYPE_AUDIO]
        context = FragmentContext.of(fragment)
        out: list[DecodedAudio] = []
        for track in wanted:
            frames = [f for f in fragment.frames if f.track_number == track.number]
            if not frames:
                continue
            state = self._state_for(track)
            chunks = [c for frame in frames for c in self._decode_packet(state, frame, fragment)]
            if chunks:
                samples = chunks[0] if len(chunks) == 1 else np.concatenate(chunks, axis=1)
                self.stats.audio_samples += int(samples.shape[1])
                out.append(
                    DecodedAudio(
                        samples,
                        state.ctx.sample_rate,
                        track.number,
                        context.fragment_number,
                        context.producer_timestamp,
                        context.server_timestamp,
                        frames[0].timestamp_ns + context.offset_ns,
                    )
                )
        return out

    def flush(self) -> list[DecodedAudio]:
        """Drain every track's decoder (end of stream)."""
        out: list[DecodedAudio] = []
        for number, state in self._tracks.items():
            try:
                chunks = [audio_frame_to_float(f) for f in state.ctx.decode(None)]
            except av.error.FFmpegError as exc:
                log.warning("track %d: audio decoder failed while draining: %s", number, exc)
                continue
            state.ctx.flush_buffers()
            if chunks:
                samples = np.concatenate(chunks, axis=1)
                self.stats.audio_samples += int(samples.shape[1])
                out.append(DecodedAudio(samples, state.ctx.sample_rate, number))
        return out

    def _state_for(self, track: TrackInfo) -> _AudioTrack:
        key = (track.codec_id, track.codec_private)
        state = self._tracks.get(track.number)
        if state is not None and state.key == key:
            return state
        setup = codec_setup(track)
        if setup.media != "audio":
            raise DecodeError(f"track {track.number} ({track.codec_id}) is not an audio track")
        if state is not None:
            self.stats.codec_changes += 1
            log.info("track %d: CodecPrivate changed, re-opening the decoder", track.number)
        ctx = open_context(setup, track, threads=1)
        if not isinstance(ctx, AudioCodecContext):  # pragma: no cover - registry guarantees
            raise DecodeError(f"{setup.decoder} is not an audio decoder")
        state = _AudioTrack(ctx, setup, key)
        self._tracks[track.number] = state
        self.stats.decoder_opens += 1
        self.stats.by_codec[setup.decoder] = self.stats.by_codec.get(setup.decoder, 0) + 1
        return state

    def _decode_packet(self, state: _AudioTrack, frame: Frame, fragment: Fragment) -> list[Samples]:
        packet = new_packet(frame.data, frame.timestamp_ns)
        self.stats.packets_sent += 1
        try:
            decoded = state.ctx.decode(packet)
        except av.error.FFmpegError as exc:
            self.stats.decode_errors += 1
            log.warning(
                "fragment %s track %d: audio decoder rejected a frame, skipped: %s",
                fragment.fragment_number,
                frame.track_number,
                exc,
            )
            return []
        self.stats.frames_decoded += len(decoded)
        return [audio_frame_to_float(f) for f in decoded]
