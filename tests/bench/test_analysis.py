"""Pareto fronts, device fit and recommendation, on hand-made rows (no models)."""

from __future__ import annotations

from fuselite.bench.report import (
    Report,
    Row,
    fit_problems,
    format_table,
    mark_pareto,
    pareto_front,
    recommend,
)

LIMITS = {"max_bundle_mb": 1.0, "min_fps": 10.0, "max_memory_mb": 100.0}


def _row(name, size, metric, ms, memory=50.0, status="ok", kind="bundle"):
    return Row(name=name, kind=kind, status=status, size_bytes=size, metric_name="mAP", metrics={"mAP": metric},
               latency_p50_ms=ms, fps=1000 / ms, peak_memory_mb=memory)


def test_pareto_front_keeps_points_nothing_beats():
    points = [(4, 0.90), (1, 0.89), (2, 0.85), (1, 0.80), (4, 0.90)]
    assert pareto_front(points) == [True, True, False, False, True]


def test_pareto_ignores_failed_bundles_and_the_reference():
    rows = [_row("fp32", 400, 0.90, 2.0), _row("int8", 100, 0.89, 1.0), _row("fp16", 200, 0.90, 3.0),
            _row("bad", 10, 0.99, 0.1, status="check_failed"), _row("keras", 900, 0.95, 9.0, kind="reference")]
    mark_pareto(rows)
    assert [r.name for r in rows if r.pareto_size] == ["int8", "fp16"]
    assert [r.name for r in rows if r.pareto_latency] == ["fp32", "int8"]


def test_recommendation_is_the_best_metric_that_fits_then_the_smallest():
    rows = [_row("fp32", 2_000_000, 0.95, 1.0), _row("fp16", 600_000, 0.90, 5.0),
            _row("int8", 300_000, 0.90, 2.0), _row("slow", 100_000, 0.93, 200.0),
            _row("keras", 10, 0.99, 1.0, kind="reference")]
    assert recommend(rows, LIMITS).name == "int8"
    assert rows[0].fits == ["file 2.0 MB > 1 MB"]
    assert rows[3].fits == ["5 FPS < 10"]
    assert rows[4].fits is None and not rows[4].recommended


def test_nothing_recommended_when_nothing_fits():
    rows = [_row("fp32", 100, 0.9, 1.0, memory=500.0)]
    assert recommend(rows, LIMITS) is None
    assert fit_problems(rows[0], LIMITS) == ["memory 500 MB > 100 MB"]


def test_table_has_a_device_column_only_with_a_device():
    report = Report(rows=[_row("int8", 300_000, 0.9, 2.0)], data="d", samples=1, threads=1, warmup=0, runs=1,
                    machine="m", interpreter="i", created="2026-01-01T00:00:00+00:00", bundle_dir="b")
    assert "raspberry-pi-5" not in format_table(report) and "Δ pt" not in format_table(report)
    report.device = "raspberry-pi-5"
    recommend(report.rows, LIMITS)
    assert format_table(report).splitlines()[0].endswith("| raspberry-pi-5 |")
    assert "⭐ recommended" in format_table(report)


def test_device_fit_uses_the_sustained_fps_when_measured():
    fast_alone = _row("int8", 300_000, 0.9, 2.0)  # 500 FPS from its single-frame p50
    fast_alone.sustained_fps = 8.0  # but 8 FPS frame after frame
    assert fit_problems(fast_alone, LIMITS) == ["8 FPS < 10"]
    fast_alone.sustained_fps = None  # not measured (--sustain 0): the p50 figure stands in
    assert fit_problems(fast_alone, LIMITS) == []


def test_latency_front_uses_sustained_ms_per_frame():
    steady = _row("steady", 400, 0.90, 2.0)
    steady.sustained_fps = 400.0  # 2.5 ms per frame
    bursty = _row("bursty", 100, 0.89, 1.0)
    bursty.sustained_fps = 100.0  # 10 ms per frame: slower than steady, and less accurate
    mark_pareto([steady, bursty])
    assert (steady.pareto_latency, bursty.pareto_latency) == (True, False)
    assert bursty.frame_ms == 10.0 and steady.frame_ms == 2.5
