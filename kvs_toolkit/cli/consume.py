"""``kvs consume``: read a stream (live, an archived range, HLS, or a file), decode,
analyse, write JSON lines.

Sources: live GetMedia (default), ``--archive START END`` (ListFragments +
GetMediaForFragmentList), ``--hls`` (an HLS session, LIVE or ON_DEMAND over
``--archive``), ``--hls-url URL`` (a session made elsewhere), ``--from-file``.

Checkpoints (live GetMedia): with ``--checkpoint PATH`` or ``--start checkpoint`` the
position is saved after each fragment whose every frame was written and flushed, so a
crash repeats at most one fragment's records and never loses one; the ``--out`` file is
appended to when resuming. The work itself is :class:`kvs_toolkit.Pipeline`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import logging
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TextIO, cast

from kvs_toolkit.cli import options
from kvs_toolkit.cli.common import (
    EXIT_INVALID,
    EXIT_OK,
    GracefulStop,
    StatusLine,
    aws_from_args,
    fail,
)
from kvs_toolkit.cli.fleet import add_decode_pool_option
from kvs_toolkit.consumer.queue_policy import QUEUE_POLICIES
from kvs_toolkit.consumer.selectors import StartSelector, parse_timestamp

if TYPE_CHECKING:
    from kvs_toolkit.analysis import Analyzer
    from kvs_toolkit.analysis.annotate import AnnotatedPublisher
    from kvs_toolkit.aws import AwsAccess
    from kvs_toolkit.consumer.checkpoint import CheckpointStore
    from kvs_toolkit.consumer.readers import FragmentSource

log = logging.getLogger(__name__)

#: ``--start checkpoint``: after the saved checkpoint (the stream's start when none yet).
START_CHECKPOINT: Final = "checkpoint"


def _start(text: str) -> StartSelector | str:
    if text.strip().lower() == START_CHECKPOINT:
        return START_CHECKPOINT
    try:
        return StartSelector.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _time(text: str) -> dt.datetime:
    try:
        return parse_timestamp(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _zone(text: str) -> tuple[int, int, int, int]:
    # imported only when the option is given (the analysis stack loads OpenCV)
    from kvs_toolkit.analysis.motion import parse_ignore_zone

    try:
        return parse_ignore_zone(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``kvs consume`` (the global options come from the main parser)."""
    parser.add_argument("--stream", help="stream name (not needed with --from-file)")
    parser.add_argument(
        "--streams",
        nargs="+",
        metavar="NAME|PREFIX*|@FILE",
        help="read many live streams in this process (names, prefixes ending in '*', @FILE), "
        "shared with other processes through --lease-table; the same as 'kvs fleet run'",
    )
    parser.add_argument(
        "--lease-table",
        metavar="dynamodb:TABLE",
        help="with --streams: share the streams with other processes on DynamoDB leases",
    )
    add_decode_pool_option(parser)
    parser.add_argument(
        "--start",
        type=_start,
        default=StartSelector.now(),
        metavar="WHERE",
        help="live start: now (default), earliest, fragment:N (after fragment N), "
        "producer:TIME, server:TIME (ISO 8601 or epoch seconds), token:TOKEN, or checkpoint "
        "(right after the last fragment processed, per --checkpoint; earliest when there is "
        "no checkpoint yet). A saved checkpoint always wins over the other values",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--from-file", metavar="PATH", help="read a GetMedia capture or MKV file ('-': stdin)"
    )
    where.add_argument(
        "--hls-url",
        metavar="URL",
        help="read an HLS session URL created elsewhere (fMP4, DisplayFragmentTimestamp ALWAYS)",
    )
    where.add_argument(
        "--archive",
        nargs=2,
        type=_time,
        metavar=("START", "END"),
        help="read the archived fragments of this time range instead of following live",
    )
    parser.add_argument(
        "--timestamp-type",
        choices=("producer", "server"),
        default="producer",
        help="which timestamps --archive selects on (default producer)",
    )
    parser.add_argument(
        "--hls",
        action="store_true",
        help="read through an HLS session (GetHLSStreamingSessionURL) instead of GetMedia: "
        "LIVE, or ON_DEMAND over the --archive range",
    )
    parser.add_argument(
        "--playback-mode",
        choices=("LIVE", "ON_DEMAND"),
        help="HLS playback mode (default: ON_DEMAND with --archive, else LIVE)",
    )
    parser.add_argument(
        "--idle-exit",
        type=options.positive_float,
        metavar="S",
        help="live GetMedia and --hls LIVE: stop after S seconds without a new fragment",
    )
    parser.add_argument(
        "--fps", type=options.positive_float, help="decode at most N frames a second"
    )
    parser.add_argument(
        "--keyframes-only", action="store_true", help="decode key frames only (cheapest)"
    )
    parser.add_argument(
        "--out", default="-", metavar="FILE.jsonl", help="JSON lines output (default stdout)"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --out file (without it, a file with records is refused, "
        "except when resuming from a checkpoint, where records are appended)",
    )
    parser.add_argument("--frames-dir", metavar="DIR", help="also save every frame as a JPEG")
    parser.add_argument(
        "--format",
        choices=("bgr24", "rgb24", "gray"),
        default="bgr24",
        help="pixel format of decoded frames (models, --frames-dir, plug-ins; default bgr24)",
    )
    parser.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="live GetMedia: save the last processed fragment here after each fragment and "
        "resume after it: a SQLite database (default with --start checkpoint: "
        "$XDG_STATE_HOME/kvs-toolkit/checkpoints.sqlite3), a .json file, or dynamodb:TABLE",
    )
    parser.add_argument(
        "--consumer-group",
        default="default",
        metavar="NAME",
        help="independent consumers of one stream keep separate checkpoints (default: default)",
    )
    parser.add_argument(
        "--queue-size",
        type=options.positive_int,
        metavar="N",
        help="read and decode in a thread, handing at most N frames to processing",
    )
    parser.add_argument(
        "--queue-policy",
        choices=QUEUE_POLICIES,
        default="block",
        help="when the queue is full: block the reader (default) or drop-to-keyframe "
        "(drop queued frames up to the newest key frame; counted in the summary)",
    )
    parser.add_argument("--max-fragments", type=int, metavar="N", help="stop after N fragments")
    parser.add_argument(
        "--max-frames", type=options.positive_int, metavar="N", help="stop after N frames"
    )
    parser.add_argument(
        "--duration", type=options.positive_float, metavar="S", help="stop after S seconds"
    )
    parser.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no progress on stderr"
    )
    analysis = parser.add_argument_group("analysis (with --model)")
    analysis.add_argument(
        "--model",
        metavar="SPEC",
        help="analyse every frame: motion, haar-faces, rekognition-labels, rekognition-faces, "
        "onnx:PATH, any detector registered with register_detector, or module:function; "
        "--out then gets one record per frame with detections",
    )
    analysis.add_argument(
        "--min-confidence",
        type=options.fraction,
        metavar="C",
        help="drop detections below this confidence (0..1)",
    )
    analysis.add_argument(
        "--motion-ignore",
        type=_zone,
        action="append",
        metavar="X,Y,W,H",
        help="with --model motion: ignore this rectangle, e.g. an on-screen clock (repeatable)",
    )
    analysis.add_argument(
        "--to-kinesis", metavar="STREAM", help="also send records to this Kinesis data stream"
    )
    analysis.add_argument(
        "--to-s3",
        metavar="s3://BUCKET/PREFIX",
        help="also store per frame the record (.json) and the annotated frame (.jpg) in S3",
    )
    analysis.add_argument("--webhook", metavar="URL", help="also POST records to this URL")
    analysis.add_argument(
        "--annotate-to",
        metavar="STREAM",
        help="publish the frames with their boxes drawn into this KVS stream (created if "
        "missing; when publishing falls behind the oldest waiting frames are dropped)",
    )


