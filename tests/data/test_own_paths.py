"""A dataset named on the command line is the user's own: its paths are taken as written.

Absolute paths and ``..`` in a manifest or COCO file, and symlinks in class folders,
load through :func:`read_dataset` (``fuselite train --data``, ``fuselite bench --data``);
the same files read with ``own_file=False`` (data unpacked from an archive or bundle)
keep every path inside the dataset's folder (issue 32, item 7).
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from fuselite.data.readers import read_coco, read_dataset, read_folder_per_class, read_manifest
from fuselite.data.sources import DataSpec, load_run_data

SIZE = 32
ESCAPES = "path escapes the dataset folder"


def _image(path: Path, bgr=(0, 0, 200)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((40, 40, 3), bgr, np.uint8))
    return path


@pytest.fixture
def photos(tmp_path) -> Path:
    """``photos/`` beside the ``lists/`` folder the manifests are written in."""
    for i in range(6):
        _image(tmp_path / "photos" / f"red{i}.png", (0, 0, 200))
        _image(tmp_path / "photos" / f"blue{i}.png", (200, 0, 0))
    (tmp_path / "lists").mkdir()
    return tmp_path


def _entries(root: Path) -> list[tuple[str, str]]:
    """Half the images by absolute path, half by ``../photos/...``."""
    entries = []
    for i in range(6):
        for colour in ("red", "blue"):
            written = str(root / "photos" / f"{colour}{i}.png") if i % 2 else f"../photos/{colour}{i}.png"
            entries.append((written, colour))
    return entries


def test_a_jsonl_manifest_with_absolute_and_dotdot_paths_loads(photos):
    manifest = photos / "lists" / "mine.jsonl"
    manifest.write_text("".join(json.dumps({"image": w, "tags": [t]}) + "\n" for w, t in _entries(photos)))
    data = read_dataset(manifest, SIZE)
    assert len(data) == 12 and data.skipped == []
    red = [i for i, tags in enumerate(data.tags) if tags == ["red"]]
    assert data.images[red][..., 0].mean() > 150  # RGB: the red images really are the red ones


def test_a_csv_manifest_with_absolute_and_dotdot_paths_loads(photos):
    manifest = photos / "lists" / "mine.csv"
    manifest.write_text("image,tags\n" + "".join(f"{w},{t}\n" for w, t in _entries(photos)))
    assert len(read_dataset(manifest, SIZE)) == 12


def test_the_same_manifest_from_an_archive_stays_confined(photos):
    manifest = photos / "lists" / "mine.csv"
    manifest.write_text("image,tags\n" + "".join(f"{w},{t}\n" for w, t in _entries(photos)))
    with pytest.raises(Exception, match=ESCAPES):
        read_manifest(manifest, SIZE)  # own_file=False: the readers' default
    with pytest.raises(Exception, match=ESCAPES):
        read_dataset(manifest, SIZE, own_file=False)


def test_a_coco_file_name_that_is_absolute_or_leaves_the_folder_loads(photos):
    images = [{"id": 1, "file_name": str(photos / "photos" / "red0.png")},
              {"id": 2, "file_name": "../photos/blue0.png"}]
    annotations = [{"image_id": 1, "caption": "a red square"}, {"image_id": 2, "caption": "a blue square"}]
    coco = photos / "lists" / "coco.json"
    coco.write_text(json.dumps({"images": images, "annotations": annotations}))
    assert read_dataset(coco, SIZE).captions == ["a red square", "a blue square"]
    with pytest.raises(Exception, match=ESCAPES):
        read_coco(coco, SIZE)


def test_a_class_folder_of_symlinks_to_elsewhere_loads(photos):
    root = photos / "classes"
    for colour in ("red", "blue"):
        (root / colour).mkdir(parents=True)
        (root / colour / "a.png").symlink_to(photos / "photos" / f"{colour}0.png")
    assert sorted(read_dataset(root, SIZE).ids) == ["blue/a.png", "red/a.png"]
    with pytest.raises(Exception, match=ESCAPES):
        read_folder_per_class(root, SIZE)


def test_a_run_loads_its_splits_from_a_manifest_with_outside_paths(photos):
    manifest = photos / "lists" / "mine.jsonl"
    manifest.write_text("".join(json.dumps({"image": w, "tags": [t]}) + "\n" for w, t in _entries(photos)))
    data = load_run_data(DataSpec(name="custom", data=str(manifest), image_size=SIZE))
    assert len(data.train) + len(data.val) + len(data.test) == 12 and data.skipped == 0


def test_a_missing_absolute_path_is_one_skipped_item_with_its_reason(photos):
    manifest = photos / "lists" / "mine.jsonl"
    gone = photos / "photos" / "gone.png"
    lines = [{"image": str(photos / "photos" / "red0.png"), "tags": ["red"]}, {"image": str(gone), "tags": ["red"]}]
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    data = read_dataset(manifest, SIZE)
    assert len(data) == 1 and data.skipped == [(str(gone), "image file not found")]
