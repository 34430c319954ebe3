"""Record validation (EventValidator, RecentIds) and the output helpers (MemorySink, headers, prediction JSON)."""
from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from lifelong.stream.errors import InvalidEvent
from lifelong.stream.events import EventLimits
from lifelong.stream.sinks import MemorySink, dead_letter_headers, prediction_value
from lifelong.stream.sources import Record
from lifelong.stream.validate import EventValidator, RecentIds


def raw(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def features_validator(window: int = 100) -> EventValidator:
    return EventValidator("features", 4, EventLimits(), window)


def rejection(validator: EventValidator, obj: Any) -> InvalidEvent:
    with pytest.raises(InvalidEvent) as info:
        validator(raw(obj) if not isinstance(obj, bytes) else obj)
    return info.value


# -- EventValidator -----------------------------------------------------------------------------

def test_a_valid_event_is_returned() -> None:
    event = features_validator()(raw({"id": "e1", "features": [1, 2, 3, 4], "label": 3}))
    assert event.id == "e1"
    assert event.features == [1.0, 2.0, 3.0, 4.0]
    assert event.label == "3"


def test_a_repeated_id_is_a_duplicate() -> None:
    v = features_validator()
    v(raw({"id": "e1", "features": [1, 2, 3, 4], "label": "a"}))
    err = rejection(v, {"id": "e1", "features": [5, 6, 7, 8], "label": "b"})
    assert err.reason == "duplicate_id"
    assert err.field == "id"
    assert "e1" in err.detail
    # an unlabelled event with a seen id is a duplicate too
    assert rejection(v, {"id": "e1", "features": [1, 2, 3, 4]}).reason == "duplicate_id"


def test_integer_and_string_ids_are_the_same_id() -> None:
    v = features_validator()
    v(raw({"id": 7, "features": [1, 2, 3, 4]}))
    assert rejection(v, {"id": "7", "features": [1, 2, 3, 4]}).reason == "duplicate_id"


@pytest.mark.parametrize("bad, reason", [
    ({"id": "e1", "features": [1, 2, 3]}, "wrong_dimension"),
    ({"id": "e1", "text": "hello"}, "wrong_input_kind"),
    ({"id": "e1", "features": [1, 2, 3, 4], "label": 1.5}, "bad_label"),
    ({"id": "e1", "features": [1, 2, 3, 4], "colour": "red"}, "schema"),
    ({"id": "e1"}, "missing_input"),
])
def test_an_invalid_event_does_not_claim_its_id(bad: dict[str, Any], reason: str) -> None:
    v = features_validator()
    assert rejection(v, bad).reason == reason
    assert len(v.recent_ids) == 0
    # the corrected resend with the same id is accepted, and only then is the id taken
    assert v(raw({"id": "e1", "features": [1, 2, 3, 4], "label": "a"})).id == "e1"
    assert rejection(v, {"id": "e1", "features": [1, 2, 3, 4], "label": "a"}).reason == "duplicate_id"


def test_wrong_input_kind_names_the_unexpected_field() -> None:
    err = rejection(features_validator(), {"id": 1, "text": "hello"})
    assert (err.reason, err.field) == ("wrong_input_kind", "text")
    assert "features" in err.detail
    text_validator = EventValidator("text", None, EventLimits(), 10)
    err = rejection(text_validator, {"id": 1, "features": [1, 2, 3, 4]})
    assert (err.reason, err.field) == ("wrong_input_kind", "features")
    assert "text" in err.detail
    assert text_validator(raw({"id": 1, "text": "hi"})).text == "hi"


@pytest.mark.parametrize("features", [[1.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0, 5.0], []])
def test_wrong_dimension(features: list[float]) -> None:
    err = rejection(features_validator(), {"id": 1, "features": features})
    assert (err.reason, err.field) == ("wrong_dimension", "features")
    assert err.detail == f"{len(features)} values, expected 4"


def test_a_not_json_record_is_rejected_without_an_id() -> None:
    v = features_validator()
    assert rejection(v, b"{not json").reason == "not_json"
    assert len(v.recent_ids) == 0


def test_the_dedup_window_is_bounded() -> None:
    v = features_validator(window=3)
    for i in range(4):
        v(raw({"id": i, "features": [1, 2, 3, 4]}))
    assert len(v.recent_ids) == 3
    for i in (1, 2, 3):
        assert rejection(v, {"id": i, "features": [1, 2, 3, 4]}).reason == "duplicate_id"
    # id 0 fell out of the window: accepted again, pushing out the oldest remembered one (1)
    v(raw({"id": 0, "features": [1, 2, 3, 4]}))
    v(raw({"id": 1, "features": [1, 2, 3, 4]}))
    assert len(v.recent_ids) == 3


def test_a_zero_window_never_rejects_duplicates() -> None:
    v = features_validator(window=0)
    for _ in range(3):
        v(raw({"id": "same", "features": [1, 2, 3, 4]}))
    assert len(v.recent_ids) == 0


# -- RecentIds --------------------------------------------------------------------------------------

def test_recent_ids_seen_or_add() -> None:
    ids = RecentIds(2)
    assert ids.seen_or_add("a") is False
    assert ids.seen_or_add("a") is True
    assert ids.seen_or_add("b") is False
    assert ids.seen_or_add("c") is False  # evicts "a"
    assert len(ids) == 2
    assert ids.seen_or_add("b") is True
    assert ids.seen_or_add("a") is False


def test_recent_ids_state_round_trip_through_json() -> None:
    ids = RecentIds(3)
    for name in ("a", "b", "c", "d"):
        ids.seen_or_add(name)
    arrays, meta = ids.state_dict()
    assert arrays == {}
    assert meta == {"ids": ["b", "c", "d"]}  # oldest first
    twin = RecentIds(3)
    twin.load_state_dict({}, json.loads(json.dumps(meta)))
    assert len(twin) == 3
    assert [twin.seen_or_add(n) for n in ("b", "c", "d")] == [True, True, True]
    assert twin.seen_or_add("a") is False
    # the eviction order survived: "b" (the oldest) went first
    assert twin.state_dict()[1] == {"ids": ["c", "d", "a"]}


def test_recent_ids_load_into_a_smaller_window_keeps_the_newest() -> None:
    meta = {"ids": ["a", "b", "c", "d"]}
    small = RecentIds(2)
    small.load_state_dict({}, meta)
    assert small.state_dict()[1] == {"ids": ["c", "d"]}
    none = RecentIds(0)
    none.load_state_dict({}, meta)
    assert len(none) == 0
    assert none.seen_or_add("d") is False


def test_validator_state_round_trip_keeps_rejecting_duplicates() -> None:
    v = features_validator()
    v(raw({"id": "x", "features": [1, 2, 3, 4]}))
    twin = features_validator()
    twin.recent_ids.load_state_dict(*v.recent_ids.state_dict())
    assert rejection(twin, {"id": "x", "features": [1, 2, 3, 4]}).reason == "duplicate_id"
    assert twin(raw({"id": "y", "features": [1, 2, 3, 4]})).id == "y"


# -- sinks ------------------------------------------------------------------------------------------

def test_memory_sink_keeps_what_was_sent() -> None:
    sink = MemorySink()
    headers = [("h", b"1")]
    sink.send("t1", b"v1")
    sink.send("t2", b"v2", b"k2", headers)
    headers.append(("later", b"x"))  # the sink kept its own copy
    assert sink.flush(0.1) is None
    assert sink.close() is None
    assert sink.sent == [("t1", b"v1", None, []), ("t2", b"v2", b"k2", [("h", b"1")])]


def test_memory_sinks_do_not_share_their_list() -> None:
    a, b = MemorySink(), MemorySink()
    a.send("t", b"v")
    assert b.sent == []


def test_dead_letter_headers_exact() -> None:
    record = Record(b'{"id": 1}', "events", 2, 17, b"key")
    err = InvalidEvent("wrong_dimension", "features", "3 values, expected 4")
    assert dead_letter_headers(record, err) == [
        ("lifelong.reason", b"wrong_dimension"),
        ("lifelong.field", b"features"),
        ("lifelong.detail", b"3 values, expected 4"),
        ("lifelong.source.topic", b"events"),
        ("lifelong.source.partition", b"2"),
        ("lifelong.source.offset", b"17"),
    ]


def test_dead_letter_headers_for_a_whole_record_error_and_a_long_detail() -> None:
    record = Record(b"garbage")  # defaults: no topic, partition 0, offset -1
    err = InvalidEvent("not_json", "", "é" * 1500)
    headers = dict(dead_letter_headers(record, err))
    assert headers["lifelong.reason"] == b"not_json"
    assert headers["lifelong.field"] == b""
    assert headers["lifelong.detail"].decode() == "é" * 1000  # truncated to 1000 characters
    assert headers["lifelong.source.topic"] == b""
    assert headers["lifelong.source.partition"] == b"0"
    assert headers["lifelong.source.offset"] == b"-1"
    assert all(isinstance(v, bytes) for v in headers.values())


def test_prediction_value_json() -> None:
    value = prediction_value("e1", "a", 0.123456789, 3)
    assert isinstance(value, bytes)
    assert json.loads(value) == {"id": "e1", "label": "a", "score": 0.123457, "model_version": 3}


def test_prediction_value_without_a_label_and_with_a_numpy_score() -> None:
    value = prediction_value("e2", None, np.float32(0.5), 0)  # type: ignore[arg-type]
    assert json.loads(value) == {"id": "e2", "label": None, "score": 0.5, "model_version": 0}


# -- the fast parse path agrees with the full validation ---------------------------------------------
TRICKY = [
    b'{"id": 1, "features": [1, 2.5, 3, 4], "label": 2}', b'{"id": "a", "features": [1, 2, 3, 4]}',
    b'{"id": true, "features": [1, 2, 3, 4]}', b'{"id": 1.5, "features": [1, 2, 3, 4]}',
    b'{"id": "", "features": [1, 2, 3, 4]}', b'{"id": 1, "features": [true, 2, 3, 4]}',
    b'{"id": 1, "features": [NaN, 2, 3, 4]}', b'{"id": 1, "features": [1e999, 2, 3, 4]}',
    b'{"id": 1, "features": ["1", 2, 3, 4]}', b'{"id": 1, "features": [1, 2, 3]}', b'{"id": 1, "features": []}',
    b'{"id": 1, "features": [[1], 2, 3, 4]}', b'{"id": 1, "features": [1, 2, 3, 4], "label": true}',
    b'{"id": 1, "features": [1, 2, 3, 4], "label": 1.5}', b'{"id": 1, "features": [1, 2, 3, 4], "label": ""}',
    b'{"id": 1, "features": [1, 2, 3, 4], "extra": 1}', b'{"id": 1, "features": [1, 2, 3, 4], "ts": "x"}',
    b'{"id": 1, "features": [1, 2, 3, 4], "ts": 5}', b'{"id": 1, "features": [1, 2, 3, 4], "split": "dev"}',
    b'{"id": 1, "features": [1, 2, 3, 4], "segment": 3}', b'{"id": 1, "text": "x", "features": [1, 2, 3, 4]}',
    b'{"id": 99999999999999999999999, "features": [1, 2, 3, 4]}', b'[1, 2]', b'{"id": 1', b'\xff\xfe',
    b'{"id": 1, "features": [1, 2, 3, 4], "label": null, "ts": null}', b'{"id": 1, "text": "hi"}',
]


@pytest.mark.parametrize("record", TRICKY)
def test_fast_parse_accepts_and_rejects_exactly_as_the_full_validation(record: bytes) -> None:
    from lifelong.stream.events import decode_event
    from lifelong.stream.validate import _fast_parse

    limits = EventLimits()
    try:
        full = decode_event(record, limits)
    except InvalidEvent:
        assert _fast_parse(record, limits) is None  # the full path then names the reason
        return
    fast = _fast_parse(record, limits)
    if fast is not None:
        assert (fast.id, fast.text, fast.label, fast.ts) == (str(full.id), full.text, full.label, full.ts)
        assert fast.features == full.features


def test_recent_ids_keep_their_partitions_through_a_restart() -> None:
    ids = RecentIds(4)
    ids.seen_or_add("a", ("events", 0))
    ids.seen_or_add("b", ("events", 1))
    ids.seen_or_add("c")  # from HTTP: no partition
    twin = RecentIds(4)
    twin.load_state_dict({}, json.loads(json.dumps(ids.state_dict()[1])))
    assert twin.of_partitions({("events", 1)}) == [("b", "events", 1)]
    assert twin.of_partitions(None) == [("a", "events", 0), ("b", "events", 1)]
