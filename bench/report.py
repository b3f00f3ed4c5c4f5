"""The benchmark's result: one :class:`Row` per bundle (and the Keras reference), with
Pareto fronts, the device recommendation and the writers for JSON, CSV and Markdown.

Nothing here measures anything or imports TensorFlow; it turns numbers into tables.

Example:
    >>> report = run_bench("bundles", "runs/scenes", "bench-out")
    >>> print(format_table(report))
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fuselite.files import write_atomic

OK, CHECK_FAILED, LOAD_FAILED = "ok", "check_failed", "load_failed"
STATUS_ICONS = {OK: "✅", CHECK_FAILED: "❎", LOAD_FAILED: "❌"}
METRIC_TITLES = {"top1": "top-1", "mAP": "mAP", "micro_f1": "micro-F1", "pointing_game": "pointing game"}
REPORT_FILES = ("report.json", "report.csv", "report.md")
CSV_COLUMNS = (
    "name", "kind", "variant", "file", "status", "message", "size_bytes", "gzip_bytes", "model_bytes",
    "sparsity", "task", "metric_name", "metric", "top1", "mAP", "micro_f1", "pointing_game", "delta_pt",
    "latency_p50_ms", "latency_p90_ms", "invoke_p50_ms", "fps", "sustained_fps", "cpu_ms_per_frame",
    "cores_used", "load_ms", "peak_memory_mb",
    "model_memory_mb", "pareto_size", "pareto_latency", "fits", "recommended",
)


@dataclass
class Row:
    """One benchmarked bundle (or the Keras reference).

    Attributes:
        name: What the table shows: the variant, or the file name when variants repeat.
        kind: ``"bundle"`` or ``"reference"`` (the Keras model; never recommended).
        variant: The manifest's variant (``""`` when the manifest is unreadable).
        file: The bundle file (or the run directory for the reference).
        status: ``ok`` (✅), ``check_failed`` (❎: loaded, but a numeric or compatibility
            check failed) or ``load_failed`` (❌: not read, not loaded, or no usable
            measurement: a crash, a hang past the timeout, NaN scores, repeated labels).
        message: Why the status is not ``ok``; notes otherwise.
        size_bytes: The whole bundle file's size in bytes.
        gzip_bytes: That file's size after ``gzip -9`` (0 when it was not read).
        model_bytes: The image model flatbuffer alone (``manifest.model_size``).
        sparsity: Share of zero weights in the image model's kernels (from the manifest).
        task: ``"single"`` (metric top-1) or ``"multi"`` (mAP and micro-F1 at the bundle's
            thresholds).
        metric_name: The primary metric (``top1`` or ``mAP``), the one the gate uses.
        metrics: Every task metric, 0 to 1 (``fuselite.metrics``, as in ``metrics.json``).
        delta_pt: Primary metric minus the Keras reference's, in percentage points.
        latency_p50_ms: Median milliseconds per frame (preprocess + invoke + scoring).
        latency_p90_ms: 90th percentile of the same.
        invoke_p50_ms: Median milliseconds of the interpreter's ``invoke`` alone.
        fps: ``1000 / latency_p50_ms``: single-frame speed; it overstates throughput when
            the process does not get its cores (compare ``sustained_fps``).
        sustained_fps: Frames per second of ``fuselite run``'s loop (the Annotator: preprocess,
            invoke, scoring) run frame after frame for the sustain time: what one stream gets.
        cpu_ms_per_frame: Process CPU time (every thread) per frame over that run.
        cores_used: Process CPU time / wall time over that run: the cores it actually got.
        load_ms: Reading, verifying and loading the bundle into the interpreter.
        peak_memory_mb: Peak resident memory of a process that loads and runs the bundle.
        model_memory_mb: The part of it above the process's footprint before loading.
        pareto_size: On the metric-vs-size Pareto front.
        pareto_latency: On the metric-vs-latency Pareto front.
        fits: With ``--device``: the reasons it does not fit (empty when it fits).
        recommended: The variant recommended for ``--device``.
        groups: Per tag group, its top-1 and confusion matrix
            (:func:`fuselite.bench.groups.group_metrics`).
        unseen_tags: Tags of the test data that are not among this bundle's labels ->
            how many items carry each (they score nothing).
    """

    name: str
    kind: str = "bundle"
    variant: str = ""
    file: str = ""
    status: str = OK
    message: str = ""
    size_bytes: int = 0
    gzip_bytes: int = 0
    model_bytes: int = 0
    sparsity: float | None = None
    task: str = ""
    metric_name: str = ""
    metrics: dict = field(default_factory=dict)
    delta_pt: float | None = None
    latency_p50_ms: float | None = None
    latency_p90_ms: float | None = None
    invoke_p50_ms: float | None = None
    fps: float | None = None
    sustained_fps: float | None = None
    cpu_ms_per_frame: float | None = None
    cores_used: float | None = None
    load_ms: float | None = None
    peak_memory_mb: float | None = None
    model_memory_mb: float | None = None
    pareto_size: bool = False
    pareto_latency: bool = False
    fits: list[str] | None = None
    recommended: bool = False
    groups: dict = field(default_factory=dict)
    unseen_tags: dict = field(default_factory=dict)

    @property
    def metric(self) -> float | None:
        """The primary metric, or ``None`` when it was not measured."""
        return self.metrics.get(self.metric_name)

    @property
    def frame_ms(self) -> float | None:
        """Milliseconds per frame for comparisons: sustained when measured, else the p50."""
        if _number(self.sustained_fps) and self.sustained_fps > 0:
            return 1000.0 / self.sustained_fps
        return self.latency_p50_ms

    @property
    def throughput(self) -> float | None:
        """Frames per second for the device limit: sustained when measured, else ``1000 / p50``."""
        return self.sustained_fps if _number(self.sustained_fps) else self.fps

    @property
    def icon(self) -> str:
        """✅, ❎ or ❌."""
        return STATUS_ICONS[self.status]

    def to_dict(self) -> dict:
        """JSON-ready form (non-finite numbers become ``None``)."""
        data = {k: _finite_or_none(v) for k, v in asdict(self).items()}
        data["metrics"] = {k: _finite_or_none(v) for k, v in self.metrics.items()}
        data["metric"] = _finite_or_none(self.metric)
        return data


@dataclass
class Report:
    """A whole benchmark.

    Attributes:
        rows: The reference first (if any), then bundles from largest to smallest.
        data: What the metrics were computed on (one line).
        samples: How many images were scored.
        threads: Interpreter threads.
        warmup: Untimed runs before the timed ones.
        runs: Timed runs per bundle.
        machine: CPU, core count and Python version of this host.
        interpreter: The TFLite interpreter package that ran the bundles.
        created: UTC time, ISO 8601.
        bundle_dir: Where the bundles were found.
        device: The ``--device`` profile name, or ``None``.
        limits: That profile's limits (``max_bundle_mb``, ``min_fps``, ``max_memory_mb``).
        min_accuracy: The ``--min-accuracy`` gate, or ``None``.
        files: Output name -> path, once written.
        sustain_s: Seconds of ``fuselite run``'s loop per bundle (0: not measured).
        timeout_s: The per-step time budget of a bundle's measurement.
        frame_size: ``[width, height]`` of the sustained loop's frames (``None``: the data's).
        groups: The tag groups scored (name -> labels); each row has its results.
        warnings: Lines about the data the user should act on (tags no bundle knows).
    """

    rows: list[Row]
    data: str
    samples: int
    threads: int
    warmup: int
    runs: int
    machine: str
    interpreter: str
    created: str
    bundle_dir: str
    device: str | None = None
    limits: dict | None = None
    min_accuracy: float | None = None
    files: dict = field(default_factory=dict)
    sustain_s: float = 0.0
    timeout_s: float | None = None
    frame_size: list[int] | None = None
    groups: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def bundles(self) -> list[Row]:
        """The bundle rows (not the reference)."""
        return [r for r in self.rows if r.kind == "bundle"]

    @property
    def recommended(self) -> Row | None:
        """The row recommended for ``device``, if any fits."""
        return next((r for r in self.rows if r.recommended), None)

    @property
    def best(self) -> Row | None:
        """The ✅ bundle with the highest primary metric."""
        ok = [r for r in self.bundles if r.status == OK and _number(r.metric)]
        return max(ok, key=lambda r: r.metric) if ok else None

    def gate_passed(self) -> bool | None:
        """Whether some ✅ bundle reaches ``min_accuracy`` (``None`` without a gate)."""
        if self.min_accuracy is None:
            return None
        return any(r.status == OK and _number(r.metric) and r.metric >= self.min_accuracy
                   for r in self.bundles)

    def to_dict(self) -> dict:
        """JSON-ready form."""
        data = asdict(self)
        data["rows"] = [r.to_dict() for r in self.rows]
        data["recommended"] = self.recommended.name if self.recommended else None
        data["gate_passed"] = self.gate_passed()
        data["files"] = {k: str(v) for k, v in self.files.items()}
        return data


# --- analysis ----------------------------------------------------------------------


def pareto_front(points: list[tuple[float, float]]) -> list[bool]:
    """For ``(cost, value)`` points: which no other point beats (cost <= and value >=, one strictly)."""
    front = []
    for cost, value in points:
        dominated = any(
            c <= cost and v >= value and (c < cost or v > value) for c, v in points
        )
        front.append(not dominated)
    return front


def mark_pareto(rows: list[Row]) -> None:
    """Sets ``pareto_size`` and ``pareto_latency`` over the ✅ bundles with a metric.

    The latency front uses :attr:`Row.frame_ms`: sustained ms per frame where measured.
    """
    candidates = [r for r in rows if r.kind == "bundle" and r.status == OK and _number(r.metric)]
    for r in candidates:
        r.pareto_size = r.pareto_latency = False
    by_size = pareto_front([(r.size_bytes, r.metric) for r in candidates])
    timed = [r for r in candidates if _number(r.frame_ms)]
    by_latency = pareto_front([(r.frame_ms, r.metric) for r in timed])
    for r, on_front in zip(candidates, by_size):
        r.pareto_size = on_front
    for r, on_front in zip(timed, by_latency):
        r.pareto_latency = on_front


def fit_problems(row: Row, limits: dict) -> list[str]:
    """Why ``row`` does not fit a profile's limits (empty when it fits)."""
    problems = []
    size_mb = row.size_bytes / 1e6
    if size_mb > limits["max_bundle_mb"]:
        problems.append(f"file {size_mb:.1f} MB > {limits['max_bundle_mb']:g} MB")
    if not _number(row.throughput) or row.throughput < limits["min_fps"]:
        problems.append(f"{_fmt(row.throughput, '.0f')} FPS < {limits['min_fps']:g}")
    if not _number(row.peak_memory_mb) or row.peak_memory_mb > limits["max_memory_mb"]:
        problems.append(f"memory {_fmt(row.peak_memory_mb, '.0f')} MB > {limits['max_memory_mb']:g} MB")
    return problems


