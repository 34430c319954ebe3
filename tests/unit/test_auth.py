"""Optional bearer-token auth on /v1/*; probes and metrics stay open."""
from __future__ import annotations

import json
from pathlib import Path

from fastapi.testclient import TestClient

from lifelong.service.config import Settings
from lifelong.service.runtime import Service
from lifelong.stream.sources import FileSource


def make_client(tmp_path: Path, token: str | None) -> TestClient:
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(json.dumps({"id": f"e{i}", "features": [float(i % 2), 1.0], "label": f"c{i % 2}"})
                                for i in range(20)) + "\n")
    settings = Settings(source={"kind": "file", "path": events, "batch_size": 20},
                        learner={"name": "nmc", "input_kind": "features", "feature_dim": 2},
                        checkpoint={"dir": None}, http={"auth_token": token})
    service = Service(settings, source=FileSource(events))
    service.loop.step()
    return TestClient(service.app)


def test_without_a_token_everything_is_open(tmp_path: Path) -> None:
    client = make_client(tmp_path, None)
    assert client.post("/v1/predict", json={"instances": [{"features": [1, 1]}]}).status_code == 200


def test_with_a_token_v1_needs_it_and_probes_stay_open(tmp_path: Path) -> None:
    client = make_client(tmp_path, "s3cret")
    body = {"instances": [{"features": [1, 1]}]}
    assert client.post("/v1/predict", json=body).status_code == 401
    wrong = client.post("/v1/predict", json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    assert client.get("/v1/model").status_code == 401
    assert client.post("/v1/feedback", json={"id": "x", "label": "c0"}).status_code == 401
    ok = client.post("/v1/predict", json=body, headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200 and ok.json()["predictions"][0]["label"] == "c1"
    assert client.get("/readyz").status_code == 200
    assert client.get("/metrics").status_code == 200
    assert 'lifelong_http_requests_total{code="401",route="/v1/predict"} 2.0' in client.get("/metrics").text


def test_the_token_never_shows_in_config_show(tmp_path: Path, capsys, monkeypatch) -> None:
    from lifelong.cli import main

    monkeypatch.setenv("LIFELONG_HTTP__AUTH_TOKEN", "s3cret")
    main(["config", "show"])
    out = capsys.readouterr().out
    assert "s3cret" not in out and "auth_token: '**********'" in out
