"""The scale-out bench's pure parts: histogram and percentile math, version regressions, publish-to-swap,
the forged records against the real follower, the balancer's counting, targets, report and CLI."""
from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import pytest

from lifelong.bench.faults_env import parse_metrics, wait_for
from lifelong.bench.scaleout_forge import FORGED_BASE, FORGERIES, Real, manifests, newest_real
from lifelong.bench.scaleout_learning import LearningOptions, run_learning
from lifelong.bench.scaleout_load import Balancer
from lifelong.bench.scaleout_report import cpu_ratio, render_md, render_text, targets
from lifelong.bench.scaleout_stats import (Sample, add_buckets, between, buckets_of, failures, histogram_quantile,
                                           percentile, publish_to_swap, regressed, summarise_window,
                                           version_regressions)
from lifelong.bench.streams import data_dir
from lifelong.cli import main
from lifelong.learner.encoders import FeatureEncoder
from lifelong.service.follower import SnapshotFollower
from lifelong.service.snapshot_records import chunk_record, heartbeat_record, manifest_record
from lifelong.service.snapshot_wire import pack, with_version
from lifelong.stream.snapshot_channel import ChannelRecord

from contract_stream import BATCHES_PER_CLASS, DIM, VARIANTS, blob_stream, learn

INF = math.inf


def answer(proc: tuple[int, int], sent: float, received: float, version: int | None, status: int = 200,
           wall: float | None = None) -> Sample:
    return Sample(proc, sent, received, received if wall is None else wall, status, version)


# -- histogram and percentile math ----------------------------------------------------------------

def test_histogram_quantile_interpolates_like_prometheus() -> None:
    buckets = [(0.1, 0.0), (0.25, 50.0), (0.5, 100.0), (INF, 100.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.25)
    assert histogram_quantile(0.99, buckets) == pytest.approx(0.25 + 0.25 * 49 / 50)
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.1 + 0.15 * 25 / 50)
    # A rank in +Inf answers the highest finite bound; nothing observed is NaN.
    assert histogram_quantile(0.99, [(1.0, 1.0), (INF, 10.0)]) == 1.0
    assert math.isnan(histogram_quantile(0.99, [(1.0, 0.0), (INF, 0.0)]))
    assert math.isnan(histogram_quantile(0.99, []))
    assert histogram_quantile(0.5, [(1.0, 4.0), (INF, 4.0)]) == pytest.approx(0.5)  # first bucket from 0


def test_buckets_are_read_from_exposition_text_and_summed_less_a_start() -> None:
    text = "\n".join([
        "# TYPE lifelong_snapshot_publish_to_swap_seconds histogram",
        'lifelong_snapshot_publish_to_swap_seconds_bucket{le="0.25"} 3.0',
        'lifelong_snapshot_publish_to_swap_seconds_bucket{le="1.0"} 5.0',
        'lifelong_snapshot_publish_to_swap_seconds_bucket{le="+Inf"} 6.0',
        "lifelong_snapshot_publish_to_swap_seconds_count 6.0", "lifelong_other 1.0"])
    b = buckets_of(parse_metrics(text), "lifelong_snapshot_publish_to_swap_seconds")
    assert b == [(0.25, 3.0), (1.0, 5.0), (INF, 6.0)]
    assert add_buckets(b, b, minus=[(0.25, 1.0), (1.0, 1.0), (INF, 1.0)]) == [(0.25, 5.0), (1.0, 9.0), (INF, 11.0)]


def test_percentile_of_nothing_is_nan() -> None:
    assert math.isnan(percentile([], 99))
    assert percentile([1.0, 2.0, 3.0], 50) == 2.0


# -- version regressions ----------------------------------------------------------------------------

def test_a_lower_version_after_a_higher_one_was_received_is_a_regression() -> None:
    p = (0, 1)
    samples = [answer(p, 0.0, 1.0, 5), answer(p, 1.1, 2.0, 4), answer(p, 2.1, 3.0, 6)]
    assert [s.version for s in regressed(samples)] == [4]


def test_concurrent_requests_answered_out_of_order_across_a_swap_are_not_regressions() -> None:
    p = (0, 1)
    # The second request went out before the first answer (v6) came back: it may see v5.
    samples = [answer(p, 0.0, 1.0, 6), answer(p, 0.5, 1.2, 5), answer(p, 1.3, 2.0, 6)]
    assert version_regressions(samples) == 0


def test_each_process_is_its_own_sequence_and_failures_do_not_count() -> None:
    samples = [answer((0, 1), 0.0, 1.0, 9), answer((1, 1), 1.5, 2.0, 3),   # another replica may lag
               answer((0, 2), 2.5, 3.0, 2),                                # a restarted one starts anew
               answer((0, 1), 3.5, 4.0, None, status=0), answer((0, 1), 4.5, 5.0, None, status=503)]
    assert version_regressions(samples) == 0


