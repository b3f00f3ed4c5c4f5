"""``pareto.png``: the task metric against file size and against latency, fronts marked.

Two panels, one point per bundle, labelled with its variant.  The latency panel places
each bundle at its sustained milliseconds per frame (``1000 / sustained FPS``, the loop
of ``fuselite run``) where that was measured, with a grey tick at its single-frame
median (p50) joined to it, so the gap between the two is visible.  The Pareto front (no
other bundle is both at least as accurate and at least as small, or fast) is a line
through its points; bundles that failed a check are hollow, the Keras reference is a
grey star, the ``--device`` recommendation is ringed.  Needs matplotlib (the
``[train]`` extra); it is imported here only.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from fuselite.bench.report import CHECK_FAILED, LOAD_FAILED, METRIC_TITLES, OK, Report, Row

log = logging.getLogger(__name__)

FRONT_COLOR, POINT_COLOR, FAILED_COLOR, REFERENCE_COLOR, RECOMMENDED_COLOR = (
    "#d62728", "#1f77b4", "#ff7f0e", "#555555", "#2ca02c",
)
NEAR = 0.012  # points closer than this (share of the axes) share one label
CHAR_WIDTH, LABEL_HEIGHT = 0.0115, 0.045  # of a label at 8.5 pt in a panel of this figure (generous)


def plot_pareto(report: Report, path: Path) -> Path:
    """Draws the two panels into ``path`` (PNG) and returns it."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

    metric = _main_metric(report.rows)
    rows = [r for r in report.rows if r.status != LOAD_FAILED and r.metrics.get(metric) is not None]
    fig = Figure(figsize=(13, 5.6), dpi=110)
    axes = fig.subplots(1, 2)
    panels = (
        ("size_bytes", lambda r: r.size_bytes / 1000, "pareto_size", "bundle file size (kB)"),
        ("latency", lambda r: r.frame_ms, "pareto_latency", _latency_label(rows)),
    )
    for ax, (_, x_of, front_attr, xlabel) in zip(axes, panels):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{METRIC_TITLES.get(metric, metric)} (%)  ↑ better")
        _panel(ax, rows, metric, x_of, front_attr)
    _p50_ticks(axes[1], rows, metric)
    _legend(fig, rows, report.device)
    axes[0].set_title("accuracy vs size  (← smaller)")
    axes[1].set_title("accuracy vs speed  (← faster)")
    fig.suptitle(_title(report, metric), fontsize=10)
    footnote = _footnote(report)
    if footnote:
        fig.text(0.01, 0.01, footnote, fontsize=8, color="#444444")
    fig.tight_layout(rect=(0, 0.1 if footnote else 0.07, 1, 0.95))
    path = Path(path)
    fig.savefig(path)
    log.info("wrote %s", path)
    return path


def _panel(ax, rows: list[Row], metric: str, x_of, front_attr: str) -> None:
    points = [(r, x_of(r), 100 * r.metrics[metric]) for r in rows if x_of(r) is not None]
    if not points:
        ax.text(0.5, 0.5, "nothing measured", ha="center", va="center", transform=ax.transAxes)
        return
    front = sorted((x, y) for r, x, y in points if getattr(r, front_attr))
    if front:
        ax.plot(*zip(*front), "-", color=FRONT_COLOR, lw=1.8, zorder=1, label="Pareto front")
    for r, x, y in points:
        _marker(ax, r, x, y, getattr(r, front_attr))
    xs = [x for _, x, _ in points]
    if min(xs) > 0 and max(xs) / min(xs) > 20:
        from matplotlib.ticker import FuncFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xlabel(ax.get_xlabel() + ", log scale")
    _pad_limits(ax, xs, [y for _, _, y in points])
    _labels(ax, points)
    ax.grid(True, alpha=0.3)


def _latency_label(rows: list[Row]) -> str:
    if any(r.sustained_fps for r in rows):
        return "ms per frame: ● sustained (fuselite run's loop), | single-frame p50"
    return "latency per frame, median (ms)"


def _p50_ticks(ax, rows: list[Row], metric: str) -> None:
    """A grey tick at each sustained point's single-frame p50, joined to the point."""
    for r in rows:
        if r.sustained_fps and r.latency_p50_ms is not None and r.frame_ms is not None:
            y = 100 * r.metrics[metric]
            ax.plot([r.latency_p50_ms, r.frame_ms], [y, y], "-", color="#999999", lw=0.9, zorder=1)
            ax.scatter([r.latency_p50_ms], [y], marker="|", s=90, color="#777777", zorder=2)
    if any(r.sustained_fps for r in rows):
        lows = [r.latency_p50_ms for r in rows if r.latency_p50_ms] + [r.frame_ms for r in rows if r.frame_ms]
        if ax.get_xscale() == "log":
            ax.set_xlim(min(lows) / 1.6, max(lows) * 1.6)
        else:
            ax.set_xlim(0.0, max(lows) * 1.15)


