"""N decoded frames into one model-ready tensor, in buffers reused from call to call.

::

    batcher = FrameBatcher(640, batch_size=8)             # YOLO-style: letterbox to 640x640
    decoder = FragmentDecoder(fit=batcher)                # pictures straight into the slots
    for frame in decoder.decode_all(fragments):
        batch = batcher.add(frame)                        # counted; a Batch when full
        if batch is not None:
            detections = model(batch.tensor)              # (8, 3, 640, 640) float32 RGB 0..1
            boxes = batch.unletterbox(0, detections[0][:, :4])   # frame 0's pixels
    last = batcher.flush()                                # the last, partial batch (or None)

``batcher.add(frame)`` also takes any :class:`DecodedFrame` or array, and
``batcher(frames)`` a list at once. Each frame goes straight into its slot of a
preallocated output tensor: resized (when its size differs) by OpenCV's ``cv2.resize``
(``INTER_LINEAR``) into a reused scratch buffer, then channel order, layout (NCHW or
NHWC), dtype and normalisation (``x * scale``, then ``(x - mean) / std`` per channel)
over the picture's region only. The padding of a letterbox is written once per slot and
geometry, not per call. A frame the decoder already scaled to the letterbox's inner
size (``FragmentDecoder(fit=batcher.size)``) skips the resize. No Python loop touches a
pixel; the only loops are over the N frames and the 3 channels.

Where the time goes (float32 NCHW, the usual model input): a 640x640 RGB float tensor
is 4.9 MB a frame, 39 MB for 8, several times the CPU's cache. What keeps it cheap:

* With ``FragmentDecoder(fit=batcher)`` the decoder hands each picture to
  :meth:`FrameBatcher.write_picture`: swscale scales and converts it once, from YUV
  straight to planar float RGB (0-1) at the inner size, writing the three planes into
  the slot's channel rows themselves (:mod:`~kvs_toolkit.consumer.direct_scale`). No
  uint8 BGR image is made, split or converted, and nothing is copied: the conversion is
  the only work on top of decoding. Where that direct write is not available (another
  PyAV, a region width swscale would overrun) swscale writes a frame of its own whose
  planes are copied in (2.8 MB a 640x360 frame, a fifth of the conversion's time).
* :meth:`FrameBatcher.add` writes each frame while its pixels are still in the cache
  (swscale has just written them); batching 8 frames at once reads them back from
  memory, and the 22 MB of floats written in one go evict the decoder's reference
  frames as well. On a 1080p stream this was most of the cost of batching.
* A colour uint8 frame is split into three contiguous planes by ``cv2.split`` (reused
  buffers; 0.02 ms for 640x360), then each plane becomes its channel's rows in one
  contiguous ``np.multiply``. numpy converting the interleaved ``(H, W, 3)`` picture
  through a transposed view is 2x slower (strided reads in its casting loop).

Buffer lifetime: a :class:`Batch`'s tensor is the batcher's own buffer, overwritten when
the batcher next writes into it. With ``buffers=1`` (the default) that is the next
:meth:`~FrameBatcher.add` after a full batch (or the next call): finish with the tensor
(or ``tensor.copy()`` it) before adding more frames. ``buffers=2`` or more rotates
through that many tensors, so a consumer may hold the last ``buffers - 1`` batches (an
asynchronous model call, a queue to an inference thread) while the next one fills.
"""

from __future__ import annotations

import logging
import weakref
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal, TypeAlias, cast

import numpy as np
import numpy.typing as npt

from kvs_toolkit.consumer.frames import DecodedFrame, Image, fit_size, frame_to_ndarray, luma_view

if TYPE_CHECKING:
    from av.video.frame import VideoFrame
    from av.video.reformatter import VideoReformatter

    from kvs_toolkit.consumer.direct_scale import DirectScaler

__all__ = [
    "Batch",
    "ChannelOrder",
    "FrameBatcher",
    "Layout",
    "LetterboxParams",
    "letterbox",
    "letterbox_boxes",
    "unletterbox_boxes",
]

log = logging.getLogger(__name__)

