"""``kvs rekognition-processor``: Rekognition Video stream processors (create, start,
stop, describe, list, delete) and their face-search results joined to fragments.
Confidences and thresholds are 0..1 here as everywhere in kvs (Rekognition's percent
scale is converted)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from kvs_toolkit.analysis.base import AnalysisError
from kvs_toolkit.analysis.processors import (
    DEFAULT_MODEL,
    MAX_DURATION_SECONDS,
    FaceSearchResults,
    FragmentIndex,
    ResultsPosition,
    StreamProcessors,
)
from kvs_toolkit.analysis.sinks import JsonLinesSink
from kvs_toolkit.cli import options
from kvs_toolkit.cli.common import add_global_options, aws_from_args

log = logging.getLogger(__name__)


def _frame_size(text: str) -> tuple[int, int]:
    width, sep, height = text.lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit() or not int(width) or not int(height):
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, e.g. 1280x720, not {text!r}")
    return int(width), int(height)


def _timestamp(text: str) -> float:
    """Epoch seconds or an ISO 8601 time (UTC when no zone is given)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected epoch seconds or an ISO 8601 time, not {text!r}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return moment.timestamp()


def _tags(pairs: Sequence[str] | None) -> dict[str, str]:
    tags: dict[str, str] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise AnalysisError(f"--tag takes KEY=VALUE, not {pair!r}")
        tags[key] = value
    return tags


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``kvs rekognition-processor`` (``--endpoint-url`` is the Kinesis
    Video endpoint, for ListFragments; Rekognition's is ``--rekognition-endpoint-url``)."""
    parser.add_argument(
        "--rekognition-endpoint-url",
        metavar="URL",
        help="Rekognition endpoint (AWS_ENDPOINT_URL_REKOGNITION; default: AWS)",
    )
    actions = parser.add_subparsers(dest="action", required=True)

    create = actions.add_parser(
        "create",
        help="create a face-search (--collection-id) or connected-home (--labels) processor",
    )
    create.add_argument("name", help="processor name (1-128 of [a-zA-Z0-9_.-])")
    create.add_argument("--video-stream-arn", required=True, help="the KVS stream to analyse")
    create.add_argument("--role-arn", required=True, help="IAM role Rekognition assumes")
    face = create.add_argument_group("face search")
    face.add_argument("--collection-id", help="face collection to search (face search)")
    face.add_argument(
        "--face-match-threshold",
        type=options.fraction,
        default=0.8,
        metavar="C",
        help="0..1 (default 0.8)",
    )
    face.add_argument("--data-stream-arn", help="Kinesis data stream for the frame records")
    home = create.add_argument_group("connected home")
    home.add_argument(
        "--labels", help="comma-separated: PERSON, PET, PACKAGE or ALL (connected home)"
    )
    home.add_argument(
        "--min-confidence",
        type=options.fraction,
        default=0.5,
        metavar="C",
        help="0..1 (default 0.5)",
    )
    home.add_argument("--s3", metavar="s3://BUCKET/PREFIX", help="where results are written")
    home.add_argument("--sns-topic-arn", help="SNS topic for notifications")
    home.add_argument("--kms-key-id", help="KMS key for the S3 results")
    create.add_argument("--tag", action="append", metavar="KEY=VALUE", help="(repeatable)")

    start = actions.add_parser("start", help="start a processor")
    start.add_argument("name")
    where = start.add_mutually_exclusive_group()
    where.add_argument("--start-fragment", help="connected home: start at this fragment number")
    where.add_argument(
        "--start-timestamp",
        type=_timestamp,
        help="connected home: start at this producer time (epoch seconds or ISO 8601; default now)",
    )
    start.add_argument(
        "--max-duration",
        type=int,
        help=f"connected home: stop after this many seconds (1-{MAX_DURATION_SECONDS}; required)",
    )
    for action, text in (
        ("stop", "stop a processor"),
        ("describe", "print a processor's description as JSON"),
        ("delete", "delete a processor"),
    ):
        actions.add_parser(action, help=text).add_argument("name")
    actions.add_parser("list", help="print every processor as a JSON line (name, status)")

    results = actions.add_parser(
        "results",
        help="read a face-search processor's Kinesis data stream as JSON lines, joined to "
        "fragments and frames",
    )
    results.add_argument("--data-stream", required=True, help="Kinesis data stream name or ARN")
    results.add_argument(
        "--no-join",
        dest="join",
        action="store_false",
        help="do not ask ListFragments: use the records' own timestamps",
    )
    results.add_argument(
        "--position", type=Path, help="JSON file of shard positions: resume there, save there"
    )
    results.add_argument(
        "--from",
        dest="initial",
        choices=("trim-horizon", "latest"),
        default="trim-horizon",
        help="where shards without a saved position start (default trim-horizon)",
    )
    results.add_argument("--follow", action="store_true", help="keep reading until Ctrl-C")
    results.add_argument("--poll-interval", type=float, default=1.0, help="seconds (--follow)")
    results.add_argument("--max-records", type=int, help="stop after this many records")
    results.add_argument(
        "--frame-size",
        type=_frame_size,
        default=(1, 1),
        metavar="WxH",
        help="the video's size, for boxes in pixels (default: pixels = fractions)",
    )
    results.add_argument("--model", default=DEFAULT_MODEL, help="model name in the records")
    for action_parser in actions.choices.values():  # global options after the action too
        add_global_options(action_parser, suppress=True)


def run(args: argparse.Namespace) -> int:
    """``kvs rekognition-processor ACTION ...``; prints JSON to stdout."""
    aws = aws_from_args(args)
    region = aws.region  # one clear line when there is none, before any request
    if args.action == "results":
        return _cmd_results(args, region)
    # --endpoint-url is the command's service's, as `aws rekognition --endpoint-url` (for
    # `results` it is the Kinesis Video endpoint of ListFragments)
    processors = StreamProcessors(
        region_name=region,
        endpoint_url=args.rekognition_endpoint_url or args.endpoint_url,
        aws=aws,
    )
    out = sys.stdout
    if args.action == "create":
        if (args.collection_id is None) == (args.labels is None):
            raise AnalysisError(
                "create needs --collection-id (face search) or --labels (connected home), not both"
            )
        if args.collection_id is not None:
            if not args.data_stream_arn:
                raise AnalysisError("a face-search processor needs --data-stream-arn")
            arn = processors.create_face_search(
                args.name,
                video_stream_arn=args.video_stream_arn,
                data_stream_arn=args.data_stream_arn,
                role_arn=args.role_arn,
                collection_id=args.collection_id,
                face_match_threshold=args.face_match_threshold * 100.0,
                tags=_tags(args.tag),
            )
        else:
            if not args.s3 or not args.sns_topic_arn:
                raise AnalysisError("a connected-home processor needs --s3 and --sns-topic-arn")
            bucket, _, prefix = args.s3.removeprefix("s3://").partition("/")
            arn = processors.create_connected_home(
                args.name,
                video_stream_arn=args.video_stream_arn,
                role_arn=args.role_arn,
                bucket=bucket,
                key_prefix=prefix,
                sns_topic_arn=args.sns_topic_arn,
                labels=[label.strip() for label in args.labels.split(",") if label.strip()],
                min_confidence=args.min_confidence * 100.0,
                kms_key_id=args.kms_key_id,
                tags=_tags(args.tag),
            )
        print(json.dumps({"name": args.name, "arn": arn}), file=out)
    elif args.action == "start":
        session = processors.start(
            args.name,
            fragment_number=args.start_fragment,
            producer_timestamp=args.start_timestamp,
            max_duration_seconds=args.max_duration,
        )
        print(json.dumps({"name": args.name, "session_id": session}), file=out)
    elif args.action == "stop":
        processors.stop(args.name)
        print(json.dumps({"name": args.name, "stopped": True}), file=out)
    elif args.action == "delete":
        processors.delete(args.name)
        print(json.dumps({"name": args.name, "deleted": True}), file=out)
    elif args.action == "describe":
        print(json.dumps(processors.describe(args.name).to_json(), indent=2), file=out)
    elif args.action == "list":
        for name, status in processors.list():
            print(json.dumps({"name": name, "status": status}), file=out)
    return 0


def _cmd_results(args: argparse.Namespace, region: str) -> int:
    if args.max_records is not None and args.max_records < 1:
        raise AnalysisError("--max-records must be at least 1")
    position = ResultsPosition.load(args.position) if args.position else None
    fragments = (
        FragmentIndex(endpoint_url=args.endpoint_url, region_name=region) if args.join else None
    )
    reader = FaceSearchResults(
        args.data_stream,
        region_name=region,
        fragments=fragments,
        position=position,
        initial="LATEST" if args.initial == "latest" else "TRIM_HORIZON",
        frame_size=args.frame_size,
        model=args.model,
    )
    sink = JsonLinesSink("-")

    def save(where: ResultsPosition) -> None:
        if args.position:
            where.save(args.position)

    try:
        if args.follow:
            records = reader.follow(
                poll_interval=args.poll_interval, max_records=args.max_records, on_pass=save
            )
        else:
            records = reader.read(max_records=args.max_records)
        for record in records:
            sink.write(record)
    finally:
        save(reader.position)
        sink.close()
        stats = reader.stats
        log.info(
            "%d records read, %d written, %d malformed skipped, %d joined to fragments",
            stats.records,
            stats.emitted,
            stats.malformed,
            stats.joined,
        )
        if stats.malformed:
            print(
                f"kvs rekognition-processor results: skipped {stats.malformed} malformed records",
                file=sys.stderr,
            )
    return 0
