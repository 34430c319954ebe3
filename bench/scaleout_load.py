"""A round-robin load balancer with closed-loop clients in front of the predictors, and a staleness sampler.

Each client thread sends one single-instance ``/v1/predict`` at a time over keep-alive
connections, taking the predictors in rotation in turn. Like a balancer with passive and active
health checks, a predictor whose connection fails is taken out of the rotation at once (that
request counts as ``unavailable``: no process answered, it is not a 5xx), and a health thread
puts it back when its process answers ``/readyz`` 200 again, on whatever port it now listens.
A request that fails on a reused keep-alive connection is tried once more on a fresh one, as
HTTP clients do, so a connection the server closed while idle is not counted as a failure.
"""
from __future__ import annotations

import http.client
import json
import math
import random
import threading
import time
from dataclasses import dataclass
from typing import Sequence

from .faults_env import Daemon, parse_metrics
from .faults_env import http as request
from .scaleout_stats import Sample

HEADERS = {"content-type": "application/json"}


@dataclass
class _Conn:
    conn: http.client.HTTPConnection
    port: int
    proc: tuple[int, int]
    used: bool = False


class Balancer:
    """Closed-loop clients over the predictors in ``members`` that are in rotation."""

    def __init__(self, predictors: Sequence[Daemon], bodies: Sequence[bytes], clients: int, seed: int = 0,
                 health_every_s: float = 0.5) -> None:
        # The cluster's own list, not a copy: a predictor added later can be put behind the balancer.
        self.predictors, self.bodies, self.clients, self.seed = predictors, list(bodies), clients, seed
        self.health_every_s = health_every_s
        self.members: tuple[int, ...] = ()   # the slots the bench put behind the balancer
        self.rotation: tuple[int, ...] = ()  # those of them that answer now
        self.samples: list[Sample] = []      # list.append is atomic: the client threads share it
        self.ejections = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- membership --------------------------------------------------------------------------
    def serve(self, slots: Sequence[int]) -> None:
        """Put ``slots`` behind the balancer (all assumed ready)."""
        with self._lock:
            self.members = tuple(slots)
            self.rotation = tuple(slots)

    def eject(self, slot: int) -> None:
        with self._lock:
            if slot in self.rotation:
                self.rotation = tuple(s for s in self.rotation if s != slot)
                self.ejections += 1

    def _readmit(self, slot: int) -> None:
        with self._lock:
            if slot in self.members and slot not in self.rotation:
                self.rotation = tuple(s for s in self.members if s in self.rotation or s == slot)

    # -- running -------------------------------------------------------------------------------
    def start(self) -> "Balancer":
        self._stop.clear()
        self._threads = [threading.Thread(target=self._client, args=(i,), name=f"load-{i}", daemon=True)
                         for i in range(self.clients)]
        self._threads.append(threading.Thread(target=self._health, name="load-health", daemon=True))
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(15)
        self._threads = []

    def _health(self) -> None:
        """Active health check: an ejected member comes back once its process answers /readyz 200."""
        while not self._stop.wait(self.health_every_s):
            for slot in self.members:
                daemon = self.predictors[slot]
                if slot not in self.rotation and daemon.running and \
                        request("GET", f"{daemon.url}/readyz", timeout_s=1)[0] == 200:
                    self._readmit(slot)

    def _client(self, index: int) -> None:
        rng = random.Random(self.seed * 1000 + index)
        conns: dict[int, _Conn] = {}
        turn = index  # clients start at different predictors, so each gets its share at once
        while not self._stop.is_set():
            rotation = self.rotation
            if not rotation:
                time.sleep(0.01)
                continue
            slot = rotation[turn % len(rotation)]
            turn += 1
            self.samples.append(self._send(conns, slot, rng.choice(self.bodies)))
        for c in conns.values():
            c.conn.close()

    def _connect(self, conns: dict[int, _Conn], slot: int) -> _Conn:
        daemon = self.predictors[slot]
        c = conns.get(slot)
        if c is None or c.port != daemon.port:  # a restarted predictor listens on a new port
            if c is not None:
                c.conn.close()
            c = _Conn(http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10), daemon.port,
                      (slot, daemon.starts))
            conns[slot] = c
        return c

    def _send(self, conns: dict[int, _Conn], slot: int, body: bytes) -> Sample:
        for attempt in (0, 1):
            c = self._connect(conns, slot)
            sent = time.monotonic()
            try:
                c.conn.request("POST", "/v1/predict", body, HEADERS)
                resp = c.conn.getresponse()
                raw = resp.read()
            except (OSError, http.client.HTTPException):
                c.conn.close()
                del conns[slot]
                if attempt == 0 and c.used:
                    continue  # the server may have closed an idle keep-alive connection: once more, fresh
                self.eject(slot)
                return Sample(c.proc, sent, time.monotonic(), time.time(), 0, None)
            c.used = True
            return Sample(c.proc, sent, time.monotonic(), time.time(), resp.status, _version(resp.status, raw))
        raise AssertionError("unreachable")


def _version(status: int, raw: bytes) -> int | None:
    if status != 200:
        return None
    try:
        return int(json.loads(raw)["model_version"])
    except (ValueError, KeyError, TypeError):
        return None


@dataclass(frozen=True)
class Reading:
    at: float  # monotonic
    slot: int
    age_s: float
    version: float
    generation: float


class Sampler:
    """Reads each member predictor's /metrics every ``every_s``: snapshot age, version, generation."""

    def __init__(self, balancer: Balancer, every_s: float = 0.2) -> None:
        self.balancer, self.every_s = balancer, every_s
        self.readings: list[Reading] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "Sampler":
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(15)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            for slot in self.balancer.members:
                daemon = self.balancer.predictors[slot]
                if not daemon.running:
                    continue
                status, raw = request("GET", f"{daemon.url}/metrics", timeout_s=2)
                if status != 200:
                    continue
                m = parse_metrics(raw.decode("utf-8", "replace"))
                age = m.get("lifelong_snapshot_age_seconds", math.nan)
                self.readings.append(Reading(time.monotonic(), slot, age, m.get("lifelong_model_version", math.nan),
                                             m.get("lifelong_snapshot_generation", math.nan)))

    def ages(self, start: float, end: float) -> list[float]:
        """Finite snapshot ages read in [start, end) (NaN: no snapshot yet)."""
        return [r.age_s for r in self.readings if start <= r.at < end and math.isfinite(r.age_s)]
