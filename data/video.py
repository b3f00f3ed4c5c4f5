"""A synthetic-scenes video with moving objects and the true tags of every frame.

The demo and the runtime tests annotate it and score the stream against the
truth.  Frames are rendered at the model's resolution, exactly like training
scenes, then enlarged with nearest-neighbour scaling, so the runtime's area
resize gives back the rendered pixels (up to video compression).
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from fuselite.data.scenes import SceneSpec, random_objects, render_scene, scene_tags


def _moving(objects, velocity: np.ndarray, step: int, image_size: int):
    """Objects moved ``step`` frames along ``velocity``, bouncing off the edges."""
    moved = []
    for obj, (vx, vy) in zip(objects, velocity):
        span = image_size - 2 * obj.radius - 2
        x = _bounce(obj.center[0] - obj.radius - 1 + vx * step, span) + obj.radius + 1
        y = _bounce(obj.center[1] - obj.radius - 1 + vy * step, span) + obj.radius + 1
        moved.append(replace(obj, center=(float(x), float(y)), angle=obj.angle + 2.0 * step))
    return moved


def _bounce(position: float, span: float) -> float:
    """Reflects a 1-D position into ``[0, span]``."""
    if span <= 0:
        return 0.0
    period = position % (2 * span)
    return period if period <= span else 2 * span - period


def render_video(path: Path, seconds: float = 12.0, fps: int = 15, image_size: int = 64,
                 scale: int = 4, scene_seconds: float = 2.0, seed: int = 7) -> Path:
    """Writes an mp4 of moving scenes and ``<path>.truth.jsonl`` with each frame's tags.

    A new scene (objects, background) starts every ``scene_seconds``; within a
    scene the objects drift and bounce, so the tags stay the same.  Held-out
    combinations are never shown: the default labels can all be scored.
    Returns the truth file's path.
    """
    path = Path(path)
    spec = SceneSpec(image_size=image_size)
    rng = np.random.default_rng(seed)
    frames_per_scene = max(1, round(scene_seconds * fps))
    truth_path = path.with_suffix(".truth.jsonl")
    size = image_size * scale
    partial = path.with_name(f".{path.stem}.partial{path.suffix}")
    writer = cv2.VideoWriter(str(partial), cv2.VideoWriter_fourcc(*"mp4v"), fps, (size, size))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path}")
    lines = []
    for frame_index in range(int(seconds * fps)):
        if frame_index % frames_per_scene == 0:
            objects = random_objects(rng, spec, allow_heldout=False)
            velocity = rng.uniform(-0.6, 0.6, size=(len(objects), 2))
            scene_seed = int(rng.integers(2**31))
        moved = _moving(objects, velocity, frame_index % frames_per_scene, image_size)
        rgb = render_scene(moved, image_size, np.random.default_rng(scene_seed), spec)
        frame = cv2.resize(rgb[:, :, ::-1], (size, size), interpolation=cv2.INTER_NEAREST)
        writer.write(frame)
        lines.append(json.dumps({"frame": frame_index, "tags": scene_tags(moved)}))
    writer.release()
    os.replace(partial, path)
    truth_path.write_text("\n".join(lines) + "\n")
    return truth_path


def read_truth(path: Path) -> list[list[str]]:
    """The per-frame tags written by :func:`render_video`, indexed by frame."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return [row["tags"] for row in sorted(rows, key=lambda r: r["frame"])]