Layout: TypeAlias = Literal["NCHW", "NHWC"]
ChannelOrder: TypeAlias = Literal["RGB", "BGR"]
ResizeMode: TypeAlias = Literal["letterbox", "resize"]
TensorDType: TypeAlias = Literal["float32", "uint8"]
FloatArray: TypeAlias = npt.NDArray[np.floating]

#: The grey YOLO pads letterboxed images with.
YOLO_PAD_VALUE: Final = 114
#: swscale's filter for each OpenCV interpolation, for pictures the decoder hands over
#: (:meth:`FrameBatcher.write_picture`): swscale's ``FAST_BILINEAR`` into planar float
#: gives what ``cv2.resize`` ``INTER_LINEAR`` gives from BGR, within 0.6-0.7 grey levels
#: (mean; 1080p, 720p and 540p into 640x360 and 416x234), and is the cheapest filter.
_SWSCALE_FILTERS: Final = {0: "POINT", 1: "FAST_BILINEAR", 2: "BICUBIC", 3: "AREA", 4: "LANCZOS"}
#: ``cv2.INTER_LINEAR``. OpenCV is imported on first use, not with this module: the
#: ``kvs_toolkit.consumer`` package imports this module, and a process that never
#: batches (``kvs consume`` without a model) need not load OpenCV (~15 ms, ~20 MB).
INTER_LINEAR: Final = 1
# Pictures remembered by write_picture() to recognise their frames (see add()).
_MAX_WRITTEN: Final = 64
# Resize targets kept (one per frame size seen; a stream has one or two).
_MAX_SCRATCH: Final = 8


@dataclass(frozen=True, slots=True)
class LetterboxParams:
    """How one frame was placed in the network input: map boxes back with these.

    A frame of ``source_width`` x ``source_height`` was resized to ``resized_width`` x
    ``resized_height`` and put at ``(pad_x, pad_y)`` in the input. ``scale`` is the
    uniform factor of a letterbox (``min(W / w, H / h)``); the exact per-axis factors
    after rounding to whole pixels are :attr:`scale_x` and :attr:`scale_y`, which the
    box mapping uses. In ``resize`` (stretch) mode the pads are 0 and the axes differ.
    """

    scale: float
    pad_x: int
    pad_y: int
    source_width: int
    source_height: int
    resized_width: int
    resized_height: int

    @property
    def scale_x(self) -> float:
        return self.resized_width / self.source_width

    @property
    def scale_y(self) -> float:
        return self.resized_height / self.source_height

    @classmethod
    def fit(
        cls, width: int, height: int, target: tuple[int, int], mode: ResizeMode = "letterbox"
    ) -> LetterboxParams:
        """The placement of a ``width`` x ``height`` frame in a ``target`` (W, H) input."""
        if width <= 0 or height <= 0:
            raise ValueError(f"cannot place an empty {width}x{height} image")
        target_w, target_h = target
        if mode == "resize":
            return cls(min(target_w / width, target_h / height), 0, 0, width, height,
                       target_w, target_h)  # fmt: skip
        scale = min(target_w / width, target_h / height)
        resized_w, resized_h = fit_size(width, height, target)
        return cls(
            scale,
            (target_w - resized_w) // 2,
            (target_h - resized_h) // 2,
            width,
            height,
            resized_w,
            resized_h,
        )


def unletterbox_boxes(
    boxes: npt.ArrayLike, params: LetterboxParams, *, clip: bool = True
) -> FloatArray:
    """Map ``(..., 4+)`` boxes ``x1, y1, x2, y2, ...`` from network-input pixels to frame
    pixels. Columns after the fourth (score, class) are kept as they are. ``clip``
    limits coordinates to the frame. Returns a new float array; vectorised."""
    array = np.asarray(boxes)
    out: FloatArray = array.astype(np.float64) if array.dtype.kind in "iub" else array.copy()
    if out.shape[-1] < 4:
        raise ValueError(f"boxes need 4 coordinates in the last axis, got shape {out.shape}")
    out[..., 0:4:2] = (out[..., 0:4:2] - params.pad_x) / params.scale_x
    out[..., 1:4:2] = (out[..., 1:4:2] - params.pad_y) / params.scale_y
    if clip:
        np.clip(out[..., 0:4:2], 0, params.source_width, out=out[..., 0:4:2])
        np.clip(out[..., 1:4:2], 0, params.source_height, out=out[..., 1:4:2])
    return out


