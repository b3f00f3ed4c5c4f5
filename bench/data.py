"""The images a benchmark scores: a run's held-out test split, fresh scenes, or a dataset.

Everything here is numpy and OpenCV; no TensorFlow.  ``--data`` accepts:

* a training run directory: its saved test split, regenerated from ``config.json``
  and ``splits.json`` exactly as training cut it (so bench numbers sit next to the
  run's ``metrics.json``);
* ``scenes``: synthetic scenes drawn with a seed that training does not use;
* ``fashion-mnist``: the official 10k test split of Debian's ``dataset-fashion-mnist``;
* a dataset path a reader understands (class folders, CSV/JSONL manifest, COCO JSON,
  Fashion-MNIST IDX folder): every item is scored, so give a held-out set.

Example:
    >>> data = load_eval_data("runs/scenes", image_size=64)
    >>> data.images.shape, data.description
    ((500, 64, 64, 3), 'test split of run runs/scenes (scenes, 500 images)')
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from fuselite.errors import UserError

log = logging.getLogger(__name__)

# Training draws scenes with the config's seed (0 by default); this one is unused there.
SCENES_SEED = 2026
SCENES_COUNT = 500
RUN_MARKERS = ("config.json", "splits.json")


@dataclass(frozen=True)
class EvalData:
    """Held-out images with their tags.

    Attributes:
        images: uint8 ``[N, H, W, 3]`` RGB.
        tags: Per image, the label texts that apply.
        task: ``"single"`` or ``"multi"`` (as the source says).
        description: One line for the report (what, where from, how many).
        run_dir: The training run the images come from, if any.
        groups: Tag groups (name -> labels) scored as top-1 (:mod:`fuselite.bench.groups`):
            the manifest's ``{"groups": ...}`` line, then ``--group``.
        objects: Per image, where its objects are (:class:`fuselite.maps.ObjectBox`), for
            the pointing game of bundles with label maps; ``None`` when the data do not say
            (synthetic scenes do).
    """

    images: np.ndarray
    tags: list[list[str]]
    task: str
    description: str
    run_dir: Path | None = None
    groups: dict = field(default_factory=dict)
    objects: list | None = None

    def __len__(self) -> int:
        return len(self.images)

    def targets(self, labels) -> np.ndarray:
        """float32 multi-hot ``[N, len(labels)]``: 1 where a label applies to an image.

        One column per entry of ``labels``, in order, even when a text repeats (both of
        its columns are set), so the targets always line up with the scores.
        """
        columns: dict[str, list[int]] = {}
        for j, label in enumerate(labels):
            columns.setdefault(label, []).append(j)
        targets = np.zeros((len(self), len(labels)), np.float32)
        for i, tags in enumerate(self.tags):
            for tag in tags:
                targets[i, columns.get(tag, [])] = 1.0
        return targets

    def head(self, n: int) -> EvalData:
        """The first ``n`` items (all of them when ``n`` is 0 or larger than the set)."""
        if not n or n >= len(self):
            return self
        return replace(self, images=self.images[:n], tags=self.tags[:n],
                       description=f"{self.description}, first {n}",
                       objects=None if self.objects is None else self.objects[:n])

    def with_groups(self, groups: dict | None) -> EvalData:
        """These items with ``groups`` added (a name given again replaces the manifest's)."""
        return replace(self, groups={**self.groups, **(groups or {})}) if groups else self


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` looks like a ``fuselite train`` run directory."""
    return Path(path).is_dir() and all((Path(path) / name).is_file() for name in RUN_MARKERS)


def load_eval_data(spec: str | Path, image_size: int, seed: int = SCENES_SEED,
                   samples: int = 0) -> EvalData:
    """Loads what ``--data`` names; ``image_size`` is used by sources that are not a run.

    Raises:
        UserError: ``spec`` names nothing usable (the message says what to give).
    """
    text = str(spec)
    if text == "scenes":
        data = _fresh_scenes(samples or SCENES_COUNT, image_size, seed)
    elif text == "fashion-mnist":
        data = _fashion_mnist_test(None, image_size)
    elif is_run_dir(Path(text)):
        data = run_test_split(Path(text))
    else:
        data = _dataset(Path(text), image_size)
    if len(data) == 0:
        raise UserError(f"{spec}: no images to benchmark on")
    return data.head(samples)


def run_test_split(run_dir: Path) -> EvalData:
    """The test split a run was evaluated on, rebuilt without TensorFlow.

    It goes through ``fuselite.data.sources`` like training did (numpy and OpenCV
    only); a test checks that both give the same images.
    """
    from fuselite.data.dataset import Splits
    from fuselite.data.sources import DataSpec

    try:
        config = DataSpec.load(run_dir / "config.json")
        splits = Splits.load(run_dir / "splits.json")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{run_dir}: cannot read config.json/splits.json ({exc})") from None
    source = _run_test_source(config)
    if splits.test and max(splits.test) >= len(source):
        raise UserError(f"{run_dir}: splits.json does not match its data source; re-train the run")
    test = source.subset(splits.test)
    description = f"test split of run {run_dir} ({config.name}, {len(test)} images)"
    return EvalData(test.images, list(test.tags), test.task, description, Path(run_dir),
                    groups=_source_groups(config.data), objects=test.objects)


def _source_groups(source: str) -> dict:
    """The tag groups of a run's JSONL manifest, if its data is one and it is still there."""
    from fuselite.bench.groups import manifest_groups

    return manifest_groups(Path(source).expanduser()) if isinstance(source, str) else {}


def _run_test_source(config):
    """The pool the run's test indices point into: the official test split, else the pool."""
    from fuselite.data.sources import load_sources

    pool, official_test, _heldout = load_sources(config)
    return official_test if official_test is not None else pool


def _fresh_scenes(count: int, image_size: int, seed: int) -> EvalData:
    from fuselite.data.scenes import SceneSpec, generate_scenes

    scenes = generate_scenes(count, SceneSpec(image_size=image_size), seed=seed)
    return EvalData(scenes.images, list(scenes.tags), scenes.task,
                    f"{count} fresh synthetic scenes (seed {seed})", objects=scenes.objects)


def _fashion_mnist_test(root: Path | None, image_size: int) -> EvalData:
    from fuselite.data.readers import FASHION_MNIST_DIR, read_fashion_mnist

    test = read_fashion_mnist(root or FASHION_MNIST_DIR, image_size=image_size, split="test")
    return EvalData(test.images, list(test.tags), test.task,
                    f"Fashion-MNIST official test split ({len(test)} images)")


def _dataset(path: Path, image_size: int) -> EvalData:
    from fuselite.data.readers import read_dataset

    if not path.exists():
        raise UserError(
            f"--data {path}: not found; give a run directory, 'scenes', 'fashion-mnist' or a dataset path"
        )
    if path.is_dir() and (path / "t10k-images-idx3-ubyte.gz").is_file():
        return _fashion_mnist_test(path, image_size)  # the IDX folder: its test split
    data = read_dataset(path, image_size)
    data.log_skipped(str(path))
    from fuselite.bench.groups import manifest_groups

    return EvalData(data.images, list(data.tags), data.task, f"{path} ({len(data)} images)",
                    groups=manifest_groups(path))


def source_runs(manifests) -> list[Path]:
    """The distinct existing run directories named by the manifests' provenance."""
    runs = []
    for manifest in manifests:
        source = manifest.provenance.get("source_run")
        if isinstance(source, str) and is_run_dir(Path(source)) and Path(source) not in runs:
            runs.append(Path(source))
    return runs


def read_run_metrics(run_dir: Path) -> dict:
    """The run's ``metrics.json`` (empty when missing or unreadable)."""
    try:
        return json.loads((Path(run_dir) / "metrics.json").read_text())
    except (OSError, ValueError):
        return {}
