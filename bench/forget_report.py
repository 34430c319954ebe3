"""The forget benchmark's summary: a few lines for the terminal, a markdown page for docs/."""
from __future__ import annotations

from typing import Any


def _cell(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def render_text(doc: dict[str, Any]) -> str:
    lines = [f"{doc['stream']}: forgot source s0 ({doc['forgotten_events']:,} events, class "
             f"{doc['forgotten_class']!r}) in {doc['forget_seconds']:.2f} s",
             f"  forgotten class accuracy {doc['forgotten_class_accuracy_before']:.4f} -> "
             f"{doc['forgotten_class_accuracy']:.4f} (retrained: {doc['retrain_forgotten_class_accuracy']:.4f})",
             f"  retained accuracy {doc['retained_accuracy_before']:.4f} -> {doc['retained_accuracy_after']:.4f} "
             f"(drop {doc['retained_accuracy_drop']:+.4f}; retrained: {doc['retrain_retained_accuracy']:.4f})",
             f"  membership-inference AUC {doc['mia_auc_before']:.4f} -> {doc['mia_auc']:.4f} "
             f"(retrained: {doc['retrain_mia_auc']:.4f})"]
    lines += [f"  target {name}: {'met' if ok else 'NOT met'}" for name, ok in doc["targets"].items()]
    return "\n".join(lines)


def render_markdown(doc: dict[str, Any]) -> str:
    head = [f"# Forgetting on request: {doc['stream']}", "",
            f"`lifelong bench --forget` (seed {doc['seed']}): {doc['events']:,} training events learned in stream "
            f"order by the daemon's learner; source `s0` sent every event of class `{doc['forgotten_class']}` and a "
            f"tenth of the others ({doc['forgotten_events']:,} events, {doc['forgotten_items']:,} replay items). One "
            f"request forgot `s0`; the reference retrained the same learner without its events.", "",
            "| figure | before | after forgetting | retrained without s0 |", "|---|---|---|---|",
            f"| accuracy on the forgotten class | {_cell(doc['forgotten_class_accuracy_before'])} | "
            f"{_cell(doc['forgotten_class_accuracy'])} | {_cell(doc['retrain_forgotten_class_accuracy'])} |",
            f"| accuracy on the other classes | {_cell(doc['retained_accuracy_before'])} | "
            f"{_cell(doc['retained_accuracy_after'])} | {_cell(doc['retrain_retained_accuracy'])} |",
            f"| membership-inference AUC | {_cell(doc['mia_auc_before'])} | {_cell(doc['mia_auc'])} | "
            f"{_cell(doc['retrain_mia_auc'])} |",
            f"| seconds | learning {doc['learn_seconds']} | request {doc['forget_seconds']} | "
            f"retraining {doc['retrain_seconds']} |", "",
            f"Retained accuracy drop: {doc['retained_accuracy_drop']:+.4f}. The refit trained on "
            f"{doc['refit_items']:,} retained items. Classes removed: {', '.join(doc['classes_removed']) or 'none'}.",
            "", "| target | met |", "|---|---|"]
    head += [f"| {name.replace('|', chr(92) + '|')} | {'yes' if ok else '**no**'} |" for name, ok in doc["targets"].items()]
    return "\n".join(head) + "\n"
