"""Plain TFLite image classifiers, the kind ``fuselite import`` wraps (TensorFlow only here).

A Keras MobileNetV2 (alpha 0.35, 96 px, random weights, five classes) converted the ways
users meet such models:

* ``float.tflite``: fp32, float input in [-1, 1], a softmax head, no metadata;
* ``float-meta.tflite``: the same with TFLite Metadata (mean 127.5, std 127.5, labels.txt);
* ``int8.tflite``: full-integer int8 with uint8 input and output, softmax, no metadata;
* ``int8-meta.tflite``: the same with metadata;
* ``int8-logits.tflite``: full-integer int8 with int8 input and output and no softmax
  (logits), no metadata.

Next to them: ``labels.txt``, ``frames.npy`` (RGB uint8 test images at the input size)
and ``reference.npy`` (the Keras model's class probabilities for them, pixels mapped
to [-1, 1]), so TensorFlow-free tests can check what the board computes.

The metadata is written the way TFLite Support's metadata writer writes it, without
that package: a ``ModelMetadata`` flatbuffer (identifier ``M001``) in a new model
buffer that a ``Model.metadata`` entry named ``TFLITE_METADATA`` points at, and a zip
of the associated files appended after the model.  Run as a script to write the
files to a folder::

    python tests/support/classifiers.py OUT_DIR
"""

from __future__ import annotations

import io
import sys
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from support.bundles import tensorflow, to_tflite

CLASSES = ("cat", "dog", "car", "coffee cup", "tree")
SIZE = 96
MEAN = STD = 127.5
LABELS_FILE = "labels.txt"
FRAMES = 12
HEAD_SPREAD = 4.0  # random head weights this large give confident, varied class probabilities


def build_classifiers(out_dir: Path) -> dict[str, Path]:
    """Writes every model and the reference files into ``out_dir``; returns name -> path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    frames = sample_frames()
    logits_model, softmax_model = keras_mobilenet(frames)
    calibration = _calibration(frames)
    labels = "\n".join(CLASSES) + "\n"
    models = {
        "float": to_tflite(softmax_model),
        "int8": to_tflite(softmax_model, "int8", calibration, "uint8", "uint8"),
        "int8-logits": to_tflite(logits_model, "int8", calibration, "int8", "int8"),
    }
    models["float-meta"] = add_metadata(models["float"], labels, MEAN, STD)
    models["int8-meta"] = add_metadata(models["int8"], labels, MEAN, STD)
    paths = {name: out_dir / f"{name}.tflite" for name in models}
    for name, data in models.items():
        paths[name].write_bytes(data)
    paths["labels"] = out_dir / LABELS_FILE
    paths["labels"].write_text(labels)
    paths["frames"] = out_dir / "frames.npy"
    np.save(paths["frames"], frames)
    paths["reference"] = out_dir / "reference.npy"
    np.save(paths["reference"], softmax_model.predict(_normalised(frames), verbose=0).astype(np.float32))
    return paths


def keras_mobilenet(frames: np.ndarray):
    """``(logits model, softmax model)``: one MobileNetV2 body with a random Dense head.

    At random initial weights MobileNetV2's pooled features are about 1e-11 for every
    image, so each batch norm's statistics are set from ``frames`` (layer by layer) and
    the head standardises the features: its class probabilities then differ from image
    to image, as a trained model's do.
    """
    _, keras = tensorflow()
    keras.utils.set_random_seed(0)
    body = keras.applications.MobileNetV2(input_shape=(SIZE, SIZE, 3), alpha=0.35, include_top=False,
                                          weights=None, pooling="avg")
    images = _normalised(frames)
    _fit_batch_norms(keras, body, images)
    features = body(images).numpy()
    mean, std = features.mean(axis=0), features.std(axis=0) + 1e-3
    rng = np.random.default_rng(0)
    kernel = rng.normal(0, HEAD_SPREAD / np.sqrt(features.shape[1]), (features.shape[1], len(CLASSES)))
    dense = keras.layers.Dense(len(CLASSES), name="logits")
    logits = dense(body.output)
    dense.set_weights([(kernel / std[:, None]).astype(np.float32), (-(mean / std) @ kernel).astype(np.float32)])
    probabilities = keras.layers.Softmax(name="probabilities")(logits)
    return keras.Model(body.input, logits), keras.Model(body.input, probabilities)


def _fit_batch_norms(keras, model, images: np.ndarray) -> None:
    """Sets each batch norm's moving mean and variance to those of its input on ``images``."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            inputs = keras.Model(model.input, layer.input)(images).numpy()
            gamma, beta, _, _ = layer.get_weights()
            layer.set_weights([gamma, beta, inputs.mean(axis=(0, 1, 2)), inputs.var(axis=(0, 1, 2)) + 1e-3])


