"""Real, tiny bundles and a colour dataset for the bench tests (TensorFlow only here).

The image tower measures how much a frame's pixels exceed their mean in red, green
or blue; the label embeddings point along those directions plus a "gray" one, so a
red frame scores "red" highest.  ``regional=True`` keeps one embedding per 8x8 cell
(``[1, cells, D]``), like the scenes models.  The dataset holds noisy colour frames
in class folders, a few of them deliberately mislabelled so accuracy is not 100%.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import cv2
import numpy as np

from fuselite.bundle import Manifest, Preprocessing, write_bundle
from fuselite.tokenizer import Tokenizer

INPUT_SIZE = 32
DIM = 8
LABELS = ("red", "green", "blue", "gray")
COLOURS_BGR = {"red": (40, 40, 210), "green": (40, 200, 40), "blue": (210, 60, 40), "gray": (128, 128, 128)}


def _tf():
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf
    import tf_keras

    return tf, tf_keras


def image_model(regional: bool = False):
    """float pixels 0-255 ``[1, 32, 32, 3]`` -> unit embeddings ``[1, 8]`` (or ``[1, 16, 8]``)."""
    _, keras = _tf()
    inputs = keras.Input((INPUT_SIZE, INPUT_SIZE, 3), batch_size=1, dtype="float32")
    x = keras.layers.Rescaling(1 / 255)(inputs)
    colour = keras.layers.Conv2D(3, 1, use_bias=False, activation="relu")
    x = colour(x)
    head = keras.layers.Dense(DIM)
    if regional:
        x = keras.layers.AveragePooling2D(8)(x)
        x = keras.layers.Reshape(((INPUT_SIZE // 8) ** 2, 3))(x)
    else:
        x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.UnitNormalization(axis=-1)(head(x))
    model = keras.Model(inputs, outputs)
    colour.set_weights([(np.full((3, 3), -0.5) + 1.5 * np.eye(3)).reshape(1, 1, 3, 3).astype(np.float32)])
    weights = np.zeros((3, DIM), np.float32)
    weights[:, :3] = np.eye(3)
    bias = np.zeros(DIM, np.float32)
    bias[3] = 0.15  # a frame without a dominant colour points at "gray"
    head.set_weights([weights, bias])
    return model


def text_model(tokenizer: Tokenizer):
    """Token ids -> one direction per colour word -> unit embedding ``[1, 8]``."""
    _, keras = _tf()
    ids = keras.Input((tokenizer.max_length,), batch_size=1, dtype="int32")
    embed = keras.layers.Embedding(tokenizer.vocab_size, DIM)
    outputs = keras.layers.UnitNormalization()(keras.layers.GlobalAveragePooling1D()(embed(ids)))
    table = np.full((tokenizer.vocab_size, DIM), 1e-3, np.float32)
    for direction, word in enumerate(LABELS):
        table[tokenizer.vocab.index(word), direction] = 1.0
    embed.set_weights([table])
    return keras.Model(ids, outputs)


def to_tflite(model, int8: bool = False) -> bytes:
    """fp32, or full int8 with uint8 input and output."""
    tf, _ = _tf()
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if int8:
        def representative():
            rng = np.random.default_rng(0)
            for _ in range(32):
                base = rng.uniform(0, 255, size=(1, 1, 1, 3))
                yield [np.clip(base + rng.normal(0, 20, (1, INPUT_SIZE, INPUT_SIZE, 3)), 0, 255).astype(np.float32)]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return converter.convert()


def _io_quant(model_bytes: bytes):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model_bytes)
    quant = []
    for detail in (interpreter.get_input_details()[0], interpreter.get_output_details()[0]):
        scale, zero_point = detail["quantization"]
        quant.append((float(scale), int(zero_point)) if scale else None)
    return quant


def manifest(variant: str, model_bytes: bytes, task: str = "single", **changes) -> Manifest:
    """The manifest of a test bundle; quantization read back from the model."""
    input_quant, output_quant = _io_quant(model_bytes)
    preprocessing = Preprocessing(
        input_size=(INPUT_SIZE, INPUT_SIZE), input_dtype="uint8" if input_quant else "float32",
        normalization=(1 / 255, 0.0), input_quant=input_quant, output_quant=output_quant,
    )
    fields = {
        "variant": variant, "task": task, "labels": LABELS, "thresholds": (0.5, 0.5, 0.5, 0.6),
        "default_threshold": 0.5, "embedding_dim": DIM, "logit_scale": 10.0, "logit_bias": -5.0,
        "preprocessing": preprocessing, "sparsity": 0.0,
        "provenance": {"builder": "tests/bench/bench_bundles.py"},
    }
    return Manifest(**{**fields, **changes})


def build_bundles(out_dir: Path, regional: bool = False, task: str = "single") -> dict[str, Path]:
    """Writes ``fp32.tflite`` and ``int8.tflite`` into ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    tokenizer = Tokenizer.fit(list(LABELS), max_length=4)
    texts = text_model(tokenizer)
    ids = tokenizer.encode_batch(list(LABELS))
    embeddings = np.concatenate([texts(ids[i : i + 1]).numpy() for i in range(len(LABELS))]).astype(np.float32)
    text_bytes = to_tflite(texts)
    images = image_model(regional)
    paths = {}
    for variant, int8 in (("fp32", False), ("int8", True)):
        model_bytes = to_tflite(images, int8=int8)
        paths[variant] = write_bundle(
            out_dir / f"{variant}.tflite", model_bytes=model_bytes,
            manifest=manifest(variant, model_bytes, task), tokenizer=tokenizer,
            label_embeddings=embeddings, text_encoder_bytes=text_bytes,
        )
    return paths


