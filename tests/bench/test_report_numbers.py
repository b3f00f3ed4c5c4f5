"""The report's numbers against an independent computation: accuracy recomputed by hand
from the runtime's own scores (``fuselite run``'s Annotator), sizes from the files."""

from __future__ import annotations

import csv
import gzip
import json

import cv2
import numpy as np
import pytest

from fuselite.bundle import read_bundle
from fuselite.runtime import Annotator, AnnotatorOptions


def _frames_and_truth(colour_data):
    """BGR frames as a camera gives them, and each one's folder name."""
    frames, truth = [], []
    for folder in sorted(p for p in colour_data.iterdir() if p.is_dir()):
        for file in sorted(folder.iterdir()):
            frames.append(cv2.imread(str(file)))
            truth.append(folder.name)
    return frames, truth


def _row(report, name):
    return next(r for r in report.rows if r.name == name)


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_top1_equals_hand_count_over_runtime_scores(bench_out, bundle_dir, colour_data, variant):
    report, _ = bench_out
    frames, truth = _frames_and_truth(colour_data)
    with Annotator.create(AnnotatorOptions(bundle_dir / f"{variant}.tflite", num_threads=1)) as annotator:
        hits = 0
        for i, frame in enumerate(frames):
            scores = annotator.annotate(frame, timestamp_ms=i).scores
            hits += max(scores, key=scores.get) == truth[i]
    assert len(frames) == report.samples == 35
    assert _row(report, variant).metrics["top1"] == pytest.approx(hits / len(frames), abs=1e-12)
    assert hits < len(frames)  # the mislabelled frames count against it


def test_sizes_and_sparsity_come_from_the_files(bench_out, bundle_dir):
    report, _ = bench_out
    for name in ("fp32", "int8", "corrupt"):
        data = (bundle_dir / f"{name}.tflite").read_bytes()
        row = _row(report, name)
        assert row.size_bytes == len(data)
        assert row.gzip_bytes == len(gzip.compress(data, compresslevel=9))
    fp32 = read_bundle(bundle_dir / "fp32.tflite")
    assert _row(report, "fp32").model_bytes == fp32.manifest.model_size
    assert _row(report, "fp32").sparsity == fp32.manifest.sparsity


def test_corrupt_bundle_is_a_failed_to_load_row_not_a_crash(bench_out):
    report, out_dir = bench_out
    corrupt = _row(report, "corrupt")
    assert (corrupt.status, corrupt.icon) == ("load_failed", "❌")
    assert "sha256" in corrupt.message
    assert corrupt.metrics == {} and corrupt.latency_p50_ms is None
    assert [r.status for r in report.rows if r.name != "corrupt"] == ["ok", "ok"]
    markdown = (out_dir / "report.md").read_text()
    assert "| ❌ | corrupt |" in markdown and "sha256" in markdown


def test_latency_memory_and_load_time_are_measured(bench_out):
    report, _ = bench_out
    for row in (_row(report, "fp32"), _row(report, "int8")):
        assert 0 < row.invoke_p50_ms <= row.latency_p50_ms <= row.latency_p90_ms
        assert row.fps == pytest.approx(1000 / row.latency_p50_ms)
        assert row.load_ms > 0 and row.peak_memory_mb > row.model_memory_mb >= 0
        assert row.peak_memory_mb > 20  # a Python process with numpy, OpenCV and LiteRT


def test_peak_memory_is_the_measuring_process_alone(good_bundles, colour_data, tmp_path):
    from fuselite.bench.measure import peak_memory_mb
    from fuselite.bench.runner import run_bench

    ballast = np.ones(400_000_000, np.uint8)  # this process now holds 400 MB more than any child needs
    report = run_bench(good_bundles, colour_data, None, threads=1, warmup=0, runs=2, reference=False,
                       sustain_s=0)
    assert peak_memory_mb() > 420
    del ballast
    for row in report.bundles:
        assert 20 < row.peak_memory_mb < 300


def test_device_marks_the_best_fitting_bundle(bench_out):
    report, _ = bench_out
    ok = [r for r in report.bundles if r.status == "ok"]
    best = max(ok, key=lambda r: (r.metric, -r.size_bytes))
    assert [r.name for r in report.rows if r.recommended] == [best.name]
    assert all(r.fits == [] for r in ok)
    assert _row(report, "corrupt").fits is None


def test_report_files_agree_with_the_report(bench_out):
    report, out_dir = bench_out
    doc = json.loads((out_dir / "report.json").read_text())
    assert [r["name"] for r in doc["rows"]] == [r.name for r in report.rows]
    assert doc["rows"][0]["size_bytes"] == report.rows[0].size_bytes
    assert doc["recommended"] == report.recommended.name and doc["device"] == "generic-x86_64"
    with open(out_dir / "report.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == [r.status for r in report.rows]
    fp32 = next(r for r in rows if r["name"] == "fp32")
    assert float(fp32["top1"]) == pytest.approx(_row(report, "fp32").metrics["top1"])
    assert (out_dir / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_int8_and_fp32_scores_agree_closely(bench_out):
    report, _ = bench_out
    assert abs(_row(report, "int8").metric - _row(report, "fp32").metric) <= 0.05
    assert np.isfinite(_row(report, "int8").metric)


def test_regional_map_and_micro_f1_equal_a_bare_interpreter_recomputation(regional_dir, colour_data):
    from support.bundles import hand_scores

    from fuselite import metrics as m
    from fuselite.bench.data import load_eval_data
    from fuselite.bench.runner import run_bench

    report = run_bench(regional_dir, colour_data, None, threads=1, warmup=0, runs=2, sustain_s=0)
    data = load_eval_data(colour_data, image_size=32)
    for variant in ("fp32", "int8"):
        scores, manifest = hand_scores(regional_dir / f"{variant}.tflite", data.images)
        targets = data.targets(manifest.labels)
        row = _row(report, variant)
        assert row.metrics["mAP"] == pytest.approx(m.mean_average_precision(scores, targets), abs=1e-6)
        assert row.metrics["micro_f1"] == pytest.approx(
            m.micro_f1(scores, targets, np.asarray(manifest.thresholds)), abs=1e-6)


def test_a_run_that_does_not_load_is_a_failed_reference_row(good_bundles, colour_data, tmp_path):
    from fuselite.bench.runner import run_bench

    broken = tmp_path / "run"
    broken.mkdir()
    for name in ("config.json", "splits.json"):
        (broken / name).write_text("{}")
    report = run_bench(good_bundles, colour_data, None, threads=1, warmup=0, runs=2, run_dir=broken,
                       sustain_s=0)
    reference = report.rows[0]
    assert (reference.kind, reference.status) == ("reference", "load_failed")
    assert "missing" in reference.message
    assert [r.status for r in report.bundles] == ["ok", "ok"]


def test_regional_bundles_get_a_pointing_game_on_scenes_whose_objects_are_known(regional_dir):
    """The colour bundles' "red", "green" and "blue" cells light up on the scenes' objects of
    that colour: the pointing game column must be there and far above a random peak's rate."""
    from fuselite.bench.report import format_table
    from fuselite.bench.runner import run_bench

    report = run_bench(regional_dir, "scenes", None, threads=1, warmup=0, runs=2, sustain_s=0, samples=60,
                       reference=False)
    for row in report.rows:
        assert row.status == "ok", row.message
        assert row.metrics["pointing_game"] >= row.metrics["pointing_chance"] + 0.3
    assert "pointing game %" in format_table(report)
