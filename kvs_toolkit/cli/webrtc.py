"""``kvs webrtc``: signaling channels, a master and a viewer (Kinesis Video Streams with WebRTC).

    kvs webrtc channel create|describe|list|delete ...
    kvs webrtc master --channel NAME SOURCE [--storage]
    kvs webrtc viewer --channel NAME [--out FILE.jsonl] [--frames-dir DIR]

Against the emulator, pass its CA (``<data dir>/signaling/tls/ca.pem``) with
``--ca-file`` (or set ``KVS_CA_FILE``): its signaling endpoint is ``wss://`` with a
certificate from that CA.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TextIO

from kvs_toolkit.cli.common import (
    EXIT_INCOMPLETE,
    EXIT_OK,
    add_global_options,
    aws_from_args,
    fail,
)
from kvs_toolkit.cli.options import stop_event_on_signals

if TYPE_CHECKING:
    from kvs_toolkit.aws import AwsAccess


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="webrtc_command", metavar="SUBCOMMAND", required=True)

    channel = sub.add_parser("channel", help="create, describe, list or delete channels")
    actions = channel.add_subparsers(dest="channel_action", metavar="ACTION", required=True)
    create = actions.add_parser("create", help="create a SINGLE_MASTER signaling channel")
    create.add_argument("name")
    create.add_argument("--ttl", type=int, default=60, help="MessageTtlSeconds, 5-120 (default 60)")
    create.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE")
    describe = actions.add_parser("describe", help="print a channel as JSON")
    describe.add_argument("name")
    listing = actions.add_parser("list", help="list channels (one JSON object a line)")
    listing.add_argument("--prefix", help="only channels whose name begins with this")
    delete = actions.add_parser("delete", help="delete a channel")
    delete.add_argument("name")
    for action in (create, describe, listing, delete):
        # global options after the action too (kvs webrtc channel list --region ...)
        add_global_options(action, suppress=True)

    for name, help_text in (
        ("master", "serve a source (file, camera:N, rtsp://..., -) to the channel's viewers"),
        ("viewer", "watch the channel's master: frames as JSON lines and images"),
    ):
        command = sub.add_parser(name, help=help_text)
        add_global_options(command, suppress=True)
        command.add_argument("--channel", required=True, help="the signaling channel's name")
        command.add_argument(
            "--ca-file",
            default=os.environ.get("KVS_CA_FILE"),
            help="CA certificate to trust for wss:// (the emulator's signaling/tls/ca.pem; "
            "default $KVS_CA_FILE)",
        )
        command.add_argument(
            "--loopback",
            action="store_true",
            help="gather ICE candidates on 127.0.0.1 only (both peers on this machine)",
        )
        if name == "master":
            command.add_argument("source", help="file, URL, camera:N or - (H.264 on stdin)")
            command.add_argument(
                "--storage",
                action="store_true",
                help="WebRTC ingestion: also record into the channel's configured stream",
            )
            command.add_argument(
                "--encode",
                action="store_true",
                help="decode and encode again with libx264 even when the source is H.264",
            )
            command.add_argument("--loop", action="store_true", help="replay a file forever")
        else:
            command.add_argument("--out", help="write a JSON line per frame to FILE ('-': stdout)")
            command.add_argument("--frames-dir", help="write each frame as a JPEG here")
            command.add_argument("--count", type=int, help="stop after this many frames")
            command.add_argument("--client-id", help="the viewer's client id (default: random)")
            command.add_argument(
                "--model",
                metavar="SPEC",
                help="analyse every frame as 'kvs consume --model' does (motion, haar-faces, "
                "onnx:PATH, ...); --out then gets its records, with detections",
            )
            command.add_argument(
                "--min-confidence", type=float, metavar="C", help="drop detections below C"
            )


def run(args: argparse.Namespace) -> int:
    from kvs_toolkit.errors import KvsError

    aws = aws_from_args(args)
    try:
        aws.check()  # region, then credentials: one line before any work
        if args.webrtc_command == "channel":
            return _channel(aws, args)
        if args.ca_file is not None and not Path(args.ca_file).is_file():
            return fail("webrtc", f"--ca-file {args.ca_file}: no such file")
        if args.loopback:
            from kvs_toolkit.webrtc.ice import LOOPBACK, use_host_addresses

            use_host_addresses(LOOPBACK)
        if args.webrtc_command == "master":
            return asyncio.run(_master(aws, args))
        return asyncio.run(_viewer(aws, args))
    except KvsError as exc:
        return fail("webrtc", exc)


_CHANNEL_APIS: Final = {
    "create": "CreateSignalingChannel",
    "describe": "DescribeSignalingChannel",
    "list": "ListSignalingChannels",
    "delete": "DeleteSignalingChannel",
}


def _channel(aws: AwsAccess, args: argparse.Namespace) -> int:
    import botocore.exceptions

    from kvs_toolkit.aws import call_with_retry

    kv = aws.client("kinesisvideo")
    try:
        # an unreachable endpoint: retried and reported as every command does
        return call_with_retry(
            aws, _CHANNEL_APIS[args.channel_action], lambda: _channel_action(kv, args)
        )
    except botocore.exceptions.ClientError as exc:
        return fail("webrtc", exc)
    finally:
        kv.close()


def _channel_action(kv: Any, args: argparse.Namespace) -> int:
    if args.channel_action == "create":
        tags = []
        for pair in args.tag:
            key, sep, value = pair.partition("=")
            if not sep or not key:
                return fail("webrtc", f"--tag {pair!r}: use KEY=VALUE")
            tags.append({"Key": key, "Value": value})
        arn = kv.create_signaling_channel(
            ChannelName=args.name,
            ChannelType="SINGLE_MASTER",
            SingleMasterConfiguration={"MessageTtlSeconds": args.ttl},
            Tags=tags,
        )["ChannelARN"]
        print(arn)
    elif args.channel_action == "describe":
        info = kv.describe_signaling_channel(ChannelName=args.name)["ChannelInfo"]
        storage = kv.describe_media_storage_configuration(ChannelARN=info["ChannelARN"])
        info["MediaStorageConfiguration"] = storage["MediaStorageConfiguration"]
        print(json.dumps(info, default=str, indent=2))
    elif args.channel_action == "list":
        kwargs: dict[str, Any] = {}
        if args.prefix:
            kwargs["ChannelNameCondition"] = {
                "ComparisonOperator": "BEGINS_WITH",
                "ComparisonValue": args.prefix,
            }
        for page in kv.get_paginator("list_signaling_channels").paginate(**kwargs):
            for info in page["ChannelInfoList"]:
                print(json.dumps(info, default=str))
    else:
        arn = kv.describe_signaling_channel(ChannelName=args.name)["ChannelInfo"]["ChannelARN"]
        kv.delete_signaling_channel(ChannelARN=arn)
    return EXIT_OK


async def _master(aws: AwsAccess, args: argparse.Namespace) -> int:
    from kvs_toolkit.producer.sources import SourceOptions, open_source
    from kvs_toolkit.webrtc.master import Master

    source = await asyncio.to_thread(open_source, args.source, SourceOptions(loop=args.loop))
    master = Master(
        aws, args.channel, source, ca_file=args.ca_file, encode=args.encode, storage=args.storage
    )
    stop = stop_event_on_signals("kvs webrtc", "closing the peer connections")
    serving = asyncio.ensure_future(master.run())
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if stop.is_set():
        master.stop()
    stopping.cancel()
    await serving
    print(
        f"kvs webrtc master: {master.fanout.frames_read} frames read from {args.source}",
        file=sys.stderr,
    )
    return EXIT_OK


async def _viewer(aws: AwsAccess, args: argparse.Namespace) -> int:
    from kvs_toolkit.webrtc.viewer import Viewer

    frames_dir = Path(args.frames_dir) if args.frames_dir else None
    if frames_dir is not None:
        frames_dir.mkdir(parents=True, exist_ok=True)
    analysis = _Analysis(args, aws) if args.model else None
    out: TextIO | None = None
    if analysis is None and args.out == "-":
        out = sys.stdout
    elif analysis is None and args.out:
        out = open(args.out, "w", encoding="utf-8")  # noqa: SIM115 - closed below
    viewer = Viewer(aws, args.channel, client_id=args.client_id, ca_file=args.ca_file)
    stop = stop_event_on_signals("kvs webrtc", "closing the peer connections")
    count = 0

    async def watch() -> None:
        nonlocal count
        # aclosing: leaving early (--count) closes the generator on this loop, not at
        # garbage collection after the loop is gone
        async with contextlib.aclosing(viewer.frames()) as frames:
            async for frame in frames:
                record = frame.record()
                if frames_dir is not None:
                    record["jpeg"] = await asyncio.to_thread(_write_jpeg, frames_dir, frame)
                if analysis is not None:
                    await asyncio.to_thread(analysis.put, frame)
                if out is not None:
                    out.write(json.dumps(record) + "\n")
                    out.flush()
                count += 1
                if args.count is not None and count >= args.count:
                    return

    watching = asyncio.ensure_future(watch())
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({watching, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not watching.done():
            watching.cancel()  # the viewer closes its connection on the way out
        with contextlib.suppress(asyncio.CancelledError):
            await watching
    finally:
        stopping.cancel()
        if out is not None and out is not sys.stdout:
            out.close()
        if analysis is not None:
            summary = await asyncio.to_thread(analysis.finish)
            print(f"kvs webrtc viewer: {summary}", file=sys.stderr)
    print(f"kvs webrtc viewer: {count} frames", file=sys.stderr)
    if args.count is not None and count < args.count:
        return EXIT_INCOMPLETE
    return EXIT_OK


class _Analysis:
    """``--model``: the consumer's analysis pipeline in a thread, fed the viewer's frames
    as :class:`~kvs_toolkit.consumer.frames.DecodedFrame` s (timestamps: arrival time of
    the first frame plus the sender's offsets)."""

    def __init__(self, args: argparse.Namespace, aws: AwsAccess) -> None:
        import queue
        import threading

        from kvs_toolkit.analysis import Analyzer
        from kvs_toolkit.analysis.models import model_detector

        detector = model_detector(
            args.model, min_confidence=args.min_confidence, region=aws.region_name
        )
        sinks = [f"jsonl:{args.out}"] if args.out and args.out != "-" else []
        if args.out == "-":
            sinks = ["jsonl"]
        self.analyzer = Analyzer(detector, sinks, batch_size=1, stream_name=args.channel)
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=30)
        self._origin: float | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="webrtc-analysis", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.analyzer.run(iter(self._queue.get, None))
        except BaseException as exc:  # reported by finish()
            self._error = exc

    def put(self, frame: Any) -> None:
        import datetime as dt

        from kvs_toolkit.consumer.frames import DecodedFrame

        if self._origin is None:
            self._origin = frame.received_at - frame.timestamp
        received = dt.datetime.fromtimestamp(frame.received_at, dt.timezone.utc)
        self._put(
            DecodedFrame(
                image=frame.image,
                format="bgr24",
                track_number=1,
                fragment_number=None,
                producer_timestamp=None,
                server_timestamp=received,
                timestamp_ns=round((self._origin + frame.timestamp) * 1e9),
                mkv_timestamp_ns=round(frame.timestamp * 1e9),
                keyframe=False,
                index=frame.index,
            )
        )

    def _put(self, item: Any) -> None:
        import queue

        from kvs_toolkit.errors import AnalysisError

        while True:
            if self._error is not None or not self._thread.is_alive():
                raise AnalysisError(f"the analysis stopped: {self._error}") from self._error
            try:
                self._queue.put(item, timeout=0.5)
            except queue.Full:
                continue
            return

    def finish(self) -> str:
        with contextlib.suppress(Exception):  # a failed analysis is reported below
            self._put(None)
        self._thread.join()
        self.analyzer.close()
        if self._error is not None:
            raise self._error
        stats = self.analyzer.stats
        return (
            f"{self.analyzer.detector.name}: {stats.frames_analysed} frames analysed, "
            f"{stats.detections} detections"
        )


def _write_jpeg(folder: Path, frame: Any) -> str:
    import cv2

    name = f"frame-{frame.index:06d}.jpg"
    if not cv2.imwrite(str(folder / name), frame.image):
        raise OSError(f"cannot write {folder / name}")
    return name
