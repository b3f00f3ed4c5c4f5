"""The tiny tower's input size is chosen from the data unless the user set it (issue 32, item 2).

Manifests list one real image many times: the survey reads headers, so the item count
and the image size are what a real set of that many such images gives.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from fuselite.data.readers import survey_dataset
from fuselite.train.configs import (
    get_config,
    image_size_from_data,
    resolve_backbone,
    resolve_image_size,
)


def _manifest(folder: Path, items: int, width: int, height: int, suffix: str = ".jpg") -> Path:
    """A JSONL manifest of ``items`` lines naming one ``width`` x ``height`` image."""
    folder.mkdir(parents=True, exist_ok=True)
    image = folder / f"photo{suffix}"
    cv2.imwrite(str(image), np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8))
    lines = (json.dumps({"image": image.name, "tags": ["cat" if i % 2 else "dog"]}) for i in range(items))
    (folder / "m.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "m.jsonl"


def _custom(data: Path, **overrides):
    return resolve_backbone(get_config("custom").with_overrides(data=str(data), **overrides), "tiny")


@pytest.mark.parametrize(
    "items, width, height, expected",
    [
        (826, 480, 360, 96),    # the real set: hundreds of photos
        (826, 150, 150, 64),    # small images
        (120, 640, 480, 64),    # few items
        (6000, 400, 300, 128),  # a large set of large images
        (6000, 220, 220, 96),   # many items, but not 256 px
    ],
)
def test_the_input_size_follows_the_item_count_and_image_size(tmp_path, items, width, height, expected):
    config, note = resolve_image_size(_custom(_manifest(tmp_path, items, width, height)))
    assert config.image_size == expected
    assert f"{items} items, median short side {min(width, height)} px" in note
    assert not config.image_size_from_data  # settled: the run records the size


def test_the_survey_reads_png_headers_too_and_counts_only_usable_entries(tmp_path):
    manifest = _manifest(tmp_path, 10, 300, 200, ".png")
    with manifest.open("a") as stream:
        stream.write('{"image": "photo.png"}\n')  # no tag, no caption: not an item
        stream.write('{"image": "", "tags": ["x"]}\n')  # no path: not an item
    survey = survey_dataset(manifest)
    assert survey.items == 10 and survey.sizes[0] == (300, 200) and survey.short_side == 200


def test_never_above_the_images_own_size_and_never_below_64():
    assert image_size_from_data(10_000, 40)[0] == 64
    assert image_size_from_data(10_000, 300)[0] == 128
    assert image_size_from_data(700, 205)[0] == 96
    assert image_size_from_data(10, None) == (64, "no image header could be read")


def test_an_explicit_image_size_wins_over_the_data(tmp_path):
    manifest = _manifest(tmp_path, 826, 480, 360)
    config, note = resolve_image_size(_custom(manifest, image_size=72))
    assert config.image_size == 72 and note.startswith("as set")
    config, _ = resolve_image_size(resolve_backbone(get_config("custom").with_overrides(data=str(manifest)),
                                                    "tiny", image_size=128))
    assert config.image_size == 128


def test_a_pretrained_backbone_keeps_its_native_size(tmp_path):
    manifest = _manifest(tmp_path, 826, 100, 100)  # small images would give 64 px to the tiny tower
    config = resolve_backbone(get_config("custom").with_overrides(data=str(manifest)), "efficientnet-lite0")
    config, note = resolve_image_size(config)
    assert config.image_size == 224 and "native" in note


def test_the_help_documents_the_input_size_and_the_custom_schedule():
    proc = subprocess.run([sys.executable, "-m", "fuselite.cli", "train", "--help"], capture_output=True,
                          text=True, timeout=120, check=True)
    text = " ".join(proc.stdout.split())
    assert "custom: 40 epochs" in text
    assert "chosen from the data" in text and "96 for 500+ items of 200+ px" in text
