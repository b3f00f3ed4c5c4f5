"""Tag groups in ``fuselite bench`` (issue 32 item 5): a group's top-1 and confusion matrix,
``confusion-<group>.png``, test tags the bundle never learned, and bad group specs."""

from __future__ import annotations

import json
import logging
import shutil

import cv2
import numpy as np
import pytest

from fuselite.bench.groups import group_metrics, parse_groups
from fuselite.bench.plot import plot_confusion
from fuselite.bench.report import Report, Row
from fuselite.bench.runner import run_bench
from fuselite.cli import main
from fuselite.data.readers import read_dataset
from fuselite.runtime import Annotator, AnnotatorOptions

COLOURS = ["red", "green", "blue", "gray"]
GROUPS_LINE = {"groups": {"colour": COLOURS}}
WARM = ["red", "gray"]  # a group that is a subset of the bundle's labels: argmax among these only
QUICK = {"warmup": 1, "runs": 3, "sustain_s": 0.0, "reference": False, "threads": 1}


def _items(colour_data) -> list[dict]:
    """Every colour image tagged with its folder, plus items without a group tag, with two
    of them, and with tags the bundle never learned ("purple" x3, "sky" x2)."""
    items = [{"image": str(file), "tags": [folder.name]}
             for folder in sorted(p for p in colour_data.iterdir() if p.is_dir())
             for file in sorted(folder.iterdir())]
    red, blue, green = (str(colour_data / name / "0.png") for name in ("red", "blue", "green"))
    items += [{"image": red, "tags": ["purple"]} for _ in range(3)]
    items += [{"image": blue, "tags": ["blue", "sky"]} for _ in range(2)]
    items += [{"image": green, "tags": ["green", "blue"]} for _ in range(2)]
    return items


@pytest.fixture(scope="module")
def grouped(tmp_path_factory, bundle_dir, colour_data):
    """``(report, out_dir, items)``: fp32 benched on a JSONL manifest with a groups line, plus --group warm."""
    folder = tmp_path_factory.mktemp("grouped")
    (folder / "bundles").mkdir()
    shutil.copy(bundle_dir / "fp32.tflite", folder / "bundles" / "fp32.tflite")
    items = _items(colour_data)
    lines = [json.dumps(GROUPS_LINE), *(json.dumps(item) for item in items)]
    (folder / "test.jsonl").write_text("\n".join(lines) + "\n")
    out = folder / "out"
    report = run_bench(folder / "bundles", folder / "test.jsonl", out, groups={"warm": WARM}, **QUICK)
    return report, out, items


def _expected(bundle, items, group):
    """The group's matrix counted by hand from fuselite run's Annotator scores of each image."""
    matrix = np.zeros((len(group), len(group)), int)
    no_tag = several = 0
    with Annotator.create(AnnotatorOptions(bundle, num_threads=1)) as annotator:
        for i, item in enumerate(items):
            truth = [t for t in item["tags"] if t in group]
            if len(truth) != 1:
                no_tag, several = no_tag + (not truth), several + (len(truth) > 1)
                continue
            scores = annotator.annotate(cv2.imread(item["image"]), timestamp_ms=i).scores
            matrix[group.index(truth[0]), group.index(max(group, key=scores.get))] += 1
    return matrix, no_tag, several


def test_group_metrics_on_known_scores():
    labels = ["cat", "dog", "car", "red"]
    scores = np.array([[0.9, 0.1, 0.0, 0.99],  # cat -> cat ("red" is outside the group)
                       [0.6, 0.5, 0.1, 0.0],   # dog -> cat
                       [0.1, 0.2, 0.7, 0.0],   # car -> car
                       [0.1, 0.8, 0.7, 0.0],   # no tag of the group: left out
                       [0.3, 0.2, 0.1, 0.0]])  # two tags of the group: left out
    tags = [["cat", "red"], ["dog"], ["car"], ["red"], ["cat", "dog"]]
    result = group_metrics(scores, labels, tags, ["cat", "dog", "car"])
    assert result["matrix"] == [[1, 0, 0], [1, 0, 0], [0, 0, 1]]
    assert result["top1"] == pytest.approx(2 / 3)
    assert (result["scored"], result["no_tag"], result["several_tags"]) == (3, 1, 1)
    missing = group_metrics(scores, labels, tags, ["cat", "dog", "bus"])
    assert missing["not_in_bundle"] == ["bus"] and missing["matrix"][2] == [0, 0, 0]


@pytest.mark.parametrize("group", ["colour", "warm"])
def test_group_top1_and_matrix_equal_a_hand_count(grouped, bundle_dir, group):
    report, out, items = grouped
    labels = COLOURS if group == "colour" else WARM
    matrix, no_tag, several = _expected(bundle_dir / "fp32.tflite", items, labels)
    result = json.loads((out / "report.json").read_text())["rows"][0]["groups"][group]
    assert result["matrix"] == matrix.tolist()
    assert result["top1"] == pytest.approx(np.trace(matrix) / matrix.sum(), abs=1e-12)
    assert (result["scored"], result["no_tag"], result["several_tags"]) == (matrix.sum(), no_tag, several)
    assert report.groups[group] == labels
    if group == "colour":
        assert (no_tag, several) == (3, 2) and 0 < result["top1"] < 1  # the mislabelled grays miss


def test_report_md_has_each_groups_table_and_matrix(grouped):
    report, out, _ = grouped
    markdown = (out / "report.md").read_text()
    result = report.rows[0].groups["colour"]
    assert "## Tag group `colour` (4 labels)" in markdown and "## Tag group `warm` (2 labels)" in markdown
    assert f"| ✅ | fp32 | {100 * result['top1']:.2f} | {result['scored']} | 3 | 2 |" in markdown
    red_row = result["matrix"][0]
    assert "| **red** | " + " | ".join(map(str, red_row)) + f" | {sum(red_row)} |" in markdown


