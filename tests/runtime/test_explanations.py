"""Where a label fired: heatmaps, peaks and boxes from a regional bundle, in results,
events, the overlay and ``fuselite explain`` pictures.

The regional colour bundles score each 8x8 cell of a 32x32 input (a 4x4 grid), so a
coloured patch on a grey frame has a known place: its label's peak must be on it.
"""

from __future__ import annotations

import json
import logging

import cv2
import numpy as np
import pytest
from runtime_helpers import BLUE, GRAY, RED, error_lines, events, fuselite_run, solid
from support.bundles import repack

from fuselite.bundle import BundleError, LabelMaps, read_bundle
from fuselite.cli import main
from fuselite.runtime import Annotator, AnnotatorOptions
from fuselite.runtime.outputs import event_record
from fuselite.runtime.overlay import HEATMAP_COLOURS, draw_overlay
from fuselite.runtime.reader import Frame

FRAME = (120, 160)  # height, width: not square, so x and y cannot be swapped unnoticed


def patch_frame(colour, x0: float, y0: float, x1: float, y1: float, seed: int = 0) -> np.ndarray:
    """A noisy grey frame with one ``colour`` rectangle at normalised ``(x0, y0, x1, y1)``."""
    frame = solid(GRAY, size=FRAME, noise=6, seed=seed)
    height, width = FRAME
    frame[round(y0 * height) : round(y1 * height), round(x0 * width) : round(x1 * width)] = colour
    return frame


def category(result, label):
    return next(c for c in result.categories if c.label == label)


def inside(point, box) -> bool:
    return box[0] <= point[0] <= box[2] and box[1] <= point[1] <= box[3]


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_the_peak_and_box_of_a_label_sit_on_its_patch(regional_colour_bundles, variant):
    patch = (0.5, 0.5, 1.0, 1.0)  # the bottom-right quarter of the frame: cells (2..3, 2..3)
    with Annotator.create(
        AnnotatorOptions(regional_colour_bundles[variant], num_threads=1)
    ) as annotator:
        red = category(annotator.annotate(patch_frame(RED, *patch), 0), "red")
    assert red.heatmap.shape == (4, 4)
    assert inside(red.peak, patch)
    assert red.box == pytest.approx(patch)  # the four red cells, and nothing grey
    assert red.heatmap.max() == pytest.approx(
        red.raw_score, abs=1e-5
    )  # the score is the best cell's
    assert red.heatmap[:2].max() < red.threshold  # the grey top half stays below the threshold


def test_int8_maps_peak_on_the_same_cell_as_fp32(regional_colour_bundles):
    rng = np.random.default_rng(3)
    agree = total = 0
    with (
        Annotator.create(AnnotatorOptions(regional_colour_bundles["fp32"], num_threads=1)) as fp32,
        Annotator.create(AnnotatorOptions(regional_colour_bundles["int8"], num_threads=1)) as int8,
    ):
        for seed in range(40):
            x, y = rng.uniform(0, 0.75, size=2)
            frame = patch_frame((RED, BLUE)[seed % 2], x, y, x + 0.25, y + 0.25, seed)
            label = ("red", "blue")[seed % 2]
            a, b = (annotator.explain(frame) for annotator in (fp32, int8))
            peak_a = next(c for c in a if c.label == label).peak
            peak_b = next(c for c in b if c.label == label).peak
            agree += int(peak_a == peak_b)
            total += 1
    assert agree / total >= 0.95


def test_explain_off_reports_the_same_labels_without_maps(regional_colour_bundles):
    frame = patch_frame(RED, 0.0, 0.0, 0.5, 0.5)
    path = regional_colour_bundles["fp32"]
    with (
        Annotator.create(AnnotatorOptions(path, num_threads=1)) as on,
        Annotator.create(AnnotatorOptions(path, num_threads=1, explain=False)) as off,
    ):
        located, plain = on.annotate(frame, 0), off.annotate(frame, 0)
    assert [c.label for c in plain.categories] == [c.label for c in located.categories]
    assert off.map_grid is None
    assert all(c.heatmap is None and c.peak is None and c.box is None for c in plain.categories)
    record = event_record(Frame(frame, 0, 0.0, 0.0, 0.0), plain, 1.0)
    assert all(set(entry) == {"label", "score"} for entry in record["labels"])


