"""Which images a run uses and how they are split; numpy and OpenCV only.

Training, bench and the demo all rebuild a run's splits through here, so the
test images bench measures are exactly the ones training evaluated.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from fuselite.errors import UserError
from fuselite.train.configs import TrainConfig
from fuselite.train.data import ImageTextData, Splits

log = logging.getLogger(__name__)


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
    """

    train: ImageTextData
    val: ImageTextData
    test: ImageTextData
    heldout: ImageTextData | None
    splits: Splits
    skipped: int = 0


def load_run_data(config: TrainConfig, splits: Splits | None = None) -> RunData:
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
    )
    if len(data.train) == 0 or len(data.test) == 0:
        raise UserError(f"{config.data}: too few usable items to split into train/val/test")
    return data


def load_sources(config: TrainConfig):
    """Returns (pool, official test split or None, held-out scenes or None)."""
    if config.data == "scenes":
        from fuselite.train.scenes import SceneSpec, generate_scenes

        spec = SceneSpec(image_size=config.image_size)
        pool = generate_scenes(config.scenes_train, spec, seed=config.seed)
        heldout = generate_scenes(config.scenes_heldout, spec, seed=config.seed + 1, heldout=True)
        return pool, None, heldout
    if config.data == "fashion-mnist":
        from fuselite.train.readers import read_fashion_mnist

        train = read_fashion_mnist(image_size=config.image_size, split="train")
        return train, read_fashion_mnist(image_size=config.image_size, split="test"), None
    if not config.data:
        raise UserError("this config needs --data PATH (a class folder, manifest, COCO JSON or IDX folder)")
    from fuselite.train.readers import read_dataset

    return read_dataset(Path(config.data), config.image_size), None, None