def letterbox_boxes(boxes: npt.ArrayLike, params: LetterboxParams) -> FloatArray:
    """The inverse of :func:`unletterbox_boxes`: frame pixels to network-input pixels."""
    array = np.asarray(boxes)
    out: FloatArray = array.astype(np.float64) if array.dtype.kind in "iub" else array.copy()
    out[..., 0:4:2] = out[..., 0:4:2] * params.scale_x + params.pad_x
    out[..., 1:4:2] = out[..., 1:4:2] * params.scale_y + params.pad_y
    return out


def _to_three_channels(image: Image) -> Image:
    if image.ndim == 2:
        import cv2

        return np.asarray(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR), dtype=np.uint8)
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    raise ValueError(f"expected an (H, W) or (H, W, 3) uint8 image, got shape {image.shape}")


def _place(
    image: Image,
    slot: Image,
    params: LetterboxParams,
    *,
    fill: int | None,
    interpolation: int,
) -> None:
    """Resize ``image`` into ``slot`` (H, W, 3) at the params' position; ``fill`` the
    padding first when given (the slot's last layout differed)."""
    if fill is not None:
        slot.fill(fill)
    x, y = params.pad_x, params.pad_y
    region = slot[y : y + params.resized_height, x : x + params.resized_width]
    if image.shape[:2] == region.shape[:2]:
        np.copyto(region, image)
    else:
        import cv2

        # dst= makes OpenCV write straight into the canvas (a strided view): no temporary.
        cv2.resize(
            image,
            (params.resized_width, params.resized_height),
            dst=region,
            interpolation=interpolation,
        )


def letterbox(
    image: Image,
    size: int | tuple[int, int],
    *,
    pad_value: int = YOLO_PAD_VALUE,
    out: Image | None = None,
    interpolation: int = INTER_LINEAR,
) -> tuple[Image, LetterboxParams]:
    """Letterbox one ``(H, W, 3)`` image into ``size`` (W, H), keeping its aspect ratio.

    Writes into ``out`` (shape ``(H, W, 3)``, uint8) when given, else a new array.
    """
    target = (size, size) if isinstance(size, int) else size
    image = _to_three_channels(image)
    params = LetterboxParams.fit(image.shape[1], image.shape[0], target)
    if out is None:
        out = np.empty((target[1], target[0], 3), dtype=np.uint8)
    elif out.shape != (target[1], target[0], 3) or out.dtype != np.uint8:
        raise ValueError(f"out must be uint8 {(target[1], target[0], 3)}, not {out.shape}")
    _place(image, out, params, fill=pad_value, interpolation=interpolation)
    return out, params


@dataclass(frozen=True, slots=True)
class Batch:
    """A model-ready tensor and, per frame, how it was placed (for :func:`unletterbox_boxes`).

    ``tensor`` is the batcher's buffer, overwritten when the batcher next writes into it
    (see the module docstring: with ``buffers=1``, the next call or the next
    :meth:`FrameBatcher.add` after this batch; ``buffers=k`` keeps it for ``k - 1`` more
    batches).
    """

    tensor: npt.NDArray[np.float32] | npt.NDArray[np.uint8]
    params: tuple[LetterboxParams, ...]

    def __len__(self) -> int:
        return len(self.params)

    def unletterbox(self, index: int, boxes: npt.ArrayLike, *, clip: bool = True) -> FloatArray:
        """Boxes of frame ``index`` from input pixels to that frame's pixels."""
        return unletterbox_boxes(boxes, self.params[index], clip=clip)


