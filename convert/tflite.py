"""Keras towers -> TFLite flatbuffers, one converter setup per variant row.

Every image model takes uint8 ``[1, S, S, 3]`` RGB pixels, so the device never
normalises: float variants keep the Keras model's uint8 input (a CAST op feeds the
in-model Rescaling), and full-integer variants are converted from a float-input copy
with ``inference_input_type=uint8``, whose calibrated input scale is exactly 1 with
zero point 0 (raw pixels).  Their embedding output is int8 with the fixed scale 1/128
of TFLite's quantized L2 normalisation, so a float output would add nothing.

A ``mirror`` variant wraps the tower (after that copy) in
:func:`fuselite.train.model.mirror_averaged`: the flatbuffer runs the same weights on
the image and its mirror and outputs the averaged embedding, so the runtime needs no
change and benchmarks see the doubled compute.  A pooled tower's class activation map
(``label_map=True``) is averaged the same way, the mirror's flipped back first.

The text tower is float32, or, inside int8 bundles, full integer (int32 token ids
in, float32 embedding out, so the runtime and older boards see the same signature)
calibrated on token sequences of the run's labels and captions, or float16 weights
when int8 moves the label embeddings too far (see ``convert.export``).  Its ops are
int8 builtins every supported runtime loads; dynamic-range quantization is not used,
because its hybrid FULLY_CONNECTED (v12) is refused by tflite-runtime 2.14.

Every flatbuffer leaves compacted, with the same tensors, ops and weights:
- short tensor names ("t12"; inputs and outputs keep theirs): the converter names
  each tensor after the whole chain of fused Keras ops, about 4 kB of text that a
  board would store and never read;
- one copy of each zero-point vector.  Per-channel int8 gives every kernel and bias
  an int64 zero point per output channel, all 0: 16 B per channel, 15 % of a
  small int8 model.  Flatbuffer tables may share a vector, so tensors with the
  same channel count point at one copy;
- one copy of a quantization-aware projection's int8 kernel, which the converter
  stores once for the embedding and once for the class activation map (the two differ
  by one rounding step in a few values).
"""

from __future__ import annotations

import contextlib
import logging
import warnings

import flatbuffers
import numpy as np

from fuselite.convert.variants import Variant
from fuselite.convert.weight_grid import round_to_int8_grid
from fuselite.errors import UserError
from fuselite.train.backend import keras, tf
from fuselite.train.model import mirror_averaged, with_label_map

log = logging.getLogger(__name__)


class ConversionError(UserError):
    """The TFLite converter refused a model; the message names the variant and the reason."""


def convert_image_model(model: keras.Model, variant: Variant, calibration: np.ndarray | None = None,
                        progress=None, label_map: bool = False, weight_grid: bool = True) -> bytes:
    """Converts the image tower as ``variant`` says; ``calibration`` is uint8 images for int8.

    ``progress``, if given, is called with 1 for each calibration image the converter takes.
    ``label_map`` adds a pooled tower's class activation map as a second output
    (:func:`fuselite.train.model.with_label_map`; towers without a pooling-then-linear head
    convert as they are).  It is added after the float-input copy: a quantization-aware
    tower's map layer uses the wrappers' own variables and cannot be cloned.
    ``weight_grid`` (per-channel int8 only) rounds the copy's convolution kernels first,
    keeping flat regions' responses (:mod:`fuselite.convert.weight_grid`); ``False`` leaves
    the rounding to the converter (kept for comparisons).
    """
    if variant.calibrated:
        if calibration is None or not len(calibration):
            raise ValueError(f"{variant.name} needs calibration images")
        model = float_input_copy(model)
        # Not clustered kernels: moving single weights would split their shared values,
        # which is what makes that variant compress.
        plain_int8 = variant.quantization == "int8" and variant.compression != "cluster"
        if plain_int8 and variant.per_channel and weight_grid:
            rounded = round_to_int8_grid(model, calibration)
            log.debug("%s: %d kernels rounded keeping flat-region responses", variant.name, rounded)
    if label_map:
        model = with_label_map(model) or model
    if variant.mirror:
        model = mirror_averaged(model)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    _configure(converter, variant, calibration, progress)
    return _run(converter, f"{variant.name} image model")


TEXT_PRECISIONS = ("float32", "float16", "int8")


