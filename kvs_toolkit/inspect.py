"""``kvs inspect``: what is in a GetMedia capture or an MKV file, as a table or JSON."""

from __future__ import annotations

import datetime as dt
import itertools
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from kvs_toolkit.errors import MkvError
from kvs_toolkit.mkv import Fragment, FragmentReader

_CHUNK = 1 << 16


@dataclass
class InspectResult:
    """Fragments read from one input, and the error that stopped reading (if any)."""

    fragments: list[Fragment] = field(default_factory=list)
    error: MkvError | None = None
    size: int = 0


def inspect_stream(chunks: Iterable[bytes]) -> InspectResult:
    """Read every fragment; on malformed input keep what was complete and the error."""
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
    result.error = reader.truncation
    return result


def read_chunks(stream: IO[bytes]) -> Iterator[bytes]:
    while chunk := stream.read(_CHUNK):
        yield chunk


def _epoch(value: dt.datetime | None) -> float | None:
    return None if value is None else round(value.timestamp(), 3)


def fragment_record(fragment: Fragment) -> dict[str, Any]:
    """The JSON shape of one fragment (documented in the README)."""
    video = fragment.video_track
    track = video or (fragment.tracks[0] if fragment.tracks else None)
    return {
        "fragment_number": fragment.fragment_number,
        "producer_timestamp": _epoch(fragment.producer_timestamp),
        "server_timestamp": _epoch(fragment.server_timestamp),
        "cluster_timecode": fragment.cluster_timecode,
        "duration_ms": round(fragment.duration_ns / 1e6, 3),
        "frames": len(fragment.frames),
        "keyframes": fragment.keyframe_count,
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
    return {
        "fragments": len(fragments),
        "frames": sum(len(f.frames) for f in fragments),
        "keyframes": sum(f.keyframe_count for f in fragments),
        "duration_ms": round((max(starts) - min(starts)) / 1e6 + fragments[-1].duration_ns / 1e6, 3)
        if starts
        else 0.0,
        "gaps": gaps,
        "codecs": codecs,
        "size": result.size,
    }


def to_json(result: InspectResult) -> str:
    doc: dict[str, Any] = {
        "fragments": [fragment_record(f) for f in result.fragments],
        "summary": summary(result),
    }
    if result.error is not None:
        doc["error"] = {"message": result.error.message, "offset": result.error.offset}
    return json.dumps(doc, indent=2)


def _fmt_time(value: dt.datetime | None) -> str:
    if value is None:
        return "-"
    return value.strftime("%Y-%m-%d %H:%M:%S.") + f"{value.microsecond // 1000:03d}"


def to_table(result: InspectResult) -> str:
    header = (
        "#",
        "fragment number",
        "producer time (UTC)",
        "server time (UTC)",
        "dur ms",
        "frames",
        "key",
        "bytes",
        "tags",
    )
    rows: list[tuple[str, ...]] = [header]
    for index, fragment in enumerate(result.fragments):
        number = fragment.fragment_number or "-"
        if len(number) > 20:
            number = number[:8] + "…" + number[-8:]
        producer_tags = ", ".join(f"{t.name}={t.value}" for t in fragment.producer_tags)
        rows.append(
            (
                str(index),
                number + (" (truncated)" if fragment.truncated else ""),
                _fmt_time(fragment.producer_timestamp),
                _fmt_time(fragment.server_timestamp),
                f"{fragment.duration_ns / 1e6:.0f}",
                str(len(fragment.frames)),
                str(fragment.keyframe_count),
                str(fragment.size),
                producer_tags or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  ".join((*cells, row[-1])))
    s = summary(result)
    tracks = result.fragments[0].tracks if result.fragments else ()
    sizes = ", ".join(
        f"{t.codec_id} {t.width}x{t.height}" if t.width else t.codec_id for t in tracks
    )
    lines.append(
        f"{s['fragments']} fragments, {s['frames']} frames ({s['keyframes']} key), "
        f"{s['duration_ms'] / 1000:.3f} s, {s['gaps']} gaps, {sizes or 'no tracks'}, "
        f"{s['size']} bytes"
    )
    return "\n".join(lines)
