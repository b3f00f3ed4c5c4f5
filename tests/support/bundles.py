"""The test bundles: real, tiny TFLite bundles for every test folder (TensorFlow only here).

One builder, two families of models:

* **colour bundles** (:func:`build_colour_bundles`): weights set by hand so that scores
  mean something.  The image tower measures how red, green or blue a frame is, and the
  text tower maps the words ``red``, ``green``, ``blue`` and ``gray`` onto the same
  directions: a red frame scores "red" near 1 and "blue" near 0, and a typed label such
  as "red circle" sits between "red" and "circle".  Variants ``fp32``, ``int8`` (uint8
  input and output) and ``int8-signed-io``; ``regional=True`` keeps one embedding per
  8x8 cell (``[1, cells, D]``), like the scenes models.  The runtime, reliability and
  bench tests run them.
* **op bundles** (:func:`build_op_bundles`): small versions of the real towers (a
  strided conv net for images, an embedding bag for text) at their initial weights,
  converted the three ways that matter for op versions: ``fp32``, ``dynamic``
  (``FULLY_CONNECTED`` v12, which tflite-runtime 2.14 cannot load) and ``int8``.  The
  devices tests check and verify them.

``tests/conftest.py`` builds each set once per test session.  The package under test
never imports TensorFlow on the board side; only this builder does.  Run as a script
to write bundles to a folder (benchmark figures, ``devices/verify_arm64.sh``)::

    python tests/support/bundles.py colour OUT_DIR [--size 64] [--width 32]
    python tests/support/bundles.py ops --out-dir OUT_DIR fp32 int8 dynamic
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np

from fuselite.bundle import LabelMaps, Manifest, Preprocessing, read_bundle, write_bundle
from fuselite.tokenizer import Tokenizer

# --- colour bundles ----------------------------------------------------------------

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
REGION = 8  # pixels per side of a regional model's cell
# colour variant -> dtype of the image model's input and output (None: float32, no quantization)
COLOUR_VARIANTS = {"fp32": None, "int8": "uint8", "int8-signed-io": "int8"}

# --- op bundles ------------------------------------------------------------------------

OP_VARIANTS = ("fp32", "dynamic", "int8")
OP_EMBEDDING_DIM = 16
OP_LABELS = ("a red circle", "a blue square", "a green star")


def tensorflow():
    """TensorFlow and tf-keras, imported on first use (quietly)."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf
    import tf_keras

    return tf, tf_keras


