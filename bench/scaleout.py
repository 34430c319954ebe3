"""``lifelong bench --scaleout``: one learner, n predictors, a round-robin load, then faults.

It starts a real broker (``bench/faults_env.py``; or uses ``--bootstrap``), creates the topics
with ``lifelong topics create``, feeds elec2 into the events topic at a steady rate with
``lifelong produce`` (so the learner keeps learning and publishing the whole run) and runs the
learner and every predictor as ``python -m lifelong.cli run --role ...`` processes. Then:

1. one predictor, then two, behind a round-robin balancer of closed-loop clients
   (``bench/scaleout_load.py``), as many clients per predictor each time: requests/s, requests
   per predictor CPU second, latency, version regressions, 5xx; meanwhile every predictor's
   snapshot age is read every 0.2 s. One more window runs the single predictor under the two's
   total clients, to tell apart what concurrency alone changes per request;
2. faults with the load still on both predictors (``bench/scaleout_faults.py``): forged and
   garbage snapshot records, kill -9 of a predictor, kill -9 of the learner, a broker restart.

It writes OUT/scaleout.json and OUT/scaleout.md (targets against measured values).
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .faults import _finite, commit_sha, keep_logs
from .faults_env import Daemon
from .scaleout_cluster import MODEL_KEY, Cluster, proc_cpu_s, write_events
from .scaleout_faults import FAULTS, SCENARIOS, FaultContext
from .scaleout_labels import run_labels
from .scaleout_learning import LearningOptions, run_learning
from .scaleout_forge import FORGED_BASE, manifests, read_topic
from .scaleout_load import Balancer, Sampler
from .scaleout_report import CPU_NOTE, render_md, targets
from .scaleout_stats import (Sample, add_buckets, between, buckets_of, failures, histogram_quantile, percentile,
                             publish_to_swap, regressed, summarise_window)

HISTOGRAM = "lifelong_snapshot_publish_to_swap_seconds"
WARMUP_S = 1.0  # connections opened and the first requests answered before a window's clock starts


@dataclass(frozen=True)
class Sizes:
    window_s: float   # seconds of load per predictor count
    clients_per_predictor: int  # closed-loop clients of the balancer: this many times n
    rate: float       # events/s produced to the events topic
    events: int | None  # elec2 training rows produced (None: all 40,782)
    settle_s: float   # load with nothing happening after each fault
    idle_s: float     # predictors' CPU with no load, before each window
    outage_s: float   # the broker's time down


QUICK = Sizes(window_s=8.0, clients_per_predictor=2, rate=100.0, events=15_000, settle_s=2.0, idle_s=2.0, outage_s=4.0)
FULL = Sizes(window_s=60.0, clients_per_predictor=2, rate=120.0, events=None, settle_s=5.0, idle_s=8.0, outage_s=10.0)


@dataclass(frozen=True)
class ScaleoutOptions:
    out: Path
    quick: bool = False
    bootstrap: str | None = None  # None: start a local broker
    workdir: Path | None = None   # None: a temporary folder, removed afterwards
    sizes: Sizes | None = None
    seed: int = 0
    parts: tuple[str, ...] = ("serving", "learning")  # serving: predictors on a broker; learning: merged replicas
    learning: LearningOptions | None = None  # None: the defaults (a shorter stream with quick)


@dataclass
class _Run:
    cluster: Cluster
    balancer: Balancer
    sampler: Sampler
    sizes: Sizes
    say: Callable[[str], None]
    spans: list[tuple[float, float]] = field(default_factory=list)  # the load windows
    hist: list[tuple[float, float]] = field(default_factory=list)   # publish-to-swap buckets in them


def _window(run: _Run, slots: list[int], clients: int) -> dict[str, Any]:
    """One load window of ``clients`` over the predictors in ``slots``: its row of ``serving.predictors``."""
    c, b = run.cluster, run.balancer
    preds = [c.predictors[s] for s in slots]
    assert c.learner is not None and c.learner.proc is not None
    idle = _idle_cpu_per_s(preds, run.sizes.idle_s)
    b.serve(slots)
    b.clients = clients
    b.start()
    time.sleep(WARMUP_S)
    metrics0 = [p.metrics() for p in preds]
    hist0 = add_buckets(*(buckets_of(m, HISTOGRAM) for m in metrics0))
    cpu0 = [proc_cpu_s(p.proc.pid) for p in preds if p.proc]
    learner0, own0 = proc_cpu_s(c.learner.proc.pid), time.process_time()
    t0 = time.monotonic()
    time.sleep(run.sizes.window_s)
    t1 = time.monotonic()
    cpu = sum(proc_cpu_s(p.proc.pid) for p in preds if p.proc) - sum(cpu0)
    learner, own = proc_cpu_s(c.learner.proc.pid) - learner0, time.process_time() - own0
    metrics1 = [p.metrics() for p in preds]
    hist = add_buckets(*(buckets_of(m, HISTOGRAM) for m in metrics1), minus=hist0)
    b.stop()
    run.spans.append((t0, t1))
    run.hist = add_buckets(run.hist, hist)
    row = summarise_window(between(b.samples, t0, t1), t1 - t0, cpu, len(slots))
    if not row["requests"]:
        raise RuntimeError(f"no request answered in the n={len(slots)} window: {failures(b.samples)}")
    busy = cpu - idle * len(preds) * (t1 - t0)
    row.update({"clients": clients, "learner_cpu_s": round(learner, 2), "load_generator_cpu_s": round(own, 2),
                "idle_cpu_s_per_s": round(idle, 4), "mean_batch_instances": _mean_batch(metrics0, metrics1),
                # Other work on a shared machine moves every figure here: its 1-minute load at the window's end.
                "load_average_1m": round(os.getloadavg()[0], 2),
                "req_per_busy_cpu_s": row["requests"] / busy if busy > 0 else float("nan")})
    run.say(f"n={len(slots)}, {clients} clients: {row['requests']} requests, {row['req_per_s']:.0f}/s, "
            f"{row['req_per_cpu_s']:.0f} per predictor CPU s, p99 {row['p99_ms']:.1f} ms, "
            f"mean batch {row['mean_batch_instances']:.2f}")
    return row


def _mean_batch(before: list[dict[str, float]], after: list[dict[str, float]]) -> float:
    """Instances per model call in the window: how much the micro-batcher coalesced concurrent requests."""
    name = "lifelong_predict_batch_instances"
    total = sum(a.get(f"{name}_sum", 0.0) - b.get(f"{name}_sum", 0.0) for a, b in zip(after, before))
    calls = sum(a.get(f"{name}_count", 0.0) - b.get(f"{name}_count", 0.0) for a, b in zip(after, before))
    return round(total / calls, 3) if calls else float("nan")


def _idle_cpu_per_s(preds: list[Daemon], seconds: float) -> float:
    """CPU seconds per second one predictor spends with no requests (following the topic, being scraped):
    the fixed cost each replica adds, whatever its share of the load."""
    pids = [p.proc.pid for p in preds if p.proc]
    before = sum(proc_cpu_s(pid) for pid in pids)
    time.sleep(seconds)
    return (sum(proc_cpu_s(pid) for pid in pids) - before) / seconds / max(len(pids), 1)


def _faults(run: _Run, errors: dict[str, str]) -> tuple[dict[str, Any], FaultContext, tuple[float, float]]:
    """Every fault in turn with the load on all predictors; each scenario's own result and span."""
    b = run.balancer
    ctx = FaultContext(run.cluster, b, run.sampler, run.sizes.settle_s, run.sizes.outage_s, run.say)
    b.serve(list(range(len(run.cluster.predictors))))
    b.start()
    time.sleep(WARMUP_S)
    start = time.monotonic()
    parts: dict[str, Any] = {}
    for name in FAULTS:
        run.say(f"fault {name}")
        t = time.monotonic()
        try:
            part = SCENARIOS[name](ctx)
        except (TimeoutError, RuntimeError, OSError, AssertionError) as exc:
            # One fault failing to run is a result, not the end of the bench.
            errors[name] = f"{type(exc).__name__}: {exc}"[:3000]
            run.say(f"fault {name} failed: {errors[name][:500]}")
            part = {}
        parts[name] = {"start": t, "end": time.monotonic(), **part}
    end = time.monotonic()
    b.stop()
    return parts, ctx, (start, end)


