"""No record can take the loop down: the bad-record corpus on both topics, and records that make
encoding, prediction or learning raise, are each their own dead letter; the rest of the batch is learned."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from lifelong.service.runtime import Service
from lifelong.stream.sinks import MemorySink, dead_letter
from lifelong.stream.errors import InvalidEvent
from lifelong.stream.sources import Record
from loop_harness import DEAD_LETTERS, labelled, metrics_text, sent_to
from loop_topics import EVENTS, LABELS, TopicsSource, topics_settings

OK = '"features": [1, 2, 3, 4]'
DEEP = b'{"id": "deep", "features": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"

# (record bytes, reason of its dead letter): at least 25 kinds of bad event.
BAD_EVENTS: list[tuple[bytes, str]] = [
    (b"this is { not json", "not_json"),
    (b"", "not_json"),  # an empty record (a Kafka tombstone arrives as b"")
    (b"   \n ", "not_json"),
    (b'{"id": "tg", ' + OK.encode() + b"} trailing", "not_json"),
    (b'{"id": "u8", "features": [1, 2, 3, 4], "label": "\xff\xfe"}', "not_json"),  # not UTF-8
    (b"42", "schema"),
    (b"null", "schema"),
    (b"[1, 2, 3, 4]", "schema"),
    (DEEP, "too_deep"),
    (b'{"id": "d70", "features": ' + b"[" * 70 + b"1" + b"]" * 70 + b"}", "too_deep"),
    (b'{"id": "sur", "features": [1, 2, 3, 4], "label": "wake \\ud800"}', "bad_text"),
    (b'{"id": "\\udc00x", ' + OK.encode() + b"}", "bad_text"),
    (b'{"id": "kk", ' + OK.encode() + b', "\\ud800": 1}', "bad_text"),
    (b'{"id": "nan", "features": [1, NaN, 3, 4]}', "non_finite"),
    (b'{"id": "inf", "features": [1, Infinity, 3, 4]}', "non_finite"),
    (b'{"id": "e400", "features": [1, 2, 3, 1e400]}', "non_finite"),
    (b'{"id": "f32", "features": [1, 2, 3, 1e39]}', "non_finite"),  # finite, past float32
    (b'{"id": "big", "features": [1, 2, 3, 1' + b"0" * 400 + b"]}", "schema"),
    (b'{"id": "dim", "features": [1, 2, 3]}', "wrong_dimension"),
    (b'{"id": "kind", "text": "hello"}', "wrong_input_kind"),
    (b'{"id": true, ' + OK.encode() + b"}", "schema"),
    (b'{"id": "bl", ' + OK.encode() + b', "label": false}', "bad_label"),
    (b'{"id": "fl", ' + OK.encode() + b', "label": 1.5}', "bad_label"),
    (json.dumps({"id": "x" * 100_000, "features": [1, 2, 3, 4]}).encode(), "schema"),
    (json.dumps({"id": "ll", "features": [1, 2, 3, 4], "label": "y" * 100_000}).encode(), "bad_label"),
    (b'{"id": "ex", ' + OK.encode() + b', "colour": "red"}', "schema"),
    (b'{"id": "none", "label": "a"}', "missing_input"),
    (b'{"id": "str", "features": "1,2,3,4"}', "schema"),
    (b'{"id": "", ' + OK.encode() + b"}", "schema"),
    (b'{"id": 1' + b"1" * 5000 + b", " + OK.encode() + b"}", "not_json"),  # past Python's int digits limit
    (b'\xef\xbb\xbf{"id": "bom", ' + OK.encode() + b"}", "not_json"),  # a byte order mark
    (b'{"id": "dup", "id": "dup2", ' + OK.encode() + b"}", "schema"),  # which id? refused, not guessed
    (b'{"id": "dupl", ' + OK.encode() + b', "label": "a", "label": "b"}', "schema"),
    (b'{"id": "big2", "features": [' + b"1.0, " * 300_000 + b"1.0]}", "oversized"),
]

BAD_LABELS: list[tuple[bytes, str]] = [
    (b"{oops", "not_json"),
    (b"", "not_json"),
    (b'"a label"', "schema"),
    (b'{"id": "a"}', "bad_label"),
    (b'{"id": "a", "label": "b", "x": 1}', "schema"),
    (b'{"id": "a", "label": true}', "bad_label"),
    (b'{"id": "\\ud800", "label": "b"}', "bad_text"),
    (b'{"id": "a", "label": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", "too_deep"),
    (json.dumps({"id": "x" * 100_000, "label": "b"}).encode(), "schema"),
    (b'{"id": "big", "label": "' + b"z" * 1_100_000 + b'"}', "oversized"),
    (b'\xef\xbb\xbf{"id": "a", "label": "b"}', "not_json"),
    (b'{"id": "a", "label": "b", "label": "c"}', "schema"),
]


def reasons(sink: MemorySink) -> list[str]:
    return [dict(m[3])["lifelong.reason"].decode() for m in sent_to(sink, DEAD_LETTERS)]


def test_the_bad_record_corpus_is_dead_lettered_with_its_reasons(tmp_path: Path,
                                                                 metric: Callable[..., float]) -> None:
    assert len(BAD_EVENTS) + len(BAD_LABELS) >= 25
    rng = np.random.default_rng(0)
    valid = [labelled(i, rng) for i in range(2 * len(BAD_EVENTS))]
    source = TopicsSource()
    for n, (raw, _) in enumerate(BAD_EVENTS):  # each bad record between two valid ones
        source.produce(EVENTS, [valid[2 * n], raw, valid[2 * n + 1]])
    source.produce(LABELS, [raw for raw, _ in BAD_LABELS])
    sink = MemorySink()
    service = Service(topics_settings(tmp_path / "state", source={"batch_size": 32}), source=source, sink=sink)
    for _ in range(10):
        service.loop.step()
    assert reasons(sink) == [r for _, r in BAD_EVENTS] + [r for _, r in BAD_LABELS]
    counts = service.loop.learned_ids
    assert counts is not None and sorted(counts) == sorted(v["id"] for v in valid)
    assert set(counts.values()) == {1}
    text = metrics_text(service)
    assert metric(text, "lifelong_labels_total", {"outcome": "invalid"}) == len(BAD_LABELS)
    # every dead letter fits the producer's limit
    assert all(len(m[1]) <= 1_000_000 for m in sent_to(sink, DEAD_LETTERS))


class Poisoned:
    """Wraps a learner so that inputs carrying a marker make one stage raise (as a tokenizer bug would)."""

    def __init__(self, inner: Any, stage: str, marker: float = 777.0) -> None:
        self._inner, self._stage, self._marker = inner, stage, marker

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def _check(self, stage: str, x: np.ndarray) -> None:
        if stage == self._stage and np.any(np.isclose(np.asarray(x)[..., -1], self._marker, rtol=0, atol=1e-3)):
            raise ValueError(f"poisoned {stage}")

    def encode(self, inputs: Any, *, learning: bool = False) -> np.ndarray:
        self._check("encode", np.asarray(inputs))
        taps = self._inner.encode(inputs, learning=learning)
        taps[:, -1] = np.asarray(inputs)[:, -1]  # carry the marker through to the taps
        return taps

    def predict_taps(self, taps: np.ndarray) -> Any:
        self._check("predict", taps)
        return self._inner.predict_taps(taps)

    def learn_taps(self, taps: np.ndarray, labels: Any, **tagged: Any) -> Any:
        self._check("learn", taps)
        return self._inner.learn_taps(taps, labels, **tagged)


@pytest.mark.parametrize("stage", ["encode", "predict", "learn"])
def test_a_record_that_makes_a_stage_raise_is_rejected_alone(tmp_path: Path, stage: str,
                                                             metric: Callable[..., float]) -> None:
    from lifelong.service.runtime import build_learner

    settings = topics_settings(tmp_path / "state", source={"batch_size": 64},
                               learner={"feature_warmup_events": 0})
    rng = np.random.default_rng(1)
    events = [labelled(i, rng) for i in range(40)]
    unlabelled = [{"id": f"u{i}", "features": labelled(i, rng)["features"]} for i in range(10)]
    poison = {"id": "poison", "features": [0.0, 0.0, 0.0, 777.0]}
    if stage != "predict":
        poison["label"] = "a"
    source = TopicsSource()
    source.produce(EVENTS, events[:20] + unlabelled[:5] + [poison] + events[20:] + unlabelled[5:])
    sink = MemorySink()
    learner = Poisoned(build_learner(settings), stage)
    service = Service(settings, learner=learner, source=source, sink=sink)  # type: ignore[arg-type]
    service.loop.step()
    dead = sent_to(sink, DEAD_LETTERS)
    assert len(dead) == 1
    headers = dict(dead[0][3])
    assert headers["lifelong.reason"] == b"internal_error"
    assert headers["lifelong.detail"] == f"ValueError: poisoned {stage}".encode()
    assert json.loads(dead[0][1])["id"] == "poison"
    assert service.loop.learned_ids == {e["id"]: 1 for e in events}
    assert len(service.loop.join.pending) == 10  # every other unlabelled event was predicted and parked
    assert metric(metrics_text(service), "lifelong_events_rejected_total", {"reason": "internal_error"}) == 1.0
    # the id is free again: a corrected resend is learned
    source.produce(EVENTS, [{"id": "poison", "features": [1.0, 0.0, 0.0, 0.0], "label": "a"}])
    service.loop.step()
    assert service.loop.learned_ids is not None and service.loop.learned_ids["poison"] == 1


def test_an_oversized_dead_letter_is_cut_to_fit_and_says_so() -> None:
    import hashlib

    value = b'{"id": "o", "features": [' + b"1.0, " * 500_000 + b"1.0]}"
    record = Record(value, EVENTS, 3, 99, b"key")
    out, key, headers = dead_letter(record, InvalidEvent("oversized", "", "too big"), max_message_bytes=1_000_000)
    assert len(out) + sum(len(k) + len(v) for k, v in headers) + len(key or b"") <= 1_000_000
    assert value.startswith(out) and len(out) > 900_000
    h = dict(headers)
    assert h["lifelong.original.size"] == str(len(value)).encode()
    assert h["lifelong.original.sha256"] == hashlib.sha256(value).hexdigest().encode()
    assert h["lifelong.truncated"] == b"1" and h["lifelong.reason"] == b"oversized"
    small, _, small_headers = dead_letter(Record(b"{x", EVENTS), InvalidEvent("not_json", "", "x"), 1_000_000)
    assert small == b"{x" and "lifelong.truncated" not in dict(small_headers)


def test_new_classes_past_the_limit_are_rejected(tmp_path: Path) -> None:
    source = TopicsSource()
    source.produce(EVENTS, [{"id": f"c{i}", "features": [float(i), 1.0, 0.0, 0.0], "label": f"class-{i}"}
                            for i in range(5)] + [{"id": "again", "features": [0.0, 1.0, 0.0, 0.0], "label": "class-1"}])
    sink = MemorySink()
    service = Service(topics_settings(tmp_path / "state", limits={"max_classes": 3}), source=source, sink=sink)
    service.loop.step()
    assert reasons(sink) == ["too_many_classes", "too_many_classes"]
    assert sorted(service.learner.classes) == ["class-0", "class-1", "class-2"]
    assert service.loop.learned_ids == {"c0": 1, "c1": 1, "c2": 1, "again": 1}  # a known class still learns
