"""Frame sources for the producer: where encoded frames come from.

A :class:`FrameSource` is a single-use iterator of :class:`EncodedFrame` s (AVCC/HVCC
video on track 1, audio on track 2) with the :attr:`~FrameSource.tracks` the stream
must declare. Iterating does blocking I/O and may sleep to pace a file in real time:
run it in a thread (``kvs_toolkit.producer.run.produce`` does).

Sources, chosen by :func:`open_source` from a registry keyed by the source string's
scheme (``register_source`` adds more):

==================  =========================================================================
``-``               :class:`AnnexBSource` - an H.264/H.265 elementary stream on stdin (e.g.
                    ``rpicam-vid -t 0 --inline -o - | kvs produce - ...``); no re-encoding
``camera:0``        :class:`CameraSource` - OpenCV ``VideoCapture`` (V4L2), encoded with
                    :class:`~kvs_toolkit.producer.encoder.Encoder`
``rtsp://`` ...     :class:`UrlSource` - a network stream opened by FFmpeg (rtsp, rtmp, http,
                    https, srt, udp), like a file
anything else       :class:`FileSource` - any container FFmpeg opens
==================  =========================================================================

:class:`NumpySource` takes images from user code (``put_frame``) and encodes them.

File and URL sources pass H.264 and H.265 through without decoding (Annex-B packets, as
in MPEG-TS, are converted to AVCC; mp4/mkv packets already are) and re-encode any other
video. An AAC (or G.711) audio track is passed through as track 2.
"""

from kvs_toolkit.errors import SourceError
from kvs_toolkit.producer.sources.annexb import (
    AnnexBSource,
    container_kind,
)
from kvs_toolkit.producer.sources.base import (
    SOURCES,
    ArrivalClock,
    FixedRateClock,
    FrameClock,
    FrameSource,
    SourceFactory,
    SourceOptions,
    iso_time_ms,
    open_source,
    redact_url,
    register_source,
)
from kvs_toolkit.producer.sources.camera import (
    CameraSource,
)
from kvs_toolkit.producer.sources.container import (
    ContainerSource,
    FileSource,
    UrlSource,
    adts_to_asc,
)
from kvs_toolkit.producer.sources.frames import (
    NumpySource,
)

__all__ = [
    "SOURCES",
    "AnnexBSource",
    "ArrivalClock",
    "CameraSource",
    "ContainerSource",
    "FileSource",
    "FixedRateClock",
    "FrameClock",
    "FrameSource",
    "NumpySource",
    "SourceError",
    "SourceFactory",
    "SourceOptions",
    "UrlSource",
    "adts_to_asc",
    "container_kind",
    "iso_time_ms",
    "open_source",
    "redact_url",
    "register_source",
]
