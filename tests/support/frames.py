"""Colour frames, clips and image folders that the colour bundles answer predictably.

The colour bundles (:mod:`support.bundles`) score a mostly red frame "red" and a mostly
blue one "blue"; these helpers make such frames with OpenCV alone (no ffmpeg).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

# BGR colours, as OpenCV frames hold them.
RED, GREEN, BLUE, GRAY, YELLOW = (
    (0, 0, 255),
    (0, 255, 0),
    (255, 0, 0),
    (128, 128, 128),
    (0, 255, 255),
)
FRAME_SIZE = (120, 160)  # height, width

# The colour dataset's class folders and the (noisy) colour of their frames.
DATASET_BGR = {"red": (40, 40, 210), "green": (40, 200, 40), "blue": (210, 60, 40), "gray": (128, 128, 128)}


def solid(bgr, size=FRAME_SIZE, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    """A frame of one colour, optionally with Gaussian noise."""
    frame = np.empty((*size, 3), np.uint8)
    frame[:] = bgr
    if noise:
        rng = np.random.default_rng(seed)
        frame = np.clip(frame + rng.normal(0, noise, frame.shape), 0, 255).astype(np.uint8)
    return frame


def write_clip(path: Path, colours, frames_each: int = 10, fps: float = 25.0, size=FRAME_SIZE) -> Path:
    """Writes an mp4 of ``frames_each`` frames per colour with OpenCV (no ffmpeg needed)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size[::-1])
    assert writer.isOpened()
    for colour in colours:
        for _ in range(frames_each):
            writer.write(solid(colour, size=size))
    writer.release()
    return path


def write_colour_dataset(root: Path, per_class: int = 8, mislabelled: int = 3, seed: int = 0) -> Path:
    """``root/<colour>/*.png``: noisy 40x40 frames in class folders, for the benchmark.

    ``mislabelled`` gray frames sit in the red folder, so no bundle scores 100%.
    """
    rng = np.random.default_rng(seed)
    for label, bgr in DATASET_BGR.items():
        folder = Path(root) / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            _write_noisy_frame(folder / f"{i}.png", bgr, rng)
    for i in range(mislabelled):
        _write_noisy_frame(Path(root) / "red" / f"wrong-{i}.png", DATASET_BGR["gray"], rng)
    return Path(root)


def _write_noisy_frame(path: Path, bgr, rng: np.random.Generator) -> None:
    frame = np.clip(np.asarray(bgr, np.float32) + rng.normal(0, 25, (40, 40, 3)), 0, 255).astype(np.uint8)
    cv2.imwrite(str(path), frame)
