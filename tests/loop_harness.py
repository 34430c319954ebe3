"""Shared pieces of the learning-loop unit tests (restart, outputs): a small labelled stream in a
JSONL file, settings for it, and services that close their sources at the end of a test."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from lifelong.service.config import Settings
from lifelong.service.runtime import Service
from lifelong.stream.sinks import MemorySink

DIM = 4
CENTERS = {"a": [5.0, 0.0, 0.0, 0.0], "b": [0.0, 5.0, 0.0, 0.0], "c": [0.0, 0.0, 5.0, 0.0]}
PROBE = np.array([[4.0, 0.5, 0.0, 0.0], [0.0, 4.5, 1.0, 0.0], [0.5, 0.0, 4.0, 1.0], [1.0, 1.0, 1.0, 1.0]],
                 np.float32)
PREDICTIONS = "lifelong-predictions"
DEAD_LETTERS = "lifelong-dead-letters"


def labelled(i: int, rng: np.random.Generator) -> dict[str, Any]:
    label = "abc"[i % 3]
    x = np.array(CENTERS[label]) + rng.normal(0, 0.4, DIM)
    return {"id": f"e{i}", "features": [round(float(v), 4) for v in x], "label": label}


def stream_lines(n: int = 60, seed: int = 0) -> list[Any]:
    """``n`` labelled events with unlabelled events, bad records and a true duplicate mixed in."""
    rng = np.random.default_rng(seed)
    lines: list[Any] = [labelled(i, rng) for i in range(n)]
    extras: list[tuple[int, Any]] = [
        (3, "this is not json"),
        (9, {"id": "u0", "features": CENTERS["a"]}),
        (13, {"id": "w", "features": [1, 2, 3], "label": "a"}),          # wrong dimension
        (22, {"id": "u1", "features": [0.2, 4.8, 0.1, 0.0]}),
        (27, {"id": "e2", "features": [9, 9, 9, 9], "label": "c"}),        # duplicate of a checkpointed id
        (33, {"id": "t", "text": "hello", "label": "b"}),                  # wrong input kind
        (41, {"id": "e15", "features": [1, 1, 1, 1], "label": "a"}),       # duplicate of a replayed id
        (50, {"id": "u2", "features": [0.0, 0.3, 5.1, 0.0]}),
        (58, ""),                                                          # blank: skipped, still a line
        (62, {"id": "u3", "features": [4.9, 0.2, 0.0, 0.1]}),
    ]
    for at, line in extras:
        lines.insert(at, line)
    return lines


def valid_labelled_ids(lines: list[Any]) -> list[str]:
    seen: set[str] = set()
    out = []
    for line in lines:
        if isinstance(line, dict) and "label" in line and len(line.get("features") or []) == DIM:
            if line["id"] not in seen:
                out.append(line["id"])
            seen.add(line["id"])
    return out


def write_lines(path: Path, lines: list[Any]) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def make_settings(path: Path, ckpt_dir: Path | None, **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "source": {"kind": "file", "path": str(path), "batch_size": 8, "poll_timeout_s": 0.001},
        "learner": {"name": "nmc", "input_kind": "features", "feature_dim": DIM, "feature_warmup_events": 20},
        "evaluation": {"holdout_fraction": 0.0},
        "checkpoint": {"dir": str(ckpt_dir) if ckpt_dir else None, "every_s": 3600.0, "every_events": 16},
        "debug": {"track_learned_ids": True},
        "publish_every_events": 1,
    }
    return merged_settings(base, overrides)


def merged_settings(base: dict[str, Any], overrides: dict[str, Any]) -> Settings:
    """``base`` with each override section merged into it (a whole value where it is not a section)."""
    for key, value in overrides.items():
        base[key] = {**base[key], **value} if isinstance(value, dict) and key in base else value
    return Settings(**base)


class Services:
    """Builds services and closes their sources at the end of a test."""

    def __init__(self) -> None:
        self.made: list[Service] = []

    def __call__(self, settings: Settings, **kwargs: Any) -> Service:
        service = Service(settings, **kwargs)
        self.made.append(service)
        return service

    def close(self) -> None:
        for service in self.made:
            service.loop.close()


def run_to_end(service: Service, max_steps: int = 200) -> None:
    for _ in range(max_steps):
        service.loop.step()
        if service.loop.source.exhausted:
            return
    raise AssertionError("source never exhausted")


def crash(service: Service) -> None:
    """Lose everything since the last checkpoint (the file handle is closed, nothing is saved)."""
    service.loop.close()


def probe_scores(service: Service) -> tuple[np.ndarray, list[str | None], int]:
    snap = service.holder.current
    assert snap is not None
    preds = snap.predict_many(PROBE)
    return preds.scores.copy(), list(preds.labels), preds.model_version


def metrics_text(service: Service) -> str:
    return service.metrics.exposition().decode()


def sent_to(sink: MemorySink, topic: str) -> list[tuple[str, bytes, bytes | None, list[tuple[str, bytes]]]]:
    return [m for m in sink.sent if m[0] == topic]


def predictions_by_id(sink: MemorySink) -> dict[str, dict[str, Any]]:
    return {json.loads(m[1])["id"]: json.loads(m[1]) for m in sent_to(sink, PREDICTIONS)}


def assert_same_learner_state(got: Service, want: Service) -> None:
    got_arrays, got_meta = got.learner.state_dict()
    want_arrays, want_meta = want.learner.state_dict()
    assert got_meta == want_meta
    assert set(got_arrays) == set(want_arrays)
    for key in want_arrays:
        np.testing.assert_array_equal(got_arrays[key], want_arrays[key], err_msg=key)