def recommend(rows: list[Row], limits: dict) -> Row | None:
    """Marks the fit of every bundle and the recommended one: the best metric among the ✅
    bundles that fit, then the smaller file, then the lower latency."""
    for r in rows:
        r.recommended = False
        r.fits = fit_problems(r, limits) if r.kind == "bundle" and r.status != LOAD_FAILED else None
    fitting = [r for r in rows if r.kind == "bundle" and r.status == OK and r.fits == [] and _number(r.metric)]
    if not fitting:
        return None
    best = min(fitting, key=lambda r: (-round(r.metric, 6), r.size_bytes, r.frame_ms or math.inf))
    best.recommended = True
    return best


# --- writing -----------------------------------------------------------------------


def write_report(report: Report, out_dir: Path) -> dict[str, Path]:
    """Writes ``report.json``, ``report.csv`` and ``report.md`` into ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    paths = {name: out_dir / name for name in REPORT_FILES}
    report.files.update(paths)
    write_atomic(paths["report.json"], json.dumps(report.to_dict(), indent=1).encode())
    write_atomic(paths["report.csv"], to_csv(report).encode())
    write_atomic(paths["report.md"], (to_markdown(report) + "\n").encode())
    return paths


def to_csv(report: Report) -> str:
    """One line per row, the columns of :data:`CSV_COLUMNS`; empty cells where not measured."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in report.rows:
        data = row.to_dict()
        data.update({k: data["metrics"].get(k) for k in ("top1", "mAP", "micro_f1", "pointing_game")})
        data["fits"] = "" if row.fits is None else ("yes" if not row.fits else "; ".join(row.fits))
        writer.writerow({k: "" if data.get(k) is None else data[k] for k in CSV_COLUMNS})
    return buffer.getvalue()