def sample_frames() -> np.ndarray:
    """``FRAMES`` RGB uint8 images: colour gradients and blocks, different enough to score apart."""
    rng = np.random.default_rng(1)
    ramp = np.linspace(0, 1, SIZE, dtype=np.float32)
    frames = []
    for _ in range(FRAMES):
        low, high = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        image = low + (high - low) * ramp[None, :, None] * ramp[:, None, None] ** rng.uniform(0.2, 3)
        top, left = rng.integers(0, SIZE // 2, 2)
        image[top:top + SIZE // 3, left:left + SIZE // 3] = rng.uniform(0, 255, 3)
        frames.append(np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8))
    return np.stack(frames)


def _normalised(frames: np.ndarray) -> np.ndarray:
    return (frames.astype(np.float32) - MEAN) / STD


def _calibration(frames: np.ndarray):
    """Calibration inputs in [-1, 1] (the test frames and their mirrors, plus black and white)."""
    extremes = np.stack([np.zeros_like(frames[0]), np.full_like(frames[0], 255)])
    images = _normalised(np.concatenate([frames, frames[:, :, ::-1], extremes]))
    return lambda: ([image[None]] for image in images)


# --- TFLite Metadata, written by hand ---------------------------------------------------------


def add_metadata(model_bytes: bytes, labels_text: str, mean: float | list[float],
                 std: float | list[float], name: str = "test classifier") -> bytes:
    """The model with TFLite Metadata: normalisation, and ``labels.txt`` in an appended zip."""
    import flatbuffers
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(model_bytes, 0)
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(metadata_flatbuffer(mean, std, name), np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = "TFLITE_METADATA", len(model.buffers) - 1
    model.metadata = [*(model.metadata or []), entry]
    builder = flatbuffers.Builder(len(model_bytes) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(LABELS_FILE, labels_text)
    return bytes(builder.Output()) + archive.getvalue()


def metadata_flatbuffer(mean, std, name: str) -> bytes:
    """A ``ModelMetadata``: input NormalizationOptions, output TENSOR_AXIS_LABELS file."""
    import flatbuffers

    b = flatbuffers.Builder(512)
    label_file = _table(b, 4, strings={0: LABELS_FILE}, bytes_={2: 2})  # AssociatedFile, type 2
    normalization = _table(b, 2, vectors={0: _floats(b, mean), 1: _floats(b, std)})
    unit = _table(b, 2, ubytes={0: 1}, tables={1: normalization})  # ProcessUnit: NormalizationOptions
    image = _table(b, 7, strings={0: "image"}, vectors={4: _offsets(b, [unit])})  # TensorMetadata
    scores = _table(b, 7, strings={0: "probability"}, vectors={6: _offsets(b, [label_file])})
    subgraph = _table(b, 5, vectors={2: _offsets(b, [image]), 3: _offsets(b, [scores])})
    root = _table(b, 8, strings={0: name}, vectors={3: _offsets(b, [subgraph])})
    b.Finish(root, file_identifier=b"M001")
    return bytes(b.Output())


def _table(b, fields: int, strings=None, vectors=None, tables=None, ubytes=None, bytes_=None) -> int:
    """One table; strings are created before it starts (flatbuffers cannot nest them)."""
    made = {slot: b.CreateString(text) for slot, text in (strings or {}).items()}
    b.StartObject(fields)
    for slot, offset in {**made, **(vectors or {}), **(tables or {})}.items():
        b.PrependUOffsetTRelativeSlot(slot, offset, 0)
    for slot, value in (ubytes or {}).items():
        b.PrependUint8Slot(slot, value, 0)
    for slot, value in (bytes_ or {}).items():
        b.PrependInt8Slot(slot, value, 0)
    return b.EndObject()


def _floats(b, values) -> int:
    values = [values] if isinstance(values, (int, float)) else list(values)
    b.StartVector(4, len(values), 4)
    for value in reversed(values):
        b.PrependFloat32(float(value))
    return b.EndVector()


def _offsets(b, offsets: list[int]) -> int:
    b.StartVector(4, len(offsets), 4)
    for offset in reversed(offsets):
        b.PrependUOffsetTRelative(offset)
    return b.EndVector()


if __name__ == "__main__":
    for key, path in build_classifiers(Path(sys.argv[1])).items():
        print(f"{key:12} {path}")
