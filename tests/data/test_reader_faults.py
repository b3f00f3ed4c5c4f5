"""Training data that used to trace back, hang or eat memory: each is now a counted skip or one line.

Every case here was found by an independent attack on the readers (issue 36, items 7-9 and
the minor ones); the files are small and written per test.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
from image_files import big_png, truncated_jpeg, unblock_fifo

from fuselite.data.readers import read_coco, read_dataset, read_folder_per_class, read_manifest
from fuselite.errors import UserError

SIZE = 16
DEEP = 100_000  # far past Python's recursion limit (1,000)


def write_png(path: Path, colour=(200, 40, 40)) -> Path:
    """A small flat-colour PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((20, 24, 3), colour, np.uint8))
    return path


def jsonl(folder: Path, entries: list) -> Path:
    """A JSONL manifest of ``entries`` (dicts are dumped, strings written as they are)."""
    lines = [e if isinstance(e, str) else json.dumps(e) for e in entries]
    path = folder / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def reasons(data) -> list[str]:
    """The skip reasons, in order."""
    return [reason for _item, reason in data.skipped]


# ---- item 7: values that traced back -------------------------------------------------


def test_a_deeply_nested_jsonl_value_is_a_counted_skip(tmp_path):
    write_png(tmp_path / "a.png")
    deep = '{"image": "a.png", "tags": ' + "[" * DEEP + "]" * DEEP + "}"
    data = read_manifest(jsonl(tmp_path, [deep, {"image": "a.png", "tags": ["cat"]}]), SIZE)
    assert data.tags == [["cat"]]
    assert reasons(data) == ["line is nested too deeply"]


def test_a_nul_byte_in_an_image_path_is_a_counted_skip(tmp_path):
    write_png(tmp_path / "a.png")
    manifest = jsonl(tmp_path, [{"image": "a\u0000.png", "tags": ["cat"]},
                                {"image": "a.png", "tags": ["dog"]}])
    data = read_manifest(manifest, SIZE)
    assert data.tags == [["dog"]]
    assert reasons(data) == ["image path contains a NUL character"]


def test_a_csv_field_over_the_field_limit_skips_that_row_only(tmp_path):
    write_png(tmp_path / "a.png")
    write_png(tmp_path / "b.png")
    huge = "x" * 200_000
    (tmp_path / "data.csv").write_text(f"image,tags,caption\na.png,cat,{huge}\nb.png,dog,ok\n")
    data = read_manifest(tmp_path / "data.csv", SIZE)
    assert data.tags == [["dog"]]
    assert data.skipped == [("data.csv line 2", "a field is longer than 131072 characters")]


def test_an_unterminated_csv_quote_is_reported_and_the_rows_after_it_are_kept(tmp_path):
    for name in "abc":
        write_png(tmp_path / f"{name}.png")
    (tmp_path / "data.csv").write_text(
        'image,tags,caption\na.png,cat,"a cat\nb.png,dog,a dog\nc.png,cow,"a cow"\n'
    )
    data = read_manifest(tmp_path / "data.csv", SIZE)
    assert data.tags == [["dog"], ["cow"]]
    assert data.captions == ["a dog", "a cow"]
    assert data.skipped == [("data.csv line 2", "a quoted field is never closed (unterminated \")")]


def test_a_multi_line_quoted_csv_caption_is_still_one_row(tmp_path):
    write_png(tmp_path / "a.png")
    (tmp_path / "data.csv").write_text('image,tags,caption\na.png,cat,"two\nlines"\n')
    data = read_manifest(tmp_path / "data.csv", SIZE)
    assert data.captions == ["two\nlines"] and not data.skipped


def test_non_string_jsonl_tags_skip_the_item_instead_of_becoming_labels(tmp_path):
    write_png(tmp_path / "a.png")
    manifest = jsonl(tmp_path, [{"image": "a.png", "tags": [None, "cat"]},
                                {"image": "a.png", "tags": [3]},
                                {"image": "a.png", "tags": {"x": 1}},
                                {"image": "a.png", "tags": ["dog"]}])
    data = read_manifest(manifest, SIZE)
    assert data.label_vocabulary() == ["dog"]
    assert len(data.skipped) == 3
    assert all(r.startswith("'tags' must be") for r in reasons(data))


def coco(tmp_path: Path, document) -> Path:
    """A COCO file beside one image, ``a.png``."""
    write_png(tmp_path / "a.png")
    path = tmp_path / "coco.json"
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return path


def test_coco_with_integer_categories_ignores_them_with_a_warning(tmp_path, caplog):
    document = {"images": [{"id": 1, "file_name": "a.png"}],
                "categories": [1, 2, {"id": 3, "name": "cat"}, {"id": 4, "name": None}],
                "annotations": [{"image_id": 1, "category_id": 1},
                                {"image_id": 1, "category_id": 3},
                                {"image_id": 1, "category_id": 4}]}
    with caplog.at_level(logging.WARNING):
        data = read_coco(coco(tmp_path, document), SIZE)
    assert data.tags == [["cat"]]  # never a label "None"
    assert "ignored 3 categories" in caplog.text