def to_markdown(report: Report) -> str:
    """The report for people: a heading line, the table, then notes on every non-✅ row."""
    from fuselite.bench.groups import groups_markdown

    return "\n".join([_heading(report), "", format_table(report), *_notes(report), *groups_markdown(report)])


def format_table(report: Report) -> str:
    """The Markdown table alone, one line per row (what the CLI prints at the end)."""
    metric_names = _metric_columns(report.rows)
    delta = any(r.kind == "reference" for r in report.rows)
    header = ["", "variant", "file kB", "gzip kB", "model kB", "sparsity"]
    header += [f"{METRIC_TITLES.get(m, m)} %" for m in metric_names]
    header += ["Δ pt vs Keras"] if delta else []
    header += ["p50 ms", "p90 ms", "FPS 1/p50", "sust. FPS", "CPU ms/frame", "cores", "load ms", "peak MB",
               "Pareto"]
    header += [report.device] if report.device else []
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    for row in report.rows:
        lines.append("| " + " | ".join(_cells(row, metric_names, delta, bool(report.device))) + " |")
    return "\n".join(lines)


def _cells(row: Row, metric_names: list[str], delta: bool, device: bool) -> list[str]:
    name = f"{row.name} (reference)" if row.kind == "reference" else row.name
    cells = [row.icon, name, _kb(row.size_bytes), _kb(row.gzip_bytes), _kb(row.model_bytes),
             _percent(row.sparsity, ".0f")]
    cells += [_percent(row.metrics.get(m)) for m in metric_names]
    cells += [_fmt(row.delta_pt, "+.2f")] if delta else []
    cells += [
        _fmt(row.latency_p50_ms, ".2f"), _fmt(row.latency_p90_ms, ".2f"), _fmt(row.fps, ".0f"),
        _fmt(row.sustained_fps, ".0f"), _fmt(row.cpu_ms_per_frame, ".2f"), _fmt(row.cores_used, ".2f"),
        _fmt(row.load_ms, ".0f"), _fmt(row.peak_memory_mb, ".0f"), _pareto(row),
    ]
    cells += [_fit(row)] if device else []
    return cells