# -- publish to swap ----------------------------------------------------------------------------------

def test_publish_to_swap_counts_only_swaps_seen_under_load() -> None:
    p = (0, 1)
    published = {10: 100.0, 11: 101.0, 12: 102.0}
    samples = [answer(p, 0, 0, 10, wall=100.5),  # first version: read while catching up, left out
               answer(p, 0, 0, 10, wall=101.1), answer(p, 0, 0, 11, wall=101.3),  # swapped within 0.3 s
               answer(p, 0, 0, 12, wall=110.0),  # nobody asked between 102 and 110: says nothing
               answer(p, 0, 0, FORGED_BASE, wall=111.0)]  # never published
    assert publish_to_swap(samples, published) == [pytest.approx(0.3)]


# -- window summaries -----------------------------------------------------------------------------------

def test_a_window_summary_counts_requests_failures_and_latency() -> None:
    p = (0, 1)
    samples = [answer(p, i * 0.01, i * 0.01 + 0.002, 7) for i in range(100)]
    samples += [answer(p, 2.0, 2.1, None, status=503), answer(p, 2.2, 2.2, None, status=0),
                answer(p, 2.3, 2.3, None, status=400)]
    row = summarise_window(samples, seconds=4.0, cpu_s=0.5, n=1)
    assert (row["requests"], row["req_per_s"], row["req_per_cpu_s"]) == (100, 25.0, 200.0)
    assert row["p50_ms"] == pytest.approx(2.0) and row["p99_ms"] == pytest.approx(2.0)
    assert (row["errors_5xx"], row["unavailable"], row["other_errors"]) == (1, 1, 1)
    assert failures([]) == {"errors_5xx": 0, "unavailable": 0, "other_errors": 0}
    assert len(between(samples, 0.0, 0.5)) == 50


# -- the forged records against the real follower --------------------------------------------------------

@pytest.fixture(scope="module")
def snapshot() -> Any:
    learner = VARIANTS[0].build()
    learn(learner, blob_stream()[:2 * BATCHES_PER_CLASS])
    return learner.snapshot()


def publish(snapshot: Any, version: int, offset: int) -> list[ChannelRecord]:
    packed = pack(with_version(snapshot, version), model_key="default", generation=1, learner="t", chunk_bytes=512)
    m = packed.manifest
    raw = [chunk_record("default", 1, version, i, c) for i, c in enumerate(packed.chunks)]
    raw += [manifest_record("default", m.to_json()), heartbeat_record("default", 1, version, m.created_at)]
    return [ChannelRecord(k, v, h, 0, offset + i) for i, (k, v, h) in enumerate(raw)]


def follow(records: list[ChannelRecord], rejects: list[str],
           follower: SnapshotFollower | None = None) -> SnapshotFollower:
    follower = follower or SnapshotFollower("default", FeatureEncoder(DIM), max_bytes=1 << 24,
                                            on_reject=rejects.append)
    follower.take(records, live=True)
    follower.settle()
    return follower


def offsets(records: list[tuple[bytes, bytes, Any]], start: int) -> list[ChannelRecord]:
    return [ChannelRecord(k, v, h, 0, start + i) for i, (k, v, h) in enumerate(records)]


@pytest.mark.parametrize("name, reasons", [("forged_manifest", ["checksum"]), ("truncated_copy", ["checksum"]),
                                           ("garbage_manifest", ["bad_manifest", "bad_manifest"]),
                                           ("headerless_chunk", ["format"]), ("chunk_flood", [])])
def test_each_forgery_is_refused_with_its_reason(snapshot: Any, name: str, reasons: list[str]) -> None:
    first = publish(snapshot, 5, 0)
    rejects: list[str] = []
    follower = follow(first, rejects)
    records, versions = FORGERIES[name](newest_real(first, "default"))
    follow(offsets(records, 100), rejects, follower)
    assert follower.served_order == (1, 5) and rejects == reasons
    assert all(v >= FORGED_BASE for v in versions)


def test_real_snapshots_still_swap_in_after_every_forgery_at_once(snapshot: Any) -> None:
    first = publish(snapshot, 5, 0)
    real = newest_real(first, "default")
    assert real.manifest.version == 5 and len(real.chunks) == real.manifest.chunks > 1
    rejects: list[str] = []
    follower = follow(first, rejects)
    follow(offsets([r for make in FORGERIES.values() for r in make(real)[0]], 100), rejects, follower)
    assert follower.served_order == (1, 5) and {"bad_manifest", "format"} <= set(rejects)
    # The flood of forged chunk orders must not crowd out what the learner publishes next.
    for n, version in enumerate((6, 7)):
        follow(publish(snapshot, version, 1000 + 100 * n), rejects, follower)
        assert follower.served_order == (1, version)


