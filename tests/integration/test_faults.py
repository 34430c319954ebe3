"""Ordinary faults on the real broker, small: kill -9 with delayed labels, an outage, bad records, bad
HTTP requests, 2 MB records, damaged checkpoints. ``lifelong bench --faults`` runs the same at size."""
from __future__ import annotations

import random
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from harness import Broker, Daemon, http_json, learned_counts, wait_until

from lifelong.bench.faults_bad import run_http
from lifelong.bench.faults_corpus import Bad, Valid, bad_events, bad_labels, feature_events
from lifelong.bench.faults_damage import numbered, overwrite_quarter, truncate_half
from lifelong.bench.faults_env import BIG_TOPIC_BYTES, Producer, Sent
from lifelong.bench.faults_env import Broker as AdminBroker
from lifelong.bench.faults_feed import Feeder, send_backlog
from lifelong.bench.faults_report import match_dead_letters

pytestmark = pytest.mark.integration

PROBE = {"instances": [{"features": [3, 0, 0, 0]}, {"features": [0, 3, 0, 0]}]}


def config(broker: Broker, topic: str, state: Path, labels: bool = True, **extra: Any) -> dict[str, Any]:
    kafka = {"bootstrap_servers": broker.bootstrap, "events_topic": topic, "group_id": f"g-{topic}",
             "labels_topic": f"{topic}-labels" if labels else None}
    out: dict[str, Any] = {
        "source": {"kind": "kafka", "batch_size": 50, "poll_timeout_s": 0.2, "lag_check_s": 0.5, "kafka": kafka},
        "learner": {"input_kind": "features", "feature_dim": 4, "feature_warmup_events": 50},
        "checkpoint": {"dir": str(state), "every_s": 0.5, "every_events": 200},
        "outputs": {"predictions_topic": f"{topic}-predictions", "dead_letter_topic": f"{topic}-dead"},
        "labels": {"max_wait_s": 600.0},
        "debug": {"track_learned_ids": True},
        "evaluation": {"holdout_fraction": 0.0},
    }
    for key, value in extra.items():
        out[key] = {**out.get(key, {}), **value}
    return out


def learned(daemon: Daemon) -> int:
    status, body = http_json("GET", f"{daemon.url}/v1/model")
    assert status == 200, body
    return int(body["events_learned"])


def wait_learned(daemon: Daemon, n: int, timeout_s: float = 120) -> None:
    wait_until(lambda: daemon.proc.poll() is None and learned(daemon) >= n, timeout_s, f"{n} events learned")


def produce(broker: Broker, topic: str, values: list[bytes | None]) -> list[Sent]:
    producer = Producer(broker.bootstrap)
    try:
        return [producer.send_wait(topic, v) for v in values]
    finally:
        producer.close()


def assert_once(counts: dict[str, int], events: list[Valid]) -> None:
    never = [e.id for e in events if counts.get(e.id, 0) == 0]
    twice = {e.id: counts[e.id] for e in events if counts.get(e.id, 0) > 1}
    assert not never and not twice, f"never learned: {len(never)} (e.g. {never[:5]}), learned twice: {twice}"


# -- kill -9 ----------------------------------------------------------------------------------

