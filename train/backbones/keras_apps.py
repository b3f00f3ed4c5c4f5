"""Keras' own MobileNets (``tf_keras.applications``) as feature extractors.

Each takes float RGB pixels 0..255 ``[S, S, 3]`` and returns its last feature map;
pixel normalisation (x / 127.5 - 1) is inside the model: MobileNetV3's own
``include_preprocessing``, a ``Rescaling`` layer in front of MobileNetV2.

``weights`` is ``"imagenet"`` (Keras downloads them on first use: fine on a user's
machine, never in tests), a local weights file (``--backbone-weights FILE``), or
None for random weights.

Example:
    >>> features = mobilenet_v3_small_features(224, weights=None)   # -> [7, 7, 576]
"""

from __future__ import annotations

import logging
from pathlib import Path

from fuselite.errors import UserError
from fuselite.train.backbones.registry import get_backbone
from fuselite.train.backend import keras

logger = logging.getLogger(__name__)


def _keras_weights(weights: str | Path | None) -> str | None:
    """``weights`` as Keras applications take it, checking that a local file exists."""
    if weights is None or weights == "imagenet":
        return weights
    path = Path(weights)
    if not path.is_file():
        raise UserError(f"backbone weights file {path} does not exist")
    return str(path)


def _size(name: str, input_size: int | None) -> tuple[int, int, int]:
    """The input shape ``(S, S, 3)`` for registry entry ``name``, the size checked."""
    size = get_backbone(name).check_input_size(input_size)
    return (size, size, 3)


def _input(name: str, input_size: int | None, input_tensor):
    """``input_tensor`` (a larger model's own input, so the graph stays flat) or a new input."""
    shape = _size(name, input_size)
    return keras.Input(shape, name="image") if input_tensor is None else input_tensor


def _mobilenet_v3(name: str, application, input_size: int | None,
                  weights: str | Path | None, input_tensor=None) -> keras.Model:
    """A MobileNetV3 application without its top, preprocessing included."""
    pixels = _input(name, input_size, input_tensor)
    base = application(input_tensor=pixels, include_top=False, weights=_keras_weights(weights),
                       include_preprocessing=True)
    logger.info("built %s (weights: %s)", name, weights)
    return keras.Model(pixels, base.output, name=name.replace("-", "_") + "_features")


def mobilenet_v3_small_features(input_size: int | None = None,
                                weights: str | Path | None = "imagenet", input_tensor=None) -> keras.Model:
    """MobileNetV3-Small: float RGB 0..255 ``[S, S, 3]`` -> ``[S/32, S/32, 576]``."""
    return _mobilenet_v3("mobilenet-v3-small", keras.applications.MobileNetV3Small, input_size, weights,
                         input_tensor)


def mobilenet_v3_large_features(input_size: int | None = None,
                                weights: str | Path | None = "imagenet", input_tensor=None) -> keras.Model:
    """MobileNetV3-Large: float RGB 0..255 ``[S, S, 3]`` -> ``[S/32, S/32, 960]``."""
    return _mobilenet_v3("mobilenet-v3-large", keras.applications.MobileNetV3Large, input_size, weights,
                         input_tensor)


def mobilenet_v2_features(input_size: int | None = None,
                          weights: str | Path | None = "imagenet", input_tensor=None) -> keras.Model:
    """MobileNetV2 (alpha 1.0): float RGB 0..255 ``[S, S, 3]`` -> ``[S/32, S/32, 1280]``."""
    pixels = _input("mobilenet-v2", input_size, input_tensor)
    normalized = keras.layers.Rescaling(1 / 127.5, -1.0, name="normalize")(pixels)
    base = keras.applications.MobileNetV2(input_tensor=normalized, include_top=False,
                                          weights=_keras_weights(weights))
    logger.info("built mobilenet-v2 (weights: %s)", weights)
    return keras.Model(pixels, base.output, name="mobilenet_v2_features")
