"""KafkaSink without a broker: retriable failures are retried for as long as it takes, refused outputs are
dropped after bounded attempts and counted, and the producer is set up to fit dead letters and reconnect fast."""
from __future__ import annotations

import warnings
from typing import Any

import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import kafka
    from kafka.errors import KafkaTimeoutError, MessageSizeTooLargeError

from lifelong.stream.sinks import KafkaSink, SinkError


class FakeFuture:
    def __init__(self, error: Exception | None) -> None:
        self.error = error

    def add_errback(self, callback: Any) -> "FakeFuture":
        if self.error is not None:
            callback(self.error)
        return self

    def get(self, timeout: float) -> None:
        if self.error is not None:
            raise self.error


class FakeProducer:
    """Answers each send with the next error of ``errors`` for its topic (None: delivered)."""

    def __init__(self, **config: Any) -> None:
        self.config = config
        self.errors: dict[str, list[Exception | None]] = {}
        self.delivered: list[tuple[str, bytes]] = []
        self.raise_in_send = False

    def send(self, topic: str, value: bytes, key: bytes | None = None, headers: Any = None) -> FakeFuture:
        queue = self.errors.get(topic, [])
        error = queue.pop(0) if queue else None
        if error is not None and self.raise_in_send:
            raise error
        if error is None:
            self.delivered.append((topic, value))
        return FakeFuture(error)

    def flush(self, timeout: float) -> None:
        return None


@pytest.fixture
def make_sink(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(kafka, "KafkaProducer", FakeProducer)

    def make(**options: Any) -> tuple[KafkaSink, FakeProducer, list[str]]:
        drops: list[str] = []
        sink = KafkaSink("127.0.0.1:1", on_drop=drops.append, **options)
        return sink, sink._producer, drops  # type: ignore[return-value]

    return make


def test_the_producer_fits_dead_letters_and_reconnects_fast(make_sink: Any) -> None:
    _, producer, _ = make_sink(max_message_bytes=2_000_000)
    assert producer.config["max_request_size"] == 2_000_000
    assert producer.config["reconnect_backoff_max_ms"] == 1000 and producer.config["request_timeout_ms"] == 15000
    assert producer.config["acks"] == "all"


@pytest.mark.parametrize("raise_in_send", [False, True])
def test_a_refused_output_is_dropped_after_bounded_attempts(make_sink: Any, raise_in_send: bool) -> None:
    sink, producer, drops = make_sink(max_attempts=3)
    producer.raise_in_send = raise_in_send
    producer.errors["dlq"] = [MessageSizeTooLargeError("too big")] * 10
    sink.send("dlq", b"x" * 10)
    sink.send("preds", b"p")
    with pytest.raises(SinkError):
        sink.flush(1.0)  # the send and its first retry are refused: still waiting
    assert drops == []
    sink.flush(1.0)  # the third refusal drops it: nothing holds the checkpoint back any more
    assert drops == ["dlq"] and sink.dropped == 1
    assert producer.delivered == [("preds", b"p")]
    sink.flush(1.0)
    assert len(producer.errors["dlq"]) == 7  # never sent again


def test_retriable_failures_are_retried_without_limit(make_sink: Any) -> None:
    sink, producer, drops = make_sink(max_attempts=2)
    producer.errors["preds"] = [KafkaTimeoutError("broker away")] * 7
    sink.send("preds", b"p")
    for _ in range(6):  # far more retries than max_attempts
        with pytest.raises(SinkError):
            sink.flush(1.0)
    sink.flush(1.0)
    assert drops == [] and producer.delivered == [("preds", b"p")]


def test_full_reports_the_backlog_and_send_now_waits_for_the_ack(make_sink: Any) -> None:
    sink, producer, _ = make_sink(max_unsent=2)
    producer.errors["preds"] = [KafkaTimeoutError("away")] * 3
    sink.send("preds", b"1")
    assert not sink.full
    sink.send("preds", b"2")
    assert sink.full  # the loop stops reading until a flush goes through
    producer.errors["labels"] = [KafkaTimeoutError("away")]
    with pytest.raises(SinkError, match="not stored in labels"):
        sink.send_now("labels", b"l", b"k", 1.0)
    sink.send_now("labels", b"l", b"k", 1.0)
    assert ("labels", b"l") in producer.delivered
