"""``lifelong bench --forget`` on a small feature stream file: the figures, the files, the CLI."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from lifelong.bench.forget import assign_sources, auc


def write_stream(path: Path, n: int = 1500, classes: int = 5, dim: int = 8) -> None:
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(classes, dim)) * 3
    lines = []
    for i in range(n + 400):
        c = int(rng.integers(classes))
        x = (centres[c] + rng.normal(size=dim)).round(4).tolist()
        lines.append(json.dumps({"id": f"e{i}", "features": x, "label": f"k{c}",
                                 "split": "train" if i < n else "test"}))
    path.write_text("\n".join(lines) + "\n")


def test_auc_is_the_probability_a_member_scores_higher() -> None:
    assert auc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert auc(np.array([1.0]), np.array([2.0])) == 0.0
    assert auc(np.array([1.0, 2.0]), np.array([1.0, 2.0])) == 0.5


def test_s0_owns_one_class_and_about_a_tenth_of_the_rest() -> None:
    labels = [f"k{i % 4}" for i in range(4000)]
    chosen, sources = assign_sources(labels, seed=1)
    own = sources == "s0"
    assert own[np.array(labels) == chosen].all()
    others = np.array(labels) != chosen
    assert 0.08 < own[others].mean() < 0.12
    assert set(sources[~own].tolist()) == {"s1", "s2", "s3", "s4"}


def test_the_bench_forgets_the_class_keeps_the_rest_and_writes_its_files(tmp_path: Path) -> None:
    stream = tmp_path / "blobs.jsonl"
    write_stream(stream)
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "lifelong.cli", "bench", "--forget", "--stream-file", str(stream),
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    doc = json.loads((out / "forget.json").read_text())
    assert doc["forgotten_class_accuracy_before"] > 0.8 and doc["forgotten_class_accuracy"] == 0.0
    assert doc["classes_removed"] == [doc["forgotten_class"]]
    assert doc["retained_accuracy_after"] > 0.9 and abs(doc["retained_accuracy_drop"]) < 0.03
    assert doc["forgotten_items"] == doc["forgotten_events"]  # all of them were still in memory
    assert doc["refit_items"] == doc["events"] - doc["forgotten_events"]
    assert 0.3 < doc["mia_auc"] < 0.7 and doc["retrain_forgotten_class_accuracy"] == 0.0
    assert "| membership-inference AUC |" in (out / "forget.md").read_text()
    assert "forgotten class accuracy" in done.stdout
