"""Archived media to files: GetClip (an MP4 of a time range) and GetImages (stills).

Both go to the stream's data endpoint for their API (GET_CLIP, GET_IMAGES), found with
GetDataEndpoint through :class:`~kvs_toolkit.aws.DataEndpointCache`; every call is
retried on an unreachable endpoint with the one policy of
:func:`~kvs_toolkit.aws.call_with_retry`. Memory stays bounded: a clip is copied to its
file a chunk at a time, images are fetched a page at a time and written as they come.

The service's limits (docs/kvs-wire.md "Archived media"):

* GetClip covers at most 24 hours, and its MP4 holds only the first 100 MB or the
  first 200 fragments of the range; :func:`save_clip` reports where a clip cut short
  by those limits stops, so the rest can be fetched with a second call.
* GetImages covers at most 300 seconds per request, samples no more often than every
  200 ms and pages its answer; :func:`iter_images` splits a longer range into windows
  of whole sampling intervals and follows NextToken.

Service errors become :class:`~kvs_toolkit.errors.GetMediaError` with one-line
messages; in particular an existing stream with nothing in the range says so instead
of "not found" (the service answers ResourceNotFoundException for both).
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import logging
import os
import threading
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Final, Literal, NoReturn

from kvs_toolkit.aws import AwsAccess, DataEndpointCache, call_with_retry
from kvs_toolkit.errors import ConfigurationError, GetMediaError, KvsError

if TYPE_CHECKING:
    from botocore.config import Config

__all__ = [
    "MAX_CLIP_BYTES",
    "MAX_CLIP_FRAGMENTS",
    "MAX_CLIP_RANGE",
    "MAX_IMAGES_RANGE",
    "MIN_SAMPLING_INTERVAL_MS",
    "ArchivedImage",
    "ClipResult",
    "ImagesResult",
    "SelectorType",
    "image_file_name",
    "iter_images",
    "save_clip",
    "save_images",
]

log = logging.getLogger(__name__)

SelectorType = Literal["PRODUCER_TIMESTAMP", "SERVER_TIMESTAMP"]
ImageFormat = Literal["JPEG", "PNG"]

# GetClip: "the first 100 MB or the first 200 fragments" of a range of at most 24 h
# (docs/kvs-wire.md "Archived media").
MAX_CLIP_BYTES: Final = 100 * 1024 * 1024
MAX_CLIP_FRAGMENTS: Final = 200
MAX_CLIP_RANGE: Final = dt.timedelta(hours=24)
# GetImages: at most 300 s per request, SamplingInterval at least 200 ms, WidthPixels
# 1..3840, HeightPixels 1..2160, JPEGQuality 1..100 (docs/kvs-wire.md "Archived media").
MAX_IMAGES_RANGE: Final = dt.timedelta(seconds=300)
MIN_SAMPLING_INTERVAL_MS: Final = 200
MAX_WIDTH: Final = 3840
MAX_HEIGHT: Final = 2160
# A page holds up to this many images; an image may be up to 6 MB of base64, so a page
# is kept small to bound memory (the API allows MaxResults up to 100).
DEFAULT_PAGE_SIZE: Final = 25
# A clip larger than this is not what the service promises: stop writing (bounded disk).
_CLIP_BYTES_GUARD: Final = 2 * MAX_CLIP_BYTES
_CHUNK_BYTES: Final = 1 << 20
_LIST_FRAGMENTS_PAGE: Final = 1000  # ListFragments' MaxResults maximum


def _config() -> Config:
    from botocore.config import Config

    # call_with_retry is the one retry of a dead endpoint: botocore must not add its own.
    return Config(retries={"total_max_attempts": 1}, connect_timeout=10, read_timeout=120)


def _utc(when: dt.datetime) -> dt.datetime:
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.timezone.utc)


def _ms(when: dt.datetime) -> int:
    return round(_utc(when).timestamp() * 1000)


def _from_ms(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.timezone.utc)


def _iso(when: dt.datetime) -> str:
    return _utc(when).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _error_code(exc: BaseException) -> str | None:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return None
    code = response.get("Error", {}).get("Code")
    return str(code) if code else None


def _error_message(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        message = response.get("Error", {}).get("Message")
        if message:
            return str(message)
    return str(exc)


def _reraise(original: Exception, translated: BaseException) -> NoReturn:
    if translated is original:
        raise original
    raise translated from original


class _Stopped(Exception):
    """The caller's ``stop`` event was set during a download."""


