"""The benchmark script runs end to end (tiny settings; real figures come from running it)."""

from __future__ import annotations

import json

import cv2
import pytest

from fuselite.bench import runtime_suite as benchmark
from fuselite.bundle import read_manifest

FIGURES = (
    "invoke_fps",
    "decode_fps",
    "capture_fps",
    "sequential_fps",
    "e2e_fps",
    "e2e_vs_invoke",
    "e2e_vs_sequential",
    "e2e_vs_ceiling",
    "invoke_cpu_ms",
    "e2e_inference_cpu_ms",
    "e2e_capture_cpu_ms",
    "e2e_outputs_cpu_ms",
    "inference_thread_efficiency",
    "sequential_cores",
    "e2e_cores",
    "cold_start_s",
    "peak_rss_mb",
    "rss_growth_mb",
)


def test_benchmark_measures_every_bundle_with_its_targets(
    int8_bundle, fp32_bundle, red_blue_clip, tmp_path, capsys
):
    figures_path = tmp_path / "figures.json"
    code = benchmark.main(
        [
            "--bundle", str(int8_bundle), "--bundle", str(fp32_bundle), "--board-size", "0",
            "--video", str(red_blue_clip), "--frames", "30", "--rounds", "2",
            "--seconds", "0.1", "--memory-frames", "300", "--json", str(figures_path),
        ]
    )  # fmt: skip
    table = capsys.readouterr().out
    figures = json.loads(figures_path.read_text())
    assert code in (0, 1)
    assert figures["errors"] == {}
    assert [case["name"] for case in figures["cases"]] == ["int8.tflite", "fp32.tflite"]
    for case in figures["cases"]:
        assert case["errors"] == {}
        for key in FIGURES:
            # On a busy machine the run may choose the sequential arrangement: then the
            # capture and outputs threads, and their CPU time, do not exist.
            if key == "rss_growth_mb":
                continue  # memory may shrink after warm-up
            may_be_zero = key in ("e2e_capture_cpu_ms", "e2e_outputs_cpu_ms")
            assert case[key] > 0 or (may_be_zero and case[key] == 0), key
        for key in benchmark.THROUGHPUTS:
            assert len(case["rounds"][key]) == 2
        assert case["ceiling_fps"] == min(case["invoke_fps"], case["decode_fps"])
        assert case["bound"] in ("inference", "decoding")
        assert case["memory_frames"] == 300 and case["input_size"] == [32, 32]
        expected = "n/a: decode-bound" if case["bound"] == "decoding" else ("pass", "FAIL")
        assert benchmark.status(case, "e2e_vs_invoke") in expected
    assert table.count("| end-to-end / raw invoke |") == 2 and "≥ 0.95×" in table
    assert "decode only (the ceiling)" in table and "min(raw invoke, decode)" in table
    assert "Command: `python -m fuselite.bench.suite runtime --bundle" in table
    assert figures["machine"]["interpreter"] == "ai_edge_litert.interpreter"


def test_benchmark_refuses_missing_files_and_an_empty_case_list(tmp_path, capsys):
    assert benchmark.main(["--bundle", str(tmp_path / "missing.tflite")]) == 2
    assert benchmark.main(["--board-size", "0"]) == 2
    assert "nothing to measure" in capsys.readouterr().err


def test_the_default_clip_is_640x480_at_30_fps(tmp_path):
    clip = benchmark.benchmark_clip(tmp_path)
    capture = cv2.VideoCapture(str(clip))
    size = (capture.get(cv2.CAP_PROP_FRAME_WIDTH), capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    fps = capture.get(cv2.CAP_PROP_FPS)
    capture.release()
    assert size == (640, 480) and fps == pytest.approx(30)
    assert benchmark.benchmark_clip(tmp_path) == clip  # made once, then reused


@pytest.mark.slow
def test_the_board_size_bundle_is_trained_converted_and_cached(tmp_path):
    bundle = benchmark.board_bundle(tmp_path, image_size=64)
    manifest = read_manifest(bundle)
    assert manifest.preprocessing.input_size == (64, 64)
    assert manifest.preprocessing.input_dtype == "uint8" and manifest.variant == "int8"
    built = bundle.stat().st_mtime_ns
    assert benchmark.board_bundle(tmp_path, image_size=64) == bundle
    assert bundle.stat().st_mtime_ns == built