def _uses_checkpoints(args: argparse.Namespace) -> bool:
    return bool(args.checkpoint) or args.start == START_CHECKPOINT


def open_checkpoints(args: argparse.Namespace) -> CheckpointStore | None:
    """The checkpoint store the command line asks for (None without --checkpoint and
    --start checkpoint); ValueError for a bad combination, CheckpointError for a bad store."""
    if not _uses_checkpoints(args):
        return None
    for option, given in (("--from-file", args.from_file), ("--archive", args.archive),
                          ("--hls", args.hls), ("--hls-url", args.hls_url)):  # fmt: skip
        if given:
            raise ValueError(f"--checkpoint applies to live streams (GetMedia), not {option}")
    from kvs_toolkit.consumer.checkpoint import open_checkpoint_store

    return open_checkpoint_store(args.checkpoint, consumer_group=args.consumer_group)


def resolve_start(args: argparse.Namespace, store: CheckpointStore | None) -> StartSelector:
    """Where a live read starts: right after the stream's checkpoint when there is one,
    else ``--start`` (``checkpoint`` without a checkpoint: the earliest fragment)."""
    if store is not None and args.stream:
        saved = store.load(args.stream)
        if saved is not None:
            log.info("%s: resuming after fragment %s", args.stream, saved.fragment_number)
            return StartSelector.from_checkpoint(saved)
    if args.start == START_CHECKPOINT:
        return StartSelector.earliest()
    start: StartSelector = args.start
    return start


