"""POST /v1/feedback against the real app and loop: joins, labels that wait for their event, new classes, 422s."""
from __future__ import annotations

from typing import Any

import pytest

from http_harness import Harness, Metric


# -- feedback -----------------------------------------------------------------------------------

def test_feedback_joins_a_pending_event(trained: Harness, metric: Metric) -> None:
    h = trained
    text = h.metrics_text()
    learned_before = metric(text, "lifelong_events_learned_total")
    assert learned_before == 60.0
    assert metric(text, "lifelong_events_predicted_total") == 1.0
    assert metric(text, "lifelong_pending_labels") == 1.0
    assert h.client.get("/v1/model").json()["pending_labels"] == 1
    version_before = h.service.holder.current.version  # type: ignore[union-attr]

    resp = h.client.post("/v1/feedback", json={"id": "u1", "label": "b"})
    assert resp.status_code == 202
    assert resp.json() == {"status": "accepted", "id": "u1"}
    h.service.loop.step()

    text = h.metrics_text()
    assert metric(text, "lifelong_labels_total", {"outcome": "joined"}) == 1.0
    assert metric(text, "lifelong_events_learned_total") == learned_before + 1
    assert metric(text, "lifelong_pending_labels") == 0.0
    model = h.client.get("/v1/model").json()
    assert model["events_learned"] == 61
    assert model["pending_labels"] == 0
    assert model["model_version"] == version_before + 1
    assert h.service.learner.events_learned == 61

    # the same label again is a duplicate, and nothing more is learned
    assert h.client.post("/v1/feedback", json={"id": "u1", "label": "b"}).status_code == 202
    h.service.loop.step()
    text = h.metrics_text()
    assert metric(text, "lifelong_labels_total", {"outcome": "duplicate"}) == 1.0
    assert metric(text, "lifelong_labels_total", {"outcome": "joined"}) == 1.0
    assert metric(text, "lifelong_events_learned_total") == learned_before + 1


def test_feedback_for_an_unknown_id_waits_for_its_event(trained: Harness, metric: Metric) -> None:
    resp = trained.client.post("/v1/feedback", json={"id": 12345, "label": 7})
    assert resp.status_code == 202
    assert resp.json()["id"] == "12345"
    trained.service.loop.step()
    text = trained.metrics_text()
    # The join is order-free: the label may have come before its event (stream/label_join.py).
    assert metric(text, "lifelong_early_labels") == 1.0
    assert metric(text, "lifelong_labels_total", {"outcome": "unknown_id"}) == 0.0
    assert metric(text, "lifelong_labels_total", {"outcome": "joined"}) == 0.0
    assert metric(text, "lifelong_events_learned_total") == 60.0


def test_feedback_can_teach_a_new_class(trained: Harness) -> None:
    assert trained.client.post("/v1/feedback", json={"id": "u1", "label": "new"}).status_code == 202
    trained.service.loop.step()
    snap = trained.service.holder.current
    assert snap is not None and "new" in snap.classes
    assert trained.client.get("/v1/model").json()["classes"] == ["a", "b", "c", "new"]


@pytest.mark.parametrize("body", [{"id": "u1"}, {"id": "u1", "label": 1.5}, {"label": "a"},
                                  {"id": "u1", "label": "a", "extra": 1}])
def test_feedback_422_for_a_bad_label_message(trained: Harness, body: dict[str, Any]) -> None:
    assert trained.client.post("/v1/feedback", json=body).status_code == 422
