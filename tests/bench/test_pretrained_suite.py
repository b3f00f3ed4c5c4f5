"""The pieces of ``python -m fuselite.bench.suite pretrained`` (issue 29), on tiny inputs.

The suite itself trains six models (an hour on two cores); here its commands, its
category top-1, its table and verdicts are checked on hand-made numbers, and its
scoring step runs the session's colour bundles through the runtime.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from support.frames import DATASET_BGR

from fuselite.bench import pretrained_suite as suite
from fuselite.bench.suite import SUITES

CATEGORIES = ["animals", "food", "shapes"]


def _row(model: str, split: str, fp32: float, int8: float, agreement: float = 1.0,
         train_seconds: float = 60.0) -> suite.Row:
    return suite.Row(model, split, top1={"fp32": fp32, "int8": int8}, agreement=agreement,
                     model_kb=100.0, file_kb=150.0, latency_ms=2.0, train_seconds=train_seconds, images=10)


def _rows(lite0_held: float = 0.7, distilled: float = 0.5, lite0_seconds: float = 300.0) -> list[suite.Row]:
    return [
        _row("tiny", "seen", 0.41, 0.40), _row("tiny", "heldout", 0.31, 0.30),
        _row(suite.LITE0, "seen", 0.80, 0.80, train_seconds=lite0_seconds),
        _row(suite.LITE0, "heldout", lite0_held, lite0_held, train_seconds=lite0_seconds),
        _row("distilled-tiny", "seen", distilled, distilled),
        _row("distilled-tiny", "heldout", distilled - 0.1, distilled - 0.1),
    ]


def test_suite_is_registered_under_pretrained():
    assert SUITES["pretrained"][0] == "fuselite.bench.pretrained_suite"


def test_train_command_is_the_fuselite_cli_with_backbone_teacher_and_epochs(tmp_path):
    spec = next(m for m in suite.MODELS if m.teacher)
    command = suite.train_command(spec, tmp_path / "seen-train.jsonl", tmp_path / "run",
                                  teacher_run=tmp_path / "lite0", epochs=12)
    assert command[0].endswith("fuselite")
    assert command[1:5] == ["train", "--config", "custom", "--data"]
    assert command[command.index("--backbone") + 1] == "tiny"
    assert command[command.index("--teacher") + 1] == str(tmp_path / "lite0")
    assert command[command.index("--epochs") + 1] == "12"
    assert command[command.index("--distill-weight") + 1] == "1"  # the teacher's soft labels alone
    plain = suite.train_command(suite.MODELS[1], tmp_path / "m.jsonl", tmp_path / "run")
    assert "--teacher" not in plain and "--epochs" not in plain and "--distill-weight" not in plain


def test_distilled_tiny_is_taught_by_the_lite0_run():
    by_name = {m.name: m for m in suite.MODELS}
    assert by_name["distilled-tiny"].teacher == suite.LITE0
    assert [m.name for m in suite.MODELS].index(suite.LITE0) < [m.name for m in suite.MODELS].index(
        "distilled-tiny")  # the teacher trains first


def test_convert_command_asks_for_fp32_and_int8(tmp_path):
    command = suite.convert_command(tmp_path / "run", tmp_path / "bundles")
    assert command[1:3] == ["convert", str(tmp_path / "run")]
    assert command[-3:] == ["--variants", "fp32", "int8"]


def test_category_top1_looks_only_at_the_category_labels():
    labels = ["mammals", "animals", "food", "fruit", "shapes"]
    # The first image's best label is a sub-category; among categories "animals" wins.
    scores = np.array([[0.99, 0.6, 0.1, 0.0, 0.2],
                       [0.00, 0.1, 0.3, 0.9, 0.4],
                       [0.00, 0.2, 0.1, 0.0, 0.3]])
    predicted = suite.category_predictions(scores, labels, CATEGORIES)
    assert predicted.tolist() == [0, 2, 2]
    truth = suite.true_categories([["animals", "mammals"], ["fruit", "food"], ["shapes"]], CATEGORIES)
    assert truth.tolist() == [0, 1, 2]
    assert suite.top1(predicted, truth) == pytest.approx(2 / 3)


def test_images_without_a_category_do_not_count():
    truth = suite.true_categories([["animals"], ["nothing known"]], CATEGORIES)
    assert truth.tolist() == [0, -1]
    assert suite.top1(np.array([0, 1]), truth) == 1.0


def test_a_bundle_without_a_category_label_is_refused():
    with pytest.raises(ValueError, match="shapes"):
        suite.category_predictions(np.zeros((1, 2)), ["animals", "food"], CATEGORIES)


def test_agreement_is_the_share_of_equal_picks():
    assert suite.agreement(np.array([0, 1, 2, 2]), np.array([0, 1, 2, 0])) == 0.75


def test_category_labels_come_from_the_build_summary(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps({"categories": {"food": {}, "animals": {}}}))
    assert suite.category_labels(tmp_path / "summary.json") == ["animals", "food"]


def test_table_has_one_row_per_model_and_split_and_shows_failures():
    rows = _rows()
    rows[-1] = suite.Row("distilled-tiny", "heldout", status="training failed: a | b")
    table = suite.format_table(rows).splitlines()
    assert len(table) == 2 + 6
    assert {line.count("|") for line in table} == {12}
    assert table[2] == "| tiny | seen | 41.0% | 40.0% | -1.0 | 100.0% | 100.0 | 150.0 | 2.00 | 60 | ok |"
    assert table[-1].endswith("| - | - | training failed: a / b |")


def test_verdicts_all_met():
    found = suite.verdicts(_rows())
    assert [v.passed for v in found] == [True] * 6, suite.format_verdicts(found)


def test_verdicts_name_each_missed_target():
    rows = _rows(lite0_held=0.5, distilled=0.42, lite0_seconds=700.0)
    rows[0].agreement = 0.95
    rows[0].top1["int8"] = 0.38  # 3 pt below fp32
    passed = {v.target.split(" ")[0] + str(i): v.passed for i, v in enumerate(suite.verdicts(rows))}
    assert list(passed.values()) == [True, False, False, False, False, False]
    text = suite.format_verdicts(suite.verdicts(rows))
    assert "0.62" in text and "700 s" in text and "worst tiny/seen -3.0 pt" in text


def test_a_missing_int8_bundle_leaves_its_targets_not_measured_and_says_the_fp32_numbers():
    rows = _rows()
    rows[2].top1.pop("int8")  # lite0/seen: convert refused int8
    rows[2].agreement = None
    found = suite.verdicts(rows)
    assert [v.passed for v in found] == [None, None, True, None, None, True]
    assert "in fp32: seen +39.0 pt, heldout +39.0 pt" in found[0].detail
    assert "fp32: 70.0% / 80.0%" in found[1].detail
    assert "no int8 for efficientnet-lite0/seen" in found[3].detail


def test_a_measured_miss_fails_its_target_even_when_another_row_is_missing():
    rows = _rows()
    rows[2].top1.pop("int8")
    rows[2].agreement = None
    rows[0].agreement = 0.9
    assert suite.verdicts(rows)[4].passed is False


def test_pareto_folder_names_each_bundle_by_model_and_variant(tmp_path):
    for spec in suite.MODELS[:2]:
        folder = tmp_path / "seen" / spec.name / "bundles"
        folder.mkdir(parents=True)
        for variant in suite.VARIANTS:
            (folder / f"{variant}.tflite").write_bytes(b"x")
    found = sorted(p.name for p in suite.pareto_bundles(tmp_path).iterdir())
    assert found == ["efficientnet-lite0-fp32.tflite", "efficientnet-lite0-int8.tflite",
                     "tiny-fp32.tflite", "tiny-int8.tflite"]


def _colour_split(root: Path, bundles: dict[str, Path]) -> Path:
    """A work dir whose ``seen`` models are the colour bundles, tested on colour frames."""
    data_dir = root / "openclipart"
    (data_dir / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = []
    for colour, bgr in DATASET_BGR.items():
        for i in range(3):
            frame = np.clip(np.asarray(bgr) + rng.normal(0, 10, (40, 40, 3)), 0, 255).astype(np.uint8)
            cv2.imwrite(str(data_dir / "images" / f"{colour}{i}.png"), frame)
            lines.append(json.dumps({"image": f"images/{colour}{i}.png", "tags": [colour, "colour"]}))
    (data_dir / "seen-test.jsonl").write_text("\n".join(lines) + "\n")
    (data_dir / "summary.json").write_text(json.dumps({"categories": {colour: {} for colour in DATASET_BGR}}))
    for spec in suite.MODELS[:2]:
        folder = root / "seen" / spec.name / "bundles"
        folder.mkdir(parents=True)
        for variant in suite.VARIANTS:
            shutil.copy2(bundles[variant], folder / f"{variant}.tflite")
    return data_dir


def test_score_split_measures_bundles_through_the_runtime(tmp_path, colour_bundles):
    data_dir = _colour_split(tmp_path, colour_bundles)
    settings = suite.Settings(tmp_path, threads=1, warmup=1, runs=3)
    missing = {suite.LITE0: {"int8": "numbers differ"}, "distilled-tiny": {"train": "its teacher has no run"}}
    rows = suite.score_split("seen", data_dir, settings, missing, {"seen/tiny": {"seconds": 12.0}})
    tiny, lite0, distilled = rows
    assert tiny.status == "ok" and tiny.images == 12 and tiny.train_seconds == 12.0
    assert tiny.top1["fp32"] >= 0.75 and tiny.top1["int8"] >= 0.75  # the colour bundles know colours
    assert tiny.agreement >= 0.75 and tiny.latency_ms > 0
    assert tiny.file_kb > tiny.model_kb > 0
    assert lite0.top1 == {"fp32": tiny.top1["fp32"]}  # the same fp32 bundle; its int8 "was refused"
    assert lite0.status == "int8 not written by fuselite convert: numbers differ"
    assert lite0.agreement is None and lite0.latency_ms is None
    assert distilled.status == "its teacher has no run" and not distilled.top1


def test_a_bundle_scores_frames_read_at_another_size_through_the_runtime(tmp_path, colour_bundles):
    from fuselite.bench.seeds_suite import top1_at_size

    data_dir = _colour_split(tmp_path, colour_bundles)
    settings = suite.Settings(tmp_path, threads=1, warmup=1, runs=3)
    frames = suite.TestFrames(data_dir / "seen-test.jsonl", tmp_path / "seen" / "frames")
    categories = list(DATASET_BGR)
    run = tmp_path / "seen" / "tiny"
    assert top1_at_size(run, frames, 20, categories, settings) >= 0.75  # scaled up to the bundle's size
    assert (tmp_path / "seen" / "frames" / "frames-20.npy").is_file()
    assert (run / "measure" / "at-20").is_dir()


def test_extra_backbones_add_rows_after_the_three_models():
    models = suite.models_with(["mobilenet-v3-small", "tiny", "mobilenet-v3-small"])
    assert [m.name for m in models] == ["tiny", suite.LITE0, "distilled-tiny", "mobilenet-v3-small"]
    assert models[-1].backbone == "mobilenet-v3-small" and models[-1].teacher is None


def test_an_unknown_extra_backbone_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        suite.main(["--work-dir", str(tmp_path), "--extra-backbone", "resnet-9000"])
    assert exit_info.value.code == 2
    assert "mobilenet-v3-small" in capsys.readouterr().err
    assert not (tmp_path / "openclipart").exists()


def test_convert_messages_read_the_reason_a_variant_was_not_written(tmp_path):
    report = {"variants": [{"variant": "fp32", "status": "ok"},
                           {"variant": "int8", "status": "failed", "message": "numbers differ; not written"}]}
    (tmp_path / "convert-report.json").write_text(json.dumps(report))
    assert suite.convert_messages(tmp_path / "convert-report.json") == {"int8": "numbers differ; not written"}
    assert suite.convert_messages(tmp_path / "absent.json") == {}


def test_convert_command_passes_only_the_missing_variants_and_calibration(tmp_path):
    command = suite.convert_command(tmp_path / "run", tmp_path / "b", ["int8"], calibration_samples=1000)
    assert command[-4:] == ["--variants", "int8", "--calibration-samples", "1000"]


def test_a_run_is_finished_once_it_has_metrics(tmp_path):
    assert not suite.finished(tmp_path)
    (tmp_path / "metrics.json").write_text("{}")
    assert suite.finished(tmp_path)


def test_a_variant_convert_refused_for_the_same_run_is_not_converted_again(tmp_path):
    bundles = tmp_path / "model" / "bundles"
    bundles.mkdir(parents=True)
    (bundles / "fp32.tflite").write_bytes(b"x")
    report = {"variants": [{"variant": "int8", "status": "failed", "message": "numbers differ"}]}
    (bundles / "convert-report.json").write_text(json.dumps(report))
    missing = suite._convert(tmp_path / "model", suite.Settings(tmp_path, keep_runs=True), fresh=False)
    assert missing == {"int8": "numbers differ"}
    assert not (tmp_path / "model" / "convert.log").exists()  # fuselite convert did not run
