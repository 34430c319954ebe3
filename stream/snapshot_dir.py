"""The snapshot channel in a local folder: learner and predictors on one machine, no broker.

The same contract as the Kafka channel (``stream/snapshot_channel.py``), so the
service's publisher and follower do not know which one they use:

- **Atomic writes.** One write (a snapshot's chunks, its manifest, a heartbeat)
  is one file, ``<sequence>.log``, written beside its final name, flushed to
  disk and renamed into place: a reader sees all of it or none of it, even if
  the writer dies midway (a leftover ``.tmp`` file is never read).
- **Fencing.** A writer takes the next *epoch* of its transactional id at start
  (``<id>.epoch``); every write checks, under an ``flock`` on ``.lock``, that
  the epoch is still its own before the rename, so a zombie learner can never
  publish after its replacement started (:class:`ChannelFenced`).
- **Compaction by key.** After a write, an older file whose every key has a
  later record is deleted, and one with some superseded keys is rewritten with
  only its latest records, like Kafka's log compaction: a reader that starts
  later still finds the latest snapshot in full, and the folder holds about one
  snapshot, not one per publish.

A record's offset is its file's sequence number times 2**16 plus its place in
the file, so offsets rise in write order as they do on a Kafka partition.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import struct
import time
from pathlib import Path
from typing import Iterator

from .snapshot_channel import POLL_RECORDS, ChannelError, ChannelFenced, ChannelRecord, Headers

log = logging.getLogger(__name__)

SUFFIX = ".log"
_MAGIC = b"LLSC1\n"
_LEN = struct.Struct("<I")
Record = tuple[bytes, bytes, Headers]


def _pack(records: list[Record]) -> bytes:
    out = [_MAGIC, _LEN.pack(len(records))]
    for key, value, headers in records:
        parts = [key, value] + [p for name, v in headers for p in (name.encode(), v)]
        out.append(_LEN.pack(len(headers)))
        out += [_LEN.pack(len(p)) + p for p in parts]
    return b"".join(out)


def _unpack(data: bytes) -> list[Record]:
    """The records of one file; ValueError for anything that is not a whole file of this format."""
    if not data.startswith(_MAGIC):
        raise ValueError("not a snapshot channel file")
    pos = len(_MAGIC)

    def take() -> bytes:
        nonlocal pos
        (n,) = _LEN.unpack_from(data, pos)
        if pos + 4 + n > len(data):
            raise ValueError("truncated")
        pos += 4 + n
        return data[pos - n:pos]

    try:
        (count,) = _LEN.unpack_from(data, pos)
        pos += 4
        records = []
        for _ in range(count):
            (nh,) = _LEN.unpack_from(data, pos)
            pos += 4
            key, value = take(), take()
            headers = [(take().decode(), take()) for _ in range(nh)]
            records.append((key, value, headers))
    except struct.error as exc:
        raise ValueError(f"truncated: {exc}") from None
    if pos != len(data):
        raise ValueError("trailing bytes")
    return records


def _sequences(folder: Path) -> list[int]:
    out = []
    for name in os.listdir(folder):
        stem = name[:-len(SUFFIX)]
        if name.endswith(SUFFIX) and stem.isdigit():
            out.append(int(stem))
    return sorted(out)


def _path(folder: Path, seq: int) -> Path:
    return folder / f"{seq:016d}{SUFFIX}"


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DirSnapshotWriter:
    """Writes groups of records to ``folder`` atomically (one file each), fenced by ``transactional_id``."""

    def __init__(self, folder: str | Path, transactional_id: str) -> None:
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ChannelError(f"snapshot folder {self.folder}: {exc}") from exc
        self._epoch_path = self.folder / f"{transactional_id}.epoch"
        with self._locked():
            self.epoch = self._read_epoch() + 1
            _write_atomic(self._epoch_path, str(self.epoch).encode())
        self._keys: dict[int, set[bytes]] = {}  # sequence -> the keys its file holds
        for seq in _sequences(self.folder):
            with contextlib.suppress(OSError, ValueError):
                self._keys[seq] = {key for key, _, _ in _unpack(_path(self.folder, seq).read_bytes())}

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.folder / ".lock", "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def _read_epoch(self) -> int:
        try:
            return int(self._epoch_path.read_text().strip() or 0)
        except FileNotFoundError:
            return 0
        except ValueError:
            return 0

    def partitions(self) -> int:
        return 1

    def write(self, records: list[Record], partition: int = 0) -> None:
        """All of ``records`` in one file; raises ChannelFenced or ChannelError (nothing visible then)."""
        data = _pack(records)
        try:
            with self._locked():
                if self._read_epoch() != self.epoch:
                    raise ChannelFenced(f"{self._epoch_path.name} moved past epoch {self.epoch}: a newer writer "
                                        "started")
                seqs = _sequences(self.folder)
                seq = (seqs[-1] + 1) if seqs else 1
                _write_atomic(_path(self.folder, seq), data)
                _fsync_dir(self.folder)
                self._keys[seq] = {key for key, _, _ in records}
                try:
                    self._compact(seq)
                except OSError as exc:  # written and visible: compaction is tried again next write
                    log.warning("compacting the snapshot folder %s failed: %s", self.folder, exc)
        except OSError as exc:
            raise ChannelError(f"snapshot folder {self.folder}: {exc}") from exc

    def _compact(self, newest: int) -> None:
        """Delete or rewrite older files whose keys later files hold (under the lock)."""
        later: set[bytes] = set(self._keys[newest])
        for seq in sorted((s for s in self._keys if s < newest), reverse=True):
            keys = self._keys[seq]
            if keys <= later:
                _path(self.folder, seq).unlink(missing_ok=True)
                del self._keys[seq]
            elif keys & later:
                path = _path(self.folder, seq)
                try:
                    kept = [r for r in _unpack(path.read_bytes()) if r[0] not in later]
                except (FileNotFoundError, ValueError):  # another writer's, compacted by it meanwhile
                    del self._keys[seq]
                    continue
                _write_atomic(path, _pack(kept))
                self._keys[seq] = {r[0] for r in kept}
            later |= keys

    def close(self) -> None:
        pass


class DirSnapshotReader:
    """Reads every record in ``folder`` from the oldest file, then follows new files."""

    def __init__(self, folder: str | Path, poll_interval_s: float = 0.02) -> None:
        self.folder = Path(folder)
        self.poll_interval_s = poll_interval_s
        self._last = 0  # the newest sequence read

    def _new(self) -> list[int]:
        try:
            seqs = _sequences(self.folder)
        except FileNotFoundError:
            return []  # no learner has written yet
        if seqs and seqs[-1] < self._last:
            self._last = 0  # the folder was emptied and written anew: read it from its start
        return [s for s in seqs if s > self._last]

    def poll(self, timeout_s: float, max_records: int = POLL_RECORDS) -> list[ChannelRecord]:
        deadline = time.monotonic() + timeout_s
        while True:
            out = self._read(self._new(), max_records)
            if out or time.monotonic() >= deadline:
                return out
            time.sleep(min(self.poll_interval_s, max(0.0, deadline - time.monotonic())))

    def _read(self, seqs: list[int], max_records: int) -> list[ChannelRecord]:
        out: list[ChannelRecord] = []
        for seq in seqs:
            if len(out) >= max_records:
                break
            try:
                records = _unpack(_path(self.folder, seq).read_bytes())
            except FileNotFoundError:
                records = []  # compacted away: later files hold its keys
            except ValueError:
                records = []  # not ours (renamed into place whole, so never half-written)
            out += [ChannelRecord(key, value, headers, 0, (seq << 16) + i)
                    for i, (key, value, headers) in enumerate(records)]
            self._last = seq
        return out

    def caught_up(self) -> bool:
        return not self._new()

    def close(self) -> None:
        pass