def open_reader(
    args: argparse.Namespace,
    aws: AwsAccess | None = None,
    checkpoints: CheckpointStore | None = None,
) -> FragmentSource:
    """The reader the command line asks for (raises ValueError for a bad combination)."""
    from kvs_toolkit.consumer.hls import HlsReader, PlaybackMode
    from kvs_toolkit.consumer.readers import ArchiveReader, FileReader, LiveReader
    from kvs_toolkit.consumer.selectors import TimestampType

    if args.from_file:
        if _uses_checkpoints(args):
            raise ValueError("--checkpoint applies to live streams, not --from-file")
        return FileReader(sys.stdin.buffer if args.from_file == "-" else args.from_file)
    timestamp_type: TimestampType = (
        "SERVER_TIMESTAMP" if args.timestamp_type == "server" else "PRODUCER_TIMESTAMP"
    )
    if aws is None:
        aws = aws_from_args(args)
    # one retry policy for every reader: --max-attempts (0: keep trying)
    attempts = aws.retry.max_attempts
    retries: dict[str, Any] = {
        "backoff": aws.retry,
        "max_retries": None if attempts is None else attempts - 1,
    }
    if args.hls_url:
        return HlsReader(session_url=args.hls_url, timestamp_type=timestamp_type,
                         idle_exit_s=args.idle_exit, aws=aws, **retries)  # fmt: skip
    if not args.stream:
        raise ValueError("--stream is required (or --from-file, --hls-url)")
    if args.playback_mode and not args.hls:
        raise ValueError("--playback-mode applies to --hls")
    if args.idle_exit and args.archive and not args.hls:
        raise ValueError("--idle-exit applies to live reading, not --archive")
    if args.hls:
        mode: PlaybackMode = args.playback_mode or ("ON_DEMAND" if args.archive else "LIVE")
        if mode == "ON_DEMAND" and not args.archive:
            raise ValueError("--hls --playback-mode ON_DEMAND needs --archive START END")
        start, end = args.archive or (None, None)
        if mode == "LIVE" and args.archive:
            raise ValueError("--hls LIVE follows the stream's live edge: leave out --archive")
        return HlsReader(
            args.stream,
            playback_mode=mode,
            start=start,
            end=end,
            timestamp_type=timestamp_type,
            aws=aws,
            idle_exit_s=args.idle_exit,
            **retries,
        )
    if args.archive:
        start, end = args.archive
        return ArchiveReader(
            args.stream, start, end, timestamp_type=timestamp_type, aws=aws, **retries
        )
    return LiveReader(args.stream, start=resolve_start(args, checkpoints), aws=aws, **retries)


def _sink_specs(args: argparse.Namespace) -> list[str]:
    specs = []
    if args.to_kinesis:
        specs.append(f"kinesis:{args.to_kinesis}")
    if args.to_s3:
        if not args.to_s3.startswith("s3://"):
            raise ValueError(f"--to-s3 takes s3://BUCKET/PREFIX, not {args.to_s3}")
        specs.append(f"s3:{args.to_s3}")
    if args.webhook:
        specs.append(f"webhook:{args.webhook}")
    return specs


def _open_analyzer(args: argparse.Namespace, region: str | None) -> Analyzer:
    from kvs_toolkit.analysis import Analyzer, ResultSink, create_sink
    from kvs_toolkit.analysis.models import model_detector

    model_options: dict[str, Any] = {}
    if args.motion_ignore:
        if not args.model.startswith("motion"):
            raise ValueError("--motion-ignore applies to --model motion")
        model_options["ignore_zones"] = list(args.motion_ignore)
    detector = model_detector(
        args.model, min_confidence=args.min_confidence, region=region, options=model_options
    )
    sinks: list[ResultSink] = []
    for spec in _sink_specs(args):
        aws = {"region_name": region} if not spec.startswith("webhook:") else {}
        sinks.append(create_sink(spec, **aws))
    stream_name = args.stream or (Path(args.from_file).name if args.from_file else None)
    # One frame a batch: a live consumer must not hold frames back waiting for a batch.
    return Analyzer(detector, sinks, batch_size=1, stream_name=stream_name)