def convert_text_model(model: keras.Model, precision: str = "float32", token_ids: np.ndarray | None = None) -> bytes:
    """Converts the text tower (int32 ids in, float32 embedding out) at ``precision``.

    ``"int8"`` is full integer inside (an int8 word table, convolution and dense layers)
    and needs ``token_ids``, int32 ``[N, max_length]`` rows to calibrate on;
    ``"float16"`` stores float16 weights and computes in float32.
    """
    if precision not in TEXT_PRECISIONS:
        raise ValueError(f"text encoder precision {precision!r} is not one of {TEXT_PRECISIONS}")
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if precision != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if precision == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif precision == "int8":
        if token_ids is None or not len(token_ids):
            raise ValueError("an int8 text encoder needs token ids to calibrate on")
        rows = np.asarray(token_ids, np.int32)
        converter.representative_dataset = lambda: ([row[np.newaxis]] for row in rows)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return _run(converter, f"{precision} text encoder" if precision != "float32" else "text encoder")


def float_input_copy(model: keras.Model) -> keras.Model:
    """A copy of a uint8-input functional model that takes the same pixels as float32.

    The full-integer converter quantizes a float input; a uint8 input would stay a
    float CAST in front of the integer graph.
    Quantization-aware (TFMOT) towers are copied with their fake-quant ranges, which
    the converter then uses for the tensors they cover.
    """
    shape = model.input_shape[1:]
    inputs = keras.Input(shape, dtype="float32", name=model.input_names[0])
    with _custom_layer_scope(model):
        copy = keras.models.clone_model(model, input_tensors=inputs)
    copy.set_weights(model.get_weights())
    return copy


def _custom_layer_scope(model: keras.Model):
    """Where ``clone_model`` can rebuild ``model``'s layers from their configs.

    A quantization-aware tower's wrappers and quantize configs are only known by
    name inside TFMOT's scope; other towers need no scope (nor the TFMOT import).
    """
    if not any(type(layer).__module__.startswith("tensorflow_model_optimization") for layer in model.layers):
        return contextlib.nullcontext()
    import tensorflow_model_optimization as tfmot

    return tfmot.quantization.keras.quantize_scope()


def representative_dataset(images: np.ndarray, progress=None):
    """A converter ``representative_dataset`` over uint8 images, one image per step.

    The first image gets one black and one white pixel, so the calibrated input range
    is the full 0..255 and the uint8 input takes raw pixels (scale 1, zero point 0)
    even when the sample never reaches the extremes.
    """
    first = images[:1].astype(np.float32)
    first[0, 0, 0, :], first[0, 0, -1, :] = 0.0, 255.0

    def generate():
        tick = progress or (lambda n: None)
        yield [first]
        tick(1)
        for image in images[1:]:
            yield [image[np.newaxis].astype(np.float32)]
            tick(1)

    return generate


def _configure(converter, variant: Variant, calibration: np.ndarray | None, progress=None) -> None:
    if variant.sparse_inference:  # pruned kernels stored sparse (DENSIFY ops): XNNPACK's sparse-path hint
        converter.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
    if variant.quantization == "none":
        return
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if variant.quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif variant.quantization == "int8":
        converter.representative_dataset = representative_dataset(calibration, progress)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.int8
        converter._experimental_disable_per_channel = not variant.per_channel


def _run(converter, what: str) -> bytes:
    tf_log = logging.getLogger("tensorflow")
    level = tf_log.level
    tf_log.setLevel(max(level, logging.WARNING))  # "Assets written to /tmp/..." on every call
    try:
        with warnings.catch_warnings():
            # Only meaningful for the legacy converter's quantized_input_stats, not used here.
            warnings.filterwarnings("ignore", "Statistics for quantized inputs were expected")
            flatbuffer = bytes(converter.convert())
    except Exception as exc:  # the converter raises many types, all meaning "cannot convert"
        raise ConversionError(f"{what}: the TFLite converter failed: {_reason(exc)}") from exc
    finally:
        tf_log.setLevel(level)
    return compact_flatbuffer(flatbuffer)