def test_a_pooled_bundle_reports_labels_without_maps(fp32_bundle):
    with Annotator.create(AnnotatorOptions(fp32_bundle, num_threads=1)) as annotator:
        result = annotator.annotate(solid(RED, size=FRAME), 0)
    assert annotator.map_grid is None
    assert [c.label for c in result.categories] == ["red"]
    assert result.categories[0].heatmap is None and result.categories[0].box is None


def test_a_regional_bundle_written_before_label_maps_still_explains(
    regional_colour_bundles, tmp_path
):
    old = repack(regional_colour_bundles["fp32"], tmp_path / "old.tflite", label_maps=None)
    assert read_bundle(old).manifest.label_maps is None
    with Annotator.create(AnnotatorOptions(old, num_threads=1)) as annotator:
        red = category(annotator.annotate(patch_frame(RED, 0.0, 0.5, 0.5, 1.0), 0), "red")
    assert annotator.map_grid == (4, 4)
    assert red.box == pytest.approx((0.0, 0.5, 0.5, 1.0))


@pytest.mark.parametrize("maps", [LabelMaps((3, 3)), LabelMaps((4, 4), source="cam")])
def test_label_maps_that_do_not_match_the_model_are_refused(
    regional_colour_bundles, tmp_path, maps
):
    wrong = repack(regional_colour_bundles["fp32"], tmp_path / "wrong.tflite", label_maps=maps)
    with pytest.raises(BundleError, match=r"label_maps grid \[\d, \d\] does not match"):
        Annotator.create(AnnotatorOptions(wrong, num_threads=1))
    with Annotator.create(AnnotatorOptions(wrong, num_threads=1, explain=False)) as annotator:
        assert annotator.map_grid is None  # without explanations the bundle still annotates


def test_run_events_carry_a_normalised_point_and_box_inside_the_frame(
    regional_colour_bundles, tmp_path
):
    folder = tmp_path / "frames"
    folder.mkdir()
    rng = np.random.default_rng(7)
    for i in range(6):
        x, y = rng.uniform(0, 0.7, size=2)
        cv2.imwrite(
            str(folder / f"{i}.png"), patch_frame((RED, BLUE)[i % 2], x, y, x + 0.3, y + 0.3, i)
        )
    plain, grids, off = (tmp_path / f"{name}.jsonl" for name in ("plain", "grids", "off"))
    for jsonl, extra in ((plain, ()), (grids, ("--event-heatmaps",)), (off, ("--no-explain",))):
        done = fuselite_run(
            "--bundle",
            regional_colour_bundles["int8"],
            "--source",
            folder,
            "--jsonl",
            jsonl,
            "--threads",
            "1",
            "--display",
            "off",
            "--stats-interval",
            "0",
            *extra,
        )
        assert done.returncode == 0, error_lines(done.stderr)
    entries = [entry for record in events(plain) for entry in record["labels"]]
    assert len(entries) >= 6
    for entry in entries:
        x0, y0, x1, y1 = entry["box"]
        assert 0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0
        assert 0.0 <= entry["point"][0] <= 1.0 and 0.0 <= entry["point"][1] <= 1.0
        assert inside(entry["point"], entry["box"])
        assert "heatmap" not in entry
    with_grids = [entry for record in events(grids) for entry in record["labels"]]
    assert all(np.asarray(entry["heatmap"]).shape == (4, 4) for entry in with_grids)
    assert all(0.0 <= v <= 1.0 for entry in with_grids for row in entry["heatmap"] for v in row)
    without = [entry for record in events(off) for entry in record["labels"]]
    assert len(without) == len(entries) and all(
        set(entry) == {"label", "score"} for entry in without
    )