def _summary(analyzer: Analyzer, publisher: AnnotatedPublisher | None) -> str:
    stats = analyzer.stats
    labels = ", ".join(
        f"{label} {count}" for label, count in stats.detections_by_label.most_common()
    )
    p50, p95 = stats.latency_p50, stats.latency_p95
    latency = "-" if p50 is None or p95 is None else f"p50 {p50:.1f} ms, p95 {p95:.1f} ms"
    text = (
        f"{analyzer.detector.name}: {stats.frames_analysed} frames analysed, "
        f"{stats.detections} detections ({labels or 'none'}), latency {latency}"
    )
    if publisher is not None:
        text += "\n" + publisher.stats.line()
    return text


def _open_out(args: argparse.Namespace, resuming: bool) -> TextIO | None:
    """The --out file: appended to when resuming from a checkpoint, refused when it holds
    records and neither resuming nor --overwrite (a second run must not erase the first's
    results). None for stdout."""
    if args.out == "-":
        return None
    path = Path(args.out)
    exists = path.exists() and path.stat().st_size > 0
    if exists and not resuming and not args.overwrite:
        raise ValueError(
            f"{args.out} already holds records: pass --overwrite to replace it, or "
            "--start checkpoint to resume and append"
        )
    mode = "a" if resuming and not args.overwrite else "w"
    return cast(TextIO, open(path, mode, encoding="utf-8"))


