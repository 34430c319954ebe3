"""`lifelong run` with no config: the packaged CLINC150 stream, served over HTTP."""
from __future__ import annotations

import pytest
from harness import http_json, wait_until

pytestmark = pytest.mark.integration


def test_embedded_default_answers_within_60s_and_learns_above_chance(lifelong_daemon) -> None:
    daemon = lifelong_daemon()  # no --config: the embedded default
    ready_after = daemon.wait_ready(timeout_s=60)
    assert ready_after < 60, daemon.log()

    status, body = http_json("POST", f"{daemon.url}/v1/predict",
                             {"instances": [{"text": "what's the balance on my checking account"}]})
    assert status == 200, body
    assert isinstance(body["model_version"], int) and body["model_version"] >= 1
    [pred] = body["predictions"]
    assert 0.0 < pred["score"] <= 1.0

    # The first domain of the demo is banking, 15 intents: chance is 1/15 within it
    # and 1/150 overall. After a few hundred events the test-then-train accuracy
    # must be far above both.
    wait_until(lambda: daemon.metric("lifelong_events_learned_total") >= 600, 120, "600 events learned")
    assert daemon.metric("lifelong_prequential_accuracy") > 0.5
    status, model = http_json("GET", f"{daemon.url}/v1/model")
    assert status == 200
    assert model["learner"] == "lifelong" and model["input_kind"] == "text"
    assert len(model["classes"]) >= 15
    assert "balance" in model["classes"]
    assert model["memory_bytes"]["model"] > 0

    status, body = http_json("POST", f"{daemon.url}/v1/predict",
                             {"instances": [{"text": "how much money do i have in my bank account"}]})
    assert body["predictions"][0]["label"] == "balance"
    assert daemon.stop() == 0, daemon.log()
