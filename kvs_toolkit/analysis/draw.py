"""Pictures of detections: boxes on a frame, a contact sheet, a timeline.

All drawing is OpenCV (``cv2.rectangle``, ``cv2.putText``, ``cv2.resize``) and numpy
slicing into preallocated canvases; the only Python loops run over detections, frames
or labels, never over pixels. Images are BGR ``uint8``, as OpenCV and
:class:`~kvs_toolkit.consumer.DecodedFrame` (``bgr24``) use them.
"""

from __future__ import annotations

import datetime as dt
import logging
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final, Protocol, TypeAlias

import cv2
import numpy as np

from kvs_toolkit.analysis.base import AnalysisError, Detection
from kvs_toolkit.consumer.frames import DecodedFrame, Image

__all__ = [
    "contact_sheet",
    "draw_detections",
    "label_colour",
    "timeline_png",
    "to_bgr",
    "write_image",
]

log = logging.getLogger(__name__)

Colour: TypeAlias = tuple[int, int, int]

_FONT: Final = cv2.FONT_HERSHEY_SIMPLEX
_BACKGROUND: Final = (24, 24, 24)
_TEXT: Final = (235, 235, 235)
_MUTED: Final = (120, 120, 120)


class _Timed(Protocol):
    """Anything with a frame timestamp and detections (an ``AnalysisRecord``)."""

    @property
    def frame_timestamp(self) -> float: ...

    @property
    def detections(self) -> Sequence[Detection]: ...


class _WithFrame(Protocol):
    @property
    def frame(self) -> DecodedFrame | None: ...

    @property
    def detections(self) -> Sequence[Detection]: ...


FrameWithDetections: TypeAlias = tuple[DecodedFrame | Image, Sequence[Detection]] | _WithFrame
TimedDetections: TypeAlias = tuple[float, Sequence[Detection]] | _Timed


def label_colour(label: str) -> Colour:
    """A bright BGR colour that is always the same for ``label`` (hue from its CRC-32)."""
    hue = zlib.crc32(label.encode()) % 180  # OpenCV hue range
    hsv = np.array([[[hue, 200, 255]]], dtype=np.uint8)
    b, g, r = (int(v) for v in cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0])
    return b, g, r


def to_bgr(image: Image, format: str = "bgr24") -> Image:
    """A BGR version of a BGR, RGB or grey image (the same array when already BGR)."""
    if image.ndim == 2:
        return np.asarray(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR), dtype=np.uint8)
    if format == "rgb24":
        return np.asarray(cv2.cvtColor(image, cv2.COLOR_RGB2BGR), dtype=np.uint8)
    return image


