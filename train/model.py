"""The fused image-text model: an image tower, a text tower and a sigmoid scorer.

Both towers are plain functional ``tf_keras`` models built from stock layers (no
Lambda, no custom layers), so they save as weights, load without executing code,
prune with TFMOT and convert to TFLite as they are.

* :func:`image_encoder` - uint8 RGB ``[H, W, 3]`` -> L2-normalised ``[D]``;
  a MobileNet-style stack of depthwise-separable blocks.  Pixel normalisation is
  inside the model, so the device only resizes (see ``fuselite.bundle.Preprocessing``).
* :func:`text_encoder` - int32 token ids ``[L]`` -> L2-normalised ``[D]``;
  word embeddings, a bigram convolution ("green star" is one feature built from
  two words) and max pooling, so unseen attribute-object phrases still embed
  meaningfully.
* :class:`FusedModel` - both towers plus a learned ``logit_scale`` and
  ``logit_bias``: ``p(label | image) = sigmoid(scale * <img, txt> + bias)``.

Example:
    >>> config = get_config("scenes-tiny")
    >>> model = FusedModel(config, vocab_size=40, label_ids=ids)
    >>> probs = model.label_probabilities(images)
"""

from __future__ import annotations

import math
import re
from typing import NamedTuple

import numpy as np

from fuselite.errors import UserError
from fuselite.train.backend import keras, tf
from fuselite.train.configs import TrainConfig
from fuselite.train.distributed import gather_replicas

PIXEL_SCALE = 1 / 127.5
PIXEL_OFFSET = -1.0