def _span_stats(samples: list[Sample], bad: list[Sample], start: float, end: float) -> dict[str, Any]:
    part = between(samples, start, end)
    return {"seconds": round(end - start, 1), "requests": sum(1 for s in part if s.status == 200), **failures(part),
            "version_regressions": sum(1 for s in bad if start <= s.sent < end)}


def _published(run: _Run) -> dict[int, float]:
    """The learner's real snapshots on the topic: {version: created_at}."""
    c = run.cluster
    return {m.version: m.created_at for m in manifests(read_topic(c.bootstrap, c.topics.snapshots), MODEL_KEY)
            if m.version < FORGED_BASE}


def _ages(run: _Run, spans: list[tuple[float, float]]) -> list[float]:
    return [a for start, end in spans for a in run.sampler.ages(start, end)]


def _round(value: float, digits: int = 3) -> float:
    return round(value, digits) if value == value else value


def _serving(run: _Run, windows: list[dict[str, Any]], fault_parts: dict[str, Any], ctx: FaultContext | None,
             fault_span: tuple[float, float] | None, published: dict[int, float]) -> dict[str, Any]:
    samples = run.balancer.samples
    bad = regressed(samples)
    for w, (t0, t1) in zip(windows, run.spans):
        w["version_regressions"] = sum(1 for s in bad if t0 <= s.sent < t1)
    in_windows = [s for t0, t1 in run.spans for s in between(samples, t0, t1)]
    swaps = publish_to_swap(in_windows, published)
    ages = _ages(run, run.spans)
    serving: dict[str, Any] = {
        "predictors": [w for w in windows if not w.get("same_clients_as_n2")],
        "n1_with_n2_clients": next((w for w in windows if w.get("same_clients_as_n2")), None),
        "publish_to_swap_p99_s": _round(histogram_quantile(0.99, run.hist)),
        "publish_to_swap_histogram": [[le, n] for le, n in run.hist],
        "publish_to_swap_sampled_p99_s": _round(percentile(swaps, 99)), "publish_to_swap_samples": len(swaps),
        "staleness_p99_s": _round(percentile(ages, 99)), "staleness_max_s": _round(max(ages, default=float("nan"))),
        "staleness_samples": len(ages),
        "ready_within_s": max((r["seconds"] for r in run.cluster.ready_s), default=None),
        "ready_s": run.cluster.ready_s,
        "learner_cpu_s": [w.get("learner_cpu_s") for w in windows],
        "load_generator_cpu_s": [w.get("load_generator_cpu_s") for w in windows],
        "version_regressions_all": len(bad), "errors_5xx_all": failures(samples)["errors_5xx"],
    }
    if ctx is not None and fault_span is not None:
        serving["faults"] = _fault_summary(run, samples, bad, fault_parts, ctx, fault_span, published)
    return serving