def _marker(ax, row: Row, x: float, y: float, on_front: bool) -> None:
    if row.kind == "reference":
        ax.scatter([x], [y], marker="*", s=180, color=REFERENCE_COLOR, zorder=3)
    elif row.status == CHECK_FAILED:
        ax.scatter([x], [y], s=60, facecolors="none", edgecolors=FAILED_COLOR, linewidths=1.8, zorder=3)
    else:
        ax.scatter([x], [y], s=60, color=FRONT_COLOR if on_front else POINT_COLOR, zorder=3)
    if row.recommended:
        ax.scatter([x], [y], s=320, facecolors="none", edgecolors=RECOMMENDED_COLOR, linewidths=2.2, zorder=2)


def _legend(fig, rows: list[Row], device: str | None) -> None:
    from matplotlib.lines import Line2D

    handles = []
    if any(r.pareto_size or r.pareto_latency for r in rows):
        handles.append(Line2D([], [], color=FRONT_COLOR, marker="o", lw=1.8, label="Pareto front"))
    if any(r.kind == "bundle" and r.status == OK and not (r.pareto_size and r.pareto_latency) for r in rows):
        handles.append(Line2D([], [], color=POINT_COLOR, marker="o", lw=0, label="dominated bundle"))
    if any(r.status == CHECK_FAILED for r in rows):
        handles.append(Line2D([], [], color=FAILED_COLOR, marker="o", mfc="none", lw=0, label="failed a check"))
    if any(r.kind == "reference" for r in rows):
        handles.append(Line2D([], [], color=REFERENCE_COLOR, marker="*", ms=12, lw=0, label="Keras reference"))
    if any(r.recommended for r in rows):
        handles.append(Line2D([], [], color=RECOMMENDED_COLOR, marker="o", ms=14, mfc="none", lw=0,
                              label=f"recommended for {device}"))
    if handles:
        fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 0.035), ncol=len(handles),
                   fontsize=8.5, frameon=False)


def _labels(ax, points: list[tuple[Row, float, float]]) -> None:
    """Labels every point (coinciding points share one), placed where no label or point is."""
    to_axes = ax.transAxes.inverted()
    located = [(tuple(to_axes.transform(ax.transData.transform((x, y)))), r, x, y) for r, x, y in points]
    groups: list[list] = []
    for item in sorted(located, key=lambda p: (-p[0][1], p[0][0])):
        group = next((g for g in groups if _near(g[0][0], item[0], NEAR)), None)
        if group is None:
            groups.append([item])
        else:
            group.append(item)
    dots = [where for where, *_ in located]
    boxes: list[tuple[float, float, float, float]] = []
    for group in groups:
        where, _, x, y = group[0]
        text = ", ".join(_label(r) for _, r, _, _ in group)
        box, far = _place(where, len(text), boxes, dots)
        boxes.append(box)
        arrow = {"arrowstyle": "-", "color": "#888888", "lw": 0.8} if far else None
        ax.annotate(text, (x, y), xytext=(box[0], box[1]), textcoords="axes fraction", fontsize=8.5,
                    ha="left", va="bottom", arrowprops=arrow, zorder=4,
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.85})


def _near(a: tuple[float, float], b: tuple[float, float], distance: float) -> bool:
    return abs(a[0] - b[0]) < distance and abs(a[1] - b[1]) < distance


def _place(where, chars: int, boxes: list, dots: list) -> tuple[tuple[float, float, float, float], bool]:
    """A free spot ``(left, bottom, width, height)`` in axes fraction for a label, and
    whether it is far enough from its point to need a leader line."""
    width, height = CHAR_WIDTH * chars + 0.01, LABEL_HEIGHT
    px, py = where
    candidates = [
        (px + 0.012, py + 0.015, False), (px + 0.012, py - height - 0.015, False),
        (px - 0.012 - width, py + 0.015, False), (px - 0.012 - width, py - height - 0.015, False),
        (px + 0.02, py + 0.07, True), (px + 0.02, py - height - 0.07, True),
        (px - 0.02 - width, py + 0.07, True), (px - 0.02 - width, py - height - 0.07, True),
        (px + 0.03, py + 0.13, True), (px + 0.03, py - height - 0.13, True),
    ]
    for left, bottom, far in candidates:
        box = (left, bottom, width, height)
        inside = left >= 0 and bottom >= 0 and left + width <= 1 and bottom + height <= 1
        free = not any(_overlap(box, other) for other in boxes) and not any(_covers(box, d) for d in dots)
        # The label's own point must be the one nearest to it, or a reader pairs it wrongly.
        own = _distance(box, where) <= min(_distance(box, d) for d in dots) + 1e-9
        if inside and free and own:
            return box, far
    left, bottom, far = candidates[0]
    return (min(max(left, 0.0), 1 - width), min(max(bottom, 0.0), 1 - height), width, height), far


