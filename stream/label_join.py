"""Joins delayed labels to their events, in whichever order the two arrive.

The pending store keeps what the learner needs later (tap features, not raw
text) keyed by event id; the early-label store keeps labels whose event has
not been read yet. Both are bounded in count and in age: the oldest entry goes
when one is full, and entries older than ``max_age_s`` expire.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Literal

import numpy as np

JoinOutcome = Literal["joined", "unknown_id", "duplicate", "expired"]


@dataclass
class Pending:
    payload: Any
    added_at: float


def _remove_where(items: OrderedDict[str, Pending], forgotten: Callable[[list[str]], np.ndarray]) -> list[str]:
    ids = list(items)
    gone = [i for i, hit in zip(ids, forgotten(ids)) if hit] if ids else []
    for event_id in gone:
        del items[event_id]
    return gone


class PendingStore:
    def __init__(self, max_items: int = 100_000, max_age_s: float = 3600.0,
                 clock: Callable[[], float] = time.monotonic, remember_joined: int = 100_000) -> None:
        self.max_items = max_items
        self.max_age_s = max_age_s
        self._clock = clock
        self._items: OrderedDict[str, Pending] = OrderedDict()
        # Ids recently joined or expired, to tell a duplicate or late label from
        # an unknown id; bounded like everything else.
        self._done: OrderedDict[str, JoinOutcome] = OrderedDict()
        self._remember = remember_joined
        self.evicted = 0
        self.expired = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, event_id: str) -> bool:
        return event_id in self._items

    def mark_joined(self, event_id: str) -> None:
        """Record that ``event_id`` was joined without being parked (its label came first)."""
        self._mark(event_id, "joined")

    def _mark(self, event_id: str, outcome: JoinOutcome) -> None:
        self._done[event_id] = outcome
        while len(self._done) > self._remember:
            self._done.popitem(last=False)

    def add(self, event_id: str, payload: Any) -> int:
        """Park ``payload`` under ``event_id``; returns how many old entries it pushed out."""
        self._items[event_id] = Pending(payload, self._clock())
        self._items.move_to_end(event_id)
        evicted = 0
        while len(self._items) > self.max_items:
            old_id, _ = self._items.popitem(last=False)
            self._mark(old_id, "expired")
            evicted += 1
        self.evicted += evicted
        return evicted

    def remove(self, event_id: str) -> tuple[Any, float] | None:
        """Take ``event_id``'s payload and age out (handed to another replica); None if it is not here."""
        entry = self._items.pop(event_id, None)
        return None if entry is None else (entry.payload, self._clock() - entry.added_at)

    def remove_where(self, forgotten: Callable[[list[str]], np.ndarray]) -> list[str]:
        """Take out the entries whose ids ``forgotten`` marks (given every id, it answers a bool mask; a forget
        request): gone as if never parked, so a later label for one is an unknown id. Returns their ids.
        The ids it remembers as joined or expired go too (they are kept in checkpoints)."""
        done = list(self._done)
        for event_id in [i for i, hit in zip(done, forgotten(done)) if hit] if done else []:
            del self._done[event_id]
        return _remove_where(self._items, forgotten)

    def peek(self, event_id: str) -> tuple[Any, float] | None:
        """``event_id``'s payload and age, left in place."""
        entry = self._items.get(event_id)
        return None if entry is None else (entry.payload, self._clock() - entry.added_at)

    def add_aged(self, event_id: str, payload: Any, age_s: float) -> int:
        """:meth:`add` for an entry that has waited ``age_s`` elsewhere already (its wait limit keeps running)."""
        evicted = self.add(event_id, payload)
        if event_id in self._items:
            self._items[event_id].added_at -= max(0.0, age_s)
        return evicted

    def expire(self) -> int:
        """Drop entries older than ``max_age_s``; returns how many went."""
        cutoff = self._clock() - self.max_age_s
        n = 0
        while self._items:
            event_id, entry = next(iter(self._items.items()))
            if entry.added_at >= cutoff:
                break
            self._items.popitem(last=False)
            self._mark(event_id, "expired")
            n += 1
        self.expired += n
        return n

    def take(self, event_id: str) -> tuple[JoinOutcome, Any]:
        """Remove and return the pending payload for a label's event id."""
        self.expire()
        entry = self._items.pop(event_id, None)
        if entry is not None:
            self._mark(event_id, "joined")
            return "joined", entry.payload
        previous = self._done.get(event_id)
        if previous == "joined":
            return "duplicate", None
        if previous == "expired":
            return "expired", None
        return "unknown_id", None

    def oldest_age_s(self) -> float:
        if not self._items:
            return 0.0
        return self._clock() - next(iter(self._items.values())).added_at

    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Pending payloads (arrays of one shape) with their ages; ids and outcomes as metadata."""
        now = self._clock()
        ids = list(self._items)
        payloads = [np.asarray(self._items[i].payload) for i in ids]
        arrays = {"payloads": np.stack(payloads)} if payloads else {}
        meta = {"ids": ids, "ages_s": [now - self._items[i].added_at for i in ids],
                "done": list(self._done.items()), "evicted": self.evicted, "expired": self.expired}
        return arrays, meta

    def load_state_dict(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        # Ages, not clock readings, survive a restart: the wait limit keeps running.
        now = self._clock()
        payloads = arrays.get("payloads", np.zeros((0,)))
        self._items = OrderedDict(
            (i, Pending(payloads[n].copy(), now - age)) for n, (i, age) in enumerate(zip(meta["ids"], meta["ages_s"])))
        self._done = OrderedDict((i, o) for i, o in meta["done"])
        self.evicted = int(meta["evicted"])
        self.expired = int(meta["expired"])


class EarlyLabels:
    """Labels read before their event, waiting for it (the order-free half of the join).

    After a restart with a backlog on both topics, or with producers that do not
    order the two, a label can arrive first. It waits here, bounded like the
    pending events (``max_items`` and ``max_age_s``), and joins when its event
    comes. One that waits out its limit, or is pushed out when the store is
    full, ends as ``unknown_id``: what it would have been without the wait.
    """

    def __init__(self, max_items: int = 100_000, max_age_s: float = 3600.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_items = max_items
        self.max_age_s = max_age_s
        self._clock = clock
        self._items: OrderedDict[str, Pending] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, event_id: str) -> bool:
        return event_id in self._items

    def add(self, event_id: str, label: str) -> int:
        """Park ``label`` (the first label of an id wins: check ``in`` first); returns how many were pushed out."""
        if event_id in self._items:
            return 0
        self._items[event_id] = Pending(label, self._clock())
        evicted = 0
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)
            evicted += 1
        return evicted

    def remove(self, event_id: str) -> tuple[str, float] | None:
        """The label waiting for ``event_id`` and its age, taken out (handed to another replica)."""
        entry = self._items.pop(event_id, None)
        return None if entry is None else (str(entry.payload), self._clock() - entry.added_at)

    def remove_where(self, forgotten: Callable[[list[str]], np.ndarray]) -> list[str]:
        """Take out the labels whose event ids ``forgotten`` marks (a forget request); returns those ids."""
        return _remove_where(self._items, forgotten)

    def peek(self, event_id: str) -> tuple[str, float] | None:
        entry = self._items.get(event_id)
        return None if entry is None else (str(entry.payload), self._clock() - entry.added_at)

    def add_aged(self, event_id: str, label: str, age_s: float) -> int:
        """:meth:`add` for a label that has waited ``age_s`` elsewhere already."""
        evicted = self.add(event_id, label)
        if event_id in self._items:
            self._items[event_id].added_at -= max(0.0, age_s)
        return evicted

    def take(self, event_id: str) -> str | None:
        """The label waiting for ``event_id`` (removed), or None."""
        entry = self._items.pop(event_id, None)
        return None if entry is None else str(entry.payload)

    def expire(self) -> int:
        """Drop labels that waited longer than ``max_age_s``; returns how many went."""
        cutoff = self._clock() - self.max_age_s
        n = 0
        while self._items and next(iter(self._items.values())).added_at < cutoff:
            self._items.popitem(last=False)
            n += 1
        return n

    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        now = self._clock()
        return {}, {"items": [[i, str(p.payload), now - p.added_at] for i, p in self._items.items()]}

    def load_state_dict(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        now = self._clock()
        self._items = OrderedDict((str(i), Pending(str(label), now - float(age))) for i, label, age in meta["items"])
