"""The in-memory dataset every reader returns and the trainer consumes.

Images are decoded once, resized to the run's input size and kept as one uint8
array; datasets here (synthetic scenes, Fashion-MNIST, a user's folder) fit in
memory, and it keeps the tf.data pipeline simple and fast on two cores.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fuselite.maps import ObjectBox

log = logging.getLogger(__name__)

TASKS = ("single", "multi")


@dataclass
class ImageTextData:
    """Images with their label texts and captions.

    Attributes:
        images: uint8 ``[N, H, W, 3]`` RGB.
        tags: Per image, the label texts that apply (one for single-label data).
        captions: Per image, a caption, or ``""`` where the source has none.
        ids: Per image, a stable identifier (file path, or ``scene-<n>``), saved in splits.
        task: ``"single"`` (exactly one label per image, scored by top-1) or ``"multi"``.
        name: Where the data came from, for logs and metrics.
        skipped: ``(item, reason)`` for every item that was unusable and left out.
        objects: Per image, where its objects are and which tags each carries
            (:class:`fuselite.maps.ObjectBox`), for the pointing game; ``None`` when the
            source does not know (the synthetic scenes do).
    """

    images: np.ndarray
    tags: list[list[str]]
    captions: list[str]
    ids: list[str]
    task: str = "multi"
    name: str = ""
    skipped: list[tuple[str, str]] = field(default_factory=list)
    objects: list[list[ObjectBox]] | None = None

    def __post_init__(self) -> None:
        n = len(self.images)
        if not (len(self.tags) == len(self.captions) == len(self.ids) == n):
            raise ValueError("images, tags, captions and ids must have the same length")
        if self.objects is not None and len(self.objects) != n:
            raise ValueError("objects must hold one list per image")
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, not {self.task!r}")
        if n and (self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[-1] != 3):
            raise ValueError("images must be uint8 [N, H, W, 3]")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def has_captions(self) -> bool:
        """True when every image has a non-empty caption."""
        return bool(self.captions) and all(self.captions)

    def label_vocabulary(self) -> list[str]:
        """Every label text used, sorted."""
        return sorted({t for tags in self.tags for t in tags})

    def subset(self, indices: Sequence[int]) -> ImageTextData:
        """The items at ``indices``, in that order."""
        idx = np.asarray(indices, dtype=np.int64)
        return ImageTextData(
            images=self.images[idx],
            tags=[self.tags[i] for i in idx],
            captions=[self.captions[i] for i in idx],
            ids=[self.ids[i] for i in idx],
            task=self.task,
            name=self.name,
            objects=None if self.objects is None else [self.objects[i] for i in idx],
        )

    def multi_hot(self, labels: Sequence[str]) -> np.ndarray:
        """float32 ``[N, len(labels)]`` with 1 where a label applies to an image."""
        index = {label: j for j, label in enumerate(labels)}
        target = np.zeros((len(self), len(labels)), dtype=np.float32)
        for i, tags in enumerate(self.tags):
            for t in tags:
                if t in index:
                    target[i, index[t]] = 1.0
        return target

    def log_skipped(self, source: str, examples: int = 3) -> None:
        """Logs how many items were skipped and a few of them with the reason."""
        if not self.skipped:
            return
        shown = "; ".join(f"{item}: {reason}" for item, reason in self.skipped[:examples])
        log.warning("%s: skipped %d unusable item(s), e.g. %s", source, len(self.skipped), shown)


@dataclass(frozen=True)
class Splits:
    """Deterministic train/validation/test index lists, saved with every run.

    Attributes:
        train: Indices into the training pool.
        val: Indices into the training pool, for thresholds and early stopping.
        test: Indices into the test pool (the same pool as train unless the source
            has an official test split).
    """

    train: list[int]
    val: list[int]
    test: list[int]

    @classmethod
    def make(cls, n: int, val_fraction: float, test_fraction: float, seed: int) -> Splits:
        """Shuffles ``range(n)`` with ``seed`` and cuts it; test is empty if ``test_fraction`` is 0."""
        order = np.random.default_rng(seed).permutation(n)
        n_val = max(1, round(n * val_fraction))
        n_test = round(n * test_fraction)
        test = sorted(order[:n_test].tolist())
        val = sorted(order[n_test : n_test + n_val].tolist())
        train = sorted(order[n_test + n_val :].tolist())
        return cls(train=train, val=val, test=test)

    def save(self, path: Path) -> None:
        """Writes the splits as JSON."""
        Path(path).write_text(json.dumps({"train": self.train, "val": self.val, "test": self.test}))

    @classmethod
    def load(cls, path: Path) -> Splits:
        """Reads splits written by :meth:`save`."""
        data = json.loads(Path(path).read_text())
        return cls(train=data["train"], val=data["val"], test=data["test"])
