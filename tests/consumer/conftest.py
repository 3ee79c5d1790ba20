from __future__ import annotations

from pathlib import Path

import av
import pytest

from kvs_toolkit.samples import SampleSpec

from .media import SampleStream, sample_stream

H264_SPEC = SampleSpec(width=640, height=360, fps=25, seconds=4.0, codec="h264", gop_seconds=1.0)
HEVC_SPEC = SampleSpec(width=480, height=272, fps=25, seconds=2.0, codec="hevc", gop_seconds=1.0)
MJPEG_SPEC = SampleSpec(width=640, height=480, fps=10, seconds=3.0, codec="mjpeg")


@pytest.fixture(scope="session")
def h264_sample(tmp_path_factory: pytest.TempPathFactory) -> SampleStream:
    return sample_stream(H264_SPEC, tmp_path_factory.mktemp("h264"))


@pytest.fixture(scope="session")
def hevc_sample(tmp_path_factory: pytest.TempPathFactory) -> SampleStream:
    if "libx265" not in av.codecs_available:
        pytest.skip("PyAV's FFmpeg has no libx265")
    return sample_stream(HEVC_SPEC, tmp_path_factory.mktemp("hevc"))


@pytest.fixture(scope="session")
def mjpeg_sample(tmp_path_factory: pytest.TempPathFactory) -> SampleStream:
    return sample_stream(MJPEG_SPEC, tmp_path_factory.mktemp("mjpeg"))


@pytest.fixture(scope="session")
def get_media(captures: Path) -> bytes:
    return (captures / "output_get_media.mkv").read_bytes()
