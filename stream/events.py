"""Event and label messages: pydantic models, JSON in and out.

An event is ``{"id", "ts"?, "text" | "features", "label"?, "key"?, "source"?}``; a label
message is ``{"id", "label", "key"?}``. ``key`` names the model an event teaches
under ``scaleout.learning.mode: per_key`` (a tenant, a product, a site); ``source`` names who sent it
(a user, a device, a feed), what ``POST /v1/forget {"source"}`` and the influence bound act on. :func:`decode_event` turns raw bytes into an
:class:`Event` or raises :class:`InvalidEvent` naming the field and reason.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError, field_validator, model_validator

from .errors import InvalidEvent, Reason

Label = StrictStr | StrictInt


def _as_str(value: str | int | None) -> str | None:
    # Labels and ids arrive as strings or integers; inside they are strings so
    # that "3" and 3 name the same class.
    return None if value is None else str(value)


class Inputs(BaseModel):
    """What a model reads: exactly one of ``text`` or ``features``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    text: StrictStr | None = None
    features: list[float] | None = None

    @field_validator("features")
    @classmethod
    def _finite(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and not all(math.isfinite(x) for x in v):
            raise ValueError("non_finite: features must be finite numbers (no NaN or infinity)")
        return v

    @model_validator(mode="after")
    def _exactly_one(self) -> "Inputs":
        if (self.text is None) == (self.features is None):
            raise ValueError("missing_input: give exactly one of 'text' or 'features'")
        return self


class Event(Inputs):
    id: StrictStr | StrictInt = Field(description="Unique event id (string or integer).")
    ts: float | None = Field(default=None, description="Event time, seconds since the epoch.")
    label: Label | None = Field(default=None, description="Class label, if known now.")
    key: StrictStr | None = Field(default=None, min_length=1, description="The model this event teaches "
                                  "(scaleout.learning.mode per_key; none: the default key). Produce it as the "
                                  "Kafka message key, so each key's events share a partition.")
    source: StrictStr | None = Field(default=None, min_length=1, description="Who sent the event (a user, a "
                                     "device, a feed): a forget request can remove all of a source's events, and "
                                     "the influence bound caps what one source teaches. At most "
                                     "limits.max_id_chars characters.")
    # Evaluation-only metadata for benchmark files; the learner never reads them.
    segment: StrictStr | None = Field(default=None, max_length=256, description="True segment (evaluation only).")
    split: Literal["train", "test"] | None = Field(default=None, description="Benchmark split (evaluation only).")

    @field_validator("id")
    @classmethod
    def _id_str(cls, v: str | int) -> str:
        s = str(v)
        if not s:
            raise ValueError("id must not be empty")
        return s  # the length limit (limits.max_id_chars) is checked by check_limits

    @field_validator("label")
    @classmethod
    def _label_str(cls, v: str | int | None) -> str | None:
        return _as_str(v)

    def to_json(self) -> str:
        return self.model_dump_json(exclude_none=True)


class LabelMessage(BaseModel):
    """A delayed label for an earlier event."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: StrictStr | StrictInt
    label: Label
    key: StrictStr | None = Field(default=None, min_length=1, description="The event's key (per_key mode): "
                                  "sent as the Kafka message key, the label reaches its event's partition.")

    @field_validator("id", "label")
    @classmethod
    def _str(cls, v: str | int) -> str:
        return str(v)


_M = TypeVar("_M", bound=Inputs)


@dataclass(frozen=True)
class EventLimits:
    """Explicit bounds on what one record may hold."""

    max_record_bytes: int = 1_000_000
    max_text_chars: int = 10_000
    max_features: int = 65_536
    max_json_depth: int = 64
    max_id_chars: int = 256

    @classmethod
    def of(cls, limits: Any) -> "EventLimits":
        """From anything with these attributes (the ``limits`` settings section)."""
        return cls(**{name: getattr(limits, name) for name in cls.__dataclass_fields__})


def _reason_for(err: dict[str, Any]) -> Reason:
    loc = err.get("loc", ())
    msg = str(err.get("msg", ""))
    for tag in ("non_finite", "missing_input"):
        if tag in msg:
            return tag  # type: ignore[return-value]
    if loc and loc[0] == "label" and err.get("type") != "extra_forbidden":
        return "bad_label"
    return "schema"


def _field_of(err: dict[str, Any]) -> str:
    # pydantic appends union-member tags ("label.str"); keep the field name and
    # list indices ("features.3"), which is what a user can act on.
    loc = err.get("loc", ())
    return ".".join(str(p) for i, p in enumerate(loc) if i == 0 or isinstance(p, int))


def _from_validation_error(exc: ValidationError) -> InvalidEvent:
    err = exc.errors(include_url=False)[0]
    field = _field_of(err)
    reason = _reason_for(err)
    msg = str(err.get("msg", "")).removeprefix("Value error, ")
    for tag in ("non_finite: ", "missing_input: "):
        msg = msg.removeprefix(tag)
    return InvalidEvent(reason, field, msg)


def check_name(value: str | None, field: str, limits: EventLimits) -> None:
    """An id or label within limits.max_id_chars (the same bound for events, label messages and HTTP)."""
    if value is not None and len(value) > limits.max_id_chars:
        reason: Reason = "bad_label" if field == "label" else "schema"
        raise InvalidEvent(reason, field, f"{len(value)} characters, limit limits.max_id_chars={limits.max_id_chars}")


def check_limits(inputs: Inputs, limits: EventLimits) -> None:
    if inputs.text is not None and len(inputs.text) > limits.max_text_chars:
        raise InvalidEvent("text_too_long", "text", f"{len(inputs.text)} characters, limit {limits.max_text_chars}")
    if inputs.features is not None and len(inputs.features) > limits.max_features:
        raise InvalidEvent("wrong_dimension", "features", f"{len(inputs.features)} values, limit {limits.max_features}")
    for field in ("id", "label", "key", "source"):
        check_name(getattr(inputs, field, None), field, limits)


def _bad_string(value: str) -> bool:
    # json.loads turns the escape "\ud800" into a lone surrogate: a str that no
    # UTF-8 encoder (tokenizer, Kafka, the HTTP answer) can take.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def check_tree(obj: Any, limits: EventLimits) -> None:
    """Nesting within limits.max_json_depth and every string encodable UTF-8, checked without recursion.

    ``field`` in the error is the top-level key under which the problem sits.
    """
    stack: list[tuple[Any, int, str]] = [(obj, 1, "")]
    while stack:
        value, depth, field = stack.pop()
        if isinstance(value, str):
            if _bad_string(value):
                raise InvalidEvent("bad_text", field, "not valid UTF-8 text (a lone surrogate escape?)")
            continue
        if not isinstance(value, (dict, list)):
            continue
        if depth > limits.max_json_depth:
            raise InvalidEvent("too_deep", field, f"nested deeper than limits.max_json_depth={limits.max_json_depth}")
        if isinstance(value, dict):
            for key, item in value.items():
                if _bad_string(key):
                    raise InvalidEvent("bad_text", field, "a key is not valid UTF-8 text")
                stack.append((item, depth + 1, field or key))
        else:
            stack.extend((item, depth + 1, field) for item in value if isinstance(item, (str, dict, list)))


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # {"id": "a", "id": "b"} means "b" to one parser and "a" to another: refuse it rather than guess.
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        raise _DuplicateKey(next(k for k, _ in pairs if k in seen or seen.add(k)))  # type: ignore[func-returns-value]
    return obj


def load_json(raw: bytes | str, limits: EventLimits) -> Any:
    """Parse one record: within the size and depth limits, one value per key, every string valid UTF-8."""
    if len(raw) > limits.max_record_bytes:
        raise InvalidEvent("oversized", "", f"{len(raw)} bytes, limit {limits.max_record_bytes}")
    if raw[:3] == b"\xef\xbb\xbf" or raw[:1] == "\ufeff":
        raise InvalidEvent("not_json", "", "starts with a byte order mark (JSON text has none)")
    try:
        obj = json.loads(raw, object_pairs_hook=_unique_keys)
    except _DuplicateKey as exc:
        raise InvalidEvent("schema", exc.key if not _bad_string(exc.key) else "", "a key appears twice") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer past 4,300 digits
        raise InvalidEvent("not_json", "", str(exc)[:500]) from None
    except RecursionError:  # the C parser recurses per nesting level
        raise InvalidEvent("too_deep", "", f"nested deeper than limits.max_json_depth={limits.max_json_depth}") from None
    check_tree(obj, limits)
    return obj


def decode_event(raw: bytes | str, limits: EventLimits = EventLimits()) -> Event:
    """Parse and validate one event record; raise :class:`InvalidEvent` if bad."""
    obj = load_json(raw, limits)
    return validate_event(obj, limits)


def _validated(model: type[_M], obj: Any, limits: EventLimits) -> _M:
    if not isinstance(obj, dict):
        raise InvalidEvent("schema", "", f"expected a JSON object, got {type(obj).__name__}")
    try:
        value = model.model_validate(obj)
    except ValidationError as exc:
        raise _from_validation_error(exc) from None
    check_limits(value, limits)
    return value


def validate_event(obj: Any, limits: EventLimits = EventLimits()) -> Event:
    return _validated(Event, obj, limits)


def validate_inputs(obj: Any, limits: EventLimits = EventLimits()) -> Inputs:
    return _validated(Inputs, obj, limits)


def decode_label(raw: bytes | str, limits: EventLimits = EventLimits()) -> LabelMessage:
    obj = load_json(raw, limits)
    if not isinstance(obj, dict):
        raise InvalidEvent("schema", "", "a label message is a JSON object")
    return validate_label(obj, limits)


def validate_label(obj: Any, limits: EventLimits = EventLimits()) -> LabelMessage:
    """A parsed label message (events' id and label limits apply) or :class:`InvalidEvent`."""
    try:
        message = LabelMessage.model_validate(obj)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        field = _field_of(err)
        reason: Reason = "bad_label" if field == "label" else "schema"
        raise InvalidEvent(reason, field, str(err.get("msg", ""))) from None
    if not str(message.id):
        raise InvalidEvent("schema", "id", "id must not be empty")
    check_name(str(message.id), "id", limits)
    check_name(str(message.label), "label", limits)
    check_name(message.key, "key", limits)
    return message
