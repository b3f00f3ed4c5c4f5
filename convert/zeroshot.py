"""``fuselite convert --pretrained efficientnet-lite0``: a bundle that annotates with no training.

The image model is the backbone's own ImageNet classifier, quantized to int8; it
outputs the 1000 class logits and the board takes their softmax in float32.  Labels are words, not classes: the bundle
carries a concept index (:mod:`fuselite.concepts`, built from WordNet) that maps
each ImageNet class name and synonym, and every broader WordNet word above them
("dog", "animal", "vehicle", "food", "musical instrument"), to the classes it
covers.  On the board a typed label becomes a multi-hot row over the 1000
classes, so the shared scorer's dot product is the summed probability of those
classes, and ``sigmoid(scale * sum + bias)`` turns it into the label's score:
0.5 where the classes under a word hold :data:`HALF_SCORE_MASS` of the
probability.  No backbone-specific code runs on the board.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np

from fuselite import __version__
from fuselite.bundle import Manifest, Preprocessing, pack_bundle, read_bundle
from fuselite.errors import UserError
from fuselite.files import write_atomic

log = logging.getLogger(__name__)

# Labels every zero-shot bundle scores when the user types none.
DEFAULT_LABELS = (
    "animal", "bird", "cat", "dog", "fish", "insect", "vehicle", "boat", "aircraft", "food",
    "fruit", "furniture", "musical instrument", "tool", "container", "clothing", "building",
    "electronic equipment", "sports equipment", "plant",
)
# sigmoid(SCORE_SCALE * (mass - HALF_SCORE_MASS)): a label scores 0.5 when the classes
# under it hold a quarter of the probability, 0.92 at a half, 0.08 at none.
SCORE_SCALE = 10.0
HALF_SCORE_MASS = 0.25
DEFAULT_THRESHOLD = 0.5
CALIBRATION_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
MAX_CALIBRATION_IMAGES = 64


def zero_shot_filename(backbone: str) -> str:
    """``imagenet-lite0.tflite`` for ``efficientnet-lite0``."""
    return f"imagenet-{backbone.removeprefix('efficientnet-')}.tflite"


def build_zero_shot_bundle(backbone: str, out_dir: Path, calibration_dir: Path | None = None,
                           num_threads: int = 2) -> Path:
    """Writes the int8 zero-shot bundle of ``backbone`` into ``out_dir``; returns its path."""
    from fuselite.convert.concepts_build import concept_index_for_imagenet
    from fuselite.convert.tflite import convert_image_model
    from fuselite.convert.variants import get_variant

    size = _check_backbone(backbone)
    classifier = imagenet_classifier(backbone, size)
    calibration = calibration_images(size, calibration_dir)
    log.info("converting the %s ImageNet classifier to int8 (%d calibration images)", backbone, len(calibration))
    model_bytes = convert_image_model(classifier, get_variant("int8"), calibration)
    index = concept_index_for_imagenet()
    labels = index.label_matrix(DEFAULT_LABELS)
    checks = calibration_checks(classifier, model_bytes, calibration, labels, num_threads)
    manifest = _manifest(backbone, size, model_bytes, len(calibration), checks)
    data = pack_bundle(model_bytes=model_bytes, manifest=manifest, concepts=index, label_embeddings=labels)
    path = Path(out_dir) / zero_shot_filename(backbone)
    write_atomic(path, data, mode=0o644)
    read_bundle(path)  # what the board does first: fails loudly if anything is off
    return path


def _check_backbone(backbone: str) -> int:
    """The input size of a backbone that has an ImageNet head with offline weights."""
    from fuselite.train.backbones import get_backbone, pretrained_weights_path

    spec = get_backbone(backbone)
    if spec.family != "efficientnet-lite":
        raise UserError(f"--pretrained {backbone}: zero-shot bundles need an ImageNet classifier with "
                        "offline weights: efficientnet-lite0, efficientnet-lite1 or efficientnet-lite2")
    pretrained_weights_path(backbone)  # UserError naming the package to install
    return min(spec.default_input_size, 224)


def imagenet_classifier(backbone: str, size: int):
    """The backbone's ImageNet classifier on uint8 pixels, giving class logits (one flat graph).

    The softmax is left to the board (the manifest's ``output_activation``): in int8
    it would round every class probability to 1/256.
    """
    from fuselite.train.backbones.efficientnet_lite import efficientnet_lite_classifier
    from fuselite.train.backend import keras

    pixels = keras.Input((size, size, 3), dtype="uint8", name="image")
    variant = backbone.removeprefix("efficientnet-")
    model = efficientnet_lite_classifier(variant, size, weights="imagenet", input_tensor=pixels)
    softmax_layer = model.get_layer("predictions")
    logits = keras.layers.Dense(softmax_layer.units, name="logits")(model.get_layer("pool").output)
    classifier = keras.Model(pixels, logits, name=f"{backbone}_imagenet")
    classifier.get_layer("logits").set_weights(softmax_layer.get_weights())
    return classifier


def calibration_images(size: int, folder: Path | None = None) -> np.ndarray:
    """uint8 RGB ``[N, size, size, 3]`` for int8 calibration: real photos, and their mirrors.

    From ``folder`` (any images), else the photos scikit-image ships in its wheel.
    """
    folder = Path(folder) if folder is not None else _skimage_photos()
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in CALIBRATION_SUFFIXES)
    images = [image for image in (_read_square(p, size) for p in paths[:MAX_CALIBRATION_IMAGES // 2])
              if image is not None]
    if len(images) < 4:
        raise UserError(f"--calibration {folder}: found {len(images)} readable images; give a folder "
                        "of at least 4 photos like those the camera will see")
    return np.stack(images + [image[:, ::-1] for image in images])


def _skimage_photos() -> Path:
    """scikit-image's bundled photo folder (a cat, a coffee cup, a rocket, an astronaut...)."""
    try:
        import skimage
    except ImportError:
        raise UserError("no calibration photos: pass --calibration DIR (a folder of photos) or "
                        "pip install scikit-image") from None
    return Path(skimage.__file__).parent / "data"


def _read_square(path: Path, size: int) -> np.ndarray | None:
    """An image's centre square, resized to ``size``, as RGB (None if unreadable or grey)."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None or min(image.shape[:2]) < 32:
        return None
    side = min(image.shape[:2])
    top, left = (image.shape[0] - side) // 2, (image.shape[1] - side) // 2
    square = image[top:top + side, left:left + side]
    return cv2.cvtColor(cv2.resize(square, (size, size), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)


def calibration_checks(classifier, model_bytes: bytes, images: np.ndarray, label_matrix: np.ndarray,
                       num_threads: int) -> dict:
    """Keras against the bundle on ``images``, each run once: how often the top ImageNet
    class is the same, and the mean absolute difference of the labels' summed probabilities."""
    from fuselite.convert.numerics import tflite_embeddings
    from fuselite.scoring import activate

    keras_logits = classifier.predict(images, batch_size=16, verbose=0)
    tflite_logits = tflite_embeddings(model_bytes, images, num_threads)
    mass_error = (activate(keras_logits, "softmax") - activate(tflite_logits, "softmax")) @ label_matrix.T
    return {
        "calibration_top1_agreement_with_keras":
            round(float(np.mean(keras_logits.argmax(axis=1) == tflite_logits.argmax(axis=1))), 4),
        "calibration_label_mass_error": round(float(np.mean(np.abs(mass_error))), 4),
    }


def _manifest(backbone: str, size: int, model_bytes: bytes, calibration: int, checks: dict) -> Manifest:
    """The manifest of a zero-shot bundle: concept labels, the summed-probability scorer."""
    from fuselite.convert import modelinfo, numerics
    from fuselite.train.backbones import get_backbone
    from fuselite.train.backend import tf

    io = numerics.io_details(model_bytes)
    spec = get_backbone(backbone)
    ops = modelinfo.model_ops(model_bytes)
    problems = modelinfo.runtime_problems(ops)
    return Manifest(
        variant="int8", task="multi", labels=DEFAULT_LABELS,
        thresholds=(DEFAULT_THRESHOLD,) * len(DEFAULT_LABELS), default_threshold=DEFAULT_THRESHOLD,
        embedding_dim=1000, logit_scale=SCORE_SCALE, logit_bias=-SCORE_SCALE * HALF_SCORE_MASS,
        preprocessing=Preprocessing(
            input_size=(size, size), color_order="RGB", resize="area", input_dtype=io["input_dtype"],
            normalization=(1 / 128, -127 / 128), input_quant=io["input_quant"],
            output_quant=io["output_quant"]),
        label_source="concepts", output_activation="softmax", numerics=checks,
        provenance={
            "backbone": backbone, "weights": spec.weights_source, "license": spec.license,
            "labels": "ImageNet-1k classes and their WordNet hypernyms (fuselite.concepts)",
            "score": f"sigmoid({SCORE_SCALE:g} * (summed class probability - {HALF_SCORE_MASS:g}))",
            "fuselite": __version__, "tensorflow": tf.__version__,
            "quantization": {"mode": "int8", "per_channel": True}, "calibration_samples": calibration,
            "ops": modelinfo.op_strings(ops),
            "runtimes": {key: not found for key, found in problems.items()},
            "runtime_problems": {key: found for key, found in problems.items() if found},
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
    )