def _fault_summary(run: _Run, samples: list[Sample], bad: list[Sample], parts: dict[str, Any], ctx: FaultContext,
                   span: tuple[float, float], published: dict[int, float]) -> dict[str, Any]:
    forged = ctx.forged_versions
    scenarios = {name: {**_span_stats(samples, bad, p["start"], p["end"]),
                        **{k: v for k, v in p.items() if k not in ("start", "end")}} for name, p in parts.items()}
    garbage = parts.get("garbage") or {}
    rejects = garbage.get("rejects")
    advanced = garbage.get("advanced_after")
    in_faults = between(samples, *span)
    by_proc: dict[str, int] = {}
    for s in bad:
        if span[0] <= s.sent < span[1]:
            by_proc[f"slot {s.proc[0]} start {s.proc[1]}"] = by_proc.get(f"slot {s.proc[0]} start {s.proc[1]}", 0) + 1
    ages = _ages(run, [span])
    return {**_span_stats(samples, bad, *span),
            "corrupt_snapshots_served": sum(1 for s in samples if s.status == 200 and s.version in forged),
            "forged_versions": sorted(forged), "regressions_by_process": by_proc,
            "rejects": rejects, "rejects_total": sum(rejects.values()) if rejects is not None else None,
            "advanced_after_garbage": all(advanced.values()) if advanced else None,
            "publish_to_swap_sampled_p99_s": _round(percentile(publish_to_swap(in_faults, published), 99)),
            "staleness_p99_s": _round(percentile(ages, 99)), "staleness_max_s": _round(max(ages, default=float("nan"))),
            "scenarios": scenarios}


def _measure(run: _Run, errors: dict[str, str]) -> dict[str, Any]:
    """Both load windows, then the faults; the serving object (whatever finished)."""
    c = run.cluster
    windows: list[dict[str, Any]] = []
    parts: dict[str, Any] = {}
    ctx = span = None
    run.sampler.start()
    try:
        per = run.sizes.clients_per_predictor
        c.add_predictor()
        windows.append(_window(run, [0], per))
        # The same predictor under n=2's total clients: how much of the n=1 vs n=2 per-CPU difference is
        # only its higher concurrency (more requests coalesced per model call), not the second replica.
        windows.append({**_window(run, [0], 2 * per), "same_clients_as_n2": True})
        c.add_predictor()
        windows.append(_window(run, [0, 1], 2 * per))
        parts, ctx, span = _faults(run, errors)
    finally:
        run.sampler.stop()
    published = _published(run)
    return _serving(run, windows, parts, ctx, span, published)


