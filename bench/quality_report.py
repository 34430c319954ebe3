"""The benchmark's report: results table, the targets in words, and accuracy-over-time plots (PNG)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

COLUMNS = (("final_accuracy", "final acc"), ("gap_to_offline", "vs offline"), ("a_auc", "A_auc"), ("forgetting", "forgetting"),
           ("min_acc", "min-ACC"), ("wc_acc", "WC-ACC"), ("stability_gap", "stability gap"),
           ("prequential_accuracy", "prequential"), ("served_prequential_accuracy", "prequential (scored)"),
           ("events_per_s", "events/s"), ("memory_bytes", "memory"))
PLOT_SEGMENTS = "accuracy_per_segment.png"
PLOT_GAP = "past_accuracy.png"


def _num(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _bytes(n: int | None) -> str:
    if n is None or n < 0:
        return "n/a"
    for unit, size in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def cell(key: str, v: Any) -> str:
    if key == "memory_bytes":
        return _bytes(v)
    if key == "events_per_s":
        return "n/a" if v is None else f"{v:,.0f}"
    return _num(v)


def _verdict(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


def _check(label: str, v: float | None, op: str, bound: float | None, note: str = "") -> str:
    if v is None or bound is None:
        return f"{label}: not measured by this run{note}."
    ok = v >= bound - 1e-9 if op == ">=" else v <= bound + 1e-9
    return f"{label}: {_verdict(ok)} (measured {_num(v)}, bound {_num(bound)}{note})."


def targets(doc: dict[str, Any]) -> list[str]:
    """One sentence per target (the quality issue's): met or missed with the numbers, or why not measured."""
    res, stream = doc["learners"], doc["stream"]
    life, live, off, er = (res.get(k) or {} for k in ("lifelong", "lifelong-live", "offline", "er"))
    ref = off.get("final_accuracy")
    out = []
    if not life:
        return ["lifelong was not run: no target measured."]
    need = "" if ref is not None else " (needs offline in --learners)"
    out.append(_check("served final accuracy >= offline - 0.01", life.get("final_accuracy"), ">=",
                      None if ref is None else ref - 0.01, need))
    out.append(_check("served forgetting <= 0.03", life.get("forgetting"), "<=", 0.03))
    out.append(_check("served min-ACC >= offline - 0.03", life.get("min_acc"), ">=",
                      None if ref is None else ref - 0.03, need))
    out.append(_check("served final accuracy >= er's at this budget", life.get("final_accuracy"), ">=",
                      er.get("final_accuracy"), "" if er else " (needs er)"))
    if stream == "clinc150" and not doc.get("memory_budget_bytes"):
        for key, op, bound in (("final_accuracy", ">=", 0.945), ("forgetting", "<=", 0.02), ("min_acc", ">=", 0.92)):
            out.append(_check(f"CLINC150 served {key} {op} {bound}", life.get(key), op, bound))
    if stream.startswith("fashion-mnist"):
        # The frozen encoder is the linear top on its pooled taps (lifelong-pooled); lifelong itself
        # is plastic below the tap by default, and must beat the joint-training reference on frozen taps.
        frozen = res.get("lifelong-pooled") or {}
        out.append(_check("Fashion-MNIST served final accuracy >= 0.83 with the frozen encoder (lifelong-pooled)",
                          frozen.get("final_accuracy"), ">=", 0.83, "" if frozen else " (needs lifelong-pooled)"))
        out.append(_check("Fashion-MNIST served final accuracy, plastic below the tap, >= offline on the frozen taps",
                          life.get("final_accuracy"), ">=", ref, need))
    if stream in ("elec2", "weather"):
        for base in ("river-arf", "river-logreg"):
            other = (res.get(base) or {}).get("prequential_accuracy")
            out.append(_check(f"{stream} prequential >= {base}", life.get("prequential_accuracy"), ">=", other,
                              "" if other is not None else f" (needs {base})"))
    if live.get("stability_gap") is not None and life.get("stability_gap") is not None:
        gap = live["stability_gap"]
        out.append(_check("served stability gap <= half the live model's", life["stability_gap"], "<=",
                          max(0.5 * gap, 0.0), f"; live {_num(gap)}"))
    return out


def _stats_sentence(doc: dict[str, Any]) -> str:
    horizon = doc.get("feature_horizon_events")
    if horizon is None:
        return ""
    how = f"follow the stream over about {horizon:,} events" if horizon else "are frozen after the warm-up"
    return f" The lifelong learners encode raw features themselves; their feature statistics {how}."


def markdown(doc: dict[str, Any]) -> str:
    res = doc["learners"]
    budget = doc.get("memory_budget_bytes")
    lines = [f"# Benchmark: {doc['stream']}", "", doc["protocol"], "",
             f"{doc['events']:,} training events in {doc['segments']} segments, {doc['test_events']:,} test events; "
             f"seed {doc['seed']}; memory budget {_bytes(budget) if budget else 'default (64 MiB)'}; encoder on "
             f"{doc['device']}; micro-batches of {doc['batch_size']}; evaluations every {doc['eval_every']:,} "
             f"events, at every true boundary, and after the first {doc['gap_probes']} micro-batches of each new "
             f"segment.{_stats_sentence(doc)} Encoding took {doc['encode_seconds']:.0f} s, the whole run "
             f"{doc['total_seconds']:.0f} s.", "",
             "| learner | " + " | ".join(title for _, title in COLUMNS) + " |",
             "|---|" + "---:|" * len(COLUMNS)]
    for name, r in res.items():
        lines.append(f"| {name} | " + " | ".join(cell(k, r.get(k)) for k, _ in COLUMNS) + " |")
    lines += ["", "## Targets", ""] + [f"- {t}" for t in targets(doc)]
    lines += ["", "## Plots", "",
              f"![accuracy on each segment's test events over the stream]({PLOT_SEGMENTS})", "",
              "Accuracy on each segment's test events over the stream, one panel per learner; dotted lines mark "
              "the true boundaries.", "",
              f"![accuracy on the segments before the latest boundary]({PLOT_GAP})", "",
              "Accuracy on the segments before the latest boundary, from that boundary to the next: the dip right "
              "after each boundary is the stability gap.", "",
              "## Definitions", "",
              "Accuracies are pooled over the test events named. *final acc*: all test events after the stream. "
              "*A_auc*: mean accuracy on the seen segments over the periodic and boundary evaluations. "
              "*forgetting*: mean over segments but the last of best accuracy during the stream minus final. "
              "*min-ACC*: mean over past segments of the lowest accuracy at any evaluation after the segment "
              "ended. *WC-ACC*: current / K + (1 - 1/K) min-ACC at the end. *stability gap*: mean over true "
              "boundaries of the accuracy on the earlier segments at the boundary minus their lowest accuracy at "
              "the evaluations up to the next boundary (signed). *prequential*: accuracy of the prediction each "
              "training event got just before it was learned (`StepStats.correct`: for lifelong that is the live "
              "model's). *prequential (scored)*: the same with the scored model's own prediction (for lifelong "
              "the served EMA snapshot, which is what the service answers with; elsewhere equal to prequential). "
              "*events/s*: learned events per second of learning (encoding and evaluation excluded). *memory*: "
              "the learner's own estimate of its bytes (for river, `_raw_memory_usage`). `lifelong` is scored "
              "through its served (EMA) snapshot and `lifelong-live` through the same run's live model.", ""]
    return "\n".join(lines)


def plots(out: Path, doc: dict[str, Any], histories: dict[str, list[dict[str, Any]]]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(histories)
    k, bounds = doc["segments"], doc["boundaries"][:-1]
    cols = min(3, max(1, len(names)))
    rows = math.ceil(len(names) / cols) if names else 1
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.4 * rows), squeeze=False, sharey=True)
    cmap = plt.get_cmap("tab10" if k <= 10 else "tab20")
    for ax, name in zip(axes.flat, names):
        hist = histories[name]
        for j in range(k):
            pts = [(e["events"], e["acc"][j]) for e in hist if e["acc"][j] is not None]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker=".", ms=3, lw=1, color=cmap(j % cmap.N), label=doc["segment_names"][j])
        for b in bounds:
            ax.axvline(b, color="grey", ls=":", lw=0.8)
        final = doc["learners"].get(name, {}).get("final_accuracy")
        ax.set_title(f"{name} (final {_num(final)})", fontsize=10)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("events learned")
        ax.grid(alpha=0.2)
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    axes[0][0].set_ylabel("test accuracy")
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles and k <= 20:
        fig.legend(handles, labels, loc="lower center", ncol=min(k, 10), fontsize=8, frameon=False)
    fig.suptitle(f"{doc['stream']}: accuracy per segment over the stream", fontsize=11)
    fig.tight_layout(rect=(0, 0.06 if k <= 10 else 0.1, 1, 0.97))
    p1 = out / PLOT_SEGMENTS
    fig.savefig(p1, dpi=110)
    plt.close(fig)

    # Top: every learner; bottom: zoomed on the learners within 0.1 of the best one's low point.
    curves: dict[str, list[tuple[list[int], list[float]]]] = {}
    for name in names:
        hist, sizes = histories[name], doc.get("test_sizes")
        marks = [n for n, e in enumerate(hist) if e["boundary"] or e["final"]]
        curves[name] = [([e["events"] for e in hist[a:b + 1]],
                         [_pooled(e["acc"], sizes, range(hist[a]["segment"] + 1)) for e in hist[a:b + 1]])
                        for a, b in zip(marks, marks[1:])]
    lows = {n: min((y for _, ys in c for y in ys if not math.isnan(y)), default=math.nan) for n, c in curves.items()}
    best = max((v for v in lows.values() if not math.isnan(v)), default=math.nan)
    close = [n for n in names if not math.isnan(lows[n]) and lows[n] >= best - 0.1]
    fig, axes2 = plt.subplots(2, 1, figsize=(10, 7.5))
    for ax, shown, title in ((axes2[0], names, "all learners"),
                             (axes2[1], close, "zoomed: learners within 0.1 of the best low point")):
        for i, name in enumerate(names):
            if name not in shown:
                continue
            for m, (xs, ys) in enumerate(curves[name]):
                ax.plot(xs, ys, marker=".", ms=3, lw=1.2, color=plt.get_cmap("tab10")(i % 10),
                        label=name if m == 0 else None)
        for b in bounds:
            ax.axvline(b, color="grey", ls=":", lw=0.8)
        ax.set_xlabel("events learned")
        ax.set_ylabel("accuracy on earlier segments")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.2)
        if shown:
            ax.legend(fontsize=8)
    fig.suptitle(f"{doc['stream']}: accuracy on the segments before the latest boundary, up to the next one "
                 "(the dips are the stability gap)", fontsize=11)
    fig.tight_layout()
    p2 = out / PLOT_GAP
    fig.savefig(p2, dpi=110)
    plt.close(fig)
    return [p1, p2]


def _pooled(acc: Sequence[float | None], sizes: Sequence[int] | None, segs: Sequence[int]) -> float:
    pairs = [(acc[j], sizes[j] if sizes else 1) for j in segs if acc[j] is not None]
    total = sum(n for _, n in pairs)
    return sum(a * n for a, n in pairs) / total if total else float("nan")


def write_report(out: Path, doc: dict[str, Any], histories: dict[str, list[dict[str, Any]]]) -> None:
    plots(out, doc, histories)
    (out / "report.md").write_text(markdown(doc))