class FrameBatcher:
    """Turns N frames into one tensor of shape ``(N, 3, H, W)`` (NCHW) or ``(N, H, W, 3)``.

    ``size``: the network input, an int for a square or ``(width, height)``.
    ``mode``: ``letterbox`` (keep the aspect ratio, pad with ``pad_value``; YOLO uses
    114) or ``resize`` (stretch). ``dtype``: ``float32`` (``x * scale`` with ``scale``
    defaulting to 1/255, then ``(x - mean) / std`` per channel when given, in the
    output channel order) or ``uint8`` (no normalisation). ``channel_order``: of the
    output; the input's is taken from each :class:`DecodedFrame`'s format, or
    ``input_order`` for bare arrays (2-D arrays are gray).

    Decoder-side scaling: ``FragmentDecoder(fit=batcher)`` (the fastest) hands each
    decoded picture to the batcher, whose swscale converts it straight into the next
    slot, scaled to the letterbox's inner size (e.g. 640x360 for 1920x1080 into
    640x640); see :meth:`write_picture`. ``FragmentDecoder(fit=batcher.size)`` instead
    has the decoder make BGR frames at the inner size, which the batcher only copies
    in, pads and normalises (no ``cv2.resize``). Either way the reported
    :class:`LetterboxParams` are the same as for the full-size frame (from the decoded
    picture's size), so boxes map back to the decoded picture's pixels. Pixels differ
    slightly from the OpenCV path (swscale's filter from YUV, not ``INTER_LINEAR`` from
    BGR): within a grey level with ``fit=batcher``, a few with ``AREA``.

    Frames arrive one at a time with :meth:`add` (written at once, the batch returned
    when ``batch_size`` frames are in; :meth:`flush` returns a partial one) or as a list
    with a call. Buffers for ``batch_size`` frames are allocated once and reused; a call
    with more frames grows them (once). ``buffers``: how many such tensors to rotate
    through, one per batch, so that a consumer can hold the last ``buffers - 1`` batches
    while the next fills (default 1: a batch is valid until the batcher's next write).
    With exactly ``batch_size`` frames and ``buffers=1`` the returned tensor is the same
    ndarray object every time; with fewer it is a view of its first N entries.
    """

    def __init__(
        self,
        size: int | tuple[int, int],
        *,
        batch_size: int = 1,
        mode: ResizeMode = "letterbox",
        pad_value: int = YOLO_PAD_VALUE,
        layout: Layout = "NCHW",
        dtype: TensorDType = "float32",
        channel_order: ChannelOrder = "RGB",
        scale: float | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        input_order: ChannelOrder = "BGR",
        interpolation: int = INTER_LINEAR,
        buffers: int = 1,
    ) -> None:
        width, height = (size, size) if isinstance(size, int) else size
        if width <= 0 or height <= 0:
            raise ValueError(f"size must be positive, not {size}")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if buffers < 1:
            raise ValueError("buffers must be at least 1")
        if layout not in ("NCHW", "NHWC"):
            raise ValueError(f"layout must be NCHW or NHWC, not {layout!r}")
        if channel_order not in ("RGB", "BGR") or input_order not in ("RGB", "BGR"):
            raise ValueError("channel orders are RGB or BGR")
        if mode not in ("letterbox", "resize"):
            raise ValueError(f"mode must be letterbox or resize, not {mode!r}")
        if not 0 <= pad_value <= 255:
            raise ValueError(f"pad_value must be 0-255, not {pad_value}")
        if dtype == "uint8":
            if mean is not None or std is not None or scale not in (None, 1, 1.0):
                raise ValueError("uint8 tensors take no scale, mean or std")
        elif dtype != "float32":
            raise ValueError(f"dtype must be float32 or uint8, not {dtype!r}")
        self.size = (width, height)
        self.mode: ResizeMode = mode
        self.pad_value = pad_value
        self.layout: Layout = layout
        self.dtype: TensorDType = dtype
        self.channel_order: ChannelOrder = channel_order
        self.input_order: ChannelOrder = input_order
        self.interpolation = interpolation
        self._alpha, self._beta = self._normalisation(scale, mean, std)
        # The same factors per output channel, as scalars, for the planar path.
        alphas = np.broadcast_to(self._alpha, (3,)) if np.ndim(self._alpha) == 0 else self._alpha
        self._channel_factors = (
            [np.float32(a) for a in np.ravel(alphas)],
            None if self._beta is None else [np.float32(b) for b in np.ravel(self._beta)],
        )
        self.buffers = buffers
        self._capacity = 0
        self._outs: list[npt.NDArray[np.float32] | npt.NDArray[np.uint8]] = []
        # Per buffer and slot: the placement its padding was last written for.
        self._slot_params: list[list[LetterboxParams | None]] = []
        self._current = 0  # the buffer the next batch goes into
        self._out: npt.NDArray[np.float32] | npt.NDArray[np.uint8] = np.empty(0, np.uint8)
        self._pending: list[LetterboxParams] = []  # placements of the frames add()ed so far
        self._scratch: dict[tuple[int, ...], Image] = {}
        self._planes: dict[tuple[int, int], list[Image]] = {}
        # write_picture(): swscale contexts (one per output format, so neither is rebuilt
        # for every frame), and the picture written but not yet add()ed: (the image its
        # frame carries, its placement).
        self._reformatters: dict[str, VideoReformatter] = {}
        # write_picture()'s swscale into the slots themselves: made on first use, None
        # where unavailable (then the picture is converted by PyAV and copied in).
        self._direct: DirectScaler | None = None
        self._direct_tried = False
        self._staged: tuple[Image, LetterboxParams] | None = None
        # The images of the last pictures written, to refuse a frame whose picture was
        # overwritten (its image is only luma: batching it would put gray in the tensor).
        self._written: deque[weakref.ref[Image]] = deque(maxlen=_MAX_WRITTEN)
        self._allocate(batch_size)

    # --- public -------------------------------------------------------------------------
    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def pending(self) -> int:
        """Frames added (:meth:`add`) since the last batch was returned."""
        return len(self._pending)

    def __call__(self, frames: Sequence[DecodedFrame | Image]) -> Batch:
        """Resize/letterbox, reorder, lay out and normalise ``frames`` into the buffer."""
        count = len(frames)
        if count == 0:
            raise ValueError("no frames to batch")
        if self._pending:
            raise ValueError(
                f"{len(self._pending)} frames were added one by one and not yet returned: "
                "flush() them before batching a list"
            )
        if count > self._capacity:
            log.debug("growing batch buffers from %d to %d frames", self._capacity, count)
            self._allocate(count)
        self._staged = None  # a picture written for add() is overwritten now
        self._select_buffer()
        params = tuple(self._put(i, frame) for i, frame in enumerate(frames))
        return self._finish(params)

    def add(self, frame: DecodedFrame | Image) -> Batch | None:
        """Write one frame into the next slot now; return the batch once ``batch_size``
        (the capacity) frames are in, else None.

        Writing each frame as it is decoded, while its pixels are still in the CPU's
        cache, is what makes batching cheap (see the module docstring). The returned
        batch's tensor is the whole buffer (``(capacity, ...)``).
        """
        staged = self._staged
        if staged is not None and isinstance(frame, DecodedFrame) and frame.image is staged[0]:
            self._staged = None
            self._pending.append(staged[1])  # written by write_picture(): only count it
        elif isinstance(frame, DecodedFrame) and any(r() is frame.image for r in self._written):
            raise ValueError(
                "this frame's picture was overwritten by a later one: with "
                "FragmentDecoder(fit=batcher), add each frame as the decoder yields it "
                "(iterate iter_decode or decode_all, not the list decode returns)"
            )
        else:
            self._staged = None  # its slot is this frame's now
            if not self._pending:
                self._select_buffer()
            self._pending.append(self._put(len(self._pending), frame))
        if len(self._pending) < self._capacity:
            return None
        return self.flush()

    def write_picture(
        self, picture: VideoFrame, *, interpolation: str | None, threads: int | None
    ) -> tuple[Image, bool]:
        """Convert a decoded picture straight into the next slot (the
        :class:`~kvs_toolkit.consumer.frames.PictureSink` of ``FragmentDecoder(fit=batcher)``).

        For a float32 NCHW tensor swscale converts the picture, scaled to the
        letterbox's inner size, to planar float RGB (``gbrpf32le``, 0-1), written
        into its channels' rows (or copied there, where that is not available; see the
        module docstring): one conversion, no uint8 image in between, no
        ``cv2.resize``. Its filter (``interpolation`` None) is the swscale
        one matching the batcher's own ``interpolation``: for ``INTER_LINEAR``,
        ``FAST_BILINEAR``, the same picture as the OpenCV path within a grey level.
        Other layouts and dtypes go through ``bgr24`` at the inner size, with
        ``AREA`` by default as ``FragmentDecoder(fit=size)`` (swscale's packed 8-bit
        output with ``FAST_BILINEAR`` is several grey levels off at a 3x shrink).

        Returns the picture's luma plane, which the decoder's frame carries as its
        ``gray`` image (its colour is in the tensor), and whether that shares the
        decoder's memory (a view; 10-bit and RGB pictures get a converted copy). The
        frame counts once it is added (:meth:`add`), which must happen before the next
        picture is written: the decoder's frames are added in the order they come, and
        a picture whose frame is not added is overwritten by the next.
        """
        if not self._pending:
            self._select_buffer()
        index = len(self._pending)
        params = LetterboxParams.fit(picture.width, picture.height, self.size, self.mode)
        size = {"width": params.resized_width, "height": params.resized_height}
        if self.layout == "NCHW" and self.dtype == "float32":
            region = self._padded_slot(index, params)
            if interpolation is None:
                interpolation = _SWSCALE_FILTERS.get(self.interpolation, "FAST_BILINEAR")
            if not self._scale_into_slot(picture, region, interpolation, threads):
                planar = self._reformatter("gbrpf32le").reformat(
                    picture, format="gbrpf32le", interpolation=interpolation, threads=threads,
                    **size,
                )  # fmt: skip
                self._put_float_planes(planar, region)
        else:
            image, _ = frame_to_ndarray(
                picture, "bgr24", self._reformatter("bgr24"), interpolation=interpolation or "AREA",
                threads=threads, **size,
            )  # fmt: skip
            self._put(index, image, order="BGR", source=(picture.width, picture.height))
        luma = luma_view(picture)
        shared = luma is not None
        if luma is None:  # no 8-bit luma plane to view (RGB, 10-bit): convert one
            luma, _ = frame_to_ndarray(picture, "gray", self._reformatter("gray"), threads=threads)
        self._staged = (luma, params)
        self._written.append(weakref.ref(luma))
        return luma, shared

    def flush(self) -> Batch | None:
        """The frames added (:meth:`add`) since the last batch, as a batch of that many (its
        tensor a view of the buffer's first entries), or None when there are none."""
        if not self._pending:
            return None
        params, self._pending = tuple(self._pending), []
        return self._finish(params)

    # --- internals ----------------------------------------------------------------------
    def _normalisation(
        self, scale: float | None, mean: Sequence[float] | None, std: Sequence[float] | None
    ) -> tuple[npt.NDArray[np.float32] | np.float32, npt.NDArray[np.float32] | None]:
        # x * scale, then (x - mean) / std  ==  x * (scale / std) - mean / std: two passes.
        factor = np.float32(1 / 255 if scale is None else scale)
        if mean is None and std is None:
            return factor, None
        mean_v = np.zeros(3, dtype=np.float32) if mean is None else np.asarray(mean, np.float32)
        std_v = np.ones(3, dtype=np.float32) if std is None else np.asarray(std, np.float32)
        if mean_v.shape != (3,) or std_v.shape != (3,):
            raise ValueError("mean and std need one value per channel (3)")
        if np.any(std_v == 0):
            raise ValueError("std must not be 0")
        shape = (3, 1, 1) if self.layout == "NCHW" else (3,)
        alpha = (factor / std_v).astype(np.float32).reshape(shape)
        beta = (mean_v / std_v).astype(np.float32).reshape(shape)
        return alpha, beta

    def _reformatter(self, format: str) -> VideoReformatter:
        reformatter = self._reformatters.get(format)
        if reformatter is None:
            from av.video.reformatter import VideoReformatter

            reformatter = self._reformatters[format] = VideoReformatter()
        return reformatter

    def _padded_slot(self, index: int, params: LetterboxParams) -> Image:
        """Slot ``index`` of the current buffer, padded for ``params`` (written only when
        its last placement differed); returns the picture's region in it."""
        slot = self._out[index]
        slot_params = self._slot_params[self._current]
        if slot_params[index] != params:
            slot[...] = self._pad
            slot_params[index] = params
        h, w = params.resized_height, params.resized_width
        x, y = params.pad_x, params.pad_y
        if self.layout == "NCHW":
            return cast("Image", slot[:, y : y + h, x : x + w])
        return cast("Image", slot[y : y + h, x : x + w])

    def _scale_into_slot(
        self, picture: VideoFrame, region: Image, interpolation: str, threads: int | None
    ) -> bool:
        """swscale's planar float picture written straight into ``region`` (3, h, w), then
        normalised in place: no frame of its own to copy from (see
        :mod:`~kvs_toolkit.consumer.direct_scale`). False when that is not available for
        this picture; the region is then untouched."""
        if not self._direct_tried:
            from kvs_toolkit.consumer.direct_scale import DirectScaler

            self._direct, self._direct_tried = DirectScaler.create(), True
        if self._direct is None:
            return False
        red, green, blue = region if self.channel_order == "RGB" else region[::-1]
        if not self._direct.scale_into(
            picture, (green, blue, red), "gbrpf32le", interpolation=interpolation,
            threads=threads,
        ):  # fmt: skip
            return False
        self._normalise_unit_planes(region)
        return True

    def _put_float_planes(self, planar: VideoFrame, region: Image) -> None:
        """swscale's ``gbrpf32le`` planes (G, B, R; 0-1), from a frame of its own, into
        ``region`` (3, h, w)."""
        h, w = region.shape[1], region.shape[2]
        green, blue, red = (
            np.ndarray((h, w), np.float32, buffer=memoryview(plane), strides=(plane.line_size, 4))
            for plane in planar.planes
        )
        planes = (red, green, blue) if self.channel_order == "RGB" else (blue, green, red)
        for channel, plane in enumerate(planes):
            np.copyto(region[channel], plane)
        self._normalise_unit_planes(region)

    def _normalise_unit_planes(self, region: Image) -> None:
        """Scale and shift, in place, the channels of a picture written as x / 255 (the
        default scale leaves it as it is)."""
        alphas, betas = self._channel_factors
        for channel in range(3):
            rows = region[channel]
            factor = np.float32(alphas[channel] * np.float32(255))
            if factor != 1:
                np.multiply(rows, factor, out=rows)
            if betas is not None:
                np.subtract(rows, betas[channel], out=rows)

    def _select_buffer(self) -> None:
        """Point the slots at the buffer the next batch goes into."""
        self._out = self._outs[self._current]

    def _finish(self, params: tuple[LetterboxParams, ...]) -> Batch:
        out = self._out if len(params) == self._capacity else self._out[: len(params)]
        self._current = (self._current + 1) % self.buffers
        return Batch(out, params)

    def _allocate(self, capacity: int) -> None:
        width, height = self.size
        self._capacity = capacity
        self._slot_params = [[None] * capacity for _ in range(self.buffers)]
        shape = (
            (capacity, 3, height, width) if self.layout == "NCHW" else (capacity, height, width, 3)
        )
        self._outs = []
        for _ in range(self.buffers):
            if self.dtype == "uint8":
                self._outs.append(np.empty(shape, dtype=np.uint8))
            else:
                self._outs.append(np.empty(shape, dtype=np.float32))
        self._current = 0
        self._out = self._outs[0]
        # The padding's value in the output: pad_value through the same operations as a
        # pixel (so a pad equals a pixel of that grey exactly).
        channel_shape = (3, 1, 1) if self.layout == "NCHW" else (3,)
        grey = np.full(channel_shape, self.pad_value, dtype=np.uint8)
        if self.dtype == "uint8":
            self._pad: npt.NDArray[np.float32] | npt.NDArray[np.uint8] = grey
        else:
            pad = np.multiply(grey, self._alpha, dtype=np.float32)
            if self._beta is not None:
                pad = np.subtract(pad, self._beta, dtype=np.float32)
            self._pad = pad

    def _resized(self, image: Image, params: LetterboxParams) -> Image:
        size = (params.resized_height, params.resized_width)
        if image.shape[:2] == size:
            return image
        shape = size + image.shape[2:]
        scratch = self._scratch.get(shape)
        if scratch is None:
            if len(self._scratch) >= _MAX_SCRATCH:  # sizes keep changing: do not hoard
                self._scratch.clear()
            scratch = self._scratch[shape] = np.empty(shape, dtype=np.uint8)
        import cv2

        cv2.resize(
            image, (params.resized_width, params.resized_height), dst=scratch,
            interpolation=self.interpolation,
        )  # fmt: skip
        return scratch

    def _put(
        self,
        index: int,
        frame: DecodedFrame | Image,
        *,
        order: ChannelOrder | None = None,
        source: tuple[int, int] | None = None,
    ) -> LetterboxParams:
        """Write ``frame`` into slot ``index`` of the current buffer. ``order`` and
        ``source`` (the decoded picture's size, when ``frame`` is a bare array the
        decoder already scaled) override what the frame says."""
        if isinstance(frame, DecodedFrame):
            image = frame.image
            frame_order: ChannelOrder = "RGB" if frame.format == "rgb24" else "BGR"
            # Geometry is from the decoded picture, so boxes map back to its pixels even
            # when the decoder already scaled it (then no resize happens here).
            source_width, source_height = frame.source_size
        else:
            image = np.asarray(frame)
            frame_order = self.input_order
            source_width, source_height = image.shape[1], image.shape[0]
        if order is not None:
            frame_order = order
        if source is not None:
            source_width, source_height = source
        if image.dtype != np.uint8:
            raise ValueError(f"frame {index}: expected uint8 pixels, got {image.dtype}")
        gray = image.ndim == 2
        if not gray and (image.ndim != 3 or image.shape[2] != 3):
            raise ValueError(
                f"expected an (H, W) or (H, W, 3) uint8 image, got shape {image.shape}"
            )
        params = LetterboxParams.fit(source_width, source_height, self.size, self.mode)
        region = self._padded_slot(index, params)
        picture = self._resized(image, params)
        h, w = params.resized_height, params.resized_width
        if self.layout == "NCHW" and self.dtype == "float32":
            self._put_planar_float(picture, region, frame_order)
            return params
        # A view of the picture in the output's layout and channel order: no copy. Gray
        # is broadcast (B = G = R, so its order is moot); a swapped order reverses the
        # channel axis with a negative stride.
        view: npt.NDArray[np.uint8]
        same_order = frame_order == self.channel_order
        if self.layout == "NCHW":
            if gray:
                view = np.broadcast_to(picture, (3, h, w))
            else:
                view = (
                    picture.transpose(2, 0, 1) if same_order else picture.transpose(2, 0, 1)[::-1]
                )
        elif gray:
            view = np.broadcast_to(picture[..., np.newaxis], (h, w, 3))
        else:
            view = picture if same_order else picture[..., ::-1]
        if self.dtype == "uint8":
            np.copyto(region, view)
        else:
            np.multiply(view, self._alpha, out=region)
            if self._beta is not None:
                np.subtract(region, self._beta, out=region)
        return params

    def _put_planar_float(self, picture: Image, region: Image, order: ChannelOrder) -> None:
        """``picture`` (H, W[, 3]) uint8 into ``region`` (3, H, W) float32, normalised:
        one contiguous pass per channel (see the module docstring)."""
        planes: Sequence[Image]
        if picture.ndim == 2:
            planes = (picture, picture, picture)
        else:
            import cv2

            size = (picture.shape[0], picture.shape[1])
            buffers = self._planes.get(size)
            if buffers is None:
                if len(self._planes) >= _MAX_SCRATCH:
                    self._planes.clear()
                buffers = self._planes[size] = [np.empty(size, np.uint8) for _ in range(3)]
            # Into the reused buffers (no allocation); what it returns is what it wrote.
            planes = cast("Sequence[Image]", cv2.split(picture, buffers))
            if order != self.channel_order:
                planes = planes[::-1]
        alphas, betas = self._channel_factors
        for channel in range(3):
            rows = region[channel]
            # The same float32 arithmetic, element by element, as the interleaved path.
            np.multiply(planes[channel], alphas[channel], out=rows)
            if betas is not None:
                np.subtract(rows, betas[channel], out=rows)