def test_kill_9_with_delayed_labels_and_labels_first_backlogs_learns_each_event_once(
        kafka_broker: Broker, lifelong_daemon: Any, tmp_path: Path) -> None:
    topic = f"fkill-{uuid.uuid4().hex[:8]}"
    labels_topic = f"{topic}-labels"
    cfg = config(kafka_broker, topic, tmp_path / "state")
    before, stream, after = feature_events(50, "pre"), feature_events(400, "k", 1), feature_events(50, "post", 2)
    producer = Producer(kafka_broker.bootstrap)
    rng = random.Random(5)
    try:
        send_backlog(producer, topic, labels_topic, before)  # labels first, all before the first start
        daemon = lifelong_daemon(cfg)
        daemon.wait_ready()
        # 400 events over about 20 s: the three kills land mid-stream even on a slow machine (each restart
        # takes seconds); a daemon that comes up after the last record is up once it answers, with nothing
        # left to consume.
        feeder = Feeder(producer, topic, labels_topic, stream, rate=20.0, max_delay_s=4.0, seed=3).start()
        for _ in range(3):
            wait_until(lambda: daemon.proc.poll() is None and (daemon.metric("lifelong_events_consumed_total") > 0
                                                                or feeder.done),
                       60, "the daemon consuming")
            time.sleep(rng.uniform(0.2, 1.5))
            daemon.proc.kill()
            daemon.proc.wait(10)
            daemon = lifelong_daemon(cfg)
        assert feeder.wait(60) and feeder.error is None
        daemon.wait_ready()
        assert daemon.stop() == 0, daemon.log()
        send_backlog(producer, topic, labels_topic, after)  # labels first again, while it is down
    finally:
        producer.close()
    daemon = lifelong_daemon(cfg)
    daemon.wait_ready()
    wait_learned(daemon, 500, 120)
    assert daemon.stop() == 0, daemon.log()
    assert_once(learned_counts(tmp_path / "state"), before + stream + after)


# -- broker outage ----------------------------------------------------------------------------

def test_broker_outage_resumes_within_10_s_of_the_comeback_and_loses_nothing(
        own_broker: Broker, lifelong_daemon: Any, tmp_path: Path) -> None:
    topic = f"fout-{uuid.uuid4().hex[:8]}"
    warm, stream = feature_events(60, "w"), feature_events(300, "o", 1)
    producer = Producer(own_broker.bootstrap)
    try:
        for e in warm:
            producer.send(topic, e.labelled_record())
        producer.flush()
        daemon = lifelong_daemon(config(own_broker, topic, tmp_path / "state"))
        daemon.wait_ready()
        feeder = Feeder(producer, topic, f"{topic}-labels", stream, rate=60.0, max_delay_s=3.0, seed=4).start()
        wait_until(lambda: feeder.events_sent >= 150, 30, "half the stream sent")
        feeder.pause()
        sent = len(warm) + feeder.records_sent
        wait_until(lambda: daemon.metric("lifelong_events_consumed_total") >= sent, 60, "caught up")
        consumed = daemon.metric("lifelong_events_consumed_total")

        own_broker.stop()
        for _ in range(10):
            assert http_json("GET", f"{daemon.url}/healthz")[0] == 200
            assert http_json("POST", f"{daemon.url}/v1/predict", PROBE)[0] == 200  # serving goes on
            time.sleep(1)
        own_broker.start()
        back = time.monotonic()
        feeder.resume()
        wait_until(lambda: daemon.metric("lifelong_events_consumed_total") > consumed, 30, "consuming again",
                   interval_s=0.1)
        resume_s = time.monotonic() - back
        assert feeder.wait(60) and feeder.error is None
    finally:
        producer.close()
    assert resume_s <= 10, f"consumed again only {resume_s:.1f} s after the broker came back"
    wait_learned(daemon, len(warm) + len(stream), 120)
    assert daemon.stop() == 0, daemon.log()
    assert_once(learned_counts(tmp_path / "state"), warm + stream)


# -- bad records and requests -----------------------------------------------------------------

