"""Delivery scenarios: kill -9 with delayed labels and labels-first backlogs, a broker outage, 2 MB records.

Each takes a :class:`Context` (broker, folders, sizes) and returns a plain dict for faults.json.
Learn counts come from the daemon's own checkpoint (``debug.track_learned_ids``), read after a
clean stop, so they are what survives, not what a process once did.
"""
from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .faults_corpus import DIM, valid_events
from .faults_env import BIG_TOPIC_BYTES, Broker, Daemon, Producer, http_json, wait_for
from .faults_feed import Feeder, send_backlog
from .faults_report import learn_stats


@dataclass(frozen=True)
class Sizes:
    events: int  # streamed events in the kill and outage scenarios
    backlog: int  # events (and labels) in each labels-first backlog
    rate: float  # events per second
    max_delay_s: float  # labels come 0..max_delay_s after their event
    outage_s: float
    kills: int = 3


@dataclass
class Context:
    broker: Broker
    workdir: Path
    input_kind: str
    sizes: Sizes
    seed: int = 0
    log: Callable[[str], None] = print
    daemons: list[Daemon] = field(default_factory=list)

    def topics(self, name: str) -> tuple[str, str]:
        base = f"{name}-{uuid.uuid4().hex[:6]}"
        return f"{base}-events", f"{base}-labels"

    def daemon(self, name: str, config: dict[str, Any]) -> Daemon:
        d = Daemon(config, self.workdir, name)
        self.daemons.append(d)
        return d

    def close(self) -> None:
        for d in self.daemons:
            if d.running:
                d.stop(30)


def daemon_config(ctx: Context, events_topic: str, labels_topic: str | None, state_dir: Path,
                  **sections: dict[str, Any]) -> dict[str, Any]:
    kafka = {"bootstrap_servers": ctx.broker.bootstrap, "events_topic": events_topic, "labels_topic": labels_topic,
             "group_id": f"{events_topic}-group", "startup_timeout_s": 120}
    learner: dict[str, Any] = ({"input_kind": "text"} if ctx.input_kind == "text" else
                               {"input_kind": "features", "feature_dim": DIM, "feature_warmup_events": 50})
    config: dict[str, Any] = {
        "source": {"kind": "kafka", "batch_size": 64, "poll_timeout_s": 0.2, "lag_check_s": 1.0, "kafka": kafka},
        "learner": learner,
        "checkpoint": {"dir": str(state_dir), "every_s": 1.0, "every_events": 500},
        "outputs": {"predictions_topic": f"{events_topic}-predictions", "dead_letter_topic": f"{events_topic}-dead"},
        "labels": {"max_wait_s": 900.0},
        "debug": {"track_learned_ids": True},
        "evaluation": {"holdout_fraction": 0.0},  # count deliveries: every valid labelled event is learned
    }
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value}
    return config


def learned_counts(state_dir: Path) -> dict[str, int]:
    """Per-id learn counts in the newest checkpoint that loads."""
    from ..service.checkpoint import Checkpointer

    ckpt = Checkpointer(state_dir).load()
    if ckpt is None:
        return {}
    return dict(ckpt.parts.get("learned_ids", ({}, {"counts": {}}))[1]["counts"])


def events_learned(daemon: Daemon) -> int:
    return int(daemon.model()["events_learned"])


def wait_learned(daemon: Daemon, expected: int, timeout_s: float, stall_s: float = 30.0) -> int:
    """Wait until the served model has learned ``expected`` events, or learning stalls for ``stall_s``."""
    deadline = time.monotonic() + timeout_s
    best, best_at = -1, time.monotonic()
    while time.monotonic() < deadline:
        try:
            now = events_learned(daemon)
        except OSError:
            if not daemon.running:
                return best
            now = best
        if now >= expected:
            return now
        if now > best:
            best, best_at = now, time.monotonic()
        elif time.monotonic() - best_at > stall_s:
            break
        time.sleep(0.5)
    return best