class _Archive:
    """The clients of one stream's archived-media calls (one control-plane client, one
    data-plane client per API)."""

    def __init__(self, aws: AwsAccess, stream_name: str) -> None:
        self.aws = aws
        self.stream_name = stream_name
        self.stream = {"StreamName": stream_name}
        self._control: Any = None
        self._endpoints: dict[str, DataEndpointCache] = {}
        self._clients: dict[str, Any] = {}

    def control(self) -> Any:
        if self._control is None:
            self._control = self.aws.client("kinesisvideo", config=_config())
        return self._control

    def data_client(self, api_name: str) -> Any:
        client = self._clients.get(api_name)
        if client is not None:
            return client
        cache = self._endpoints.get(api_name)
        if cache is None:
            cache = DataEndpointCache(self.aws, self.stream, api_name)
            self._endpoints[api_name] = cache
        try:
            endpoint = call_with_retry(self.aws, f"GetDataEndpoint {api_name}", cache)
        except Exception as exc:
            _reraise(exc, self.translate(exc, "GetDataEndpoint"))
        client = self.aws.client(
            "kinesis-video-archived-media", endpoint_url=endpoint, config=_config()
        )
        self._clients[api_name] = client
        return client

    def stream_exists(self) -> bool:
        try:
            call_with_retry(
                self.aws,
                "DescribeStream",
                lambda: self.control().describe_stream(StreamName=self.stream_name),
            )
        except Exception as exc:
            if _error_code(exc) == "ResourceNotFoundException":
                return False
            raise
        return True

    def translate(self, exc: BaseException, what: str) -> BaseException:
        """A botocore error as the toolkit's one-line error (others as they are)."""
        import botocore.exceptions

        if not isinstance(exc, botocore.exceptions.ClientError | botocore.exceptions.BotoCoreError):
            return exc
        code = _error_code(exc)
        name = self.stream_name
        if code == "ResourceNotFoundException" and what == "GetDataEndpoint":
            return GetMediaError(f"stream {name!r} not found")
        if code == "NoDataRetentionException":
            return GetMediaError(
                f"stream {name!r} keeps no media (its retention is 0 hours): nothing to read back"
            )
        if code in ("NotAuthorizedException", "AccessDeniedException"):
            return GetMediaError(f"{what} on {name!r} not allowed: {_error_message(exc)}")
        if code is not None:
            return GetMediaError(f"{what} on {name!r} failed: {code}: {_error_message(exc)}")
        return GetMediaError(f"{what} on {name!r} failed: {exc}")

    def not_found(
        self, exc: BaseException, what: str, start: dt.datetime, end: dt.datetime, selector: str
    ) -> BaseException:
        """ResourceNotFoundException from a data-plane call: a missing stream, or an
        existing stream with nothing in the range (the service says the same for both)."""
        import botocore.exceptions

        if _error_code(exc) != "ResourceNotFoundException":
            return self.translate(exc, what)
        try:
            exists = self.stream_exists()
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as error:
            log.info("DescribeStream of %s failed: %s", self.stream_name, error)
            return self.translate(exc, what)  # e.g. not allowed to describe: say what we know
        if not exists:
            return GetMediaError(f"stream {self.stream_name!r} not found")
        kind = "producer" if selector == "PRODUCER_TIMESTAMP" else "server"
        return GetMediaError(
            f"stream {self.stream_name!r} has no media between {_iso(start)} and {_iso(end)} "
            f"(by {kind} timestamp)"
        )

    def close(self) -> None:
        for cache in self._endpoints.values():
            cache.close()
        for client in self._clients.values():
            client.close()
        if self._control is not None:
            self._control.close()


# --- GetClip ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ClipResult:
    """What :func:`save_clip` wrote.

    ``truncated_at``: when the range held more than the service puts in one clip (200
    fragments or 100 MB), the timestamp of the first fragment left out (ask again from
    there); None when the clip holds the whole range or this could not be checked.
    ``fragments_in_range``: the fragments ListFragments reported in the range (None
    when it could not be asked). ``stopped``: the ``stop`` event ended the download
    (a path output is then not written at all).
    """

    bytes_written: int
    content_type: str
    path: Path | None = None
    fragments_in_range: int | None = None
    truncated_at: dt.datetime | None = None
    stopped: bool = False


