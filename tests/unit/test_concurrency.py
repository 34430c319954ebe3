"""Learning and serving at once: every prediction comes from one published snapshot, whole.

Clients post over real HTTP (uvicorn on loopback) while the learning loop
publishes snapshots; requests are coalesced by the micro-batcher. The run
lasts LIFELONG_SOAK_S seconds (default 4): ``LIFELONG_SOAK_S=60 python -m
pytest tests/unit/test_concurrency.py -s`` is the one-minute soak, and prints
its counts.
"""
from __future__ import annotations

import http.client
import json
import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from served import serving

from lifelong.service.config import Settings
from lifelong.service.runtime import Service
from lifelong.stream.sources import FileSource

# Read at import: the unit-test fixtures clear LIFELONG_* variables before each test.
SOAK_S = float(os.environ.get("LIFELONG_SOAK_S", "4"))
PROBES = [[3.0, 0.0, 0.0, 0.0], [0.0, 3.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 3.0],
          [2.0, 0.0, 2.0, 0.0], [0.5, 0.5, 0.5, 0.5]]
# Requests of one to three instances, so batches mix requests of different sizes.
REQUESTS = [PROBES[i:i + n] for n in (1, 2, 3) for i in range(len(PROBES) - n + 1)]


def stream_file(path: Path, n: int) -> Path:
    rng = np.random.default_rng(0)
    centres = np.eye(4) * 3
    with path.open("w") as fh:
        for i in range(n):
            c = int(rng.integers(0, 4)) if i > n // 2 else int(rng.integers(0, 2))  # two new classes half-way
            fh.write(json.dumps({"id": f"e{i}", "features": (centres[c] + rng.normal(0, .5, 4)).tolist(),
                                 "label": f"c{c}"}) + "\n")
    return path


def _client(base: str, seed: int, stop: threading.Event, answers: list[tuple[int, dict[str, Any]]],
            failures: list[str]) -> None:
    rng = np.random.default_rng(seed)
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    while not stop.is_set():
        k = int(rng.integers(len(REQUESTS)))
        conn.request("POST", "/v1/predict", json.dumps({"instances": [{"features": p} for p in REQUESTS[k]]}),
                     {"content-type": "application/json"})
        resp = conn.getresponse()
        body = resp.read()
        if resp.status == 200:
            answers.append((k, json.loads(body)))
        elif resp.status != 503 or answers:  # 503 only before the first model
            failures.append(f"{resp.status} {body[:200]!r}")


def _batches(metrics: Any) -> tuple[float, float]:
    samples = {s.name: s.value for fam in metrics.registry.collect() for s in fam.samples
               if s.name.startswith("lifelong_predict_batch_instances_")}
    return samples["lifelong_predict_batch_instances_count"], samples["lifelong_predict_batch_instances_sum"]


def test_no_torn_or_unknown_predictions_while_learning(tmp_path: Path) -> None:
    n_events = int(max(20_000, 5_000 * SOAK_S))  # more than the loop learns in SOAK_S: it learns throughout
    events = stream_file(tmp_path / "events.jsonl", n_events)
    settings = Settings(source={"kind": "file", "path": events, "batch_size": 32, "poll_timeout_s": 0.05},
                        learner={"input_kind": "features", "feature_dim": 4, "feature_warmup_events": 100,
                                 "pq_m": 0, "steps_per_batch": 2, "replay_per_step": 32, "device": "cpu"},
                        checkpoint={"dir": None}, publish_every_events=64, evaluation={"holdout_fraction": 0.0},
                        http={"batch_wait_ms": 2.0, "batch_max_instances": 8})
    service = Service(settings, source=FileSource(events))
    published: dict[int, object] = {}
    publish = service.holder.publish

    def record(snapshot: object) -> None:
        published[snapshot.version] = snapshot  # type: ignore[attr-defined]
        publish(snapshot)  # type: ignore[arg-type]

    service.holder.publish = record  # type: ignore[method-assign]
    answers: list[tuple[int, dict[str, Any]]] = []
    failures: list[str] = []
    stop = threading.Event()
    with serving(service.app) as base:
        service.loop.start()
        clients = [threading.Thread(target=_client, args=(base, i, stop, answers, failures)) for i in range(4)]
        for t in clients:
            t.start()
        time.sleep(SOAK_S)
        stop.set()
        for t in clients:
            t.join()
        service.loop.stop()
    assert service.loop.error is None
    assert not failures, failures[:3]

    versions = Counter(a["model_version"] for _, a in answers)
    batches, instances = _batches(service.metrics)
    requests_answered = len(answers)
    assert len(answers) > 50 and len(versions) > 5, (len(answers), len(versions))
    assert batches < requests_answered  # some batch held more than one request
    assert instances == sum(len(REQUESTS[k]) for k, _ in answers)  # every answer went through the batcher once
    expected: dict[tuple[int, int], Any] = {}
    for k, answer in answers:
        version = answer["model_version"]
        snapshot = published[version]  # it was published, not invented
        if (version, k) not in expected:
            probe = np.asarray(REQUESTS[k], np.float32)
            expected[version, k] = snapshot.predict_many(probe)  # type: ignore[attr-defined]
        want = expected[version, k]
        assert [p["label"] for p in answer["predictions"]] == want.labels
        # Alone or inside a larger batch, a row's scores are the same up to float32 rounding.
        np.testing.assert_allclose([p["score"] for p in answer["predictions"]], want.scores, rtol=1e-5)
    print(f"\n{SOAK_S:g} s: {requests_answered} requests answered ({instances:.0f} instances) in {batches:.0f} "
          f"batches, from {len(versions)} of {len(published)} published versions; "
          f"{service.loop.counters.learned} of {n_events} events learned; none failed or torn")
