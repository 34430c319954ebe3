"""Record validation for the stream: parse, check against the model's input, reject duplicates."""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import orjson

from .errors import InvalidEvent
from .events import EventLimits, decode_event

_KEYS = frozenset({"id", "ts", "text", "features", "label", "segment", "split", "key", "source"})
_QUOTED = {k: b'"%s"' % k.encode() for k in _KEYS}


@dataclass(frozen=True, slots=True)
class ParsedEvent:
    """A valid event as the learning loop reads it (the fields of :class:`~.events.Event`)."""

    id: str
    text: str | None
    features: list[float] | None
    label: str | None
    ts: float | None = None
    key: str | None = None  # scaleout.learning.mode per_key: the model it teaches
    source: str | None = None  # who sent it (forget by source, the influence bound)


def _name(value: Any, max_chars: int) -> str | None:
    """An id or label as a string: str (1 to max_chars) or int, not bool; None if it is neither."""
    kind = type(value)
    if kind is int:
        name = str(value)
        return name if len(name) <= max_chars else None
    if kind is str and 0 < len(value) <= max_chars:
        return value
    return None


def _fast_parse(raw: bytes, limits: EventLimits) -> ParsedEvent | None:
    """The common well-formed record, checked without pydantic (~10x faster); None means "not sure":
    the caller then runs the full validation, which accepts or names the exact reason.

    orjson refuses what the full check must name (lone surrogates, nesting past 1024), so a
    record this accepts is valid UTF-8 throughout; its shape is at most two levels deep."""
    if raw[:3] == b"\xef\xbb\xbf":
        return None  # orjson skips a byte order mark; the full check refuses it
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if type(obj) is not dict or not obj.keys() <= _KEYS:
        return None
    # orjson keeps the last of two equal keys; a key's quoted name can appear only as a key or as a
    # value equal to it (inside a string a quote is escaped), so seeing one twice is a cheap "not sure".
    if any(raw.count(_QUOTED[k]) > 1 for k in obj):
        return None
    raw_label = obj.get("label")
    event_id = _name(obj.get("id"), limits.max_id_chars)
    label = None if raw_label is None else _name(raw_label, limits.max_id_chars)
    raw_key, raw_source = obj.get("key"), obj.get("source")  # strings only (others: the full check's to refuse)
    key = raw_key if type(raw_key) is str and 0 < len(raw_key) <= limits.max_id_chars else None
    source = raw_source if type(raw_source) is str and 0 < len(raw_source) <= limits.max_id_chars else None
    if event_id is None or (raw_label is not None and label is None) or (raw_key is not None and key is None) \
            or (raw_source is not None and source is None):
        return None
    segment = obj.get("segment")
    if (type(obj.get("ts")) not in (int, float, type(None)) or obj.get("split") not in (None, "train", "test")
            or not (segment is None or (type(segment) is str and len(segment) <= 256))):
        return None  # unusual metadata: leave it to the full check
    text, features = obj.get("text"), obj.get("features")
    if text is not None:
        if features is not None or type(text) is not str or len(text) > limits.max_text_chars:
            return None
    else:
        if type(features) is not list or len(features) > limits.max_features:
            return None
        try:
            # sum() is C-fast and fails on anything but numbers; inf or NaN anywhere makes it
            # non-finite (so may an overflow of finite values: the full check then accepts those).
            if not math.isfinite(sum(features)):
                return None
        except (TypeError, OverflowError):
            return None
    ts = obj.get("ts")
    return ParsedEvent(event_id, text, features, label,
                       None if ts is None else float(ts), key, source)


def parse_event(raw: bytes, limits: EventLimits) -> ParsedEvent:
    """Parse and validate one record; raises :class:`InvalidEvent` with the reason."""
    if len(raw) <= limits.max_record_bytes:
        fast = _fast_parse(raw, limits)
        if fast is not None:
            return fast
    event = decode_event(raw, limits)
    return ParsedEvent(str(event.id), event.text, event.features, event.label, event.ts, event.key, event.source)


