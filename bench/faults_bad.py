"""Bad records on both topics and bad HTTP requests against one running daemon.

A watcher polls the process and /healthz throughout: an exit or an unhealthy answer is a crash
(the daemon is started again, so the rest of the corpus still runs, and the restart is counted).
Each bad record's dead letter is found by its source topic, partition and offset headers.
"""
from __future__ import annotations

import socket
import threading
import time
from typing import Any

from .faults_corpus import Bad, bad_events, bad_labels, http_cases, valid_events
from .faults_env import BIG_TOPIC_BYTES, Daemon, Producer, Sent, http
from .faults_report import learn_stats, match_dead_letters
from .faults_scenarios import Context, daemon_config, learned_counts, log_excerpt, wait_learned


class Watcher:
    """Counts crashes (exit, or /healthz not 200 twice in a row) and restarts the daemon after an exit."""

    def __init__(self, daemon: Daemon, interval_s: float = 0.5) -> None:
        self.daemon = daemon
        self.interval_s = interval_s
        self.crashes = 0
        self.restarts = 0
        self.excerpts: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="watcher", daemon=True)

    def start(self) -> "Watcher":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(60)

    def _loop(self) -> None:
        unhealthy = 0
        while not self._stop.wait(self.interval_s):
            if not self.daemon.running:
                self.crashes += 1
                self.excerpts.append(self.daemon.log()[-2500:])
                self.restarts += 1
                self.daemon.start()
                try:
                    self.daemon.wait_ready(180)
                except (TimeoutError, RuntimeError):
                    pass  # seen as another exit on the next round
                unhealthy = 0
                continue
            status = http("GET", f"{self.daemon.url}/healthz", timeout_s=5)[0]
            unhealthy = unhealthy + 1 if status != 200 else 0
            if unhealthy == 2:  # once per episode
                self.crashes += 1
                self.excerpts.append(f"/healthz answered {status}\n" + log_excerpt(self.daemon))