def _channels(channels: int, width: float) -> int:
    """Channels scaled by the width multiplier, rounded to a multiple of 8 (fast on CPUs)."""
    return max(8, int(channels * width + 4) // 8 * 8)


def _batch_norm(name: str):
    """Batch norm whose running statistics keep up with short CPU runs (momentum 0.9, not 0.99)."""
    return keras.layers.BatchNormalization(momentum=0.9, name=name)


def _activation(x, kind: str, name: str):
    """ReLU6, or hard-swish ``x * relu6(x + 3) / 6`` (MobileNet v3).

    Hard-swish is spelled in stock layers that the TFLite converter fuses into one
    HARD_SWISH op, so the device runs a single int8 kernel for it.
    """
    if kind == "relu6":
        return keras.layers.ReLU(6.0, name=f"{name}_relu")(x)
    return keras.layers.Multiply(name=f"{name}_hswish")([x, _hard_sigmoid(x, f"{name}_hs")])


def _hard_sigmoid(x, name: str):
    """``relu6(x + 3) / 6``: MobileNet v3's gate, with no LOGISTIC op for the device."""
    gate = keras.layers.Rescaling(1.0, 3.0, name=f"{name}_shift")(x)
    gate = keras.layers.ReLU(6.0, name=f"{name}_relu")(gate)
    return keras.layers.Rescaling(1 / 6, name=f"{name}_scale")(gate)


def _squeeze_excite(x, reduction: int, name: str):
    """Squeeze-and-excite (MobileNet v3): each channel scaled by a gate read from all of them.

    The block's features are averaged over the image, squeezed to ``channels /
    reduction`` and expanded back into one hard-sigmoid gate per channel, so a
    channel can be turned down where the whole image says it does not matter.
    """
    channels = int(x.shape[-1])
    pooled = keras.layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_se_pool")(x)
    squeezed = keras.layers.Conv2D(max(8, channels // reduction), 1, name=f"{name}_se_reduce")(pooled)
    squeezed = keras.layers.ReLU(name=f"{name}_se_relu")(squeezed)
    gate = keras.layers.Conv2D(channels, 1, name=f"{name}_se_expand")(squeezed)
    return keras.layers.Multiply(name=f"{name}_se_apply")([x, _hard_sigmoid(gate, f"{name}_se_gate")])


def _separable_block(x, channels: int, stride: int, name: str, residual: bool = False,
                     activation: str = "relu6", squeeze_excite: int = 0):
    """Depthwise 3x3 + pointwise 1x1, each with batch norm and an activation (MobileNet v1).

    With ``residual``, a stride-1 block whose input has ``channels`` channels adds
    its input to its output.  A ``squeeze_excite`` reduction above 0 gates the
    depthwise output's channels (MobileNet v3).
    """
    shortcut = x if residual and stride == 1 and int(x.shape[-1]) == channels else None
    x = keras.layers.DepthwiseConv2D(3, stride, padding="same", use_bias=False, name=f"{name}_dw")(x)
    x = _batch_norm(f"{name}_dw_bn")(x)
    x = _activation(x, activation, f"{name}_dw")
    if squeeze_excite:
        x = _squeeze_excite(x, squeeze_excite, name)
    x = keras.layers.Conv2D(channels, 1, use_bias=False, name=f"{name}_pw")(x)
    x = _batch_norm(f"{name}_pw_bn")(x)
    x = _activation(x, activation, f"{name}_pw")
    if shortcut is None:
        return x
    return keras.layers.Add(name=f"{name}_add")([shortcut, x])


def image_encoder(config: TrainConfig, pretrained_weights: bool = False) -> keras.Model:
    """Builds the image tower: uint8 ``[S, S, 3]`` RGB -> unit-length ``[embed_dim]``.

    With a pretrained ``config.backbone``, the tower is that backbone followed by the
    same projection head; ``pretrained_weights`` loads its ImageNet weights (training
    does, while a finished run's tower is rebuilt and loads its own saved weights).
    """
    if config.pretrained:
        return _pretrained_image_encoder(config, pretrained_weights)
    size = config.image_size
    pixels = keras.Input((size, size, 3), dtype="uint8", name="image")
    x = keras.layers.Rescaling(PIXEL_SCALE, PIXEL_OFFSET, name="normalize")(pixels)
    x = keras.layers.Conv2D(
        _channels(16, config.width), 3, 2, padding="same", use_bias=False, name="stem"
    )(x)
    x = _batch_norm("stem_bn")(x)
    x = _activation(x, "relu6", "stem")
    deepest_stage = _deepest_stage_start(config.blocks)
    for i, (channels, stride) in enumerate(config.blocks):
        deep = i >= deepest_stage
        x = _separable_block(x, _channels(channels, config.width), stride, f"block{i}", config.residual,
                             config.activation if deep else "relu6", config.squeeze_excite if deep else 0)
    return keras.Model(pixels, _head(x, config), name="image_encoder")


FEATURES_LAYER = "backbone_features"
# The projection head's layers, in order, per scoring mode (see _head).
HEAD_LAYERS = {"regional": ("project", "cells", "embedding"), "global": ("pool", "project", "embedding")}


def _pretrained_image_encoder(config: TrainConfig, pretrained_weights: bool) -> keras.Model:
    """A registered backbone's graph, inlined, then the projection head.

    The backbone is built on this model's own uint8 input (one flat graph, no nested
    model), so pruning and the TFLite converter see plain layers.  Its pixel
    normalisation is its first layer, so the device only resizes.
    """
    from fuselite.train.backbones import get_backbone

    if config.pooling != "avg":
        raise UserError(f"pooling {config.pooling!r} is for the tiny tower; pretrained backbones pool 'avg'")
    size = config.image_size
    pixels = keras.Input((size, size, 3), dtype="uint8", name="image")
    weights = _backbone_weights(config) if pretrained_weights else None
    backbone = get_backbone(config.backbone).build(input_size=size, weights=weights, input_tensor=pixels)
    features = backbone.output
    # An identity layer with a fixed name marks where the backbone ends (no op in TFLite).
    features = keras.layers.Activation("linear", name=FEATURES_LAYER)(features)
    return keras.Model(pixels, _head(features, config), name="image_encoder")


def _backbone_weights(config: TrainConfig) -> str | None:
    """What ``backbone_weights`` asks for: the default source, a local file, or none."""
    if config.backbone_weights.lower() == "none":
        return None
    return config.backbone_weights or "imagenet"


def _head(features, config: TrainConfig):
    """The projection head on a feature map: per-cell embeddings (regional) or one (global).

    Global pooling is the average, or with ``pooling="avgmax"`` (tiny tower only) the
    average and the maximum side by side.
    """
    if config.scoring == "regional":
        return _regional_head(features, config)
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(features)
    if config.pooling == "avgmax":
        peak = keras.layers.GlobalMaxPooling2D(name="max_pool")(features)
        pooled = keras.layers.Concatenate(name="pool_concat")([pooled, peak])
    x = keras.layers.Dense(config.embed_dim, name="project")(pooled)
    return keras.layers.UnitNormalization(name="embedding")(x)


def split_image_encoder(encoder: keras.Model, config: TrainConfig) -> tuple[keras.Model, keras.Model]:
    """The pretrained tower as ``(backbone, head)`` models that share its layers.

    ``backbone`` maps pixels to the feature map (what :mod:`fuselite.train.features`
    caches); ``head`` maps a feature map to the embeddings, and is all that trains
    while the backbone is frozen.
    """
    features = encoder.get_layer(FEATURES_LAYER).output
    backbone = keras.Model(encoder.input, features, name="image_backbone")
    x = inputs = keras.Input(features.shape[1:], name="features")
    for name in HEAD_LAYERS[config.scoring]:
        x = encoder.get_layer(name)(x)
    return backbone, keras.Model(inputs, x, name="image_head")


def backbone_layers(encoder: keras.Model) -> list:
    """The pretrained tower's backbone layers, input to output (the head excluded)."""
    layers = []
    for layer in encoder.layers[1:]:
        layers.append(layer)
        if layer.name == FEATURES_LAYER:
            return layers
    raise ValueError(f"{encoder.name} has no {FEATURES_LAYER} layer: not a pretrained tower")


# Block numbers in backbone layer names: EfficientNet-Lite "block12_dw", MobileNet v2
# "block_12_expand", MobileNet v3 "expanded_conv_12_project" (its first block has none).
_BLOCK_NUMBER = re.compile(r"^(?:block_?|expanded_conv_?)(\d*)_")


def unfreeze_top_blocks(encoder: keras.Model, blocks: int) -> int:
    """Makes the backbone's top ``blocks`` blocks (and the layers after them) trainable.

    Batch norm stays frozen (in Keras 2 a frozen BatchNormalization also runs in
    inference mode), as in Keras' transfer-learning guide: its running statistics
    came from ImageNet, and a few thousand images would only add noise to them.
    Returns how many layers were unfrozen.
    """
    layers = backbone_layers(encoder)
    numbers, current = [], -1
    for layer in layers:
        match = _BLOCK_NUMBER.match(layer.name)
        if match:
            current = int(match.group(1) or 0)
        numbers.append(current)
    first = max(numbers) - blocks + 1
    unfrozen = 0
    for layer, number in zip(layers, numbers):
        train = number >= first and not isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = train
        unfrozen += train
    return unfrozen


def _deepest_stage_start(blocks) -> int:
    """Index of the first block at the tower's lowest resolution (its last stride-2 block).

    ``config.activation`` and ``config.squeeze_excite`` apply from there on, as in
    MobileNet v3: hard-swish costs more per pixel than ReLU6, so it goes where
    feature maps are smallest.
    """
    strided = [i for i, (_, stride) in enumerate(blocks) if stride > 1]
    return strided[-1] if strided else 0


def _regional_head(features, config: TrainConfig):
    """One unit-length embedding per cell of the last feature map: ``[cells, embed_dim]``."""
    x = keras.layers.Conv2D(config.embed_dim, 1, name="project")(features)
    cells = int(x.shape[1]) * int(x.shape[2])
    x = keras.layers.Reshape((cells, config.embed_dim), name="cells")(x)
    return keras.layers.UnitNormalization(axis=-1, name="embedding")(x)


# --- class activation map of a pooled tower -------------------------------------------
# A global tower ends ``features -> pool (average) -> project (dense) -> embedding``.  The
# projection is linear and the pool an average, so the projection applied to each cell of
# the feature map, ``u_c = W f_c + b``, averages to the pooled projection: the tower's
# class activation map, one matrix product on cells the backbone already computed.
# ``fuselite convert`` exports it as the image model's second output; the board scores
# each cell against a label (fuselite.maps.cam_cells).  A regional tower needs none of
# this: its cells are its output.
LABEL_MAP_OUTPUT = "label_map"


def label_map_grid(encoder: keras.Model) -> tuple[int, int] | None:
    """``(rows, cols)`` of the class activation map :func:`with_label_map` adds, or None.

    None when the tower has no pooling-then-linear head to project per cell (a regional
    tower: its output is already per cell).  The tiny tower's ``avgmax`` pooling counts,
    and so does a quantization-aware tower: its layers are found inside their TFMOT
    wrappers.
    """
    head = _pooled_head(encoder)
    if head is None:
        return None
    features = head.pool.get_input_at(0)
    return int(features.shape[1]), int(features.shape[2])


def with_label_map(encoder: keras.Model) -> keras.Model | None:
    """A model sharing ``encoder``'s layers that outputs ``[embedding [D], label map
    [cells, D]]``, or None when :func:`label_map_grid` finds no head to project per cell.

    Each cell ``c`` of the feature map gets the projection's input the pooled features
    would have if the map were that cell alone: ``f_c`` for an average pool, and with
    ``avgmax`` ``[f_c, max(f)]``, the maximum being the image's (a maximum has no share
    per cell; spreading it evenly keeps the cells' mean equal to the pooled projection,
    so the map says where the *average* half of the evidence is).  A quantization-aware
    tower's wrapped projection is applied with its own fake-quantized kernel
    (:class:`QuantizedCellProjection`).
    """
    head = _pooled_head(encoder)
    if head is None:
        return None
    features = head.pool.get_input_at(0)
    rows, cols, channels = (int(n) for n in features.shape[1:])
    # Every cell of every image as one row, so the projection is a plain matrix product
    # (FULLY_CONNECTED); a Dense on the 4-D map would add shape arithmetic ops to the graph.
    cells = tf.reshape(features, (-1, channels))
    if head.max_pool is not None:
        peak = tf.tile(tf.expand_dims(head.max_pool.get_output_at(0), 1), (1, rows * cols, 1))
        cells = tf.concat([cells, tf.reshape(peak, (-1, channels))], axis=-1)
    if _quantize_wrapper(head.project):
        cells = QuantizedCellProjection(head.project, name="label_map_cells")(cells)
    else:
        cells = head.project(cells)
    units = int(_inner(head.project).units)
    cells = tf.reshape(cells, (-1, rows * cols, units))
    cells = keras.layers.Activation("linear", name=LABEL_MAP_OUTPUT)(cells)  # names the output; no op
    return keras.Model(encoder.inputs, [encoder.output, cells], name=f"{encoder.name}_with_map")


class QuantizedCellProjection(keras.layers.Layer):
    """A quantization-aware tower's projection applied to each cell of the feature map.

    TFMOT's wrapper cannot be called on the cells: it fake-quantizes its *output* with
    the range it learnt on pooled embeddings, which a single cell's projection exceeds
    (the map would be clipped).  This layer computes ``W_q f_c + b`` with the wrapper's
    own variables, ``W_q`` being its kernel fake-quantized exactly as the wrapper does,
    and leaves the output to the converter's calibration.  The converter quantizes the
    kernel again for it; ``fuselite.convert.tflite.compact_flatbuffer`` stores the two
    copies once.  Built for conversion only: it is never saved, so it has no config to be
    rebuilt from.
    """

    def __init__(self, wrapper, **kwargs):
        super().__init__(trainable=False, **kwargs)
        self.wrapper = wrapper

    def call(self, cells):
        """``[cells, units]``: the projection of each row of ``cells`` ``[cells, channels]``."""
        return tf.matmul(cells, self.quantized_kernel(training=False)) + self.wrapper.layer.bias

    def quantized_kernel(self, training=False):
        """The wrapper's kernel variable through its own weight quantizer (TFMOT 0.8's
        ``_weight_vars``: ``(weight, quantizer, quantizer variables)`` per quantized weight)."""
        for weight, quantizer, quantizer_vars in self.wrapper._weight_vars:
            if weight.name.endswith("kernel:0"):
                return quantizer(weight, training, weights=quantizer_vars)
        return self.wrapper.layer.kernel  # a wrapper that leaves the kernel in float


class _PooledHead(NamedTuple):
    """The layers of a pooling-then-linear head (each possibly inside a quantize wrapper)."""

    pool: keras.layers.Layer
    project: keras.layers.Layer
    max_pool: keras.layers.Layer | None  # avgmax: the maximum concatenated after the average


def _pooled_head(encoder: keras.Model) -> _PooledHead | None:
    """The pooling-then-linear head of ``encoder`` (TFMOT-wrapped or not), or None."""
    if len(encoder.output_shape) != 2:
        return None
    pool, project = _head_layer(encoder, "pool"), _head_layer(encoder, "project")
    if pool is None or project is None:
        return None
    if not isinstance(_inner(pool), keras.layers.GlobalAveragePooling2D) or not isinstance(
        _inner(project), keras.layers.Dense
    ):
        return None
    # The first node is the tower's own (later ones are maps made by with_label_map).
    if project.get_input_at(0) is pool.get_output_at(0):
        return _PooledHead(pool, project, None)
    concat, max_pool = _head_layer(encoder, "pool_concat"), _head_layer(encoder, "max_pool")
    if concat is None or max_pool is None or project.get_input_at(0) is not concat.get_output_at(0):
        return None
    joined = concat.get_input_at(0)
    if len(joined) != 2 or joined[0] is not pool.get_output_at(0) or joined[1] is not max_pool.get_output_at(0):
        return None
    return _PooledHead(pool, project, max_pool)


def _head_layer(encoder: keras.Model, name: str):
    """The layer called ``name``, or the quantize wrapper around it (``quant_<name>``), or None."""
    for layer in encoder.layers:
        if layer.name == name or (_quantize_wrapper(layer) and layer.layer.name == name):
            return layer
    return None


def _quantize_wrapper(layer) -> bool:
    """Whether ``layer`` is TFMOT's quantize wrapper (told by its attributes: no TFMOT import)."""
    return isinstance(getattr(layer, "layer", None), keras.layers.Layer) and hasattr(layer, "quantize_config")


def _inner(layer):
    """The layer a quantize wrapper wraps, or ``layer`` itself."""
    return layer.layer if _quantize_wrapper(layer) else layer


def mirror_averaged(encoder: keras.Model) -> keras.Model:
    """``encoder`` run on an image and on its left-right mirror, the two embeddings averaged.

    Test-time augmentation for towers trained with flips: twice the compute per frame
    for a steadier score.  A regional tower's mirrored cell grid is flipped back
    first, so each cell is averaged with the same place in the image.  It adds no
    weights; ``fuselite convert`` builds it for the ``*-mirror`` variants.

    Both views go through the tower as one batch, so a quantized model gives them the
    same quantization parameters and a frame and its mirror score exactly alike.
    """
    pixels = keras.Input(encoder.input_shape[1:], dtype=encoder.inputs[0].dtype, name=encoder.input_names[0])
    width = int(pixels.shape[2])
    views = tf.concat([pixels, tf.gather(pixels, _mirror_order(1, width), axis=2)], axis=0)
    outputs = encoder(views)
    label_map = None
    if isinstance(outputs, (list, tuple)):  # a with_label_map tower: [embedding, class activation map]
        outputs, label_map = outputs
    plain, mirrored = tf.split(outputs, 2, axis=0)
    if len(plain.shape) == 3:  # regional: [cells, D], the cells of a square grid in row-major order
        side = math.isqrt(int(plain.shape[1]))
        mirrored = tf.gather(mirrored, _mirror_order(side, side), axis=1)
    total = keras.layers.Add(name="mirror_sum")([plain, mirrored])
    embedding = keras.layers.UnitNormalization(axis=-1, name="mirror_embedding")(total)
    if label_map is None:
        return keras.Model(pixels, embedding, name="mirror_averaged")
    return keras.Model(pixels, [embedding, _mirror_averaged_map(label_map)], name="mirror_averaged_with_map")


def _mirror_averaged_map(label_map):
    """The class activation map of a mirror-averaged tower, in the frame's coordinates.

    ``label_map`` holds both views' maps ``[2 * batch, cells, D]``; the mirror's grid is
    flipped back (GATHER along the cells, as for a regional tower's cells) and the two
    averaged, so each cell is the evidence of the same place in the frame seen both ways.
    Each view's map averages to its own pooled projection, so the average map's mean is
    the average of the two; the mirror embedding normalises the sum of the two *unit*
    embeddings instead, so the mean cell logit equals the frame's logit exactly only when
    the two views' projections are equally long (nearly so for a tower trained with flips).
    """
    plain, mirrored = tf.split(label_map, 2, axis=0)
    side = math.isqrt(int(plain.shape[1]))
    mirrored = tf.gather(mirrored, _mirror_order(side, side), axis=1)
    return keras.layers.Average(name=LABEL_MAP_OUTPUT)([plain, mirrored])


def _mirror_order(rows: int, cols: int) -> np.ndarray:
    """Indices that mirror a row-major ``rows x cols`` grid left-right.

    Used with GATHER, not REVERSE_V2: the full-integer converter gives REVERSE_V2's
    output a scale of its own while the kernel copies the raw int8 values.
    """
    return np.arange(rows * cols, dtype=np.int32).reshape(rows, cols)[:, ::-1].ravel()


def image_similarity(image_emb, text_emb):
    """Cosine similarity ``[batch, texts]``; for regional embeddings, the best cell's."""
    if len(image_emb.shape) == 3:
        return tf.reduce_max(tf.einsum("bnd,td->bnt", image_emb, text_emb), axis=1)
    return tf.matmul(image_emb, text_emb, transpose_b=True)


def global_embedding(image_emb):
    """A single unit-length image embedding: the mean of the cells for regional models."""
    if len(image_emb.shape) == 3:
        return tf.math.l2_normalize(tf.reduce_mean(image_emb, axis=1), axis=-1)
    return image_emb


def text_encoder(config: TrainConfig, vocab_size: int) -> keras.Model:
    """Builds the text tower: int32 ``[max_text_length]`` ids -> unit-length ``[embed_dim]``."""
    ids = keras.Input((config.max_text_length,), dtype="int32", name="token_ids")
    x = keras.layers.Embedding(vocab_size, config.text_embed_dim, name="words")(ids)
    x = keras.layers.Conv1D(
        config.text_hidden, 2, padding="same", activation="relu", name="bigrams"
    )(x)
    x = keras.layers.GlobalMaxPooling1D(name="pool")(x)
    x = keras.layers.Dense(config.text_hidden, activation="relu", name="hidden")(x)
    x = keras.layers.Dense(config.embed_dim, name="project")(x)
    embedding = keras.layers.UnitNormalization(name="embedding")(x)
    return keras.Model(ids, embedding, name="text_encoder")


def sigmoid_pair_loss(image_emb, text_emb, scale, bias):
    """SigLIP loss: every image-caption pair in the batch is a binary problem.

    Matching pairs (the diagonal) are positives, all others negatives; the mean
    over images of the summed per-pair log-sigmoid losses, as in the SigLIP paper.
    """
    logits = scale * tf.matmul(image_emb, text_emb, transpose_b=True) + bias
    signs = 2.0 * tf.eye(tf.shape(logits)[0]) - 1.0
    return -tf.reduce_mean(tf.reduce_sum(tf.math.log_sigmoid(signs * logits), axis=1))


def global_pair_loss(image_emb, text_emb, scale, bias):
    """:func:`sigmoid_pair_loss` over the global batch: the embeddings of every replica.

    Each replica computes the same loss, on all images against all captions, so
    adding replicas or workers adds negatives instead of splitting them (and the
    loss does not change with the number of replicas).
    """
    return sigmoid_pair_loss(gather_replicas(image_emb), gather_replicas(text_emb), scale, bias)


def _mean_label_bce(targets, logits):
    """Sigmoid cross-entropy summed over labels, averaged over the batch."""
    return tf.reduce_mean(tf.reduce_sum(tf.nn.sigmoid_cross_entropy_with_logits(targets, logits), axis=1))


def _smoothed(one_hot, smoothing: float):
    """Label smoothing as in ``keras.losses.categorical_crossentropy``."""
    return one_hot * (1.0 - smoothing) + smoothing / tf.cast(tf.shape(one_hot)[-1], one_hot.dtype)


class _LossMean(keras.metrics.Mean):
    """The running mean of the loss, loadable from a weights file under a multi-worker strategy.

    Its variables sum across workers when read; assigning them outside a replica
    step divides the value by the replica count first, which fails on the h5py
    dataset ``load_weights`` hands over, so the values are read into arrays first.
    """

    def load_own_variables(self, store):
        """Loads the saved total and count (as arrays)."""
        # The store is an h5 entry: it has keys() but is not iterable.
        super().load_own_variables({key: np.asarray(store[key]) for key in store.keys()})  # noqa: SIM118


class FusedModel(keras.Model):
    """Both towers and the scorer, with a training step for the two losses.

    The label loss is binary cross-entropy over the training label vocabulary for
    multi-label data (softmax cross-entropy for single-label data); the pair loss
    is :func:`sigmoid_pair_loss` on image-caption pairs when captions exist.
    Batches that carry ``"soft_labels"`` (``fuselite train --teacher``) mix the
    teachers' probabilities into the label targets (:mod:`fuselite.train.distill`).

    Args:
        config: The run's :class:`TrainConfig`.
        vocab_size: Tokenizer vocabulary size.
        label_ids: int32 ``[num_labels, max_text_length]``, the training labels' token ids.
        task: ``"multi"`` or ``"single"``.
        use_captions: Whether batches carry caption ids for the pair loss.
        pretrained_weights: Load a pretrained backbone's ImageNet weights.
    """

    def __init__(self, config: TrainConfig, vocab_size: int, label_ids: np.ndarray,
                 task: str = "multi", use_captions: bool = False, pretrained_weights: bool = False,
                 **kwargs):
        super().__init__(**kwargs)
        self.config = config
        self.task = task
        self.use_captions = use_captions and config.siglip_weight > 0
        self.image_encoder = image_encoder(config, pretrained_weights)
        # Set this way, not as attributes: Keras would track the two views of the same
        # layers as extra sub-models, and save and restore their weights twice.
        self.__dict__["image_parts"] = (
            split_image_encoder(self.image_encoder, config) if config.pretrained else None)
        self.__dict__["feature_inputs"] = False
        self.text_encoder = text_encoder(config, vocab_size)
        self.label_ids = tf.constant(label_ids, dtype=tf.int32)
        # log-parameterised scale as in SigLIP: starts at 10, bias at -5 (labels are rare).
        self.log_scale = self.add_weight(
            name="log_scale", shape=(), initializer=keras.initializers.Constant(np.log(10.0))
        )
        self.logit_bias = self.add_weight(
            name="logit_bias", shape=(), initializer=keras.initializers.Constant(-5.0)
        )
        self.loss_tracker = _LossMean(name="loss")
        # Set by the trainer for teacher_views="augmented" (fuselite.train.distill).
        self.augmented_view_teacher = None

    @property
    def metrics(self):
        """Metrics reset at every epoch."""
        return [self.loss_tracker]

    def scale(self):
        """The scorer's positive scale, clipped as in SigLIP to keep training stable."""
        return tf.exp(tf.minimum(self.log_scale, np.log(100.0)))

    def use_features(self, enabled: bool) -> None:
        """Feeds the head with cached backbone feature maps instead of pixels (or back).

        While on, the backbone's layers are frozen: only the head and the text tower
        train.  Compile (again) after switching.
        """
        if enabled and self.image_parts is None:
            raise ValueError("only a pretrained backbone's tower takes feature maps")
        self.__dict__["feature_inputs"] = enabled
        if self.image_parts is not None:
            for layer in backbone_layers(self.image_encoder):
                layer.trainable = not enabled

    def embed_images(self, images, training=False):
        """Image embeddings of a batch: pixels, or feature maps after :meth:`use_features`."""
        encoder = self.image_parts[1] if self.feature_inputs else self.image_encoder
        return encoder(images, training=training)

    def label_logits(self, images, training=False):
        """Logits ``[batch, num_labels]`` of every training label for ``images``."""
        image_emb = self.embed_images(images, training=training)
        label_emb = self.text_encoder(self.label_ids, training=training)
        return self.scale() * image_similarity(image_emb, label_emb) + self.logit_bias

    def call(self, images, training=False):
        """Label probabilities for a batch of uint8 images."""
        return tf.sigmoid(self.label_logits(images, training=training))

    def _batch_loss(self, batch, training):
        targets = batch["targets"]
        image_emb = self.embed_images(batch["image"], training=training)
        label_emb = self.text_encoder(self.label_ids, training=training)
        logits = self.scale() * image_similarity(image_emb, label_emb) + self.logit_bias
        if self.task == "single":
            goal = self._with_soft_labels(_smoothed(targets, self.config.label_smoothing), batch, training)
            loss = tf.reduce_mean(keras.losses.categorical_crossentropy(goal, logits, from_logits=True))
            loss += self.config.label_bce_weight * _mean_label_bce(targets, logits)
        else:
            loss = _mean_label_bce(self._with_soft_labels(targets, batch, training), logits)
        if self.use_captions:
            caption_emb = self.text_encoder(batch["caption_ids"], training=training)
            pair = global_pair_loss(global_embedding(image_emb), caption_emb, self.scale(), self.logit_bias)
            loss += self.config.siglip_weight * pair
        return loss

    def _with_soft_labels(self, targets, batch, training):
        """The label targets mixed with the teachers' soft labels when there are teachers.

        Soft labels come with the batch (precomputed), or, for training batches with
        an :attr:`augmented_view_teacher`, from the teachers scoring the batch itself.

        Both losses are linear in their targets, so this equals a weighted sum of a
        true-label loss and a distillation loss.
        """
        if "soft_labels" in batch:
            soft_labels = batch["soft_labels"]
        elif training and self.augmented_view_teacher is not None:
            soft_labels = self.augmented_view_teacher(batch["image"])
        else:
            return targets
        weight = self.config.distill_weight
        return (1.0 - weight) * targets + weight * soft_labels

    def train_step(self, batch):
        """One optimiser step on the combined loss (scaled for multi-replica strategies)."""
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        with tf.GradientTape() as tape:
            loss = self._batch_loss(batch, training=True)
            scaled = loss / replicas + tf.add_n(self.losses) if self.losses else loss / replicas
        grads = tape.gradient(scaled, self.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result()}

    def test_step(self, batch):
        """Validation loss, used for early stopping."""
        self.loss_tracker.update_state(self._batch_loss(batch, training=False))
        return {"loss": self.loss_tracker.result()}

    def get_config(self) -> dict:
        """The run config; the model is saved as weights and rebuilt from it."""
        return {"config_name": self.config.name, "task": self.task}

    def logit_scale_value(self) -> float:
        """The scorer's scale as a Python float, for the bundle manifest."""
        return float(self.scale().numpy())
