"""ImageNet-pretrained image backbones for the image tower (``fuselite.train.backbones``).

The registry (:mod:`.registry`) names each backbone with its input sizes, pixel
normalisation, weights source and license; builders import TensorFlow only when
called.  :mod:`.efficientnet_lite` ports EfficientNet-Lite weights from PyTorch files
read by :mod:`.torch_legacy` (numpy only); :mod:`.keras_apps` wraps Keras' MobileNets.
"""

from fuselite.train.backbones.registry import (
    BackboneSpec,
    get_backbone,
    list_backbones,
    pretrained_available,
    pretrained_weights_path,
)

__all__ = [
    "BackboneSpec",
    "get_backbone",
    "list_backbones",
    "pretrained_available",
    "pretrained_weights_path",
]
