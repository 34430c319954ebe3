"""Record validation for the stream: parse, check against the model's input, reject duplicates."""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Literal

import numpy as np

from .errors import InvalidEvent
from .events import Event, EventLimits, decode_event


class RecentIds:
    """A bounded set of the most recent event ids, for duplicate rejection."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._ids)

    def seen_or_add(self, event_id: str) -> bool:
        if self.capacity == 0:
            return False
        if event_id in self._ids:
            return True
        self._ids[event_id] = None
        if len(self._ids) > self.capacity:
            self._ids.popitem(last=False)
        return False

    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return {}, {"ids": list(self._ids)}

    def load_state_dict(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self._ids = OrderedDict.fromkeys(meta["ids"][-self.capacity:] if self.capacity else [])


class EventValidator:
    """Turns record bytes into an :class:`Event` the model can take, or raises :class:`InvalidEvent`."""

    def __init__(self, input_kind: Literal["text", "features"], input_dim: int | None, limits: EventLimits,
                 dedup_window: int) -> None:
        self.input_kind = input_kind
        self.input_dim = input_dim
        self.limits = limits
        self.recent_ids = RecentIds(dedup_window)

    def check_input(self, event: Event) -> None:
        if (event.text is not None) != (self.input_kind == "text"):
            wrong = "features" if self.input_kind == "text" else "text"
            raise InvalidEvent("wrong_input_kind", wrong, f"this service learns from {self.input_kind}")
        if event.features is not None and self.input_dim is not None and len(event.features) != self.input_dim:
            raise InvalidEvent("wrong_dimension", "features",
                               f"{len(event.features)} values, expected {self.input_dim}")

    def __call__(self, raw: bytes) -> Event:
        event = decode_event(raw, self.limits)
        self.check_input(event)
        # Only a valid event claims its id, so a corrected resend is not a duplicate.
        if self.recent_ids.seen_or_add(str(event.id)):
            raise InvalidEvent("duplicate_id", "id", f"event id {event.id!r} was already received")
        return event
