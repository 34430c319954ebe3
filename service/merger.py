"""A learner replica's merge duties, run by the learning loop after each step (``scaleout.learning.mode: merge``).

Each step it reads the merge channel (contributions of every replica, merged bases), rebases on a
newer base, contributes once it has learned ``merge_every_events`` since its last contribution,
and, while it is the reducer, folds the contributions no base holds yet into the next base.

Exactly once across a kill -9: a contribution leaves only after a checkpoint holds it (with the
input offsets of the events it covers). A replica killed before that checkpoint restarts from the
previous one and learns those events again, never sent; one killed after it restarts with the
contribution pending and sends it again, and the reducer merges each (replica, seq) once.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any, Callable

import numpy as np

from ..learner.merge_wire import MergeWireError, pack_base, pack_contribution, unpack_base, unpack_contribution
from ..learner.merging import Contribution, MergeBase, empty_parts, reduce
from ..learner.replica import Replica
from ..monitoring.metrics import Metrics
from ..stream.snapshot_channel import POLL_RECORDS, ChannelError, ChannelFenced
from . import handoff
from . import merge_channel as channel
from .config import Settings

log = logging.getLogger(__name__)

REFENCE_AFTER_S = 30.0  # a reducer fenced by another waits this long before it may take the role back


class Merger:
    def __init__(self, settings: Settings, learner: Any, metrics: Metrics) -> None:
        self.settings, self.cfg, self.metrics = settings, settings.scaleout.learning, metrics
        name = self.cfg.replica_id or settings.source.kafka.instance_id or f"{socket.gethostname()}-{os.getpid()}"
        self.replica = Replica(learner, name, self.cfg.replay_items, seed=settings.learner.seed)  # refuses
        self.base = MergeBase(0, empty_parts(learner.encoder.dim, learner.embedding_dim))
        self.contributions: dict[str, Contribution] = {}  # the newest of each replica read from the channel
        self._reader: channel.Reader | None = None
        self._writer: channel.Writer | None = None
        self._reducer: channel.Writer | None = None
        self._assembler = channel.Assembler()
        self._unsent = False  # the pending contribution is not on the channel yet
        self._saved = False   # a checkpoint holds the pending contribution
        self._waiting_since: float | None = None
        self._fenced_at = -REFENCE_AFTER_S
        self._handoffs: list[handoff.Handoff] = []  # partitions' state other replicas handed on
        metrics.add_merge()

    # -- state -------------------------------------------------------------------------------------
    def state_part(self) -> tuple[dict[str, Any], dict[str, Any]]:
        arrays, meta = self.replica.state_dict()
        return arrays, meta | {"unsent": self._unsent}

    def load_part(self, arrays: dict[str, Any], meta: dict[str, Any]) -> None:
        self.replica.load_state_dict(arrays, meta)
        self.replica.name = self.cfg.replica_id or meta["name"]  # the checkpoint's name, unless one is set
        self._unsent = bool(meta.get("unsent")) or self.replica.pending is not None
        self._saved = True

    def describe(self) -> dict[str, Any]:
        """For /v1/model: with every replica stopped but one, ``events_in_model`` (the prototypes' count)
        equals ``events_merged`` plus this replica's ``events_unmerged``: each event counted once."""
        r = self.replica
        pending = r.pending[0].events if r.pending is not None and not self.base.holds(r.pending[0]) else 0
        return {"replica": r.name, "round": r.ref_round, "events_merged": self.base.events,
                "events_unmerged": r.events_since + pending,
                "events_in_model": int(r.learner.protos.counts.sum()), "pending": r.pending is not None,
                "reducer": self._reducer is not None}

    # -- the loop's calls ------------------------------------------------------------------------
    def connect(self, timeout_s: float = 30.0) -> bool:
        """Read the channel to its end (the newest base, unmerged contributions); whether the model moved."""
        self._reader = channel.reader(self.settings)
        self._writer = channel.writer(self.settings, channel.transactional_id(self.settings, self.replica.name))
        return self._read_to_end(timeout_s)

    def checkpointed(self) -> None:
        """A checkpoint just succeeded: it holds the pending contribution, which may now leave."""
        self._saved = self._saved or self.replica.pending is not None

    def step(self, reducer: bool, checkpoint: Callable[[], bool]) -> bool:
        """One round of merge duties; returns whether the learner's model moved (publish a snapshot)."""
        started = time.perf_counter()
        moved = self._take(self._reader.poll(0.0) if self._reader else [])
        if self.replica.pending is None and self.replica.events_since >= self.cfg.merge_every_events:
            self.replica.contribute()
            self._unsent, self._saved = True, False
            checkpoint()  # on success the loop calls checkpointed(); else sent after a later checkpoint
        if self._unsent and self._saved and self.replica.pending is not None:
            self._send()
        moved |= self._reduce_if_due(reducer)
        self.metrics.merge_seconds.inc(time.perf_counter() - started)
        return moved

    def finish(self, reducer: bool, checkpoint: Callable[[], bool]) -> None:
        """On a graceful stop: hand what was learned since the last contribution on before leaving."""
        deadline = time.monotonic() + 3 * self.cfg.merge_wait_s + 5
        while time.monotonic() < deadline:
            if self.replica.pending is None and self.replica.events_since:
                self.replica.contribute()
                self._unsent, self._saved = True, False
                checkpoint()
            self.step(reducer, checkpoint)
            done = self.replica.pending is None and not self.replica.events_since
            if done or (self.replica.pending is not None and not self._unsent and not reducer):
                return  # merged, or sent and left to the reducer
            time.sleep(0.1)
        log.warning("stopping with a contribution not merged yet (%s)", "sent" if not self._unsent else "unsent")

    def close(self) -> None:
        for c in (self._reader, self._writer, self._reducer):
            if c is not None:
                c.close()

    # -- reading -----------------------------------------------------------------------------------
    def _take(self, records: list[Any]) -> bool:
        newest: MergeBase | None = None
        for message in self._assembler.take(records):
            try:
                if message.kind == "contribution":
                    c = unpack_contribution(message.payload)
                    if c.seq >= self.contributions.get(c.replica, c).seq:
                        self.contributions[c.replica] = c
                elif message.kind == "handoff":
                    if message.sender != self.replica.name:
                        self._handoffs.append(handoff.unpack(message.payload))
                elif message.kind == "base":
                    b = unpack_base(message.payload)
                    if b.round > max(self.base.round, newest.round if newest else -1):
                        newest = b
            except ValueError as exc:  # MergeWireError, or a damaged handoff
                self.metrics.merge_rejects.inc()
                log.warning("merge channel: a %s from %s refused: %s", message.kind, message.sender, exc)
        return self._adopt(newest) if newest is not None else False

    def _adopt(self, base: MergeBase) -> bool:
        """Rebase on ``base``, with its round's contributions' replay samples as read from the channel."""
        base.replay = [self.contributions[r] for r, seq in base.sources
                       if r in self.contributions and self.contributions[r].seq == seq]
        self.base = base
        self.metrics.merge_round.set(base.round)
        self.metrics.merge_events.set(base.events)
        moved = self.replica.rebase(base)
        if self.replica.pending is None:
            self._unsent = False  # merged: sent by this replica before a restart, or read back just now
        return moved

    def receive(self) -> list[handoff.Handoff]:
        """Partitions' state other replicas handed on (read from the merge channel by :meth:`step`)."""
        taken, self._handoffs = self._handoffs, []
        return taken

    # -- writing -----------------------------------------------------------------------------------
    def send(self, h: handoff.Handoff) -> bool:
        """Send the state of partitions this replica lost (parked events, dedup ids) to the others; whether it went."""
        message = channel.Message("handoff", self.replica.name, handoff.pack(h))
        try:
            channel.send(self._writer, message, self.cfg.chunk_bytes)  # type: ignore[arg-type]
        except ChannelError as exc:
            log.warning("%d parked events not handed on (kept here): %s", len(h.ids), exc)
            return False
        return True

    def _send(self) -> None:
        assert self.replica.pending is not None and self._writer is not None
        message = channel.Message("contribution", self.replica.name, pack_contribution(self.replica.pending[0]))
        try:
            channel.send(self._writer, message, self.cfg.chunk_bytes)
        except ChannelError as exc:
            log.warning("contribution not sent (retried next step): %s", exc)
            return
        self._unsent = False
        self.metrics.merge_contributions.inc()

    def _reduce_if_due(self, wanted: bool) -> bool:
        if not wanted or time.monotonic() - self._fenced_at < REFENCE_AFTER_S:
            if self._reducer is not None:
                self._reducer.close()
                self._reducer = None
            return False
        if self._reducer is None:
            # Fences the previous reducer; then read to the end, so no base it committed is missed.
            self._reducer = channel.writer(self.settings, channel.transactional_id(self.settings, "reducer"))
            log.info("replica %s reduces merges from now on (round %d)", self.replica.name, self.base.round)
            return self._read_to_end(10.0)
        fresh = self.base.fresh(list(self.contributions.values()))
        if not fresh:
            self._waiting_since = None
            return False
        now = time.monotonic()
        self._waiting_since = self._waiting_since or now
        expected = {r for r, _ in self.base.sources}
        if not expected <= {c.replica for c in fresh} and now - self._waiting_since < self.cfg.merge_wait_s:
            return False
        new = reduce(self.base, fresh)
        try:
            channel.send(self._reducer, channel.Message("base", "reducer", pack_base(new, replay=False)),
                         self.cfg.chunk_bytes)
        except ChannelFenced:
            log.warning("another replica reduces now (this one was fenced); stepping back for %.0f s",
                        REFENCE_AFTER_S)
            self._fenced_at, self._reducer = time.monotonic(), None
            return False
        except ChannelError as exc:
            log.warning("merged base not written (retried next step): %s", exc)
            return False
        self._waiting_since = None
        self.metrics.merge_bases.inc()
        return self._adopt(new)

    def _read_to_end(self, timeout_s: float) -> bool:
        moved, deadline = False, time.monotonic() + timeout_s
        while self._reader is not None and time.monotonic() < deadline:
            got = self._reader.poll(0.2)
            moved |= self._take(got)
            if len(got) < POLL_RECORDS and self._reader.caught_up():
                break
        return moved
