"""Specification of the openclipart recipe, on a small fake clip-art tree per test.

The fake tree mimics Debian's ``openclipart-png``: RGBA PNGs with a transparent (black
under alpha 0) background in category/sub-category folders, openclipart-style names.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from support.clipart import PER_FOLDER, SQUARE_BGR, fake_tree

from fuselite.data.openclipart import (
    DEFAULT_ROOT,
    INSTALL_HINT,
    build_manifests,
    caption_from_name,
    find_clipart,
    main,
)
from fuselite.data.readers import load_image, read_dataset
from fuselite.errors import UserError

MANIFESTS = ("seen", "seen-train", "seen-test", "heldout-train", "heldout-test")


def read_lines(path: Path) -> list[dict]:
    """The JSON objects of a JSONL manifest."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def built(tmp_path):
    """(summary, out folder) of a build of the fake tree, 3 sub-categories held out."""
    out = tmp_path / "out"
    root = fake_tree(tmp_path / "png")
    summary = build_manifests(root, out, 100, 7, 3, min_category_images=5)
    return summary, out


def test_tags_are_the_category_then_the_subcategory_in_human_words(built):
    summary, out = built
    tags = Counter(tuple(entry["tags"]) for entry in read_lines(out / "seen.jsonl"))
    assert set(tags) == {
        ("animals", "mammals"),
        ("animals", "birds"),
        ("food", "fruit"),
        ("food", "vegetables"),
        ("road vehicles", "cars"),
        ("road vehicles", "boats"),
    }
    assert set(tags.values()) == {PER_FOLDER}
    assert summary.counts["road vehicles"] == {"boats": 10, "cars": 10}


def test_captions_are_file_name_words_without_numbers_authors_or_generic_words():
    assert caption_from_name("polarBear_benji_park_01") == "polar bear"
    assert caption_from_name("heart-arrow_benji_par_01") == "heart arrow"
    assert caption_from_name("canguro_architetto_franc_01") == "canguro"
    assert caption_from_name("red_apple_clipart") == "red apple"
    assert caption_from_name("star_95pt06step") == "star"
    assert caption_from_name("blueman_202_01") == "blueman"
    assert caption_from_name("01", fallback="bears") == "bears"


def test_manifest_captions_come_from_the_file_names(built):
    _, out = built
    captions = {e["image"]: e["caption"] for e in read_lines(out / "seen.jsonl")}
    assert captions["images/animals__mammals__polarBear_benji_park_01.jpg"] == "polar bear"
    assert captions["images/food__fruit__banana_architetto_franc_01.jpg"] == "banana"
    assert captions["images/road_vehicles__boats__sail_boat_v4.jpg"] == "sail boat"


def test_transparent_pixels_become_white(built, tmp_path):
    _, out = built
    source = tmp_path / "png" / "food" / "fruit" / "red_apple_clipart.png"
    assert load_image(source, 64)[0, 0].max() == 0  # readers.load_image drops alpha
    copy = cv2.imread(str(out / "images" / "food__fruit__red_apple_clipart.jpg"))
    assert copy.shape == (48, 64, 3)
    assert copy[0, 0].min() >= 250 and copy[-1, -1].min() >= 250
    assert np.abs(copy[24, 32].astype(int) - SQUARE_BGR).max() <= 6
    data = read_dataset(out / "seen.jsonl", 32)
    assert data.images[:, 0, 0].min() >= 250


def test_manifests_are_read_by_the_trainer_reader_with_the_right_counts(built):
    summary, out = built
    expected = {
        "seen": 60,
        "seen-train": 48,
        "seen-test": 12,
        "heldout-train": 30,
        "heldout-test": 30,
    }
    for name in MANIFESTS:
        data = read_dataset(out / f"{name}.jsonl", 32)
        assert (len(data), data.skipped) == (expected[name], []), name
        assert summary.manifests[f"{name}.jsonl"] == expected[name]
    assert summary.total == 60