def probe_body(input_kind: str) -> dict[str, Any]:
    inst = {"text": "what is my balance"} if input_kind == "text" else {"features": [3, 0, 0, 0]}
    return {"instances": [inst]}


def log_excerpt(daemon: Daemon, patterns: tuple[str, ...] = ("ERROR", "Traceback", "WARNING"),
                lines: int = 12) -> str:
    hits = [ln for ln in daemon.log(every=True).splitlines() if any(p in ln for p in patterns)]
    return "\n".join(hits[-lines:])


# -- kill -9 ----------------------------------------------------------------------------------

def run_kills(ctx: Context) -> dict[str, Any]:
    s = ctx.sizes
    events_topic, labels_topic = ctx.topics("kills")
    state = ctx.workdir / "kills-state"
    daemon = ctx.daemon("kills", daemon_config(ctx, events_topic, labels_topic, state))
    producer = Producer(ctx.broker.bootstrap)
    rng = random.Random(ctx.seed)
    backlog_a = valid_events(ctx.input_kind, s.backlog, "pre", ctx.seed + 1)
    stream = valid_events(ctx.input_kind, s.events, "k", ctx.seed + 2)
    backlog_b = valid_events(ctx.input_kind, s.backlog, "post", ctx.seed + 3)
    started = time.monotonic()
    kill_at: list[float] = []
    unexpected_exits = 0
    try:
        send_backlog(producer, events_topic, labels_topic, backlog_a)  # before the first start
        daemon.start().wait_ready()
        feeder = Feeder(producer, events_topic, labels_topic, stream, s.rate, s.max_delay_s, ctx.seed).start()
        t0 = time.monotonic()
        points = sorted(rng.uniform(0.1, 0.9) * feeder.duration_s for _ in range(s.kills))
        for point in points:
            wait = t0 + point - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            if not daemon.running:
                unexpected_exits += 1
            else:
                # Not while it is still starting: a kill should land in a daemon that is consuming,
                # a random moment after it took its first records.
                daemon.wait_healthy(120, "healthy before a kill")
                wait_for(lambda: daemon.metric("lifelong_events_consumed_total") > 0, 120, "consuming before a kill")
                time.sleep(rng.uniform(0.0, 2.0))
            kill_at.append(round(time.monotonic() - t0, 1))
            daemon.kill()
            ctx.log(f"kills: SIGKILL at {kill_at[-1]} s")
            daemon.start()
        feeder.wait(s.events / s.rate + s.max_delay_s + 600)
        daemon.wait_healthy(180, "healthy after the last kill")
        # A clean stop, then a labels-first backlog while it is down, then a start.
        term_code = daemon.stop()
        send_backlog(producer, events_topic, labels_topic, backlog_b)
        daemon.start().wait_ready()
        expected = len(backlog_a) + len(stream) + len(backlog_b)
        learned = wait_learned(daemon, expected, timeout_s=600)
        final_code = daemon.stop()
    finally:
        producer.close()
    counts = learned_counts(state)
    parts = {name: learn_stats(counts, [e.id for e in events])
             for name, events in (("backlog_before_start", backlog_a), ("stream", stream),
                                  ("backlog_after_restart", backlog_b))}
    every = learn_stats(counts, [e.id for e in backlog_a + stream + backlog_b])
    return {"events": len(stream), "backlog_events": 2 * s.backlog, "labelled_ids": every["labelled"],
            "rate_per_s": s.rate, "label_delay_s": [0, s.max_delay_s], "kills_at_s": kill_at,
            "unexpected_exits": unexpected_exits, "sigterm_exit_codes": [term_code, final_code],
            "served_events_learned": learned, "learned_once_fraction": every["once_fraction"],
            "never_learned": every["never_learned"], "learned_twice": every["learned_twice"],
            "never_examples": every["never_examples"], "twice_examples": every["twice_examples"],
            "by_part": {k: {"once_fraction": v["once_fraction"], "never": v["never_learned"],
                            "twice": v["learned_twice"]} for k, v in parts.items()},
            "daemon_starts": daemon.starts, "seconds": round(time.monotonic() - started, 1),
            "log_excerpts": [log_excerpt(daemon)] if every["once_fraction"] != 1.0 else []}


