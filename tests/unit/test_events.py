"""Event and label decoding: valid records, every rejection reason, round trips."""
from __future__ import annotations

import json

import pytest

from lifelong.stream.errors import REASONS, InvalidEvent
from lifelong.stream.events import Event, EventLimits, LabelMessage, decode_event, decode_label, validate_inputs


def reject(raw: str | bytes, limits: EventLimits = EventLimits()) -> InvalidEvent:
    with pytest.raises(InvalidEvent) as info:
        decode_event(raw, limits)
    return info.value


# -- valid events -----------------------------------------------------------------------

def test_valid_text_event_parses_with_int_id_and_label_as_strings() -> None:
    event = decode_event('{"id": 7, "ts": 1700000000.5, "text": "hello", "label": 3}')
    assert event.id == "7"
    assert event.label == "3"
    assert event.text == "hello"
    assert event.features is None
    assert event.ts == 1700000000.5


def test_valid_features_event_parses() -> None:
    event = decode_event(b'{"id": "e-1", "features": [1, 2.5, -3], "label": "cat"}')
    assert event.id == "e-1"
    assert event.label == "cat"
    assert event.features == [1.0, 2.5, -3.0]
    assert event.text is None
    assert event.ts is None


def test_unlabelled_event_has_no_label() -> None:
    assert decode_event('{"id": "a", "text": "x"}').label is None


def test_round_trip_to_json_and_back_is_equal() -> None:
    original = decode_event('{"id": 12, "ts": 3.25, "features": [0.5, -1.0], "label": 4, "split": "train"}')
    again = decode_event(original.to_json())
    assert again == original
    assert json.loads(original.to_json()) == {"id": "12", "ts": 3.25, "features": [0.5, -1.0], "label": "4",
                                              "split": "train"}


def test_round_trip_text_event() -> None:
    original = Event(id="x", text="some text", label="y")
    assert decode_event(original.to_json()) == original


# -- not_json / schema ----------------------------------------------------------------------

@pytest.mark.parametrize("raw", ["not json", '{"id": 1, "text": ', b"\xff\xfe{}"])
def test_not_json(raw: str | bytes) -> None:
    exc = reject(raw)
    assert (exc.reason, exc.field) == ("not_json", "")


@pytest.mark.parametrize("raw", ["[1, 2]", '"a string"', "3", "null"])
def test_non_object_is_schema(raw: str) -> None:
    exc = reject(raw)
    assert (exc.reason, exc.field) == ("schema", "")


def test_unknown_field_is_schema_naming_the_field() -> None:
    exc = reject('{"id": "a", "text": "x", "colour": "red"}')
    assert (exc.reason, exc.field) == ("schema", "colour")


def test_missing_id_is_schema() -> None:
    exc = reject('{"text": "x"}')
    assert (exc.reason, exc.field) == ("schema", "id")


def test_empty_id_is_schema() -> None:
    exc = reject('{"id": "", "text": "x"}')
    assert (exc.reason, exc.field) == ("schema", "id")


@pytest.mark.parametrize("bad_id", ["1.5", "true", "[1]", "{}"])
def test_wrong_type_of_id_is_schema(bad_id: str) -> None:
    # id is a union (str | int): pydantic's loc carries a member tag ("id.str"), the field must not
    exc = reject('{"id": %s, "text": "x"}' % bad_id)
    assert (exc.reason, exc.field) == ("schema", "id")


def test_features_of_wrong_type_is_schema() -> None:
    exc = reject('{"id": "a", "features": "abc"}')
    assert (exc.reason, exc.field) == ("schema", "features")


def test_string_feature_is_schema() -> None:
    exc = reject('{"id": "a", "features": [1, "abc"]}')
    assert exc.reason == "schema"
    assert exc.field == "features.1"


# -- missing_input ----------------------------------------------------------------------------

def test_neither_text_nor_features_is_missing_input() -> None:
    exc = reject('{"id": "a", "label": "x"}')
    assert (exc.reason, exc.field) == ("missing_input", "")
    assert "exactly one" in exc.detail


def test_both_text_and_features_is_missing_input() -> None:
    exc = reject('{"id": "a", "text": "x", "features": [1.0]}')
    assert (exc.reason, exc.field) == ("missing_input", "")


# -- non_finite ---------------------------------------------------------------------------------

@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_features(token: str) -> None:
    raw = '{"id": "a", "features": [1.0, %s, 2.0]}' % token
    assert json.loads(raw)  # Python's json accepts the token, so the check must be ours
    exc = reject(raw)
    assert (exc.reason, exc.field) == ("non_finite", "features")
    assert not exc.detail.startswith("non_finite")  # the tag is stripped from the human text


