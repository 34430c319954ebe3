"""Forgetting on request, service side: the request parser, intake, label join, holdouts, HTTP, the forget
topic through the loop, and the per-source rate limit (tombstones: test_tombstones.py)."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lifelong.memory.tags import source_tags, tag_of, tags_of
from lifelong.monitoring.evaluator import ContinualEvaluator
from lifelong.monitoring.metrics import Metrics
from lifelong.service.admission import SourceRates
from lifelong.service.config import Settings
from lifelong.service.forgetting import ForgetRefused, refusal
from lifelong.service.joining import LabelJoin
from lifelong.service.predictor import PredictorService
from lifelong.service.runtime import Service
from lifelong.stream.errors import REASONS, InvalidEvent
from lifelong.stream.events import EventLimits
from lifelong.stream.forget_request import ForgetRequest, TooManyIds, validate_forget
from lifelong.stream.sinks import MemorySink
from lifelong.stream.sources import Record

from http_harness import Harness, labelled_events
from loop_harness import merged_settings
from manual_clock import ManualClock


# -- the request parser -----------------------------------------------------------------------

@pytest.mark.parametrize("body, field", [
    ([1, 2], ""), ({}, ""), ({"ids": ["a"], "source": "s"}, ""), ({"ids": []}, "ids"), ({"ids": "a"}, "ids"),
    ({"ids": ["a", ""]}, "ids.1"), ({"ids": [True]}, "ids.0"), ({"ids": [1.5]}, "ids.0"), ({"ids": ["x" * 300]}, "ids.0"),
    ({"source": ""}, "source"), ({"source": 3}, "source"), ({"source": "s" * 300}, "source"),
    ({"source": "s", "why": "gdpr"}, "why")])
def test_malformed_requests_name_the_field(body: Any, field: str) -> None:
    with pytest.raises(InvalidEvent) as err:
        validate_forget(body, EventLimits(), max_ids=10)
    assert err.value.field == field and err.value.reason == "schema"


def test_ids_are_strings_once_each_and_bounded_in_number() -> None:
    assert validate_forget({"ids": [3, "3", "a"]}, EventLimits(), max_ids=3).ids == ("3", "a")
    with pytest.raises(TooManyIds) as err:
        validate_forget({"ids": ["a", "b", "c", "d"]}, EventLimits(), max_ids=3)
    assert err.value.reason == "too_many_ids" and "4 ids" in err.value.detail


# -- the label join and the holdouts ------------------------------------------------------------

def test_label_join_forgets_parked_events_by_id_and_source_and_early_labels_by_id() -> None:
    join = LabelJoin(100, 3600.0, Metrics(REASONS))
    tap = np.ones(4, np.float32)
    join.park("a", tap, source=tag_of("s1"))
    join.park("b", tap)
    join.park("d", tap, source=tag_of("s2"))
    assert join.label("c", "x") is None  # its label came first: an early label
    assert join.forget(tags_of(["b", "c", "nope"]), source_tags(["s1"])) == 3
    assert "d" in join.pending and "a" not in join.pending and len(join.early) == 0
    join.labelled_event("e")  # an event learned with its own label: remembered as joined
    assert join.forget(tags_of(["e"]), source_tags([])) == 0
    assert join.pending.take("e") == ("unknown_id", None)  # its id is not kept any more
    back = LabelJoin(100, 3600.0, Metrics(REASONS))
    back.load_parts(join.state_parts())
    assert back.source_of("d") == tag_of("s2") and back.source_of("d") == 0  # once


def test_holdout_items_go_by_id_tag_or_source_tag_and_keep_their_tags_in_the_state() -> None:
    ev = ContinualEvaluator(holdout_fraction=0.5, per_segment_cap=100)
    taps = np.arange(12, dtype=np.float32).reshape(4, 3)
    ev.add_holdout(taps, ["a", "b", "a", "b"], tags_of(["1", "2", "3", "4"]), source_tags([None, "s", "s", None]))
    arrays, meta = ev.state_dict()
    assert ev.forget(tags_of(["1"]), source_tags(["s"])) == 3
    kept_taps, kept = ev.holdout()
    assert kept == ["b"] and kept_taps.tolist() == [[9.0, 10.0, 11.0]]
    back = ContinualEvaluator(holdout_fraction=0.5, per_segment_cap=100)
    back.load_state_dict(arrays, meta)
    assert back.forget(tags_of(["4"]), np.zeros(0, np.int64)) == 1 and len(back.holdout()[1]) == 3
    old = ContinualEvaluator(holdout_fraction=0.5, per_segment_cap=100)  # saved before forgetting: no tags
    old.load_state_dict({k: v for k, v in arrays.items() if not k.endswith(".tags")}, meta)
    assert old.forget(tags_of(["1", "2"]), source_tags(["s"])) == 0 and len(old.holdout()[1]) == 4


# -- intake and HTTP through the real service -------------------------------------------------------

LIFELONG = {"name": "lifelong", "feature_warmup_events": 30, "steps_per_batch": 1, "replay_per_step": 16,
            "device": "cpu"}


@pytest.fixture
def make(make_service: Any) -> Any:
    return make_service  # conftest's: harnesses over JSONL files, their sources closed at the end


NOW = time.time()  # tombstones expire by the wall clock: event times near it


def sourced(n: int, seed: int = 0) -> list[dict[str, Any]]:
    events = labelled_events(n, seed)
    for e in events:
        e["source"] = f"s{e['id'] % 4}"
        e["ts"] = NOW - 100
    return events


def learned(make: Any, tmp_path: Path, **overrides: Any) -> Harness:
    h = make(sourced(90), learner=LIFELONG, checkpoint={"dir": str(tmp_path / "state")},
             debug={"track_learned_ids": True}, **overrides)
    h.step_all()
    return h


def value(h: Harness, name: str) -> float:
    for line in h.metrics_text().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise KeyError(name)


def record(event: dict[str, Any], offset: int, timestamp_ms: int | None = None) -> Record:
    return Record(json.dumps(event).encode(), "again", 0, offset, timestamp_ms=timestamp_ms)


def test_intake_skips_forgotten_ids_and_sources_and_never_dead_letters_them(make: Any, tmp_path: Path) -> None:
    h = learned(make, tmp_path)
    loop = h.service.loop
    assert loop.forgetting.apply(ForgetRequest(ids=("1", "2")))["forgotten"]["replay_items"] == 2
    loop.forgetting.apply(ForgetRequest(source="s3", at=NOW))
    assert "1" not in loop.learned_ids and "2" not in loop.learned_ids
    rejected, learned_before = loop.counters.rejected, loop.learner.events_learned
    again = {e["id"]: e for e in sourced(90)}
    late = {**again[7], "id": "late-s3", "ts": NOW + 1}  # made after the request: new data
    old = {k: v for k, v in again[7].items() if k != "ts"} | {"id": "old-s3"}  # no ts: its record's time counts
    loop.intake.events([record(again[1], 0), record(again[2], 1), record(old, 2, int((NOW - 1) * 1000)), record(late, 3)])
    assert value(h, "lifelong_forgotten_skipped_total") == 3  # 1, 2, and old-s3 by its record's timestamp
    assert loop.counters.rejected == rejected  # neither dead-lettered nor a duplicate_id
    assert loop.learner.events_learned == learned_before + 1 and loop.learned_ids["late-s3"] == 1
    loop.intake.join_labels(loop.intake.decode_labels([Record(b'{"id": "1", "label": "a"}', "labels", 0, 0)]))
    assert value(h, "lifelong_forgotten_skipped_total") == 4
    assert value(h, "lifelong_tombstones") == 3


def test_tombstones_are_saved_with_the_checkpoint_the_request_writes(make: Any, tmp_path: Path) -> None:
    h = learned(make, tmp_path)
    checkpoints = h.service.loop.counters.checkpoints
    h.service.loop.checkpoint()
    h.service.loop.checkpoint()
    assert len(list((tmp_path / "state").glob("ckpt-*"))) >= 2
    answer = h.service.loop.forgetting.apply(ForgetRequest(ids=("5",)))
    assert answer["checkpointed"] and h.service.loop.counters.checkpoints == checkpoints + 3
    assert len(list((tmp_path / "state").glob("ckpt-*"))) == 1  # the older ones held event 5
    restarted = make(sourced(3), learner=LIFELONG, checkpoint={"dir": str(tmp_path / "state")})
    assert restarted.service.restored
    tombstones = restarted.service.loop.intake.admission.tombstones
    assert tombstones.forgotten(tags_of(["5", "6"]), np.zeros(2, np.int64), np.zeros(2)).tolist() == [True, False]


def test_http_forget_answers_what_it_removed_and_zero_for_unknown_ids(make: Any, tmp_path: Path) -> None:
    h = learned(make, tmp_path)
    h.service.loop.start()
    try:
        known = h.client.post("/v1/forget", json={"ids": [0, "3", 6]})
        unknown = h.client.post("/v1/forget", json={"ids": ["never-seen"]})
        source = h.client.post("/v1/forget", json={"source": "s1"})
    finally:
        h.service.loop.stop()
    assert known.status_code == 200, known.text
    assert known.json()["forgotten"] == {"replay_items": 3, "pending": 0, "holdout": 0}
    versions = [r.json()["model_version"] for r in (known, unknown, source)]
    assert versions == sorted(set(versions)) and versions[-1] == h.service.holder.current.version  # each a new one
    served = h.client.post("/v1/predict", json={"instances": [{"features": [0.0] * 4}]}).json()
    assert served["model_version"] >= versions[-1]
    assert unknown.status_code == 200
    assert unknown.json()["forgotten"] == {"replay_items": 0, "pending": 0, "holdout": 0}
    assert source.status_code == 200 and source.json()["forgotten"]["replay_items"] >= 15  # ids 1, 5, 9, ...
    assert value(h, 'lifelong_forget_requests_total{outcome="applied"}') == 3
    assert value(h, "lifelong_forget_items_total") == 3 + source.json()["forgotten"]["replay_items"]


def test_http_forget_refuses_bad_requests_with_the_reason(make: Any, tmp_path: Path) -> None:
    h = learned(make, tmp_path, forget={"max_ids_per_request": 2})
    both = h.client.post("/v1/forget", json={"ids": ["a"], "source": "s"})
    assert both.status_code == 422 and both.json()["detail"][0]["msg"] == "give exactly one of 'ids' or 'source'"
    assert h.client.post("/v1/forget", content=b"{not json").status_code == 422
    bad_id = h.client.post("/v1/forget", json={"ids": ["ok", {"id": 1}]})
    assert bad_id.status_code == 422 and bad_id.json()["detail"][0]["loc"] == ["body", "ids.1"]
    many = h.client.post("/v1/forget", json={"ids": ["a", "b", "c"]})
    assert many.status_code == 413 and "forget.max_ids_per_request=2" in many.json()["detail"]
    assert value(h, 'lifelong_forget_requests_total{outcome="rejected"}') == 4
    assert value(h, 'lifelong_forget_requests_total{outcome="applied"}') == 0


def test_services_that_cannot_forget_answer_409_with_the_reason(make: Any, tmp_path: Path) -> None:
    baseline = make(labelled_events(30, 0))  # nmc: no tagged replay memory
    off = make(labelled_events(30, 0), learner=LIFELONG, forget={"enabled": False})
    answer = baseline.client.post("/v1/forget", json={"ids": ["1"]})
    assert answer.status_code == 409 and "learner 'nmc' cannot forget" in answer.json()["detail"]
    assert "forget.enabled: false" in off.client.post("/v1/forget", json={"ids": ["1"]}).json()["detail"]
    assert value(baseline, 'lifelong_forget_requests_total{outcome="rejected"}') == 1
    with pytest.raises(ForgetRefused, match="send it to the learner") as err:
        PredictorService.forget(object.__new__(PredictorService), ForgetRequest(ids=("1",)))
    assert err.value.status == 409


# -- the forget topic through the learning loop ---------------------------------------------------

class Topics:
    """Records of several topics, handed out in the order they were added."""

    def __init__(self) -> None:
        self.waiting: list[Record] = []
        self.ends: dict[str, int] = {}
        self.skipped = 0
        self.commits: list[dict[tuple[str, int], int]] = []

    exhausted = False

    def add(self, topic: str, values: list[Any]) -> None:
        for v in values:
            raw = v.encode() if isinstance(v, str) else json.dumps(v).encode()
            self.waiting.append(Record(raw, topic, 0, self.ends.get(topic, 0)))
            self.ends[topic] = self.ends.get(topic, 0) + 1

    def poll(self, max_records: int, timeout_s: float = 0.0) -> list[Record]:
        out, self.waiting = self.waiting[:max_records], self.waiting[max_records:]
        return out

    def commit(self, offsets: dict[tuple[str, int], int]) -> bool:
        self.commits.append(dict(offsets))
        return True

    def lag(self) -> int:
        return len(self.waiting)

    def assigned(self) -> int:
        return 2

    def close(self) -> None:
        return None


def topic_service(tmp_path: Path, source: Topics) -> Service:
    settings = merged_settings({
        "source": {"kind": "kafka", "batch_size": 200, "poll_timeout_s": 0.001,
                   "kafka": {"events_topic": "events", "forget_topic": "forget"}},
        "learner": {**LIFELONG, "input_kind": "features", "feature_dim": 4},
        "evaluation": {"holdout_fraction": 0.0}, "debug": {"track_learned_ids": True},
        "checkpoint": {"dir": str(tmp_path / "state"), "every_s": 3600.0, "every_events": 10_000}}, {})
    return Service(settings, source=source, sink=MemorySink())


def test_a_forget_message_is_applied_before_its_steps_events_and_checkpointed_before_its_commit(
        tmp_path: Path) -> None:
    source = Topics()
    service = topic_service(tmp_path, source)
    source.add("events", sourced(60))
    service.loop.step()
    resent = sourced(6)[5]
    source.add("forget", [{"ids": ["5"]}, "not json", {"ids": ["x"], "source": "s"}])
    source.add("events", [resent])
    checkpoints = service.loop.counters.checkpoints
    service.loop.step()
    assert service.loop.counters.checkpoints == checkpoints + 1  # the request's own, at once
    assert source.commits[-1].get(("forget", 0), 0) == 0  # committed before the forget record's offset moved
    assert "5" not in service.loop.learned_ids
    metrics = service.metrics
    assert metrics.forget_requests.labels(outcome="applied")._value.get() == 1
    assert metrics.forget_requests.labels(outcome="rejected")._value.get() == 2  # both dead-lettered
    assert metrics.events_rejected.labels(reason="not_json")._value.get() == 1
    assert metrics.forgotten_skipped._value.get() == 1  # the resent event 5
    service.loop.checkpoint()
    assert source.commits[-1][("forget", 0)] == 3


# -- the per-source rate limit ---------------------------------------------------------------------

def test_source_rates_allow_a_seconds_burst_then_the_rate() -> None:
    clock = ManualClock()
    rates = SourceRates(2.0, clock=clock)
    assert [rates.allow(7) for _ in range(3)] == [True, True, False]
    assert rates.allow(0) and rates.allow(8)  # no source: never throttled; another source: its own bucket
    clock.now += 0.5
    assert [rates.allow(7) for _ in range(2)] == [True, False]


def test_throttled_events_are_counted_and_dead_lettered_when_asked(make: Any) -> None:
    events = labelled_events(40, 0)
    for e in events:
        e["source"] = "flood"
    h = make(events, influence={"max_source_rate": 5.0, "dead_letter_throttled": True})
    h.step_all()
    assert value(h, "lifelong_events_throttled_total") >= 30  # 40 in far less than a second, 5 a second
    throttled = value(h, "lifelong_events_throttled_total")
    assert value(h, 'lifelong_events_rejected_total{reason="source_over_rate"}') == throttled
    assert h.service.learner.events_learned == 40 - throttled


def test_per_key_forgets_in_every_key_that_holds_the_events_and_merge_refuses(make: Any, tmp_path: Path) -> None:
    events = sourced(90)
    for e in events:
        e["key"] = f"k{e['id'] % 2}"
    keyed = make(events, learner={**LIFELONG, "encoder": "standardize", "feature_warmup_events": 0},
                 checkpoint={"dir": str(tmp_path / "keyed")}, scaleout={"learning": {"mode": "per_key"}})
    keyed.step_all()
    answer = keyed.service.loop.forgetting.apply(ForgetRequest(ids=("0", "1", "2")))  # keys k0, k1, k0
    assert answer["forgotten"]["replay_items"] == 3 and answer["checkpointed"]
    assert keyed.service.loop.forgetting.apply(ForgetRequest(source="s1"))["forgotten"]["replay_items"] == 22
    merging = keyed.service.settings.model_copy(update={"scaleout": Settings(
        source={"kind": "file", "path": str(tmp_path / "x")}, checkpoint={"dir": str(tmp_path / "merge")},
        scaleout={"learning": {"mode": "merge", "merge_dir": str(tmp_path / "m")}}).scaleout})
    refused = refusal(merging, keyed.service.learner)
    assert refused is not None and refused.status == 422 and "'merge'" in refused.detail


@pytest.mark.parametrize("change, problem", [
    ({"source": {"kind": "kafka", "kafka": {"forget_topic": "lifelong-events"}}}, "must differ"),
    ({"source": {"kind": "kafka", "kafka": {"forget_topic": "f"}}, "forget": {"enabled": False}},
     "needs forget.enabled"),
    ({"source": {"kind": "kafka", "kafka": {"forget_topic": "f"}}, "learner": {"name": "nmc"}},
     "needs a learner that can forget"),
    ({"source": {"kind": "kafka", "kafka": {"forget_topic": "f"}}, "checkpoint": {"dir": "/tmp/x"},
      "scaleout": {"learning": {"mode": "per_key"}}}, "not supported with scaleout.learning.mode 'per_key'")])
def test_a_forget_topic_that_could_lose_requests_is_refused_at_start(change: dict[str, Any], problem: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=problem):
        Settings(**change)


def test_a_forgotten_sources_ids_leave_the_duplicate_window_and_the_joined_ids(make: Any, tmp_path: Path) -> None:
    h = learned(make, tmp_path)
    loop = h.service.loop
    recent = loop.intake.validator.recent_ids
    mine = [str(i) for i in range(90) if i % 4 == 2]  # source s2's events
    assert all(i in recent for i in mine) and sorted(recent.of_sources({tag_of("s2")}), key=int) == mine
    loop.intake.join.pending._done["6"] = "joined"  # as if event 6's label had joined
    loop.forgetting.apply(ForgetRequest(source="s2"))
    assert not any(i in recent for i in mine) and "1" in recent  # s1's stay
    assert "6" not in loop.intake.join.pending._done
    assert not any(i in loop.learned_ids for i in mine)
    state = recent.state_dict()[1]  # what the checkpoint keeps names none of them
    assert not set(mine) & set(state["ids"]) and all(tag != tag_of("s2") for _, tag in state.get("sources", []))
