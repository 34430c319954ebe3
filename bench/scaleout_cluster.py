"""The processes of the scale-out bench: a broker, one learner, the predictors, a paced producer of elec2.

Each is a real process on loopback: the broker is ``deploy/kafka/local-kafka`` (or one given by
``--bootstrap``), the topics come from ``lifelong topics create``, the learner and the predictors
are ``python -m lifelong.cli run --config FILE --role ...`` and the events are fed by
``lifelong produce FILE --rate R``, a process of its own so that producing never competes with
the load generator's threads for the bench's interpreter.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from .faults_env import Broker, Daemon, wait_for
from .streams import elec2

FEATURE_DIM = 6
MODEL_KEY = "default"


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process (Linux ``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def write_events(path: Path, limit: int | None, seed: int = 0) -> tuple[int, list[bytes]]:
    """elec2's training rows as events in time order (``{"id", "features", "label"}`` a line), and
    single-instance predict bodies made of its held-out test rows; returns (events written, bodies)."""
    stream = elec2(seed)
    rows = stream.train.inputs[:limit] if limit else stream.train.inputs
    with path.open("w") as fh:
        for i, (x, y) in enumerate(zip(rows, stream.train.labels)):
            fh.write(json.dumps({"id": f"e{i}", "features": [round(float(v), 6) for v in x], "label": y}) + "\n")
    bodies = [json.dumps({"instances": [{"features": [round(float(v), 6) for v in x]}]}).encode()
              for x in stream.test.inputs[:1000]]
    return len(rows), bodies


@dataclass
class Topics:
    events: str
    dead_letters: str
    snapshots: str

    @classmethod
    def fresh(cls) -> "Topics":
        """Names of this run's own (a shared --bootstrap broker may hold other runs' topics)."""
        tag = uuid.uuid4().hex[:8]
        return cls(f"scaleout-{tag}-events", f"scaleout-{tag}-dead", f"scaleout-{tag}-snapshots")


def learner_config(bootstrap: str, topics: Topics, state: Path) -> dict[str, Any]:
    """The learner: elec2 from Kafka, a checkpoint every 2 s, a snapshot published at most every 1 s."""
    return {
        # A static member id: a learner restarted after kill -9 takes its partitions back at once
        # instead of waiting out the dead member's session.
        "source": {"kind": "kafka", "batch_size": 64, "poll_timeout_s": 0.2,
                   "kafka": {"bootstrap_servers": bootstrap, "events_topic": topics.events,
                             "group_id": f"{topics.events}-learner", "instance_id": "scaleout-learner",
                             "startup_timeout_s": 60}},
        "learner": {"input_kind": "features", "feature_dim": FEATURE_DIM, "torch_threads": 1, "device": "cpu"},
        "outputs": {"predictions_topic": None, "dead_letter_topic": topics.dead_letters},
        "checkpoint": {"dir": str(state), "every_s": 2.0},
        "snapshots": {"topic": topics.snapshots, "model_key": MODEL_KEY},
    }


def predictor_config(bootstrap: str, topics: Topics) -> dict[str, Any]:
    """A predictor: the same input contract (its encoder must match the learner's fingerprint)."""
    return {
        "source": {"kind": "kafka", "kafka": {"bootstrap_servers": bootstrap, "events_topic": topics.events,
                                              "startup_timeout_s": 60}},
        "learner": {"input_kind": "features", "feature_dim": FEATURE_DIM, "torch_threads": 1, "device": "cpu"},
        "checkpoint": {"dir": None},
        "snapshots": {"topic": topics.snapshots, "model_key": MODEL_KEY},
    }


@dataclass
class Cluster:
    """Everything the bench started; ``close`` ends it all, whatever happened."""

    workdir: Path
    bootstrap: str
    broker: Broker | None  # None: an external broker (--bootstrap), never stopped here
    topics: Topics
    say: Callable[[str], None]
    learner: Daemon | None = None
    predictors: list[Daemon] = field(default_factory=list)
    feeder: subprocess.Popen[bytes] | None = None
    ready_s: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def start(cls, workdir: Path, bootstrap: str | None, say: Callable[[str], None]) -> "Cluster":
        broker = None
        if bootstrap is None:
            broker = Broker.start_new(workdir / "kafka")
            bootstrap = broker.bootstrap
        cluster = cls(workdir, bootstrap, broker, Topics.fresh(), say)
        cluster.create_topics()
        return cluster

    def create_topics(self) -> None:
        path = self.workdir / "topics.yaml"
        path.write_text(yaml.safe_dump(learner_config(self.bootstrap, self.topics, self.workdir / "state")))
        done = subprocess.run([sys.executable, "-m", "lifelong.cli", "topics", "create", "--config", str(path),
                               "--partitions", "2"], capture_output=True, text=True, timeout=120, cwd=self.workdir)
        if done.returncode != 0:
            raise RuntimeError(f"lifelong topics create failed:\n{done.stdout}\n{done.stderr}")
        self.say(" / ".join(line.strip() for line in done.stdout.splitlines()))

    # -- the learner ----------------------------------------------------------------------------
    def start_learner(self, timeout_s: float = 120.0) -> float:
        """Start (or restart) the learner; returns its seconds to /readyz 200."""
        if self.learner is None:
            cfg = learner_config(self.bootstrap, self.topics, self.workdir / "state")
            self.learner = Daemon(cfg, self.workdir, "learner", args=("--role", "learner"))
        return self.learner.start().wait_ready(timeout_s)

    def wait_published(self, after: float = 0.0, timeout_s: float = 120.0) -> float:
        """Until the learner has published more than ``after`` snapshots; returns the count."""
        assert self.learner is not None
        learner = self.learner
        return float(wait_for(lambda: (learner.metric("lifelong_snapshots_published_total") > after
                                       and learner.metric("lifelong_snapshots_published_total")),
                              timeout_s, "a snapshot published"))

    # -- the predictors -------------------------------------------------------------------------
    def add_predictor(self, timeout_s: float = 120.0) -> int:
        """Start one more predictor; returns its slot."""
        name = f"predictor-{len(self.predictors)}"
        daemon = Daemon(predictor_config(self.bootstrap, self.topics), self.workdir, name,
                        args=("--role", "predictor"))
        self.predictors.append(daemon)
        self.start_predictor(len(self.predictors) - 1, "first start", timeout_s)
        return len(self.predictors) - 1

    def start_predictor(self, slot: int, why: str, timeout_s: float = 120.0) -> float:
        """(Re)start the predictor in ``slot`` and note its seconds from process start to /readyz 200."""
        daemon = self.predictors[slot]
        started = time.monotonic()
        daemon.start()
        daemon.wait_ready(timeout_s)
        seconds = time.monotonic() - started
        self.ready_s.append({"slot": slot, "start": daemon.starts, "why": why, "seconds": round(seconds, 3)})
        self.say(f"{daemon.name} ready in {seconds:.1f} s ({why})")
        return seconds

    # -- the events -----------------------------------------------------------------------------
    def feed(self, events: Path, rate: float) -> None:
        """``lifelong produce`` the events file at ``rate`` records/s, in the background."""
        log = open(self.workdir / "produce.log", "wb")
        self.feeder = subprocess.Popen([sys.executable, "-m", "lifelong.cli", "produce", str(events), "--bootstrap",
                                        self.bootstrap, "--topic", self.topics.events, "--rate", str(rate)],
                                       stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir, start_new_session=True)
        log.close()

    def feeding(self) -> bool:
        return self.feeder is not None and self.feeder.poll() is None

    # -- the end --------------------------------------------------------------------------------
    def daemons(self) -> list[Daemon]:
        return ([self.learner] if self.learner else []) + self.predictors

    def close(self) -> None:
        if self.feeder is not None and self.feeder.poll() is None:
            self.feeder.kill()
            self.feeder.wait(30)
        for daemon in self.predictors + ([self.learner] if self.learner else []):
            daemon.stop(30)
        if self.broker is not None:
            self.broker.stop()
            self.broker = None
