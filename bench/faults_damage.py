"""Checkpoint damage: one learned state, damaged in each way, and what the daemon does on start.

A template state is learned once (three numbered checkpoints that differ: each newer one holds
more events). Each case copies it, damages the copy, and starts a daemon on it in a consumer
group whose committed offsets are at the log end, as they are after the run that wrote it. The
outcome is read from the process and its endpoints:

- ``refused_to_start``: it exited (the detail says whether the message names the damaged path);
- ``fell_back``: it restored an older checkpoint (``lifelong_checkpoint_restore_fallbacks_total``);
- ``restored``: it restored the newest checkpoint, i.e. did not notice the damage;
- ``started_empty``: it serves without the learned state.

A damaged checkpoint counts as served when the daemon restored the damaged folder and answers
/v1/predict with a model version.
"""
from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

from .faults_corpus import valid_events
from .faults_env import Daemon, Producer, http_json, wait_for
from .faults_scenarios import Context, daemon_config, probe_body, wait_learned

TENSORS, META, MANIFEST, LATEST = "tensors.safetensors", "meta.json", "manifest.json", "latest"
# Cases where the newest checkpoint's content is damaged: restoring it is serving damage.
CONTENT_DAMAGE = ("tensors_quarter_overwritten", "tensors_truncated", "meta_garbage", "manifest_deleted")
EXPECTED = {**{c: "fell_back" for c in CONTENT_DAMAGE}, "latest_deleted": "restored",
            "every_checkpoint_damaged": "refused_to_start", "every_checkpoint_damaged_start_empty": "started_empty",
            "dir_is_a_file": "refused_to_start", "dir_missing": "started_empty",
            "dir_read_only": "refused_to_start", "disk_full": "serving_checkpoint_failures_counted"}


def numbered(state: Path) -> list[Path]:
    return sorted(p for p in state.iterdir() if p.is_dir() and p.name.startswith("ckpt-"))


def overwrite_quarter(path: Path, seed: int = 0) -> None:
    data = bytearray(path.read_bytes())
    start, n = len(data) // 2, max(1, len(data) // 4)
    data[start:start + n] = random.Random(seed).randbytes(min(n, len(data) - start))
    path.write_bytes(bytes(data))


def truncate_half(path: Path) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size // 2)


DAMAGE: dict[str, Callable[[Path], str]] = {}


def _case(name: str) -> Callable[[Callable[[Path], str]], Callable[[Path], str]]:
    def register(fn: Callable[[Path], str]) -> Callable[[Path], str]:
        DAMAGE[name] = fn
        return fn
    return register


@_case("tensors_quarter_overwritten")
def _(state: Path) -> str:
    target = numbered(state)[-1] / TENSORS
    overwrite_quarter(target)
    return str(target)


@_case("tensors_truncated")
def _(state: Path) -> str:
    target = numbered(state)[-1] / TENSORS
    truncate_half(target)
    return str(target)


@_case("meta_garbage")
def _(state: Path) -> str:
    target = numbered(state)[-1] / META
    target.write_bytes(b"\x00garbage{" * 100)
    return str(target)


@_case("manifest_deleted")
def _(state: Path) -> str:
    target = numbered(state)[-1] / MANIFEST
    target.unlink()
    return str(target)


@_case("latest_deleted")
def _(state: Path) -> str:
    target = state / LATEST
    target.unlink()
    return str(target)


@_case("every_checkpoint_damaged")
def _(state: Path) -> str:
    for folder in numbered(state):
        overwrite_quarter(folder / TENSORS)
    return str(numbered(state)[-1] / TENSORS)


DAMAGE["every_checkpoint_damaged_start_empty"] = DAMAGE["every_checkpoint_damaged"]


@_case("dir_is_a_file")
def _(state: Path) -> str:
    shutil.rmtree(state)
    state.write_text("not a folder\n")
    return str(state)


@_case("dir_missing")
def _(state: Path) -> str:
    shutil.rmtree(state)
    return str(state)