def run(args: argparse.Namespace) -> int:
    """Decode frames to JSON lines until done or Ctrl-C; 0, or 2 for a bad combination
    of options. Reading errors raise :class:`~kvs_toolkit.errors.KvsError`."""
    from kvs_toolkit.consumer.decode import FragmentDecoder
    from kvs_toolkit.consumer.pipeline import Pipeline, Progress
    from kvs_toolkit.consumer.readers import LiveReader

    if args.streams:
        return _consume_many(args)
    if args.lease_table or args.decode_pool or args.decode_threads is not None:
        return fail(
            "consume", "--lease-table, --decode-pool and --decode-threads apply to --streams"
        )
    if args.max_fragments is not None and args.max_fragments < 0:
        return fail("consume", "--max-fragments must not be negative")
    model_options = (args.to_kinesis, args.to_s3, args.webhook, args.annotate_to)
    if args.model is None and (
        args.min_confidence is not None or args.motion_ignore or any(model_options)
    ):
        return fail(
            "consume",
            "--min-confidence, --motion-ignore, --to-kinesis, --to-s3, --webhook and "
            "--annotate-to need --model",
        )
    from kvs_toolkit.errors import KvsError

    aws = None if args.from_file else aws_from_args(args)
    try:
        checkpoints = open_checkpoints(args)
        # the options are checked before any AWS setting: a usage error says so first
        source = open_reader(args, aws, checkpoints)
        if aws is not None:
            aws.check()  # a missing region or credential: one line, before any work
        out_file = _open_out(args, resuming=checkpoints is not None)
    except (ValueError, OSError, KvsError) as exc:
        return fail("consume", exc)
    analyzer: Analyzer | None = None
    if args.model is not None:
        try:
            analyzer = _open_analyzer(args, aws.region if aws is not None else args.region)
        except (ValueError, KvsError) as exc:
            source.close()
            if out_file is not None:
                out_file.close()
            return fail("consume", exc)

    publisher: AnnotatedPublisher | None = None
    if args.annotate_to:
        from kvs_toolkit.analysis.annotate import AnnotatedPublisher
        from kvs_toolkit.producer.producer import Producer

        producer = Producer(args.annotate_to, aws=aws, create_stream=True)
        publisher = AnnotatedPublisher(producer, fps=args.fps)

    def annotate(record: Any) -> None:
        if publisher is not None and record.frame is not None:
            publisher.submit(record.frame, record.detections)

    pipeline = Pipeline(
        source,
        decoder=FragmentDecoder(
            fps=args.fps, keyframes_only=args.keyframes_only, format=args.format
        ),
        analyzer=analyzer,
        out=out_file or sys.stdout,
        frames_dir=Path(args.frames_dir) if args.frames_dir else None,
        on_record=annotate if publisher is not None else None,
        checkpoints=checkpoints if args.stream else None,
        checkpoint_key=args.stream,
        queue_size=args.queue_size,
        queue_policy=args.queue_policy,
        max_fragments=args.max_fragments,
        max_frames=args.max_frames,
    )
    live = isinstance(source, LiveReader)
    status = StatusLine()
    stop_progress = threading.Event()

    def show(final: bool = False) -> None:
        progress = Progress.of(source.stats, pipeline.frames, live=live, done=final)
        status.show(progress.line(), final=final)

    def progress_loop() -> None:
        while not stop_progress.wait(1.0):
            show()

    timer = None
    if args.duration is not None:
        timer = threading.Timer(args.duration, pipeline.stop)
        timer.daemon = True
        timer.start()
    idle_watch = None
    if args.idle_exit is not None and live:
        from kvs_toolkit.consumer.idle import IdleWatch

        idle_watch = IdleWatch(source, args.idle_exit)  # HlsReader does it itself
    progress_thread = threading.Thread(target=progress_loop, name="kvs-progress", daemon=True)
    if args.progress:
        progress_thread.start()
    stop = GracefulStop(
        "consume",
        pipeline.stop,
        "finishing the fragment in progress and closing the sinks (at most a few seconds)",
    )
    result = None
    try:
        with stop.installed(), contextlib.ExitStack() as stack:
            if out_file is not None:
                stack.enter_context(out_file)
            result = pipeline.run()
    finally:
        stop_progress.set()
        if timer is not None:
            timer.cancel()
        if idle_watch is not None:
            idle_watch.cancel()
        if progress_thread.is_alive():
            progress_thread.join()
        source.close()
        pipeline.decoder.close()
        # Sinks and the publisher deliver what they hold even after an error; their own
        # errors are raised only when the run itself succeeded.
        closing_errors: list[Exception] = []
        for closer in (analyzer, publisher):
            if closer is None:
                continue
            try:
                closer.close()
            except Exception as exc:
                log.error("%s", exc)
                closing_errors.append(exc)
        # the summary is printed on every way out, an interrupted run included (not when
        # nothing was read: the error is then the one line to see)
        if args.progress and (result is not None or source.stats.fragments):
            show(final=True)
        if analyzer is not None:
            print(_summary(analyzer, publisher), file=sys.stderr)
        if result is not None and args.queue_size is not None:
            print(
                f"queue: {args.queue_policy}, size {args.queue_size}, at most "
                f"{result.max_queue_depth} frames waiting, {result.dropped_frames} frames "
                "dropped",
                file=sys.stderr,
            )
    if closing_errors:
        raise closing_errors[0]
    return EXIT_OK if result is not None else EXIT_INVALID


def _consume_many(args: argparse.Namespace) -> int:
    """``kvs consume --streams ...``: the fleet runner (:mod:`kvs_toolkit.cli.fleet`),
    with kvs consume's spelling of the options it shares."""
    from kvs_toolkit.cli.fleet import run_fleet

    if args.stream or args.from_file or args.archive or args.hls or args.hls_url:
        return fail("consume", "--streams reads live streams: leave out --stream, --from-file, "
                    "--archive, --hls and --hls-url")  # fmt: skip
    if args.model not in (None, "motion"):
        return fail("consume", "--streams takes --model motion (or no model)")
    unsupported = [name for name, given in (
        ("--max-fragments", args.max_fragments), ("--max-frames", args.max_frames),
        ("--duration", args.duration), ("--frames-dir", args.frames_dir),
        ("--queue-size", args.queue_size), ("--idle-exit", args.idle_exit),
    ) if given is not None]  # fmt: skip
    if unsupported:
        return fail("consume", f"--streams runs until SIGINT/SIGTERM: {unsupported[0]} "
                    "does not apply")  # fmt: skip
    fleet_args = argparse.Namespace(**vars(args))
    fleet_args.start = args.start if isinstance(args.start, str) else args.start.spec()
    fleet_args.model = args.model or "none"
    fleet_args.out = args.out  # "-": stdout, as kvs consume's
    return run_fleet(fleet_args)