def _check_clip_range(start: dt.datetime, end: dt.datetime) -> None:
    if _utc(end) <= _utc(start):
        raise ConfigurationError(
            f"the end ({_iso(end)}) must be later than the start ({_iso(start)})"
        )
    if _utc(end) - _utc(start) > MAX_CLIP_RANGE:
        hours = (_utc(end) - _utc(start)).total_seconds() / 3600
        raise ConfigurationError(
            f"a clip covers at most 24 hours ({_iso(start)} to {_iso(end)} is {hours:g} h): "
            "split the range"
        )


def save_clip(
    aws: AwsAccess,
    stream_name: str,
    start: dt.datetime,
    end: dt.datetime,
    out: Path | str | BinaryIO,
    *,
    selector: SelectorType = "PRODUCER_TIMESTAMP",
    progress: Callable[[int], None] | None = None,
    check_limits: bool = True,
    stop: threading.Event | None = None,
) -> ClipResult:
    """GetClip of ``[start, end]`` into ``out`` (a path, or a binary file object).

    A path is written to ``<path>.part`` and renamed when the clip is complete, so an
    interrupted download never leaves a truncated MP4 under the final name.
    ``progress(bytes_written)`` is called after every chunk. With ``check_limits``,
    ListFragments tells whether the service's 200-fragment / 100 MB cut applied
    (:attr:`ClipResult.truncated_at`). Setting ``stop`` (e.g. from a signal handler)
    ends the download after the current chunk. Blocking (boto3).
    """
    _check_clip_range(start, end)
    archive = _Archive(aws, stream_name)
    try:
        client = archive.data_client("GET_CLIP")
        request = {
            "StreamName": stream_name,
            "ClipFragmentSelector": {
                "FragmentSelectorType": selector,
                "TimestampRange": {"StartTimestamp": _utc(start), "EndTimestamp": _utc(end)},
            },
        }
        try:
            response = call_with_retry(aws, "GetClip", lambda: client.get_clip(**request))
        except Exception as exc:
            _reraise(exc, archive.not_found(exc, "GetClip", start, end, selector))
        content_type = str(response.get("ContentType", "video/mp4"))
        counted = _Counted(progress, stop)
        try:
            if isinstance(out, str | Path):
                path: Path | None = Path(out)
                _write_to_path(archive, response["Payload"], Path(out), counted)
            else:
                path = None
                _copy_payload(archive, response["Payload"], out, counted)
        except _Stopped:
            log.info("GetClip of %s stopped after %d bytes", stream_name, counted.written)
            return ClipResult(counted.written, content_type, None, stopped=True)
        written = counted.written
        fragments, truncated_at = (None, None)
        if check_limits:
            fragments, truncated_at = _clip_cut(archive, start, end, selector)
        return ClipResult(written, content_type, path, fragments, truncated_at)
    finally:
        archive.close()


@dataclass
class _Counted:
    progress: Callable[[int], None] | None
    stop: threading.Event | None
    written: int = 0


def _write_to_path(archive: _Archive, payload: Any, path: Path, counted: _Counted) -> None:
    partial = path.with_name(path.name + ".part")
    try:
        with open(partial, "wb") as file:
            _copy_payload(archive, payload, file, counted)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def _copy_payload(archive: _Archive, payload: Any, out: BinaryIO, counted: _Counted) -> None:
    import botocore.exceptions

    try:
        for chunk in payload.iter_chunks(_CHUNK_BYTES):
            if counted.stop is not None and counted.stop.is_set():
                raise _Stopped
            counted.written += len(chunk)
            if counted.written > _CLIP_BYTES_GUARD:
                raise GetMediaError(
                    f"GetClip of {archive.stream_name!r} sent more than "
                    f"{_CLIP_BYTES_GUARD} bytes, twice the service's 100 MB limit: stopped"
                )
            out.write(chunk)
            if counted.progress is not None:
                counted.progress(counted.written)
    except (botocore.exceptions.BotoCoreError, OSError) as exc:
        if isinstance(exc, OSError) and not _is_network_error(exc):
            raise  # the file: disk full, permission...
        raise GetMediaError(
            f"GetClip of {archive.stream_name!r} broke off after {counted.written} bytes: {exc}"
        ) from exc
    finally:
        payload.close()


def _is_network_error(exc: OSError) -> bool:
    return isinstance(exc, ConnectionError | TimeoutError)


