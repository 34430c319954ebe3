"""Event sources: a small protocol with a file-replay and a Kafka implementation.

A source yields :class:`Record` batches and takes back the positions that
are safe to commit. Offsets are "next to read", as Kafka commits them.
"""
from __future__ import annotations

import gzip
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

TopicPartition = tuple[str, int]


@dataclass(frozen=True)
class Record:
    value: bytes
    topic: str = ""
    partition: int = 0
    offset: int = -1
    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()  # Kafka record headers (the source header, when configured)
    timestamp_ms: int | None = None  # the Kafka record's timestamp (event time when the event has no ts)

    def header(self, name: str) -> bytes | None:
        """The last value of header ``name`` (Kafka allows repeats; the last one set wins), or None."""
        found = [value for key, value in self.headers if key == name]
        return found[-1] if found else None


class Source(Protocol):
    # Records read again below what was handed out already (a rejoin at an
    # older committed offset) and dropped by the source itself.
    skipped: int

    @property
    def exhausted(self) -> bool:
        """True when a finite source has nothing left (never for Kafka)."""
        ...

    def poll(self, max_records: int, timeout_s: float) -> list[Record]: ...

    def commit(self, offsets: dict[TopicPartition, int]) -> bool:
        """Commit ``offsets``; False when it did not hold (the caller tries again later)."""
        ...

    def lag(self) -> int | None:
        """Records behind the end of what this consumer reads; None when it cannot tell now."""
        ...

    def assigned(self) -> int:
        """How many partitions this consumer reads now."""
        ...

    def close(self) -> None: ...


def next_offsets(records: list[Record]) -> dict[TopicPartition, int]:
    """The offset after the last record of each partition in ``records``."""
    out: dict[TopicPartition, int] = {}
    for rec in records:
        tp = (rec.topic, rec.partition)
        out[tp] = max(out.get(tp, 0), rec.offset + 1)
    return out


class FileSource:
    """Replays a JSONL file (optionally gzip) line by line; the offset is the line number."""

    def __init__(self, path: str | Path, start_offset: int = 0, name: str | None = None) -> None:
        self.path = Path(path)
        self.name = name or self.path.name
        opener = gzip.open if self.path.suffix == ".gz" else open
        self._fh: io.BufferedIOBase = opener(self.path, "rb")  # type: ignore[assignment]
        self._offset = 0
        self._done = False
        self.skipped = 0  # a file is never read twice
        self.committed = start_offset
        for _ in range(start_offset):
            if not self._fh.readline():
                break
            self._offset += 1

    @property
    def exhausted(self) -> bool:
        return self._done

    def poll(self, max_records: int, timeout_s: float = 0.0) -> list[Record]:
        out: list[Record] = []
        while len(out) < max_records and not self._done:
            line = self._fh.readline()
            if not line:
                self._done = True
                break
            line = line.rstrip(b"\r\n")
            if line.strip():
                out.append(Record(line, self.name, 0, self._offset))
            self._offset += 1
        return out

    def commit(self, offsets: dict[TopicPartition, int]) -> bool:
        for (topic, _), offset in offsets.items():
            if topic == self.name:
                self.committed = max(self.committed, offset)
        return True

    def lag(self) -> int | None:
        return None  # unknown without reading the rest of the file

    def assigned(self) -> int:
        return 1

    def close(self) -> None:
        self._fh.close()
