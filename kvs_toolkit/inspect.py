"""``kvs inspect``: what is in a GetMedia capture, an MKV file or another container.

MKV input (a GetMedia capture, a PutMedia body, any Matroska/WebM file) is read with
the sans-I/O :class:`~kvs_toolkit.mkv.FragmentReader`, fragment by fragment, with frame
counts per track. A capture that ends in the middle of a fragment (the normal end of a
saved live read) keeps every complete frame: its last fragment is marked truncated and
:attr:`InspectResult.truncation` says where the input ended.

Input that is not MKV at all (an MP4, an MPEG-TS, ...) is described through PyAV
(imported only then): its tracks, its key frames, and the fragments ``kvs produce``
would cut from it (the producer's own source and fragmenter, run without uploading).

Nothing here prints or exits; the CLI turns an :class:`InspectResult` into text.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from kvs_toolkit.errors import KvsError, MkvError, SourceError
from kvs_toolkit.mkv import TRACK_TYPE_AUDIO, TRACK_TYPE_VIDEO, Fragment, FragmentReader
from kvs_toolkit.mkv.ebml import encode_id
from kvs_toolkit.mkv.ids import EBML
from kvs_toolkit.timestamps import epoch_seconds

_CHUNK = 1 << 16
# Every MKV stream, and every GetMedia fragment, starts with the EBML header's ID
# (docs/kvs-wire.md, "The MKV a producer sends").
_EBML_MAGIC = encode_id(EBML)
_TRACK_TYPES = {TRACK_TYPE_VIDEO: "video", TRACK_TYPE_AUDIO: "audio"}


# --- results ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TrackCount:
    """Frames of one track (in one fragment, or summed over an input)."""

    number: int
    kind: str  # "video", "audio", or "unknown" for frames of an undeclared track
    codec_id: str | None
    frames: int
    keyframes: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "track_number": self.number,
            "type": self.kind,
            "codec_id": self.codec_id,
            "frames": self.frames,
            "keyframes": self.keyframes,
        }


@dataclass(frozen=True, slots=True)
class ContainerTrack:
    """One stream of a non-MKV container, counted from its packets (nothing decoded)."""

    index: int
    kind: str  # PyAV's stream type: "video", "audio", "subtitle", "data", ...
    codec: str
    frames: int
    keyframes: int
    width: int | None = None
    height: int | None = None
    sample_rate: int | None = None
    channels: int | None = None


@dataclass(frozen=True, slots=True)
class WouldBeFragment:
    """A fragment ``kvs produce`` would send: times in ms from the first frame."""

    start_ms: int
    duration_ms: int
    video_frames: int
    video_keyframes: int
    audio_frames: int
    size: int


@dataclass(frozen=True, slots=True)
class ContainerDescription:
    """A non-MKV input as FFmpeg sees it, and as the producer would fragment it.

    ``fragments`` is ``None`` when the producer would not pass the video through
    (``fragments_note`` says why); ``keyframe_times`` are the first video track's key
    frames in seconds from its first frame.
    """

    format_name: str
    format_long_name: str
    duration_s: float | None
    tracks: tuple[ContainerTrack, ...]
    keyframe_times: tuple[float, ...]
    fragment_duration_ms: int
    fragments: tuple[WouldBeFragment, ...] | None
    fragments_note: str | None = None


@dataclass
class InspectResult:
    """What one input holds, and how reading it ended.

    ``error`` is the MKV reader's error that stopped reading (malformed or not MKV);
    ``truncation`` is set instead when the input ended inside an element after at
    least one fragment had started (the last fragment is then marked truncated).
    ``container`` describes a non-MKV input that FFmpeg could read; when it could not,
    ``container_error`` says why.
    """

    fragments: list[Fragment] = field(default_factory=list)
    error: MkvError | None = None
    truncation: MkvError | None = None
    size: int = 0
    container: ContainerDescription | None = None
    container_error: str | None = None

    @property
    def invalid(self) -> bool:
        """Nothing usable: not MKV (and not a container FFmpeg reads), or malformed MKV."""
        return self.container is None and self.error is not None


# --- reading ------------------------------------------------------------------------------
def inspect_stream(chunks: Iterable[bytes]) -> InspectResult:
    """Read every MKV fragment of ``chunks``; keep what was complete on an error."""
    reader = FragmentReader()
    result = InspectResult()
    try:
        for chunk in chunks:
            result.size += len(chunk)
            result.fragments.extend(reader.feed(chunk))
    except MkvError as exc:
        result.error = exc
        return result
    # A capture cut off mid-fragment still shows the frames that were complete.
    result.fragments.extend(reader.close(keep_truncated=True))
    if reader.truncation is not None:
        if result.fragments:
            result.truncation = reader.truncation
        else:  # ended inside the header: there is nothing to show
            result.error = reader.truncation
    elif result.size == 0:
        result.error = MkvError("the input is empty", 0)
    return result


def read_chunks(stream: IO[bytes]) -> Iterator[bytes]:
    while chunk := stream.read(_CHUNK):
        yield chunk


def inspect_input(stream: IO[bytes], path: str | os.PathLike[str] | None = None) -> InspectResult:
    """Inspect an open binary stream (a file or stdin): MKV, else through PyAV.

    ``path`` is the file ``stream`` reads, if any: a non-MKV file is opened there by
    FFmpeg; without one (stdin) the input is first copied to a temporary file, since
    containers such as MP4 need seeking.
    """
    first = stream.read(_CHUNK)
    if not first or first.startswith(_EBML_MAGIC):
        return inspect_stream(itertools.chain([first], read_chunks(stream)))
    result = inspect_stream([first])  # the MKV reader's own word on why this is not MKV
    if result.error is None:  # cannot happen without an EBML header, but stay safe
        return inspect_stream(itertools.chain([first], read_chunks(stream)))
    if path is not None:
        result.size = os.path.getsize(path)
        _describe_into(result, os.fspath(path))
        return result
    with tempfile.NamedTemporaryFile(prefix="kvs-inspect-") as spool:
        spool.write(first)
        shutil.copyfileobj(stream, spool, _CHUNK)
        spool.flush()
        result.size = spool.tell()
        _describe_into(result, spool.name)
    return result


def _describe_into(result: InspectResult, path: str) -> None:
    try:
        result.container = describe_container(path)
    except KvsError as exc:
        result.container_error = str(exc)


# --- per-track counts ---------------------------------------------------------------------
def track_counts(fragment: Fragment) -> list[TrackCount]:
    """Frames and key frames of each track of ``fragment`` (declared tracks first)."""
    frames: dict[int, int] = {}
    keys: dict[int, int] = {}
    for frame in fragment.frames:
        number = frame.track_number
        frames[number] = frames.get(number, 0) + 1
        if frame.keyframe:
            keys[number] = keys.get(number, 0) + 1
    counts = [
        TrackCount(
            t.number,
            _TRACK_TYPES.get(t.track_type, f"type {t.track_type}"),
            t.codec_id,
            frames.get(t.number, 0),
            keys.get(t.number, 0),
        )
        for t in fragment.tracks
    ]
    declared = {t.number for t in fragment.tracks}
    counts.extend(
        TrackCount(n, "unknown", None, frames[n], keys.get(n, 0))
        for n in sorted(frames)
        if n not in declared
    )
    return counts


def _by_kind(counts: Iterable[TrackCount]) -> tuple[int, int, int]:
    """(video frames, video key frames, audio frames)."""
    video = keys = audio = 0
    for count in counts:
        if count.kind == "video":
            video += count.frames
            keys += count.keyframes
        elif count.kind == "audio":
            audio += count.frames
    return video, keys, audio


def total_track_counts(fragments: Iterable[Fragment]) -> list[TrackCount]:
    """Per-track counts summed over ``fragments``, by track number."""
    totals: dict[int, TrackCount] = {}
    for fragment in fragments:
        for count in track_counts(fragment):
            seen = totals.get(count.number)
            if seen is None:
                totals[count.number] = count
            else:
                totals[count.number] = TrackCount(
                    count.number,
                    seen.kind if seen.kind != "unknown" else count.kind,
                    seen.codec_id or count.codec_id,
                    seen.frames + count.frames,
                    seen.keyframes + count.keyframes,
                )
    return [totals[n] for n in sorted(totals)]


# --- records ------------------------------------------------------------------------------
def fragment_record(fragment: Fragment) -> dict[str, Any]:
    """The JSON shape of one fragment (documented in the README)."""
    video = fragment.video_track
    track = video or (fragment.tracks[0] if fragment.tracks else None)
    counts = track_counts(fragment)
    video_frames, video_keys, audio_frames = _by_kind(counts)
    return {
        "fragment_number": fragment.fragment_number,
        "producer_timestamp": epoch_seconds(fragment.producer_timestamp, 3),
        "server_timestamp": epoch_seconds(fragment.server_timestamp, 3),
        "cluster_timecode": fragment.cluster_timecode,
        "duration_ms": round(fragment.duration_ns / 1e6, 3),
        "video_frames": video_frames,
        "video_keyframes": video_keys,
        "audio_frames": audio_frames,
        "tracks": [c.as_dict() for c in counts],
        "size": fragment.size,
        "tags": [{"name": t.name, "value": t.value} for t in fragment.tags],
        "codec_id": track.codec_id if track else None,
        "width": video.width if video else None,
        "height": video.height if video else None,
        "millis_behind_now": fragment.millis_behind_now,
        "truncated": fragment.truncated,
    }


def summary(result: InspectResult) -> dict[str, Any]:
    fragments = result.fragments
    starts = [f.start_timestamp_ns for f in fragments if f.start_timestamp_ns is not None]
    gaps = 0
    for before, after in itertools.pairwise(fragments):
        b, a = before.start_timestamp_ns, after.start_timestamp_ns
        if b is not None and a is not None and a > b + before.duration_ns + before.duration_ns // 2:
            gaps += 1
    codecs = sorted({t.codec_id for f in fragments for t in f.tracks})
    totals = total_track_counts(fragments)
    video_frames, video_keys, audio_frames = _by_kind(totals)
    return {
        "fragments": len(fragments),
        "video_frames": video_frames,
        "video_keyframes": video_keys,
        "audio_frames": audio_frames,
        "tracks": [c.as_dict() for c in totals],
        "duration_ms": round((max(starts) - min(starts)) / 1e6 + fragments[-1].duration_ns / 1e6, 3)
        if starts
        else 0.0,
        "gaps": gaps,
        "codecs": codecs,
        "size": result.size,
        "truncated": result.truncation is not None,
    }


def _container_record(description: ContainerDescription) -> dict[str, Any]:
    return {
        "format": description.format_name,
        "format_long_name": description.format_long_name,
        "duration_s": description.duration_s,
        "tracks": [
            {
                "index": t.index,
                "type": t.kind,
                "codec": t.codec,
                "frames": t.frames,
                "keyframes": t.keyframes,
                "width": t.width,
                "height": t.height,
                "sample_rate": t.sample_rate,
                "channels": t.channels,
            }
            for t in description.tracks
        ],
        "keyframe_times": list(description.keyframe_times),
        "fragment_duration_ms": description.fragment_duration_ms,
        "fragments": None
        if description.fragments is None
        else [
            {
                "start_ms": f.start_ms,
                "duration_ms": f.duration_ms,
                "video_frames": f.video_frames,
                "video_keyframes": f.video_keyframes,
                "audio_frames": f.audio_frames,
                "size": f.size,
            }
            for f in description.fragments
        ],
        "fragments_note": description.fragments_note,
    }


def to_json(result: InspectResult) -> str:
    doc: dict[str, Any]
    if result.container is not None:
        doc = {"container": _container_record(result.container), "size": result.size}
        return json.dumps(doc, indent=2)
    doc = {
        "fragments": [fragment_record(f) for f in result.fragments],
        "summary": summary(result),
    }
    if result.error is not None:
        doc["error"] = {"message": result.error.message, "offset": result.error.offset}
    if result.truncation is not None:
        doc["truncation"] = {
            "message": result.truncation.message,
            "offset": result.truncation.offset,
        }
    return json.dumps(doc, indent=2)


# --- text ---------------------------------------------------------------------------------
def _fmt_time(value: dt.datetime | None) -> str:
    if value is None:
        return "-"
    return value.strftime("%Y-%m-%d %H:%M:%S.") + f"{value.microsecond // 1000:03d}"


def _layout(rows: list[tuple[str, ...]]) -> list[str]:
    """Columns padded to their widest cell; the last column is left as it is.

    Nothing is cut to fit a terminal: a narrow one wraps the line, and every value
    (a 48-digit fragment number, a tag) can still be copied whole.
    """
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  ".join((*cells, row[-1])).rstrip())
    return lines


def to_table(result: InspectResult) -> str:
    if result.container is not None:
        return container_table(result.container, result.size)
    per_fragment = [_by_kind(track_counts(f)) for f in result.fragments]
    has_audio = any(audio for _, _, audio in per_fragment) or any(
        t.track_type == TRACK_TYPE_AUDIO for f in result.fragments for t in f.tracks
    )
    header = (
        "#",
        "fragment number",
        "producer time (UTC)",
        "server time (UTC)",
        "dur ms",
        "video",
        "key",
        *(("audio",) if has_audio else ()),
        "bytes",
        "tags",
    )
    rows: list[tuple[str, ...]] = [header]
    for index, (fragment, (video, keys, audio)) in enumerate(
        zip(result.fragments, per_fragment, strict=True)
    ):
        producer_tags = ", ".join(f"{t.name}={t.value}" for t in fragment.producer_tags)
        rows.append(
            (
                str(index),
                (fragment.fragment_number or "-") + (" (truncated)" if fragment.truncated else ""),
                _fmt_time(fragment.producer_timestamp),
                _fmt_time(fragment.server_timestamp),
                f"{fragment.duration_ns / 1e6:.0f}",
                str(video),
                str(keys),
                *((str(audio),) if has_audio else ()),
                str(fragment.size),
                producer_tags or "-",
            )
        )
    lines = _layout(rows)
    s = summary(result)
    tracks = result.fragments[0].tracks if result.fragments else ()
    described = ", ".join(
        _describe_track(t.codec_id, t.width, t.height, t.sampling_frequency, t.channels)
        for t in tracks
    )
    audio_part = f", {s['audio_frames']} audio frames" if has_audio else ""
    lines.append(
        f"{s['fragments']} fragments, {s['video_frames']} video frames "
        f"({s['video_keyframes']} key){audio_part}, "
        f"{s['duration_ms'] / 1000:.3f} s, {s['gaps']} gaps, {described or 'no tracks'}, "
        f"{s['size']} bytes" + (", the last fragment truncated" if s["truncated"] else "")
    )
    return "\n".join(lines)


def _describe_track(
    codec: str,
    width: int | None,
    height: int | None,
    rate: float | None = None,
    channels: int | None = None,
) -> str:
    if width:
        return f"{codec} {width}x{height}"
    if rate:
        return f"{codec} {rate:g} Hz" + (f" {channels} ch" if channels else "")
    return codec


def _spacing(times: tuple[float, ...]) -> str:
    intervals = [b - a for a, b in itertools.pairwise(times)]
    if not intervals:
        return ""
    low, high = min(intervals), max(intervals)
    if high - low < 0.0015:  # equal but for the millisecond rounding
        return f", every {low:.3f} s"
    return f", every {low:.3f} to {high:.3f} s"


def container_table(description: ContainerDescription, size: int) -> str:
    """The text form of a non-MKV input: tracks, key frames, would-be fragments."""
    d = description
    duration = f"{d.duration_s:.3f} s" if d.duration_s is not None else "unknown duration"
    lines = [
        f"not MKV/GetMedia: a {d.format_long_name} ({d.format_name}) container, "
        f"{duration}, {size} bytes, read through FFmpeg",
    ]
    for t in d.tracks:
        what = _describe_track(t.codec, t.width, t.height, t.sample_rate, t.channels)
        keys = f" ({t.keyframes} key)" if t.kind == "video" else ""
        lines.append(f"track {t.index}: {t.kind} {what}, {t.frames} frames{keys}")
    if d.keyframe_times:
        shown = " ".join(f"{t:.3f}" for t in d.keyframe_times[:20])
        more = " ..." if len(d.keyframe_times) > 20 else ""
        lines.append(f"key frames at (s): {shown}{more}{_spacing(d.keyframe_times)}")
    if d.fragments is None:
        lines.append(f"fragments: {d.fragments_note}")
        return "\n".join(lines)
    lines.append(
        f"as `kvs produce` would send it ({d.fragment_duration_ms} ms fragments, "
        "each starting on a video key frame):"
    )
    rows: list[tuple[str, ...]] = [("#", "start ms", "dur ms", "video", "key", "audio", "bytes")]
    rows.extend(
        (
            str(i),
            str(f.start_ms),
            str(f.duration_ms),
            str(f.video_frames),
            str(f.video_keyframes),
            str(f.audio_frames),
            str(f.size),
        )
        for i, f in enumerate(d.fragments)
    )
    lines.extend(_layout(rows))
    lines.append(f"{len(d.fragments)} fragments")
    return "\n".join(lines)


# --- other containers (PyAV) --------------------------------------------------------------
def describe_container(
    path: str, *, fragment_duration_ms: int | None = None
) -> ContainerDescription:
    """Describe a file FFmpeg can demux: tracks and key frames from its packets (no
    decoding), and the fragments the producer would cut from it.

    Raises :class:`~kvs_toolkit.errors.SourceError` when FFmpeg cannot read it or it
    has no audio or video.
    """
    import av

    from kvs_toolkit.producer.fragmenter import DEFAULT_FRAGMENT_DURATION_MS

    duration_ms = fragment_duration_ms or DEFAULT_FRAGMENT_DURATION_MS
    try:
        container = av.open(path, "r")
    except (av.FFmpegError, OSError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise SourceError(f"FFmpeg cannot read it either: {reason}") from exc
    with container:
        streams = [s for s in container.streams if s.type in ("video", "audio")]
        if not streams:
            raise SourceError(
                f"FFmpeg reads it as {container.format.name} but finds no audio or video in it"
            )
        frames = {s.index: 0 for s in streams}
        keys = {s.index: 0 for s in streams}
        first_video = container.streams.video[0] if container.streams.video else None
        video_index = first_video.index if first_video is not None else -1
        video_base = first_video.time_base if first_video is not None else None
        key_times: list[float] = []
        try:
            for packet in container.demux(streams):
                if packet.size == 0:  # the demuxer's end-of-stream marker
                    continue
                index = packet.stream.index
                frames[index] += 1
                if packet.is_keyframe:
                    keys[index] += 1
                    if index == video_index and packet.pts is not None and video_base:
                        key_times.append(float(packet.pts * video_base))
        except av.FFmpegError as exc:
            raise SourceError(f"FFmpeg stopped reading it: {exc}") from exc
        tracks = tuple(
            ContainerTrack(
                index=s.index,
                kind=s.type,
                codec=s.codec_context.name,
                frames=frames[s.index],
                keyframes=keys[s.index],
                width=getattr(s.codec_context, "width", None) or None,
                height=getattr(s.codec_context, "height", None) or None,
                sample_rate=getattr(s.codec_context, "sample_rate", None) or None,
                channels=getattr(s.codec_context, "channels", None) or None,
            )
            for s in streams
        )
        key_times.sort()
        origin = key_times[0] if key_times else 0.0
        total = None if container.duration is None else container.duration / av.time_base
        fragments, note = _would_be_fragments(path, duration_ms)
        return ContainerDescription(
            format_name=container.format.name,
            format_long_name=container.format.long_name,
            duration_s=None if total is None else round(total, 3),
            tracks=tracks,
            keyframe_times=tuple(round(t - origin, 3) for t in key_times),
            fragment_duration_ms=duration_ms,
            fragments=fragments,
            fragments_note=note,
        )


def _would_be_fragments(
    path: str, duration_ms: int
) -> tuple[tuple[WouldBeFragment, ...] | None, str | None]:
    """Run the producer's file source and fragmenter over ``path`` (nothing is sent).

    Each fragment's bytes are dropped as soon as it is counted: memory stays at one
    fragment whatever the file's length.
    """
    from kvs_toolkit.producer.fragmenter import Fragmenter, PendingFragment
    from kvs_toolkit.producer.sources import FileSource, SourceOptions

    options = SourceOptions(realtime=False, start_time_ms=0, fragment_duration_ms=duration_ms)
    try:
        source = FileSource(path, options)
    except KvsError as exc:
        return None, str(exc)
    with source:
        try:
            tracks = source.tracks
        except KvsError as exc:
            return None, f"kvs produce could not read it: {exc}"
        if source.encoder is not None:
            return None, (
                f"kvs produce would re-encode this {source.video_codec} video as "
                f"{options.codec}, so its fragments would follow the encoder's key frames"
            )
        kinds = {t.number: _TRACK_TYPES.get(t.track_type, "") for t in tracks}
        fragmenter = Fragmenter(tracks, fragment_duration_ms=duration_ms)
        out: list[WouldBeFragment] = []
        stats: dict[int, list[int]] = {}  # id(fragment) -> [video, keys, audio, first, last]

        def finish(fragment: PendingFragment, next_start: int | None) -> None:
            video, keys, audio, first, last = stats.pop(id(fragment))
            if next_start is not None:
                span = next_start - fragment.timecode
            elif video > 1:  # the last one: its frames' span plus one frame interval
                span = (last - first) + (last - first) // (video - 1)
            else:
                span = last - fragment.timecode
            out.append(
                WouldBeFragment(
                    start_ms=fragment.timecode,
                    duration_ms=span,
                    video_frames=video,
                    video_keyframes=keys,
                    audio_frames=audio,
                    size=fragment.size,
                )
            )

        try:
            for frame in source:
                current, completed = fragmenter.add(frame)
                for done in completed:
                    finish(done, frame.timestamp_ms)
                if current is None:
                    continue
                entry = stats.setdefault(
                    id(current), [0, 0, 0, frame.timestamp_ms, frame.timestamp_ms]
                )
                if kinds.get(frame.track_number) == "video":
                    entry[0] += 1
                    entry[1] += frame.keyframe
                    entry[3] = min(entry[3], frame.timestamp_ms)
                    entry[4] = max(entry[4], frame.timestamp_ms)
                elif kinds.get(frame.track_number) == "audio":
                    entry[2] += 1
        except KvsError as exc:
            return None, f"kvs produce would stop on it: {exc}"
        last = fragmenter.flush(end_of_fragment_tag=False)
        if last is not None:
            finish(last, None)
    origin = out[0].start_ms if out else 0
    return tuple(
        WouldBeFragment(
            f.start_ms - origin,
            f.duration_ms,
            f.video_frames,
            f.video_keyframes,
            f.audio_frames,
            f.size,
        )
        for f in out
    ), None
