"""The class activation map a pooled tower exports (``with_label_map``): for ``avgmax``
pooling, and mirror-averaged, it still averages to the frame's score and sits in the
frame's coordinates.  Untrained towers: the identities hold for any weights."""

from __future__ import annotations

import numpy as np

from fuselite.maps import cam_cells, cell_logits
from fuselite.train.configs import get_config
from fuselite.train.model import image_encoder, label_map_grid, mirror_averaged, with_label_map

SCALE, BIAS = 10.0, -2.0


def _pooled_tower(pooling: str):
    config = get_config("scenes-tiny").with_overrides(scoring="global", pooling=pooling)
    return image_encoder(config)


def _images(count: int = 4) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(count, 64, 64, 3), dtype=np.uint8)


def _labels(dim: int) -> np.ndarray:
    vectors = np.random.default_rng(1).normal(size=(5, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_an_avgmax_towers_map_averages_to_the_frames_logit():
    tower = _pooled_tower("avgmax")
    assert label_map_grid(tower) == (8, 8)
    embedding, label_map = (t.numpy() for t in with_label_map(tower)(_images(), training=False))
    labels = _labels(embedding.shape[1])
    frame = SCALE * embedding @ labels.T + BIAS
    for cells, logits in zip(label_map, frame):
        per_cell = cell_logits(cam_cells(cells), labels, SCALE, BIAS)  # [labels, cells]
        np.testing.assert_allclose(per_cell.mean(axis=-1), logits, atol=1e-4)
        assert np.ptp(per_cell, axis=-1).min() > 1e-3  # the cells differ: a map, not a constant


def test_a_mirrored_image_gets_the_mirrored_map_and_the_same_score():
    model = mirror_averaged(with_label_map(_pooled_tower("avg")))
    images = _images(2)
    plain = [t.numpy() for t in model(images, training=False)]
    flipped = [t.numpy() for t in model(images[:, :, ::-1], training=False)]
    np.testing.assert_allclose(flipped[0], plain[0], atol=1e-5)
    # An untrained tower's projections are small (about 1e-4): compare them on their own scale.
    scale = np.abs(plain[1]).max()
    grids = [m.reshape(len(images), 8, 8, -1) / scale for m in (plain[1], flipped[1])]
    np.testing.assert_allclose(grids[1], grids[0][:, :, ::-1], atol=1e-4)
    assert np.abs(grids[0] - grids[0][:, :, ::-1]).max() > 0.1  # a lopsided map: the flip shows
