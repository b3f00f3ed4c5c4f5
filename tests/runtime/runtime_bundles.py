"""Builds real, tiny fuselite bundles for the runtime tests (TensorFlow only here).

The weights are set by hand so that scores mean something: the image tower measures
how red, green or blue a frame is, and the text tower maps the words ``red``,
``green``, ``blue`` and ``gray`` onto the same directions.  A red frame therefore
scores the label "red" near 1 and "blue" near 0, and a typed label such as
"red circle" sits between "red" and "circle".

Run as a script to write the bundles to a folder (used for the benchmark figures)::

    python tests/runtime/runtime_bundles.py OUT_DIR
"""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np

from fuselite.bundle import Manifest, Preprocessing, write_bundle
from fuselite.tokenizer import Tokenizer

INPUT_SIZE = (32, 32)
EMBEDDING_DIM = 8
LABELS = ("red", "green", "blue", "gray")
THRESHOLDS = (0.5, 0.5, 0.5, 0.6)
WORDS = ("red", "green", "blue", "gray", "circle", "star", "square")
LOGIT_SCALE = 10.0
LOGIT_BIAS = -5.0
# How far the "gray" direction is pulled on every frame; a frame without a dominant
# colour ends up pointing there.
GRAY_BIAS = 0.15


def _tf():
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf
    import tf_keras

    return tf, tf_keras


def build_image_model(input_size=INPUT_SIZE, dim=EMBEDDING_DIM, width=0):
    """Pixels 0-255 -> colour-excess conv -> pool -> dense -> L2-normalised embedding.

    ``width`` > 0 appends that many extra 3x3 conv layers (of ``width`` filters,
    zero-initialised so they do not change the scores) to make a slower model for
    benchmarks.
    """
    tf, keras = _tf()
    inputs = keras.Input((*input_size, 3), batch_size=1, dtype="float32")
    x = keras.layers.Rescaling(1 / 255)(inputs)
    colour = keras.layers.Conv2D(3, 3, padding="same", use_bias=False, activation="relu")
    x = colour(x)
    if width:
        extra = x
        for _ in range(4):
            extra = keras.layers.Conv2D(width, 3, padding="same", activation="relu")(extra)
        extra = keras.layers.Conv2D(3, 1, kernel_initializer="zeros", use_bias=False)(extra)
        x = keras.layers.Add()([x, extra])
    x = keras.layers.GlobalAveragePooling2D()(x)
    head = keras.layers.Dense(dim)
    x = head(x)
    outputs = keras.layers.Lambda(lambda t: tf.math.l2_normalize(t, axis=-1))(x)
    model = keras.Model(inputs, outputs)
    kernel = np.full((3, 3), -0.5, np.float32) + 1.5 * np.eye(3, dtype=np.float32)
    colour.set_weights([np.broadcast_to(kernel / 9.0, (3, 3, 3, 3)).copy()])
    weights = np.zeros((3, dim), np.float32)
    weights[:, :3] = np.eye(3)
    bias = np.zeros(dim, np.float32)
    bias[3] = GRAY_BIAS
    head.set_weights([weights, bias])
    return model


def build_text_model(tokenizer: Tokenizer, dim=EMBEDDING_DIM):
    """Token ids -> embedding (a one-hot direction per known word) -> mean -> dense -> L2."""
    tf, keras = _tf()
    ids = keras.Input((tokenizer.max_length,), batch_size=1, dtype="int32")
    embed = keras.layers.Embedding(tokenizer.vocab_size, dim)
    x = keras.layers.GlobalAveragePooling1D()(embed(ids))
    head = keras.layers.Dense(dim, use_bias=False)
    x = head(x)
    outputs = keras.layers.Lambda(lambda t: tf.math.l2_normalize(t, axis=-1))(x)
    model = keras.Model(ids, outputs)
    table = np.zeros((tokenizer.vocab_size, dim), np.float32)
    for direction, word in enumerate(WORDS):
        table[tokenizer.vocab.index(word), direction] = 1.0
    embed.set_weights([table])
    head.set_weights([np.eye(dim, dtype=np.float32)])
    return model


# variant -> dtype of the image model's input and output (None: float32, no quantization)
VARIANTS = {"fp32": None, "int8": "uint8", "int8-signed-io": "int8"}


