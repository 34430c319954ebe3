"""lifelong bench --stream / --stream-file: metrics, stream files, the runner's outputs."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lifelong.bench.quality import Evaluation, _batches, compute_metrics, parse_size
from lifelong.cli import main
from lifelong.bench.streams import StreamError, builtin, from_file

NAN = math.nan


def test_parse_size() -> None:
    assert parse_size("64MB") == 64 << 20
    assert parse_size("1MB") == 1 << 20
    assert parse_size("500KB") == 500 << 10
    assert parse_size("2GiB") == 2 << 30
    assert parse_size("1.5kb") == 1536
    assert parse_size("4096") == 4096
    with pytest.raises(ValueError):
        parse_size("lots")


def test_metrics_on_a_hand_made_history() -> None:
    sizes = [10, 10, 20]
    history = [
        Evaluation(100, 0, (0.8, NAN, NAN), boundary=True),
        Evaluation(150, 1, (0.6, 0.5, NAN), probe=True),
        Evaluation(200, 1, (0.7, 0.9, NAN), periodic=True, boundary=True),
        Evaluation(250, 2, (0.5, 0.8, 0.4), probe=True),
        Evaluation(300, 2, (0.6, 0.7, 0.9), boundary=True, final=True),
    ]
    m = compute_metrics(history, sizes)
    assert m["final_accuracy"] == pytest.approx((6 + 7 + 18) / 40)
    assert m["forgetting"] == pytest.approx(0.2)          # (0.8 - 0.6 + 0.9 - 0.7) / 2
    assert m["min_acc"] == pytest.approx(0.6)             # (0.5 + 0.7) / 2, only after each segment ended
    assert m["wc_acc"] == pytest.approx(0.9 / 3 + 2 / 3 * 0.6)
    assert m["a_auc"] == pytest.approx((0.8 + 0.8 + 0.775) / 3)  # probes left out
    assert m["stability_gaps"] == pytest.approx([0.2, 0.15])   # 0.8 - 0.6; 0.8 - 0.65
    assert m["stability_gap"] == pytest.approx(0.175)


def test_metrics_of_a_single_segment() -> None:
    m = compute_metrics([Evaluation(10, 0, (0.5,), probe=True), Evaluation(20, 0, (0.75,), boundary=True,
                                                                            final=True)], [4])
    assert m["final_accuracy"] == 0.75 and m["wc_acc"] == 0.75 and m["a_auc"] == 0.75
    assert math.isnan(m["forgetting"]) and math.isnan(m["min_acc"]) and math.isnan(m["stability_gap"])


def test_batches_never_span_a_boundary() -> None:
    segs = np.array([0] * 5 + [1] * 3 + [2] * 4)
    assert _batches(segs, 2) == [(0, 2, False), (2, 4, False), (4, 5, True), (5, 7, False), (7, 8, True),
                                 (8, 10, False), (10, 12, True)]


def _write_stream(path, n_train: int = 60, n_test: int = 16, dim: int = 8) -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=3.0, size=(6, dim))
    lines = []
    for seg in range(3):
        for split, n in (("train", n_train), ("test", n_test)):
            for i in range(n):
                c = 2 * seg + i % 2
                x = centres[c] + rng.normal(size=dim)
                lines.append({"id": f"{split}-{seg}-{i}", "features": x.round(4).tolist(), "label": f"c{c}",
                              "segment": f"s{seg}", "split": split})
    path.write_text("".join(json.dumps(e) + "\n" for e in lines))


def test_stream_file_run_writes_results_report_and_plots(tmp_path) -> None:
    src, out = tmp_path / "stream.jsonl", tmp_path / "out"
    _write_stream(src)
    assert main(["bench", "--stream-file", str(src), "--learners", "lifelong,lifelong-live,nmc", "--eval-every", "50",
                 "--batch-size", "10", "--memory-budget", "500KB", "--out", str(out), "--quiet"]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["stream"] == "stream.jsonl" and doc["events"] == 180 and doc["segments"] == 3
    assert doc["test_events"] == 48 and doc["memory_budget_bytes"] == 500 << 10 and doc["boundaries"] == [60, 120, 180]
    assert list(doc["learners"]) == ["lifelong", "lifelong-live", "nmc"]
    keys = {"final_accuracy", "a_auc", "forgetting", "min_acc", "wc_acc", "prequential_accuracy", "events_per_s",
            "memory_bytes", "stability_gap", "served_prequential_accuracy"}
    for name, r in doc["learners"].items():
        assert keys <= set(r), name
        for k in ("final_accuracy", "a_auc", "min_acc", "wc_acc", "prequential_accuracy",
                  "served_prequential_accuracy"):
            assert 0.0 <= r[k] <= 1.0, (name, k)
        assert -1.0 <= r["forgetting"] <= 1.0 and -1.0 <= r["stability_gap"] <= 1.0
        assert len(r["stability_gaps"]) == 2 and r["events_per_s"] > 0 and r["memory_bytes"] > 0
    # well-separated clusters: every learner ends far above chance (1/6)
    assert min(r["final_accuracy"] for r in doc["learners"].values()) > 0.6
    # served and live models come from one run of the learner
    life, live = doc["learners"]["lifelong"], doc["learners"]["lifelong-live"]
    assert life["events_per_s"] == live["events_per_s"] and life["memory_bytes"] == live["memory_bytes"]
    assert life["prequential_accuracy"] == live["prequential_accuracy"] == live["served_prequential_accuracy"]
    history = json.loads((out / "history.json").read_text())["learners"]["lifelong"]
    assert history[-1]["final"] and sum(e["boundary"] for e in history) == 3
    assert sum(e["probe"] for e in history) == 2 * 4  # the first 4 of 6 micro-batches of segments 2 and 3
    report = (out / "report.md").read_text()
    assert "| lifelong |" in report and "| nmc |" in report and "## Targets" in report
    assert "stability gap <= half the live model's" in report
    for png in ("accuracy_per_segment.png", "past_accuracy.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_stream_file_checks(tmp_path) -> None:
    p = tmp_path / "s.jsonl"
    p.write_text('{"id": "a", "features": [1, 2], "label": "x", "segment": "A"}\n'
                 '{"id": "b", "features": [1, 2], "label": "y", "segment": "B"}\n'
                 '{"id": "c", "features": [1, 2], "label": "x", "segment": "A"}\n')
    with pytest.raises(StreamError, match="comes back"):
        from_file(p)
    p.write_text('{"id": "a", "features": [1, 2], "label": "x"}\n{"id": "b", "text": "hi", "label": "y"}\n')
    with pytest.raises(StreamError, match="mix"):
        from_file(p)
    p.write_text('{"id": "a", "features": [1, 2], "label": "x"}\n{"id": "b", "features": [3, 4]}\n'
                 '{"id": "c", "features": [5, 6], "label": "y"}\n{"id": "d", "features": [5, 6], "label": "y", '
                 '"split": "test"}\n')
    s = from_file(p)  # no segments: one segment; unlabelled events are left out
    assert s.segment_names == ["stream"] and len(s.train) == 2 and len(s.test) == 1 and s.kind == "features"


def test_stream_names() -> None:
    with pytest.raises(StreamError, match="unknown stream"):
        builtin("nope")


def test_cli_refuses_bad_arguments(tmp_path) -> None:
    with pytest.raises(SystemExit, match="exactly one of"):
        main(["bench", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="unknown learner"):
        main(["bench", "--stream", "digits-split", "--learners", "lifelong,magic", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="memory-budget"):
        main(["bench", "--stream", "digits-split", "--memory-budget", "big", "--out", str(tmp_path)])


def test_the_offline_reference_trains_on_training_events_only_and_every_learner_reports_its_gap(tmp_path) -> None:
    src, out = tmp_path / "stream.jsonl", tmp_path / "out"
    _write_stream(src)
    assert main(["bench", "--stream-file", str(src), "--learners", "nmc,offline", "--eval-every", "50",
                 "--batch-size", "10", "--out", str(out), "--quiet"]) == 0
    doc = json.loads((out / "results.json").read_text())
    offline, nmc = doc["learners"]["offline"], doc["learners"]["nmc"]
    # Six clusters in 8-d with overlap, 30 training events each: joint training does as well as an online learner.
    assert offline["final_accuracy"] > 0.7 and offline["final_accuracy"] >= nmc["final_accuracy"] - 0.05
    assert offline["l2"] in (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
    assert nmc["gap_to_offline"] == pytest.approx(nmc["final_accuracy"] - offline["final_accuracy"])
    assert offline["gap_to_offline"] == 0.0
    assert "| offline |" in (out / "report.md").read_text()


def test_the_offline_reference_never_sees_test_events(monkeypatch: pytest.MonkeyPatch) -> None:
    from lifelong.bench import offline

    seen: list[int] = []
    real = offline._fit
    monkeypatch.setattr(offline, "_fit", lambda x, *a, **k: (seen.append(len(x)), real(x, *a, **k))[1])
    rng = np.random.default_rng(0)
    taps = np.concatenate([rng.normal(c, 0.3, (50, 4)) for c in range(3)]).astype(np.float32)
    labels = [str(c) for c in range(3) for _ in range(50)]
    ref = offline.train_offline(taps, labels)
    assert seen == [135] * len(offline.PENALTIES) + [150]  # 9/10 to choose, then all 150 training events
    assert np.mean(np.array(ref.predict(taps)) == np.array(labels)) > 0.95
