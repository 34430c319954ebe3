"""Timeouts (answer, header and body deadlines), overload, chunked bodies, the OpenAPI document and a graceful
SIGTERM, over real HTTP."""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from harness import free_port
from served import serving

from lifelong.learner.base import Predictions, ServingModel
from lifelong.service.config import Settings
from lifelong.service.runtime import Service
from lifelong.stream.sources import FileSource

DIM = 2


class Gated:
    """A served snapshot whose predictions wait for a gate, so requests can be held in flight."""

    def __init__(self, snapshot: ServingModel) -> None:
        self._snapshot = snapshot
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.calls: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._snapshot, name)

    def predict_many(self, inputs: Any) -> Predictions:
        self.calls.append(len(inputs))
        self.entered.set()
        assert self.gate.wait(30)
        return self._snapshot.predict_many(inputs)


def make_service(tmp_path: Path, **http: Any) -> tuple[Service, Gated]:
    events = tmp_path / "events.jsonl"
    events.write_text("".join(json.dumps({"id": i, "features": [float(i % 2), 1.0], "label": f"c{i % 2}"}) + "\n"
                              for i in range(20)))
    settings = Settings(source={"kind": "file", "path": events, "batch_size": 20},
                        learner={"name": "nmc", "input_kind": "features", "feature_dim": DIM},
                        checkpoint={"dir": str(tmp_path / "state")}, http=http)
    service = Service(settings, source=FileSource(events))
    service.loop.step()
    snapshot = service.holder.current
    assert snapshot is not None and snapshot.classes == ("c0", "c1")
    gated = Gated(snapshot)
    service.holder.publish(gated)  # type: ignore[arg-type]
    return service, gated


def post(base: str, n: int, timeout: float = 30) -> tuple[int, dict[str, str], Any]:
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    body = json.dumps({"instances": [{"features": [1.0, 1.0]}] * n})
    conn.request("POST", "/v1/predict", body, {"content-type": "application/json"})
    resp = conn.getresponse()
    return resp.status, dict(resp.getheaders()), json.loads(resp.read())


def in_thread(fn: Any, *args: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(fn(*args)))
    thread.start()
    return thread, out


def wait_for(check: Any, what: str) -> None:
    deadline = time.monotonic() + 30
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.005)


def test_a_slow_prediction_answers_504_and_a_queued_one_is_dropped(tmp_path: Path) -> None:
    service, gated = make_service(tmp_path, request_timeout_s=0.2)
    with serving(service.app) as base:
        code, _, body = post(base, 1)  # in the model, behind the gate
        assert code == 504 and "request_timeout_s=0.2" in body["detail"]
        code, _, body = post(base, 2)  # queued behind it, then given up
        assert code == 504
        gated.gate.set()
        code, _, body = post(base, 3)
        assert code == 200 and len(body["predictions"]) == 3
    assert gated.calls == [1, 3]  # the abandoned request never reached the model


def test_past_the_queue_limit_predict_answers_503_with_retry_after(tmp_path: Path) -> None:
    service, gated = make_service(tmp_path, max_instances=3, max_queued_instances=3)
    with serving(service.app) as base:
        first, first_out = in_thread(post, base, 1)
        assert gated.entered.wait(30)
        queued, queued_out = in_thread(post, base, 3)
        batcher = service.app.state.batcher
        wait_for(lambda: batcher.queued == 3, "the second request queued")
        code, headers, body = post(base, 1)
        assert code == 503 and headers["retry-after"] == "1"
        assert "max_queued_instances=3" in body["detail"]
        gated.gate.set()
        first.join(30)
        queued.join(30)
    assert first_out[0][0] == queued_out[0][0] == 200
    assert len(queued_out[0][2]["predictions"]) == 3