def test_confusion_png_written_per_group(grouped):
    report, out, _ = grouped
    for group in ("colour", "warm"):
        path = out / f"confusion-{group}.png"
        assert report.files[path.name] == path
        image = cv2.imread(str(path))
        assert image is not None and min(image.shape[:2]) > 300 and image.std() > 5


def test_thirty_labels_png_is_readable_size(tmp_path):
    labels = [f"label-{i:02d}" for i in range(30)]
    rng = np.random.default_rng(0)
    matrix = rng.integers(0, 50, (30, 30)).tolist()
    row = Row(name="fp32", groups={"many": {"labels": labels, "matrix": matrix, "top1": 0.5, "scored": 9,
                                            "no_tag": 0, "several_tags": 0, "not_in_bundle": []}})
    report = Report(rows=[row], data="d", samples=9, threads=1, warmup=1, runs=1, machine="m",
                    interpreter="i", created="2026-12-05", bundle_dir="b", groups={"many": labels})
    image = cv2.imread(str(plot_confusion(row, "many", report, tmp_path / "confusion-many.png")))
    assert image.shape[0] >= 30 * 0.42 * 110 and image.shape[1] >= 30 * 0.42 * 110  # >= 46 px per cell


def test_unseen_test_tags_are_warned_and_counted(grouped, caplog):
    report, out, _ = grouped
    assert report.rows[0].unseen_tags == {"purple": 3, "sky": 2}
    warning = report.warnings[0]
    assert "2 tag(s) of the test data are not among the bundles' labels" in warning
    assert "on 5 item(s)" in warning and "'purple' (3)" in warning and "'sky' (2)" in warning
    assert "⚠️ 2 tag(s)" in (out / "report.md").read_text()
    assert json.loads((out / "report.json").read_text())["rows"][0]["unseen_tags"] == {"purple": 3, "sky": 2}


def test_unseen_tags_logged_as_warning(good_bundles, colour_data, tmp_path, caplog):
    manifest = tmp_path / "t.jsonl"
    manifest.write_text("\n".join(json.dumps(item) for item in _items(colour_data)) + "\n")
    with caplog.at_level(logging.WARNING, logger="fuselite.bench.runner"):
        report = run_bench(good_bundles, manifest, None, **QUICK)
    assert report.groups == {} and all(r.groups == {} for r in report.rows)
    assert any("not among the bundles' labels" in r.getMessage() and "on 5 item(s)" in r.getMessage()
               for r in caplog.records)


def test_groups_line_is_not_a_skipped_item(tmp_path, colour_data):
    manifest = tmp_path / "t.jsonl"
    manifest.write_text(json.dumps(GROUPS_LINE) + "\n"
                        + json.dumps({"image": str(colour_data / "red" / "0.png"), "tags": ["red"]}) + "\n")
    data = read_dataset(manifest, 32)
    assert len(data) == 1 and data.skipped == []


def test_cli_prints_group_top1_and_files(good_bundles, colour_data, tmp_path, capsys):
    args = ["bench", str(good_bundles), "--data", str(colour_data), "--out", str(tmp_path / "out"),
            "--runs", "3", "--warmup", "1", "--threads", "1", "--no-reference", "--sustain", "0",
            "--group", "warm=red,gray", "--group", "cool=green,blue"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "tag group warm top-1 on 19 items" in printed and "tag group cool top-1 on 16 items" in printed
    assert "confusion-cool.png:" in printed and (tmp_path / "out" / "confusion-warm.png").stat().st_size > 0


@pytest.mark.parametrize("spec", [["category"], ["=a,b"], ["c=a"], ["c=a,,b"], ["c=a,a"], ["c/x=a,b"],
                                  ["c=a,b", "c=d,e"]])
def test_bad_group_spec_is_one_line_exit_2(good_bundles, colour_data, tmp_path, capsys, spec):
    args = ["bench", str(good_bundles), "--data", str(colour_data), "--out", str(tmp_path / "out")]
    for one in spec:
        args += ["--group", one]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fuselite bench: error: --group") and "\n" not in err
    assert not (tmp_path / "out").exists()  # refused before anything ran


def test_bad_groups_line_in_manifest_is_one_line_exit_2(good_bundles, colour_data, tmp_path, capsys):
    manifest = tmp_path / "t.jsonl"
    manifest.write_text(json.dumps({"groups": {"colour": ["red"]}}) + "\n"
                        + json.dumps({"image": str(colour_data / "red" / "0.png"), "tags": ["red"]}) + "\n")
    assert main(["bench", str(good_bundles), "--data", str(manifest), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "t.jsonl line 1: group 'colour' has 1 label(s)" in err and "\n" not in err


def test_parse_groups_keeps_order_and_strips():
    assert parse_groups(["category = animals, food ,vehicles", "size=s,m"]) == {
        "category": ["animals", "food", "vehicles"], "size": ["s", "m"]}


def test_a_runs_jsonl_manifest_gives_its_groups(tmp_path):
    from fuselite.bench.data import _source_groups

    manifest = tmp_path / "train.jsonl"
    manifest.write_text(json.dumps(GROUPS_LINE) + "\n" + json.dumps({"image": "a.png", "tags": ["red"]}) + "\n")
    assert _source_groups(str(manifest)) == {"colour": COLOURS}
    assert _source_groups("scenes") == {} and _source_groups(str(tmp_path / "gone.jsonl")) == {}
