"""FragmentDecoder on real GetMedia captures and on real encoded samples."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from kvs_toolkit.consumer import DecodedFrame, DecodeError, FragmentDecoder, codec_setup
from kvs_toolkit.mkv import Fragment, Frame, TrackInfo

from .conftest import H264_SPEC, HEVC_SPEC, MJPEG_SPEC
from .media import (
    PRODUCER_START_MS,
    SampleStream,
    box_means_match,
    read_fragments,
    reference_decode_h264,
)

UTC = dt.timezone.utc


def payloads(fragments: list[Fragment]) -> list[bytes]:
    return [bytes(f.data) for fragment in fragments for f in fragment.frames]


@pytest.fixture(scope="module")
def capture(get_media: bytes) -> list[Fragment]:
    return read_fragments(get_media)


@pytest.fixture(scope="module")
def reference(capture: list[Fragment]) -> list[np.ndarray]:
    track = capture[0].tracks[0]
    return reference_decode_h264(track.codec_private, payloads(capture))


# --- real captures -------------------------------------------------------------------------
def test_every_frame_of_a_getmedia_capture_equals_an_independent_decode(
    capture: list[Fragment], reference: list[np.ndarray]
) -> None:
    decoder = FragmentDecoder()
    frames = list(decoder.decode_all(capture))
    assert len(frames) == len(reference) == 300
    for n, (ours, theirs) in enumerate(zip(frames, reference, strict=True)):
        assert ours.image.shape == (360, 640, 3)
        assert ours.image.dtype == np.uint8
        assert np.array_equal(ours.image, theirs), f"frame {n} differs"
    assert decoder.stats.frames_converted == 300
    assert decoder.stats.decode_errors == decoder.stats.corrupt_frames == 0
    assert decoder.codec is not None and decoder.codec.decoder == "h264"


def test_frames_come_out_per_fragment_with_their_metadata(capture: list[Fragment]) -> None:
    decoder = FragmentDecoder()
    for fragment in capture:
        frames = decoder.decode(fragment)  # drained per fragment: all 60 at once
        assert [f.index for f in frames] == list(range(60))
        assert [f.keyframe for f in frames] == [True] + [False] * 59
        assert {f.fragment_number for f in frames} == {fragment.fragment_number}
        assert {f.producer_timestamp for f in frames} == {fragment.producer_timestamp}
        assert {f.server_timestamp for f in frames} == {fragment.server_timestamp}
        assert {f.track_number for f in frames} == {1}
        assert all(not f.shares_decoder_memory for f in frames)
    first = decoder.decode(capture[0])  # not a duplicate of the last fragment: decoded again
    assert len(first) == 60
    # RELATIVE timecodes (cluster 0, 2000, ...): absolute = producer timestamp + offset.
    assert first[0].datetime == dt.datetime(2017, 11, 28, 6, 55, 8, 513000, tzinfo=UTC)
    assert first[1].mkv_timestamp_ns == 33_000_000
    assert first[1].timestamp_ns == first[0].timestamp_ns + 33_000_000
    assert first[1].timestamp == pytest.approx(first[0].timestamp + 0.033)
    assert first[1].width == 640 and first[1].height == 360


def test_without_per_fragment_flush_the_frames_are_the_same(
    capture: list[Fragment], reference: list[np.ndarray]
) -> None:
    decoder = FragmentDecoder(flush_each_fragment=False)
    frames = [f for fragment in capture for f in decoder.decode(fragment)]
    assert len(frames) < 300  # a threaded decoder still holds the last few
    frames += decoder.flush()
    assert len(frames) == 300
    assert all(np.array_equal(f.image, r) for f, r in zip(frames, reference, strict=True))


def test_rgb_and_resize_are_done_by_swscale(
    capture: list[Fragment], reference: list[np.ndarray]
) -> None:
    rgb = FragmentDecoder(format="rgb24").decode(capture[0])
    assert np.array_equal(rgb[5].image, reference[5][..., ::-1])
    small = FragmentDecoder(width=320, height=180).decode(capture[0])
    track = capture[0].tracks[0]
    expected = reference_decode_h264(track.codec_private, payloads(capture[:1]), width=320,
                                     height=180)  # fmt: skip
    assert all(np.array_equal(f.image, r) for f, r in zip(small, expected, strict=True))
    assert small[5].image.shape == (180, 320, 3)
    # And it is the same picture: close to the full-size one averaged 2x2.
    pooled = reference[5].reshape(180, 2, 320, 2, 3).mean(axis=(1, 3))
    assert np.abs(small[5].image.astype(float) - pooled).mean() < 8


def test_fit_scales_to_the_letterbox_inner_size_and_follows_resolution_changes(
    captures: Path, capture: list[Fragment]
) -> None:
    other = read_fragments((captures / "output-get-media-equal-timecode.mkv").read_bytes())
    decoder = FragmentDecoder(fit=320)
    small = decoder.decode(capture[0])
    assert small[0].image.shape == (180, 320, 3)  # 640x360 into 320x320
    assert small[0].source_size == (640, 360) and small[0].decoded_size == (640, 360)
    changed = decoder.decode(other[0])  # 1280x674: 320 x round(168.5) = 168 rows
    assert changed[0].image.shape == (168, 320, 3) and changed[0].source_size == (1280, 674)
    same = FragmentDecoder(fit=(640, 640)).decode(capture[0])  # already fits: no resize
    assert same[0].image.shape == (360, 640, 3) and same[0].decoded_size is None
    full = FragmentDecoder().decode(capture[0])
    assert full[0].decoded_size is None and full[0].source_size == (640, 360)
    assert all(np.array_equal(a.image, b.image) for a, b in zip(same, full, strict=True))


def test_fit_with_width_or_a_bad_box_is_refused() -> None:
    with pytest.raises(ValueError, match="give fit or width/height, not both"):
        FragmentDecoder(fit=640, width=320)
    with pytest.raises(ValueError, match=r"fit must be a positive \(width, height\), not"):
        FragmentDecoder(fit=(640, 0))
    with pytest.raises(ValueError, match=r"fit must be a positive \(width, height\), not"):
        FragmentDecoder(fit=(640, 640, 3))  # type: ignore[arg-type]


def test_fit_shrinks_with_an_area_filter_unless_told_otherwise(capture: list[Fragment]) -> None:
    # A model input is usually a big shrink: fit= defaults to swscale's AREA filter (cheaper
    # than its bilinear at 3x, which widens with the factor); interpolation= overrides.
    fitted = FragmentDecoder(fit=320, keyframes_only=True).decode(capture[0])[0]
    assert fitted.image.shape == (180, 320, 3) and fitted.source_size == (640, 360)
    area = FragmentDecoder(width=320, height=180, interpolation="AREA", keyframes_only=True)
    assert np.array_equal(fitted.image, area.decode(capture[0])[0].image)
    bilinear = FragmentDecoder(fit=320, interpolation="BILINEAR", keyframes_only=True)
    assert not np.array_equal(fitted.image, bilinear.decode(capture[0])[0].image)


def test_gray_is_a_zero_copy_view_of_the_luma_plane(capture: list[Fragment]) -> None:
    luma = reference_decode_h264(capture[0].tracks[0].codec_private, payloads(capture[:1]),
                                 format="yuv420p")  # fmt: skip
    frames = FragmentDecoder(format="gray").decode(capture[0])
    assert len(frames) == 60
    for frame, planes in zip(frames, luma, strict=True):
        assert frame.shares_decoder_memory
        assert frame.image.shape == (360, 640)
        assert not frame.image.flags.owndata  # a view, no copy
        assert np.array_equal(frame.image, planes[:360])
    resized = FragmentDecoder(format="gray", width=320, height=180).decode(capture[0])
    assert resized[0].image.shape == (180, 320) and not resized[0].shares_decoder_memory


def test_mjpeg_capture_with_placeholder_payloads_is_logged_and_skipped(
    captures: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # test_mixed_tags.mkv declares MJPEG (V_MS/VFW/FOURCC, FOURCC MJPG, 640x480), but its
    # 100 frames are the same 100 bytes of non-JPEG filler (the parser library's test
    # producer wrote placeholders). Every one must be rejected and skipped, none fatal.
    fragments = read_fragments((captures / "test_mixed_tags.mkv").read_bytes())
    setup = codec_setup(fragments[0].tracks[0])
    assert (setup.decoder, setup.intra_only) == ("mjpeg", True)
    assert setup.description == "VFW MJPG 640x480"
    decoder = FragmentDecoder()
    with caplog.at_level(logging.WARNING, logger="kvs_toolkit.consumer"):
        frames = list(decoder.decode_all(fragments))
    assert frames == []
    assert decoder.stats.packets_sent == 100
    assert decoder.stats.decode_errors == 100
    # Identical payloads, but every fragment has its own producer timestamp: no duplicates.
    assert decoder.stats.duplicate_fragments == 0
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert 0 < len(warnings) <= 20  # the first problems are warned about, then DEBUG
    assert "decoder rejected the data" in warnings[0].getMessage()


def test_codec_private_change_reopens_the_decoder(
    captures: Path, capture: list[Fragment], reference: list[np.ndarray]
) -> None:
    other = read_fragments((captures / "output-get-media-equal-timecode.mkv").read_bytes())
    other_track = other[0].tracks[0]
    assert (other_track.width, other_track.height) == (1280, 674)
    other_reference = reference_decode_h264(other_track.codec_private, payloads(other))
    decoder = FragmentDecoder()
    first = [f for fragment in capture[:2] for f in decoder.decode(fragment)]
    second = [f for fragment in other for f in decoder.decode(fragment)]
    back = decoder.decode(capture[2])
    assert decoder.stats.decoder_opens == 3 and decoder.stats.codec_changes == 2
    assert len(first) == 120 and len(back) == 60
    assert len(second) == len(other_reference) == 239
    assert all(np.array_equal(f.image, r) for f, r in zip(first, reference[:120], strict=True))
    assert all(np.array_equal(f.image, r) for f, r in zip(second, other_reference, strict=True))
    assert all(np.array_equal(f.image, r) for f, r in zip(back, reference[120:180], strict=True))
    assert second[0].image.shape == (674, 1280, 3)


def test_capture_with_non_increasing_timecodes_decodes_every_frame(captures: Path) -> None:
    fragments = read_fragments(
        (captures / "output-get-media-non-increasing-timecode.mkv").read_bytes()
    )
    decoder = FragmentDecoder(format="gray")
    frames = list(decoder.decode_all(fragments))
    assert len(frames) == sum(len(f.frames) for f in fragments) == 358
    assert frames[0].image.shape == (720, 960)
    sampled = list(FragmentDecoder(every=1.0).decode_all(fragments))
    # The grid restarts where time jumps back, so every fragment still gets sampled.
    assert {f.fragment_number for f in sampled} == {f.fragment_number for f in fragments}


# --- duplicates ------------------------------------------------------------------------------
def test_duplicate_fragment_is_dropped_and_counted(
    capture: list[Fragment], caplog: pytest.LogCaptureFixture
) -> None:
    stream = [capture[0], capture[1], capture[1], capture[2], capture[1]]
    decoder = FragmentDecoder()
    with caplog.at_level(logging.INFO, logger="kvs_toolkit.consumer"):
        frames = list(decoder.decode_all(stream))
    assert len(frames) == 180
    assert decoder.stats.duplicate_fragments == 2
    assert "dropped duplicate fragment" in caplog.text
    keep_all = FragmentDecoder(drop_duplicates=False)
    assert len(list(keep_all.decode_all(stream))) == 300


def test_same_producer_timestamp_with_other_content_is_not_a_duplicate(
    capture: list[Fragment],
) -> None:
    changed = list(capture[0].frames)
    last = changed[-1]
    changed[-1] = replace(last, data=memoryview(bytes(last.data[:-1]) + b"\x01"))
    twin = replace(capture[0], frames=tuple(changed))
    assert twin.producer_timestamp == capture[0].producer_timestamp
    decoder = FragmentDecoder()
    decoder.decode(capture[0])
    decoder.decode(twin)
    assert decoder.stats.duplicate_fragments == 0


# --- corrupt data ---------------------------------------------------------------------------
def damaged(fragment: Fragment, index: int, data: bytes) -> Fragment:
    frames = list(fragment.frames)
    frames[index] = replace(frames[index], data=memoryview(data))
    return replace(fragment, frames=tuple(frames))


def test_flipped_bytes_frame_is_logged_and_skipped_and_the_stream_goes_on(
    capture: list[Fragment], reference: list[np.ndarray], caplog: pytest.LogCaptureFixture
) -> None:
    original = bytes(capture[0].frames[10].data)
    flipped = bytearray(original)
    flipped[60::7] = bytes(b ^ 0xFF for b in flipped[60::7])  # slice data; NAL lengths intact
    stream = [damaged(capture[0], 10, bytes(flipped)), *capture[1:]]
    decoder = FragmentDecoder()
    with caplog.at_level(logging.WARNING, logger="kvs_toolkit.consumer"):
        frames = list(decoder.decode_all(stream))
    assert "fragment 91343852333181432392682062607743920146159169392 frame 10" in caplog.text
    assert decoder.stats.corrupt_frames == 1
    assert len(frames) == 299
    assert 10 not in [f.index for f in frames if f.fragment_number == capture[0].fragment_number]
    # The next fragments start on a key frame: bit-exact again.
    later = frames[-240:]
    assert all(np.array_equal(f.image, r) for f, r in zip(later, reference[60:], strict=True))


def test_frame_with_a_broken_nal_length_is_rejected_and_skipped(
    capture: list[Fragment], reference: list[np.ndarray], caplog: pytest.LogCaptureFixture
) -> None:
    original = bytes(capture[1].frames[5].data)
    stream = [capture[0], damaged(capture[1], 5, original[: len(original) // 3]), *capture[2:]]
    decoder = FragmentDecoder()
    with caplog.at_level(logging.WARNING, logger="kvs_toolkit.consumer"):
        frames = list(decoder.decode_all(stream))
    assert decoder.stats.decode_errors == 1
    assert "decoder rejected the data" in caplog.text
    assert len(frames) == 299
    assert [f.index for f in frames[60:119]] == [i for i in range(60) if i != 5]
    assert all(np.array_equal(f.image, r) for f, r in zip(frames[:65], reference[:65],
                                                             strict=False))  # fmt: skip
    assert all(np.array_equal(f.image, r) for f, r in zip(frames[-180:], reference[120:],
                                                             strict=True))  # fmt: skip


def test_corrupt_jpeg_is_skipped(mjpeg_sample: SampleStream) -> None:
    fragment = mjpeg_sample.fragments[1]
    jpeg = bytes(fragment.frames[3].data)
    stream = [mjpeg_sample.fragments[0], damaged(fragment, 3, jpeg[:200]),
              *mjpeg_sample.fragments[2:]]  # fmt: skip
    decoder = FragmentDecoder()
    frames = list(decoder.decode_all(stream))
    assert decoder.stats.decode_errors + decoder.stats.corrupt_frames == 1
    assert len(frames) == mjpeg_sample.frame_count - 1


def test_stream_starting_mid_gop_waits_for_a_key_frame(capture: list[Fragment]) -> None:
    tail = replace(capture[0], frames=capture[0].frames[30:])
    decoder = FragmentDecoder()
    assert decoder.decode(tail) == []
    assert decoder.stats.packets_before_keyframe == 30
    assert len(decoder.decode(capture[1])) == 60


# --- errors ----------------------------------------------------------------------------------
def test_unsupported_codec_and_bad_codec_private_raise_decode_error() -> None:
    frame = Frame(1, 0, 0, True, memoryview(b"\x00" * 8))

    def fragment(track: TrackInfo) -> Fragment:
        return Fragment(tags=(), tracks=(track,), cluster_timecode=0, frames=(frame,))

    with pytest.raises(DecodeError, match="codec 'V_VP8' is not supported"):
        FragmentDecoder().decode(fragment(TrackInfo(1, "V_VP8")))
    with pytest.raises(DecodeError, match="bad avcC CodecPrivate"):
        FragmentDecoder().decode(fragment(TrackInfo(1, "V_MPEG4/ISO/AVC", b"\x00\x00\x01")))
    with pytest.raises(DecodeError, match="FOURCC b'XVID' is not supported"):
        header = b"\x28\0\0\0" + b"\0" * 12 + b"XVID" + b"\0" * 20
        FragmentDecoder().decode(fragment(TrackInfo(1, "V_MS/VFW/FOURCC", header)))
    with pytest.raises(ValueError, match="fps or every"):
        FragmentDecoder(fps=1, every=1)
    with pytest.raises(ValueError, match="format must be one of"):
        FragmentDecoder(format="yuv420p")  # type: ignore[arg-type]


# --- generated samples: the picture is right --------------------------------------------------
def sample_index(frame: DecodedFrame, fps: int) -> int:
    return round((frame.mkv_timestamp_ns / 1e6 - PRODUCER_START_MS) * fps / 1000)


@pytest.mark.parametrize(
    ("fixture", "spec"),
    [("h264_sample", H264_SPEC), ("hevc_sample", HEVC_SPEC), ("mjpeg_sample", MJPEG_SPEC)],
)
def test_sample_boxes_are_at_their_ground_truth_positions(
    request: pytest.FixtureRequest, fixture: str, spec: object
) -> None:
    sample: SampleStream = request.getfixturevalue(fixture)
    decoder = FragmentDecoder()
    frames = list(decoder.decode_all(sample.fragments))
    assert len(frames) == sample.frame_count == sample.spec.frame_count
    indices = [sample_index(f, sample.spec.fps) for f in frames]
    assert indices == list(range(sample.frame_count))
    for frame, index in zip(frames, indices, strict=True):
        assert frame.image.shape == (sample.spec.height, sample.spec.width, 3)
        assert box_means_match(frame.image, sample.spec, index), f"frame {index}"
    # The check has teeth: boxes move, so another frame's positions do not match.
    assert not box_means_match(frames[0].image, sample.spec, sample.frame_count // 2)
    assert frames[0].timestamp_ns == PRODUCER_START_MS * 1_000_000
    assert decoder.stats.corrupt_frames == decoder.stats.decode_errors == 0


def _x264_clip(path: Path, slices: int) -> list[Fragment]:
    """Half a second of 320x240 H.264 whose pictures are coded in ``slices`` slices."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        stream.codec_context.thread_type = "FRAME"  # x264's slice threads would add slices
        stream.codec_context.options = {"preset": "ultrafast", "slices": str(slices)}
        for index in range(15):
            image = np.full((240, 320, 3), index * 8, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    from .media import read_fragments

    return read_fragments(path.read_bytes())


@pytest.mark.parametrize(("slices", "threads", "expected"), [
    (1, 2, "frame"),  # one slice a picture: only frame threads use both cores
    (2, 2, "slice"),  # as many slices as threads: each picture split, no frame pipeline
    (2, 4, "frame"),  # fewer slices than threads: frame threads use them all
])  # fmt: skip
def test_threading_follows_the_slices_of_the_first_key_frame(
    tmp_path: Path, slices: int, threads: int, expected: str
) -> None:
    fragments = _x264_clip(tmp_path / "clip.mkv", slices)
    decoder = FragmentDecoder(threads=threads)
    assert decoder.threading is None
    frames = list(decoder.decode_all(fragments))
    assert len(frames) == 15
    assert decoder.threading == expected
    assert FragmentDecoder(keyframes_only=True, threads=threads).threading is None
    keys = FragmentDecoder(keyframes_only=True, threads=threads)
    assert len(list(keys.decode_all(fragments))) == 1
    assert keys.threading == "slice"  # one picture at a time: never a frame pipeline
