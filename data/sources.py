"""Which images a run uses and how they are split; numpy and OpenCV only.

Training, bench and the demo all rebuild a run's splits through here, so the
test images bench measures are exactly the ones training evaluated.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

from fuselite.bundle import MAX_LABEL_CHARS, MAX_LABELS
from fuselite.data.dataset import ImageTextData, Splits
from fuselite.errors import UserError
from fuselite.tokenizer import Tokenizer

log = logging.getLogger(__name__)

# Skipped items a run keeps with their reasons, for its log (the count covers them all).
SKIP_EXAMPLES = 3


@dataclass(frozen=True)
class DataSpec:
    """The part of a run's config that decides its images and splits.

    A training config (``fuselite.train.configs.TrainConfig``) has every one of
    these fields, so training passes its config as it is; bench and the demo read
    them from a run's ``config.json`` with :meth:`load`, without TensorFlow.

    Attributes:
        name: The config's registry name (for messages).
        data: ``"scenes"``, ``"fashion-mnist"``, or a path a reader understands.
        image_size: Square input size in pixels the images are read at.
        seed: Seeds scene generation and the split.
        scenes_train: Synthetic scenes generated for train/val/test.
        scenes_heldout: Synthetic scenes that contain held-out combinations.
        val_fraction: Share of the pool used for validation.
        test_fraction: Share used for test (0 when the source has an official test split).
        limit: Use at most this many training items (0 = all).
    """

    name: str
    data: str
    image_size: int
    seed: int = 0
    scenes_train: int = 0
    scenes_heldout: int = 0
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    limit: int = 0

    @classmethod
    def load(cls, config_json: Path) -> DataSpec:
        """Reads these fields from a run's ``config.json`` (other fields are ignored)."""
        values = json.loads(Path(config_json).read_text())
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})


@dataclass
class RunData:
    """The images of one run, already split.

    Attributes:
        train: Training split.
        val: Validation split (thresholds, early stopping).
        test: Test split (``metrics.json``).
        heldout: Scenes made of held-out attribute-object combinations, or ``None``.
        splits: The indices the splits were cut with, saved in the run.
        skipped: How many source items were unusable and left out.
        skip_reasons: ``(item, reason)`` of the first few of them, for the training log.
    """

    train: ImageTextData
    val: ImageTextData
    test: ImageTextData
    heldout: ImageTextData | None
    splits: Splits
    skipped: int = 0
    skip_reasons: list[tuple[str, str]] = field(default_factory=list)


def load_run_data(config: DataSpec, splits: Splits | None = None) -> RunData:
    """Loads the config's source and cuts it into splits (or reuses saved ``splits``)."""
    pool, official_test, heldout = load_sources(config)
    if splits is None:
        test_fraction = 0.0 if official_test is not None else config.test_fraction
        splits = Splits.make(len(pool), config.val_fraction, test_fraction, config.seed)
        if official_test is not None:
            splits = Splits(splits.train, splits.val, list(range(len(official_test))))
        if config.limit:
            splits = Splits(splits.train[: config.limit], splits.val, splits.test)
    test_source = official_test if official_test is not None else pool
    data = RunData(
        train=pool.subset(splits.train),
        val=pool.subset(splits.val),
        test=test_source.subset(splits.test),
        heldout=heldout,
        splits=splits,
        skipped=len(pool.skipped) + (len(official_test.skipped) if official_test is not None else 0),
        skip_reasons=(pool.skipped + (official_test.skipped if official_test is not None else []))[:SKIP_EXAMPLES],
    )
    if len(data.train) == 0 or len(data.test) == 0:
        raise UserError(f"{config.data}: too few usable items to split into train/val/test")
    return data


def load_sources(config: DataSpec):
    """Returns (pool, official test split or None, held-out scenes or None)."""
    if config.data == "scenes":
        from fuselite.data.scenes import SceneSpec, generate_scenes

        spec = SceneSpec(image_size=config.image_size)
        pool = generate_scenes(config.scenes_train, spec, seed=config.seed)
        heldout = generate_scenes(config.scenes_heldout, spec, seed=config.seed + 1, heldout=True)
        return pool, None, heldout
    if config.data == "fashion-mnist":
        from fuselite.data.readers import read_fashion_mnist

        train = read_fashion_mnist(image_size=config.image_size, split="train")
        return train, read_fashion_mnist(image_size=config.image_size, split="test"), None
    if not config.data:
        raise UserError("this config needs --data PATH (a class folder, manifest, COCO JSON or IDX folder)")
    from fuselite.data.readers import read_dataset

    # The user's own dataset: its image paths are taken as written (absolute, ``..``).
    return read_dataset(Path(config.data), config.image_size, own_file=True), None, None


def check_label_texts(labels: Sequence[str], other_tags: Sequence[str] = ()) -> None:
    """Raises a UserError when a bundle could not hold these labels (checked before training).

    A bundle's manifest takes at most ``MAX_LABELS`` labels of at most ``MAX_LABEL_CHARS``
    characters (``fuselite.bundle``); a run with a longer one would train for hours and
    then fail to convert.  ``other_tags`` (the validation and test splits' tags) are held
    to the same length: whether a tag lands in training depends only on the seed.
    """
    too_long = [label for label in (*labels, *other_tags) if len(label) > MAX_LABEL_CHARS]
    if too_long:
        raise UserError(
            f"{len(too_long)} label(s) are longer than {MAX_LABEL_CHARS} characters, the most a "
            f"bundle holds (e.g. {too_long[0][:40]!r}..., {len(too_long[0])} characters); "
            "shorten those tags in the data"
        )
    if len(labels) > MAX_LABELS:
        raise UserError(f"{len(labels)} labels, more than the {MAX_LABELS} a bundle holds; "
                        "merge or drop tags in the data")


def warn_unreadable_labels(labels: Sequence[str], tokenizer: Tokenizer) -> None:
    """Warns about labels the model cannot tell apart: no known word, or the same words.

    Such labels get identical embeddings, so they score the same on every image.
    """
    unreadable = [label for label in labels if max(tokenizer.encode(label)) <= 1]  # pad or unknown
    if unreadable:
        log.warning("%d label(s) have no word the tokenizer reads (letters or digits), e.g. %s: "
                    "they all get the same embedding and score; rename them",
                    len(unreadable), ", ".join(repr(label) for label in unreadable[:3]))
    same: dict[tuple[int, ...], list[str]] = {}
    for label in labels:
        same.setdefault(tuple(tokenizer.encode(label)), []).append(label)
    for key, group in same.items():
        if len(group) > 1 and max(key) > 1:
            log.warning("labels %s read as the same words, so they get the same embedding and "
                        "score; rename one", " and ".join(repr(label) for label in group[:3]))