def test_newest_real_skips_forged_and_incomplete_manifests(snapshot: Any) -> None:
    records = publish(snapshot, 5, 0) + publish(snapshot, 6, 100)
    real = newest_real(records, "default")
    forged = [ChannelRecord(k, v, h, 0, 200 + i) for i, (k, v, h) in enumerate(FORGERIES["forged_manifest"](real)[0])]
    no_chunks = [r for r in publish(snapshot, 7, 300) if b"/chunk/" not in (r.key or b"")]
    assert newest_real(records + forged + no_chunks, "default").manifest.version == 6
    assert [m.version for m in manifests(records + forged, "default")] == [5, 6, FORGED_BASE]
    assert isinstance(real, Real)


# -- the balancer, against a stand-in predictor -------------------------------------------------------------

@dataclass
class FakePredictor:
    port: int
    starts: int = 1
    up: bool = True

    @property
    def running(self) -> bool:
        return self.up

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def server() -> Iterator[ThreadingHTTPServer]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            self._send(200, b"{}")

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["content-length"]))
            self._send(200, json.dumps({"predictions": [], "model_version": 3}).encode())

        def _send(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_the_balancer_counts_answers_and_ejects_a_predictor_that_is_not_there(server: ThreadingHTTPServer) -> None:
    alive = FakePredictor(server.server_address[1])
    with ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) as probe:
        gone = FakePredictor(probe.server_address[1], up=False)  # its port is closed once the block ends
    body = b'{"instances": [{"features": [1]}]}'
    b = Balancer([alive, gone], [body], clients=2, health_every_s=0.05)  # type: ignore[list-item]
    b.serve([0, 1])
    b.start()
    try:
        wait_for(lambda: sum(s.status == 200 for s in b.samples) >= 20, 10, "answers")
    finally:
        b.stop()
    assert b.rotation == (0,) and b.ejections == 1  # not running: the health check never brings it back
    ok = [s for s in b.samples if s.status == 200]
    assert {s.proc for s in ok} == {(0, 1)} and {s.version for s in ok} == {3}
    assert failures(b.samples)["unavailable"] >= 1 and failures(b.samples)["errors_5xx"] == 0


# -- targets, report, CLI -----------------------------------------------------------------------------------

def doc(**faults: Any) -> dict[str, Any]:
    window = {"requests": 1000, "req_per_s": 100.0, "p50_ms": 2.0, "p99_ms": 9.0, "version_regressions": 0,
              "errors_5xx": 0, "unavailable": 0, "cpu_s": 1.0, "idle_cpu_s_per_s": 0.01, "req_per_busy_cpu_s": 1100.0}
    f = {"corrupt_snapshots_served": 0, "version_regressions": 0, "errors_5xx": 0, "unavailable": 2, "requests": 5000,
         "rejects": {"checksum": 4.0, "bad_manifest": 2.0}, "rejects_total": 6.0, "advanced_after_garbage": True,
         "scenarios": {"learner_kill": {"seconds": 9.0, "requests": 900, "resumed_from_checkpoint": True,
                                        "generation_before": 1, "generation_after": 2}}, **faults}
    return {"quick": True, "commit": "abc", "cpu_count": 2, "total_seconds": 90.0,
            "sizes": {"rate": 100.0, "clients": 3, "window_s": 8.0}, "feed": {"events": 15000},
            "serving": {"predictors": [{**window, "n": 1, "clients": 2, "req_per_cpu_s": 1000.0},
                                       {**window, "n": 2, "clients": 4, "req_per_cpu_s": 900.0}],
                        "n1_with_n2_clients": {**window, "n": 1, "clients": 4, "req_per_cpu_s": 1200.0},
                        "publish_to_swap_p99_s": 0.2, "staleness_p99_s": 1.1, "ready_within_s": 4.0,
                        "ready_s": [{"why": "first start", "seconds": 4.0}], "version_regressions_all": 0,
                        "errors_5xx_all": 0, "faults": f}}


def test_targets_all_met_and_rendered() -> None:
    d = doc()
    assert cpu_ratio(d) == 0.9
    assert not [t for t in targets(d) if t.ok is False]
    assert all(t.ok for t in targets(d) if not t.key.startswith(LEARNING_KEYS))
    md = render_md(d)
    assert "Failing targets: none" in md and "| 2 | 4 | 1,000 |" in md and "2 CPU cores" in md
    assert "| 1, with n=2's clients | 4 | 1,000 |" in md
    assert "req_per_cpu_s_n2_over_n1" in render_text(d)