def test_the_overlay_tints_where_the_label_fired(regional_colour_bundles):
    frame = patch_frame(BLUE, 0.5, 0.0, 1.0, 0.5)
    options = AnnotatorOptions(
        regional_colour_bundles["fp32"], num_threads=1, category_allowlist=("blue",)
    )
    with Annotator.create(options) as annotator:  # "gray" (the rest of the frame) is not reported
        result = annotator.annotate(frame, 0)
    plain = draw_overlay(frame.copy(), result)
    tinted = draw_overlay(frame.copy(), result, heatmaps=True)
    height, width = FRAME
    under_patch = (slice(height // 8, 3 * height // 8), slice(5 * width // 8, 7 * width // 8))
    far_corner = (slice(7 * height // 8, height), slice(0, width // 8))
    tint = np.asarray(HEATMAP_COLOURS[0], np.float64)
    moved = tinted[under_patch].astype(np.float64) - plain[under_patch]
    assert np.abs(moved).mean() > 20  # the blue patch took on the first label's tint
    assert (
        np.sign(moved.mean(axis=(0, 1))) @ np.sign(tint - plain[under_patch].mean(axis=(0, 1))) > 0
    )
    assert (
        np.abs(tinted[far_corner].astype(int) - plain[far_corner]).mean() < 3
    )  # grey far away: untouched


def test_explain_writes_a_picture_per_image_for_typed_labels(
    regional_colour_bundles, tmp_path, caplog
):
    caplog.set_level(logging.INFO)
    images = tmp_path / "in"
    images.mkdir()
    cv2.imwrite(str(images / "left.png"), patch_frame(RED, 0.0, 0.25, 0.5, 0.75))
    cv2.imwrite(str(images / "top.jpg"), patch_frame(BLUE, 0.25, 0.0, 0.75, 0.5))
    out = tmp_path / "out"
    code = main(
        [
            "explain",
            "--bundle",
            str(regional_colour_bundles["int8"]),
            str(images / "left.png"),
            str(images / "top.jpg"),
            "--labels",
            "red circle,blue star",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "left.explain.png",
        "top.explain.png",
    ]  # no .part left
    picture = cv2.imread(str(out / "left.explain.png"))
    assert picture is not None and picture.shape[0] > 256
    assert picture.shape[1] > 3 * picture.shape[0]  # the input and two label panels side by side
    assert "red circle" in caplog.text and "blue star" in caplog.text


def test_explain_skips_an_unreadable_image_and_says_so(regional_colour_bundles, tmp_path, caplog):
    good = tmp_path / "good.png"
    cv2.imwrite(str(good), patch_frame(RED, 0, 0, 0.5, 0.5))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    code = main(
        [
            "explain",
            "--bundle",
            str(regional_colour_bundles["fp32"]),
            str(broken),
            str(good),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 2
    assert (tmp_path / "out" / "good.explain.png").is_file()
    assert not (tmp_path / "out" / "broken.explain.png").exists()
    assert "broken.png" in caplog.text


def test_explain_refuses_a_bundle_without_maps_in_one_line(fp32_bundle, tmp_path, capsys):
    image = tmp_path / "red.png"
    cv2.imwrite(str(image), solid(RED))
    code = main(
        ["explain", "--bundle", str(fp32_bundle), str(image), "--out", str(tmp_path / "out")]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "no label maps" in err[0]
    assert not (tmp_path / "out").exists()


def test_manifest_label_maps_round_trip_through_json(regional_colour_bundles):
    manifest = read_bundle(regional_colour_bundles["int8"]).manifest
    assert json.loads(manifest.to_json())["label_maps"] == {
        "grid": [4, 4],
        "source": "cells",
        "output_quant": None,
    }
    assert manifest.label_maps == LabelMaps((4, 4))


@pytest.mark.parametrize(
    ("outputs", "located"),
    [
        ({"jsonl": "events.jsonl"}, True),  # events carry each label's point and box
        ({"jsonl": None, "draw_heatmaps": True}, True),
        ({"jsonl": None, "video_out": "out.mp4"}, False),  # pictures without heatmaps
        ({"jsonl": None, "preview_port": 0}, False),
    ],
)
def test_a_run_locates_labels_only_when_an_output_uses_where_they_fired(
    regional_colour_bundles, outputs, located
):
    from fuselite.runtime.loop import located_only_if_read
    from fuselite.runtime.options import RunOptions

    asked = AnnotatorOptions(regional_colour_bundles["int8"], num_threads=1)
    options = located_only_if_read(asked, RunOptions(source="clip.mp4", **outputs))
    assert options.explain is located
    assert located_only_if_read(asked, RunOptions(source="clip.mp4", jsonl=None), mqtt=True).explain
    refused = AnnotatorOptions(regional_colour_bundles["int8"], explain=False)
    assert not located_only_if_read(refused, RunOptions(source="clip.mp4")).explain