# -- broker outage ----------------------------------------------------------------------------

def run_outage(ctx: Context) -> dict[str, Any]:
    s = ctx.sizes
    events_topic, labels_topic = ctx.topics("outage")
    state = ctx.workdir / "outage-state"
    daemon = ctx.daemon("outage", daemon_config(ctx, events_topic, labels_topic, state))
    producer = Producer(ctx.broker.bootstrap)
    stream = valid_events(ctx.input_kind, s.events, "o", ctx.seed + 4)
    warm = valid_events(ctx.input_kind, 60, "ow", ctx.seed + 12)  # labelled inline: a model to serve
    started = time.monotonic()
    probes = {"tried": 0, "healthz_200": 0, "predict_200": 0}
    try:
        for e in warm:
            producer.send(events_topic, e.labelled_record())
        producer.flush()
        daemon.start().wait_ready()
        feeder = Feeder(producer, events_topic, labels_topic, stream, s.rate, s.max_delay_s, ctx.seed).start()
        wait_for(lambda: feeder.events_sent >= len(stream) // 2, feeder.duration_s + 60, "half the stream sent")
        feeder.pause()
        sent = len(warm) + feeder.records_sent
        caught_up = True
        try:
            wait_for(lambda: daemon.metric("lifelong_events_consumed_total") >= sent, 120, "caught up")
        except TimeoutError:
            caught_up = False
        before = daemon.metric("lifelong_events_consumed_total")
        ctx.broker.stop()
        ctx.log(f"outage: broker stopped for {s.outage_s:.0f} s")
        down_until = time.monotonic() + s.outage_s
        while time.monotonic() < down_until:
            probes["tried"] += 1
            probes["healthz_200"] += daemon.healthy()
            status, body = http_json("POST", f"{daemon.url}/v1/predict", probe_body(ctx.input_kind), timeout_s=5)
            probes["predict_200"] += status == 200
            time.sleep(max(0.0, min(1.0, down_until - time.monotonic())))
        accepted_at = ctx.broker.start()
        ready_at = time.monotonic()
        feeder.resume()
        resumed_at = wait_for(lambda: daemon.metric("lifelong_events_consumed_total") > before and time.monotonic(),
                              300, "records consumed after the comeback", interval_s=0.1)
        resume_seconds = resumed_at - accepted_at
        ctx.log(f"outage: consuming again {resume_seconds:.1f} s after the broker accepted connections")
        feeder.wait(feeder.duration_s + s.max_delay_s + 600)
        learned = wait_learned(daemon, len(warm) + len(stream), timeout_s=600) - len(warm)
        redelivered = daemon.metrics().get("lifelong_records_redelivered_total")
        code = daemon.stop()
    finally:
        producer.close()
    stats = learn_stats(learned_counts(state), [e.id for e in warm + stream])
    first_ack = feeder.first_send_after_resume
    return {"events": len(stream), "outage_s": s.outage_s, "caught_up_before_outage": caught_up,
            "broker_start_s": round(ready_at - accepted_at, 2), "resume_seconds": round(resume_seconds, 2),
            "producer_first_ack_after_comeback_s": None if first_ack is None else round(first_ack - accepted_at, 2),
            "probes_during_outage": probes, "served_events_learned": learned,
            "outage_learned_fraction": stats["once_fraction"], "never_learned": stats["never_learned"],
            "learned_twice": stats["learned_twice"], "never_examples": stats["never_examples"],
            "twice_examples": stats["twice_examples"], "sigterm_exit_code": code,
            "redelivered": redelivered,
            "seconds": round(time.monotonic() - started, 1),
            "log_excerpts": [log_excerpt(daemon)] if stats["once_fraction"] != 1.0 or resume_seconds > 10 else []}


# -- 2 MB records -----------------------------------------------------------------------------

def run_oversized(ctx: Context, n_big: int = 3, max_message_bytes: int = 1_000_000) -> dict[str, Any]:
    events_topic, labels_topic = ctx.topics("big")
    ctx.broker.create_topics([events_topic], max_message_bytes=BIG_TOPIC_BYTES)
    state = ctx.workdir / "big-state"
    config = daemon_config(ctx, events_topic, None, state, outputs={"max_message_bytes": max_message_bytes})
    daemon = ctx.daemon("big", config)
    producer = Producer(ctx.broker.bootstrap)
    warm = valid_events(ctx.input_kind, 100, "bw", ctx.seed + 5)
    mixed = valid_events(ctx.input_kind, 50, "bm", ctx.seed + 6)
    after = valid_events(ctx.input_kind, 20, "ba", ctx.seed + 7)
    started = time.monotonic()
    out: dict[str, Any] = {"records_2mb": n_big}
    try:
        for e in warm:
            producer.send(events_topic, e.labelled_record())
        producer.flush()
        daemon.start().wait_ready()
        out["warm_learned"] = wait_learned(daemon, len(warm), 300)
        checkpoints_before = daemon.metric("lifelong_checkpoints_total")
        big = b'{"id": "big-%d", "text": "' + b"x" * 2_000_000 + b'"}'
        for i, e in enumerate(mixed):
            if i % (len(mixed) // n_big) == 0 and i // (len(mixed) // n_big) < n_big:
                producer.send(events_topic, big.replace(b"%d", str(i).encode()))
            producer.send(events_topic, e.labelled_record())
        producer.flush()
        out["mixed_learned"] = wait_learned(daemon, len(warm) + len(mixed), 300)
        try:
            wait_for(lambda: daemon.metric("lifelong_checkpoints_total") >= checkpoints_before + 2, 60,
                     "checkpoints after the 2 MB records")
            out["checkpoints_continue"] = True
        except TimeoutError:
            out["checkpoints_continue"] = False
        m = daemon.metrics()
        out["dead_letters_dropped"] = m.get("lifelong_dead_letters_dropped_total")
        out["dead_letters_truncated"] = m.get("lifelong_dead_letters_truncated_total")
        t = time.monotonic()
        out["sigterm_exit_code"] = daemon.stop(60)
        out["sigterm_seconds"] = round(time.monotonic() - t, 1)
        final = learned_counts(state)
        out["final_checkpoint_learned"] = len(final)
        out["final_checkpoint_complete"] = len(final) == len(warm) + len(mixed)
        dead = ctx.broker.read(f"{events_topic}-dead", expect=n_big, timeout_s=30)
        out["dead_letters"] = [{"reason": d.header("lifelong.reason"), "bytes": len(d.value or b""),
                                "original_size": d.header("lifelong.original.size"),
                                "has_sha256": d.header("lifelong.original.sha256") is not None} for d in dead]
        daemon.start()
        try:
            out["restart_ready_s"] = round(daemon.wait_ready(120), 1)
            for e in after:
                producer.send(events_topic, e.labelled_record())
            producer.flush()
            out["after_restart_learned"] = wait_learned(daemon, len(warm) + len(mixed) + len(after), 120) - \
                len(warm) - len(mixed)
        except (TimeoutError, RuntimeError) as exc:
            out["restart_error"] = str(exc)[:500]
            out["after_restart_learned"] = 0
        daemon.stop()
    finally:
        producer.close()
    ok_dead = (len(out["dead_letters"]) == n_big
               and all(d["reason"] == "oversized" and d["bytes"] <= max_message_bytes for d in out["dead_letters"]))
    out["ok"] = bool(ok_dead and out["checkpoints_continue"] and out["sigterm_exit_code"] == 0
                     and out["final_checkpoint_complete"] and out["after_restart_learned"] == len(after))
    out["seconds"] = round(time.monotonic() - started, 1)
    if not out["ok"]:
        out["log_excerpts"] = [log_excerpt(daemon)]
    return out