def test_non_finite_string_feature() -> None:
    exc = reject('{"id": "a", "features": ["NaN"]}')
    assert (exc.reason, exc.field) == ("non_finite", "features")


# -- limits -----------------------------------------------------------------------------------------

def test_text_too_long() -> None:
    limits = EventLimits(max_text_chars=5)
    assert decode_event('{"id": "a", "text": "12345"}', limits).text == "12345"
    exc = reject('{"id": "a", "text": "123456"}', limits)
    assert (exc.reason, exc.field) == ("text_too_long", "text")


def test_oversized_record() -> None:
    raw = '{"id": "a", "text": "%s"}' % ("x" * 100)
    limits = EventLimits(max_record_bytes=len(raw) - 1)
    exc = reject(raw, limits)
    assert (exc.reason, exc.field) == ("oversized", "")
    assert decode_event(raw, EventLimits(max_record_bytes=len(raw))).text == "x" * 100


def test_oversized_is_checked_before_parsing() -> None:
    exc = reject("not json at all, and long", EventLimits(max_record_bytes=4))
    assert exc.reason == "oversized"


def test_too_many_features_is_wrong_dimension() -> None:
    limits = EventLimits(max_features=3)
    assert decode_event('{"id": "a", "features": [1, 2, 3]}', limits).features == [1.0, 2.0, 3.0]
    exc = reject('{"id": "a", "features": [1, 2, 3, 4]}', limits)
    assert (exc.reason, exc.field) == ("wrong_dimension", "features")


# -- bad_label ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("label", ["1.5", "[1]", "true", "false", '{"a": 1}'])
def test_bad_label(label: str) -> None:
    exc = reject('{"id": "a", "text": "x", "label": %s}' % label)
    assert (exc.reason, exc.field) == ("bad_label", "label")


# -- decode_label ---------------------------------------------------------------------------------------

def test_decode_label_good() -> None:
    assert decode_label('{"id": 3, "label": 4}') == LabelMessage(id="3", label="4")
    msg = decode_label(b'{"id": "ev", "label": "dog"}')
    assert (msg.id, msg.label) == ("ev", "dog")


def test_decode_label_not_json_and_non_object() -> None:
    with pytest.raises(InvalidEvent) as info:
        decode_label("{oops")
    assert info.value.reason == "not_json"
    with pytest.raises(InvalidEvent) as info:
        decode_label("[]")
    assert (info.value.reason, info.value.field) == ("schema", "")


def test_decode_label_unknown_field_is_schema() -> None:
    with pytest.raises(InvalidEvent) as info:
        decode_label('{"id": "a", "label": "b", "extra": 1}')
    assert (info.value.reason, info.value.field) == ("schema", "extra")


def test_decode_label_missing_label_is_bad_label() -> None:
    with pytest.raises(InvalidEvent) as info:
        decode_label('{"id": "a"}')
    assert (info.value.reason, info.value.field) == ("bad_label", "label")


@pytest.mark.parametrize("label", ["1.5", "true", "[1]"])
def test_decode_label_wrong_type_is_bad_label(label: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        decode_label('{"id": "a", "label": %s}' % label)
    assert (info.value.reason, info.value.field) == ("bad_label", "label")


def test_decode_label_wrong_type_of_id_is_schema() -> None:
    with pytest.raises(InvalidEvent) as info:
        decode_label('{"id": 1.5, "label": "a"}')
    assert (info.value.reason, info.value.field) == ("schema", "id")


# -- InvalidEvent and validate_inputs -------------------------------------------------------------------

def test_invalid_event_rejects_unknown_reason() -> None:
    with pytest.raises(ValueError):
        InvalidEvent("made_up", "", "x")  # type: ignore[arg-type]


def test_invalid_event_message_and_dict() -> None:
    exc = InvalidEvent("schema", "id", "bad")
    assert str(exc) == "schema in field 'id': bad"
    assert str(InvalidEvent("not_json", "", "bad")) == "not_json: bad"
    assert exc.as_dict() == {"reason": "schema", "field": "id", "detail": "bad"}
    assert set(REASONS) >= {"not_json", "schema", "missing_input", "wrong_dimension", "non_finite",
                            "text_too_long", "bad_label", "oversized", "duplicate_id", "wrong_input_kind"}


def test_validate_inputs_applies_limits_and_rejects_extra_fields() -> None:
    assert validate_inputs({"features": [1, 2]}).features == [1.0, 2.0]
    with pytest.raises(InvalidEvent) as info:
        validate_inputs({"text": "abc"}, EventLimits(max_text_chars=2))
    assert info.value.reason == "text_too_long"
    with pytest.raises(InvalidEvent) as info:
        validate_inputs({"text": "abc", "id": 1})
    assert (info.value.reason, info.value.field) == ("schema", "id")
