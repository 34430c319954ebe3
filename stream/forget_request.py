"""Forget requests: ``{"ids": [...]}`` or ``{"source": "..."}`` (exactly one), over HTTP or the forget topic.

One parser for both ways in, so ``POST /v1/forget`` and a message on ``source.kafka.forget_topic``
accept and refuse the same things. Ids follow events' rules (a string or an integer, at most
``limits.max_id_chars``); a source follows the event field's.

>>> validate_forget({"ids": ["a", 7, "a"]}, EventLimits(), max_ids=10).ids
('a', '7')
>>> validate_forget({"source": "feed-3"}, EventLimits(), max_ids=10).source
'feed-3'
>>> validate_forget({"ids": ["a"], "source": "s"}, EventLimits(), max_ids=10)
Traceback (most recent call last):
...
lifelong.stream.errors.InvalidEvent: schema: give exactly one of 'ids' or 'source'
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import InvalidEvent
from .events import EventLimits, check_name, load_json

FIELDS = frozenset({"ids", "source"})


@dataclass(frozen=True)
class ForgetRequest:
    """What to forget: these event ids, or every event of one source made before ``at``."""

    ids: tuple[str, ...] = ()
    source: str | None = None
    at: float | None = None  # seconds since the epoch when it was made (set by whoever received it)


class TooManyIds(InvalidEvent):
    """More ids than ``forget.max_ids_per_request`` (HTTP 413; a dead letter from the forget topic)."""

    def __init__(self, n: int, limit: int) -> None:
        super().__init__("too_many_ids", "ids", f"{n} ids, limit forget.max_ids_per_request={limit} (split it)")


def _source(value: Any, limits: EventLimits) -> str:
    if type(value) is not str or not value:
        raise InvalidEvent("schema", "source", "a source is a non-empty string")
    check_name(value, "source", limits)
    return value


def _ids(value: Any, limits: EventLimits, max_ids: int) -> tuple[str, ...]:
    if type(value) is not list or not value:
        raise InvalidEvent("schema", "ids", "a non-empty list of event ids")
    if len(value) > max_ids:
        raise TooManyIds(len(value), max_ids)
    out = []
    for i, raw in enumerate(value):
        event_id = str(raw) if type(raw) is int else raw  # "3" and 3 name the same event (events.Event.id)
        if type(event_id) is not str or not event_id:
            raise InvalidEvent("schema", f"ids.{i}", "an event id is a non-empty string or an integer")
        check_name(event_id, f"ids.{i}", limits)
        out.append(event_id)
    return tuple(dict.fromkeys(out))  # each id once, in order


def validate_forget(obj: Any, limits: EventLimits, max_ids: int) -> ForgetRequest:
    """A parsed request, or :class:`InvalidEvent` naming the field (:class:`TooManyIds` past ``max_ids``)."""
    if not isinstance(obj, dict):
        raise InvalidEvent("schema", "", "a forget request is a JSON object")
    unknown = sorted(set(obj) - FIELDS)
    if unknown:
        raise InvalidEvent("schema", unknown[0], "unknown field: a forget request has 'ids' or 'source'")
    if ("ids" in obj) == ("source" in obj):
        raise InvalidEvent("schema", "", "give exactly one of 'ids' or 'source'")
    if "source" in obj:
        return ForgetRequest(source=_source(obj["source"], limits))
    return ForgetRequest(ids=_ids(obj["ids"], limits, max_ids))


def decode_forget(raw: bytes | str, limits: EventLimits, max_ids: int) -> ForgetRequest:
    """Parse one forget message (the record limits of events apply)."""
    return validate_forget(load_json(raw, limits), limits, max_ids)
