"""swscale writing a decoded picture straight into numpy memory the caller owns.

PyAV's ``VideoReformatter.reformat`` always returns a new frame, so a picture bound for
a model's input tensor was converted into that frame and then copied into its slot of
the tensor: for a 640x360 planar float picture, 2.8 MB more to move each frame, 0.23 ms
of the 1.15 ms the conversion and copy took together (1080p frames of the decode
benchmark, one thread). :class:`DirectScaler` instead gives ``sws_scale_frame`` a
destination frame whose planes are the slot's rows.

It calls, through ctypes, into the libswscale and libavutil that PyAV already loaded
(found in ``/proc/self/maps`` and matched to ``av.library_versions``):

* The source is the decoded picture's own ``AVFrame``, so swscale sees exactly the
  colour properties PyAV would give it. PyAV does not expose that pointer; it is read
  from the frame object (its first field, after the object header and Cython's method
  table) and used only when that ``AVFrame``'s ``data[0]``, ``linesize[0]``, size and
  pixel format are the ones PyAV reports for the same frame. Only PyAV versions whose
  layout was checked (:data:`CHECKED_PYAV_MAJORS`) are tried: reading another layout
  could follow a pointer that is not one.
* The destination is a fresh ``AVFrame`` (``av_frame_alloc``) with the source's
  properties (``av_frame_copy_props``), the caller's plane pointers and row strides, and
  the output size and format; it owns no buffer, and is freed after the call.
* Each geometry (source size, format and colour; output size, format, filter, threads;
  the destination's row stride and alignment) is checked once against PyAV's own
  ``reformat`` of the same picture: into a scratch copy of the destination's layout
  with guard rows around it, the planes must be bit-identical and nothing written
  outside them. (swscale writes whole blocks of 8 pixels: a 633-pixel row gets 7 more,
  so such a width fails the check and keeps the copy.) A failed check turns the direct
  path off for that geometry (logged at DEBUG); the caller then converts and copies as
  before, so the direct path can only ever give the same pixels, faster.

Where any of this is unavailable (not Linux, libraries not found, an unchecked PyAV)
:meth:`DirectScaler.create` returns None and callers keep the PyAV path.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, cast

import av
import numpy as np
import numpy.typing as npt
from av.video.reformatter import Interpolation, VideoReformatter

if TYPE_CHECKING:
    from av.video.frame import VideoFrame

__all__ = ["CHECKED_PYAV_MAJORS", "DirectScaler"]

log = logging.getLogger(__name__)

#: PyAV major versions whose ``Frame`` object keeps its ``AVFrame *`` as the first field
#: after the method table (``av/frame.pxd``), checked by tests/consumer/test_direct_scale.py.
CHECKED_PYAV_MAJORS: Final = frozenset({18})
# AVFrame field offsets (libavutil/frame.h, unchanged from FFmpeg 5 to 8): uint8_t
# *data[8]; int linesize[8]; uint8_t **extended_data; int width, height; int nb_samples;
# int format. Confirmed at run time on every source frame (see _frame_pointer).
_DATA: Final = 0
_LINESIZE: Final = 64
_WIDTH: Final = 104
_HEIGHT: Final = 108
_FORMAT: Final = 116
_NUM_DATA_POINTERS: Final = 8
_MAX_PLANES: Final = 4
# Geometries remembered (a stream has one or two; the bound keeps a stream whose size
# keeps changing from growing the table).
_MAX_GEOMETRIES: Final = 16
_MAX_CONTEXTS: Final = 4
# Bytes every check scratch row is filled with: as a float32, -2.9e-16, which no 0-1
# pixel is; any byte swscale writes outside the picture shows as a changed guard byte.
_GUARD_BYTE: Final = 0xA5
_ALIGNMENT: Final = 64


@dataclass(frozen=True, slots=True)
class _Destination:
    """Where swscale writes: a pointer and a row stride per plane, size and format."""

    addresses: tuple[int, ...]
    strides: tuple[int, ...]
    width: int
    height: int
    format: str
    row_bytes: int  # of each plane's pixels (the stride may be longer)


@dataclass(frozen=True, slots=True)
class _Libraries:
    avutil: ctypes.CDLL
    swscale: ctypes.CDLL
    pixel_formats: dict[str, int]

    def pixel_format(self, name: str) -> int:
        number = self.pixel_formats.get(name)
        if number is None:
            number = self.pixel_formats[name] = self.avutil.av_get_pix_fmt(name.encode())
        return number


@functools.cache  # the libraries a process has loaded do not change
def _libraries() -> _Libraries | None:
    major = int(av.__version__.split(".")[0])
    if major not in CHECKED_PYAV_MAJORS:
        log.debug("direct scaling off: PyAV %s's frame layout is not checked", av.__version__)
        return None
    versions = av.library_versions
    pyav_libs = Path(av.__file__).resolve().parent.parent / "av.libs"
    avutil = _loaded_library("libavutil", "avutil_version", versions["libavutil"], pyav_libs)
    swscale = _loaded_library("libswscale", "swscale_version", versions["libswscale"], pyav_libs)
    if avutil is None or swscale is None:
        log.debug("direct scaling off: PyAV's libavutil/libswscale not found among those loaded")
        return None
    pointer, integer = ctypes.c_void_p, ctypes.c_int
    avutil.av_frame_alloc.restype = pointer
    avutil.av_frame_alloc.argtypes = []
    avutil.av_frame_free.restype = None
    avutil.av_frame_free.argtypes = [ctypes.POINTER(pointer)]
    avutil.av_frame_copy_props.restype = integer
    avutil.av_frame_copy_props.argtypes = [pointer, pointer]
    avutil.av_get_pix_fmt.restype = integer
    avutil.av_get_pix_fmt.argtypes = [ctypes.c_char_p]
    avutil.av_opt_set_int.restype = integer
    avutil.av_opt_set_int.argtypes = [pointer, ctypes.c_char_p, ctypes.c_int64, integer]
    swscale.sws_alloc_context.restype = pointer
    swscale.sws_alloc_context.argtypes = []
    swscale.sws_free_context.restype = None
    swscale.sws_free_context.argtypes = [ctypes.POINTER(pointer)]
    swscale.sws_scale_frame.restype = integer
    swscale.sws_scale_frame.argtypes = [pointer, pointer, pointer]
    return _Libraries(avutil, swscale, {})


def _loaded_library(
    stem: str, version_function: str, version: tuple[int, int, int], preferred: Path
) -> ctypes.CDLL | None:
    """The already-mapped library ``stem`` of exactly ``version`` (OpenCV's wheel may have
    loaded its own FFmpeg beside PyAV's), PyAV's own folder first."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    # address perms offset device inode path: a library is mapped several times.
    mapped = (line.split(maxsplit=5) for line in maps.splitlines())
    paths = dict.fromkeys(
        fields[5] for fields in mapped if len(fields) == 6 and Path(fields[5]).name.startswith(stem)
    )
    for path in sorted(paths, key=lambda p: Path(p).parent != preferred):
        try:
            library = ctypes.CDLL(path)  # mapped already: the same handle, nothing loaded
            packed = int(getattr(library, version_function)())
        except (OSError, AttributeError):
            continue
        if (packed >> 16, (packed >> 8) & 0xFF, packed & 0xFF) == tuple(version):
            return library
    return None


def _read_int(address: int) -> int:
    return ctypes.c_int.from_address(address).value


def _write_int(address: int, value: int) -> None:
    ctypes.c_int.from_address(address).value = value


def _frame_pointer(frame: VideoFrame, libraries: _Libraries) -> int | None:
    """The ``AVFrame *`` behind a PyAV frame, or None when what is there is not it."""
    # Cython object: header, method table pointer, then Frame's first field, ``ptr``.
    slot = object.__basicsize__ + ctypes.sizeof(ctypes.c_void_p)
    address = ctypes.c_void_p.from_address(id(frame) + slot).value
    if not address or address % ctypes.alignment(ctypes.c_void_p):
        return None
    planes = frame.planes
    if (
        not planes
        or ctypes.c_void_p.from_address(address + _DATA).value != planes[0].buffer_ptr
        or _read_int(address + _LINESIZE) != planes[0].line_size
        or _read_int(address + _WIDTH) != frame.width
        or _read_int(address + _HEIGHT) != frame.height
        or _read_int(address + _FORMAT) != libraries.pixel_format(frame.format.name)
    ):
        return None
    return address


class DirectScaler:
    """Scales and converts pictures into the caller's planes with PyAV's libswscale.

    One per consumer of pictures (it keeps swscale contexts, like a
    ``VideoReformatter``); not thread-safe. See the module docstring.
    """

    def __init__(self, libraries: _Libraries) -> None:
        self._libraries = libraries
        # (flags, threads) -> SwsContext *; freed with the scaler.
        self._contexts: dict[tuple[int, int], int] = {}
        # geometry -> whether the direct path gives PyAV's pixels for it.
        self._checked: dict[tuple[object, ...], bool] = {}
        self._finalizer = weakref.finalize(self, _free_contexts, libraries, self._contexts)

    @classmethod
    def create(cls) -> DirectScaler | None:
        libraries = _libraries()
        return None if libraries is None else cls(libraries)

    def scale_into(
        self,
        picture: VideoFrame,
        planes: Sequence[npt.NDArray[np.generic]],
        format: str,
        *,
        interpolation: str,
        threads: int | None,
    ) -> bool:
        """Write ``picture`` converted to the planar ``format`` and scaled to the planes'
        size into ``planes`` (2-D arrays in the format's plane order, e.g. G, B, R for
        ``gbrpf32le``). False when the direct path is not available for this picture:
        the planes are then untouched, and the caller converts with PyAV."""
        if not _writable_planes(planes):
            return False
        source = _frame_pointer(picture, self._libraries)
        if source is None:
            return False
        height, width = planes[0].shape
        destination = _Destination(
            tuple(plane.ctypes.data for plane in planes),
            tuple(plane.strides[0] for plane in planes),
            width,
            height,
            format,
            width * planes[0].itemsize,
        )
        settings = (int(Interpolation[interpolation]), 0 if threads is None else threads)
        key = (
            picture.width, picture.height, picture.format.name, picture.colorspace,
            picture.color_range, width, height, format, settings, destination.strides,
            tuple(address % _ALIGNMENT for address in destination.addresses),
        )  # fmt: skip
        trusted = self._checked.get(key)
        if trusted is None:
            trusted = self._check(picture, source, destination, settings, interpolation)
            if len(self._checked) >= _MAX_GEOMETRIES:
                self._checked.clear()
            self._checked[key] = trusted
        return trusted and self._scale(source, destination, settings)

    # --- internals ----------------------------------------------------------------------
    def _context(self, settings: tuple[int, int]) -> int | None:
        """The swscale context for (filter flags, threads), made on first use."""
        context = self._contexts.get(settings)
        if context is not None:
            return context
        if len(self._contexts) >= _MAX_CONTEXTS:
            _free_contexts(self._libraries, self._contexts)
        context = cast("int | None", self._libraries.swscale.sws_alloc_context())
        if not context:
            return None
        self._contexts[settings] = context
        flags, threads = settings
        avutil = self._libraries.avutil
        # What PyAV's reformat sets on its context: the filter flags and the threads.
        if (
            avutil.av_opt_set_int(context, b"sws_flags", flags, 0) < 0
            or avutil.av_opt_set_int(context, b"threads", threads, 0) < 0
        ):
            return None
        return context

    def _scale(self, source: int, destination: _Destination, settings: tuple[int, int]) -> bool:
        context = self._context(settings)
        if context is None:
            return False
        avutil = self._libraries.avutil
        frame = avutil.av_frame_alloc()
        if not frame:
            return False
        try:
            if avutil.av_frame_copy_props(frame, source) < 0:
                return False
            data = (ctypes.c_void_p * _NUM_DATA_POINTERS).from_address(frame + _DATA)
            linesize = (ctypes.c_int * _NUM_DATA_POINTERS).from_address(frame + _LINESIZE)
            for index, (address, stride) in enumerate(
                zip(destination.addresses, destination.strides, strict=True)
            ):
                data[index], linesize[index] = address, stride
            _write_int(frame + _WIDTH, destination.width)
            _write_int(frame + _HEIGHT, destination.height)
            _write_int(frame + _FORMAT, self._libraries.pixel_format(destination.format))
            # ctypes lets go of the GIL for the call, as PyAV's reformat does.
            return int(self._libraries.swscale.sws_scale_frame(context, frame, source)) >= 0
        finally:
            # It owns no buffer (buf[] is empty): freeing it leaves the planes alone.
            avutil.av_frame_free(ctypes.byref(ctypes.c_void_p(frame)))

    def _check(
        self,
        picture: VideoFrame,
        source: int,
        destination: _Destination,
        settings: tuple[int, int],
        interpolation: str,
    ) -> bool:
        """Whether the direct path writes PyAV's pixels, and only them, for this geometry:
        into a scratch copy of the destination's layout (same row strides, same
        alignment) with a guard row above and below, compared with PyAV's ``reformat``."""
        width, height, format = destination.width, destination.height, destination.format
        scratches = []
        for address, stride in zip(destination.addresses, destination.strides, strict=True):
            size = (height + 2) * stride
            raw = np.full(size + 2 * _ALIGNMENT, _GUARD_BYTE, np.uint8)
            # The first row written lands at the destination's alignment.
            start = (address - raw.ctypes.data - stride) % _ALIGNMENT
            scratches.append(raw[start : start + size].reshape(height + 2, stride))
        trial = _Destination(
            tuple(scratch[1:].ctypes.data for scratch in scratches),
            destination.strides,
            width,
            height,
            format,
            destination.row_bytes,
        )
        if not self._scale(source, trial, settings):
            log.debug("direct scaling off for %s: swscale refused the frame", format)
            return False
        expected = VideoReformatter().reformat(
            picture, width=width, height=height, format=format, interpolation=interpolation,
            threads=settings[1],
        )  # fmt: skip
        if len(expected.planes) != len(scratches):
            log.debug("direct scaling off for %s: %d planes, not %d", format,
                      len(expected.planes), len(scratches))  # fmt: skip
            return False
        for scratch, plane in zip(scratches, expected.planes, strict=True):
            row_bytes = destination.row_bytes
            pixels = np.frombuffer(memoryview(plane), np.uint8).reshape(plane.height, -1)
            written = scratch[1:-1]
            if not np.array_equal(written[:, :row_bytes], pixels[:, :row_bytes]):
                log.debug("direct scaling off for %dx%d %s: pixels differ from PyAV's",
                          width, height, format)  # fmt: skip
                return False
            if (
                (written[:, row_bytes:] != _GUARD_BYTE).any()
                or (scratch[0] != _GUARD_BYTE).any()
                or (scratch[-1] != _GUARD_BYTE).any()
            ):
                log.debug("direct scaling off for %dx%d %s: swscale writes past the rows",
                          width, height, format)  # fmt: skip
                return False
        return True


def _writable_planes(planes: Sequence[npt.NDArray[np.generic]]) -> bool:
    """Planes swscale can write given a pointer and a row stride each: 1 to 4 of them, of
    one size, each with contiguous rows that do not overlap."""
    if not 1 <= len(planes) <= _MAX_PLANES:
        return False
    shape = planes[0].shape
    return all(
        plane.ndim == 2
        and plane.shape == shape
        and plane.flags.writeable
        and plane.strides[1] == plane.itemsize
        and plane.strides[0] >= shape[1] * plane.itemsize
        for plane in planes
    )


def _free_contexts(libraries: _Libraries, contexts: dict[tuple[int, int], int]) -> None:
    for context in contexts.values():
        libraries.swscale.sws_free_context(ctypes.byref(ctypes.c_void_p(context)))
    contexts.clear()