def _distance(box, dot) -> float:
    dx = max(box[0] - dot[0], 0.0, dot[0] - box[0] - box[2])
    dy = max(box[1] - dot[1], 0.0, dot[1] - box[1] - box[3])
    return (dx * dx + dy * dy) ** 0.5


def _overlap(a, b) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def _covers(box, dot) -> bool:
    margin = 0.008
    return (box[0] - margin <= dot[0] <= box[0] + box[2] + margin
            and box[1] - margin <= dot[1] <= box[1] + box[3] + margin)


def _label(row: Row) -> str:
    name = "Keras" if row.kind == "reference" else row.name
    return f"{name} ★" if row.recommended else name


def _pad_limits(ax, xs: list[float], ys: list[float]) -> None:
    low, high = min(ys), max(ys)
    span = max(high - low, 0.5)
    ax.set_ylim(max(0.0, low - 0.25 * span), min(100.0 + 0.05 * span, high + 0.3 * span))
    if ax.get_xscale() == "log":
        ax.set_xlim(min(xs) / 1.6, max(xs) * 1.6)
    else:  # from zero, so "half the size" looks like half
        ax.set_xlim(0.0, max(xs) * 1.15)


def _main_metric(rows: list[Row]) -> str:
    names = Counter(r.metric_name for r in rows if r.metric_name)
    return names.most_common(1)[0][0] if names else "mAP"


def _title(report: Report, metric: str) -> str:
    return (
        f"fuselite bench: {METRIC_TITLES.get(metric, metric)} vs bundle size and latency — {report.data}\n"
        f"{report.threads} thread(s), {report.interpreter}, {report.machine}, {report.created[:10]}"
    )


def _footnote(report: Report) -> str:
    parts = []
    failed = [r.name for r in report.rows if r.status == LOAD_FAILED]
    if failed:
        parts.append(f"not plotted (failed, reasons in report.md): {', '.join(failed)}")
    unplotted = [r.name for r in report.rows if r.status != LOAD_FAILED and r.metric is None]
    if unplotted:
        parts.append(f"not plotted (no metric): {', '.join(unplotted)}")
    checked = [r.name for r in report.rows if r.status == CHECK_FAILED]
    if checked:
        parts.append(f"hollow = loaded but failed a check: {', '.join(checked)} (see report.md)")
    ok = [r for r in report.bundles if r.status == OK]
    if not ok:
        parts.append("no bundle passed its checks")
    return "; ".join(parts)


CONFUSION_CELL_IN = 0.42  # inches per label: counts of 4 digits stay legible at 30 labels
COUNTS_UP_TO = 40  # labels; past this the cells are too small for numbers, the colour remains


def plot_confusion(row: Row, group: str, report: Report, path: Path) -> Path:
    """``confusion-<group>.png``: ``row``'s confusion matrix of one tag group.

    Each cell shows its count; its colour is the count's share of its row (the tag's
    items), so a rare tag's mistakes show as clearly as a common one's.
    """
    import numpy as np
    from matplotlib.figure import Figure

    result = row.groups[group]
    labels, counts = result["labels"], np.asarray(result["matrix"], dtype=np.int64)
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    side = max(4.5, CONFUSION_CELL_IN * len(labels)) + 0.12 * max(len(label) for label in labels)
    fig = Figure(figsize=(side + 1.6, side + 0.9), dpi=110)
    ax = fig.subplots()
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0, aspect="equal")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03, label="share of the tag's items")
    ticks = range(len(labels))
    ax.set_xticks(ticks, labels, rotation=45, ha="right", rotation_mode="anchor", fontsize=_font(labels))
    ax.set_yticks(ticks, labels, fontsize=_font(labels))
    ax.set_xlabel("predicted (the group's highest-scoring label)")
    ax.set_ylabel("tag of the item")
    if len(labels) <= COUNTS_UP_TO:
        _cell_counts(ax, counts, shares, labels)
    ax.set_title(_confusion_title(row, group, result), fontsize=9.5)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    log.info("wrote %s", path)
    return path


def _font(labels: list[str]) -> float:
    return 9.0 if len(labels) <= 12 else 7.5 if len(labels) <= 24 else 6.5


def _cell_counts(ax, counts, shares, labels: list[str]) -> None:
    size = _font(labels) + (1.5 if len(labels) <= 12 else -0.5)  # few cells: room for larger digits
    for i in range(len(labels)):
        for j in range(len(labels)):
            if counts[i, j]:
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=size,
                        color="white" if shares[i, j] > 0.55 else "#222222")


def _confusion_title(row: Row, group: str, result: dict) -> str:
    top1 = "-" if result["top1"] is None else f"{100 * result['top1']:.1f}%"
    left = result["no_tag"] + result["several_tags"]
    return (f"tag group '{group}' · {row.name}: top-1 {top1} on {result['scored']} items"
            + (f"\n{left} left out: {result['no_tag']} without a tag of the group, "
               f"{result['several_tags']} with several" if left else ""))
