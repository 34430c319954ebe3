"""Follows one model key on the snapshot topic: assembles, checks and orders its snapshots.

Records are taken as they are read; :meth:`SnapshotFollower.settle` then tries
the waiting manifests newest first and swaps in the first that checks out, if
it is newer than the one served: (generation, version) never goes down, and
anything that fails a check is counted by reason and never served. While a
reader catches up on a long topic it only collects, settling when more than
``keep`` manifests wait, so a start unpacks one snapshot in ``keep`` at most.

Memory is bounded: chunks still waiting for their manifest are kept for at most
``keep`` snapshots (the most recently written); when its manifest arrives a
snapshot's chunks move aside with it, so chunks that never get one (forged)
cannot push out a real snapshot; waiting manifests are tried, never dropped.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

from ..learner.base import ServingModel
from ..learner.encoders import Encoder
from ..stream.snapshot_channel import ChannelRecord
from .snapshot_records import kind_of, parse_chunk_headers, parse_heartbeat
from .snapshot_wire import Manifest, SnapshotRejected, unpack

log = logging.getLogger(__name__)

Order = tuple[int, int]


@dataclass(frozen=True)
class _Waiting:
    manifest: Manifest
    read_live: bool  # read after catching up: its publish-to-swap latency means something


class SnapshotFollower:
    def __init__(self, model_key: str, encoder: Encoder, *, max_bytes: int,
                 on_reject: Callable[[str], None] = lambda reason: None,
                 on_swap: Callable[[ServingModel, Manifest, bool], None] = lambda snap, manifest, live: None,
                 keep: int = 4) -> None:
        self.model_key, self.encoder, self.max_bytes, self.keep = model_key, encoder, max_bytes, keep
        self._on_reject, self._on_swap = on_reject, on_swap
        self.served: Manifest | None = None
        self.latest_heard: Order = (0, 0)  # the newest (generation, version) any record named
        self.confirmed_at = float("nan")   # learner clock: when the served version was last stated as the latest
        self._chunks: dict[Order, dict[int, bytes]] = {}
        self._waiting: dict[Order, _Waiting] = {}
        self._ready: dict[Order, dict[int, bytes]] = {}  # the chunks of the waiting manifests

    @property
    def served_order(self) -> Order:
        return self.served.order if self.served else (-1, -1)

    def age_s(self, now: float | None = None) -> float:
        """Seconds since the learner last confirmed the served version (NaN before a first snapshot)."""
        if self.confirmed_at != self.confirmed_at:
            return float("nan")  # max() would turn NaN into 0: "just confirmed"
        return max(0.0, (time.time() if now is None else now) - self.confirmed_at)

    # -- taking records --------------------------------------------------------------------
    def take(self, records: list[ChannelRecord], live: bool) -> None:
        for record in records:
            kind = kind_of(record.key, self.model_key)
            if kind == "chunk":
                self._take_chunk(record)
            elif kind == "manifest":
                self._take_manifest(record, live)
            elif kind == "heartbeat":
                self._take_heartbeat(record)

    def _reject(self, reason: str, detail: str) -> None:
        log.warning("snapshot record rejected (%s): %s", reason, detail)
        self._on_reject(reason)

    def _take_chunk(self, record: ChannelRecord) -> None:
        try:
            generation, version, index = parse_chunk_headers(record.headers)
        except (KeyError, ValueError, UnicodeDecodeError):
            self._reject("format", f"chunk at offset {record.offset} without valid headers")
            return
        order = (generation, version)
        if order <= self.served_order:
            return
        chunks = self._chunks.pop(order, {})  # re-inserted last: the table is kept in order of arrival
        chunks[index] = record.value or b""
        self._chunks[order] = chunks
        self._trim(self._chunks)

    def _take_manifest(self, record: ChannelRecord, live: bool) -> None:
        try:
            manifest = Manifest.from_json(record.value)
        except SnapshotRejected as exc:
            self._reject(exc.reason, f"offset {record.offset}: {exc.detail}")
            return
        if manifest.model_key != self.model_key:
            self._reject("model_key", f"offset {record.offset}: manifest names {manifest.model_key[:40]!r}")
            return
        if manifest.order > self.served_order:
            # Its chunks came before it (same transaction, same partition): they leave the table of
            # chunks still waiting for a manifest, so chunks without one (forged) cannot evict them.
            self._ready[manifest.order] = self._chunks.pop(manifest.order, {})
            self._waiting.pop(manifest.order, None)
            self._waiting[manifest.order] = _Waiting(manifest, live)
            if len(self._waiting) > self.keep:
                self.settle()  # try them now rather than drop one untried (bounded while catching up)

    def _take_heartbeat(self, record: ChannelRecord) -> None:
        try:
            generation, version, at = parse_heartbeat(record.value)
        except ValueError:
            self._reject("format", f"heartbeat at offset {record.offset} unreadable")
            return
        self.latest_heard = max(self.latest_heard, (generation, version))
        if (generation, version) == self.served_order:
            self.confirmed_at = max(at, self.confirmed_at) if self.confirmed_at == self.confirmed_at else at

    def _trim(self, table: dict[Order, Any]) -> None:
        # The least recently written goes, not the lowest order: records that claim a huge
        # (generation, version) and never complete (forged chunks, say) would otherwise hold every
        # slot for good, and each real snapshot after them would be evicted on arrival (the
        # predictor frozen on its version, and a new one never ready).
        while len(table) > self.keep:
            del table[next(iter(table))]

    # -- serving ---------------------------------------------------------------------------
    def settle(self) -> bool:
        """Swap in the newest waiting snapshot that checks out; returns whether one was swapped in."""
        swapped = False
        for order in sorted(self._waiting, reverse=True):
            waiting = self._waiting[order]
            try:
                snapshot = unpack(waiting.manifest, self._ready.get(order, {}), self.encoder,
                                  max_bytes=self.max_bytes)
            except SnapshotRejected as exc:
                self._reject(exc.reason, f"generation {order[0]} version {order[1]}: {exc.detail}")
                continue
            self.served = waiting.manifest
            self.latest_heard = max(self.latest_heard, order)
            self.confirmed_at = waiting.manifest.created_at
            self._on_swap(snapshot, waiting.manifest, waiting.read_live)
            swapped = True
            break
        self._waiting.clear()  # tried, or older than what is served now
        self._ready.clear()
        for old in [o for o in self._chunks if o <= self.served_order]:
            del self._chunks[old]
        return swapped
