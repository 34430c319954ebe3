"""Bodies that once made the app answer 500 (lone surrogates, deep nesting, huge ids) answer 4xx with the reason."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI, HTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.testclient import TestClient

from lifelong.learner.base import Predictions
from lifelong.service.config import Settings
from lifelong.service.http_body import ERROR_HANDLERS
from lifelong.service.runtime import Service
from lifelong.stream.sources import FileSource

DIM = 2
JSON = {"content-type": "application/json"}
DEEP = "[" * 100_000 + "]" * 100_000  # the C parser recurses once per level


class TextModel:
    """A served text model whose encoder, like a real tokenizer, needs UTF-8 text."""

    input_kind = "text"
    input_dim = None
    classes = ("a", "b")
    version = 1
    events_learned = 2

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def predict_many(self, inputs: Any) -> Predictions:
        self.calls.append([t.encode("utf-8").decode() for t in inputs])
        return Predictions(labels=["a"] * len(inputs), scores=np.full(len(inputs), 0.5), model_version=1)

    def nbytes(self) -> int:
        return 0


@pytest.fixture
def service(tmp_path: Path) -> Service:
    events = tmp_path / "events.jsonl"
    events.write_text("".join(json.dumps({"id": i, "features": [float(i % 2), 1.0], "label": f"c{i % 2}"}) + "\n"
                              for i in range(20)))
    settings = Settings(source={"kind": "file", "path": events, "batch_size": 20},
                        learner={"name": "nmc", "input_kind": "features", "feature_dim": DIM},
                        checkpoint={"dir": None}, limits={"max_record_bytes": 1_000_000})
    made = Service(settings, source=FileSource(events))
    made.loop.step()
    return made


def post(service: Service, path: str, body: str | bytes) -> Any:
    return TestClient(service.app).post(path, content=body, headers=JSON)


def only_error(resp: Any) -> dict[str, Any]:
    assert resp.status_code == 422, resp.text
    resp.content.decode("utf-8")  # the answer itself is valid UTF-8
    (err,) = resp.json()["detail"]
    return err


def test_a_lone_surrogate_in_predict_text_is_422_bad_text(service: Service) -> None:
    model = TextModel()
    service.holder.publish(model)  # type: ignore[arg-type]
    err = only_error(post(service, "/v1/predict", '{"instances": [{"text": "\\ud800 abc"}]}'))
    assert err["type"] == "bad_text" and err["loc"] == ["body", "instances"]
    assert model.calls == []  # never reached the encoder
    ok = post(service, "/v1/predict", '{"instances": [{"text": "\\u00e9t\\u00e9 abc"}]}')
    assert ok.status_code == 200 and model.calls == [["été abc"]]


@pytest.mark.parametrize("body, field", [('{"id": "\\udfff", "label": "a"}', "id"),
                                         ('{"id": "e1", "label": "x\\ud800"}', "label"),
                                         ('{"id": "e1", "label": "a", "\\ud800": 1}', "\\ud800")])
def test_a_lone_surrogate_in_feedback_is_422_bad_text(service: Service, body: str, field: str) -> None:
    err = only_error(post(service, "/v1/feedback", body))
    assert err["type"] == "bad_text"
    assert err["loc"][0] == "body"
    if field != "\\ud800":
        assert err["loc"] == ["body", field]


def test_feedback_ids_and_labels_have_the_event_limits(service: Service) -> None:
    limit = service.settings.limits.max_id_chars
    err = only_error(post(service, "/v1/feedback", json.dumps({"id": "x" * 100_000, "label": "a"})))
    assert err["loc"] == ["body", "id"] and "max_id_chars" in err["msg"]
    err = only_error(post(service, "/v1/feedback", json.dumps({"id": "e1", "label": "y" * (limit + 1)})))
    assert err["loc"] == ["body", "label"] and err["type"] == "bad_label"
    err = only_error(post(service, "/v1/feedback", json.dumps({"id": "", "label": "a"})))
    assert err["loc"] == ["body", "id"]
    resp = post(service, "/v1/feedback", json.dumps({"id": "x" * limit, "label": "y" * limit}))
    assert resp.status_code == 202 and resp.json()["id"] == "x" * limit


@pytest.mark.parametrize("path", ["/v1/predict", "/v1/feedback"])
@pytest.mark.parametrize("body", [DEEP, "[" * 100_000, '{"instances": [{"text": ' + DEEP + "}]}",
                                  '{"id": ' + "[" * 65 + "]" * 65 + ', "label": "a"}'])
def test_deeply_nested_bodies_are_422_too_deep(service: Service, path: str, body: str) -> None:
    err = only_error(post(service, path, body))
    assert err["type"] == "too_deep" and err["loc"][0] == "body"


@pytest.mark.parametrize("path", ["/v1/predict", "/v1/feedback"])
def test_a_body_that_is_not_utf8_is_400(service: Service, path: str) -> None:
    resp = post(service, path, b'{"id": "e\xff", "instances": [{"text": "\xc3("}]}')
    assert resp.status_code == 400 and "not UTF-8" in resp.json()["detail"]


def test_an_integer_past_pythons_digit_limit_is_422(service: Service) -> None:
    err = only_error(post(service, "/v1/feedback", '{"id": ' + "1" * 5000 + ', "label": "a"}'))
    assert err["type"] == "not_json" and err["loc"] == ["body"]


def test_a_shape_error_echoes_no_input(service: Service) -> None:
    err = only_error(post(service, "/v1/predict", '{"instances": "\\u00e9"}'))
    assert err["type"] == "schema" and err["loc"] == ["body", "instances"]
    assert set(err) == {"loc", "msg", "type"}


def test_error_bodies_with_unencodable_text_still_encode() -> None:
    # The last resort: whatever an error carries, its body is ASCII JSON, never a 500.
    app = FastAPI(exception_handlers=ERROR_HANDLERS)

    @app.get("/http")
    def http_error() -> None:
        raise HTTPException(422, detail=[{"msg": "bad \ud800"}])

    @app.get("/validation")
    def validation_error() -> None:
        raise RequestValidationError([{"loc": ("body", "id"), "msg": "no", "type": "t", "input": "\ud800"}])

    client = TestClient(app, raise_server_exceptions=False)
    resp = client.get("/http")
    assert resp.status_code == 422 and resp.json() == {"detail": [{"msg": "bad \ud800"}]}
    resp = client.get("/validation")
    assert resp.status_code == 422 and resp.json() == {"detail": [{"loc": ["body", "id"], "msg": "no", "type": "t"}]}


def test_openapi_still_documents_the_bodies(service: Service) -> None:
    doc = TestClient(service.app).get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    for path, model in (("/v1/predict", "PredictRequest"), ("/v1/feedback", "LabelMessage")):
        op = doc["paths"][path]["post"]
        assert op["requestBody"]["content"]["application/json"]["schema"] == {"$ref": f"#/components/schemas/{model}"}
        assert {"400", "408", "413", "422"} <= set(op["responses"])
    assert schemas["LabelMessage"]["properties"]["id"]["anyOf"][0]["maxLength"] == 256
    assert schemas["PredictRequest"]["properties"]["instances"]["items"]["required"] == ["features"]