def test_bad_records_on_both_topics_are_dead_lettered_with_their_reason_and_crash_nothing(
        kafka_broker: Broker, lifelong_daemon: Any, tmp_path: Path) -> None:
    topic = f"fbad-{uuid.uuid4().hex[:8]}"
    labels_topic = f"{topic}-labels"
    AdminBroker(kafka_broker.bootstrap, tmp_path).create_topics([topic, labels_topic],
                                                                max_message_bytes=BIG_TOPIC_BYTES)
    warm, inline, apart = feature_events(60, "w"), feature_events(100, "i", 1), feature_events(30, "a", 2)
    produce(kafka_broker, topic, [e.labelled_record() for e in warm])
    daemon = lifelong_daemon(config(kafka_broker, topic, tmp_path / "state"))
    daemon.wait_ready()
    bad_ev, bad_lab = bad_events("features"), bad_labels()
    values: list[bytes | None] = []
    for n, bad in enumerate(bad_ev):  # each bad record between valid ones, so they share batches
        values += [bad.value] + [e.labelled_record() for e in inline[n * 2:n * 2 + 2]]
    values += [e.labelled_record() for e in inline[2 * len(bad_ev):]] + [e.value for e in apart]
    sent_ev = produce(kafka_broker, topic, values)
    label_values: list[bytes | None] = []
    for n, bad in enumerate(bad_lab):
        label_values += [bad.value] + ([apart[n].label_record()] if n < len(apart) else [])
    label_values += [e.label_record() for e in apart[len(bad_lab):]]
    sent_lab = produce(kafka_broker, labels_topic, label_values)
    bad_sent: list[tuple[Bad, Sent]] = [(b, sent_ev[values.index(b.value)]) for b in bad_ev]
    bad_sent += [(b, sent_lab[label_values.index(b.value)]) for b in bad_lab]

    n_valid = len(warm) + len(inline) + len(apart)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and learned(daemon) < n_valid:
        assert daemon.proc.poll() is None, daemon.log()[-4000:]
        assert http_json("GET", f"{daemon.url}/healthz")[0] == 200
        time.sleep(0.5)
    assert learned(daemon) == n_valid  # the valid events of the same batches, every one
    dead = AdminBroker(kafka_broker.bootstrap, tmp_path).read(f"{topic}-dead", expect=len(bad_sent), timeout_s=60)
    result = match_dead_letters(bad_sent, dead)
    assert daemon.stop() == 0, daemon.log()
    assert not result["missing"] and not result["wrong_reason"], result["missing"] + result["wrong_reason"]


def test_bad_http_requests_and_slow_clients_get_4xx_never_5xx(lifelong_daemon: Any, tmp_path: Path) -> None:
    stream = tmp_path / "stream.jsonl"
    stream.write_text("".join(e.labelled_record().decode() + "\n" for e in feature_events(100, "h")))
    daemon = lifelong_daemon({"source": {"kind": "file", "path": str(stream)},
                              "learner": {"input_kind": "features", "feature_dim": 4, "feature_warmup_events": 50},
                              "checkpoint": {"dir": None},
                              "http": {"header_timeout_s": 2.0, "body_timeout_s": 2.0}})
    daemon.wait_ready()
    result = run_http(daemon, "features")  # type: ignore[arg-type]
    assert result["cases"] >= 25
    assert daemon.proc.poll() is None and http_json("GET", f"{daemon.url}/healthz")[0] == 200, daemon.log()
    assert result["failures"] == [], result["status"]
    slow = result["slow"]
    assert slow["slow_headers_closed_after_s"] < 10 and slow["slow_body_closed_after_s"] < 10
    assert slow["healthz_with_30_half_open"] == 200


# -- 2 MB records -----------------------------------------------------------------------------

def test_2mb_records_are_dead_lettered_truncated_and_checkpoints_go_on(
        kafka_broker: Broker, lifelong_daemon: Any, tmp_path: Path) -> None:
    topic = f"fbig-{uuid.uuid4().hex[:8]}"
    AdminBroker(kafka_broker.bootstrap, tmp_path).create_topics([topic], max_message_bytes=BIG_TOPIC_BYTES)
    cfg = config(kafka_broker, topic, tmp_path / "state", labels=False)
    warm, mixed = feature_events(60, "w"), feature_events(40, "m", 1)
    produce(kafka_broker, topic, [e.labelled_record() for e in warm])
    daemon = lifelong_daemon(cfg)
    daemon.wait_ready()
    checkpoints = daemon.metric("lifelong_checkpoints_total")
    big = [b'{"id": "big-%d", "features": [1, 0, 0, 0], "pad": "' % i + b"x" * 2_000_000 + b'"}' for i in range(2)]
    produce(kafka_broker, topic, [big[0]] + [e.labelled_record() for e in mixed[:20]] + [big[1]]
            + [e.labelled_record() for e in mixed[20:]])
    wait_learned(daemon, 100, 60)
    wait_until(lambda: daemon.metric("lifelong_checkpoints_total") >= checkpoints + 2, 30, "checkpoints go on")
    assert daemon.stop() == 0, daemon.log()
    assert len(learned_counts(tmp_path / "state")) == 100  # the final checkpoint has everything

    dead = AdminBroker(kafka_broker.bootstrap, tmp_path).read(f"{topic}-dead", expect=2, timeout_s=30)
    assert len(dead) == 2
    for message in dead:
        assert message.header("lifelong.reason") == "oversized"
        assert len(message.value or b"") <= 1_000_000
        assert int(message.header("lifelong.original.size") or 0) > 2_000_000
        assert message.header("lifelong.original.sha256")
    daemon = lifelong_daemon(cfg)  # not stuck behind the big records
    daemon.wait_ready()
    produce(kafka_broker, topic, [e.labelled_record() for e in feature_events(10, "after", 2)])
    wait_learned(daemon, 110, 60)


