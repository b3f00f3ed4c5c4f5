"""The transfer suite's pieces: the extra pictures, the teacher's tags, the manifests, the verdict."""

from __future__ import annotations

import json

import numpy as np
import pytest
from support.clipart import PER_FOLDER, TREE, fake_tree

from fuselite.bench.transfer_suite import (
    LITE0,
    _with_known_tags,
    extra_pictures,
    summarise,
    teacher_tags,
    to_markdown,
    true_labelled_manifest,
)
from fuselite.data.openclipart import build_manifests
from fuselite.data.readers import read_dataset

LABELS = ["animals", "birds", "food", "fruit", "mammals"]
CATEGORIES = {"animals", "food"}


def test_the_teacher_tags_its_best_category_and_a_confident_sub_category():
    soft = np.array([[0.9, 0.7, 0.2, 0.1, 0.3],    # animals, birds (0.7 >= 0.5)
                     [0.4, 0.2, 0.6, 0.45, 0.1]])  # food; fruit 0.45 is not confident
    assert teacher_tags(soft, LABELS, CATEGORIES) == [["animals", "birds"], ["food"]]


def test_the_student_manifest_drops_tags_its_teacher_never_trained_on(tmp_path):
    manifest = tmp_path / "seen-train.jsonl"
    manifest.write_text('{"image": "images/a.jpg", "tags": ["food", "dairy"], "caption": "milk"}\n')
    extra = [{"image": "extra-images/b.jpg", "tags": ["animals"], "caption": "cat"}]
    lines = [json.loads(line) for line in _with_known_tags(manifest, set(LABELS), extra).decode().splitlines()]
    assert lines == [{"image": "images/a.jpg", "tags": ["food"], "caption": "milk"}, *extra]


@pytest.fixture
def built(tmp_path):
    """A fake clip-art tree built with 4 pictures per sub-category kept: 6 left over each."""
    root = fake_tree(tmp_path / "png")
    out = tmp_path / "openclipart"
    build_manifests(root, out, 4, 0, 0, min_category_images=5)
    return out


def test_the_extra_pictures_are_those_no_manifest_holds_with_their_true_tags(built):
    extra = extra_pictures(built)
    entries = [json.loads(line) for line in extra.read_text().splitlines()]
    in_manifests = {json.loads(line)["image"].rsplit("/", 1)[-1] for line in (built / "seen.jsonl").open()}
    names = [entry["image"].rsplit("/", 1)[-1] for entry in entries]
    sub_categories = sum(len(subs) for subs in TREE.values())
    # Every sub-category has PER_FOLDER readable pictures; the manifests keep 4 of each.
    assert len(names) == sub_categories * (PER_FOLDER - 4) and not set(names) & in_manifests
    assert all(entry["image"].startswith("extra-images/") for entry in entries)
    assert {tuple(entry["tags"]) for entry in entries} == {
        (category.replace("_", " "), sub) for category, subs in TREE.items() for sub in subs}
    # The trainer reads them, and together with seen-train as one manifest.
    assert len(read_dataset(extra, 32, own_file=False)) == len(names)
    both = built / "seen-train-true-labelled.jsonl"
    true_labelled_manifest(built, extra, both)
    assert len(read_dataset(both, 32, own_file=False)) == len(names) + sum(1 for _ in (built / "seen-train.jsonl").open())
    assert extra_pictures(built) == extra  # built once


def _row(seed: int, tiny: float, labelled: float, true: float) -> dict:
    return {"seed": seed, LITE0: 0.65, "teacher_right_on_extra": 0.74, "tiny": tiny,
            "teacher-labelled-tiny": labelled, "true-labelled-tiny": true}


def test_the_verdict_is_the_distilled_students_mean_gain():
    report = summarise([_row(1, 0.493, 0.475, 0.52), _row(2, 0.45, 0.52, 0.50)], extra_pictures=3529)
    assert report["mean_gain_pt"]["teacher-labelled-tiny"] == pytest.approx(2.6)
    assert report["target_met"] is False
    table = to_markdown(report)
    assert "| 1 | 65.0% | 74.0% | 49.3% | 47.5% (-1.8) | 52.0% (+2.7) |" in table
    assert "3529 extra pictures; mean gain over tiny: teacher-labelled-tiny +2.6 pt ± 6.2" in table
