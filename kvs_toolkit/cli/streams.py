"""``kvs streams create|list|describe|delete|update-retention|tag|untag``: the control
plane of Kinesis Video streams, as the AWS CLI's ``kinesisvideo`` commands do it, with
the toolkit's region/credentials/endpoint rules and its one retry of a dead endpoint.

Service errors are one line and exit 2: a missing stream, a stream in use (already
there, being deleted), an invalid argument, a version changed meanwhile.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeVar

from kvs_toolkit.cli import options
from kvs_toolkit.cli.common import EXIT_OK, add_global_options, aws_from_args, fail
from kvs_toolkit.producer.defaults import DEFAULT_RETENTION_HOURS

if TYPE_CHECKING:
    from kvs_toolkit.aws import AwsAccess

_T = TypeVar("_T")
# DataRetentionInHours is 0..87600 (10 years) (docs/kvs-wire.md "Control plane").
MAX_RETENTION_HOURS: Final = 87600
_LIST_PAGE: Final = 1000


def _hours(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of hours: {text!r}") from None
    if not 0 <= value <= MAX_RETENTION_HOURS:
        raise argparse.ArgumentTypeError(f"must be 0..{MAX_RETENTION_HOURS} hours, not {text}")
    return value


def _change(text: str) -> int:
    value = _hours(text)
    if value < 1:
        raise argparse.ArgumentTypeError("the change must be at least 1 hour")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    def action(name: str, text: str) -> argparse.ArgumentParser:
        child = actions.add_parser(name, help=text, description=text)
        add_global_options(child, suppress=True)
        return child

    create = action("create", "create a stream (prints its ARN)")
    create.add_argument("name", help="stream name (1-256 of [a-zA-Z0-9_.-])")
    create.add_argument(
        "--retention-hours",
        type=_hours,
        default=DEFAULT_RETENTION_HOURS,
        metavar="HOURS",
        help=f"how long media is kept (0: not at all; default {DEFAULT_RETENTION_HOURS}, "
        "as kvs produce --create-stream)",
    )
    create.add_argument("--media-type", metavar="TYPE", help="e.g. video/h264")
    create.add_argument("--kms-key-id", metavar="KEY", help="KMS key (default: the service's)")
    create.add_argument("--device-name", metavar="NAME", help="the device writing to the stream")
    create.add_argument(
        "--tag", action="append", metavar="KEY=VALUE", help="stream tag (repeatable)"
    )

    listing = action("list", "list streams (name, status, retention, created)")
    listing.add_argument("--name-prefix", metavar="PREFIX", help="only names starting so")
    listing.add_argument("--json", action="store_true", help="print a JSON array")
    listing.add_argument(
        "--page-size",
        type=options.positive_int,
        default=_LIST_PAGE,
        metavar="N",
        help=f"streams per ListStreams call (default {_LIST_PAGE}); all pages are listed",
    )

    describe = action("describe", "show a stream and its tags")
    describe.add_argument("name")
    describe.add_argument("--json", action="store_true", help="print JSON")

    delete = action("delete", "delete a stream and all its media")
    delete.add_argument("name")

    retention = action(
        "update-retention",
        "change how long a stream keeps media: to HOURS, or by --increase-hours / --decrease-hours",
    )
    retention.add_argument("name")
    how = retention.add_mutually_exclusive_group(required=True)
    how.add_argument("--hours", type=_hours, metavar="HOURS", help="the new retention")
    how.add_argument("--increase-hours", type=_change, metavar="HOURS")
    how.add_argument("--decrease-hours", type=_change, metavar="HOURS")

    tag = action("tag", "add or replace stream tags")
    tag.add_argument("name")
    tag.add_argument("tags", nargs="+", metavar="KEY=VALUE")

    untag = action("untag", "remove stream tags")
    untag.add_argument("name")
    untag.add_argument("keys", nargs="+", metavar="KEY")


class _Control:
    """The kinesisvideo client, every call retried on a dead endpoint."""

    def __init__(self, aws: AwsAccess) -> None:
        from botocore.config import Config

        self.aws = aws
        # call_with_retry is the one retry of a dead endpoint: botocore adds none.
        self.client = aws.client("kinesisvideo", config=Config(retries={"total_max_attempts": 1}))

    def call(self, operation: str, **request: Any) -> Any:
        from kvs_toolkit.aws import call_with_retry

        method: Callable[..., Any] = getattr(self.client, operation)
        name = "".join(part.capitalize() for part in operation.split("_"))
        return call_with_retry(self.aws, name, lambda: method(**request))

    def describe(self, name: str) -> dict[str, Any]:
        info: dict[str, Any] = self.call("describe_stream", StreamName=name)["StreamInfo"]
        return info


def _iso(value: Any) -> str:
    if isinstance(value, dt.datetime):
        when = value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
        return when.astimezone(dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    return str(value)


def _jsonable(info: dict[str, Any]) -> dict[str, Any]:
    return {
        key: _iso(value) if isinstance(value, dt.datetime) else value for key, value in info.items()
    }


def _service_error(exc: Exception, args: argparse.Namespace) -> str | None:
    """One line for a service error of ``args.action``; None if ``exc`` is not one."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return None
    error = response.get("Error", {})
    code = str(error.get("Code", ""))
    message = str(error.get("Message", "")).strip() or code
    name = getattr(args, "name", None)
    if code == "ResourceNotFoundException":
        return f"stream {name!r} not found" if name else message
    if code == "ResourceInUseException":
        if args.action == "create":
            return f"stream {name!r} already exists (or is being deleted): {message}"
        return f"stream {name!r} is in use: {message}"
    if code == "InvalidArgumentException":
        return f"invalid argument: {message}"
    if code == "VersionMismatchException":
        return f"stream {name!r} changed meanwhile; run the command again"
    if code in ("NotAuthorizedException", "AccessDeniedException"):
        return f"not allowed: {message}"
    if code == "TagsPerResourceExceededLimitException":
        return f"too many tags (at most 50 per stream): {message}"
    return f"{code}: {message}" if code else str(exc)