class RecentIds:
    """A bounded set of the most recent event ids, for duplicate rejection (each with the partition it came
    from, where known: a replica that loses a partition hands its ids on with it)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[str, tuple[str, int] | None] = OrderedDict()
        self._sources: dict[str, int] = {}  # the source tag of each id whose event named one: a forgotten
        # source's ids leave the window with it (they are kept in checkpoints)

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, event_id: str) -> bool:
        return event_id in self._ids

    def seen_or_add(self, event_id: str, origin: tuple[str, int] | None = None, source: int = 0) -> bool:
        """Whether ``event_id`` is here already; if not, it is now (``source``: its source's tag, 0: none)."""
        if self.capacity == 0:
            return False
        if event_id in self._ids:
            return True
        self._ids[event_id] = origin
        if source:
            self._sources[event_id] = source
        if len(self._ids) > self.capacity:
            self._sources.pop(self._ids.popitem(last=False)[0], None)
        return False

    def discard(self, event_id: str) -> None:
        """Give an id back (its event was rejected after validation), so a corrected resend is accepted."""
        self._ids.pop(event_id, None)
        self._sources.pop(event_id, None)

    def of_sources(self, tags: set[int]) -> list[str]:
        """The ids here whose events named one of these source tags."""
        return [i for i, tag in self._sources.items() if tag in tags]

    def of_partitions(self, partitions: set[tuple[str, int]] | None) -> list[tuple[str, str, int]]:
        """The ids read from ``partitions`` (None: any), oldest first, each with its partition."""
        return [(i, *origin) for i, origin in self._ids.items()
                if origin is not None and (partitions is None or origin in partitions)]

    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        origins = [list(o) if o is not None else None for o in self._ids.values()]
        sources = [[i, tag] for i, tag in self._sources.items()]
        return {}, {"ids": list(self._ids)} | ({"origins": origins} if any(origins) else {}) | (
            {"sources": sources} if sources else {})

    def load_state_dict(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        ids = meta["ids"]
        origins = meta.get("origins") or [None] * len(ids)
        pairs = [(i, (str(o[0]), int(o[1])) if o else None) for i, o in zip(ids, origins)]
        self._ids = OrderedDict(pairs[-self.capacity:] if self.capacity else [])
        self._sources = {str(i): int(tag) for i, tag in meta.get("sources", []) if str(i) in self._ids}


class EventValidator:
    """Turns record bytes into an :class:`Event` the model can take, or raises :class:`InvalidEvent`."""

    def __init__(self, input_kind: Literal["text", "features"], input_dim: int | None, limits: EventLimits,
                 dedup_window: int) -> None:
        self.input_kind = input_kind
        self.input_dim = input_dim
        self.limits = limits
        self.recent_ids = RecentIds(dedup_window)

    def check_input(self, event: ParsedEvent) -> None:
        if (event.text is not None) != (self.input_kind == "text"):
            wrong = "features" if self.input_kind == "text" else "text"
            raise InvalidEvent("wrong_input_kind", wrong, f"this service learns from {self.input_kind}")
        if event.features is not None and self.input_dim is not None and len(event.features) != self.input_dim:
            raise InvalidEvent("wrong_dimension", "features",
                               f"{len(event.features)} values, expected {self.input_dim}")

    def __call__(self, raw: bytes, origin: tuple[str, int] | None = None) -> ParsedEvent:
        return self.claim(self.parse(raw), origin)

    def parse(self, raw: bytes) -> ParsedEvent:
        """A valid event this model can take (its id not claimed yet: see :meth:`claim`)."""
        event = parse_event(raw, self.limits)
        self.check_input(event)
        return event

    def claim(self, event: ParsedEvent, origin: tuple[str, int] | None = None, source: int = 0) -> ParsedEvent:
        """``event``, its id now taken; raises duplicate_id if it was taken already.

        Only a valid event claims its id, so a corrected resend is not a duplicate."""
        if self.recent_ids.seen_or_add(str(event.id), origin, source):
            raise InvalidEvent("duplicate_id", "id", f"event id {event.id!r} was already received")
        return event
