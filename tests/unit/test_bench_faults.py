"""The fault bench's pure parts: corpus, delayed-label feeder, metrics, targets, report, damage helpers, CLI."""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import pytest

from lifelong.bench.faults import FaultOptions, _finite, _met, keep_logs, summarise
from lifelong.bench.faults_corpus import Bad, bad_events, bad_labels, feature_events, http_cases, text_events
from lifelong.bench.faults_damage import DAMAGE, numbered, overwrite_quarter, truncate_half
from lifelong.bench.faults_env import Message, Sent, parse_metrics
from lifelong.bench.faults_feed import Feeder, send_backlog
from lifelong.bench.faults_report import learn_stats, match_dead_letters, render_md, targets
from lifelong.cli import main
from lifelong.stream.errors import REASONS

# -- corpus --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["features", "text"])
def test_bad_event_corpus_has_25_distinct_kinds_with_known_reasons(kind: str) -> None:
    corpus = bad_events(kind)
    kinds = [b.kind for b in corpus]
    assert len(set(kinds)) == len(kinds) >= 25
    for bad in corpus:
        assert bad.role == "events"
        assert bad.reasons and bad.reasons <= set(REASONS), bad.kind
        assert bad.value is None or isinstance(bad.value, bytes)


def test_bad_label_corpus_has_25_distinct_kinds_with_known_reasons() -> None:
    corpus = bad_labels()
    assert len({b.kind for b in corpus}) == len(corpus) >= 25
    assert all(b.role == "labels" and b.reasons <= set(REASONS) for b in corpus)


def test_bad_records_are_what_their_names_say() -> None:
    ev = {b.kind: b.value for b in bad_events("features")}
    assert ev["nested_10000"].count(b"[") == 10_000
    assert len(ev["record_2mb"]) > 2_000_000
    assert b"\\ud800" in ev["lone_surrogate_text"]
    with pytest.raises(UnicodeDecodeError):
        ev["invalid_utf8"].decode("utf-8")
    assert ev["null_value"] is None and ev["empty"] == b""
    assert ev["bom"].startswith(b"\xef\xbb\xbf")
    assert math.isinf(json.loads(ev["overflow_1e400"])["features"][0])
    assert json.loads(ev["beyond_float32"])["features"][0] == 1e39
    assert len(json.loads(ev["id_100kb"])["id"]) == 100_000
    assert ev["duplicate_keys"].count(b'"id"') == 2
    assert json.loads(ev["wrong_kind"]).get("text")  # a features daemon gets text
    assert "features" in json.loads(bad_events("text")[[b.kind for b in bad_events("text")].index("wrong_kind")].value)
    labels = {b.kind: b.value for b in bad_labels()}
    assert json.loads(labels["missing_label"]) == {"id": "bl-nolabel"}
    assert len(labels["record_2mb"]) > 2_000_000


def test_valid_events_carry_no_label_and_send_it_apart() -> None:
    events = feature_events(30, "f", seed=1)
    assert len({e.id for e in events}) == 30
    for e in events:
        record = json.loads(e.value)
        assert "label" not in record and len(record["features"]) == 4
        assert json.loads(e.label_record()) == {"id": e.id, "label": e.label}
        assert json.loads(e.labelled_record()) == {**record, "label": e.label}
    assert feature_events(30, "f", seed=1) == events  # seeded
    texts = text_events(5, "t")
    assert all(json.loads(e.value)["text"] and e.label for e in texts)
    assert [e.id for e in texts] == [f"t-{i}" for i in range(5)]


def test_http_corpus_covers_both_routes() -> None:
    cases = http_cases("features", 4)
    names = [c.name for c in cases]
    assert len(set(names)) == len(names) >= 25
    assert {c.path for c in cases} == {"/v1/predict", "/v1/feedback"}
    too_many = next(c for c in cases if c.name == "predict:too_many_instances")
    assert len(json.loads(too_many.body)["instances"]) == 5


# -- the feeder ----------------------------------------------------------------------------------


class FakeFuture:
    def add_callback(self, fn: Any) -> None:
        fn(None)


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[float, str, bytes | None]] = []
        self.flushes = 0

    def send(self, topic: str, value: bytes | None, key: bytes | None = None) -> FakeFuture:
        self.sent.append((time.monotonic(), topic, value))
        return FakeFuture()

    def flush(self, timeout_s: float = 0) -> None:
        self.flushes += 1