def _clip_cut(
    archive: _Archive, start: dt.datetime, end: dt.datetime, selector: SelectorType
) -> tuple[int | None, dt.datetime | None]:
    """(fragments in the range, start of the first fragment the clip left out).

    The clip holds the range's fragments in timestamp order until 200 fragments or
    100 MB (docs/kvs-wire.md "Archived media"); ListFragments lists them in no
    particular order, so all are listed (at most 24 h of them) and sorted.
    """
    import botocore.exceptions

    key = "ProducerTimestamp" if selector == "PRODUCER_TIMESTAMP" else "ServerTimestamp"
    found: list[tuple[int, int]] = []  # (start ms, size)
    try:
        client = archive.data_client("LIST_FRAGMENTS")
        token: str | None = None
        while True:
            if token:
                request: dict[str, Any] = {"StreamName": archive.stream_name, "NextToken": token}
            else:
                request = {
                    "StreamName": archive.stream_name,
                    "MaxResults": _LIST_FRAGMENTS_PAGE,
                    "FragmentSelector": {
                        "FragmentSelectorType": selector,
                        "TimestampRange": {
                            "StartTimestamp": _utc(start),
                            "EndTimestamp": _utc(end),
                        },
                    },
                }
            page = call_with_retry(
                archive.aws, "ListFragments", functools.partial(client.list_fragments, **request)
            )
            for fragment in page.get("Fragments", ()):
                found.append((_ms(fragment[key]), int(fragment.get("FragmentSizeInBytes", 0))))
            token = page.get("NextToken")
            if not token:
                break
    except (KvsError, botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
        # the clip is written; this was only a check
        log.info("could not check the clip against the service's limits: %s", exc)
        return None, None
    found.sort()
    total = 0
    for index, (start_ms, size) in enumerate(found):
        total += size
        if index >= MAX_CLIP_FRAGMENTS or (index > 0 and total > MAX_CLIP_BYTES):
            return len(found), _from_ms(start_ms)
    return len(found), None


# --- GetImages --------------------------------------------------------------------------


@dataclass(frozen=True)
class ArchivedImage:
    """One sampling time of GetImages: the image (decoded from base64), or the reason
    there is none (``NO_MEDIA``: nothing stored at that time; ``MEDIA_ERROR``: the
    media there could not be made into an image)."""

    timestamp: dt.datetime
    content: bytes | None
    error: str | None = None


def _windows(start_ms: int, end_ms: int, interval_ms: int) -> Iterator[tuple[int, int]]:
    """``[start, end]`` as GetImages ranges of at most 300 s, each holding whole
    sampling intervals, so the sampling times are those of one request over the whole
    range and none is asked twice."""
    limit_ms = int(MAX_IMAGES_RANGE.total_seconds() * 1000)
    span = (limit_ms // interval_ms) * interval_ms  # 0 when the interval exceeds 300 s
    window_start = start_ms
    while window_start <= end_ms:
        yield window_start, min(window_start + span, end_ms)
        window_start += span + interval_ms


def _check_images_request(
    start: dt.datetime,
    end: dt.datetime,
    *,
    interval_ms: int,
    width: int | None,
    height: int | None,
    jpeg_quality: int | None,
) -> None:
    if _utc(end) < _utc(start):
        raise ConfigurationError(
            f"the end ({_iso(end)}) must not be earlier than the start ({_iso(start)})"
        )
    if interval_ms < MIN_SAMPLING_INTERVAL_MS:
        raise ConfigurationError(
            f"the sampling interval is at least {MIN_SAMPLING_INTERVAL_MS} ms, not {interval_ms}"
        )
    if width is not None and not 1 <= width <= MAX_WIDTH:
        raise ConfigurationError(f"the width is 1..{MAX_WIDTH} pixels, not {width}")
    if height is not None and not 1 <= height <= MAX_HEIGHT:
        raise ConfigurationError(f"the height is 1..{MAX_HEIGHT} pixels, not {height}")
    if jpeg_quality is not None and not 1 <= jpeg_quality <= 100:
        raise ConfigurationError(f"the JPEG quality is 1..100, not {jpeg_quality}")


def iter_images(
    aws: AwsAccess,
    stream_name: str,
    start: dt.datetime,
    end: dt.datetime,
    *,
    interval_ms: int = 3000,
    image_format: ImageFormat = "JPEG",
    width: int | None = None,
    height: int | None = None,
    jpeg_quality: int | None = None,
    selector: SelectorType = "PRODUCER_TIMESTAMP",
    page_size: int = DEFAULT_PAGE_SIZE,
) -> Generator[ArchivedImage, None, None]:
    """Every sampling time from ``start`` to ``end`` (inclusive), every ``interval_ms``,
    in time order: GetImages over windows of at most 300 s, following NextToken. One
    page is held in memory at a time. Blocking (boto3)."""
    _check_images_request(
        start, end, interval_ms=interval_ms, width=width, height=height, jpeg_quality=jpeg_quality
    )
    if not 1 <= page_size <= 100:
        raise ConfigurationError(f"the page size is 1..100, not {page_size}")
    archive = _Archive(aws, stream_name)
    try:
        client = archive.data_client("GET_IMAGES")
        common: dict[str, Any] = {
            "StreamName": stream_name,
            "ImageSelectorType": selector,
            "SamplingInterval": interval_ms,
            "Format": image_format,
            "MaxResults": page_size,
        }
        if width is not None:
            common["WidthPixels"] = width
        if height is not None:
            common["HeightPixels"] = height
        if jpeg_quality is not None and image_format == "JPEG":
            common["FormatConfig"] = {"JPEGQuality": str(jpeg_quality)}
        for window_start, window_end in _windows(_ms(start), _ms(end), interval_ms):
            token: str | None = None
            while True:
                request = dict(
                    common,
                    StartTimestamp=_from_ms(window_start),
                    EndTimestamp=_from_ms(window_end),
                )
                if token:
                    request["NextToken"] = token
                try:
                    page = call_with_retry(
                        aws, "GetImages", functools.partial(client.get_images, **request)
                    )
                except Exception as exc:
                    _reraise(exc, archive.not_found(exc, "GetImages", start, end, selector))
                for image in page.get("Images", ()):
                    yield _image(image)
                token = page.get("NextToken")
                if not token:
                    break
    finally:
        archive.close()


def _image(image: dict[str, Any]) -> ArchivedImage:
    when = _utc(image["TimeStamp"])
    content = image.get("ImageContent")
    if content:
        return ArchivedImage(when, base64.b64decode(content))
    return ArchivedImage(when, None, str(image.get("Error") or "NO_MEDIA"))


def image_file_name(stream_name: str, timestamp: dt.datetime, image_format: str) -> str:
    """``cam-1_20261205T031500.200Z.jpg``: sorting the names sorts by time."""
    when = _utc(timestamp).astimezone(dt.timezone.utc)
    extension = "png" if image_format.upper() == "PNG" else "jpg"
    stamp = when.strftime("%Y%m%dT%H%M%S") + f".{when.microsecond // 1000:03d}Z"
    return f"{stream_name}_{stamp}.{extension}"


@dataclass
class ImagesResult:
    """What :func:`save_images` did: the files written and the sampling times without
    an image, by reason."""

    written: list[Path] = field(default_factory=list)
    bytes_written: int = 0
    no_media: int = 0
    media_error: int = 0
    stopped: bool = False

    @property
    def missing(self) -> int:
        return self.no_media + self.media_error


def save_images(
    aws: AwsAccess,
    stream_name: str,
    start: dt.datetime,
    end: dt.datetime,
    directory: Path | str,
    *,
    progress: Callable[[ImagesResult], None] | None = None,
    stop: threading.Event | None = None,
    **options: Any,
) -> ImagesResult:
    """:func:`iter_images` into ``directory`` (created if missing), one file per image
    named by :func:`image_file_name`; ``options`` are those of :func:`iter_images`.
    ``progress(result)`` after every sampling time; setting ``stop`` ends the run after
    the current image (:attr:`ImagesResult.stopped`). When nothing at all was found,
    :class:`GetMediaError` says whether the stream or only media in the range is
    missing."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    image_format = str(options.get("image_format", "JPEG"))
    selector = str(options.get("selector", "PRODUCER_TIMESTAMP"))
    result = ImagesResult()
    images = iter_images(aws, stream_name, start, end, **options)
    for image in images:
        if image.content is None:
            if image.error == "MEDIA_ERROR":
                result.media_error += 1
            else:
                result.no_media += 1
        else:
            path = folder / image_file_name(stream_name, image.timestamp, image_format)
            path.write_bytes(image.content)
            result.written.append(path)
            result.bytes_written += len(image.content)
        if progress is not None:
            progress(result)
        if stop is not None and stop.is_set():
            result.stopped = True
            images.close()  # its clients now, not when collected
            break
    if not result.written and not result.media_error and not result.stopped:
        kind = "producer" if selector == "PRODUCER_TIMESTAMP" else "server"
        raise GetMediaError(
            f"stream {stream_name!r} has no media between {_iso(start)} and {_iso(end)} "
            f"(by {kind} timestamp)"
        )
    return result
