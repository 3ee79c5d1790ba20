"""The real emulator, seen the way the producer tests look at a KVS service."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import boto3

from kvs_toolkit.emulator import Emulator
from kvs_toolkit.getmedia import iter_fragments
from kvs_toolkit.mkv import Fragment

ACCESS_KEY = "AKIDTEST"
SECRET = "secret"


@dataclass
class EmulatedKvs:
    """``created`` and ``fragments`` stay readable after the emulator stopped (a snapshot)."""

    emulator: Emulator
    existing: frozenset[str]
    snapshot: tuple[list[str], list[Fragment]] | None = None

    @property
    def url(self) -> str:
        return self.emulator.endpoint_url

    def client(self, service: str) -> Any:
        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET,
        )

    @property
    def created(self) -> list[str]:
        """Streams created during the test (not the ones it started with)."""
        if self.snapshot is not None:
            return self.snapshot[0]
        names = [
            s["StreamName"] for s in self.client("kinesisvideo").list_streams()["StreamInfoList"]
        ]
        return [n for n in names if n not in self.existing]

    @property
    def fragments(self) -> list[Fragment]:
        """Every stored fragment of every stream, read back with GetMediaForFragmentList."""
        if self.snapshot is not None:
            return self.snapshot[1]
        archived = self.client("kinesis-video-archived-media")
        out: list[Fragment] = []
        for info in self.client("kinesisvideo").list_streams()["StreamInfoList"]:
            listed = archived.list_fragments(StreamName=info["StreamName"])["Fragments"]
            numbers = sorted(f["FragmentNumber"] for f in listed)
            if numbers:
                response = archived.get_media_for_fragment_list(
                    StreamName=info["StreamName"], Fragments=numbers
                )
                out.extend(iter_fragments(response["Payload"]))
        return out


@contextmanager
def emulated_kvs(**retention: int) -> Iterator[EmulatedKvs]:
    """An emulator that verifies SigV4 (so only signed uploads get in), with streams made."""
    with Emulator(credentials={ACCESS_KEY: SECRET}) as emulator:
        kvs = EmulatedKvs(emulator, frozenset(retention))
        control = kvs.client("kinesisvideo")
        for name, hours in retention.items():
            control.create_stream(StreamName=name, DataRetentionInHours=hours)
        try:
            yield kvs
        finally:
            kvs.snapshot = (kvs.created, kvs.fragments)
