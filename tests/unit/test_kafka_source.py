"""The Kafka source's pieces that need no broker: start-up retries, the offset floor, commit and revoke."""
from __future__ import annotations

import types
import warnings
from typing import Any, Callable

import pytest

with warnings.catch_warnings():  # kafka-python's import is noisy with DeprecationWarnings
    warnings.simplefilter("ignore", DeprecationWarning)
    from kafka.errors import CommitFailedError, KafkaConfigurationError, KafkaConnectionError, KafkaTimeoutError
    from kafka.structs import OffsetAndMetadata
    from kafka.structs import TopicPartition as KafkaTP

    import lifelong.stream.kafka_source as kafka_source
    from lifelong.stream.kafka_source import KafkaSource, KafkaSourceOptions, retry_with_backoff
from lifelong.stream.sources import Record


# -- Kafka source pieces (no broker) ---------------------------------------------------------------------

class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def fake_time(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    fake = FakeTime()
    monkeypatch.setattr(kafka_source, "time", types.SimpleNamespace(monotonic=fake.monotonic))
    return fake


def failing(n: int, result: Any = "client", error: Exception | None = None) -> tuple[Callable[[], Any], list[int]]:
    calls: list[int] = []

    def make() -> Any:
        calls.append(1)
        if len(calls) <= n:
            raise error or KafkaConnectionError()
        return result

    return make, calls


def test_retry_returns_at_once_when_make_works(fake_time: FakeTime) -> None:
    sleeps: list[float] = []
    make, calls = failing(0)
    assert retry_with_backoff(make, what="x", timeout_s=10, initial_s=0.5, max_s=10, sleep=sleeps.append) == "client"
    assert len(calls) == 1
    assert sleeps == []


def test_retry_backs_off_exponentially_up_to_max(fake_time: FakeTime) -> None:
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        fake_time.now += seconds

    make, calls = failing(5)
    assert retry_with_backoff(make, what="x", timeout_s=100, initial_s=1.0, max_s=3.0, sleep=sleep) == "client"
    assert len(calls) == 6
    assert sleeps == [1.0, 2.0, 3.0, 3.0, 3.0]


def test_retry_gives_up_at_the_timeout(fake_time: FakeTime) -> None:
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        fake_time.now += seconds

    make, calls = failing(100)
    with pytest.raises(ConnectionError, match="consumer: no Kafka broker answered within 5 s") as info:
        retry_with_backoff(make, what="consumer", timeout_s=5, initial_s=1.0, max_s=10.0, sleep=sleep)
    assert isinstance(info.value.__cause__, KafkaConnectionError)
    # 0 s: fail, wait 1; 1 s: fail, wait 2; 3 s: fail, and a 4 s wait would pass the deadline
    assert sleeps == [1.0, 2.0]
    assert len(calls) == 3


def test_retry_does_not_retry_a_configuration_error(fake_time: FakeTime) -> None:
    sleeps: list[float] = []
    make, calls = failing(1, error=KafkaConfigurationError("bad option"))
    with pytest.raises(KafkaConfigurationError):
        retry_with_backoff(make, what="x", timeout_s=100, initial_s=1.0, max_s=3.0, sleep=sleeps.append)
    assert len(calls) == 1 and sleeps == []


def test_retry_does_not_retry_other_errors(fake_time: FakeTime) -> None:
    sleeps: list[float] = []
    make, calls = failing(1, error=ValueError("bug"))
    with pytest.raises(ValueError, match="bug"):
        retry_with_backoff(make, what="x", timeout_s=100, initial_s=1.0, max_s=3.0, sleep=sleeps.append)
    assert len(calls) == 1 and sleeps == []


class FakeConsumer:
    def __init__(self) -> None:
        self.batches: list[dict[KafkaTP, list[Any]]] = []
        self.committed: list[dict[KafkaTP, OffsetAndMetadata]] = []
        self.listener: Any = None
        self.topics: list[str] = []
        self.closed: dict[str, Any] | None = None
        self.commit_errors: list[Exception] = []
        self.seeks: list[tuple[KafkaTP, int]] = []
        self.seek_error: Exception | None = None
        self.commit_timeouts: list[int | None] = []

    def seek(self, tp: KafkaTP, offset: int) -> None:
        if self.seek_error is not None:
            raise self.seek_error
        self.seeks.append((tp, offset))

    def subscribe(self, topics: list[str], listener: Any = None) -> None:
        self.topics, self.listener = topics, listener
        self.subscriptions = getattr(self, "subscriptions", 0) + 1

    # Partition metadata: the client's cache (read on its thread) and the broker's answer.
    partitions: dict[str, set[int]] = {}
    owned: set[Any] = set()

    @property
    def _cluster(self) -> Any:
        return types.SimpleNamespace(partitions_for_topic=lambda t: self.partitions.get(t))

    def partitions_for_topic(self, topic: str) -> set[int]:
        return self.partitions.get(topic) or set()

    def assignment(self) -> set[Any]:
        return self.owned

    def unsubscribe(self) -> None:
        self.topics = []

    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[KafkaTP, list[Any]]:
        return self.batches.pop(0) if self.batches else {}

    def commit(self, offsets: dict[KafkaTP, OffsetAndMetadata], timeout_ms: int | None = None) -> None:
        self.commit_timeouts.append(timeout_ms)
        if self.commit_errors:
            raise self.commit_errors.pop(0)
        self.committed.append(offsets)

    def close(self, autocommit: bool = True) -> None:
        self.closed = {"autocommit": autocommit}


def consumer_record(offset: int, value: bytes | None = b"v", key: bytes | None = None) -> Any:
    return types.SimpleNamespace(offset=offset, value=value, key=key)


@pytest.fixture
def kafka(monkeypatch: pytest.MonkeyPatch) -> Callable[..., tuple[KafkaSource, FakeConsumer, list[Any]]]:
    def make(start_offsets: dict[tuple[str, int], int] | None = None) -> tuple[KafkaSource, FakeConsumer, list[Any]]:
        consumer = FakeConsumer()
        monkeypatch.setattr(KafkaSource, "_connect", lambda self: consumer)
        revoked: list[Any] = []
        source = KafkaSource(KafkaSourceOptions("127.0.0.1:1", ("events", "labels")), start_offsets, revoked.append)
        return source, consumer, revoked

    return make


def test_kafka_poll_drops_records_below_the_checkpointed_offset(kafka: Callable[..., Any]) -> None:
    source, consumer, _ = kafka({("events", 0): 5, ("labels", 0): 0})
    assert consumer.topics == ["events", "labels"]
    consumer.batches = [
        {KafkaTP("events", 0): [consumer_record(3), consumer_record(4), consumer_record(5, b"five", b"k")],
         KafkaTP("events", 1): [consumer_record(0), consumer_record(1, None)],
         KafkaTP("labels", 0): [consumer_record(0)]},
        {KafkaTP("events", 0): [consumer_record(4), consumer_record(6)]},
    ]
    records = source.poll(100, 0.1)
    assert records == [Record(b"five", "events", 0, 5, b"k"), Record(b"v", "events", 1, 0),
                       Record(b"", "events", 1, 1), Record(b"v", "labels", 0, 0)]
    assert source.skipped == 2
    assert source.poll(100, 0.1) == [Record(b"v", "events", 0, 6)]
    assert source.skipped == 3
    assert source.poll(100, 0.1) == []
    assert source.exhausted is False


def test_kafka_commit_revoke_and_close(kafka: Callable[..., Any]) -> None:
    source, consumer, revoked = kafka()
    assert source.commit({}) is True
    assert consumer.committed == []
    assert source.commit({("events", 1): 7}) is True
    assert consumer.committed == [{KafkaTP("events", 1): OffsetAndMetadata(7, "", -1)}]
    consumer.listener.on_partitions_revoked([])
    assert revoked == []
    consumer.listener.on_partitions_revoked([KafkaTP("events", 0), KafkaTP("labels", 0)])
    assert revoked == [[("events", 0), ("labels", 0)]]
    consumer.listener.on_partitions_assigned([KafkaTP("events", 0)])
    source.close()
    assert consumer.closed == {"autocommit": False}


def test_kafka_poll_skips_records_redelivered_after_a_rejoin(kafka: Callable[..., Any]) -> None:
    # A failed commit, then the group is joined again: the consumer restarts at
    # the committed offset (2), behind what this state has taken (up to 4).
    source, consumer, _ = kafka()
    tp = KafkaTP("events", 0)
    consumer.batches = [{tp: [consumer_record(i) for i in range(5)]},
                        {tp: [consumer_record(i) for i in range(2, 7)]}]
    assert [r.offset for r in source.poll(100, 0.1)] == [0, 1, 2, 3, 4]
    assert [r.offset for r in source.poll(100, 0.1)] == [5, 6]
    assert source.skipped == 3
    assert source.floors == {("events", 0): 7}


def test_kafka_commit_failure_returns_false_and_backs_off(kafka: Callable[..., Any], fake_time: FakeTime) -> None:
    source, consumer, _ = kafka()
    consumer.commit_errors = [KafkaTimeoutError(), KafkaConnectionError(), CommitFailedError()]
    assert source.commit({("events", 0): 3}) is False  # broker away: not acknowledged, no exception
    assert consumer.commit_timeouts == [3000]
    fake_time.now += 0.4
    assert source.commit({("events", 0): 4}) is False  # within the 0.5 s backoff: not even tried
    assert len(consumer.commit_timeouts) == 1
    fake_time.now += 0.2
    assert source.commit({("events", 0): 4}) is False  # tried (with a short timeout), failed again
    assert consumer.commit_timeouts == [3000, 1000]
    fake_time.now += 0.9
    assert source.commit({("events", 0): 5}) is False  # the backoff doubled to 1 s
    assert len(consumer.commit_timeouts) == 2
    fake_time.now += 0.2
    assert source.commit({("events", 0): 5}) is False  # a rebalance fenced the commit
    fake_time.now += 2.1
    assert source.commit({("events", 0): 6}) is True
    assert consumer.committed == [{KafkaTP("events", 0): OffsetAndMetadata(6, "", -1)}]
    assert source.commit_failures == 3
    assert source.commit({("events", 0): 7}) is True  # success reset the backoff and the timeout
    assert consumer.commit_timeouts[-1] == 3000


def test_kafka_commit_backoff_is_capped(kafka: Callable[..., Any], fake_time: FakeTime) -> None:
    source, consumer, _ = kafka()
    consumer.commit_errors = [KafkaTimeoutError() for _ in range(100)]
    tries = 0
    for _ in range(400):  # 40 s in 0.1 s steps
        fake_time.now += 0.1
        before = len(consumer.commit_timeouts)
        source.commit({("events", 0): 1})
        tries += len(consumer.commit_timeouts) - before
    # 0.5, 1, 2, 4, then every 5 s: about 10 tries in 40 s, never a busy loop
    assert 8 <= tries <= 11


def test_kafka_lag_is_unknown_without_a_request_while_commits_fail(kafka: Callable[..., Any],
                                                                     fake_time: FakeTime) -> None:
    source, consumer, _ = kafka()
    consumer.assignment = lambda: {KafkaTP("events", 0)}  # type: ignore[method-assign]

    def end_offsets(partitions: list[KafkaTP], timeout_ms: int) -> dict[KafkaTP, int]:
        raise AssertionError("no request while the broker is known to be away")

    consumer.end_offsets = end_offsets  # type: ignore[attr-defined]
    consumer.commit_errors = [KafkaTimeoutError()]
    assert source.commit({("events", 0): 1}) is False
    assert source.lag() is None


def test_kafka_client_settings_favour_a_quick_comeback(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[dict[str, Any]] = []

    class Recorder(FakeConsumer):
        def __init__(self, **config: Any) -> None:
            super().__init__()
            made.append(config)

    monkeypatch.setattr(kafka_source, "KafkaConsumer", Recorder)
    KafkaSource(KafkaSourceOptions("a:1,b:2", ("events",), session_timeout_s=9,
                                   client_options={"security_protocol": "SSL", "request_timeout_ms": 20000}))
    config = made[0]
    assert config["bootstrap_servers"] == ["a:1", "b:2"]
    assert config["reconnect_backoff_max_ms"] == 1000  # kafka-python's default is 30 s
    assert config["session_timeout_ms"] == 9000 and config["heartbeat_interval_ms"] == 3000
    assert config["enable_auto_commit"] is False
    assert config["request_timeout_ms"] == 20000  # client_options win over the defaults
    assert config["security_protocol"] == "SSL"


def test_kafka_first_assignment_seeks_to_the_checkpointed_offsets(kafka: Callable[..., Any]) -> None:
    # The restored checkpoint says events[0] at 5 (behind the commit: an older checkpoint was
    # restored) and events[1] at 9 (ahead of it: a crash between checkpoint and commit).
    source, consumer, _ = kafka({("events", 0): 5, ("events", 1): 9, ("labels", 0): 2})
    e0, e1, l0 = KafkaTP("events", 0), KafkaTP("events", 1), KafkaTP("labels", 0)
    consumer.listener.on_partitions_assigned([e0, e1, l0])
    consumer.batches = [
        {e0: [consumer_record(8), consumer_record(9)], l0: [consumer_record(2), consumer_record(3)]},
        {e0: [consumer_record(5), consumer_record(6)], e1: [consumer_record(9)]},
    ]
    first = source.poll(100, 0.1)
    assert [(r.topic, r.partition, r.offset) for r in first] == [("labels", 0, 2), ("labels", 0, 3)]
    assert sorted(consumer.seeks) == [(e0, 5), (e1, 9)]  # labels[0] started right at its offset
    second = source.poll(100, 0.1)
    assert [(r.partition, r.offset) for r in second] == [(0, 5), (0, 6), (1, 9)]
    # A later assignment (a rebalance) does not seek again: the floor keeps re-deliveries out.
    consumer.listener.on_partitions_assigned([e0])
    consumer.batches = [{e0: [consumer_record(3), consumer_record(7)]}]
    assert [r.offset for r in source.poll(100, 0.1)] == [7]
    assert len(consumer.seeks) == 2


def test_kafka_no_checkpoint_means_no_seek(kafka: Callable[..., Any]) -> None:
    source, consumer, _ = kafka()
    consumer.listener.on_partitions_assigned([KafkaTP("events", 0)])
    consumer.batches = [{KafkaTP("events", 0): [consumer_record(0)]}]
    assert len(source.poll(100, 0.1)) == 1
    assert consumer.seeks == []


def test_kafka_seek_failure_falls_back_to_the_floor(kafka: Callable[..., Any]) -> None:
    source, consumer, _ = kafka({("events", 0): 4})
    consumer.seek_error = ValueError("Unassigned partition")  # revoked again before the poll returned
    consumer.listener.on_partitions_assigned([KafkaTP("events", 0)])
    consumer.batches = [{KafkaTP("events", 0): [consumer_record(2), consumer_record(4)]}]
    assert [r.offset for r in source.poll(100, 0.1)] == [4]


def test_a_group_joined_before_its_topics_existed_is_joined_again_once_they_do(
        kafka: Callable[..., Any], fake_time: FakeTime) -> None:
    source, consumer, _ = kafka()
    consumer.partitions = {}
    consumer.listener.on_partitions_assigned([])  # the group formed on no metadata: nothing assigned
    source.poll(10, 0.1)
    assert consumer.subscriptions == 1  # the topics still do not exist: nothing to do
    consumer.partitions = {"events": {0, 1}, "labels": {0, 1}}
    fake_time.now += 5.0
    source.poll(10, 0.1)
    assert consumer.subscriptions == 2 and consumer.topics == ["events", "labels"]
    fake_time.now += 10.0
    source.poll(10, 0.1)
    assert consumer.subscriptions == 2  # once


def test_a_replica_left_without_partitions_by_a_larger_group_does_not_rejoin(
        kafka: Callable[..., Any], fake_time: FakeTime) -> None:
    source, consumer, _ = kafka()
    consumer.partitions = {"events": {0}, "labels": {0}}
    consumer.listener.on_partitions_assigned([])  # known partitions, all owned by the other replicas
    for _ in range(5):
        fake_time.now += 10.0
        source.poll(10, 0.1)
    assert consumer.subscriptions == 1


def test_kafka_python_checks_batch_crcs_in_c() -> None:
    """Without the crc32c package kafka-python computes each fetched batch's CRC32C in pure Python
    (a quarter of the Kafka path's extra cost on elec2); the checks stay on either way."""
    import crc32c
    from kafka.record import util

    assert util.crc32c_c is crc32c.crc32c and util._crc32c is crc32c.crc32c
    assert util.calc_crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
