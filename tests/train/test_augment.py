"""Training augmentation: cutout blanks a square on the share of images the config asks for."""

from __future__ import annotations

import numpy as np
import pytest

from fuselite.errors import UserError
from fuselite.train.configs import TrainConfig

CUTOUT_GREY = 127


def _share_with_cutout(config: TrainConfig, images: int = 120) -> float:
    """How many of ``images`` black frames came out with a mid-grey square at least cutout-sized."""
    import tensorflow as tf

    from fuselite.train.pipeline import _augmenter

    augment = _augmenter(config)
    tf.random.set_seed(config.seed)
    side = int(config.image_size * config.cutout)
    black = tf.zeros((config.image_size, config.image_size, 3), tf.uint8)
    grey_pixels = [
        int(np.all(augment({"image": black})["image"].numpy() == CUTOUT_GREY, axis=2).sum())
        for _ in range(images)
    ]
    return float(np.mean([count >= side * side for count in grey_pixels]))


def _config(probability: float) -> TrainConfig:
    return TrainConfig(name="augment-test", cutout=0.25, cutout_probability=probability)


def test_cutout_is_on_every_image_by_default():
    assert _share_with_cutout(_config(1.0)) == 1.0


def test_cutout_probability_leaves_the_rest_of_the_images_whole():
    assert _share_with_cutout(_config(0.0)) == 0.0
    # 120 draws at p = 0.5: outside 0.3..0.7 happens about once in 10^5 runs.
    assert 0.3 < _share_with_cutout(_config(0.5)) < 0.7


def test_cutout_probability_outside_0_to_1_is_a_user_error():
    with pytest.raises(UserError, match="cutout_probability 1.5 is outside 0..1"):
        _config(1.5)