def compact_flatbuffer(flatbuffer: bytes) -> bytes:
    """``flatbuffer`` with short inner tensor names and shared zero-point vectors.

    Subgraph inputs and outputs keep their names, and signatures refer to tensors by
    index, so nothing that loads or runs the model changes.
    """
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    for subgraph in model.subgraphs:
        keep = set(subgraph.inputs) | set(subgraph.outputs)
        for index, tensor in enumerate(subgraph.tensors):
            if index not in keep:
                tensor.name = f"t{index}".encode()
    _share_twin_kernels(model)
    builder = _ZeroPointSharingBuilder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _share_twin_kernels(model) -> None:
    """Stores once the int8 kernels of FULLY_CONNECTED ops that are the same kernel quantized twice.

    A quantization-aware tower's projection serves the embedding and, per cell, its class
    activation map (:class:`fuselite.train.model.QuantizedCellProjection`); the converter
    quantizes the one fake-quantized kernel once for each, with the same scales, and
    rounding leaves a handful of values one step apart (4 of 4,096 in the tiny tower).
    Twins (same shape and quantization, no value more than one step apart, at most 1% of
    values apart at all) are pointed at the first one's buffer, so the map uses exactly
    the embedding's kernel and the file holds it once.
    """
    fully_connected = {i for i, code in enumerate(model.operatorCodes)
                       if max(code.builtinCode, code.deprecatedBuiltinCode) == _FULLY_CONNECTED}
    dropped = set()
    for subgraph in model.subgraphs:
        kept: list = []
        for op in subgraph.operators:
            if op.opcodeIndex not in fully_connected or len(op.inputs) < 2 or op.inputs[1] < 0:
                continue
            tensor = subgraph.tensors[op.inputs[1]]
            twin = next((k for k in kept if _twins(model, k, tensor)), None)
            if twin is None:
                kept.append(tensor)
            elif twin.buffer != tensor.buffer:
                dropped.add(tensor.buffer)
                tensor.buffer = twin.buffer
    used = {t.buffer for subgraph in model.subgraphs for t in subgraph.tensors}
    used |= {entry.buffer for entry in model.metadata or []}
    for index in dropped - used:
        model.buffers[index].data = None


_FULLY_CONNECTED = 9  # BuiltinOperator.FULLY_CONNECTED


def _twins(model, a, b) -> bool:
    """Whether int8 constant tensors ``a`` and ``b`` hold the same kernel quantized twice."""
    if a.type != _INT8 or b.type != _INT8 or a.buffer == 0 or b.buffer == 0:
        return False
    if not np.array_equal(a.shape, b.shape) or _quantization_key(a) != _quantization_key(b):
        return False
    data_a, data_b = model.buffers[a.buffer].data, model.buffers[b.buffer].data
    if data_a is None or data_b is None or len(data_a) != len(data_b) or not len(data_a):
        return False
    steps = np.abs(np.asarray(data_a, np.uint8).view(np.int8).astype(np.int16)
                   - np.asarray(data_b, np.uint8).view(np.int8).astype(np.int16))
    return int(steps.max()) <= 1 and float(np.mean(steps > 0)) <= 0.01


_INT8 = 9  # TensorType.INT8


def _quantization_key(tensor) -> tuple:
    """A tensor's scales, zero points and quantized dimension, comparable with ``==``."""
    q = tensor.quantization
    if q is None or q.scale is None:
        return ()
    return (np.asarray(q.scale).tobytes(), np.asarray(q.zeroPoint).tobytes(), q.quantizedDimension)


class _ZeroPointSharingBuilder(flatbuffers.Builder):
    """Writes each distinct int64 vector once; later equal vectors reuse its offset.

    int64 vectors in a TFLite model are only quantization zero points.  Weight
    buffers (uint8) are never shared, so every tensor keeps its own weights.
    """

    def __init__(self, size: int):
        super().__init__(size)
        self._int64_vectors: dict[bytes, int] = {}

    def CreateNumpyVector(self, x):  # the flatbuffers method it overrides
        """The offset of vector ``x``: an equal int64 vector's offset if one was written."""
        if x.dtype != np.int64:
            return super().CreateNumpyVector(x)
        key = x.astype("<i8").tobytes()
        if key not in self._int64_vectors:
            self._int64_vectors[key] = super().CreateNumpyVector(x)
        return self._int64_vectors[key]


def _reason(exc: Exception) -> str:
    """The most telling line of a converter error (MLIR errors bury it among notes)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if "error:" in line:
            return line[line.index("error:") + len("error:") :].strip()
    return lines[0] if lines else type(exc).__name__