def _heading(report: Report) -> str:
    gate = ""
    if report.min_accuracy is not None:
        gate = f" · gate {100 * report.min_accuracy:.2f}%: {'passed' if report.gate_passed() else 'FAILED'}"
    device = ""
    if report.device and report.limits:
        lim = report.limits
        device = (f" · device `{report.device}`: file ≤ {lim['max_bundle_mb']:g} MB, "
                  f"≥ {lim['min_fps']:g} FPS, memory ≤ {lim['max_memory_mb']:g} MB")
    return (
        f"**fuselite bench** — {report.data}; {report.threads} thread(s), {report.warmup} warm-up + "
        f"{report.runs} timed frames per bundle{_sustain_text(report)} · {report.interpreter} · {report.machine} · "
        f"{report.created[:10]}{device}{gate}"
    )


def _notes(report: Report) -> list[str]:
    notes = [f"- ⚠️ {line}" for line in report.warnings]
    notes += [f"- {r.icon} **{r.name}**: {r.message}" for r in report.rows if r.message]
    if report.device:
        rec = report.recommended
        notes.append(f"- ⭐ recommended for `{report.device}`: **{rec.name}**" if rec
                     else f"- no ✅ bundle fits `{report.device}`")
        notes.append("- FPS and memory are measured on this host, not on the board: "
                     "a board's CPU is slower, so check FPS there before relying on it.")
    notes.append("- p50/p90 ms and FPS 1/p50: single frames through the runtime (resize, colour order, "
                 "quantize, invoke, score every label), each timed alone after the warm-up runs; "
                 "FPS 1/p50 is 1000 / p50, a best case.")
    notes.append(_sustained_note(report))
    notes.append("- file kB: the whole bundle file (image model, text encoder, tokenizer, label "
                 "embeddings); model kB: the image model alone (manifest model_size). Pareto: on the "
                 "metric-vs-size and/or metric-vs-latency front among ✅ bundles (latency: sustained "
                 "ms per frame where measured).")
    return ["", *notes]


def _sustain_text(report: Report) -> str:
    return f", {report.sustain_s:g} s sustained" if report.sustain_s else ""


def _frames_text(report: Report) -> str:
    if not report.frame_size:
        return " on the data's images"
    return f" on {report.frame_size[0]}×{report.frame_size[1]} frames (resized as a camera's are)"


def _sustained_note(report: Report) -> str:
    if not report.sustain_s:
        return "- sust. FPS, CPU ms/frame, cores: not measured (--sustain 0)."
    return (f"- sust. FPS: frames per second of `fuselite run`'s loop (the Annotator: preprocess + invoke + "
            f"scoring, frame after frame) over {report.sustain_s:g} s per bundle{_frames_text(report)}, what one "
            "stream gets on this "
            "host now; it is the FPS the device fit uses. CPU ms/frame: the process's CPU time (every "
            "thread) per frame; cores: CPU time / wall time, the cores the process actually got.")


def _metric_columns(rows: list[Row]) -> list[str]:
    names: list[str] = []
    for row in rows:
        for name in row.metrics:
            if name in METRIC_TITLES and name not in names:
                names.append(name)
    return names


def _pareto(row: Row) -> str:
    return ", ".join(n for n, on in (("size", row.pareto_size), ("latency", row.pareto_latency)) if on)


def _fit(row: Row) -> str:
    if row.recommended:
        return "⭐ recommended"
    if row.fits is None:
        return "-"
    return "fits" if not row.fits else "✗ " + "; ".join(row.fits)


def _kb(size: int) -> str:
    return f"{size / 1000:,.1f}" if size else "-"


def _percent(value: float | None, spec: str = ".2f") -> str:
    return format(100 * value, spec) if _number(value) else "-"


def _fmt(value: float | None, spec: str) -> str:
    return format(value, spec) if _number(value) else "-"


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _finite_or_none(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
