"""A small fake of Debian's ``openclipart-png`` tree, for the recipe's and the benchmarks' tests.

RGBA PNGs with a transparent (black under alpha 0) background in category/sub-category
folders, openclipart-style names, and a few pictures every reader must skip.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

PER_FOLDER = 10
# category folder -> sub-category folder -> file-name stems (openclipart style)
TREE = {
    "animals": {
        "mammals": ["polarBear_benji_park_01", "brown-bear_02"],
        "birds": ["blue_bird_nicu_buculei_01", "penguin"],
    },
    "food": {
        "fruit": ["red_apple_clipart", "banana_architetto_franc_01"],
        "vegetables": ["carrot_02", "green-pepper"],
    },
    "road_vehicles": {"cars": ["sports_car", "taxi_01"], "boats": ["sail_boat", "canoe_03"]},
}
SQUARE_BGR = (40, 160, 220)


def write_rgba(path: Path, shape: tuple[int, int] = (48, 64)) -> Path:
    """An RGBA PNG: an opaque square on a fully transparent, black-underneath background."""
    image = np.zeros((*shape, 4), dtype=np.uint8)
    image[12:-12, 16:-16] = (*SQUARE_BGR, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)
    return path


def fake_tree(root: Path) -> Path:
    """3 categories x 2 sub-categories x :data:`PER_FOLDER` pictures, plus junk to skip."""
    for category, subcategories in TREE.items():
        for subcategory, stems in subcategories.items():
            for i in range(PER_FOLDER):
                stem = stems[i % len(stems)] + ("" if i < len(stems) else f"_v{i}")
                write_rgba(root / category / subcategory / f"{stem}.png")
    write_rgba(root / "animals" / "mammals" / "tiny_mouse.png", shape=(20, 20))
    (root / "food" / "fruit" / "broken_pear.png").write_bytes(b"not a png")
    blank = np.zeros((48, 48, 4), dtype=np.uint8)  # fully transparent: white on white
    assert cv2.imwrite(str(root / "food" / "vegetables" / "invisible_01.png"), blank)
    write_rgba(root / "unsorted" / "mystery_01.png")
    return root
