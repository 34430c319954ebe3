"""The ``--poison`` bench's report: a terminal summary and ``poison.md``."""
from __future__ import annotations

from typing import Any

TARGETS = ("poisoned_accuracy_bounded >= clean_accuracy - 0.01, while the unbounded run loses more; "
           "|flood_change| <= 0.01")


def _pass(doc: dict[str, Any]) -> dict[str, bool]:
    clean = doc["clean_accuracy"]
    return {"flip": doc["poisoned_accuracy_bounded"] >= clean - 0.01
            and doc["poisoned_accuracy_unbounded"] < doc["poisoned_accuracy_bounded"],
            "flood": abs(doc["flood_change"]) <= 0.01}


def render_text(doc: dict[str, Any]) -> str:
    ok = _pass(doc)
    lines = [f"poison bench on {doc['stream']} ({doc['train_events']} training events, seed {doc['seed']}, "
             f"{doc['total_seconds']:.0f} s)",
             f"  clean            {doc['clean_accuracy']:.4f}   bounded {doc['clean_accuracy_bounded']:.4f}",
             f"  flipped labels   {doc['poisoned_accuracy_unbounded']:.4f}   bounded "
             f"{doc['poisoned_accuracy_bounded']:.4f}   {'ok' if ok['flip'] else 'MISSED'}",
             f"  flood            {doc['flood_accuracy_unbounded']:.4f}   bounded {doc['flood_accuracy_bounded']:.4f}"
             f"   change {doc['flood_change']:+.4f}   {'ok' if ok['flood'] else 'MISSED'}"]
    return "\n".join(lines)


def render_markdown(doc: dict[str, Any]) -> str:
    ok = _pass(doc)
    runs = doc["runs"]
    rows = "\n".join(f"| {name} | {run['events']} | {run['accuracy']:.4f} | {run['prequential']:.4f} | "
                     f"{run['suspects']} | {run['suspects_flipped']} / {run['flipped']} | {run['seconds']:.1f} |"
                     for name, run in runs.items())
    config = ", ".join(f"{k}={v}" for k, v in doc["bounded_config"].items())
    lost = {b: doc[f"poisoned_accuracy_{b}"] - doc["clean_accuracy"] for b in ("bounded", "unbounded")}
    return f"""# Poisoning and flooding: `lifelong bench --poison` on {doc['stream']}

{doc['train_events']} training events, {doc['test_events']} test events, seed {doc['seed']}; sources s0 .. s4
send {', '.join(f'{s:.0%}' for s in doc['shares'])} of the events; s0 is the attacker. Served (EMA) accuracy
on the test split after the stream. Targets: {TARGETS}.

| | unbounded | bounded |
|---|---|---|
| clean | {doc['clean_accuracy']:.4f} | {doc['clean_accuracy_bounded']:.4f} |
| A: {doc['flipped_share']:.0%} of s0's labels flipped | {doc['poisoned_accuracy_unbounded']:.4f} | \
{doc['poisoned_accuracy_bounded']:.4f} |
| B: s0 floods class `{doc['flood_class']}` at {doc['flood_rate']}x in the last segment | \
{doc['flood_accuracy_unbounded']:.4f} | {doc['flood_accuracy_bounded']:.4f} |

- A: {'met' if ok['flip'] else 'missed'} (bounded - clean = {lost['bounded']:+.4f}, \
unbounded - clean = {lost['unbounded']:+.4f})
- B: {'met' if ok['flood'] else 'missed'} (flood_change = {doc['flood_change']:+.4f} bounded, \
{doc['flood_change_unbounded']:+.4f} unbounded)

Bound: {config}.

| run | events | accuracy | prequential | down-weighted | of them flipped / flipped | learn s |
|---|---|---|---|---|---|---|
{rows}

Total {doc['total_seconds']:.0f} s.
"""