def run_scaleout(opts: ScaleoutOptions, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    say = log or (lambda msg: print(f"[scaleout] {msg}", file=sys.stderr, flush=True))
    started = time.monotonic()
    sizes = opts.sizes or (QUICK if opts.quick else FULL)
    errors: dict[str, str] = {}
    serving: dict[str, Any] = {}
    feed: dict[str, Any] = {}
    learning: dict[str, Any] = {}
    if "learning" in opts.parts:
        learning = run_learning(opts.learning or LearningOptions(limit=3000 if opts.quick else None, seed=opts.seed),
                                lambda msg: say(f"learning: {msg}"))
        learning |= _labels_part(opts, errors, say)
    if "serving" in opts.parts:
        serving, feed = _serving_part(opts, sizes, errors, say)
    doc: dict[str, Any] = {
        "quick": opts.quick, "commit": commit_sha(), "seed": opts.seed, "sizes": sizes.__dict__,
        "command": " ".join(["lifelong", "bench", "--scaleout"] + (["--quick"] if opts.quick else [])
                            + ([f"--scaleout-part {opts.parts[0]}"] if len(opts.parts) == 1 else [])),
        "cpu_count": os.cpu_count(), "total_seconds": round(time.monotonic() - started, 1),
        "broker": "external (--bootstrap)" if opts.bootstrap else "local (deploy/kafka/local-kafka)",
        "feed": feed, "serving": serving, "learning": learning, "errors": errors}
    doc["note"] = CPU_NOTE.format(cpus=doc["cpu_count"])
    doc["targets"] = {t.key: {"wanted": t.wanted, "measured": t.measured, "met": t.ok} for t in targets(doc)}
    doc = _finite(doc)
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / "scaleout.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    (opts.out / "scaleout.md").write_text(render_md(doc))
    return doc


def _labels_part(opts: ScaleoutOptions, errors: dict[str, str], say: Callable[[str], None]) -> dict[str, Any]:
    """Delayed labels on two merging replicas, on a broker (``bench/scaleout_labels.py``)."""
    with tempfile.TemporaryDirectory(prefix="lifelong-labels-") as tmp:
        try:
            labels = run_labels(Path(tmp), opts.bootstrap, events=1000 if opts.quick else 4000,
                                say=lambda msg: say(f"labels: {msg}"))
        except (TimeoutError, RuntimeError, OSError) as exc:
            errors["labels"] = f"{type(exc).__name__}: {exc}"[:3000]
            return {}
    say(f"labels: {labels['labels_joined_fraction']:.4f} joined")
    return {"labels": labels, "labels_joined_fraction": labels["labels_joined_fraction"]}


def _serving_part(opts: ScaleoutOptions, sizes: Sizes, errors: dict[str, str],
                  say: Callable[[str], None]) -> tuple[dict[str, Any], dict[str, Any]]:
    """One learner and its predictors on a broker: (serving, feed) of scaleout.json."""
    tmp = None if opts.workdir else tempfile.TemporaryDirectory(prefix="lifelong-scaleout-")
    workdir = opts.workdir or Path(tmp.name)  # type: ignore[union-attr]
    workdir.mkdir(parents=True, exist_ok=True)
    serving: dict[str, Any] = {}
    feed: dict[str, Any] = {}
    say(f"broker {'at ' + opts.bootstrap if opts.bootstrap else 'starting'}; work folder {workdir}")
    cluster = Cluster.start(workdir, opts.bootstrap, say)
    try:
        events, bodies = write_events(workdir / "events.jsonl", sizes.events, opts.seed)
        cluster.feed(workdir / "events.jsonl", sizes.rate)
        say(f"learner ready in {cluster.start_learner():.1f} s")
        cluster.wait_published()
        balancer = Balancer(cluster.predictors, bodies, 2 * sizes.clients_per_predictor, opts.seed)
        run = _Run(cluster, balancer, Sampler(balancer), sizes, say)
        try:
            serving = _measure(run, errors)
        except (TimeoutError, RuntimeError, OSError, AssertionError) as exc:
            errors["serving"] = f"{type(exc).__name__}: {exc}"[:3000]
            say(f"serving measurement failed: {errors['serving'][:500]}")
        model = cluster.learner.model() if cluster.learner and cluster.learner.running else {}
        feed = {"events": events, "rate": sizes.rate, "events_learned_at_end": model.get("events_learned"),
                "model_version_at_end": model.get("model_version"), "feeder_running_at_end": cluster.feeding()}
    finally:
        if errors or any(t.ok is False for t in targets({"serving": serving})):
            keep_logs(cluster.daemons(), opts.out / "logs")  # for a reader of a failed run
        cluster.close()
        if tmp is not None:
            tmp.cleanup()
    return serving, feed
