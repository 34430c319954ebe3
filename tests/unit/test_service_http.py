"""The HTTP app and the learning loop, driven synchronously with a FileSource and a features learner."""
from __future__ import annotations

import json
from typing import Any, Callable

import numpy as np
import pytest

from lifelong.stream.errors import REASONS

from http_harness import CENTERS, Harness, Metric, labelled_events


# -- health and readiness ---------------------------------------------------------------------

def test_healthz_is_503_while_the_loop_thread_is_not_running(make_service: Callable[..., Harness]) -> None:
    h = make_service(labelled_events(3, seed=1))
    resp = h.client.get("/healthz")
    assert resp.status_code == 503
    assert resp.json() == {"status": "learning loop stopped"}


def test_healthz_is_200_while_the_loop_runs(make_service: Callable[..., Harness]) -> None:
    h = make_service(labelled_events(3, seed=1))
    h.service.loop.start()
    try:
        resp = h.client.get("/healthz")
        assert resp.status_code == 200
        assert resp.json() == {"status": "ok"}
    finally:
        h.service.loop.stop()
    assert h.service.loop.error is None
    assert h.client.get("/healthz").status_code == 503
    # the loop published what it learned on the way out
    assert h.service.holder.current is not None
    assert h.service.holder.current.events_learned == 3


def test_readyz_503_before_learning_then_200(make_service: Callable[..., Harness]) -> None:
    h = make_service(labelled_events(9, seed=2))
    resp = h.client.get("/readyz")
    assert resp.status_code == 503
    assert resp.json() == {"ready": False, "model_version": None, "reason": "no model yet"}
    h.service.loop.step()
    resp = h.client.get("/readyz")
    assert resp.status_code == 200
    snap = h.service.holder.current
    assert snap is not None
    assert resp.json() == {"ready": True, "model_version": snap.version, "reason": None}
    assert snap.version == 1


def test_readyz_stays_503_after_only_unlabelled_events(make_service: Callable[..., Harness]) -> None:
    h = make_service([{"id": "u", "features": [1, 2, 3, 4]}])
    h.service.loop.step()
    assert h.client.get("/readyz").status_code == 503


# -- predict ------------------------------------------------------------------------------------

def test_predict_503_before_a_model(make_service: Callable[..., Harness]) -> None:
    h = make_service(labelled_events(3, seed=3))
    resp = h.client.post("/v1/predict", json={"instances": [{"features": [0, 0, 0, 0]}]})
    assert resp.status_code == 503


def test_predict_after_learning(trained: Harness) -> None:
    resp = trained.client.post("/v1/predict", json={"instances": [
        {"features": CENTERS["a"]}, {"features": CENTERS["c"]}, {"features": CENTERS["b"]}]})
    assert resp.status_code == 200
    body = resp.json()
    snap = trained.service.holder.current
    assert snap is not None
    assert body["model_version"] == snap.version == trained.service.learner.version
    assert [p["label"] for p in body["predictions"]] == ["a", "c", "b"]
    assert all(0.0 < p["score"] <= 1.0 for p in body["predictions"])
    assert set(snap.classes) == {"a", "b", "c"}


@pytest.mark.parametrize("instance, loc, kind", [
    ({"features": [1.0, 2.0, 3.0]}, ["body", "instances", 1, "features"], "wrong_dimension"),
    ({"features": [1.0, 2.0, 3.0, 4.0, 5.0]}, ["body", "instances", 1, "features"], "wrong_dimension"),
    ({"text": "hello"}, ["body", "instances", 1], "wrong_input_kind"),
    ({}, ["body", "instances", 1], "missing_input"),
    ({"text": "x", "features": [1, 2, 3, 4]}, ["body", "instances", 1], "missing_input"),
    ({"features": "1,2,3,4"}, ["body", "instances", 1, "features"], "schema"),
    ({"features": [1, 2, 3, 4], "colour": "red"}, ["body", "instances", 1, "colour"], "schema"),
    ({"features": ["NaN", 1, 2, 3]}, ["body", "instances", 1, "features"], "non_finite"),
])
def test_predict_422_names_instance_field_and_reason(trained: Harness, instance: dict[str, Any],
                                                     loc: list[Any], kind: str) -> None:
    good = {"features": [0.0, 0.0, 0.0, 0.0]}
    resp = trained.client.post("/v1/predict", json={"instances": [good, instance]})
    assert resp.status_code == 422
    detail = resp.json()["detail"]
    assert len(detail) == 1  # only the bad instance is reported
    assert detail[0]["loc"] == loc
    assert detail[0]["type"] == kind
    assert detail[0]["msg"]


