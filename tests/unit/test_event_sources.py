"""An event's source: the payload field (fast and full parsers alike), a Kafka header that wins over it,
and the Kafka record's headers and timestamp as the consumer hands them on."""
from __future__ import annotations

import json
import types

import pytest

from lifelong.memory.tags import NO_SOURCE, tag_of
from lifelong.monitoring.metrics import Metrics
from lifelong.service.admission import Admission
from lifelong.service.forget_settings import ForgetSettings, InfluenceSettings
from lifelong.stream.errors import REASONS, InvalidEvent
from lifelong.stream.events import EventLimits, decode_event
from lifelong.stream.kafka_source import _record
from lifelong.stream.sources import Record
from lifelong.stream.validate import _fast_parse, parse_event

LIMITS = EventLimits(max_id_chars=8)


def test_both_parsers_read_the_source_field_the_same_way() -> None:
    raw = json.dumps({"id": "a", "text": "hi", "source": "feed-1"}).encode()
    fast = _fast_parse(raw, LIMITS)
    assert fast is not None and fast.source == "feed-1"
    assert decode_event(raw, LIMITS).source == "feed-1"  # the full check (pydantic) agrees


@pytest.mark.parametrize("source", ["", "x" * 9, 3, ["a"]])
def test_a_bad_source_field_is_a_schema_error_naming_it(source: object) -> None:
    raw = json.dumps({"id": "a", "text": "hi", "source": source}).encode()
    assert _fast_parse(raw, LIMITS) is None  # not sure: the full check names the reason
    with pytest.raises(InvalidEvent) as err:
        parse_event(raw, LIMITS)
    assert err.value.field == "source" and err.value.reason == "schema"


def admission(header: str | None) -> Admission:
    return Admission(ForgetSettings(), InfluenceSettings(), Metrics(REASONS), header, max_chars=8)


def test_the_configured_header_names_the_source_and_wins_over_the_field() -> None:
    event = parse_event(json.dumps({"id": "a", "text": "hi", "source": "field"}).encode(), LIMITS)
    with_header = Record(b"", headers=(("src", b"first"), ("src", b"header")))
    assert admission("src").source(event, with_header) == tag_of("header")  # the last one set wins
    assert admission("src").source(event, Record(b"")) == tag_of("field")
    assert admission(None).source(event, with_header) == tag_of("field")
    bare = parse_event(b'{"id": "a", "text": "hi"}', LIMITS)
    assert admission(None).source(bare, None) == NO_SOURCE


@pytest.mark.parametrize("value", [b"\xff\xfe", b"", b"x" * 9])
def test_a_bad_header_value_is_the_records_schema_error(value: bytes) -> None:
    event = parse_event(b'{"id": "a", "text": "hi"}', LIMITS)
    with pytest.raises(InvalidEvent) as err:
        admission("src").source(event, Record(b"", headers=(("src", value),)))
    assert err.value.field == "source" and err.value.reason == "schema"


def test_kafka_records_keep_their_headers_and_timestamp() -> None:
    consumed = types.SimpleNamespace(offset=4, value=b"v", key=b"k", headers=[("src", b"a"), ("x", None)],
                                     timestamp=1_700_000_000_123)
    assert _record(consumed, "events", 2) == Record(b"v", "events", 2, 4, b"k", (("src", b"a"), ("x", b"")),
                                                    1_700_000_000_123)
    plain = types.SimpleNamespace(offset=0, value=None, key=None, timestamp=-1)  # no headers; no timestamp
    assert _record(plain, "events", 0) == Record(b"", "events", 0, 0)