def run_bad_records(ctx: Context) -> dict[str, Any]:
    events_topic, labels_topic = ctx.topics("bad")
    ctx.broker.create_topics([events_topic, labels_topic], max_message_bytes=BIG_TOPIC_BYTES)
    state = ctx.workdir / "bad-state"
    http_settings = {"header_timeout_s": 2.0, "body_timeout_s": 2.0}
    daemon = ctx.daemon("bad", daemon_config(ctx, events_topic, labels_topic, state, http=http_settings))
    producer = Producer(ctx.broker.bootstrap)
    warm = valid_events(ctx.input_kind, 60, "bw", ctx.seed + 8)
    inline = valid_events(ctx.input_kind, 200, "bi", ctx.seed + 9)  # labelled in the record
    apart = valid_events(ctx.input_kind, 60, "bl", ctx.seed + 10)  # labelled on the labels topic
    bad_ev, bad_lab = bad_events(ctx.input_kind), bad_labels()
    sent: list[tuple[Bad, Sent]] = []
    started = time.monotonic()
    watcher = Watcher(daemon)
    try:
        for e in warm:
            producer.send(events_topic, e.labelled_record())
        producer.flush()
        daemon.start().wait_ready()
        wait_learned(daemon, len(warm), 300)
        watcher.start()
        # Bad event records, each between valid ones, so they share batches.
        feed = iter(inline)
        for bad in bad_ev:
            sent.append((bad, producer.send_wait(events_topic, bad.value)))
            for _ in range(len(inline) // len(bad_ev)):
                e = next(feed, None)
                if e is not None:
                    producer.send(events_topic, e.labelled_record())
        for e in feed:
            producer.send(events_topic, e.labelled_record())
        dup = Bad("duplicate_id", "events", inline[0].labelled_record(), frozenset({"duplicate_id"}))
        sent.append((dup, producer.send_wait(events_topic, dup.value)))
        # Unlabelled events, then their labels on the labels topic with bad label records between.
        for e in apart:
            producer.send(events_topic, e.value)
        producer.flush()
        labels = iter(apart)
        for bad in bad_lab:
            sent.append((bad, producer.send_wait(labels_topic, bad.value)))
            for _ in range(len(apart) // len(bad_lab)):
                e = next(labels, None)
                if e is not None:
                    producer.send(labels_topic, e.label_record())
        for e in labels:
            producer.send(labels_topic, e.label_record())
        producer.flush()
        learned = wait_learned(daemon, len(warm) + len(inline) + len(apart), 300)
        dead = ctx.broker.read(f"{events_topic}-dead", expect=len(sent), timeout_s=60)
        http_part = run_http(daemon, ctx.input_kind)
        time.sleep(1.5)  # one more watcher round after the last request
        watcher.stop()
        code = daemon.stop()
    finally:
        watcher.stop()
        producer.close()
    matched = match_dead_letters(sent, dead)
    valid_ids = [e.id for e in warm + inline + apart]
    stats = learn_stats(learned_counts(state), valid_ids)
    return {"kinds": {"events": len(bad_ev) + 1, "labels": len(bad_lab), "http": http_part["cases"]},
            "crashes": watcher.crashes, "restarts": watcher.restarts, "dead_letters": matched,
            "valid_sent": len(valid_ids), "valid_learned": stats["labelled"] - stats["never_learned"],
            "valid_learned_twice": stats["learned_twice"], "served_events_learned": learned,
            "sigterm_exit_code": code, "http": http_part, "seconds": round(time.monotonic() - started, 1),
            "log_excerpts": watcher.excerpts[:3]}


def run_http(daemon: Daemon, input_kind: str, max_instances: int = 256) -> dict[str, Any]:
    """Every bad request once, then slow clients; a 5xx or a dropped connection is a failure."""
    status: dict[str, int] = {}
    for case in http_cases(input_kind, max_instances):
        code, _ = http("POST", daemon.url + case.path, case.body, timeout_s=30, content_type=case.content_type)
        status[case.name] = code
    slow = slow_clients(daemon)
    failures = sorted(k for k, v in status.items() if v >= 500 or v == 0)
    failures += [f"slow:{k}" for k, v in slow.items() if isinstance(v, int) and (v >= 500)]
    return {"cases": len(status), "status": status, "failures": failures, "http_5xx": len(failures), "slow": slow}


def _send_slowly(port: int, parts: list[bytes], pause_s: float, limit_s: float) -> tuple[int | None, float]:
    """Send ``parts`` with pauses; returns (HTTP status answered or None if closed silently, seconds)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=limit_s) as sock:
        try:
            for part in parts:
                sock.sendall(part)
                time.sleep(pause_s)
        except OSError:
            pass  # closed by the server: read what it answered before closing
        try:
            sock.settimeout(max(0.1, limit_s - (time.monotonic() - started)))
            answer = sock.recv(200)
        except OSError:
            return None, time.monotonic() - started
    try:
        return (int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else None), time.monotonic() - started
    except (IndexError, ValueError):
        return None, time.monotonic() - started


def slow_clients(daemon: Daemon) -> dict[str, Any]:
    """A client dribbling its headers, one dribbling its body, and 30 idle half-open requests at once."""
    head = b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    headers_code, headers_s = _send_slowly(daemon.port, [head[i:i + 8] for i in range(0, len(head), 8)], 0.5, 20)
    body_head = head + b"Content-Length: 100\r\n\r\n"
    body_code, body_s = _send_slowly(daemon.port, [body_head, b'{"instances"', b": ["], 1.0, 20)
    socks = []
    try:
        for _ in range(30):
            s = socket.create_connection(("127.0.0.1", daemon.port), timeout=5)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never finished
            socks.append(s)
        t = time.monotonic()
        healthz = http("GET", f"{daemon.url}/healthz", timeout_s=10)[0]
        healthz_s = time.monotonic() - t
    finally:
        for s in socks:
            s.close()
    return {"slow_headers_status": headers_code, "slow_headers_closed_after_s": round(headers_s, 1),
            "slow_body_status": body_code, "slow_body_closed_after_s": round(body_s, 1),
            "healthz_with_30_half_open": healthz, "healthz_with_30_half_open_s": round(healthz_s, 2)}
