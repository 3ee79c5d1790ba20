"""AAC and G.711 tracks decoded to float PCM, and WAV files written from it."""

from __future__ import annotations

import wave
from pathlib import Path

import av
import numpy as np
import pytest

from kvs_toolkit.consumer import AudioDecoder, DecodedAudio, DecodeError, FragmentDecoder, write_wav
from kvs_toolkit.mkv import TRACK_TYPE_AUDIO, Fragment, Frame, FrameData, TrackInfo

from .media import (
    PRODUCER_START_MS,
    SampleStream,
    encode_audio,
    getmedia_stream,
    read_fragments,
    sine,
    waveformatex,
)


def audio_stream(
    track: TrackInfo, packets: list[tuple[int, bytes]], rate: int, fragment_ms: int = 1000
) -> list[Fragment]:
    frames = [
        FrameData(track.number, PRODUCER_START_MS + pts * 1000 // rate, data, keyframe=True)
        for pts, data in packets
    ]
    return read_fragments(getmedia_stream([track], frames, fragment_ms=fragment_ms))


def dominant_frequency(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples))
    return float(np.fft.rfftfreq(samples.size, 1 / rate)[np.argmax(spectrum)])


@pytest.fixture(scope="module")
def aac() -> tuple[list[Fragment], int, float]:
    rate, seconds = 48_000, 3.0
    extradata, packets = encode_audio(sine(440, seconds, rate, 2), rate, "aac")
    track = TrackInfo(1, "A_AAC", extradata, track_type=TRACK_TYPE_AUDIO,
                      sampling_frequency=float(rate), channels=2)  # fmt: skip
    return audio_stream(track, packets, rate), rate, seconds


def test_aac_decodes_to_float_pcm_of_the_right_length(
    aac: tuple[list[Fragment], int, float],
) -> None:
    fragments, rate, seconds = aac
    assert len(fragments) >= 3  # 1 s fragments; the encoder's last packets may spill over
    decoder = AudioDecoder()
    chunks = [chunk for fragment in fragments for chunk in decoder.decode(fragment)]
    assert len(chunks) == len(fragments)
    audio = DecodedAudio.concatenate(chunks)
    assert audio.samples.dtype == np.float32 and audio.channels == 2
    assert audio.sample_rate == rate and audio.track_number == 1
    # AAC adds an encoder delay and pads the last frame: within two 1024-sample frames.
    assert abs(audio.sample_count - seconds * rate) <= 2 * 1024
    assert audio.duration == pytest.approx(seconds, abs=0.05)
    steady = audio.samples[0, 4096:-4096]
    assert dominant_frequency(steady, rate) == pytest.approx(440, abs=2)
    assert 0.45 < np.abs(steady).max() < 0.55  # the 0.5 amplitude sine
    assert chunks[0].fragment_number == fragments[0].fragment_number
    # A chunk starts at its fragment's first packet: within one AAC frame (21 ms) of 1 s.
    assert abs(chunks[1].timestamp_ns - (PRODUCER_START_MS + 1000) * 1_000_000) < 22_000_000
    assert decoder.stats.decode_errors == 0


@pytest.mark.parametrize(("codec", "tag"), [("pcm_mulaw", 7), ("pcm_alaw", 6)])
def test_g711_decodes_close_to_the_original(codec: str, tag: int) -> None:
    rate = 8000
    original = sine(1000, 2.0, rate, 1)
    _extradata, packets = encode_audio(original, rate, codec)
    track = TrackInfo(2, "A_MS/ACM", waveformatex(tag, 1, rate, 8), track_type=TRACK_TYPE_AUDIO,
                      sampling_frequency=float(rate), channels=1)  # fmt: skip
    fragments = audio_stream(track, packets, rate, fragment_ms=500)
    decoder = AudioDecoder()
    audio = DecodedAudio.concatenate([c for f in fragments for c in decoder.decode(f)])
    assert decoder.stats.by_codec == {codec: 1}
    assert audio.sample_count == original.shape[1] and audio.channels == 1
    # G.711 is 8-bit logarithmic: a few percent of error at most.
    assert np.abs(audio.samples - original).max() < 0.02


def test_unknown_wave_format_raises() -> None:
    track = TrackInfo(1, "A_MS/ACM", waveformatex(0x55, 1, 8000, 0), track_type=TRACK_TYPE_AUDIO)
    frame = Frame(1, 0, 0, True, memoryview(b"\x00" * 16))
    fragment = Fragment(tags=(), tracks=(track,), cluster_timecode=0, frames=(frame,))
    with pytest.raises(DecodeError, match="wFormatTag 0x0055"):
        AudioDecoder().decode(fragment)


def test_wav_is_readable_by_wave_and_by_pyav(
    aac: tuple[list[Fragment], int, float], tmp_path: Path
) -> None:
    fragments, rate, _seconds = aac
    decoder = AudioDecoder()
    audio = DecodedAudio.concatenate([c for f in fragments for c in decoder.decode(f)])
    path = write_wav(tmp_path / "out.wav", audio)
    with wave.open(str(path), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (2, 2, rate)
        assert wav.getnframes() == audio.sample_count
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").reshape(-1, 2).T
    np.testing.assert_allclose(pcm / 32767, audio.samples, atol=1 / 32767 + 1e-6)
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.name == "pcm_s16le" and stream.rate == rate
        decoded = np.concatenate([f.to_ndarray() for f in container.decode(audio=0)], axis=1)
    assert decoded.reshape(-1, 2).T.shape == audio.samples.shape
    assert np.array_equal(decoded.reshape(-1, 2).T, pcm)
    with pytest.raises(ValueError, match="sample_rate is required"):
        write_wav(tmp_path / "x.wav", audio.samples)


def test_video_and_audio_tracks_of_one_stream(h264_sample: SampleStream) -> None:
    # H.264 from the sample plus an AAC track, interleaved in the same fragments.
    rate = 44_100
    extradata, packets = encode_audio(sine(880, 4.0, rate, 1), rate, "aac")
    video_fragments = h264_sample.fragments
    video_track = video_fragments[0].tracks[0]
    audio_track = TrackInfo(2, "A_AAC", extradata, track_type=TRACK_TYPE_AUDIO,
                            sampling_frequency=float(rate), channels=1)  # fmt: skip
    frames = [
        FrameData(1, f.timecode, bytes(f.data), f.keyframe)
        for fragment in video_fragments
        for f in fragment.frames
    ]
    frames += [
        FrameData(2, PRODUCER_START_MS + pts * 1000 // rate, data, keyframe=True)
        for pts, data in packets
    ]
    frames.sort(key=lambda f: (f.timecode, f.track_number))
    fragments = read_fragments(getmedia_stream([video_track, audio_track], frames,
                                               fragment_ms=1000))  # fmt: skip
    video = list(FragmentDecoder().decode_all(fragments))
    audio_decoder = AudioDecoder()
    chunks = [c for f in fragments for c in audio_decoder.decode(f)]
    assert len(video) == h264_sample.frame_count
    assert {c.track_number for c in chunks} == {2}
    total = sum(c.sample_count for c in chunks)
    assert abs(total - 4.0 * rate) <= 2 * 1024
    only_video_track = AudioDecoder(track=1)
    with pytest.raises(DecodeError, match="is not an audio track"):
        only_video_track.decode(fragments[0])
