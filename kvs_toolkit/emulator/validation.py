"""Request validation with the service's limits, as pure functions over decoded JSON.

botocore checks only required members, types and minimums on the client side; the
maximums and patterns below are the service's (from the botocore models and the KVS
developer guide), enforced here so a raw client gets the same answers too.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Mapping
from typing import Any

from kvs_toolkit.emulator.errors import InvalidArgumentError, TagsPerResourceExceededLimitError

__all__ = [
    "MAX_RETENTION_HOURS",
    "MAX_TAGS_PER_STREAM",
    "MAX_TIMESTAMP_MS",
    "optional_int",
    "optional_str",
    "parse_stream_arn",
    "query_int",
    "require_object",
    "timestamp_ms",
    "validate_device_name",
    "validate_kms_key_id",
    "validate_media_type",
    "validate_stream_name",
    "validate_tag_key",
    "validate_tags",
    "validate_version",
]

MAX_RETENTION_HOURS = 87600  # 10 years: the service's DataRetentionInHours maximum
MAX_TAGS_PER_STREAM = 50  # ResourceTags max in the model; the documented tag limit
# Timestamps up to the end of year 9999 UTC: what botocore (datetime) can represent.
# Anything later would be stored, then break every client that lists it.
MAX_TIMESTAMP_MS = 253_402_300_799_999
# A query-string number longer than this is refused before int() sees it.
_MAX_QUERY_DIGITS = 18

_STREAM_NAME = re.compile(r"[a-zA-Z0-9_.-]+")
_VERSION = re.compile(r"[a-zA-Z0-9]+")
_MEDIA_TYPE = re.compile(r"[\w\-.+]+/[\w\-.+]+(,[\w\-.+]+/[\w\-.+]+)*")
# The model's ResourceARN pattern; groups: partition, region, account, type, name, time.
_STREAM_ARN = re.compile(
    r"arn:([a-z\d-]+):kinesisvideo:([a-z0-9-]+):([0-9]+):([a-z]+)/([a-zA-Z0-9_.-]+)/([0-9]+)"
)
_TAG_PUNCTUATION = frozenset("_.:/=+-@")


def require_object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidArgumentError(f"{what} must be a JSON object")
    return value


def optional_str(body: Mapping[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidArgumentError(f"{key} must be a string")
    return value


def optional_int(body: Mapping[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    # bool is an int subclass in Python but not a JSON number.
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgumentError(f"{key} must be an integer")
    return value


def timestamp_ms(value: Any, what: str) -> int:
    """Epoch seconds (a JSON number, as botocore sends timestamps) as integer ms.

    NaN, infinities and anything outside year 0..9999 are InvalidArgument, not a 500.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgumentError(f"{what} must be a timestamp in epoch seconds.")
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidArgumentError(f"{what} must be a finite timestamp in epoch seconds.")
    if not -MAX_TIMESTAMP_MS <= value * 1000 <= MAX_TIMESTAMP_MS:
        raise InvalidArgumentError(f"{what} {value!r} is outside the supported range.")
    return round(value * 1000)


def query_int(text: str, what: str, lo: int, hi: int) -> int:
    """A whole number from a query string, in ``lo..hi`` (ASCII digits only: ``²`` is a
    digit to ``str.isdigit`` but not to ``int``)."""
    if not (text.isascii() and text.isdigit()) or len(text) > _MAX_QUERY_DIGITS:
        raise InvalidArgumentError(
            f"{what} {text[:40]!r} must be a whole number from {lo} to {hi}."
        )
    value = int(text)
    if not lo <= value <= hi:
        raise InvalidArgumentError(f"{what} {text!r} must be a whole number from {lo} to {hi}.")
    return value


def _check_length(value: str, what: str, lo: int, hi: int) -> None:
    if not lo <= len(value) <= hi:
        raise InvalidArgumentError(
            f"{what} length {len(value)} is outside the allowed range {lo}..{hi}"
        )


def validate_stream_name(name: str) -> str:
    """1-256 characters of ``[a-zA-Z0-9_.-]``."""
    _check_length(name, "StreamName", 1, 256)
    if not _STREAM_NAME.fullmatch(name):
        raise InvalidArgumentError(f"StreamName {name!r} must match the pattern [a-zA-Z0-9_.-]+")
    return name


def validate_device_name(name: str) -> str:
    _check_length(name, "DeviceName", 1, 128)
    if not _STREAM_NAME.fullmatch(name):
        raise InvalidArgumentError(f"DeviceName {name!r} must match the pattern [a-zA-Z0-9_.-]+")
    return name


def validate_media_type(media_type: str) -> str:
    _check_length(media_type, "MediaType", 1, 128)
    if not _MEDIA_TYPE.fullmatch(media_type):
        raise InvalidArgumentError(
            f"MediaType {media_type!r} must be type/subtype pairs separated by commas"
        )
    return media_type


def validate_kms_key_id(key_id: str) -> str:
    _check_length(key_id, "KmsKeyId", 1, 2048)
    return key_id


def validate_version(version: str) -> str:
    _check_length(version, "CurrentVersion", 1, 64)
    if not _VERSION.fullmatch(version):
        raise InvalidArgumentError("CurrentVersion must match the pattern [a-zA-Z0-9]+")
    return version


def parse_stream_arn(arn: str) -> str:
    """Check a stream ARN against the model's pattern; return the stream name in it."""
    _check_length(arn, "StreamARN", 1, 1024)
    match = _STREAM_ARN.fullmatch(arn)
    if match is None or match.group(4) != "stream":
        raise InvalidArgumentError(f"StreamARN {arn!r} is not a valid Kinesis video stream ARN")
    return validate_stream_name(match.group(5))


def _tag_text_ok(text: str) -> bool:
    # The model's pattern is [\p{L}\p{Z}\p{N}_.:/=+\-@]*; Python's re has no \p classes.
    return all(ch in _TAG_PUNCTUATION or unicodedata.category(ch)[0] in "LZN" for ch in text)


def validate_tag_key(key: Any) -> str:
    if not isinstance(key, str):
        raise InvalidArgumentError("tag keys must be strings")
    _check_length(key, "tag key", 1, 128)
    if not _tag_text_ok(key):
        raise InvalidArgumentError(
            f"tag key {key!r} has characters outside [\\p{{L}}\\p{{Z}}\\p{{N}}_.:/=+-@]"
        )
    if key.lower().startswith("aws:"):
        # The aws: prefix is reserved for AWS-created tags.
        raise InvalidArgumentError(f"tag key {key!r} uses the reserved prefix aws:")
    return key


def validate_tags(tags: Any) -> dict[str, str]:
    """A Tags map: at most 50 entries, keys 1-128 and values 0-256 characters."""
    if not isinstance(tags, dict):
        raise InvalidArgumentError("Tags must be a JSON object of strings")
    if len(tags) > MAX_TAGS_PER_STREAM:
        raise TagsPerResourceExceededLimitError(
            f"{len(tags)} tags exceed the limit of {MAX_TAGS_PER_STREAM} tags per stream"
        )
    checked: dict[str, str] = {}
    for key, value in tags.items():
        validate_tag_key(key)
        if not isinstance(value, str):
            raise InvalidArgumentError(f"the value of tag {key!r} must be a string")
        _check_length(value, f"the value of tag {key!r}", 0, 256)
        if not _tag_text_ok(value):
            raise InvalidArgumentError(
                f"the value of tag {key!r} has characters outside the allowed set"
            )
        checked[key] = value
    return checked
