"""``lifelong report``: plots and a markdown summary from a checkpoint, for people without Grafana.

It reads the continual-evaluation log saved in the checkpoint: accuracy on
each segment's holdout at every evaluation, for the served (EMA) and the live
model, with the drift peaks and consolidations marked.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..monitoring.evaluator import ContinualEvaluator
from ..monitoring.history import EvaluationLog
from .checkpoint import Checkpointer


def _load(checkpoint_dir: Path) -> tuple[EvaluationLog, dict[int, int], int]:
    ckpt = Checkpointer(checkpoint_dir).load()
    if ckpt is None:
        raise FileNotFoundError(f"no checkpoint in {checkpoint_dir}")
    if "eval_log" not in ckpt.parts:
        raise ValueError(f"the checkpoint in {checkpoint_dir} has no evaluation log (evaluation disabled?)")
    log = EvaluationLog()
    log.load_state_dict(*ckpt.parts["eval_log"])
    evaluator = ContinualEvaluator()
    evaluator.load_state_dict(*ckpt.parts["evaluator"])
    events = int(ckpt.parts["learner"][1].get("events_learned", 0))
    return log, evaluator.segment_starts(), events


def _plot(log: EvaluationLog, starts: dict[int, int], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [m for m in ("serving", "live") if m in log.models] or log.models
    fig, axes = plt.subplots(len(models), 1, figsize=(11, 3.6 * len(models)), sharex=True, squeeze=False)
    cmap = plt.get_cmap("tab10")
    for ax, model in zip(axes[:, 0], models):
        for sid, (x, y) in sorted(log.series(model).items()):
            ax.plot(x, y, marker=".", lw=1.2, color=cmap(sid % 10), label=f"segment {sid}")
        for events, signal in log.marks:
            ax.axvline(events, color="grey" if signal == "peak" else "tab:green", lw=0.8,
                       ls=":" if signal == "peak" else "--")
        for sid, start in starts.items():
            if start:
                ax.annotate(f"s{sid}", (start, 1.0), xycoords=("data", "axes fraction"), fontsize=7, va="bottom")
        ax.set_ylabel(f"{model}: holdout accuracy")
        ax.grid(alpha=0.3)
    axes[0, 0].set_title("accuracy on each segment's holdout; dotted: drift peaks (new segment), dashed: consolidations")
    axes[-1, 0].set_xlabel("events learned")
    axes[0, 0].legend(fontsize=7, ncol=6, loc="lower left")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _summary(log: EvaluationLog, starts: dict[int, int], events: int) -> str:
    lines = ["# lifelong report", "", f"{events:,} events learned; {len(starts)} segments kept; "
             f"{sum(1 for _, s in log.marks if s == 'peak')} drift peaks and "
             f"{sum(1 for _, s in log.marks if s == 'consolidation')} consolidations logged.", "",
             "| model | segment | opened at | latest accuracy | lowest after it ended |", "|---|---|---:|---:|---:|"]
    for model in log.models:
        series = log.series(model)
        for sid, (x, y) in sorted(series.items()):
            nxt = min((s for i, s in starts.items() if i > sid), default=None)
            after = y[x >= nxt] if nxt is not None else np.zeros(0)
            low = f"{after.min():.3f}" if len(after) else "(current)"
            lines.append(f"| {model} | {sid} | {starts.get(sid, 0):,} | {y[-1]:.3f} | {low} |")
    lines += ["", "![accuracy per segment over time](accuracy.png)", ""]
    return "\n".join(lines)


def write_report(checkpoint_dir: str | Path, out_dir: str | Path) -> Path:
    """Write ``accuracy.png`` and ``report.md`` into ``out_dir``; returns the markdown path."""
    log, starts, events = _load(Path(checkpoint_dir))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _plot(log, starts, out / "accuracy.png")
    path = out / "report.md"
    path.write_text(_summary(log, starts, events))
    return path