@pytest.mark.parametrize("where", ["image", "category", "annotation image", "annotation category"])
def test_coco_with_list_valued_ids_skips_what_they_name(tmp_path, where):
    image_id = [1] if where == "image" else 1
    document = {
        "images": [{"id": image_id, "file_name": "a.png"}, {"id": 2, "file_name": "a.png"}],
        "categories": [{"id": [3] if where == "category" else 3, "name": "cat"},
                       {"id": 5, "name": "dog"}],
        "annotations": [
            {"image_id": [1] if where == "annotation image" else 1,
             "category_id": [3] if where == "annotation category" else 3},
            {"image_id": 2, "category_id": 5},
        ],
    }
    data = read_coco(coco(tmp_path, document), SIZE)
    assert ["dog"] in data.tags and ["cat"] not in data.tags
    assert len(data) == 1 and len(data.skipped) == 1


def test_coco_categories_that_are_not_a_list_are_one_clear_line(tmp_path):
    path = coco(tmp_path, {"images": [], "categories": 7})
    with pytest.raises(UserError, match="'categories' must be a list"):
        read_coco(path, SIZE)


def test_deeply_nested_coco_is_one_clear_line(tmp_path):
    path = coco(tmp_path, '{"images": [], "x": ' + "[" * DEEP + "]" * DEEP + "}")
    with pytest.raises(UserError, match="nested too deeply"):
        read_coco(path, SIZE)


def test_a_deeply_nested_coco_image_entry_is_a_counted_skip(tmp_path):
    nested = "[" * 900 + "]" * 900  # parses, but str() of it would recurse further
    path = coco(tmp_path, '{"images": [' + nested + ', {"id": 1, "file_name": "a.png"}],'
                ' "annotations": [{"image_id": 1, "caption": "a cat"}]}')
    data = read_coco(path, SIZE)
    assert data.captions == ["a cat"] and data.skipped == [("images[0]", "image entry has no 'file_name'")]


# ---- items 8 and 9, and the truncated JPEG: image files --------------------------------


def test_an_image_over_the_pixel_cap_is_skipped_before_it_is_decoded(tmp_path):
    write_png(tmp_path / "cat" / "a.png")
    big_png(tmp_path / "cat" / "big.png", 8000, 8000)  # 64 MP: 192 MB once decoded
    data = read_folder_per_class(tmp_path, SIZE)
    assert len(data) == 1
    [(item, reason)] = data.skipped
    assert item == "cat/big.png"
    assert reason.startswith("image is 8000x8000 pixels (64.0 megapixels), over the 50-megapixel cap")


def test_a_fifo_named_png_is_skipped_not_waited_on(tmp_path):
    write_png(tmp_path / "cat" / "a.png")
    fifo = tmp_path / "cat" / "b.png"
    os.mkfifo(fifo)
    result = {}
    reader = threading.Thread(target=lambda: result.update(data=read_dataset(tmp_path, SIZE)))
    reader.start()
    reader.join(10)
    hung = reader.is_alive()
    unblock_fifo(fifo, reader)
    assert not hung, "the reader waited on the FIFO"
    assert result["data"].skipped == [("cat/b.png", "not a regular file")]


def test_a_truncated_jpeg_is_skipped(tmp_path):
    write_png(tmp_path / "cat" / "a.png")
    truncated_jpeg(tmp_path / "cat" / "b.jpg")
    data = read_folder_per_class(tmp_path, SIZE)
    assert len(data) == 1 and reasons(data) == ["not a decodable image (JPEG cut short: no end marker)"]


def test_a_deeply_nested_tag_value_is_described_not_printed(tmp_path):
    write_png(tmp_path / "a.png")
    nested = "[" * 900 + "]" * 900  # parses; printing it back would recurse past the limit
    manifest = jsonl(tmp_path, ['{"image": "a.png", "tags": [' + nested + "]}",
                                {"image": "a.png", "tags": ["dog"]}])
    data = read_manifest(manifest, SIZE)
    assert reasons(data) == ["'tags' must be a list of texts (found a list)"]


def test_a_nul_byte_in_a_csv_image_path_is_a_counted_skip(tmp_path):
    write_png(tmp_path / "a.png")
    (tmp_path / "data.csv").write_text("image,tags\na\x00.png,cat\na.png,dog\n")
    data = read_manifest(tmp_path / "data.csv", SIZE)
    assert data.tags == [["dog"]] and len(data.skipped) == 1


def test_a_csv_with_more_than_100_malformed_rows_is_one_clear_line(tmp_path):
    write_png(tmp_path / "a.png")
    rows = ['a.png,cat,"open quote'] * 150 + ["a.png,dog,ok"]
    (tmp_path / "data.csv").write_text("image,tags,caption\n" + "\n".join(rows) + "\n")
    with pytest.raises(UserError, match="more than 100 malformed CSV rows"):
        read_manifest(tmp_path / "data.csv", SIZE)
