"""The preprocessing the manifest describes: uint8 pixels that the mapping leaves alone go in untouched."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from fuselite.bundle import read_bundle
from fuselite.runtime.interpreter import TfliteModel
from fuselite.runtime.preprocess import Preprocessor, _maps_to_itself

FRAME = np.random.default_rng(0).integers(0, 256, (120, 160, 3)).astype(np.uint8)


@pytest.mark.parametrize("mapping, identity", [
    (None, True), ((1.0, 0), True), ((1.00001, 0.0002), True),
    ((0.0078431, 127), False), ((1.0, -128), False), ((2.0, 0), False),
])
def test_only_mappings_that_round_every_pixel_to_itself_pass_through(mapping, identity):
    assert _maps_to_itself(mapping) is identity
    if mapping is not None:
        pixels = np.arange(256, dtype=np.float64)
        assert identity == np.array_equal(np.rint(pixels * mapping[0] + mapping[1]), pixels)


def test_a_uint8_bundle_with_scale_one_gets_the_resized_rgb_pixels(int8_bundle):
    bundle = read_bundle(int8_bundle)
    model = TfliteModel(bundle.model_bytes, 1, name="image model")
    pre = Preprocessor(bundle.manifest, model.input)
    assert pre.passthrough  # the colour int8 bundle: input scale 1, zero point 0
    height, width = bundle.manifest.preprocessing.input_size
    expected = cv2.cvtColor(cv2.resize(FRAME, (width, height), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(pre(FRAME)[0], expected)
    pre.passthrough = False  # the full quantize-round-clip path gives the same pixels
    np.testing.assert_array_equal(pre(FRAME)[0], expected)
