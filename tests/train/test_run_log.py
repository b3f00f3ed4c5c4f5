"""`fuselite train` says what it loaded before training starts (issue 32, item 3).

One short real run on a tiny manifest (absolute and ``../`` paths, one corrupt image):
the log block gives the items used and skipped with the reason, the split sizes, the
labels, the input size and why, the backbone, the epochs, and then the ETA.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

FUSELITE = [sys.executable, "-m", "fuselite.cli"]


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
def test_the_log_says_what_was_loaded_and_the_eta(tmp_path):
    manifest = _write_manifest(tmp_path)
    proc = subprocess.run(
        [*FUSELITE, "train", "--data", str(manifest), "--out", str(tmp_path / "run"), "--backbone", "tiny",
         "--epochs", "2", "--batch-size", "8", "--width", "0.25"],
        capture_output=True, text=True, timeout=300, check=False, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stderr
    # What a terminal shows: the bar redraws its line after a carriage return.
    lines = [line for chunk in proc.stderr.split("\n") for line in chunk.split("\r")]
    start = lines.index(f"INFO fuselite.train.trainer: data: {manifest}")
    block = "\n".join(lines[start + 1 : start + 8])
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["train_items"] + metrics["val_items"] + metrics["test_items"] == 32
    assert "  items    32 used, 1 skipped (e.g. ../photos/broken.png: not a decodable image)" in block
    assert (f"  splits   {metrics['train_items']} train, {metrics['val_items']} validation, "
            f"{metrics['test_items']} test") in block
    assert "  labels   2 (several per image, scored by mAP)" in block
    # The survey counts the broken image too: it lists items without decoding them.
    assert ("  input    64 px (chosen from the data: 33 items, median short side 48 px: small images"
            in block)
    assert "  backbone tiny (trained from scratch)" in block
    assert "  epochs   2 of 2 steps (batch 8)" in block
    # The ETA is a whole line of its own, never cut by the progress bar's next redraw.
    eta = [line for line in lines if "ETA: epoch 1 took " in line]
    assert len(eta) == 1 and eta[0].startswith("INFO fuselite.train.trainer: ETA: epoch 1 took ")
    assert eta[0].endswith("more for the 1 epoch(s) left (less if it stops early)")
    assert lines.index(eta[0]) > start
    assert json.loads((tmp_path / "run" / "config.json").read_text())["image_size"] == 64
