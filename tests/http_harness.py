"""Shared pieces of the HTTP app tests: a FileSource stream, a features learner, a service driven step by step."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
from fastapi.testclient import TestClient

from lifelong.service.config import Settings
from lifelong.service.runtime import Service
from lifelong.stream.sources import FileSource

DIM = 4
CENTERS = {"a": [5.0, 0.0, 0.0, 0.0], "b": [0.0, 5.0, 0.0, 0.0], "c": [0.0, 0.0, 5.0, 0.0]}
Metric = Callable[..., float]


def labelled_events(n: int, seed: int, start_id: int = 0) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    names = list(CENTERS)
    out = []
    for i in range(n):
        label = names[i % 3]
        x = np.array(CENTERS[label]) + rng.normal(0, 0.3, DIM)
        out.append({"id": start_id + i, "features": [round(float(v), 4) for v in x], "label": label})
    return out


def write_lines(path: Path, lines: list[Any]) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def make_settings(path: Path, **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "source": {"kind": "file", "path": str(path), "batch_size": 64, "poll_timeout_s": 0.01},
        "learner": {"name": "nmc", "input_kind": "features", "feature_dim": DIM, "feature_warmup_events": 30},
        "evaluation": {"holdout_fraction": 0.0},
        "http": {"max_instances": 3},
        "limits": {"max_record_bytes": 4096},
        "publish_every_events": 1,
    }
    for key, value in overrides.items():
        if isinstance(value, dict):
            base[key] = {**base.get(key, {}), **value}
        else:
            base[key] = value
    return Settings(**base)


class Harness:
    def __init__(self, service: Service, source: FileSource, client: TestClient) -> None:
        self.service = service
        self.source = source
        self.client = client

    def step_all(self, max_steps: int = 100) -> int:
        """Step the loop until the file source is exhausted; returns the steps taken."""
        for n in range(1, max_steps + 1):
            self.service.loop.step()
            if self.source.exhausted:
                return n
        raise AssertionError("source never exhausted")

    def metrics_text(self) -> str:
        resp = self.client.get("/metrics")
        assert resp.status_code == 200
        return resp.text


def service_maker(tmp_path: Path) -> tuple[Callable[..., Harness], list[FileSource]]:
    """A factory of harnesses over JSONL files in ``tmp_path``, and the sources to close after."""
    sources: list[FileSource] = []

    def make(lines: list[Any], **overrides: Any) -> Harness:
        path = write_lines(tmp_path / f"events-{len(sources)}.jsonl", lines)
        source = FileSource(path)
        sources.append(source)
        service = Service(make_settings(path, **overrides), source=source)
        return Harness(service, source, TestClient(service.app))

    return make, sources


def trained_harness(make: Callable[..., Harness]) -> Harness:
    """A service that has learned 60 events of three classes and parked one unlabelled event (u1)."""
    h = make(labelled_events(60, seed=0) + [{"id": "u1", "features": CENTERS["b"]}])
    assert h.service.loop.step() == 61
    return h