def test_seen_split_is_by_file_and_stratified_by_subcategory(built):
    _, out = built
    train = read_lines(out / "seen-train.jsonl")
    test = read_lines(out / "seen-test.jsonl")
    assert not {e["image"] for e in train} & {e["image"] for e in test}
    assert set(Counter(tuple(e["tags"]) for e in test).values()) == {2}


def test_heldout_subfolders_appear_only_in_heldout_test(built):
    summary, out = built
    held = {tuple(pair) for pair in summary.heldout}
    assert len(held) == 3 and len({c for c, _ in held}) == 3  # one per category
    test_groups = {tuple(e["tags"]) for e in read_lines(out / "heldout-test.jsonl")}
    train_groups = {tuple(e["tags"]) for e in read_lines(out / "heldout-train.jsonl")}
    assert test_groups == held
    assert not train_groups & held
    assert {c for c, _ in train_groups} == {c for c, _ in held}  # categories stay seen
    written = json.loads((out / "summary.json").read_text())
    assert written["heldout_subfolders"] == [f"{c}/{s}" for c, s in summary.heldout]


def test_unreadable_tiny_blank_and_excluded_pictures_are_left_out(built):
    summary, out = built
    assert summary.dropped["unreadable"] == 1
    assert summary.dropped["smaller than 32 px"] == 1
    assert summary.dropped["excluded category"] == 1
    assert summary.dropped["blank (fully transparent or one colour)"] == 1
    assert len(list((out / "images").glob("*.jpg"))) == 60


def test_per_category_cap_and_small_categories(tmp_path):
    root = fake_tree(tmp_path / "png")
    (root / "food" / "vegetables").rename(tmp_path / "moved")  # food: 11 pictures left
    summary = build_manifests(root, tmp_path / "out", 4, 0, 0, min_category_images=15)
    assert set(summary.counts) == {"animals", "road vehicles"}
    assert all(n == 4 for subs in summary.counts.values() for n in subs.values())
    assert summary.dropped["over the per-category cap"] == 4 * 6
    assert summary.heldout == [] and summary.manifests["heldout-test.jsonl"] == 0


def test_same_seed_gives_identical_files_and_another_seed_another_split(tmp_path):
    root = fake_tree(tmp_path / "png")
    runs = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        build_manifests(root, tmp_path / name, 100, seed, 2, min_category_images=5)
        runs[name] = {
            p.relative_to(tmp_path / name).as_posix(): p.read_bytes()
            for p in sorted((tmp_path / name).rglob("*"))
            if p.is_file()
        }
    summary_a = json.loads(runs["a"].pop("summary.json"))
    summary_b = json.loads(runs["b"].pop("summary.json"))
    assert runs["a"] == runs["b"] and summary_a == summary_b
    assert runs["a"]["seen-test.jsonl"] != runs["c"]["seen-test.jsonl"]


def test_missing_root_is_one_clear_line_and_exit_code_2(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    with pytest.raises(UserError, match="apt-get install openclipart-png"):
        build_manifests(missing, tmp_path / "out")
    assert main(["--out", str(tmp_path / "out"), "--root", str(missing)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and INSTALL_HINT in error
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not DEFAULT_ROOT.is_dir(), reason="Debian's openclipart-png not installed")
def test_real_debian_tree_gives_sane_counts(tmp_path):
    pictures = find_clipart(DEFAULT_ROOT)
    per_category = Counter(p.category for p in pictures)
    assert len(pictures) > 5000
    assert {"animals", "food", "shapes", "signs and symbols"} <= set(per_category)
    assert "unsorted" not in per_category and "special" not in per_category
    summary = build_manifests(DEFAULT_ROOT, tmp_path / "out", per_category=1, seed=0)
    assert 10 <= len(summary.counts) <= 20
    assert all(n == 1 for subs in summary.counts.values() for n in subs.values())
    assert summary.manifests["seen.jsonl"] == summary.total
    assert 50 <= summary.total <= 100  # one per (category, sub-category)