def run(args: argparse.Namespace) -> int:
    import botocore.exceptions

    try:
        aws = aws_from_args(args)
        aws.check()
        control = _Control(aws)
        return _ACTIONS[args.action](control, args)
    except argparse.ArgumentTypeError as exc:
        return fail(f"streams {args.action}", exc)
    except (botocore.exceptions.ClientError, botocore.exceptions.ParamValidationError) as exc:
        line = _service_error(exc, args)
        if line is None:  # ParamValidationError: what boto3 refused to send
            line = "invalid argument: " + " ".join(str(exc).split())
        return fail(f"streams {args.action}", line)
    except botocore.exceptions.BotoCoreError as exc:
        return fail(f"streams {args.action}", exc)
    except Exception as exc:
        from kvs_toolkit.errors import KvsError

        if isinstance(exc, KvsError):
            return fail(f"streams {args.action}", exc)
        raise


def _create(control: _Control, args: argparse.Namespace) -> int:
    request: dict[str, Any] = {
        "StreamName": args.name,
        "DataRetentionInHours": args.retention_hours,
    }
    for key, value in (
        ("MediaType", args.media_type),
        ("KmsKeyId", args.kms_key_id),
        ("DeviceName", args.device_name),
    ):
        if value is not None:
            request[key] = value
    tags = options.parse_tags(args.tag)
    if tags:
        request["Tags"] = tags
    print(control.call("create_stream", **request)["StreamARN"])
    return EXIT_OK


