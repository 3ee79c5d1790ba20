"""``kvs streams ...`` against the emulator, on a machine with no AWS configuration."""

from __future__ import annotations

import argparse
import contextlib
import json
from typing import Any

import boto3
import pytest

from kvs_toolkit.cli.streams import retention_change
from kvs_toolkit.emulator import Emulator
from tests.cli.conftest import Kvs, Result


def describe(kvs: Kvs, url: str, name: str) -> dict[str, object]:
    result = kvs("streams", "describe", name, "--json", "--endpoint-url", url)
    assert result.returncode == 0, result.stderr
    info: dict[str, object] = json.loads(result.stdout)
    return info


def one_error_line(result: Result, command: str) -> str:
    """The one ``kvs COMMAND: ...`` line of a failed command (exit 2); besides it only
    the placeholder-credentials notice may be on stderr."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr_lines
    assert "Traceback" not in result.stderr
    errors = [line for line in lines if line.startswith(f"kvs {command}:")]
    others = [line for line in lines if not line.startswith(f"kvs {command}:")]
    assert len(errors) == 1, lines
    assert all("placeholder credentials" in line for line in others), lines
    return errors[0]


def test_create_describe_list_with_placeholder_credentials(kvs: Kvs, emulator: Emulator) -> None:
    url = emulator.endpoint_url
    created = kvs(
        "streams", "create", "porch-1", "--retention-hours", "48", "--media-type", "video/h264",
        "--kms-key-id", "alias/cams", "--tag", "site=porch", "--tag", "cam=1",
        "--endpoint-url", url,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    assert created.stdout.strip().startswith("arn:aws:kinesisvideo:us-east-1:")
    assert created.stdout.strip().split("/")[1] == "porch-1"
    # the one notice of the placeholder credentials, nothing else
    assert len(created.stderr_lines) == 1 and "placeholder credentials" in created.stderr
    info = describe(kvs, url, "porch-1")
    assert info["StreamName"] == "porch-1"
    assert info["DataRetentionInHours"] == 48
    assert info["MediaType"] == "video/h264"
    assert info["KmsKeyId"] == "alias/cams"
    assert info["Status"] == "ACTIVE"
    assert info["Tags"] == {"site": "porch", "cam": "1"}
    assert str(info["CreationTime"]).endswith("Z")

    table = kvs("streams", "describe", "porch-1", "--endpoint-url", url)
    assert table.returncode == 0
    assert "cam=1, site=porch" in table.stdout
    assert any(line.split() == ["DataRetentionInHours", "48"] for line in table.stdout.splitlines())

    for name in ("porch-2", "yard-1"):
        assert kvs("streams", "create", name, "--endpoint-url", url).returncode == 0
    listed = kvs("streams", "list", "--endpoint-url", url)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["NAME", "STATUS", "RETENTION_H", "CREATED", "MEDIA_TYPE"]
    names = [line.split()[0] for line in lines[1:]]
    assert {"porch-1", "porch-2", "yard-1"} <= set(names)
    assert names == sorted(names)
    # every page is listed (page size 1: one ListStreams call per stream)
    paged = kvs(
        "streams", "list", "--name-prefix", "porch", "--page-size", "1", "--json",
        "--endpoint-url", url,
    )  # fmt: skip
    assert paged.returncode == 0, paged.stderr
    streams = json.loads(paged.stdout)
    assert [s["StreamName"] for s in streams] == ["porch-1", "porch-2"]
    assert streams[1]["DataRetentionInHours"] == 24  # the default, as kvs produce --create-stream


def control(emulator: Emulator) -> Any:
    """A boto3 client of the emulator in this process (checks and set-up that are not
    what a test is about cost no ``kvs`` process start)."""
    return boto3.client(
        "kinesisvideo",
        endpoint_url=emulator.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="any",
        aws_secret_access_key="any",
    )


def stored(emulator: Emulator, name: str) -> dict[str, Any]:
    """What the emulator holds for stream ``name`` (DescribeStream and its tags), read in
    this process: ``kvs streams describe`` itself is checked above."""
    client = control(emulator)
    info: dict[str, Any] = client.describe_stream(StreamName=name)["StreamInfo"]
    info["Tags"] = client.list_tags_for_stream(StreamName=name).get("Tags", {})
    client.close()
    return info


def test_update_retention_tag_untag_delete(kvs: Kvs, emulator: Emulator) -> None:
    url = emulator.endpoint_url
    created = kvs("streams", "create", "ret", "--retention-hours", "2", "--endpoint-url", url)
    assert created.returncode == 0, created.stderr
    assert stored(emulator, "ret")["DataRetentionInHours"] == 2

    steps = [("--hours", "10", 10), ("--increase-hours", "5", 15), ("--decrease-hours", "12", 3),
             ("--hours", "1", 1)]  # fmt: skip
    for option, value, expected in steps:
        result = kvs("streams", "update-retention", "ret", option, value, "--endpoint-url", url)
        assert result.returncode == 0, result.stderr
        assert stored(emulator, "ret")["DataRetentionInHours"] == expected
    assert "-> 1 h" in result.stderr
    same = kvs("streams", "update-retention", "ret", "--hours", "1", "--endpoint-url", url)
    assert same.returncode == 0 and "already 1 h" in same.stderr
    below = kvs(
        "streams", "update-retention", "ret", "--decrease-hours", "2", f"--endpoint-url={url}"
    )
    assert "cannot be decreased by 2 h" in one_error_line(below, "streams update-retention")

    assert kvs("streams", "tag", "ret", "a=1", "b=2", "--endpoint-url", url).returncode == 0
    assert stored(emulator, "ret")["Tags"] == {"a": "1", "b": "2"}
    assert kvs("streams", "untag", "ret", "a", "--endpoint-url", url).returncode == 0
    assert stored(emulator, "ret")["Tags"] == {"b": "2"}

    deleted = kvs("streams", "delete", "ret", "--endpoint-url", url)
    assert deleted.returncode == 0, deleted.stderr
    gone = kvs("streams", "describe", "ret", "--endpoint-url", url)
    line = one_error_line(gone, "streams describe")
    assert line == "kvs streams describe: stream 'ret' not found"


@pytest.mark.parametrize(
    ("args", "command", "expected"),
    [
        (("describe", "nobody"), "streams describe", "stream 'nobody' not found"),
        (("delete", "nobody"), "streams delete", "stream 'nobody' not found"),
        (("tag", "nobody", "a=1"), "streams tag", "stream 'nobody' not found"),
        (("untag", "nobody", "a"), "streams untag", "stream 'nobody' not found"),
        (("update-retention", "nobody", "--hours", "3"), "streams update-retention", "not found"),
        (("create", "dup"), "streams create", "stream 'dup' already exists"),
        (("create", "bad name!"), "streams create", "invalid argument: "),
        (("create", "x", "--media-type", "no-slash"), "streams create", "invalid argument: "),
        (("tag", "dup", "novalue"), "streams tag", "KEY=VALUE"),
    ],
)
def test_errors_are_one_line(
    kvs: Kvs, emulator: Emulator, args: tuple[str, ...], command: str, expected: str
) -> None:
    url = emulator.endpoint_url
    client = control(emulator)  # stream "dup" exists
    with contextlib.suppress(client.exceptions.ResourceInUseException):
        client.create_stream(StreamName="dup")
    client.close()
    result = kvs("streams", *args, "--endpoint-url", url)
    assert expected in one_error_line(result, command)


def test_retention_change() -> None:
    def change(current: int, **given: int) -> tuple[str, int, int]:
        args = argparse.Namespace(hours=None, increase_hours=None, decrease_hours=None)
        for key, value in given.items():
            setattr(args, key, value)
        return retention_change(current, args)

    assert change(24, hours=48) == ("INCREASE_DATA_RETENTION", 24, 48)
    assert change(24, hours=0) == ("DECREASE_DATA_RETENTION", 24, 0)
    assert change(24, hours=24)[1] == 0
    assert change(0, increase_hours=5) == ("INCREASE_DATA_RETENTION", 5, 5)
    assert change(10, decrease_hours=4) == ("DECREASE_DATA_RETENTION", 4, 6)
    with pytest.raises(argparse.ArgumentTypeError, match="cannot be decreased"):
        change(3, decrease_hours=4)
    with pytest.raises(argparse.ArgumentTypeError, match="exceed 87600"):
        change(87600, increase_hours=1)
