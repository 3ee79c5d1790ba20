"""GetClip and GetImages (service ``kinesis-video-archived-media``).

GetClip (``/getClip``) answers one MP4 file, ``moov`` first, with the fragments whose
start timestamps fall in the ClipFragmentSelector's range, remuxed without
re-encoding (:func:`~kvs_toolkit.emulator.remux.mp4_clip`). As the service documents
for its Payload, the clip holds "the first 100 MB or the first 200 fragments from the
specified start timestamp": a longer range is cut there, not refused. The clip also
ends before the first fragment whose tracks (codec private data) differ from the
first fragment's.

GetImages (``/getImages``) samples the range every SamplingInterval ms. For each
sampling time it finds the fragment covering it (start <= t < start + duration, by the
ImageSelectorType's timestamp; the latest such start when fragments overlap), decodes
that fragment from its key frame with PyAV and takes the frame whose timestamp is
nearest to the sampling time (ties to the earlier frame). Images are scaled by swscale
and encoded with OpenCV (``cv2.imencode``). A sampling time no fragment covers gets
``Error: NO_MEDIA``; a fragment without video, or one that does not decode, gets
``MEDIA_ERROR``. Pages hold at most 25 images (the documented page size, also when
MaxResults is larger); NextToken continues with the next sampling time.

Choices where the documentation is silent or contradicts itself:

* SamplingInterval is optional in the model; without it the interval is 3000 ms (the
  service's earlier minimum and default).
* WidthPixels or HeightPixels alone: the other side follows the source's aspect ratio
  (the HeightPixels documentation), not a ValidationException (the WidthPixels one).
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import cv2
import numpy as np
from aiohttp import web

from kvs_toolkit.emulator.context import EMULATOR, EmulatorContext, json_response, read_json
from kvs_toolkit.emulator.errors import InvalidArgumentError, ResourceNotFoundError
from kvs_toolkit.emulator.hls import list_all_fragments
from kvs_toolkit.emulator.media import split_payload
from kvs_toolkit.emulator.playback import (
    CODEC_AAC,
    CODEC_ACM,
    MAX_FRAGMENT_MS,
    MAX_RANGE_MS,
    InvalidMediaFrameError,
    NoDataRetentionError,
    media_info,
    order_for_playback,
    parse_timestamp_ms,
    timestamp_of,
    tracks_of_payload,
)
from kvs_toolkit.emulator.remux import DecodedSample, decode_nearest_frames, mp4_clip
from kvs_toolkit.emulator.store import (
    FragmentRecord,
    StreamRecord,
    TimestampType,
    decode_token,
    encode_token,
)
from kvs_toolkit.emulator.validation import optional_int, optional_str, require_object
from kvs_toolkit.errors import DecodeError

__all__ = [
    "MAX_CLIP_BYTES",
    "MAX_CLIP_FRAGMENTS",
    "MAX_IMAGES_PER_PAGE",
    "MAX_IMAGE_RANGE_MS",
    "MIN_SAMPLING_INTERVAL_MS",
    "get_clip",
    "get_images",
    "install",
]

log = logging.getLogger(__name__)

# Service limits (GetClip's Payload documentation; GetImages' model and documentation).
MAX_CLIP_FRAGMENTS: Final = 200
MAX_CLIP_BYTES: Final = 100 * 1024 * 1024
MAX_IMAGE_RANGE_MS: Final = 300_000
MIN_SAMPLING_INTERVAL_MS: Final = 200
DEFAULT_SAMPLING_INTERVAL_MS: Final = 3000
MAX_IMAGES_PER_PAGE: Final = 25
MAX_RESULTS: Final = 100
MAX_WIDTH: Final = 3840
MAX_HEIGHT: Final = 2160
DEFAULT_JPEG_QUALITY: Final = 80
MAX_IMAGE_CONTENT: Final = 6_291_456  # ImageContent max length (base64 characters)
_SELECTOR_TYPES: Final = ("PRODUCER_TIMESTAMP", "SERVER_TIMESTAMP")


def _selector_type(value: Any, key: str) -> TimestampType:
    if value not in _SELECTOR_TYPES:
        raise InvalidArgumentError(f"{key} must be PRODUCER_TIMESTAMP or SERVER_TIMESTAMP.")
    return "PRODUCER_TIMESTAMP" if value == "PRODUCER_TIMESTAMP" else "SERVER_TIMESTAMP"


async def _archived_stream(ctx: EmulatorContext, body: Mapping[str, Any]) -> StreamRecord:
    stream = await ctx.resolve_stream(body)
    if stream.retention_hours == 0:
        raise NoDataRetentionError(
            f"The stream {stream.name} does not retain data (DataRetentionInHours is 0)."
        )
    return stream


# --- GetClip --------------------------------------------------------------------------------


async def get_clip(request: web.Request) -> web.Response:
    ctx = request.app[EMULATOR]
    body = await read_json(request)
    if body.get("ClipFragmentSelector") is None:
        raise InvalidArgumentError("ClipFragmentSelector is required.")
    selector = require_object(body["ClipFragmentSelector"], "ClipFragmentSelector")
    kind = _selector_type(selector.get("FragmentSelectorType"), "FragmentSelectorType")
    if selector.get("TimestampRange") is None:
        raise InvalidArgumentError("TimestampRange is required.")
    time_range = require_object(selector["TimestampRange"], "TimestampRange")
    start_ms = parse_timestamp_ms(time_range.get("StartTimestamp"), "StartTimestamp")
    end_ms = parse_timestamp_ms(time_range.get("EndTimestamp"), "EndTimestamp")
    if end_ms <= start_ms:
        raise InvalidArgumentError("EndTimestamp must be later than StartTimestamp.")
    if end_ms - start_ms > MAX_RANGE_MS:
        raise InvalidArgumentError("EndTimestamp must be within 24 hours of StartTimestamp.")
    stream = await _archived_stream(ctx, body)
    ctx.check_rate(stream, "GetClip")
    records = await list_all_fragments(
        ctx,
        stream.name,
        timestamp_type=kind,
        start_ms=start_ms,
        end_ms=end_ms,
        # Fragment-number order is server-timestamp order: SERVER_TIMESTAMP can stop early.
        limit=MAX_CLIP_FRAGMENTS if kind == "SERVER_TIMESTAMP" else None,
    )
    ordered = order_for_playback(records, kind)
    if not ordered:
        raise ResourceNotFoundError("No fragments found in the requested time range.")
    payloads: list[bytes] = []
    total = 0
    head = b""
    for record in ordered[:MAX_CLIP_FRAGMENTS]:
        if payloads and total + record.size > MAX_CLIP_BYTES:
            break
        payload = await ctx.store.read_payload(record)
        if not payloads:
            head = split_payload(payload)[0]
            media_info(tracks_of_payload(payload), audio_codecs=(CODEC_AAC, CODEC_ACM))
        elif split_payload(payload)[0] != head:
            log.info(
                "clip of %s ends at fragment %s: new tracks", stream.name, record.fragment_number
            )
            break
        payloads.append(payload)
        total += record.size
    try:
        data = await asyncio.to_thread(mp4_clip, payloads)
    except DecodeError as exc:
        raise InvalidMediaFrameError(str(exc)) from exc
    return web.Response(body=data, content_type="video/mp4")


# --- GetImages ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ImageRequest:
    """A validated GetImages request."""

    selector: TimestampType
    start_ms: int
    end_ms: int
    interval_ms: int
    image_format: str  # JPEG or PNG
    jpeg_quality: int
    width: int | None
    height: int | None
    page_size: int
    first_index: int

    @property
    def sample_count(self) -> int:
        return (self.end_ms - self.start_ms) // self.interval_ms + 1

    def page(self) -> list[int]:
        """The sampling times (ms) of this page."""
        last = min(self.sample_count, self.first_index + self.page_size)
        return [self.start_ms + i * self.interval_ms for i in range(self.first_index, last)]


def _bounded(body: Mapping[str, Any], key: str, low: int, high: int) -> int | None:
    value = optional_int(body, key)
    if value is not None and not low <= value <= high:
        raise InvalidArgumentError(f"{key} {value} is outside the range {low}..{high}.")
    return value


def parse_image_request(body: Mapping[str, Any]) -> ImageRequest:
    """Validate a GetImages body with the model's and the documentation's limits."""
    for key in ("ImageSelectorType", "StartTimestamp", "EndTimestamp", "Format"):
        if body.get(key) is None:
            raise InvalidArgumentError(f"{key} is required.")
    selector = _selector_type(body["ImageSelectorType"], "ImageSelectorType")
    start_ms = parse_timestamp_ms(body["StartTimestamp"], "StartTimestamp")
    end_ms = parse_timestamp_ms(body["EndTimestamp"], "EndTimestamp")
    if end_ms < start_ms:
        raise InvalidArgumentError("EndTimestamp must not be earlier than StartTimestamp.")
    if end_ms - start_ms > MAX_IMAGE_RANGE_MS:
        raise InvalidArgumentError(
            "The range between StartTimestamp and EndTimestamp must be at most 300 seconds."
        )
    interval = optional_int(body, "SamplingInterval")
    if interval is None:
        interval = DEFAULT_SAMPLING_INTERVAL_MS
    if interval < MIN_SAMPLING_INTERVAL_MS:
        raise InvalidArgumentError(
            f"SamplingInterval {interval} is below the minimum of {MIN_SAMPLING_INTERVAL_MS} ms."
        )
    image_format = optional_str(body, "Format")
    if image_format not in ("JPEG", "PNG"):
        raise InvalidArgumentError("Format must be JPEG or PNG.")
    quality = DEFAULT_JPEG_QUALITY
    if body.get("FormatConfig") is not None:
        config = require_object(body["FormatConfig"], "FormatConfig")
        if len(config) != 1 or "JPEGQuality" not in config:
            raise InvalidArgumentError("FormatConfig must hold exactly one key, JPEGQuality.")
        value = config["JPEGQuality"]
        if not isinstance(value, str) or not value.isdigit() or not 1 <= int(value) <= 100:
            raise InvalidArgumentError("JPEGQuality must be an integer from 1 to 100.")
        quality = int(value)
    width = _bounded(body, "WidthPixels", 1, MAX_WIDTH)
    height = _bounded(body, "HeightPixels", 1, MAX_HEIGHT)
    max_results = _bounded(body, "MaxResults", 1, MAX_RESULTS)
    page_size = min(max_results or MAX_IMAGES_PER_PAGE, MAX_IMAGES_PER_PAGE)
    first_index = 0
    token = optional_str(body, "NextToken")
    if token:
        index = decode_token(token).get("i")
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise InvalidArgumentError("NextToken is not valid.")
        first_index = index
    request = ImageRequest(
        selector=selector,
        start_ms=start_ms,
        end_ms=end_ms,
        interval_ms=interval,
        image_format=image_format,
        jpeg_quality=quality,
        width=width,
        height=height,
        page_size=page_size,
        first_index=first_index,
    )
    if first_index >= request.sample_count:
        raise InvalidArgumentError("NextToken is not valid for this time range.")
    return request


def covering_fragment(
    records: Sequence[FragmentRecord], selector: TimestampType, t_ms: int
) -> FragmentRecord | None:
    """The fragment holding time ``t_ms``: start <= t < start + duration; the latest start
    (then the largest fragment number) when several do."""
    best: FragmentRecord | None = None
    for record in records:
        start = timestamp_of(record, selector)
        if start <= t_ms < start + max(1, record.duration_ms) and (
            best is None
            or (start, record.fragment_number)
            > (timestamp_of(best, selector), best.fragment_number)
        ):
            best = record
    return best


def _output_size(frame_width: int, frame_height: int, request: ImageRequest) -> tuple[int, int]:
    width, height = request.width, request.height
    if width is not None and height is not None:
        return width, height
    if width is not None:
        return width, max(1, round(width * frame_height / frame_width))
    if height is not None:
        return max(1, round(height * frame_width / frame_height)), height
    return frame_width, frame_height


def _encode(sample: DecodedSample, request: ImageRequest) -> str:
    frame = sample.frame
    width, height = _output_size(frame.width, frame.height, request)
    # swscale converts and scales in one pass; the array is a fresh copy.
    image = frame.reformat(width=width, height=height, format="bgr24").to_ndarray()
    if request.image_format == "JPEG":
        ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, request.jpeg_quality])
    else:
        ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise DecodeError(f"OpenCV could not encode a {width}x{height} {request.image_format}")
    return base64.b64encode(np.ascontiguousarray(encoded).tobytes()).decode("ascii")


def _render_fragment(
    payload: bytes, targets: dict[int, int], request: ImageRequest
) -> dict[int, dict[str, Any]]:
    """Images for sampling times ``targets`` (sample ms -> producer ms) of one fragment."""
    try:
        chosen = decode_nearest_frames(payload, sorted(set(targets.values())))
    except DecodeError as exc:
        log.warning("GetImages: %s", exc)
        return {t: {"Error": "MEDIA_ERROR"} for t in targets}
    encoded: dict[int, str] = {}  # frame timestamp -> image, each frame encoded once
    out: dict[int, dict[str, Any]] = {}
    for sample_ms, producer_ms in targets.items():
        sample = chosen.get(producer_ms)
        if sample is None:
            out[sample_ms] = {"Error": "MEDIA_ERROR"}
            continue
        if sample.timestamp_ms not in encoded:
            try:
                encoded[sample.timestamp_ms] = _encode(sample, request)
            except DecodeError as exc:
                log.warning("GetImages: %s", exc)
                out[sample_ms] = {"Error": "MEDIA_ERROR"}
                continue
        content = encoded[sample.timestamp_ms]
        if len(content) > MAX_IMAGE_CONTENT:
            out[sample_ms] = {"Error": "MEDIA_ERROR"}
        else:
            out[sample_ms] = {"ImageContent": content}
    return out


async def get_images(request: web.Request) -> web.Response:
    ctx = request.app[EMULATOR]
    body = await read_json(request)
    image_request = parse_image_request(body)
    stream = await _archived_stream(ctx, body)
    samples = image_request.page()
    selector = image_request.selector
    records = await list_all_fragments(
        ctx,
        stream.name,
        timestamp_type=selector,
        start_ms=samples[0] - MAX_FRAGMENT_MS,
        end_ms=samples[-1],
    )
    groups: dict[str, tuple[FragmentRecord, dict[int, int]]] = {}
    for t in samples:
        record = covering_fragment(records, selector, t)
        if record is None:
            continue
        # The sampling time on the fragment's own (producer) timeline.
        offset = t - timestamp_of(record, selector)
        groups.setdefault(record.fragment_number, (record, {}))[1][t] = (
            record.producer_timestamp_ms + offset
        )
    rendered: dict[int, dict[str, Any]] = {}
    for record, targets in groups.values():
        payload = await ctx.store.read_payload(record)
        rendered.update(await asyncio.to_thread(_render_fragment, payload, targets, image_request))
    images = [{"TimeStamp": t / 1000, **rendered.get(t, {"Error": "NO_MEDIA"})} for t in samples]
    result: dict[str, Any] = {"Images": images}
    next_index = image_request.first_index + len(samples)
    if next_index < image_request.sample_count:
        result["NextToken"] = encode_token({"i": next_index})
    return json_response(result)


def install(app: web.Application) -> None:
    """Add GetClip and GetImages."""
    app.router.add_post("/getClip", get_clip)
    app.router.add_post("/getImages", get_images)