def _mount_tmpfs(where: Path, size_bytes: int) -> str | None:
    """Mount a tmpfs of ``size_bytes`` at ``where``; None if it worked, else why not."""
    if os.geteuid() != 0:
        return "needs root (mount a small tmpfs)"
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(where)],
                          capture_output=True, text=True)
    return None if done.returncode == 0 else f"mount failed: {done.stderr.strip()}"


def _umount(where: Path) -> None:
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


PAGE = 4096


def _size(folder: Path) -> int:
    """Bytes a tmpfs needs for the files under ``folder`` (whole pages)."""
    return sum(-(-p.stat().st_size // PAGE) * PAGE for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def _start_case(ctx: Context, base_config: dict[str, Any], name: str, state: Path, group: str,
                **checkpoint: Any) -> Daemon:
    config = dict(base_config)
    config["checkpoint"] = {**config["checkpoint"], "dir": str(state), **checkpoint}
    config["source"] = {**config["source"], "kafka": {**config["source"]["kafka"], "group_id": group}}
    return ctx.daemon(f"damage-{name}", config).start()


def _observe(daemon: Daemon, damaged: str, template_learned: int, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not daemon.running:
            log = daemon.log()
            errors = [ln for ln in log.splitlines() if "ERROR" in ln or "rror:" in ln][-3:]
            return {"outcome": "refused_to_start", "exit_code": daemon.proc.returncode if daemon.proc else None,
                    "names_file": damaged in log, "served": False, "detail": " / ".join(errors)[-600:]}
        try:
            # Up and answering (ready needs a model, which an empty start does not have yet).
            if daemon.healthy() and daemon.model():
                break
        except OSError:
            pass
        time.sleep(0.3)
    else:
        return {"outcome": "no_answer", "served": False, "detail": daemon.log()[-600:]}
    learned = wait_learned(daemon, template_learned, timeout_s=30, stall_s=6)
    m = daemon.metrics()
    model = daemon.model()
    status, body = http_json("POST", f"{daemon.url}/v1/predict", probe_body_for(daemon), timeout_s=10)
    answers = status == 200 and isinstance(body, dict) and "model_version" in str(body)
    fallbacks = m.get("lifelong_checkpoint_restore_fallbacks_total", 0.0)
    if fallbacks > 0:
        outcome = "fell_back"
    elif model.get("restored_from_checkpoint"):
        outcome = "restored"
    else:
        outcome = "started_empty"
    return {"outcome": outcome, "events_learned": learned, "template_events": template_learned,
            "events_kept": learned == template_learned, "fallbacks": fallbacks, "predict_status": status,
            "answers_with_version": answers, "served": False,
            "detail": " / ".join(ln for ln in daemon.log().splitlines() if "ERROR" in ln)[-400:]}


def _short(detail: str, workdir: str) -> str:
    """Log lines without timestamps and the bench's temporary folder."""
    detail = re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ", "", detail)
    return re.sub(r"[0-9a-f]{64}", "<sha256>", detail.replace(workdir, "WORK"))


def probe_body_for(daemon: Daemon) -> dict[str, Any]:
    kind = daemon.config["learner"]["input_kind"]
    return probe_body(kind)


def _template(ctx: Context) -> tuple[Path, dict[str, Any], list[int], str, str]:
    """Learn a state with three numbered checkpoints of 200, 300 and 350 events."""
    events_topic, labels_topic = ctx.topics("damage")
    template = ctx.workdir / "damage-template"
    config = daemon_config(ctx, events_topic, None, template, checkpoint={"every_s": 60.0, "every_events": 100,
                                                                           "keep": 3})
    daemon = ctx.daemon("damage-template", config)
    producer = Producer(ctx.broker.bootstrap)
    events = valid_events(ctx.input_kind, 350, "d", ctx.seed + 11)
    try:
        daemon.start().wait_healthy(180, "up")  # no model yet, so not ready
        for upto in (100, 200, 300, 350):
            for e in events[upto - (100 if upto <= 300 else 50):upto]:
                producer.send(events_topic, e.labelled_record())
            producer.flush()
            wait_learned(daemon, upto, 300)
            if upto <= 300:
                wait_for(lambda u=upto: daemon.metric("lifelong_checkpoints_total") >= u // 100, 30, "checkpoint")
        daemon.stop()
    finally:
        producer.close()
    from ..memory.persistence import load_state

    per_folder = [len(load_state(f)[1]["parts"]["learned_ids"]["counts"]) for f in numbered(template)]
    return template, config, per_folder, events_topic, config["source"]["kafka"]["group_id"]


def _commit_end(bootstrap: str, topic: str, group: str) -> None:
    """Give ``group`` committed offsets at the log end of ``topic``."""
    from kafka import KafkaConsumer
    from kafka.structs import OffsetAndMetadata, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(parts)
        ends = consumer.end_offsets(parts)
        consumer.commit({tp: OffsetAndMetadata(ends[tp], "", -1) for tp in parts})
    finally:
        consumer.close(autocommit=False)


def run_damage(ctx: Context, timeout_s: float = 120.0) -> dict[str, Any]:
    started = time.monotonic()
    template, config, per_folder, events_topic, _ = _template(ctx)
    newest = per_folder[-1]
    out: dict[str, Any] = {}
    for n, case in enumerate([*DAMAGE, "dir_read_only", "disk_full"]):
        state = ctx.workdir / f"damage-{case}"
        group = f"{events_topic}-{case}"
        _commit_end(ctx.broker.bootstrap, events_topic, group)
        mounted = False
        try:
            if case in ("dir_read_only", "disk_full"):
                # Full: room for the template and the start-up probe, not for one more checkpoint.
                room = (1 << 20) if case == "dir_read_only" else max(2 * PAGE, _size(numbered(template)[-1]) // 2)
                why = _mount_tmpfs(state, _size(template) + room)
                if why is not None:
                    out[case] = {"outcome": "skipped", "detail": why, "served": False}
                    continue
                mounted = True
                shutil.copytree(template, state, symlinks=True, dirs_exist_ok=True)
                damaged = str(state)
                if case == "dir_read_only":
                    subprocess.run(["mount", "-o", "remount,ro", str(state)], check=True, capture_output=True)
            else:
                shutil.copytree(template, state, symlinks=True)
                damaged = DAMAGE[case](state)
            extra = {"on_unrecoverable": "start_empty"} if case.endswith("start_empty") else {}
            daemon = _start_case(ctx, config, case, state, group, **extra)
            result = _observe(daemon, damaged, newest, timeout_s)
            if case == "disk_full" and daemon.running:
                result.update(_fill_disk(ctx, daemon, config, n))
            result["served"] = bool(case in CONTENT_DAMAGE + ("every_checkpoint_damaged",)
                                    and result["outcome"] == "restored" and result.get("answers_with_version"))
            result["expected"] = EXPECTED[case]
            result["detail"] = _short(str(result.get("detail", "")), str(ctx.workdir))
            daemon.stop()
            out[case] = result
            ctx.log(f"damage {case}: {result['outcome']}")
        finally:
            if mounted:
                _umount(state)
    return {"cases": out, "template_checkpoint_events": per_folder,
            "served": sum(1 for r in out.values() if r.get("served")), "seconds": round(time.monotonic() - started, 1)}


def _fill_disk(ctx: Context, daemon: Daemon, config: dict[str, Any], seed: int) -> dict[str, Any]:
    """New events on a full disk: checkpoints fail, serving and learning go on."""
    producer = Producer(ctx.broker.bootstrap)
    try:
        for e in valid_events(ctx.input_kind, 150, "full", ctx.seed + 100 + seed):
            producer.send(config["source"]["kafka"]["events_topic"], e.labelled_record())
        producer.flush()
    finally:
        producer.close()
    try:
        wait_for(lambda: daemon.metric("lifelong_checkpoint_failures_total") > 0, 30, "a failed checkpoint")
    except TimeoutError:
        pass
    m = daemon.metrics()
    failures = m.get("lifelong_checkpoint_failures_total", 0.0)
    healthy = daemon.healthy()
    outcome = "serving_checkpoint_failures_counted" if failures > 0 and healthy else (
        "crashed" if not daemon.running else "checkpoints_not_failing")
    return {"outcome": outcome, "checkpoint_failures": failures, "healthy_on_full_disk": healthy}
