"""Learning and serving at once: every prediction comes from one published snapshot, whole."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from lifelong.service.config import Settings
from lifelong.service.runtime import Service
from lifelong.stream.sources import FileSource

PROBE = [[3.0, 0.0, 0.0, 0.0], [0.0, 3.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 3.0]]


def stream_file(path: Path, n: int) -> Path:
    rng = np.random.default_rng(0)
    centres = np.eye(4) * 3
    with path.open("w") as fh:
        for i in range(n):
            c = int(rng.integers(0, 4)) if i > n // 2 else int(rng.integers(0, 2))  # two new classes half-way
            fh.write(json.dumps({"id": f"e{i}", "features": (centres[c] + rng.normal(0, .5, 4)).tolist(),
                                 "label": f"c{c}"}) + "\n")
    return path


def test_no_torn_or_unknown_predictions_while_learning(tmp_path: Path) -> None:
    events = stream_file(tmp_path / "events.jsonl", 20_000)
    settings = Settings(source={"kind": "file", "path": events, "batch_size": 32, "poll_timeout_s": 0.05},
                        learner={"input_kind": "features", "feature_dim": 4, "feature_warmup_events": 100,
                                 "pq_m": 0, "steps_per_batch": 2, "replay_per_step": 32, "device": "cpu"},
                        checkpoint={"dir": None}, publish_every_events=64, evaluation={"holdout_fraction": 0.0})
    service = Service(settings, source=FileSource(events))
    published: dict[int, object] = {}
    publish = service.holder.publish

    def record(snapshot: object) -> None:
        published[snapshot.version] = snapshot  # type: ignore[attr-defined]
        publish(snapshot)  # type: ignore[arg-type]

    service.holder.publish = record  # type: ignore[method-assign]
    client = TestClient(service.app)
    answers: list[dict] = []
    failures: list[str] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            r = client.post("/v1/predict", json={"instances": [{"features": p} for p in PROBE]})
            if r.status_code == 200:
                answers.append(r.json())
            elif r.status_code != 503:  # 503 only before the first model
                failures.append(f"{r.status_code} {r.text}")

    service.loop.start()
    readers = [threading.Thread(target=hammer) for _ in range(3)]
    for t in readers:
        t.start()
    time.sleep(4.0)
    stop.set()
    for t in readers:
        t.join()
    service.loop.stop()

    assert not failures, failures[:3]
    versions = {a["model_version"] for a in answers}
    assert len(answers) > 50 and len(versions) > 5, (len(answers), len(versions))
    for answer in answers:
        snapshot = published[answer["model_version"]]  # it was published, not invented
        expected = snapshot.predict_many(np.asarray(PROBE, np.float32))  # type: ignore[attr-defined]
        assert [p["label"] for p in answer["predictions"]] == expected.labels
        np.testing.assert_allclose([p["score"] for p in answer["predictions"]], expected.scores, rtol=1e-6)