def test_predict_422_label_key_in_an_instance_is_schema(trained: Harness) -> None:
    # an instance has no label: an unknown 'label' key is a schema error, not a bad label
    resp = trained.client.post("/v1/predict", json={"instances": [{"features": [1, 2, 3, 4], "label": "a"}]})
    assert resp.status_code == 422
    (err,) = resp.json()["detail"]
    assert err["loc"] == ["body", "instances", 0, "label"]
    assert err["type"] == "schema"


def test_predict_422_for_a_string_feature(trained: Harness) -> None:
    resp = trained.client.post("/v1/predict", json={"instances": [{"features": [1.0, "abc", 2.0, 3.0]}]})
    assert resp.status_code == 422
    (err,) = resp.json()["detail"]
    assert err["type"] == "schema"
    assert err["loc"][:3] == ["body", "instances", 0]
    assert str(err["loc"][3]).startswith("features")


def test_predict_422_for_a_nan_token_in_the_body(trained: Harness) -> None:
    # Python's json (and so the app) accepts a bare NaN token; the model must never see it.
    body = '{"instances": [{"features": [1.0, NaN, 2.0, 3.0]}]}'
    resp = trained.client.post("/v1/predict", content=body, headers={"content-type": "application/json"})
    assert resp.status_code == 422
    (err,) = resp.json()["detail"]
    assert err["type"] == "non_finite"
    assert err["loc"] == ["body", "instances", 0, "features"]


def test_predict_422_for_malformed_json(trained: Harness) -> None:
    resp = trained.client.post("/v1/predict", content='{"instances": [', headers={"content-type": "application/json"})
    assert resp.status_code == 422
    detail = resp.json()["detail"]
    assert detail[0]["type"] == "not_json"
    assert detail[0]["loc"][0] == "body"


def test_predict_422_for_empty_or_missing_instances(trained: Harness) -> None:
    assert trained.client.post("/v1/predict", json={"instances": []}).status_code == 422
    assert trained.client.post("/v1/predict", json={}).status_code == 422


def test_predict_413_for_too_many_instances(trained: Harness) -> None:
    instances = [{"features": [0, 0, 0, 0]}] * 4  # http.max_instances is 3
    resp = trained.client.post("/v1/predict", json={"instances": instances})
    assert resp.status_code == 413
    assert "max_instances" in resp.json()["detail"]
    assert trained.client.post("/v1/predict", json={"instances": instances[:3]}).status_code == 200


def test_413_for_a_body_over_max_record_bytes(trained: Harness, metric: Metric) -> None:
    body = json.dumps({"instances": [{"features": [0.0, 0.0, 0.0, 0.0], "pad": "x" * 5000}]})
    assert len(body) > 4096
    resp = trained.client.post("/v1/predict", content=body, headers={"content-type": "application/json"})
    assert resp.status_code == 413
    assert "max_record_bytes" in resp.json()["detail"]
    resp = trained.client.post("/v1/feedback", content=body, headers={"content-type": "application/json"})
    assert resp.status_code == 413
    text = trained.metrics_text()
    assert metric(text, "lifelong_http_requests_total", {"route": "/v1/predict", "code": "413"}) == 1.0
    assert metric(text, "lifelong_http_requests_total", {"route": "/v1/feedback", "code": "413"}) == 1.0


# -- metrics, model info, bad records ---------------------------------------------------------------

def test_bad_records_are_counted_by_reason_and_the_loop_keeps_going(make_service: Callable[..., Harness],
                                                                      metric: Metric) -> None:
    good = labelled_events(20, seed=4)
    lines: list[Any] = [
        *good[:5],
        "this is not json",
        {"id": 2, "features": [9, 9, 9, 9], "label": "a"},          # duplicate id
        {"id": "w", "features": [1, 2, 3], "label": "a"},           # wrong dimension
        {"id": "t", "text": "hello", "label": "a"},                 # text to a features learner
        {"id": "n", "features": [1, 2, 3, 4]},                       # valid, unlabelled
        "",                                                          # blank lines are skipped
        *good[5:],
        '{"id": "z", "features": [1, 2, 3, 4], "label": 2.5}',       # bad label
    ]
    h = make_service(lines, source={"batch_size": 4})
    steps = h.step_all()
    assert steps >= 6
    text = h.metrics_text()
    consumed = len([line for line in lines if line != ""])
    assert metric(text, "lifelong_events_consumed_total") == consumed == 26
    rejected = {reason: metric(text, "lifelong_events_rejected_total", {"reason": reason}) for reason in REASONS}
    assert rejected == {**{r: 0.0 for r in REASONS}, "not_json": 1.0, "duplicate_id": 1.0,
                        "wrong_dimension": 1.0, "wrong_input_kind": 1.0, "bad_label": 1.0}
    assert metric(text, "lifelong_events_learned_total") == 20.0
    assert metric(text, "lifelong_events_predicted_total") == 1.0
    assert h.service.loop.counters.rejected == 5
    assert h.service.loop.counters.learned == 20
    assert h.service.loop.error is None
    # offsets move only at a checkpoint; then every line read is committed (the blank line too)
    assert h.source.committed == 0
    assert h.service.loop.checkpoint()
    assert h.source.committed == len(lines)
    model = h.client.get("/v1/model").json()
    assert model["events_rejected"] == 5
    assert model["events_learned"] == 20


