"""Int8 kernels keep their float response on flat regions (convert/weight_grid.py).

Real converter and interpreter: a small tower whose first kernel is an edge detector
with large weights that sum to almost nothing, the shape of EfficientNet-Lite0's stem
kernel that nearest rounding moved by 25 output steps on white backgrounds.
"""

from __future__ import annotations

import numpy as np
import pytest

from fuselite.convert.numerics import tflite_embeddings
from fuselite.convert.tflite import convert_image_model
from fuselite.convert.variants import get_variant
from fuselite.convert.weight_grid import INT8_STEPS, grid_kernel
from fuselite.train.backend import keras

SIZE = 16


def _edge_kernels(rng: np.random.Generator, channels: int) -> np.ndarray:
    """3x3x3 kernels of weights up to ~17 whose sums are ~0.1, plus a pruned one."""
    kernel = rng.normal(0, 6, (3, 3, 3, channels))
    kernel -= kernel.mean(axis=(0, 1, 2), keepdims=True) - 0.1 / 27
    kernel[..., 0] = 0.0
    kernel[1, 1, :, 0] = [1.0, -2.0, 0.5]  # mostly pruned: zeros must stay zeros
    return kernel.astype(np.float32)


def _edge_tower(kind: str, seed: int = 0) -> keras.Model:
    """uint8 pixels -> (x - 127) / 128 -> edge kernels -> batch norm -> ReLU6 map."""
    rng = np.random.default_rng(seed)
    pixels = keras.Input((SIZE, SIZE, 3), dtype="uint8", name="image")
    x = keras.layers.Rescaling(1 / 128, -127 / 128)(pixels)  # casts the uint8 pixels
    if kind == "conv":
        conv = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="edges")
        kernel = _edge_kernels(rng, 8)
    else:  # depthwise, two outputs per colour
        conv = keras.layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2, use_bias=False, name="edges")
        kernel = _edge_kernels(rng, 6).transpose(0, 1, 3, 2)[:, :, :3, :2].copy()
    channels = 8 if kind == "conv" else 6
    norm = keras.layers.BatchNormalization(epsilon=1e-3, name="edges_bn")
    outputs = keras.layers.ReLU(6.0)(norm(conv(x)))
    model = keras.Model(pixels, outputs)
    conv.set_weights([kernel])
    gamma = rng.uniform(1.0, 3.0, channels).astype(np.float32)
    norm.set_weights([gamma, np.full(channels, 3.0, np.float32), np.zeros(channels, np.float32),
                      np.ones(channels, np.float32)])
    return model


def _calibration(rng: np.random.Generator) -> np.ndarray:
    """Photos-like frames: smooth gradients with flat patches and noise."""
    ramps = np.linspace(0, 255, SIZE)[None, :, None, None] * rng.uniform(0.2, 1.0, (48, 1, 1, 3))
    frames = ramps + rng.normal(0, 12, (48, SIZE, SIZE, 3))
    frames[: 16, 4:12, 4:12, :] = 255.0
    return np.clip(frames, 0, 255).astype(np.uint8)


def _flat_frames() -> np.ndarray:
    levels = [0, 40, 127, 200, 255]
    return np.stack([np.full((SIZE, SIZE, 3), level, np.uint8) for level in levels])


@pytest.mark.parametrize("kind", ["conv", "depthwise"])
def test_flat_frames_keep_their_float_response_in_int8(kind):
    model = _edge_tower(kind)
    calibration = _calibration(np.random.default_rng(1))
    flat = _flat_frames()
    inside = (slice(None), slice(2, -2), slice(2, -2))  # away from the zero padding
    expected = model.predict(flat.astype(np.float32), verbose=0)[inside]
    errors = {}
    for grid in (False, True):
        model_bytes = convert_image_model(model, get_variant("int8"), calibration, weight_grid=grid)
        got = tflite_embeddings(model_bytes, flat, num_threads=1)[inside]
        errors[grid] = float(np.abs(got - expected).mean())
    # Nearest rounding of large, cancelling weights shifts every flat pixel the same way;
    # what is left with the grid is about the output's own rounding (6 / 255 a step).
    assert errors[True] < 0.5 * errors[False] and errors[True] < 0.03, errors


def test_converting_leaves_the_trained_model_as_it_was():
    model = _edge_tower("conv")
    before = [w.copy() for w in model.get_weights()]
    convert_image_model(model, get_variant("int8"), _calibration(np.random.default_rng(2)))
    for old, new in zip(before, model.get_weights()):
        np.testing.assert_array_equal(old, new)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grid_kernels_sit_on_the_int8_grid_and_keep_each_kernel_sum(seed):
    folded = _edge_kernels(np.random.default_rng(seed), 6) * 3.0
    grid = grid_kernel(folded)
    largest = np.abs(folded).reshape(-1, 6).max(axis=0)
    step = np.where(largest > 0, largest / INT8_STEPS, 1.0)
    steps = grid / step
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-4)  # on the grid
    assert np.abs(np.round(steps)).max() <= INT8_STEPS
    np.testing.assert_allclose(np.abs(grid).reshape(-1, 6).max(axis=0), largest, rtol=1e-6)  # same scale
    sums = folded.sum(axis=(0, 1)) / step  # [in, out], in steps
    np.testing.assert_allclose(steps.sum(axis=(0, 1)), np.round(sums), atol=1e-3)
    assert np.all(grid[folded == 0] == 0)  # pruned weights stay pruned
    # Each weight moved at most one step beyond its nearest rounding.
    assert np.abs(steps - folded / step).max() <= 1.5
