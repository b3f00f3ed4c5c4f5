"""Specification of the dataset readers, on small real files written per test."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from fuselite.data.readers import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    read_coco,
    read_dataset,
    read_fashion_mnist,
    read_folder_per_class,
    read_manifest,
)
from fuselite.errors import UserError

SIZE = 32
RED, BLUE = (220, 30, 30), (30, 30, 220)


def write_image(path: Path, rgb: tuple[int, int, int], shape=(40, 50), grey: bool = False) -> Path:
    """A flat-colour image at ``path`` (RGB given, written as OpenCV's BGR)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if grey:
        image = np.full(shape, rgb[0], dtype=np.uint8)
    else:
        image = np.zeros((*shape, 3), dtype=np.uint8)
        image[:] = rgb[::-1]
    assert cv2.imwrite(str(path), image)
    return path


def write_corrupt(path: Path) -> Path:
    """Random bytes with an image suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes())
    return path


# Folder of class folders ---------------------------------------------------------------


def test_folder_per_class_reads_images_with_folder_names_as_tags(tmp_path):
    write_image(tmp_path / "red_apple" / "a.png", RED)
    write_image(tmp_path / "blue-sky" / "b.jpg", BLUE)
    write_image(tmp_path / "blue-sky" / "c.bmp", BLUE, grey=True)
    (tmp_path / "blue-sky" / "notes.txt").write_text("not an image")

    data = read_folder_per_class(tmp_path, SIZE)

    assert data.task == "single"
    assert data.images.shape == (3, SIZE, SIZE, 3) and data.images.dtype == np.uint8
    assert data.tags == [["blue sky"], ["blue sky"], ["red apple"]]
    assert data.captions == ["", "", ""]
    assert data.ids == ["blue-sky/b.jpg", "blue-sky/c.bmp", "red_apple/a.png"]
    assert np.abs(data.images[0, 16, 16].astype(int) - BLUE).max() < 10  # RGB order
    assert len(set(data.images[1, 16, 16])) == 1  # grey replicated to 3 channels
    assert np.abs(data.images[2, 16, 16].astype(int) - RED).max() < 10


def test_folder_per_class_skips_a_corrupt_image_and_logs_it(tmp_path, caplog):
    write_image(tmp_path / "cat" / "ok.png", RED)
    write_corrupt(tmp_path / "cat" / "broken.jpg")

    with caplog.at_level(logging.WARNING):
        data = read_folder_per_class(tmp_path, SIZE)

    assert len(data) == 1
    assert data.skipped == [("cat/broken.jpg", "not a decodable image")]
    assert "skipped 1 unusable item" in caplog.text


def test_folder_with_only_corrupt_images_raises_user_error_naming_it(tmp_path):
    write_corrupt(tmp_path / "cat" / "broken.jpg")
    with pytest.raises(UserError, match=str(tmp_path)):
        read_folder_per_class(tmp_path, SIZE)


def test_missing_source_raises_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        read_folder_per_class(tmp_path / "nowhere", SIZE)
    with pytest.raises(UserError, match="not found"):
        read_dataset(tmp_path / "nowhere.csv", SIZE)


# Manifests ------------------------------------------------------------------------------


def test_csv_manifest_reads_tags_split_on_semicolons_and_captions(tmp_path):
    write_image(tmp_path / "img" / "a.png", RED)
    write_image(tmp_path / "img" / "b.png", BLUE)
    manifest = tmp_path / "data.csv"
    manifest.write_text(
        'image,tags,caption\nimg/a.png,red; square ,"a red square, flat"\nimg/b.png,blue,\n'
    )

    data = read_manifest(manifest, SIZE)

    assert data.task == "multi" and len(data) == 2 and not data.skipped
    assert data.tags == [["red", "square"], ["blue"]]
    assert data.captions == ["a red square, flat", ""]
    assert data.ids == ["img/a.png", "img/b.png"]


def test_csv_manifest_accepts_a_path_column_and_a_task_argument(tmp_path):
    write_image(tmp_path / "a.png", RED)
    manifest = tmp_path / "data.csv"
    manifest.write_text("path,tags\na.png,red\n")
    assert read_manifest(manifest, SIZE, task="single").task == "single"


def test_csv_manifest_skips_bad_items_and_keeps_the_rest(tmp_path):
    write_image(tmp_path / "good.png", RED)
    write_corrupt(tmp_path / "corrupt.jpg")
    write_image(tmp_path.parent / "outside.png", RED)
    manifest = tmp_path / "data.csv"
    manifest.write_bytes(
        b"image,tags,caption\n"
        b"good.png,red,\n"
        b"corrupt.jpg,red,\n"
        b"missing.png,red,\n"
        b"good.png,,\n"
        b"good.png,r\xff\xfed,\n"
        b"../outside.png,red,\n"
        b"good.png,,only a caption\n"
    )

    data = read_manifest(manifest, SIZE)

    assert data.tags == [["red"], []]
    assert data.captions == ["", "only a caption"]
    assert sorted(data.skipped) == sorted(
        [
            ("corrupt.jpg", "not a decodable image"),
            ("missing.png", "image file not found"),
            ("good.png", "no tags and no caption"),
            ("data.csv line 6", "line is not valid UTF-8"),
            ("../outside.png", "path escapes the dataset folder"),
        ]
    )


def test_csv_manifest_without_an_image_column_raises_user_error(tmp_path):
    manifest = tmp_path / "data.csv"
    manifest.write_text("file,tags\na.png,red\n")
    with pytest.raises(UserError, match="'image'"):
        read_manifest(manifest, SIZE)


def test_jsonl_manifest_reads_items_and_skips_bad_lines(tmp_path):
    write_image(tmp_path / "a.png", RED)
    write_image(tmp_path / "b.png", BLUE)
    lines = [
        json.dumps(
            {"image": "a.png", "tags": ["red", "square"], "caption": "a red square"}
        ).encode(),
        b"",
        b"{not json",
        json.dumps({"image": "b.png", "tags": []}).encode(),
        b'{"image": "b.png", "tags": ["bl\xffue"]}',
        json.dumps({"image": "b.png", "tags": ["blue"]}).encode(),
    ]
    manifest = tmp_path / "data.jsonl"
    manifest.write_bytes(b"\n".join(lines) + b"\n")

    data = read_manifest(manifest, SIZE)

    assert data.tags == [["red", "square"], ["blue"]]
    assert data.captions == ["a red square", ""]
    assert data.skipped == [
        ("data.jsonl line 3", "line is not valid JSON"),
        ("b.png", "no tags and no caption"),
        ("data.jsonl line 5", "line is not valid UTF-8"),
    ]


def test_manifest_with_no_usable_items_raises_user_error_naming_the_file(tmp_path):
    manifest = tmp_path / "data.jsonl"
    manifest.write_text(json.dumps({"image": "missing.png", "tags": ["x"]}) + "\n")
    with pytest.raises(UserError, match=r"data\.jsonl: no usable items.*image file not found"):
        read_manifest(manifest, SIZE)


# COCO -----------------------------------------------------------------------------------


def write_coco(path: Path) -> Path:
    document = {
        "images": [
            {"id": 1, "file_name": "one.jpg"},
            {"id": 2, "file_name": "two.jpg"},
            {"id": 3, "file_name": "three.jpg"},  # no annotations at all
            {"id": 4, "file_name": "gone.jpg"},  # annotated but missing on disk
        ],
        "categories": [{"id": 7, "name": "cat"}, {"id": 9, "name": "dog"}],
        "annotations": [
            {"image_id": 1, "category_id": 9},
            {"image_id": 1, "category_id": 7},
            {"image_id": 1, "category_id": 7},
            {"image_id": 1, "caption": "A cat and a dog. "},
            {"image_id": 1, "caption": "Second caption."},
            {"image_id": 2, "caption": "Just a caption."},
            {"image_id": 4, "category_id": 7},
        ],
    }
    path.write_text(json.dumps(document))
    return path


def test_coco_reads_category_tags_and_first_caption(tmp_path):
    images_dir = tmp_path / "val2017"
    for name in ("one.jpg", "two.jpg", "three.jpg"):
        write_image(images_dir / name, RED)
    annotations = write_coco(tmp_path / "annotations.json")

    data = read_coco(annotations, SIZE, images_dir=images_dir)

    assert data.ids == ["one.jpg", "two.jpg"]
    assert data.tags == [["cat", "dog"], []]
    assert data.captions == ["A cat and a dog.", "Just a caption."]
    assert sorted(data.skipped) == [
        ("gone.jpg", "image file not found"),
        ("three.jpg", "no tags and no caption"),
    ]


def test_coco_without_images_list_raises_user_error(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"annotations": []}))
    with pytest.raises(UserError, match="COCO"):
        read_coco(path, SIZE)


# Fashion-MNIST ----------------------------------------------------------------------------


@pytest.mark.skipif(
    not FASHION_MNIST_DIR.is_dir(),
    reason=f"{FASHION_MNIST_DIR} missing: apt-get install dataset-fashion-mnist",
)
def test_fashion_mnist_reads_the_installed_files():
    data = read_fashion_mnist(image_size=SIZE, split="train", limit=100)

    assert data.images.shape == (100, SIZE, SIZE, 3) and data.images.dtype == np.uint8
    assert data.task == "single" and data.ids[0] == "fashion-mnist-train-0"
    assert all(len(tags) == 1 and tags[0] in FASHION_MNIST_CLASSES for tags in data.tags)
    counts = {name: sum(tags == [name] for tags in data.tags) for name in FASHION_MNIST_CLASSES}
    assert sum(count > 0 for count in counts.values()) >= 9  # balanced classes
    assert max(counts.values()) <= 25
    # Items are centred garments on black: the border is dark, the middle is not.
    assert data.images[:, 0, :, :].mean() < 20 < data.images[:, 12:20, 12:20, :].mean()
    assert np.array_equal(data.images[..., 0], data.images[..., 2])  # grey replicated
    test = read_fashion_mnist(image_size=SIZE, split="test", limit=5)
    assert test.ids[-1] == "fashion-mnist-test-4"


def write_idx(path: Path, magic: int, shape: tuple[int, ...], body: bytes) -> Path:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in shape)
    with gzip.open(path, "wb") as stream:
        stream.write(header + body)
    return path


def test_fashion_mnist_from_hand_written_idx_files(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", 2051, (2, 28, 28), bytes(2 * 28 * 28))
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", 2049, (2,), bytes([9, 1]))
    data = read_dataset(tmp_path, SIZE)
    assert data.tags == [["ankle boot"], ["trouser"]]


def test_fashion_mnist_wrong_magic_raises_user_error(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", 2049, (2, 28, 28), bytes(2 * 28 * 28))
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", 2049, (2,), bytes([0, 1]))
    with pytest.raises(UserError, match="magic number"):
        read_fashion_mnist(tmp_path, SIZE)


def test_fashion_mnist_missing_folder_says_what_to_install(tmp_path):
    with pytest.raises(UserError, match="apt-get install dataset-fashion-mnist"):
        read_fashion_mnist(tmp_path / "absent", SIZE)


# Dispatch -------------------------------------------------------------------------------


def test_read_dataset_dispatches_on_the_kind_of_source(tmp_path):
    write_image(tmp_path / "classes" / "cat" / "a.png", RED)
    write_image(tmp_path / "m" / "a.png", RED)
    (tmp_path / "m" / "list.csv").write_text("image,tags\na.png,red\n")
    (tmp_path / "m" / "list.jsonl").write_text('{"image": "a.png", "tags": ["red"]}\n')
    (tmp_path / "m" / "coco.json").write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "a.png"}],
                "annotations": [{"image_id": 1, "caption": "red"}],
            }
        )
    )
    assert read_dataset(tmp_path / "classes", SIZE).task == "single"
    assert read_dataset(tmp_path / "m" / "list.csv", SIZE).tags == [["red"]]
    assert read_dataset(str(tmp_path / "m" / "list.jsonl"), SIZE).tags == [["red"]]
    assert read_dataset(tmp_path / "m" / "coco.json", SIZE).captions == ["red"]


def test_read_dataset_rejects_an_unknown_source_listing_the_kinds(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    for source in (tmp_path / "notes.txt", tmp_path):
        with pytest.raises(UserError, match="class folders.*manifest.*COCO.*Fashion-MNIST"):
            read_dataset(source, SIZE)
