"""Every dashboard panel shows data: the real daemon learns from a real Kafka topic with traffic in
phases, a real Prometheus scrapes it, and each panel query returns finite values through the HTTP API."""
from __future__ import annotations

import json
import math
import random
import re
import subprocess
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import pytest
from harness import Broker, Prometheus, http_json, require, wait_until

from lifelong.monitoring.dashboard import build_dashboard, expand, queries

pytestmark = pytest.mark.integration

DIM = 8
CLASSES = 6
# Classes arrive in phases (new ones each time, then all together), then the concept drifts: every region
# is relabelled as the next class. That loss peak opens a segment, so the stability-gap panels have data.
PHASES = [((0, 1), 0), ((2, 3), 0), ((4, 5), 0), (tuple(range(CLASSES)), 0), (tuple(range(CLASSES)), 1)]
PER_PHASE = 1100
N_UNLABELLED = 200
BAD_RECORDS = [
    "this is { not json",
    json.dumps({"id": "bad-schema", "features": [1.0] * DIM, "colour": "red"}),
    json.dumps({"id": "bad-missing", "label": "class-0"}),
    json.dumps({"id": "bad-dim", "features": [1.0, 2.0]}),
    '{"id": "bad-nan", "features": [1, NaN, 3, 4, 5, 6, 7, 8]}',
    json.dumps({"id": "bad-label", "features": [1.0] * DIM, "label": 1.5}),
]
# $__rate_interval as evaluated here: wider than the whole run, so every rate and quantile sees its traffic.
RATE_INTERVAL = "5m"
METRIC_NAME = re.compile(r"\blifelong_[a-z0-9_]+")

# Queries allowed to return no finite value in this short run: metric name -> reason. A query is excused
# only if every lifelong_ metric in it is listed; an excused query that has data fails the test (stale entry).
# Empty: every panel has data (the evaluator is wired and the relabelling phase opens a stability gap).
# Metrics only some modes export: a query naming one has no data here (its own test shows the data).
MERGE_ONLY = "only merging replicas export it (scaleout.learning.mode merge; test_merge_kafka reads it)"
PER_KEY_ONLY = ("only replicas with a model per key export it (scaleout.learning.mode per_key; test_keyed_kafka "
                "reads it)")
NO_FORGET = "no forget request in this run: the histogram is empty (test_forget_kafka applies requests)"
NO_DATA_OK: dict[str, str] = {"lifelong_forget_seconds_bucket": NO_FORGET} | {name: MERGE_ONLY for name in (
    "lifelong_merge_round", "lifelong_merge_events", "lifelong_merge_seconds_total",
    "lifelong_merge_contributions_total", "lifelong_merge_bases_total", "lifelong_merge_rejects_total")} | {
    name: PER_KEY_ONLY for name in ("lifelong_keys_in_memory", "lifelong_keys_stored", "lifelong_keys_memory_bytes",
                                    "lifelong_key_evictions_total", "lifelong_key_conflicts_total")}


def monitoring_config(broker: Broker, topic: str, state_dir: Path) -> dict[str, Any]:
    return {
        "source": {"kind": "kafka", "batch_size": 50, "poll_timeout_s": 0.2, "lag_check_s": 0.5,
                   "kafka": {"bootstrap_servers": broker.bootstrap, "events_topic": topic, "group_id": f"g-{topic}"}},
        # pq_m divides DIM, so the replay memory switches to PQ codes (codebook on the first 1,000 taps,
        # compression after 2,000 more) and the reconstruction error has a value.
        "learner": {"input_kind": "features", "feature_dim": DIM, "feature_warmup_events": 100, "pq_m": 4,
                    "torch_threads": 1},
        "checkpoint": {"dir": str(state_dir), "every_s": 0.5, "every_events": 500},
        "outputs": {"predictions_topic": f"{topic}-predictions", "dead_letter_topic": f"{topic}-dead"},
        # Frequent evaluations, and classes count as past after 500 events, so a short run has scores.
        "evaluation": {"eval_every": 200, "class_absent_window": 500},
        # It publishes its snapshots too, for a predictor beside it: the snapshot panels get data.
        "snapshots": {"topic": f"{topic}-snapshots", "publish": True, "min_interval_s": 0.5, "heartbeat_s": 0.5},
    }


def phase_events(phase: int, classes: tuple[int, ...], shift: int, rng: random.Random) -> list[str]:
    """Labelled events around the centres of ``classes``, labelled ``shift`` classes further on."""
    out = []
    for i in range(PER_PHASE):
        c = rng.choice(classes)
        features = [(3.0 if d == c else 0.0) + rng.gauss(0, 0.5) for d in range(DIM)]
        out.append(json.dumps({"id": f"p{phase}-{i}", "features": features,
                               "label": f"class-{(c + shift) % CLASSES}"}))
    return out


def unlabelled_events(rng: random.Random) -> tuple[list[str], dict[str, str]]:
    lines, truth = [], {}
    for i in range(N_UNLABELLED):
        c = rng.randrange(CLASSES)
        features = [(3.0 if d == c else 0.0) + rng.gauss(0, 0.5) for d in range(DIM)]
        lines.append(json.dumps({"id": f"u-{i}", "features": features}))
        truth[f"u-{i}"] = f"class-{c}"
    return lines, truth