# -- damaged checkpoints ----------------------------------------------------------------------

def test_damaged_checkpoints_fall_back_keep_every_event_or_refuse_naming_the_file(
        kafka_broker: Broker, lifelong_daemon: Any, tmp_path: Path) -> None:
    topic = f"fdmg-{uuid.uuid4().hex[:8]}"
    template = tmp_path / "template"
    cfg = config(kafka_broker, topic, template, labels=False,
                 checkpoint={"every_s": 60.0, "every_events": 100, "keep": 3})
    events = feature_events(250, "d")
    daemon = lifelong_daemon(cfg)
    for upto in (100, 200, 250):  # checkpoints of 100, 200 and 250 events
        produce(kafka_broker, topic, [e.labelled_record() for e in events[upto - 100 if upto < 250 else 200:upto]])
        wait_learned(daemon, upto, 60)
    assert daemon.stop() == 0, daemon.log()
    assert len(numbered(template)) == 3

    def start_on(case: str, damage: Any, env: dict[str, str] | None = None) -> tuple[Daemon, Path]:
        state = tmp_path / case
        shutil.copytree(template, state, symlinks=True)
        damaged = damage(state)
        case_cfg = {**cfg, "checkpoint": {**cfg["checkpoint"], "dir": str(state)}}
        return lifelong_daemon(case_cfg, env=env), damaged

    for case, damage in {
        "quarter": lambda s: overwrite_quarter(numbered(s)[-1] / "tensors.safetensors") or numbered(s)[-1],
        "truncated": lambda s: truncate_half(numbered(s)[-1] / "tensors.safetensors") or numbered(s)[-1],
        "meta": lambda s: (numbered(s)[-1] / "meta.json").write_bytes(b"\x00{garbage") and numbered(s)[-1],
        "manifest": lambda s: (numbered(s)[-1] / "manifest.json").unlink() or numbered(s)[-1],
    }.items():
        daemon, _ = start_on(case, damage)
        daemon.wait_ready()
        assert daemon.metric("lifelong_checkpoint_restore_fallbacks_total") == 1, case
        # the older checkpoint had 200 events; the 50 after it are read again from its offsets
        wait_learned(daemon, 250, 30)
        status, body = http_json("POST", f"{daemon.url}/v1/predict", PROBE)
        assert status == 200 and body["model_version"] > 0
        assert daemon.stop() == 0, daemon.log()

    def all_damaged(state: Path) -> Path:
        for folder in numbered(state):
            overwrite_quarter(folder / "tensors.safetensors")
        return numbered(state)[-1]

    daemon, damaged = start_on("all", all_damaged)
    assert daemon.proc.wait(60) != 0
    assert str(damaged) in daemon.log() and "on_unrecoverable" in daemon.log()
    daemon, _ = start_on("all-empty", all_damaged, env={"LIFELONG_CHECKPOINT__ON_UNRECOVERABLE": "start_empty"})
    wait_until(lambda: daemon.proc.poll() is None and http_json("GET", f"{daemon.url}/healthz")[0] == 200, 60,
               "started empty")
    assert learned(daemon) == 0
    assert http_json("GET", f"{daemon.url}/readyz")[0] == 503  # nothing damaged is served
    assert daemon.stop() == 0, daemon.log()