def test_a_chunked_body_over_the_limit_is_413(tmp_path: Path) -> None:
    service, gated = make_service(tmp_path)
    gated.gate.set()
    client = TestClient(service.app)
    limit = service.settings.limits.max_record_bytes

    def chunks() -> Any:  # no Content-Length: the size is counted as the body streams in
        yield b'{"instances": [{"features": [1.0, 1.0], "pad": "'
        for _ in range(limit // 1000 + 1):
            yield b"x" * 1000
        yield b'"}]}'

    resp = client.post("/v1/predict", content=chunks(), headers={"content-type": "application/json"})
    assert resp.status_code == 413 and "max_record_bytes" in resp.json()["detail"]
    assert gated.calls == []
    ok = client.post("/v1/predict", json={"instances": [{"features": [1.0, 1.0]}]})
    assert ok.status_code == 200


def test_openapi_documents_models_limits_and_errors(tmp_path: Path) -> None:
    service, _ = make_service(tmp_path, max_instances=7, auth_token="s3cret")
    doc = TestClient(service.app).get("/openapi.json").json()
    predict = doc["paths"]["/v1/predict"]["post"]
    assert {"200", "400", "401", "413", "422", "503", "504"} <= set(predict["responses"])
    assert predict["security"] == [{"bearer": []}]
    assert doc["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    instances = doc["components"]["schemas"]["PredictRequest"]["properties"]["instances"]
    assert instances["maxItems"] == 7 and instances["minItems"] == 1
    features = instances["items"]["properties"]["features"]
    assert features["minItems"] == features["maxItems"] == DIM
    assert "model_version" in doc["components"]["schemas"]["PredictResponse"]["required"]
    assert {"401", "413", "503"} <= set(doc["paths"]["/v1/feedback"]["post"]["responses"])
    assert "security" not in doc["paths"]["/readyz"]["get"]


def test_sigterm_finishes_in_flight_requests_checkpoints_and_exits_0(tmp_path: Path) -> None:
    port = free_port()
    service, gated = make_service(tmp_path, port=port, graceful_shutdown_s=30)
    base = f"http://127.0.0.1:{port}"
    results: list[Any] = []

    def drive() -> None:
        def ready() -> bool:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/readyz")
                return conn.getresponse().status == 200
            except OSError:
                return False

        threads = []
        wait_for(ready, "the server is ready")  # serve() has its SIGTERM handler from here on
        try:
            threads.append(in_thread(post, base, 1))
            assert gated.entered.wait(30)  # one request in the model ...
            threads += [in_thread(post, base, n) for n in (2, 3)]
            wait_for(lambda: service.app.state.batcher.queued == 5, "two queued")  # ... two behind it
        finally:
            os.kill(os.getpid(), signal.SIGTERM)  # whatever happened, serve() must return
        try:
            wait_for(lambda: not ready(), "the server stops taking connections")
        finally:
            gated.gate.set()  # only now can the in-flight requests finish
        for thread, out in threads:
            thread.join(30)
            results.extend(out)

    before = signal.getsignal(signal.SIGTERM)
    driver = threading.Thread(target=drive)
    driver.start()
    code = service.serve()
    driver.join(30)
    assert code == 0
    assert sorted(len(body["predictions"]) for status, _, body in results if status == 200) == [1, 2, 3]
    assert service.loop.counters.checkpoints >= 1
    assert (tmp_path / "state" / "latest").exists()
    assert signal.getsignal(signal.SIGTERM) is before  # serve() put the previous handler back


@pytest.mark.parametrize("features", [[1e39, 0.0], [-1e39, 0.0]])
def test_features_beyond_float32_are_422(tmp_path: Path, features: list[float]) -> None:
    service, gated = make_service(tmp_path)
    gated.gate.set()
    resp = TestClient(service.app).post("/v1/predict", json={"instances": [{"features": [1.0, 1.0]},
                                                                            {"features": features}]})
    assert resp.status_code == 422
    (err,) = resp.json()["detail"]
    assert err["loc"] == ["body", "instances", 1, "features"] and err["type"] == "non_finite"
    assert gated.calls == []


def test_predictions_are_the_snapshot_predictions(tmp_path: Path) -> None:
    service, gated = make_service(tmp_path)
    gated.gate.set()
    x = [[1.0, 1.0], [0.0, 1.0]]
    body = TestClient(service.app).post("/v1/predict", json={"instances": [{"features": v} for v in x]}).json()
    want = gated.predict_many(np.asarray(x, np.float32))
    assert [p["label"] for p in body["predictions"]] == want.labels == ["c1", "c0"]
    assert [p["score"] for p in body["predictions"]] == pytest.approx(want.scores.tolist())
    assert body["model_version"] == want.model_version


# -- read deadlines: headers (the uvicorn protocol) and body (the ASGI guard) -----------------------

PREDICT_HEAD = b"POST /v1/predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
ONE = json.dumps({"instances": [{"features": [1.0, 1.0]}]}).encode()


def timed_service(tmp_path: Path) -> tuple[Service, dict[str, Any]]:
    """A service with short read deadlines, and the uvicorn options the daemon serves it with."""
    service, gated = make_service(tmp_path, header_timeout_s=0.5, body_timeout_s=1.0)
    gated.gate.set()
    return service, {"http": service.app.state.http_protocol}


def connect(base: str) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes the connection (a test timeout if it never does)."""
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out


def read_response(sock: socket.socket) -> tuple[bytes, Any]:
    """One response with a Content-Length, the connection left open."""
    raw = b""
    while b"\r\n\r\n" not in raw:
        raw += sock.recv(65536)
    head, _, body = raw.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.lower().split(b"\r\n")
                  if line.startswith(b"content-length"))
    while len(body) < length:
        body += sock.recv(65536)
    return head, json.loads(body)


def answer(raw: bytes) -> tuple[int, bytes, Any]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), head.lower(), json.loads(body)


def test_the_daemon_serves_with_the_header_deadline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from uvicorn.protocols.http.h11_impl import H11Protocol

    from lifelong.service import server

    service, _ = timed_service(tmp_path)
    seen: list[Any] = []
    monkeypatch.setattr(server.SignalFreeServer, "run", lambda self, sockets=None: seen.append(self.config.http))
    assert service.serve() == 0
    (protocol,) = seen
    assert protocol is service.app.state.http_protocol and issubclass(protocol, H11Protocol)
    assert protocol.header_timeout_s == 0.5


@pytest.mark.parametrize("sent", [b"", PREDICT_HEAD[:30], PREDICT_HEAD])
def test_headers_not_sent_in_time_are_408_and_the_connection_closed(tmp_path: Path, sent: bytes,
                                                                     metric: Any) -> None:
    service, options = timed_service(tmp_path)
    with serving(service.app, **options) as base:
        sock = connect(base)
        started = time.monotonic()
        sock.sendall(sent)  # then nothing: the head never completes
        assert post(base, 1, timeout=5)[0] == 200  # others are answered meanwhile
        code, head, body = answer(read_all(sock))
        waited = time.monotonic() - started
        metrics = service.metrics.exposition().decode()
    assert code == 408 and b"connection: close" in head and "header_timeout_s=0.5" in body["detail"]
    assert 0.4 < waited < 3
    assert metric(metrics, "lifelong_http_requests_total", {"route": "other", "code": "408"}) == 1


def test_a_body_trickled_past_the_deadline_is_408_and_the_connection_closed(tmp_path: Path, metric: Any) -> None:
    service, options = timed_service(tmp_path)
    with serving(service.app, **options) as base:
        sock = connect(base)
        sock.sendall(PREDICT_HEAD + b"Content-Length: 1000\r\n\r\n")
        started = time.monotonic()
        stop = threading.Event()

        def trickle() -> None:  # a byte every 0.2 s: 200 s for the whole body
            # Quiet just before the 1 s deadline: a byte that reaches the closed socket after the 408
            # makes the kernel answer with a reset, which can discard the 408 before the client reads it.
            while not stop.wait(0.2) and time.monotonic() - started < 0.8:
                try:
                    sock.send(b" ")
                except OSError:
                    return

        thread = threading.Thread(target=trickle)
        thread.start()
        assert post(base, 1, timeout=5)[0] == 200  # others are answered meanwhile
        try:
            code, head, body = answer(read_all(sock))
        finally:
            stop.set()
            thread.join(5)
        waited = time.monotonic() - started
        metrics = service.metrics.exposition().decode()
    assert code == 408 and b"connection: close" in head and "body_timeout_s=1" in body["detail"]
    assert 0.9 < waited < 4
    assert metric(metrics, "lifelong_http_requests_total", {"route": "/v1/predict", "code": "408"}) == 1


def test_a_slow_client_within_the_deadlines_is_answered_and_kept_alive(tmp_path: Path) -> None:
    service, options = timed_service(tmp_path)
    with serving(service.app, **options) as base:
        sock = connect(base)
        for _ in range(2):  # the second request reuses the connection, after an idle pause past header_timeout_s
            for piece in (PREDICT_HEAD[:20], PREDICT_HEAD[20:], f"Content-Length: {len(ONE)}\r\n\r\n".encode()):
                sock.sendall(piece)
                time.sleep(0.1)  # 0.3 s for the head: within 0.5
            for i in range(0, len(ONE), len(ONE) // 4 + 1):
                sock.sendall(ONE[i:i + len(ONE) // 4 + 1])
                time.sleep(0.15)  # 0.6 s for the body: within 1
            head, body = read_response(sock)
            assert head.startswith(b"HTTP/1.1 200") and len(body["predictions"]) == 1
            time.sleep(0.8)  # idle keep-alive is uvicorn's timeout_keep_alive (5 s), not a header deadline
        sock.sendall(PREDICT_HEAD)  # a later request on the connection has the header deadline again
        code, _, body = answer(read_all(sock))
    assert code == 408 and "header_timeout_s" in body["detail"]



def test_a_declared_body_over_the_limit_gets_its_413_not_a_reset(tmp_path: Path) -> None:
    """The 413 is answered after the body is read and discarded (up to 8x the limit): answering first
    and closing made the kernel reset the connection while urllib was still sending (status lost)."""
    import urllib.error
    import urllib.request

    service, gated = make_service(tmp_path)
    gated.gate.set()
    body = json.dumps({"instances": [{"features": [1.0, 1.0], "pad": "x" * 2_000_000}]}).encode()
    codes = []
    with serving(service.app) as base:
        for _ in range(10):
            req = urllib.request.Request(base + "/v1/predict", data=body, method="POST",
                                         headers={"content-type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=30) as resp:
                    codes.append(resp.status)
            except urllib.error.HTTPError as exc:
                codes.append(exc.code)
                assert exc.headers["connection"] == "close" and "max_record_bytes" in json.loads(exc.read())["detail"]
    assert codes == [413] * 10 and gated.calls == []