def write_colour_dataset(root: Path, per_class: int = 8, mislabelled: int = 3, seed: int = 0) -> Path:
    """``root/<colour>/*.png`` noisy 40x40 frames; ``mislabelled`` gray frames sit in the red folder."""
    rng = np.random.default_rng(seed)
    for label, bgr in COLOURS_BGR.items():
        folder = Path(root) / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            _write_frame(folder / f"{i}.png", bgr, rng)
    for i in range(mislabelled):
        _write_frame(Path(root) / "red" / f"wrong-{i}.png", COLOURS_BGR["gray"], rng)
    return Path(root)


def _write_frame(path: Path, bgr, rng: np.random.Generator) -> None:
    frame = np.clip(np.asarray(bgr, np.float32) + rng.normal(0, 25, (40, 40, 3)), 0, 255).astype(np.uint8)
    cv2.imwrite(str(path), frame)


def build_dynamic_bundle(path: Path) -> Path:
    """A dynamic-range bundle (int8 weights, float activations): ``FULLY_CONNECTED`` v12,
    which tflite-runtime 2.14 (the 32-bit Pi's runtime) cannot load."""
    tf, keras = _tf()
    keras.utils.set_random_seed(0)
    inputs = keras.Input((INPUT_SIZE, INPUT_SIZE, 3), batch_size=1, dtype="float32")
    x = keras.layers.Conv2D(32, 3, strides=2, activation="relu")(keras.layers.Rescaling(1 / 255)(inputs))
    x = keras.layers.Dense(64, activation="relu")(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, keras.layers.UnitNormalization()(keras.layers.Dense(DIM)(x)))
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model_bytes = converter.convert()
    tokenizer = Tokenizer.fit(list(LABELS), max_length=4)
    embeddings = np.eye(len(LABELS), DIM, dtype=np.float32)
    return write_bundle(
        path, model_bytes=model_bytes, manifest=manifest("dynamic", model_bytes), tokenizer=tokenizer,
        label_embeddings=embeddings, text_encoder_bytes=to_tflite(text_model(tokenizer)),
    )


def hand_scores(path: Path, images: np.ndarray):
    """Scores from a bare LiteRT interpreter, not the runtime: RGB images resized and cast by
    hand, output dequantized, then the shared scorer. Returns ``(scores, manifest)``."""
    from ai_edge_litert.interpreter import Interpreter

    from fuselite.bundle import label_probabilities, read_bundle

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
