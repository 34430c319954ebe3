"""lifelong bench --speed against the real parts: the session Kafka broker, and the HTTP app under load."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from harness import Broker

from lifelong.bench.speed import SpeedOptions, run_speed
from lifelong.bench.streams import data_dir

# The speed bench reads the real elec2 and CLINC150 files from shared/data beside the checkout.
needs_data = pytest.mark.skipif(
    not ((data_dir() / "tabular" / "elec2_skmf.csv").exists() and (data_dir() / "text" / "clinc150").exists()),
    reason=f"benchmark data not found at {data_dir()} (set LIFELONG_DATA_DIR)")

pytestmark = [pytest.mark.integration, needs_data]


def test_speed_through_kafka_learns_every_produced_event(kafka_broker: Broker, tmp_path: Path) -> None:
    doc = run_speed(SpeedOptions(out=tmp_path, quick=True, bootstrap=kafka_broker.bootstrap,
                                 parts=("pipeline", "kafka"), streams=("vector",), vector_events=3000))
    run = doc["kafka"]["vector"]
    assert doc["kafka"]["broker"] == kafka_broker.bootstrap
    assert run["events"] == 3000 and run["rejected"] == 0
    assert 0.85 * 3000 <= run["learned"] < 3000  # 5% held out for continual evaluation
    assert run["seconds"] > 0 and run["events_per_s"] == pytest.approx(3000 / run["seconds"])
    assert run["produce_events_per_s"] > 0 and 0.5 < run["prequential_accuracy"] <= 1.0
    assert run["settings"]["source"]["kind"] == "kafka"
    saved = json.loads((tmp_path / "speed.json").read_text())
    # The Kafka target is a ratio to the in-process loop over the same records in the same run.
    ratio = run["events_per_s"] / doc["pipeline"]["vector"]["events_per_s"]
    assert run["over_in_process"] == pytest.approx(ratio)
    target = next(t for t in saved["targets"] if t["name"] == "vector stream, through Kafka over in process")
    assert target["value"] == pytest.approx(ratio) and target["met"] == (ratio >= 0.8)


def test_speed_serving_while_learning(tmp_path: Path) -> None:
    doc = run_speed(SpeedOptions(out=tmp_path, quick=True, parts=("http",), streams=("vector",), load_seconds=1.5,
                                 clients=(1, 3)))
    levels = doc["http"]["vector"]["levels"]
    assert [lv["clients"] for lv in levels] == [1, 3]
    for lv in levels:
        assert lv["requests"] > 0 and lv["errors"] == 0 and lv["statuses"] == {"200": lv["requests"]}
        assert 0 < lv["p50_ms"] <= lv["p90_ms"] <= lv["p99_ms"] <= lv["max_ms"]
        assert lv["requests_per_s"] == pytest.approx(lv["requests"] / 1.5)
        assert lv["learned_per_s_during"] > 0  # the learner kept learning under load
    target = next(t for t in doc["targets"] if t["name"] == "vector /v1/predict p99 while learning (1 client)")
    assert target["value"] == levels[0]["p99_ms"]
    # The same load on a predictor process that follows the learner through a snapshot folder.
    predictor = doc["http"]["vector"]["predictor"]
    assert [lv["clients"] for lv in predictor["levels"]] == [1, 3] and predictor["channel"] == "snapshots.dir"
    for lv in predictor["levels"]:
        assert lv["requests"] > 0 and lv["errors"] == 0 and lv["statuses"] == {"200": lv["requests"]}
        assert lv["learned_per_s_during"] > 0
    target = next(t for t in doc["targets"]
                  if t["name"] == "vector /v1/predict p99 while learning, predictor process (1 client)")
    assert target["value"] == predictor["levels"][0]["p99_ms"] and target["met"] == (target["value"] <= 10)
