"""Builds tiny real bundles with TensorFlow, for the devices tests and verify_arm64.sh.

Not part of the package: ``devices/`` itself never imports TensorFlow.  The models
are small versions of the real towers (a strided conv net for images, an
embedding bag for label text), converted the three ways that matter for op
versions: ``fp32``, ``dynamic`` (dynamic-range quantization) and ``int8``
(full integer with a representative dataset).

Run as a script to write bundles for the CI verify step::

    python tests/devices/devices_testbundle.py --out-dir /tmp/bundles int8 fp32
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

VARIANTS = ("fp32", "dynamic", "int8")
INPUT_SIZE = (32, 32)
EMBEDDING_DIM = 16
LABELS = ("a red circle", "a blue square", "a green star")


def _tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import tensorflow as tf

    return tf


def _image_model(tf):
    keras = tf.keras
    tf.random.set_seed(0)
    inputs = keras.Input((*INPUT_SIZE, 3), batch_size=1, dtype="float32")
    x = keras.layers.Rescaling(1 / 127.5, -1.0)(inputs)
    x = keras.layers.Conv2D(32, 3, strides=2, activation="relu")(x)
    x = keras.layers.DepthwiseConv2D(3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    # 32 x 64 = 2048 weights: above the 1024 below which dynamic-range quantization skips a layer
    x = keras.layers.Dense(64, activation="relu")(x)
    x = keras.layers.Dense(EMBEDDING_DIM)(x)
    outputs = keras.layers.UnitNormalization()(x)
    return keras.Model(inputs, outputs)


def _text_model(tf, max_length: int, vocab_size: int):
    keras = tf.keras
    tf.random.set_seed(1)
    inputs = keras.Input((max_length,), batch_size=1, dtype="int32")
    x = keras.layers.Embedding(vocab_size, 32)(inputs)
    x = keras.layers.GlobalAveragePooling1D()(x)
    x = keras.layers.Dense(64, activation="relu")(x)
    x = keras.layers.Dense(EMBEDDING_DIM)(x)
    outputs = keras.layers.UnitNormalization()(x)
    return keras.Model(inputs, outputs)


def convert(model, variant: str, representative=None) -> bytes:
    """Converts a Keras model the way ``variant`` says; returns the flatbuffer bytes."""
    tf = _tf()
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if variant in ("dynamic", "int8"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if variant == "int8":
        converter.representative_dataset = representative
        if representative is not None and model.inputs[0].dtype == tf.float32:
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.uint8
            converter.inference_output_type = tf.int8
    return converter.convert()


def _quant(model_bytes: bytes, which: str):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model_bytes)
    detail = (interpreter.get_input_details() if which == "input" else interpreter.get_output_details())[0]
    scale, zero_point = detail["quantization"]
    return (float(scale), int(zero_point)) if scale else None


def build_parts(variant: str) -> dict:
    """The ``write_bundle`` keyword arguments of a tiny bundle of ``variant``."""
    from fuselite.bundle import Manifest, Preprocessing
    from fuselite.tokenizer import Tokenizer

    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    tf = _tf()
    tokenizer = Tokenizer.fit(LABELS, max_length=6)
    rng = np.random.default_rng(0)

    def images():
        for _ in range(16):
            yield [rng.integers(0, 256, (1, *INPUT_SIZE, 3)).astype(np.float32)]

    def token_ids():
        for label in LABELS:
            yield [np.array([tokenizer.encode(label)], dtype=np.int32)]

    image_bytes = convert(_image_model(tf), variant, images)
    text_model = _text_model(tf, tokenizer.max_length, len(tokenizer.vocab))
    text_bytes = convert(text_model, variant, token_ids)
    embeddings = np.stack([text_model(np.array([tokenizer.encode(t)]))[0].numpy() for t in LABELS])
    manifest = Manifest(
        variant=variant,
        task="single",
        labels=LABELS,
        thresholds=(0.5,) * len(LABELS),
        default_threshold=0.5,
        embedding_dim=EMBEDDING_DIM,
        logit_scale=10.0,
        logit_bias=-5.0,
        preprocessing=Preprocessing(
            input_size=INPUT_SIZE,
            input_dtype="uint8" if variant == "int8" else "float32",
            input_quant=_quant(image_bytes, "input"),
            output_quant=_quant(image_bytes, "output"),
        ),
    )
    return {
        "model_bytes": image_bytes,
        "manifest": manifest,
        "tokenizer": tokenizer,
        "label_embeddings": embeddings.astype(np.float32),
        "text_encoder_bytes": text_bytes,
    }


def write_test_bundle(path: Path, variant: str) -> Path:
    """Writes a tiny bundle of ``variant`` to ``path``."""
    from fuselite.bundle import write_bundle

    return write_bundle(Path(path), **build_parts(variant))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("variants", nargs="+", choices=VARIANTS)
    args = parser.parse_args()
    for variant in args.variants:
        path = write_test_bundle(args.out_dir / f"tiny-{variant}.tflite", variant)
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
