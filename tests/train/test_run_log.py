"""`fuselite train` says what it loaded before training starts (issue 32, item 3).

One short real run on a tiny manifest (absolute and ``../`` paths, one corrupt image):
the log block gives the items used and skipped with the reason, the split sizes, the
labels, the input size and why, the backbone, the epochs, and then the ETA.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from fuselite.cli import main


def _write_manifest(root: Path, per_class: int = 16) -> Path:
    """``lists/m.jsonl`` naming circles in ``photos/``: odd items by absolute path, even by ``../``."""
    rng = np.random.default_rng(0)
    lines = []
    for colour, bgr in {"red": (0, 0, 220), "blue": (220, 0, 0)}.items():
        for i in range(per_class):
            image = rng.integers(0, 60, (48, 48, 3), dtype=np.uint8)
            cv2.circle(image, (24, 24), int(rng.integers(8, 16)), bgr, -1)
            path = root / "photos" / f"{colour}{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), image)
            lines.append({"image": str(path) if i % 2 else f"../photos/{path.name}", "tags": [colour]})
    (root / "photos" / "broken.png").write_bytes(b"not an image")
    lines.append({"image": "../photos/broken.png", "tags": ["red"]})
    (root / "lists").mkdir()
    (root / "lists" / "m.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return root / "lists" / "m.jsonl"


@pytest.mark.slow  # a real run: ~30 s on two shared cores
def test_the_log_says_what_was_loaded_and_the_eta(tmp_path, caplog):
    manifest = _write_manifest(tmp_path)
    caplog.set_level(logging.INFO)
    code = main(["train", "--data", str(manifest), "--out", str(tmp_path / "run"), "--backbone", "tiny",
                 "--epochs", "2", "--batch-size", "8", "--width", "0.25"])
    assert code == 0
    text = caplog.text
    block = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("data: "))
    assert block.splitlines()[0] == f"data: {manifest}"
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    items = metrics["train_items"] + metrics["val_items"] + metrics["test_items"]
    assert items == 32
    assert "  items    32 used, 1 skipped (e.g. ../photos/broken.png: not a decodable image)" in block
    assert (f"  splits   {metrics['train_items']} train, {metrics['val_items']} validation, "
            f"{metrics['test_items']} test") in block
    assert "  labels   2 (several per image, scored by mAP)" in block
    assert ("  input    64 px (chosen from the data: 33 items, median short side 48 px: small images"
            in block)
    assert "  backbone tiny (trained from scratch)" in block
    assert "  epochs   2 of 2 steps (batch 8)" in block
    assert "ETA: epoch 1 took " in text and "more for the 1 epoch(s) left" in text
    assert text.index("data: ") < text.index("ETA: epoch 1")
    assert json.loads((tmp_path / "run" / "config.json").read_text())["image_size"] == 64