def test_metrics_exposition(trained: Harness, metric: Metric) -> None:
    text = trained.metrics_text()
    snap = trained.service.holder.current
    assert snap is not None
    assert metric(text, "lifelong_events_consumed_total") == 61.0
    assert metric(text, "lifelong_model_version") == float(snap.version)
    assert metric(text, "lifelong_model_classes") == 3.0
    assert metric(text, "lifelong_model_memory_bytes") == float(snap.nbytes())
    assert metric(text, "lifelong_learn_batch_events_count") == 1.0
    assert metric(text, "lifelong_learn_batch_events_sum") == 60.0
    assert 0.0 <= metric(text, "lifelong_prequential_accuracy") <= 1.0
    assert metric(text, "lifelong_build_info", {"version": "0.1.0"}) == 1.0
    assert metric(text, "lifelong_model_info", {"learner": "nmc", "input_kind": "features"}) == 1.0
    for reason in REASONS:  # every reason is exported from the start, at zero
        assert metric(text, "lifelong_events_rejected_total", {"reason": reason}) == 0.0


def test_metrics_counts_http_requests_by_route(trained: Harness, metric: Metric) -> None:
    trained.client.get("/readyz")
    trained.client.get("/readyz")
    trained.client.get("/no/such/route")
    text = trained.metrics_text()
    assert metric(text, "lifelong_http_requests_total", {"route": "/readyz", "code": "200"}) == 2.0
    assert metric(text, "lifelong_http_requests_total", {"route": "other", "code": "404"}) == 1.0


def test_rejected_not_json_line_in_the_file(make_service: Callable[..., Harness], metric: Metric) -> None:
    h = make_service([*labelled_events(4, seed=5), "{broken"])
    h.service.loop.step()
    text = h.metrics_text()
    assert metric(text, "lifelong_events_consumed_total") == 5.0
    assert metric(text, "lifelong_events_rejected_total", {"reason": "not_json"}) == 1.0
    assert metric(text, "lifelong_events_learned_total") == 4.0


def test_model_endpoint_fields(make_service: Callable[..., Harness]) -> None:
    h = make_service(labelled_events(12, seed=6))
    before = h.client.get("/v1/model")
    assert before.status_code == 200
    body = before.json()
    assert body["model_version"] is None
    assert body["classes"] == []
    assert body["memory_bytes"]["model"] == 0

    h.service.loop.step()
    body = h.client.get("/v1/model").json()
    snap = h.service.holder.current
    assert snap is not None
    assert body["version"] == "0.1.0"
    assert body["learner"] == "nmc"
    assert body["input_kind"] == "features"
    assert body["source"] == "file"
    assert body["events_learned"] == 12
    assert body["events_rejected"] == 0
    assert body["pending_labels"] == 0
    assert body["model_version"] == snap.version == 1
    assert body["classes"] == ["a", "b", "c"]
    assert body["memory_bytes"]["model"] == snap.nbytes() > 0
    assert isinstance(body["memory_bytes"]["process_rss"], int)


def test_published_snapshot_is_immutable_and_publish_swaps_it(make_service: Callable[..., Harness]) -> None:
    h = make_service(labelled_events(10, seed=7), source={"batch_size": 5}, learner={"feature_warmup_events": 5})
    h.service.loop.step()
    first = h.service.holder.current
    assert first is not None
    assert (first.events_learned, first.version) == (5, 1)
    probe = np.array([CENTERS["a"], CENTERS["b"]], np.float32)
    scores = first.predict_many(probe).scores.copy()
    h.service.loop.step()
    h.service.loop.publish()
    current = h.service.holder.current
    assert current is not first
    assert (current.events_learned, current.version) == (10, 2)  # type: ignore[union-attr]
    assert (first.events_learned, first.version) == (5, 1)
    np.testing.assert_array_equal(first.predict_many(probe).scores, scores)
