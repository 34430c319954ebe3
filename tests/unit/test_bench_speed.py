"""lifelong bench --speed: the in-process and river parts on a tiny slice, and the pieces around them."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from lifelong.bench.speed_http import ReplaySource, request_bodies, summarise
from lifelong.bench.speed import finite, stage_times, stream_data, top_functions
from lifelong.bench.speed_report import TARGETS, evaluate_targets, markdown
from lifelong.cli import main
from lifelong.bench.streams import builtin, data_dir

TARGET_NAMES = [t.name for t in TARGETS]
# The speed bench reads the real elec2 and CLINC150 files from shared/data beside the checkout.
needs_data = pytest.mark.skipif(
    not ((data_dir() / "tabular" / "elec2_skmf.csv").exists() and (data_dir() / "text" / "clinc150").exists()),
    reason=f"benchmark data not found at {data_dir()} (set LIFELONG_DATA_DIR)")


@pytest.fixture(scope="module")
def speed_doc(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("speed")
    assert main(["bench", "--speed", "--quick", "--skip-kafka", "--skip-http", "--vector-events", "700",
                 "--text-events", "24", "--out", str(out)]) == 0
    return json.loads((out / "speed.json").read_text()), (out / "speed.md").read_text()


def _check_run(run: dict, events: int) -> None:
    assert run["events"] == events
    # 5% of the labelled events are held out for continual evaluation; none is rejected.
    assert run["rejected"] == 0 and 0.85 * events <= run["learned"] <= events
    assert run["seconds"] > 0 and run["events_per_s"] > 0
    assert run["events_per_s"] == pytest.approx(run["events"] / run["seconds"])
    assert run["learned_per_s"] == pytest.approx(run["learned"] / run["seconds"])
    assert 0.0 <= run["prequential_accuracy"] <= 1.0
    assert run["settings"]["checkpoint_dir"] is None and run["settings"]["source"]["kind"] == "file"


@needs_data
def test_speed_quick_in_process_and_river(speed_doc: tuple[dict, str]) -> None:
    doc, md = speed_doc
    assert doc["schema"] == 1 and doc["quick"] is True
    assert doc["machine"]["cpu_count"] == os.cpu_count() and doc["machine"]["device"] == "cpu"
    assert doc["machine"]["torch_threads"] == {"vector": 1, "text": os.cpu_count()}
    vector, text = doc["pipeline"]["vector"], doc["pipeline"]["text"]
    _check_run(vector, 700)
    _check_run(text, 24)
    assert vector["stream"] == "elec2" and text["stream"] == "clinc150"
    assert vector["settings"]["source"]["batch_size"] == 500 and vector["settings"]["learner"]["torch_threads"] == 1
    assert vector["settings"]["learner"]["input_kind"] == "features"
    assert text["settings"]["learner"]["input_kind"] == "text"

    river = doc["river"]
    assert river["events"] == 700 and river["events_per_s"] > 0
    assert 0.6 < river["prequential_accuracy"] <= 1.0  # elec2 is easy for a linear model early on
    assert river["speed_ratio"] == pytest.approx(vector["events_per_s"] / river["events_per_s"])
    assert river["accuracy_delta"] == pytest.approx(vector["prequential_accuracy"] - river["prequential_accuracy"])
    assert river["parse_included"] is True
    assert "kafka" not in doc and "http" not in doc

    encoder = doc["encoder"]
    runtimes = {r["runtime"]: r for r in encoder["runtimes"]}
    assert set(runtimes) == {"torch", "torch-int8", "onnx", "onnx-int8"} and encoder["runtime"] == "onnx-int8"
    assert runtimes["torch"]["cosine_to_fp32_min"] == pytest.approx(1.0, abs=1e-6)
    assert runtimes["onnx"]["cosine_to_fp32_min"] > 0.9999 and runtimes["onnx-int8"]["cosine_to_fp32_mean"] > 0.98
    assert encoder["events_per_s"] == runtimes["onnx-int8"]["events_per_s"] and encoder["events"] == 24
    assert encoder["loop_over_bound"] == pytest.approx(text["learned_per_s"] / encoder["events_per_s"])

    adapter = doc["adapter"]
    for name in ("lifelong", "river LogisticRegression"):
        assert adapter[name]["events"] == 1250 and adapter[name]["events_per_s"] > 0
        assert 0.8 < adapter[name]["accuracy"] <= 1.0  # both learn Phishing (the majority class is 0.56)


@needs_data
def test_speed_targets_and_markdown(speed_doc: tuple[dict, str]) -> None:
    doc, md = speed_doc
    targets = {t["name"]: t for t in doc["targets"]}
    assert list(targets) == TARGET_NAMES
    assert targets["vector stream, learn+predict in process"]["value"] == doc["pipeline"]["vector"]["events_per_s"]
    assert targets["vector stream, speed vs river LogisticRegression (parse included)"]["value"] == \
        doc["river"]["speed_ratio"]
    assert targets["River adapter on Phishing, accuracy"]["value"] == doc["adapter"]["lifelong"]["accuracy"]
    for name in ("vector stream, through Kafka over in process", "vector /v1/predict p99 while learning (1 client)",
                 "text /v1/predict p99, 8 clients over 1"):
        assert targets[name]["met"] is None and targets[name]["value"] is None  # skipped parts
    ratio = targets["vector stream, speed vs river LogisticRegression (parse included)"]
    assert ratio["met"] == (ratio["value"] >= 2.0)
    assert "| target | value | goal | |" in md and "not run" in md
    assert "StandardScaler \\| LogisticRegression" in md  # a pipe inside a cell is escaped


def test_targets_met_missed_and_not_run() -> None:
    doc = {"pipeline": {"vector": {"events_per_s": 25_000.0}, "text": {"learned_per_s": 100.0}},
           "river": {"speed_ratio": 1.5, "accuracy_delta": 0.0},
           "encoder": {"loop_over_bound": 0.85}, "kafka": {"vector": {"over_in_process": 0.5}},
           "adapter": {"lifelong": {"events_per_s": 1200.0, "accuracy": 0.87}},
           "http": {"vector": {"levels": [{"clients": 8, "p99_ms": 30.0}, {"clients": 1, "p99_ms": 4.0}],
                               "predictor": {"levels": [{"clients": 1, "p99_ms": 12.0},
                                                        {"clients": 8, "p99_ms": 20.0}]}},
                    "text": {"levels": [{"clients": 1, "p99_ms": float("nan")}]}}}
    met = {t["name"]: t["met"] for t in evaluate_targets(doc)}
    assert met == {
        "vector stream, learn+predict in process": True,
        "vector stream, speed vs river LogisticRegression (parse included)": False,
        "vector stream, prequential accuracy minus river's": True,      # equal counts as met
        "vector stream, through Kafka over in process": False,
        "text stream, learned in process": False,
        "text stream, learned in process over the encoder alone": True,
        "text stream, through Kafka over in process": None,
        "vector /v1/predict p99 while learning (1 client)": True,       # the single client's level, not 8
        "text /v1/predict p99 while learning (1 client)": None,
        "vector /v1/predict p99, 8 clients over 1": False,              # 30 ms against 2 x 4 ms
        "text /v1/predict p99, 8 clients over 1": None,
        "vector /v1/predict p99 while learning, predictor process (1 client)": False,  # 12 ms against 10
        "text /v1/predict p99 while learning, predictor process (1 client)": None,
        "vector /v1/predict p99, predictor process, 8 clients over 1": True,          # 20 ms against 2 x 12 ms
        "text /v1/predict p99, predictor process, 8 clients over 1": None,
        "River adapter on Phishing, one event at a time": True,
        "River adapter on Phishing, accuracy": False,
    }


@needs_data
def test_stream_lines_carry_the_same_float32_values_and_ids() -> None:
    stream = builtin("elec2")
    data = stream_data(stream, 50)
    assert data.kind == "features" and data.dim == stream.train.inputs.shape[1] and len(data.bodies) == 50
    events = [json.loads(line) for line in data.lines()]
    assert [e["id"] for e in events] == stream.train.ids[:50]
    assert [e["label"] for e in events] == stream.train.labels[:50]
    np.testing.assert_array_equal(np.asarray([e["features"] for e in events], np.float32), stream.train.inputs[:50])


def test_replay_source_repeats_the_stream_with_fresh_ids() -> None:
    bodies = [b'"features":[1.0],"label":"a"}', b'"features":[2.0],"label":"b"}', b'"features":[3.0],"label":"a"}']
    source = ReplaySource(bodies)
    records = source.poll(4) + source.poll(3)
    events = [json.loads(r.value) for r in records]
    assert [e["id"] for e in events] == list(range(7))
    assert [e["features"][0] for e in events] == [1.0, 2.0, 3.0, 1.0, 2.0, 3.0, 1.0]
    assert [r.offset for r in records] == list(range(7)) and not source.exhausted


@needs_data
def test_request_bodies_are_single_instances_of_the_stream() -> None:
    data = stream_data(builtin("elec2"), 20)
    inputs = {tuple(json.loads(b"{" + b)["features"]) for b in data.bodies}
    bodies = [json.loads(b) for b in request_bodies(data, n=10)]
    assert len(bodies) == 10
    assert all(len(b["instances"]) == 1 and tuple(b["instances"][0]["features"]) in inputs for b in bodies)


def test_summarise_latencies() -> None:
    lat = [i / 1000 for i in range(1, 101)]  # 1 .. 100 ms
    s = summarise(lat, {200: 98, 503: 2}, clients=2, seconds=4.0)
    assert s["requests"] == 100 and s["ok"] == 98 and s["errors"] == 2 and s["statuses"] == {"200": 98, "503": 2}
    assert s["requests_per_s"] == 25.0
    assert s["p50_ms"] == pytest.approx(51.0) and s["p99_ms"] == pytest.approx(100.0) and s["max_ms"] == 100.0
    assert math.isnan(summarise([], {}, 1, 1.0)["p99_ms"])


def test_finite_makes_json_without_nan() -> None:
    doc = finite({"a": float("nan"), "b": [1.0, float("inf")], "c": (2, "x")})
    assert doc == {"a": None, "b": [1.0, None], "c": [2, "x"]}
    json.dumps(doc, allow_nan=False)


def test_markdown_of_a_run_with_every_part_skipped() -> None:
    machine = {"cpu_count": 2, "processor": "", "platform": "p", "device": "cpu", "cuda": None, "torch": "t",
               "river": "r", "python": "3", "torch_threads": {"vector": 1, "text": 2}, "load_average": [1.0, 1.0, 1.0]}
    options = {"vector_stream": "elec2", "text_stream": "clinc150", "vector_batch_size": 500, "text_batch_size": 64,
               "clients": [1]}
    md = markdown({"quick": True, "started_at": "now", "total_seconds": 1.0, "load_seconds": 1.0, "machine": machine,
                   "options": options, "targets": evaluate_targets({})})
    assert md.count("| not run |") == len(TARGETS) and "## Where" not in md


def test_profile_stages_and_top_functions() -> None:
    stats = {("/x/service/loop.py", 1, "step"): (2, 2, 0.1, 2.0, {}),
             ("/x/service/intake.py", 2, "_learn"): (2, 2, 0.2, 1.5, {}),
             ("/x/learner/continual.py", 3, "encode"): (2, 2, 0.05, 0.3, {}),
             ("/x/learner/encoders.py", 4, "encode"): (2, 2, 0.25, 0.25, {}),
             ("/x/other/thing.py", 5, "encode"): (1, 1, 0.9, 0.9, {})}  # not one of the loop's stages
    stages = {s["stage"]: s for s in stage_times(stats)}
    assert stages["step (all)"]["seconds"] == 2.0
    assert stages["predict-then-learn"]["seconds"] == 1.5 and stages["predict-then-learn"]["share"] == 0.75
    assert stages["encode"]["seconds"] == 0.3  # the outer encode, not the encoder's inside it
    assert stages["poll the source"]["seconds"] == 0.0
    top = top_functions(stats, n=2)
    assert [r["function"] for r in top] == ["other/thing.py:5(encode)", "learner/encoders.py:4(encode)"]
    assert top[0]["share"] == pytest.approx(0.9 / 1.5)