def to_tflite(model, quantize: str | None = None, representative: Callable[[], Iterator] | None = None,
              input_type: str | None = None, output_type: str | None = None) -> bytes:
    """Converts a Keras model: ``quantize`` None (fp32), ``"dynamic"`` or ``"int8"``.

    For ``"int8"``, ``representative`` yields calibration inputs; ``input_type`` and
    ``output_type`` (``"uint8"``/``"int8"``) make the graph integer-only with those I/O types.
    """
    tf, _ = tensorflow()
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if quantize in ("dynamic", "int8"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "int8":
        converter.representative_dataset = representative
    if quantize == "int8" and input_type:
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = getattr(tf, input_type)
        converter.inference_output_type = getattr(tf, output_type or input_type)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Statistics for quantized inputs were expected..."
        return converter.convert()


def io_details(model_bytes: bytes) -> tuple[str, tuple[float, int] | None, tuple[float, int] | None]:
    """The input dtype name and the ``(scale, zero_point)`` of input and output, read by LiteRT."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model_bytes)
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    quant = [(float(d["quantization"][0]), int(d["quantization"][1])) if d["quantization"][0] else None
             for d in (inp, out)]
    return np.dtype(inp["dtype"]).name, quant[0], quant[1]


# --- colour bundles ----------------------------------------------------------------


def colour_image_model(input_size=INPUT_SIZE, dim=EMBEDDING_DIM, width=0, regional=False):
    """Pixels 0-255 -> colour-excess conv -> pool -> dense -> L2-normalised embedding.

    ``width`` > 0 appends four extra 3x3 conv layers of ``width`` filters (their sum
    zero-initialised, so the scores do not change) to make a slower model for benchmarks.
    ``regional`` pools per 8x8 cell instead of globally: output ``[1, cells, dim]``.
    """
    tf, keras = tensorflow()
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
    if regional:
        x = keras.layers.AveragePooling2D(REGION)(x)
        x = keras.layers.Reshape(((input_size[0] // REGION) * (input_size[1] // REGION), 3))(x)
    else:
        x = keras.layers.GlobalAveragePooling2D()(x)
    head = keras.layers.Dense(dim)
    outputs = keras.layers.Lambda(lambda t: tf.math.l2_normalize(t, axis=-1))(head(x))
    model = keras.Model(inputs, outputs)
    kernel = np.full((3, 3), -0.5, np.float32) + 1.5 * np.eye(3, dtype=np.float32)
    colour.set_weights([np.broadcast_to(kernel / 9.0, (3, 3, 3, 3)).copy()])
    weights = np.zeros((3, dim), np.float32)
    weights[:, :3] = np.eye(3)
    bias = np.zeros(dim, np.float32)
    bias[3] = GRAY_BIAS
    head.set_weights([weights, bias])
    return model


def colour_text_model(tokenizer: Tokenizer, dim=EMBEDDING_DIM):
    """Token ids -> embedding (a one-hot direction per known word) -> mean -> dense -> L2."""
    tf, keras = tensorflow()
    ids = keras.Input((tokenizer.max_length,), batch_size=1, dtype="int32")
    embed = keras.layers.Embedding(tokenizer.vocab_size, dim)
    head = keras.layers.Dense(dim, use_bias=False)
    x = head(keras.layers.GlobalAveragePooling1D()(embed(ids)))
    outputs = keras.layers.Lambda(lambda t: tf.math.l2_normalize(t, axis=-1))(x)
    model = keras.Model(ids, outputs)
    table = np.zeros((tokenizer.vocab_size, dim), np.float32)
    for direction, word in enumerate(WORDS):
        table[tokenizer.vocab.index(word), direction] = 1.0
    embed.set_weights([table])
    head.set_weights([np.eye(dim, dtype=np.float32)])
    return model


def colour_frames(shape) -> Callable[[], Iterator]:
    """A representative dataset: 64 noisy single-colour images of ``shape``."""

    def frames():
        rng = np.random.default_rng(0)
        for _ in range(64):
            colour = rng.uniform(0, 255, size=(1, 1, 1, 3))
            yield [np.clip(colour + rng.normal(0, 20, size=shape), 0, 255).astype(np.float32)]

    return frames


def colour_manifest(variant: str, model_bytes: bytes, input_size=INPUT_SIZE, **changes) -> Manifest:
    """The manifest of a colour bundle; quantization read from the model itself."""
    input_dtype, input_quant, output_quant = io_details(model_bytes)
    preprocessing = Preprocessing(
        input_size=tuple(input_size), color_order="RGB", resize="area", input_dtype=input_dtype,
        normalization=(1 / 255, 0.0), input_quant=input_quant, output_quant=output_quant,
    )
    fields = {
        "variant": variant, "task": "multi", "labels": LABELS, "thresholds": THRESHOLDS,
        "default_threshold": 0.5, "embedding_dim": EMBEDDING_DIM, "logit_scale": LOGIT_SCALE,
        "logit_bias": LOGIT_BIAS, "preprocessing": preprocessing,
        "provenance": {"builder": "tests/support/bundles.py"},
    }
    return Manifest(**{**fields, **changes})


def label_embeddings(text_model, tokenizer: Tokenizer, labels=LABELS) -> np.ndarray:
    """The text tower's embeddings of ``labels``, float32 ``[len(labels), D]``."""
    ids = tokenizer.encode_batch(list(labels))
    return np.concatenate([text_model(ids[i : i + 1]).numpy() for i in range(len(labels))]).astype(np.float32)


def colour_text_parts() -> dict:
    """The text half of every colour bundle: tokenizer, label embeddings, text encoder bytes."""
    tokenizer = Tokenizer.fit(WORDS, max_length=4)
    text_model = colour_text_model(tokenizer)
    return {"tokenizer": tokenizer, "label_embeddings": label_embeddings(text_model, tokenizer),
            "text_encoder_bytes": to_tflite(text_model)}


def build_colour_bundles(out_dir: Path, variants=tuple(COLOUR_VARIANTS), input_size=INPUT_SIZE, width=0,
                         regional=False, task="multi") -> dict[str, Path]:
    """Writes ``<variant>.tflite`` for each of ``variants`` into ``out_dir``; returns their paths.

    A ``regional`` bundle's manifest names its grid of cells (``label_maps``), as
    ``fuselite convert`` writes it.
    """
    out_dir = Path(out_dir)
    text = colour_text_parts()
    image_model = colour_image_model(input_size, width=width, regional=regional)
    maps = LabelMaps(grid=(input_size[0] // REGION, input_size[1] // REGION)) if regional else None
    paths = {}
    for variant in variants:
        io_type = COLOUR_VARIANTS[variant]
        model_bytes = to_tflite(image_model, "int8" if io_type else None,
                                colour_frames(image_model.inputs[0].shape), io_type)
        manifest = colour_manifest(variant, model_bytes, input_size, task=task, label_maps=maps)
        paths[variant] = write_bundle(out_dir / f"{variant}.tflite", model_bytes=model_bytes,
                                      manifest=manifest, **text)
    return paths


def build_dynamic_colour_bundle(path: Path) -> Path:
    """A dynamic-range colour bundle (the op image tower, int8 weights, float activations).

    Its ``FULLY_CONNECTED`` v12 is what tflite-runtime 2.14, the 32-bit Pi's runtime,
    cannot load; it still answers the colour labels (badly), so a benchmark measures it.
    """
    tf, _ = tensorflow()
    model_bytes = to_tflite(op_image_model(tf, EMBEDDING_DIM), "dynamic")
    text = colour_text_parts()
    text["label_embeddings"] = np.eye(len(LABELS), EMBEDDING_DIM, dtype=np.float32)
    return write_bundle(path, model_bytes=model_bytes, manifest=colour_manifest("dynamic", model_bytes,
                        task="single"), **text)


def repack(source: Path, target: Path, model_bytes=None, label_embeddings=None, reference_embeddings=None,
           **changes) -> Path:
    """Re-packs ``source`` into ``target`` with parts or manifest fields replaced (no TensorFlow).

    Its reference images are kept unless ``reference_embeddings`` replaces them.
    """
    bundle = read_bundle(source)
    return write_bundle(
        target,
        model_bytes=bundle.model_bytes if model_bytes is None else model_bytes,
        manifest=replace(bundle.manifest, **changes),
        tokenizer=bundle.tokenizer,
        label_embeddings=bundle.label_embeddings if label_embeddings is None else label_embeddings,
        text_encoder_bytes=bundle.text_encoder_bytes,
        reference_embeddings=bundle.reference_embeddings if reference_embeddings is None else reference_embeddings,
    )


def hanging_model_bytes(input_size=INPUT_SIZE, iterations: int = 2_000_000_000) -> bytes:
    """A float model with a ``WHILE`` loop that runs 0 times on an all-zero input and
    ``iterations`` times on any other: it passes every load-time check (graph check, the
    zero-input load probe) and then hangs on the first real frame (2e9 steps: minutes).

    Its output is a ``[1, EMBEDDING_DIM]`` embedding, so the colour bundles' manifest fits.
    """
    tf, _ = tensorflow()

    @tf.function(input_signature=[tf.TensorSpec((1, *input_size, 3), tf.float32)])
    def model(pixels):
        # The trip count depends on the input, so the converter cannot fold the loop away.
        count = tf.cast(tf.reduce_max(pixels) > 0.0, tf.int32) * iterations
        steps = tf.while_loop(lambda i: i < count, lambda i: (i + 1,), (tf.constant(0),))[0]
        colour = tf.reduce_mean(pixels, axis=[1, 2]) + tf.cast(steps, tf.float32) * 1e-30
        return tf.math.l2_normalize(tf.concat([colour, tf.ones((1, EMBEDDING_DIM - 3))], -1), -1)

    converter = tf.lite.TFLiteConverter.from_concrete_functions([model.get_concrete_function()], model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return converter.convert()


def build_hanging_bundle(source: Path, target: Path) -> Path:
    """``source`` (an fp32 colour bundle) re-packed with :func:`hanging_model_bytes`."""
    return repack(source, target, model_bytes=hanging_model_bytes())


def hand_scores(path: Path, images: np.ndarray):
    """Scores from a bare LiteRT interpreter, not the runtime: RGB images resized and cast by
    hand, output dequantized, then the shared scorer. Returns ``(scores, manifest)``."""
    import cv2
    from ai_edge_litert.interpreter import Interpreter

    from fuselite.scoring import label_probabilities

    bundle = read_bundle(path)
    interpreter = Interpreter(model_content=bundle.model_bytes, num_threads=1)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    size = tuple(int(s) for s in inp["shape"][1:3])
    scores = []
    for image in images:
        pixels = image if image.shape[:2] == size else cv2.resize(image, size[::-1], interpolation=cv2.INTER_AREA)
        interpreter.set_tensor(inp["index"], pixels[None].astype(inp["dtype"]))
        interpreter.invoke()
        embedding = interpreter.get_tensor(out["index"]).astype(np.float32)
        scale, zero_point = out["quantization"]
        if scale:
            embedding = (embedding - zero_point) * scale
        scores.append(label_probabilities(embedding, bundle.label_embeddings,
                                          bundle.manifest.logit_scale, bundle.manifest.logit_bias)[0])
    return np.array(scores), bundle.manifest


# --- op bundles ------------------------------------------------------------------------


def op_image_model(tf, dim=OP_EMBEDDING_DIM):
    """Strided conv, depthwise conv, two dense layers: the real image tower's ops, tiny."""
    keras = tf.keras
    tf.random.set_seed(0)
    inputs = keras.Input((*INPUT_SIZE, 3), batch_size=1, dtype="float32")
    x = keras.layers.Rescaling(1 / 127.5, -1.0)(inputs)
    x = keras.layers.Conv2D(32, 3, strides=2, activation="relu")(x)
    x = keras.layers.DepthwiseConv2D(3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    # 32 x 64 = 2048 weights: above the 1024 below which dynamic-range quantization skips a layer
    x = keras.layers.Dense(64, activation="relu")(x)
    outputs = keras.layers.UnitNormalization()(keras.layers.Dense(dim)(x))
    return keras.Model(inputs, outputs)


def op_text_model(tf, max_length: int, vocab_size: int):
    """Embedding bag and two dense layers: the real text tower's ops, tiny."""
    keras = tf.keras
    tf.random.set_seed(1)
    inputs = keras.Input((max_length,), batch_size=1, dtype="int32")
    x = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(vocab_size, 32)(inputs))
    x = keras.layers.Dense(64, activation="relu")(x)
    outputs = keras.layers.UnitNormalization()(keras.layers.Dense(OP_EMBEDDING_DIM)(x))
    return keras.Model(inputs, outputs)


def op_bundle_parts(variant: str) -> dict:
    """The ``write_bundle`` keyword arguments of an op bundle of ``variant``.

    ``int8`` takes uint8 pixels and gives int8 embeddings; its text tower keeps int32 ids.
    """
    if variant not in OP_VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known: {', '.join(OP_VARIANTS)}")
    tf, _ = tensorflow()
    tokenizer = Tokenizer.fit(OP_LABELS, max_length=6)
    rng = np.random.default_rng(0)

    def images():
        for _ in range(16):
            yield [rng.integers(0, 256, (1, *INPUT_SIZE, 3)).astype(np.float32)]

    def token_ids():
        for label in OP_LABELS:
            yield [np.array([tokenizer.encode(label)], dtype=np.int32)]

    int8 = variant == "int8"
    image_bytes = to_tflite(op_image_model(tf), variant if variant != "fp32" else None, images,
                            "uint8" if int8 else None, "int8" if int8 else None)
    text_model = op_text_model(tf, tokenizer.max_length, tokenizer.vocab_size)
    text_bytes = to_tflite(text_model, variant if variant != "fp32" else None, token_ids)
    embeddings = np.stack([text_model(np.array([tokenizer.encode(t)]))[0].numpy() for t in OP_LABELS])
    _, input_quant, output_quant = io_details(image_bytes)
    manifest = Manifest(
        variant=variant, task="single", labels=OP_LABELS, thresholds=(0.5,) * len(OP_LABELS),
        default_threshold=0.5, embedding_dim=OP_EMBEDDING_DIM, logit_scale=10.0, logit_bias=-5.0,
        preprocessing=Preprocessing(input_size=INPUT_SIZE, input_dtype="uint8" if int8 else "float32",
                                    input_quant=input_quant, output_quant=output_quant),
    )
    return {"model_bytes": image_bytes, "manifest": manifest, "tokenizer": tokenizer,
            "label_embeddings": embeddings.astype(np.float32), "text_encoder_bytes": text_bytes}


def build_op_bundles(out_dir: Path, variants=OP_VARIANTS, suffix=".fuselite") -> dict[str, Path]:
    """Writes ``tiny-<variant><suffix>`` for each of ``variants``; returns their paths."""
    return {v: write_bundle(Path(out_dir) / f"tiny-{v}{suffix}", **op_bundle_parts(v)) for v in variants}


def main(argv: list[str] | None = None) -> int:
    """Writes colour or op bundles to a folder and prints their paths."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    kinds = parser.add_subparsers(dest="kind", required=True)
    colour = kinds.add_parser("colour", help="colour bundles (fp32, int8, int8-signed-io)")
    colour.add_argument("out_dir", type=Path)
    colour.add_argument("--size", type=int, default=INPUT_SIZE[0], help="input side in pixels")
    colour.add_argument("--width", type=int, default=0, help="filters of four extra conv layers (slower)")
    ops = kinds.add_parser("ops", help="op bundles tiny-<variant>.tflite")
    ops.add_argument("--out-dir", type=Path, required=True)
    ops.add_argument("variants", nargs="+", choices=OP_VARIANTS)
    args = parser.parse_args(argv)
    if args.kind == "colour":
        paths = build_colour_bundles(args.out_dir, input_size=(args.size, args.size), width=args.width)
    else:
        paths = build_op_bundles(args.out_dir, args.variants, suffix=".tflite")
    for name, path in paths.items():
        print(name, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
