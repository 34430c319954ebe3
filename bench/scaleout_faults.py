"""The scale-out bench's faults, each a short scenario while the load generator keeps going.

Order: the forged records come first, so that every restart after them (a predictor's and the
learner's) has to read past them on its way up; then kill -9 of a predictor, kill -9 of the
learner, a broker restart. Each scenario returns what happened and its monotonic time span;
the caller slices the load samples by those spans.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from .faults_env import Daemon, wait_for
from .scaleout_cluster import MODEL_KEY, Cluster
from .scaleout_forge import forge_all
from .scaleout_load import Balancer, Sampler

FAULTS = ("garbage", "predictor_kill", "learner_kill", "broker_restart")


@dataclass
class FaultContext:
    cluster: Cluster
    balancer: Balancer
    sampler: Sampler
    settle_s: float     # load with nothing happening after each fault, to see its aftermath
    outage_s: float     # how long the broker stays down
    say: Callable[[str], None]
    forged_versions: set[int] = field(default_factory=set)


def _model(daemon: Daemon) -> dict[str, Any]:
    try:
        return daemon.model()
    except OSError:
        return {}


def _versions(ctx: FaultContext) -> dict[int, int]:
    """Each member predictor's served model_version now (-1: not answering)."""
    return {slot: int(_model(ctx.cluster.predictors[slot]).get("model_version") or -1) for slot in ctx.balancer.members}


def rejects(ctx: FaultContext) -> dict[str, float]:
    """``lifelong_snapshot_rejects_total`` by reason, summed over the running member predictors."""
    total: dict[str, float] = {}
    for slot in ctx.balancer.members:
        daemon = ctx.cluster.predictors[slot]
        if not daemon.running:
            continue
        for key, value in daemon.metrics().items():
            if key.startswith('lifelong_snapshot_rejects_total{reason="'):
                reason = key.split('"')[1]
                total[reason] = total.get(reason, 0.0) + value
    return total


def _wait_advanced(ctx: FaultContext, before: dict[int, int], timeout_s: float) -> dict[int, bool]:
    """Until every member predictor serves a version above ``before``; which of them did."""
    deadline = time.monotonic() + timeout_s
    while True:
        now = _versions(ctx)
        done = {slot: now.get(slot, -1) > v for slot, v in before.items()}
        if all(done.values()) or time.monotonic() > deadline:
            return done
        time.sleep(0.2)


def _max_age(ctx: FaultContext, start: float) -> float | None:
    ages = ctx.sampler.ages(start, time.monotonic())
    return round(max(ages), 3) if ages else None


def run_garbage(ctx: FaultContext) -> dict[str, Any]:
    """Forged and garbage records on the snapshot topic; the predictors must refuse them and keep advancing."""
    c = ctx.cluster
    before = rejects(ctx)
    info = forge_all(c.bootstrap, c.topics.snapshots, MODEL_KEY)
    ctx.forged_versions |= set(info["forged_versions"])
    written = _versions(ctx)
    time.sleep(ctx.settle_s)
    advanced = _wait_advanced(ctx, written, 20.0)
    after = rejects(ctx)
    delta = {r: after.get(r, 0.0) - before.get(r, 0.0) for r in after if after.get(r, 0.0) != before.get(r, 0.0)}
    learner = _model(c.learner) if c.learner else {}
    return {**info, "rejects": after, "rejects_by_this_fault": delta,
            "versions_when_written": written, "advanced_after": {str(k): v for k, v in advanced.items()},
            "learner_version_after": learner.get("model_version")}


def run_predictor_kill(ctx: FaultContext) -> dict[str, Any]:
    """kill -9 of the last predictor, restarted at once; the balancer takes it out and back in."""
    slot = ctx.balancer.members[-1]
    daemon = ctx.cluster.predictors[slot]
    started = time.monotonic()
    daemon.kill()
    ready = ctx.cluster.start_predictor(slot, "restart after kill -9")
    wait_for(lambda: slot in ctx.balancer.rotation, 30, "the restarted predictor back in rotation")
    back = time.monotonic() - started
    time.sleep(ctx.settle_s)
    return {"slot": slot, "ready_s": round(ready, 3), "back_in_rotation_s": round(back, 3),
            "served_version_after": _versions(ctx).get(slot)}


def run_learner_kill(ctx: FaultContext) -> dict[str, Any]:
    """kill -9 of the learner, restarted on its checkpoint; predictors move to its next generation."""
    c = ctx.cluster
    assert c.learner is not None
    at_kill = _model(c.learner)
    generation_before = max(int(_model(c.predictors[s]).get("generation") or 0) for s in ctx.balancer.members)
    started = time.monotonic()
    c.learner.kill()
    time.sleep(1.0)  # the predictors serve their last snapshot meanwhile
    ready = c.start_learner()
    at_restart = _model(c.learner)
    learner = c.learner
    # The publisher finds its generation after /readyz answers: it reads the snapshot topic first.
    generation = float(wait_for(lambda: (learner.metric("lifelong_snapshot_generation") > generation_before
                                         and learner.metric("lifelong_snapshot_generation")),
                                60, "the restarted learner's new generation"))

    def on_new_generation() -> bool:
        return all(int(_model(c.predictors[s]).get("generation") or 0) >= generation for s in ctx.balancer.members)

    wait_for(on_new_generation, 60, f"every predictor on generation {generation:.0f}")
    moved = time.monotonic() - started
    time.sleep(ctx.settle_s)
    return {"learner_ready_s": round(ready, 3), "generation_before": generation_before,
            "generation_after": int(generation), "events_learned_at_kill": at_kill.get("events_learned"),
            "events_learned_at_restart": at_restart.get("events_learned"),
            "resumed_from_checkpoint": at_restart.get("restored_from_checkpoint"),
            "version_at_kill": at_kill.get("model_version"), "version_at_restart": at_restart.get("model_version"),
            "predictors_on_new_generation_s": round(moved, 3), "max_staleness_s": _max_age(ctx, started)}


def run_broker_restart(ctx: FaultContext) -> dict[str, Any]:
    """The broker stopped for ``outage_s`` and started again; serving goes on, then fresh snapshots again."""
    c = ctx.cluster
    if c.broker is None:
        return {"skipped": "an external broker (--bootstrap) is not restarted by the bench"}
    before = _versions(ctx)
    started = time.monotonic()
    c.broker.stop()
    time.sleep(ctx.outage_s)
    accepted = c.broker.start()
    advanced = _wait_advanced(ctx, before, 90.0)
    fresh = time.monotonic() - accepted
    time.sleep(ctx.settle_s)
    # outage_s: from the stop command to the broker accepting connections again (its clean stop takes a
    # while on top of the ``outage_s`` it stays down).
    return {"outage_s": round(accepted - started, 3), "down_after_stop_s": ctx.outage_s,
            "fresh_snapshot_after_comeback_s": round(fresh, 3),
            "advanced_after": {str(k): v for k, v in advanced.items()},
            "learner_running": bool(c.learner and c.learner.running), "feeder_running": c.feeding(),
            "max_staleness_s": _max_age(ctx, started)}


SCENARIOS: dict[str, Callable[[FaultContext], dict[str, Any]]] = {
    "garbage": run_garbage, "predictor_kill": run_predictor_kill, "learner_kill": run_learner_kill,
    "broker_restart": run_broker_restart}