def draw_detections(
    image: Image,
    detections: Iterable[Detection],
    *,
    format: str = "bgr24",
    copy: bool = True,
    scale: float = 1.0,
    thickness: int | None = None,
    show_confidence: bool = True,
) -> Image:
    """``image`` with a box and a caption (label, confidence, track id) per detection.

    Returns a new BGR image unless ``copy`` is False and the image is already a
    contiguous BGR array, in which case it is drawn on in place. ``scale`` multiplies
    the pixel boxes (draw full-frame detections on a resized image).
    """
    canvas = to_bgr(image, format)
    if canvas is image and copy:
        canvas = image.copy()
    elif not canvas.flags.c_contiguous:
        canvas = np.ascontiguousarray(canvas)
    height, width = canvas.shape[:2]
    line = thickness or max(1, round(min(width, height) / 240))
    font_scale = max(0.35, min(width, height) / 900)
    for detection in detections:
        colour = label_colour(detection.label)
        box = detection.box
        x1, y1 = round(box.x * scale), round(box.y * scale)
        x2, y2 = round(box.x2 * scale) - 1, round(box.y2 * scale) - 1
        cv2.rectangle(canvas, (x1, y1), (max(x1, x2), max(y1, y2)), colour, line)
        caption = detection.label
        if show_confidence:
            caption += f" {detection.confidence:.2f}"
        if detection.track_id is not None:
            caption += f" #{detection.track_id}"
        (text_w, text_h), baseline = cv2.getTextSize(caption, _FONT, font_scale, 1)
        top = y1 - text_h - baseline - 2 if y1 - text_h - baseline - 2 >= 0 else y1
        cv2.rectangle(canvas, (x1, top), (x1 + text_w + 2, top + text_h + baseline + 2), colour, -1)
        cv2.putText(
            canvas,
            caption,
            (x1 + 1, top + text_h + 1),
            _FONT,
            font_scale,
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
    return canvas


def write_image(path: str | Path, image: Image) -> Path:
    """Encode ``image`` by the path's suffix (``.png``, ``.jpg``) and write it."""
    out = Path(path)
    ok, buffer = cv2.imencode(out.suffix or ".png", image)
    if not ok:
        raise AnalysisError(f"OpenCV could not encode {out.name}")
    out.write_bytes(buffer.tobytes())
    return out


def _caption_time(timestamp: float) -> str:
    moment = dt.datetime.fromtimestamp(timestamp, tz=dt.timezone.utc)
    return moment.strftime("%H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


def _unpack_frame(item: FrameWithDetections) -> tuple[Image, str, Sequence[Detection], str]:
    if isinstance(item, tuple):
        source, detections = item
    else:
        if item.frame is None:
            raise ValueError("a record without its frame cannot go on a contact sheet")
        source, detections = item.frame, item.detections
    if isinstance(source, DecodedFrame):
        return source.image, source.format, detections, _caption_time(source.timestamp)
    return np.asarray(source), "bgr24", detections, ""


def contact_sheet(
    frames_with_detections: Iterable[FrameWithDetections],
    columns: int = 4,
    thumb_width: int = 320,
    *,
    max_frames: int | None = 16,
    gap: int = 4,
    path: str | Path | None = None,
) -> Image:
    """A grid of frames with their boxes drawn, for a quick look at a run.

    ``frames_with_detections``: ``(frame or image, detections)`` pairs, or records with
    ``frame`` and ``detections``. When there are more than ``max_frames``, that many are
    sampled evenly (first and last included). Each tile is ``thumb_width`` wide, its
    height from the first frame's aspect ratio; tiles are separated by ``gap`` pixels,
    so the sheet is ``columns * (thumb_width + gap) + gap`` wide and
    ``rows * (thumb_height + gap) + gap`` high. Written as an image when ``path`` is given.
    """
    items = list(frames_with_detections)
    if not items:
        raise ValueError("no frames for a contact sheet")
    if columns < 1 or thumb_width < 8:
        raise ValueError("columns must be at least 1 and thumb_width at least 8")
    if max_frames is not None and len(items) > max_frames:
        picks = np.unique(np.linspace(0, len(items) - 1, max_frames).round().astype(int))
        items = [items[i] for i in picks]
    first = _unpack_frame(items[0])[0]
    thumb_height = max(1, round(thumb_width * first.shape[0] / first.shape[1]))
    rows = -(-len(items) // columns)
    tile_h, tile_w = thumb_height + gap, thumb_width + gap
    sheet = np.empty((rows * tile_h + gap, columns * tile_w + gap, 3), dtype=np.uint8)
    sheet[:] = _BACKGROUND
    font_scale = max(0.35, thumb_width / 640)
    for index, item in enumerate(items):
        image, format, detections, caption = _unpack_frame(item)
        top = gap + (index // columns) * tile_h
        left = gap + (index % columns) * tile_w
        tile = sheet[top : top + thumb_height, left : left + thumb_width]
        cv2.resize(
            to_bgr(image, format),
            (thumb_width, thumb_height),
            dst=tile,
            interpolation=cv2.INTER_AREA,
        )
        scale = thumb_width / image.shape[1]
        drawn = draw_detections(tile, detections, scale=scale, copy=False, show_confidence=False)
        if drawn is not tile:  # drawing needed a contiguous copy: put it back
            tile[:] = drawn
        # The caption goes top left on a dark band (video often has its own clock below).
        text = f"{caption}  {len(detections)} det".strip()
        (text_w, text_h), baseline = cv2.getTextSize(text, _FONT, font_scale, 1)
        band = tile[: text_h + baseline + 6, : text_w + 8]
        band //= 3
        cv2.putText(tile, text, (4, text_h + 3), _FONT, font_scale, _TEXT, 1, cv2.LINE_AA)
    if path is not None:
        write_image(path, sheet)
    return sheet


def _unpack_timed(item: TimedDetections) -> tuple[float, Sequence[Detection]]:
    if isinstance(item, tuple):
        return float(item[0]), item[1]
    return float(item.frame_timestamp), item.detections


def timeline_png(
    events: Iterable[TimedDetections],
    path: str | Path | None = None,
    *,
    width: int = 1000,
    row_height: int = 24,
    label_width: int = 180,
) -> Image:
    """Detections over time, one row per label, as a picture (written as PNG to ``path``).

    ``events``: ``(timestamp, detections)`` pairs or records (``frame_timestamp``,
    ``detections``), one per analysed frame. Time runs left to right from the first to
    the last event; a mark's brightness is the best confidence of that label in that
    column. The bottom row marks every analysed frame, so gaps in the analysis show.
    The image is ``width`` wide and ``(labels + 1) * row_height + 56`` high.
    """
    timed = [_unpack_timed(item) for item in events]
    if not timed:
        raise ValueError("no events for a timeline")
    if width < label_width + 50:
        raise ValueError(f"width must be at least label_width + 50 ({label_width + 50})")
    times = np.array([t for t, _ in timed], dtype=np.float64)
    labels = sorted({d.label for _, found in timed for d in found})
    row_of = {label: i for i, label in enumerate(labels)}
    start, end = float(times.min()), float(times.max())
    span = end - start
    plot_w = width - label_width - 16
    columns = (
        np.zeros(len(times), dtype=np.int64)
        if span <= 0
        else np.round((times - start) / span * (plot_w - 1)).astype(np.int64)
    )
    # One (row, column, confidence) triple per detection; rows of the frame marks last.
    rows_idx = [row_of[d.label] for _, found in timed for d in found]
    cols_idx = [int(c) for c, (_, found) in zip(columns, timed, strict=True) for _ in found]
    confidences = [d.confidence for _, found in timed for d in found]
    presence = np.zeros((len(labels) + 1, plot_w), dtype=np.float32)
    np.maximum.at(
        presence,
        (np.array(rows_idx, dtype=np.int64), np.array(cols_idx, dtype=np.int64)),
        np.clip(np.array(confidences, dtype=np.float32), 0.05, 1.0),
    )
    presence[len(labels), columns] = 1.0
    # Widen each mark to 3 px so that single frames stay visible.
    presence = np.asarray(cv2.dilate(presence, np.ones((1, 3), np.uint8)), dtype=np.float32)

    top, axis_h = 28, 28
    height = top + (len(labels) + 1) * row_height + axis_h
    canvas = np.empty((height, width, 3), dtype=np.uint8)
    canvas[:] = _BACKGROUND
    background = np.array(_BACKGROUND, dtype=np.float32)
    left = label_width
    for row in range(len(labels) + 1):
        name = labels[row] if row < len(labels) else "analysed"
        colour = np.array(label_colour(name) if row < len(labels) else _MUTED, np.float32)
        y0 = top + row * row_height
        band = canvas[y0 + 3 : y0 + row_height - 3, left : left + plot_w]
        alpha = np.where(presence[row] > 0, 0.3 + 0.7 * presence[row], 0.0)[:, None]
        band[:] = (background * (1 - alpha) + colour * alpha).astype(np.uint8)[None, :, :]
        cv2.line(
            canvas,
            (left, y0 + row_height - 1),
            (left + plot_w, y0 + row_height - 1),
            (48, 48, 48),
            1,
        )
        text = name if len(name) <= 22 else name[:21] + "~"
        cv2.putText(
            canvas,
            text,
            (6, y0 + row_height - 8),
            _FONT,
            0.45,
            _TEXT if row < len(labels) else _MUTED,
            1,
            cv2.LINE_AA,
        )
    axis_y = top + (len(labels) + 1) * row_height
    cv2.line(canvas, (left, axis_y), (left + plot_w, axis_y), _MUTED, 1)
    for fraction in np.linspace(0.0, 1.0, 6):
        x = left + round(fraction * (plot_w - 1))
        cv2.line(canvas, (x, axis_y), (x, axis_y + 5), _MUTED, 1)
        tick = f"+{fraction * span:.1f}s"
        (tw, _), _ = cv2.getTextSize(tick, _FONT, 0.4, 1)
        cv2.putText(
            canvas,
            tick,
            (min(max(x - tw // 2, left), width - tw - 2), axis_y + 20),
            _FONT,
            0.4,
            _TEXT,
            1,
            cv2.LINE_AA,
        )
    started = dt.datetime.fromtimestamp(start, tz=dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
    title = (
        f"{started}  {span:.1f} s  {len(timed)} frames  {len(confidences)} detections  "
        f"{len(labels)} labels"
    )
    cv2.putText(canvas, title, (6, 19), _FONT, 0.5, _TEXT, 1, cv2.LINE_AA)
    if path is not None:
        write_image(path, canvas)
    return canvas