def _list(control: _Control, args: argparse.Namespace) -> int:
    streams: list[dict[str, Any]] = []
    request: dict[str, Any] = {"MaxResults": args.page_size}
    if args.name_prefix:
        request["StreamNameCondition"] = {
            "ComparisonOperator": "BEGINS_WITH",
            "ComparisonValue": args.name_prefix,
        }
    while True:
        page = control.call("list_streams", **request)
        streams += page.get("StreamInfoList", ())
        token = page.get("NextToken")
        if not token:
            break
        request["NextToken"] = token
    if args.json:
        print(json.dumps([_jsonable(info) for info in streams], indent=2))
        return EXIT_OK
    rows = [
        (
            str(info["StreamName"]),
            str(info.get("Status", "")),
            str(info.get("DataRetentionInHours", "")),
            _iso(info.get("CreationTime", "")),
            str(info.get("MediaType") or ""),
        )
        for info in streams
    ]
    _table(("NAME", "STATUS", "RETENTION_H", "CREATED", "MEDIA_TYPE"), rows)
    return EXIT_OK


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=False)]
    for row in (header, *rows):
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def _describe(control: _Control, args: argparse.Namespace) -> int:
    info = control.describe(args.name)
    tags: dict[str, str] = control.call("list_tags_for_stream", StreamName=args.name).get(
        "Tags", {}
    )
    if args.json:
        print(json.dumps({**_jsonable(info), "Tags": tags}, indent=2))
        return EXIT_OK
    fields = [(key, _iso(value)) for key, value in info.items()]
    fields.append(("Tags", ", ".join(f"{k}={v}" for k, v in sorted(tags.items())) or "-"))
    width = max(len(key) for key, _ in fields)
    for key, value in fields:
        print(f"{key.ljust(width)}  {value}")
    return EXIT_OK


def _delete(control: _Control, args: argparse.Namespace) -> int:
    info = control.describe(args.name)
    # DeleteStream takes the ARN; the version makes it refuse a stream replaced meanwhile
    control.call("delete_stream", StreamARN=info["StreamARN"], CurrentVersion=info["Version"])
    print(f"{args.name}: deletion requested", file=sys.stderr)
    return EXIT_OK


def retention_change(current: int, args: argparse.Namespace) -> tuple[str, int, int]:
    """(Operation, DataRetentionChangeInHours, new retention) of ``update-retention``;
    a change of 0 means nothing to do."""
    if args.hours is not None:
        target = int(args.hours)
    elif args.increase_hours is not None:
        target = current + int(args.increase_hours)
    else:
        target = current - int(args.decrease_hours)
    if target < 0:
        raise argparse.ArgumentTypeError(
            f"retention is {current} h: it cannot be decreased by {args.decrease_hours} h"
        )
    if target > MAX_RETENTION_HOURS:
        raise argparse.ArgumentTypeError(
            f"retention is {current} h: {target} h would exceed {MAX_RETENTION_HOURS} h"
        )
    if target >= current:
        return "INCREASE_DATA_RETENTION", target - current, target
    return "DECREASE_DATA_RETENTION", current - target, target


def _update_retention(control: _Control, args: argparse.Namespace) -> int:
    info = control.describe(args.name)
    current = int(info.get("DataRetentionInHours", 0))
    operation, change, target = retention_change(current, args)
    if change == 0:
        print(f"{args.name}: retention already {current} h", file=sys.stderr)
        return EXIT_OK
    control.call(
        "update_data_retention",
        StreamName=args.name,
        CurrentVersion=info["Version"],
        Operation=operation,
        DataRetentionChangeInHours=change,
    )
    print(f"{args.name}: retention {current} h -> {target} h", file=sys.stderr)
    return EXIT_OK


def _tag(control: _Control, args: argparse.Namespace) -> int:
    tags = options.parse_tags(args.tags)
    control.call("tag_stream", StreamName=args.name, Tags=tags)
    return EXIT_OK


def _untag(control: _Control, args: argparse.Namespace) -> int:
    control.call("untag_stream", StreamName=args.name, TagKeyList=list(args.keys))
    return EXIT_OK


_ACTIONS: Final[dict[str, Callable[[_Control, argparse.Namespace], int]]] = {
    "create": _create,
    "list": _list,
    "describe": _describe,
    "delete": _delete,
    "update-retention": _update_retention,
    "tag": _tag,
    "untag": _untag,
}