def test_feeder_sends_each_label_after_its_event_within_the_delay() -> None:
    producer = FakeProducer()
    events = feature_events(40, "x")
    feeder = Feeder(producer, "ev", "lab", events, rate=200.0, max_delay_s=0.3,  # type: ignore[arg-type]
                    seed=3).start()
    assert feeder.wait(10) and feeder.error is None
    at: dict[tuple[str, str], float] = {}
    for t, topic, value in producer.sent:
        at[(topic, json.loads(value)["id"])] = t  # type: ignore[arg-type]
    for e in events:
        delay = at[("lab", e.id)] - at[("ev", e.id)]
        assert 0 <= delay < 0.3 + 0.2
    assert feeder.events_sent == feeder.labels_sent == 40
    assert producer.sent[0][1] == "ev"
    assert any(t == "ev" for _, t, _ in producer.sent[len(producer.sent) // 2:])  # labels interleave with events


def test_feeder_pause_flushes_and_holds_everything() -> None:
    producer = FakeProducer()
    events = feature_events(400, "p")
    feeder = Feeder(producer, "ev", "lab", events, rate=400.0, max_delay_s=0.1).start()  # type: ignore[arg-type]
    time.sleep(0.2)
    feeder.pause()
    held = len(producer.sent)
    assert producer.flushes >= 1 and 0 < held < 800
    time.sleep(0.3)
    assert len(producer.sent) == held and feeder.records_sent == held
    feeder.resume()
    assert feeder.wait(10)
    assert len(producer.sent) == 800
    assert feeder.first_send_after_resume is not None


def test_backlog_sends_labels_before_their_events() -> None:
    producer = FakeProducer()
    events = feature_events(5, "b")
    assert send_backlog(producer, "ev", "lab", events) == 10  # type: ignore[arg-type]
    assert [t for _, t, _ in producer.sent] == ["lab"] * 5 + ["ev"] * 5


# -- metrics and report --------------------------------------------------------------------------


def test_learn_stats_counts_once_never_twice_and_unexpected() -> None:
    stats = learn_stats({"a": 1, "b": 2, "c": 1, "zz": 1}, ["a", "b", "c", "d", "a"])
    assert stats["labelled"] == 4 and stats["learned_once"] == 2
    assert stats["never_learned"] == 1 and stats["never_examples"] == ["d"]
    assert stats["learned_twice"] == 1 and stats["twice_examples"] == ["b"]
    assert stats["once_fraction"] == 0.5
    assert stats["unexpected_learned"] == 1
    assert math.isnan(learn_stats({}, [])["once_fraction"])


def dead_letter(topic: str, partition: int, offset: int, reason: str, **extra: str) -> Message:
    headers = {"lifelong.source.topic": topic, "lifelong.source.partition": str(partition),
               "lifelong.source.offset": str(offset), "lifelong.reason": reason, **extra}
    return Message(b"x", None, 0, 0, {k: v.encode() for k, v in headers.items()})


def test_dead_letters_are_matched_by_source_and_reason() -> None:
    a = Bad("deep", "events", b"[[", frozenset({"too_deep"}))
    b = Bad("junk", "events", b"?", frozenset({"not_json"}))
    c = Bad("big", "labels", b"x" * 10, frozenset({"oversized"}))
    d = Bad("lost", "labels", b"", frozenset({"not_json"}))
    sent = [(a, Sent("ev", 0, 5)), (b, Sent("ev", 1, 5)), (c, Sent("lab", 0, 2)), (d, Sent("lab", 1, 0))]
    dead = [dead_letter("ev", 0, 5, "too_deep"), dead_letter("ev", 1, 5, "internal_error"),
            dead_letter("lab", 0, 2, "oversized", **{"lifelong.original.size": "2000000"}),
            dead_letter("ev", 0, 6, "schema"), Message(b"y", None, 0, 9, {})]
    out = match_dead_letters(sent, dead)
    assert out["records"] == 4 and out["dead_lettered"] == 3 and out["with_expected_reason"] == 2
    assert out["dead_lettered_fraction"] == 0.5
    assert out["missing"] == ["labels:lost"]
    assert out["wrong_reason"] == ["events:junk (internal_error, expected not_json)"]
    assert out["by_kind"]["labels:big"]["truncated_from_bytes"] == 2_000_000


def full_doc(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"learned_once_fraction": 1.0, "learned_twice": 0, "outage_learned_fraction": 1.0,
                           "resume_seconds": 3.2, "crashes": 0, "bad_record_kinds": {"events": 30, "labels": 26,
                                                                                     "http": 30},
                           "bad_records_dead_lettered_fraction": 1.0, "http_5xx": 0, "oversized_ok": True,
                           "checkpoint_damage": {"meta_garbage": "fell_back"}, "damaged_checkpoints_served": 0}
    doc.update(over)
    return doc


def test_targets_met_unmet_and_not_measured() -> None:
    assert all(t.ok for t in targets(full_doc()))
    by_key = {t.key: t.ok for t in targets(full_doc(resume_seconds=10.5, learned_twice=2, http_5xx=None))}
    assert by_key["resume_seconds"] is False and by_key["learned_twice"] is False
    assert by_key["http_5xx"] is None and by_key["crashes"] is True
    # no crashes, but over too few kinds, is not the target
    few = {t.key: t.ok for t in targets(full_doc(bad_record_kinds={"events": 30, "labels": 10, "http": 30}))}
    assert few["crashes"] is False


def test_summary_sums_learned_twice_over_kills_and_outage() -> None:
    parts = {"kills": {"learned_once_fraction": 0.9, "learned_twice": 2},
             "outage": {"outage_learned_fraction": 1.0, "resume_seconds": 1.5, "learned_twice": 1},
             "damage": {"cases": {"x": {"outcome": "fell_back"}}, "served": 0}}
    doc = summarise(parts)
    assert doc["learned_twice"] == 3 and doc["learned_once_fraction"] == 0.9 and doc["resume_seconds"] == 1.5
    assert doc["checkpoint_damage"] == {"x": "fell_back"} and doc["crashes"] is None
    assert summarise({})["learned_twice"] is None


def test_report_lists_failing_targets_and_details() -> None:
    doc = full_doc(quick=True, commit="abc123", resume_seconds=24.5, input_kind="features",
                   checkpoint_damage={"meta_garbage": {"outcome": "restored", "served": True, "detail": "a|b"}},
                   bad_records={"valid_learned": 3, "valid_sent": 3, "restarts": 0, "dead_letters": {"by_kind": {
                       "events:bom": {"dead_lettered": False, "reason": None, "expected": ["not_json"], "ok": False}}}})
    md = render_md(doc)
    assert "# Fault bench (quick run)" in md and "`abc123`" in md
    assert "| `resume_seconds` | <= 10 s after the broker accepts connections again | 24.5 | **no** |" in md
    assert "| events:bom | no | - **x** | not_json |" in md
    assert "| meta_garbage | restored | - | - | yes | a\\|b |" in md
    assert md.rstrip().endswith("Failing targets: `resume_seconds`")


def test_json_has_no_nan() -> None:
    assert _finite({"a": [float("nan"), 1.0], "b": {"c": float("inf")}}) == {"a": [None, 1.0], "b": {"c": None}}


def test_parse_metrics_reads_labelled_and_plain_samples() -> None:
    text = ("# HELP x\nlifelong_events_consumed_total 12.0\n"
            'lifelong_events_rejected_total{reason="too_deep"} 3.0\nbroken line\n')
    m = parse_metrics(text)
    assert m["lifelong_events_consumed_total"] == 12.0
    assert m['lifelong_events_rejected_total{reason="too_deep"}'] == 3.0


def test_quick_runs_features_and_full_runs_text() -> None:
    assert FaultOptions(Path("x"), quick=True).kind == "features"
    assert FaultOptions(Path("x")).kind == "text"
    assert FaultOptions(Path("x"), input_kind="features").kind == "features"


# -- checkpoint damage helpers -------------------------------------------------------------------


def fake_state(root: Path) -> Path:
    state = root / "state"
    for n in (1, 2, 3):
        folder = state / f"ckpt-{n:012d}"
        folder.mkdir(parents=True)
        (folder / "tensors.safetensors").write_bytes(bytes(range(256)) * 4)
        (folder / "meta.json").write_text("{}")
        (folder / "manifest.json").write_text("{}")
    os.symlink("ckpt-000000000003", state / "latest")
    return state


def test_overwrite_quarter_and_truncate_half(tmp_path: Path) -> None:
    path = tmp_path / "f"
    original = bytes(range(256)) * 4
    path.write_bytes(original)
    overwrite_quarter(path)
    data = path.read_bytes()
    assert len(data) == len(original)
    assert data[:512] == original[:512] and data[768:] == original[768:] and data[512:768] != original[512:768]
    truncate_half(path)
    assert path.stat().st_size == 512


def test_damage_cases_hit_the_newest_checkpoint_or_all(tmp_path: Path) -> None:
    state = fake_state(tmp_path)
    newest = state / "ckpt-000000000003"
    assert DAMAGE["manifest_deleted"](state) == str(newest / "manifest.json")
    assert not (newest / "manifest.json").exists() and (state / "ckpt-000000000002" / "manifest.json").exists()
    DAMAGE["latest_deleted"](state)
    assert not os.path.lexists(state / "latest") and len(numbered(state)) == 3
    DAMAGE["every_checkpoint_damaged"](state)
    assert all((f / "tensors.safetensors").read_bytes() != bytes(range(256)) * 4 for f in numbered(state))
    DAMAGE["dir_is_a_file"](state)
    assert state.is_file()


# -- command line --------------------------------------------------------------------------------


def test_cli_refuses_unknown_scenarios_and_mixed_modes() -> None:
    with pytest.raises(SystemExit, match="unknown scenario"):
        main(["bench", "--faults", "--only", "kills,nope"])
    with pytest.raises(SystemExit, match="--faults runs alone"):
        main(["bench", "--faults", "--speed"])


def test_logs_are_kept_for_scenarios_that_miss_a_target(tmp_path: Path) -> None:
    assert _met("outage", {"outage_learned_fraction": 1.0, "resume_seconds": 2.0, "learned_twice": 0})
    assert not _met("outage", {"outage_learned_fraction": 1.0, "resume_seconds": 12.0, "learned_twice": 0})
    assert _met("kills", None)  # not run: nothing to judge (an error keeps the logs anyway)
    log = tmp_path / "kills-1.log"
    log.write_bytes(b"x" * 10 + b"tail")

    class D:
        log_paths = [log, tmp_path / "never-written.log"]

    keep_logs([D()], tmp_path / "out" / "kills", tail_bytes=4)
    assert (tmp_path / "out" / "kills" / "kills-1.log").read_bytes() == b"tail"
    assert not (tmp_path / "out" / "kills" / "never-written.log").exists()