def predict_some(url: str, rng: random.Random, calls: int) -> None:
    for _ in range(calls):
        instances = [{"features": [rng.gauss(0, 2) for _ in range(DIM)]} for _ in range(rng.randint(1, 16))]
        status, body = http_json("POST", f"{url}/v1/predict", {"instances": instances})
        assert status == 200, body


def finite_series(prom: Prometheus, expr: str) -> tuple[int, int]:
    """(series returned, series with a finite value) of an instant query."""
    result = prom.query(expr)
    return len(result), sum(math.isfinite(float(r["value"][1])) for r in result)


def panels_without_data(prom: Prometheus) -> tuple[list[str], list[str]]:
    """Evaluate every dashboard query; print those without finite data. Returns (not excused, stale excuses)."""
    report, missing, stale = [], [], []
    for title, ref, expr in queries(build_dashboard()):
        returned, finite = finite_series(prom, expand(expr, RATE_INTERVAL))
        names = set(METRIC_NAME.findall(expr))
        excused = bool(names & NO_DATA_OK.keys())  # a ratio over a mode-only metric is empty without it
        if finite == 0:
            reason = "; ".join(sorted({NO_DATA_OK[n] for n in names & NO_DATA_OK.keys()})) if excused else "NOT EXCUSED"
            report.append(f"  {title} [{ref}] ({returned} series, none finite; {reason}): {expr}")
            if not excused:
                missing.append(f"{title} [{ref}]: {expr}")
        elif excused:
            stale.append(f"{title} [{ref}]: {expr}")
    n = len(queries(build_dashboard()))
    print(f"{n - len(report)} of {n} dashboard queries have finite data")
    if report:
        message = "dashboard queries without data:\n" + "\n".join(report)
        print(message)
        warnings.warn(message, stacklevel=2)
    return missing, stale


def test_every_dashboard_panel_has_data(kafka_broker, prometheus, lifelong_daemon, tmp_path) -> None:
    rng = random.Random(11)
    topic = f"monitoring-{uuid.uuid4().hex[:8]}"
    kafka_broker.produce(topic, phase_events(0, *PHASES[0], rng))
    config = monitoring_config(kafka_broker, topic, tmp_path / "state")
    daemon = lifelong_daemon(config)
    predictor = lifelong_daemon({**config, "role": "predictor", "checkpoint": {"dir": None}})
    prom = prometheus([daemon.target, predictor.target])
    daemon.wait_ready()
    predictor.wait_ready()
    mine = f'instance="{daemon.target}"'  # the learning process (the predictor exports the same names)
    wait_until(lambda: prom.value(f'up{{job="lifelong", {mine}}}') == 1, 60, "Prometheus scraping lifelong")

    # The rest arrives while Prometheus watches: rates and latency histograms move between scrapes.
    unlabelled, truth = unlabelled_events(rng)
    produced = PER_PHASE
    for phase, (classes, shift) in enumerate(PHASES[1:], start=1):
        records = phase_events(phase, classes, shift, rng)
        records[100:100] = BAD_RECORDS[phase - 1::4] + unlabelled[phase - 1::4]
        kafka_broker.produce(topic, records)
        produced += len(records)
        predict_some(daemon.url, rng, 20)
        time.sleep(1.5)
    wait_until(lambda: prom.value(f"lifelong_events_consumed_total{{{mine}}}") == produced, 180,
               f"lifelong_events_consumed_total == {produced} in Prometheus")

    # Delayed labels for half the unlabelled events, and one for an event that never came.
    labels = list(truth.items())[: N_UNLABELLED // 2] + [("never-seen", "class-0")]
    for event_id, label in labels:
        status, body = http_json("POST", f"{daemon.url}/v1/feedback", {"id": event_id, "label": label})
        assert status == 202, body
    predict_some(daemon.url, rng, 20)
    wait_until(lambda: prom.value(f'lifelong_labels_total{{outcome="joined", {mine}}}') == N_UNLABELLED // 2, 60,
               "joined labels in Prometheus")
    since = time.time()
    wait_until(lambda: prom.value(f'min(timestamp(up{{job="lifelong"}}))') > since + 2, 30, "two more scrapes")

    missing, stale = panels_without_data(prom)
    assert not missing, f"panel queries without finite data: {missing}\n{daemon.log()[-3000:]}"
    assert not stale, f"these queries now have data: remove their metrics from NO_DATA_OK: {stale}"

    # A few panels carry more than a finite value.
    assert prom.value(expand('histogram_quantile(0.99, sum by (le) (rate('
                             'lifelong_predict_latency_seconds_bucket[$__rate_interval])))', RATE_INTERVAL)) > 0
    assert 0 < prom.value(f"lifelong_pq_reconstruction_error{{{mine}}}") < 1
    assert prom.value("sum(lifelong_events_rejected_total)") == len(BAD_RECORDS)
    assert prom.value(f'lifelong_drift_events_total{{kind="peak", {mine}}}') >= 1
    assert prom.value("sum(lifelong_snapshot_swaps_total)") >= 2  # the predictor followed the learning

    # The exposition passes Prometheus's own linter.
    status, text = http_json("GET", f"{daemon.url}/metrics")
    assert status == 200
    lint = subprocess.run([require("promtool"), "check", "metrics"], input=text.encode(), capture_output=True)
    assert lint.returncode == 0, lint.stdout.decode() + lint.stderr.decode()
    assert daemon.stop() == 0, daemon.log()
