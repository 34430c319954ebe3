"""The learning part's targets and its section of scaleout.md (pure functions of scaleout.json)."""
from __future__ import annotations

from typing import Any, Mapping

from .faults_report import Target

# How far below the single learner a merged model may score, by split (final accuracy and min-ACC).
ALLOWED = {"hash": 0.01, "domain": 0.03}


def _deficit(doc: Mapping[str, Any], split: str, key: str) -> float | None:
    """The worst single-minus-merged ``key`` over the runs of ``split`` (None: none ran)."""
    learning = doc.get("learning") or {}
    single = (learning.get("single") or {}).get(key)
    rows = [r.get(key) for r in learning.get("merged", []) if r.get("split") == split]
    if single is None or not rows or any(v is None for v in rows):
        return None
    return round(max(single - v for v in rows), 4)


def _above_lone(doc: Mapping[str, Any]) -> bool | None:
    rows = (doc.get("learning") or {}).get("merged", [])
    if not rows:
        return None
    return all(r["final_accuracy"] > max(x["final_accuracy"] for x in r["lone"]) for r in rows)


def _at_most(value: Any, bound: float) -> bool | None:
    return None if value is None else bool(value <= bound)


def learning_targets(doc: Mapping[str, Any]) -> list[Target]:
    learning = doc.get("learning") or {}
    fractions = [r.get("merge_fraction") for r in learning.get("merged", [])]
    worst = max(fractions) if fractions and None not in fractions else None
    joined = learning.get("labels_joined_fraction")
    gap = (learning.get("per_key") or {}).get("accuracy_gap")
    out = [Target("prototype_max_abs_diff", "<= 1e-5 (merged prototypes against one learner's, same events)",
                  learning.get("prototype_max_abs_diff"), _at_most(learning.get("prototype_max_abs_diff"), 1e-5))]
    for split, bound in ALLOWED.items():
        for key in ("final_accuracy", "min_acc"):
            value = _deficit(doc, split, key)
            out.append(Target(f"{split}_{key}_below_single", f"<= {bound} (merged, every learner count)", value,
                              _at_most(value, bound)))
    out += [Target("merged_above_every_lone_replica", "final accuracy above each replica learning alone",
                   _above_lone(doc), _above_lone(doc)),
            Target("merge_fraction", "<= 0.05 of learning time (worst run)", worst, _at_most(worst, 0.05)),
            Target("per_key_accuracy_gap", "<= 0.005 (mean over keys against each key's model trained alone, "
                   "with every key in memory and with one)", gap, _at_most(gap, 0.005)),
            Target("labels_joined_fraction", ">= 0.999 (delayed labels, two merging replicas, one joining)",
                   joined, None if joined is None else joined >= 0.999)]
    return out


def _cell(v: Any) -> str:
    return "n/a" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def learning_md(doc: Mapping[str, Any]) -> list[str]:
    learning = doc.get("learning") or {}
    if not learning.get("merged"):
        return []
    single = learning.get("single") or {}
    lines = ["", "## Learning: replicas that merge", "",
             f"{learning.get('stream')}, {learning.get('events'):,} training events, split over N learner replicas "
             f"by a hash of the event id or by domain (partitions by domain); each replica contributes every "
             f"{learning.get('merge_every_events')} of its events, one reduce makes the next base and all rebase "
             "(`learner/merging.py`). Replicas, merges and scoring run in one process on the encoded taps "
             "(`bench/scaleout_learning.py`); the served model is replica 0's (the reducer's) snapshot, scored at "
             "every true boundary and every 1,000 events. *lone*: the same replicas with no merge at all.", "",
             "| learners | split | final acc | min-ACC | merges | merging / learning | best lone final acc |",
             "|---:|---|---:|---:|---:|---:|---:|",
             f"| 1 | single | {_cell(single.get('final_accuracy'))} | {_cell(single.get('min_acc'))} | 0 | - | - |"]
    for r in learning["merged"]:
        best = max(x["final_accuracy"] for x in r["lone"])
        lines.append(f"| {r['learners']} | {r['split']} | {_cell(r['final_accuracy'])} | {_cell(r['min_acc'])} | "
                     f"{r['merges']} | {100 * r['merge_fraction']:.1f}% | {_cell(best)} |")
    lines += ["", f"Prototypes, merged against one learner's over the same events: max abs difference "
              f"{learning.get('prototype_max_abs_diff')}.", ""]
    labels = learning.get("labels")
    if labels:
        lines += [f"Delayed labels (`bench/scaleout_labels.py`, a real broker): {labels['events']:,} events, each "
                  f"label {labels['label_delay_events']} events after its event, keyed like it; one merging "
                  f"replica, a second joining half way, leaving at the end: {labels['labels_joined']:,} joined "
                  f"({labels['labels_joined_fraction']:.4f}); {labels['labels_waiting_for_their_event']} labels "
                  "still wait for their event. The events the first replica had parked when the group moved "
                  "their partitions follow them (`service/handoff.py`).", ""]
    return lines + _per_key_md(learning.get("per_key"))


def _per_key_md(per_key: Mapping[str, Any] | None) -> list[str]:
    if not per_key:
        return []
    lines = ["## Learning: a model per key", "",
             f"The training events split into {per_key['keys']} keys by a hash of the event id (tenants learning "
             "at once, interleaved); the keyed learners (`learner/keyed.py`, a key store on disk) against each "
             "key's model trained alone on the same batches (`bench/scaleout_keys.py`). Mean final accuracy over "
             "the keys:", "",
             "| events | memory budget | evictions | keyed | alone | worst key gap | keyed s | alone s |",
             "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in per_key["runs"]:
        budget = "every key" if r["max_resident_bytes"] >= 1 << 40 else "one key (evicts every batch)"
        lines.append(f"| {r['events']:,} | {budget} | {r['evictions']} | {r['final_accuracy_mean']:.4f} | "
                     f"{r['alone_accuracy_mean']:.4f} | {r['max_key_gap']:.4f} | {r['keyed_seconds']} | "
                     f"{r['alone_seconds']} |")
    return lines + [""]
