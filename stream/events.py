"""Event and label messages: pydantic models, JSON in and out.

An event is ``{"id", "ts"?, "text" | "features", "label"?}``; a label message
is ``{"id", "label"}``. :func:`decode_event` turns raw bytes into an
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
    # Evaluation-only metadata for benchmark files; the learner never reads them.
    segment: StrictStr | None = Field(default=None, max_length=256, description="True segment (evaluation only).")
    split: Literal["train", "test"] | None = Field(default=None, description="Benchmark split (evaluation only).")

    @field_validator("id")
    @classmethod
    def _id_str(cls, v: str | int) -> str:
        s = str(v)
        if not 0 < len(s) <= 256:
            raise ValueError("id must be 1 to 256 characters")
        return s

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


def check_limits(inputs: Inputs, limits: EventLimits) -> None:
    if inputs.text is not None and len(inputs.text) > limits.max_text_chars:
        raise InvalidEvent("text_too_long", "text", f"{len(inputs.text)} characters, limit {limits.max_text_chars}")
    if inputs.features is not None and len(inputs.features) > limits.max_features:
        raise InvalidEvent("wrong_dimension", "features", f"{len(inputs.features)} values, limit {limits.max_features}")


def load_json(raw: bytes | str, limits: EventLimits) -> Any:
    if len(raw) > limits.max_record_bytes:
        raise InvalidEvent("oversized", "", f"{len(raw)} bytes, limit {limits.max_record_bytes}")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidEvent("not_json", "", str(exc)) from None


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
    try:
        return LabelMessage.model_validate(obj)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        field = _field_of(err)
        reason: Reason = "bad_label" if field == "label" else "schema"
        raise InvalidEvent(reason, field, str(err.get("msg", ""))) from None