def test_a_forged_version_served_or_a_regression_fails_its_target() -> None:
    d = doc(corrupt_snapshots_served=1)
    d["serving"]["version_regressions_all"] = 2
    d["serving"]["predictors"][1]["req_per_cpu_s"] = 700.0
    failing = {t.key for t in targets(d) if t.ok is False}
    assert failing == {"corrupt_snapshots_served", "version_regressions", "req_per_cpu_s_n2_over_n1"}
    assert "**no**" in render_md(d)


def test_an_unmeasured_run_has_no_verdicts() -> None:
    assert all(t.ok is None for t in targets({"serving": {}}))
    assert "not measured" in render_md({"serving": {}, "errors": {"serving": "TimeoutError: x"}})


def test_cli_runs_scaleout_alone() -> None:
    with pytest.raises(SystemExit, match="--scaleout runs alone"):
        main(["bench", "--scaleout", "--speed"])
    with pytest.raises(SystemExit, match="--scaleout runs alone"):
        main(["bench", "--scaleout", "--faults"])


LEARNING_KEYS = ("prototype", "hash_", "domain_", "merged_", "merge_", "per_key", "labels_joined")


def learning(final: float = 0.95, lone: float = 0.6, fraction: float = 0.03, diff: float = 0.0) -> dict[str, Any]:
    row = {"final_accuracy": final, "min_acc": final, "merges": 10, "merge_fraction": fraction,
           "lone": [{"final_accuracy": lone, "min_acc": lone}] * 2}
    return {"stream": "clinc150", "events": 15000, "merge_every_events": 500,
            "single": {"final_accuracy": 0.947, "min_acc": 0.94}, "prototype_max_abs_diff": diff,
            "merged": [row | {"learners": 2, "split": "hash"}, row | {"learners": 2, "split": "domain",
                                                                       "final_accuracy": final - 0.02}]}


def test_learning_targets_read_the_merged_runs_against_the_single_and_lone_learners() -> None:
    met = {t.key: t for t in targets({"learning": learning()})}
    assert met["prototype_max_abs_diff"].ok and met["merged_above_every_lone_replica"].ok
    assert met["hash_final_accuracy_below_single"].measured == -0.003
    assert met["domain_final_accuracy_below_single"].ok and met["merge_fraction"].ok
    assert met["per_key_accuracy_gap"].ok is None  # not measured: n/a, never met
    run = {"events": 600, "max_resident_bytes": 0, "evictions": 20, "final_accuracy_mean": 0.9,
           "alone_accuracy_mean": 0.9, "max_key_gap": 0.0, "keyed_seconds": 1.0, "alone_seconds": 1.0}
    keyed = learning() | {"per_key": {"keys": 4, "accuracy_gap": 0.002, "runs": [run]}}
    assert {t.key: t for t in targets({"learning": keyed})}["per_key_accuracy_gap"].ok
    keyed["per_key"]["accuracy_gap"] = 0.02
    assert {t.key: t for t in targets({"learning": keyed})}["per_key_accuracy_gap"].ok is False
    assert "## Learning: a model per key" in render_md({"learning": keyed})
    bad = {t.key: t for t in targets({"learning": learning(final=0.93, lone=0.94, fraction=0.2, diff=1e-3)})}
    assert bad["hash_final_accuracy_below_single"].ok is False and bad["domain_final_accuracy_below_single"].ok is False
    assert bad["merged_above_every_lone_replica"].ok is False and bad["merge_fraction"].ok is False
    assert bad["prototype_max_abs_diff"].ok is False
    md = render_md({"learning": learning()})
    assert "## Learning: replicas that merge" in md and "| 2 | domain | 0.9300 |" in md and "## Serving" not in md


@pytest.mark.skipif(not (data_dir() / "text" / "clinc150" / "data_full.json").exists(), reason="needs shared/data")
def test_the_learning_part_merges_replicas_of_clinc150_into_one_learners_prototypes() -> None:
    out = run_learning(LearningOptions(limit=600, learners=(2,), splits=("domain",), merge_every=50))
    row, = out["merged"]
    assert out["prototype_max_abs_diff"] <= 1e-5 and row["merges"] >= 5 and len(row["lone"]) == 2
    # A model per key, saved and read back at every batch, learns what the key's model alone learns.
    assert out["per_key"]["accuracy_gap"] <= 0.005 and out["per_key"]["runs"][1]["evictions"] > 0
    # Each lone replica knows half the domains; the merged model knows them all.
    assert row["final_accuracy"] > max(x["final_accuracy"] for x in row["lone"]) + 0.2
