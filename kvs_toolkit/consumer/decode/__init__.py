"""Decode the frames of KVS fragments with PyAV, from each fragment's own CodecPrivate.

:class:`FragmentDecoder` turns :class:`~kvs_toolkit.mkv.Fragment` objects (from
:class:`~kvs_toolkit.mkv.FragmentReader`) into :class:`~kvs_toolkit.consumer.DecodedFrame`
objects with numpy images::

    reader, decoder = FragmentReader(), FragmentDecoder(format="bgr24", fps=2)
    for chunk in payload:
        for fragment in reader.feed(chunk):
            for frame in decoder.iter_decode(fragment):
                detect(frame.image, frame.timestamp)

Frames stream out: :meth:`FragmentDecoder.iter_decode` yields each frame as soon as
FFmpeg returns it, so a consumer holds a few frames at a time instead of a fragment's
worth (a 2 s 1080p30 fragment is 60 x 6.2 MB in BGR). :meth:`FragmentDecoder.decode`
returns the same frames as a list.

Codecs (a registry keyed by Matroska CodecID, see :func:`register_codec`):

* ``V_MPEG4/ISO/AVC`` - H.264, the avcC record as extradata, AVCC packets as stored.
* ``V_MPEGH/ISO/HEVC`` - H.265, the hvcC record as extradata.
* ``V_MS/VFW/FOURCC`` - a BITMAPINFOHEADER whose biCompression FOURCC names the codec;
  ``MJPG`` decodes every frame as a JPEG with FFmpeg's ``mjpeg`` decoder.
* ``A_AAC`` (AudioSpecificConfig) and ``A_MS/ACM`` (WAVEFORMATEX: G.711 A-law/mu-law,
  PCM) for :class:`AudioDecoder`.

Robustness: a packet the decoder rejects, or a frame it flags as corrupt, is logged and
skipped and the stream goes on; a CodecPrivate change mid-stream drains and re-opens the
decoder; a fragment that repeats a recent one (same producer timestamp, frame count and
payload hash - what a producer re-sending after a reconnect produces) is dropped and
counted.

Sampling that saves work:

* ``keyframes_only``: non-key packets are never sent to the decoder (zero decode cost),
  and ``skip_frame = "NONKEY"`` guards against a mis-flagged one.
* ``fps=N`` / ``every=S``: a time grid keeps one frame per 1/N (or S) seconds. Packets
  of frames not kept are not sent at all when nothing depends on them: every packet of
  an intra-only codec (MJPEG), and H.264/H.265 non-reference pictures (nal_ref_idc 0;
  HEVC sub-layer non-reference types in a single-layer stream). Other frames are
  decoded (later frames reference them) but not converted, and conversion is the
  expensive half. Camera streams without B-frames usually have no non-reference
  pictures, so for them the saving is the conversion.

Threading: FFmpeg's own (``thread_type="AUTO"``: frame and slice threads), so decoding
of the next frames overlaps with the conversion of the current one. A decoder object is
not thread-safe; give each thread its own.

One iteration at a time: an iteration that ends early (the caller breaks out, an
exception is raised by the decoder or by the code handling a frame, or another call on
the decoder starts) skips the rest of its fragment and discards the frames the decoder
still holds; the next fragment, which starts on a key frame, decodes normally. See
:meth:`FragmentDecoder.iter_decode`.

Modules: ``codecs`` (the CodecID registry and FFmpeg context setup), ``sampling``
(:class:`FrameSampler`, :class:`DuplicateFilter`), ``fragments`` (per-fragment timing,
track choice, :class:`DecodeStats`), ``video`` (:class:`FragmentDecoder`) and ``audio``
(:class:`AudioDecoder`). Every public name is importable from this package.
"""

from __future__ import annotations

from kvs_toolkit.consumer.decode.audio import AudioDecoder, audio_frame_to_float
from kvs_toolkit.consumer.decode.codecs import (
    CodecSetup,
    codec_setup,
    register_codec,
    registered_codecs,
)
from kvs_toolkit.consumer.decode.fragments import DecodeStats
from kvs_toolkit.consumer.decode.sampling import DuplicateFilter, FrameSampler
from kvs_toolkit.consumer.decode.video import FragmentDecoder
from kvs_toolkit.errors import DecodeError

__all__ = [
    "AudioDecoder",
    "CodecSetup",
    "DecodeError",
    "DecodeStats",
    "DuplicateFilter",
    "FragmentDecoder",
    "FrameSampler",
    "audio_frame_to_float",
    "codec_setup",
    "register_codec",
    "registered_codecs",
]