def convert(model, io_type: str | None = None) -> bytes:
    """Converts a Keras model to TFLite: fp32, or full-int8 with ``io_type`` input and output."""
    tf, _ = _tf()
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if io_type:
        shape = model.inputs[0].shape

        def representative():
            rng = np.random.default_rng(0)
            for _ in range(64):
                colour = rng.uniform(0, 255, size=(1, 1, 1, 3))
                noise = rng.normal(0, 20, size=shape)
                yield [np.clip(colour + noise, 0, 255).astype(np.float32)]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = getattr(tf, io_type)
        converter.inference_output_type = getattr(tf, io_type)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
        return converter.convert()


def _io_details(model_bytes: bytes):
    """The input dtype name and the (scale, zero_point) of input and output, from TFLite."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model_bytes)
    input_dtype = np.dtype(interpreter.get_input_details()[0]["dtype"]).name
    quant = []
    for detail in (interpreter.get_input_details()[0], interpreter.get_output_details()[0]):
        scale, zero_point = detail["quantization"]
        quant.append((float(scale), int(zero_point)) if scale else None)
    return input_dtype, *quant


def base_manifest(variant: str, model_bytes: bytes, input_size=INPUT_SIZE) -> Manifest:
    """The manifest of a factory bundle; quantization read from the model itself."""
    input_dtype, input_quant, output_quant = _io_details(model_bytes)
    return Manifest(
        variant=variant,
        task="multi",
        labels=LABELS,
        thresholds=THRESHOLDS,
        default_threshold=0.5,
        embedding_dim=EMBEDDING_DIM,
        logit_scale=LOGIT_SCALE,
        logit_bias=LOGIT_BIAS,
        preprocessing=Preprocessing(
            input_size=tuple(input_size),
            color_order="RGB",
            resize="area",
            input_dtype=input_dtype,
            normalization=(1 / 255, 0.0),
            input_quant=input_quant,
            output_quant=output_quant,
        ),
        provenance={"builder": "tests/runtime/runtime_bundles.py"},
    )


def label_embeddings(text_model, tokenizer: Tokenizer, labels=LABELS) -> np.ndarray:
    """The text tower's embeddings of ``labels``, float32 ``[len(labels), D]``."""
    ids = tokenizer.encode_batch(list(labels))
    return np.concatenate([text_model(ids[i : i + 1]).numpy() for i in range(len(labels))])


def build_bundles(out_dir: Path, input_size=INPUT_SIZE, width=0) -> dict[str, Path]:
    """Writes one bundle per :data:`VARIANTS` entry into ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    tokenizer = Tokenizer.fit(WORDS, max_length=4)
    text_model = build_text_model(tokenizer)
    text_bytes = convert(text_model)
    embeddings = label_embeddings(text_model, tokenizer)
    image_model = build_image_model(input_size, width=width)
    paths = {}
    for variant, io_type in VARIANTS.items():
        model_bytes = convert(image_model, io_type)
        paths[variant] = write_bundle(
            out_dir / f"{variant}.tflite",
            model_bytes=model_bytes,
            manifest=base_manifest(variant, model_bytes, input_size),
            tokenizer=tokenizer,
            label_embeddings=embeddings,
            text_encoder_bytes=text_bytes,
        )
    return paths


def repack(source: Path, target: Path, model_bytes=None, label_embeddings=None, **changes) -> Path:
    """Re-packs ``source`` into ``target`` with parts or manifest fields replaced."""
    from fuselite.bundle import read_bundle

    bundle = read_bundle(source)
    return write_bundle(
        target,
        model_bytes=bundle.model_bytes if model_bytes is None else model_bytes,
        manifest=replace(bundle.manifest, **changes),
        tokenizer=bundle.tokenizer,
        label_embeddings=bundle.label_embeddings if label_embeddings is None else label_embeddings,
        text_encoder_bytes=bundle.text_encoder_bytes,
    )


if __name__ == "__main__":
    size = int(sys.argv[2]) if len(sys.argv) > 2 else INPUT_SIZE[0]
    width = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    for name, path in build_bundles(Path(sys.argv[1]), (size, size), width).items():
        print(name, path)
