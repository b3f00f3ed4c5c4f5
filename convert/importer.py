"""``fuselite import MODEL.tflite --out BUNDLE``: any TFLite image classifier as a fixed-label bundle.

A classifier fuselite did not train (Model Maker, TF Hub, a Keras model converted by
hand) becomes a schema-2 *concepts* bundle, the kind the zero-shot bundle is: the
model is kept byte for byte, each label covers its own class only (identity label
embeddings and a concept index of the labels themselves), and there is no text
tower, so only those labels can be asked for.  ``run``, ``bench`` and ``devices``
then treat it like any other bundle.

What is read from the file (:mod:`fuselite.convert.classifier_model`):

* input size, dtype and quantization, and output quantization, from its tensors;
* whether the output is probabilities (last op ``SOFTMAX``; ``LOGISTIC`` for a
  multi-label model) or logits (anything else: the board takes their softmax,
  ``output_activation: "softmax"``);
* from TFLite Metadata when present: the label file, and ``NormalizationOptions`` for a
  float input (a quantized input takes pixels as its integer values, as MediaPipe does).

A label's score is ``sigmoid(10 * (p - 0.5))`` of its class probability ``p`` (0.5 at
p = 0.5), and ``--threshold`` is a class probability, stored as that score.

This module imports no TensorFlow: it runs on a board as well as on a host.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from fuselite import __version__
from fuselite.bundle import (
    MAX_BUNDLE_BYTES,
    MAX_LABEL_CHARS,
    MAX_LABELS,
    BundleError,
    Manifest,
    Preprocessing,
    pack_bundle,
    read_bundle,
    read_manifest,
)
from fuselite.concepts import ConceptIndex, ConceptIndexError, normalise_label
from fuselite.convert.classifier_model import MAX_LABEL_FILE_BYTES, ClassifierModel, read_classifier
from fuselite.errors import UserError
from fuselite.files import write_atomic
from fuselite.flatbuffer import ModelFormatError

log = logging.getLogger(__name__)

SCORE_SCALE = 10.0  # score = sigmoid(SCORE_SCALE * (p - 0.5)): 0.5 at p = 0.5, 0.007 at 0, 0.993 at 1
DEFAULT_THRESHOLD = 0.5  # a class probability: with softmax, more than all other classes together
PROBABILITY_OPS = {"SOFTMAX": "single", "LOGISTIC": "multi"}
INPUT_TYPES = ("uint8", "int8", "float32")
OUTPUT_TYPES = ("uint8", "int8", "float32")
INPUT_SIZE_RANGE = (8, 1024)


@dataclass(frozen=True)
class ImportOptions:
    """What ``fuselite import`` was asked to do.

    Attributes:
        model: The classifier's ``.tflite`` file.
        out: Where the bundle goes.
        labels: A label file (one label per line, in output order); else the metadata's.
        threshold: Class probability at which a label is reported.
        mean: Input mean (with ``std``: ``(pixel - mean) / std``); else the metadata's.
        std: Input standard deviation.
        resize: How frames are resized on the board (``area`` or ``linear``).
    """

    model: Path
    out: Path
    labels: Path | None = None
    threshold: float = DEFAULT_THRESHOLD
    mean: float | None = None
    std: float | None = None
    resize: str = "area"


@dataclass(frozen=True)
class ImportResult:
    """What was written: the bundle's path and its manifest (as read back from the file)."""

    path: Path
    manifest: Manifest


def import_classifier(options: ImportOptions) -> ImportResult:
    """Wraps the classifier as a bundle at ``options.out``; raises :class:`UserError` with one line."""
    _check_options(options)
    data = _read_model_file(options.model)
    try:
        model = read_classifier(data)
    except ModelFormatError as exc:
        raise UserError(f"{options.model}: not a TFLite classifier fuselite can read ({exc})") from None
    _check_tensors(options.model, model)
    labels, labels_from = _labels(options, model)
    normalization, normalization_from = _normalization(options, model)
    manifest = _manifest(options, model, data, labels, labels_from, normalization, normalization_from)
    bundle = pack_bundle(model_bytes=model.model_bytes, manifest=manifest,
                         label_embeddings=np.eye(len(labels), dtype=np.float32),
                         concepts=_concept_index(labels))
    _check_loads(options.model, model)
    write_atomic(options.out, bundle, mode=0o644)
    return ImportResult(options.out, read_bundle(options.out).manifest)  # what the board does first


def _check_options(options: ImportOptions) -> None:
    if not 0.0 <= options.threshold <= 1.0:
        raise UserError(f"--threshold {options.threshold} is not a class probability from 0 to 1")
    if (options.mean is None) != (options.std is None):
        raise UserError("give --mean and --std together (the input is (pixel - mean) / std)")
    if options.std is not None and not (math.isfinite(options.std) and options.std > 0
                                        and math.isfinite(options.mean)):
        raise UserError(f"--std {options.std} must be a positive number and --mean a finite one")
    if options.out.is_dir():
        raise UserError(f"--out {options.out} is a folder; give the bundle's file name")
    if options.out.resolve() == options.model.resolve():
        raise UserError("--out is the model itself; give another file name")


def _read_model_file(path: Path) -> bytes:
    try:
        size = path.stat().st_size
        if size > MAX_BUNDLE_BYTES:
            raise UserError(f"{path}: {size} bytes is larger than any bundle ({MAX_BUNDLE_BYTES})")
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot read the model ({exc.strerror})") from None
    try:
        read_manifest(path)
    except BundleError:
        return data
    raise UserError(f"{path} is already a fuselite bundle; run it directly")


def _check_tensors(path: Path, model: ClassifierModel) -> None:
    """The shapes and types the runtime can feed and score, else one line saying why not."""
    shape, low_high = model.input.shape, INPUT_SIZE_RANGE
    if len(shape) != 4 or shape[0] != 1 or shape[3] != 3 or model.input.dtype not in INPUT_TYPES:
        raise UserError(f"{path}: the input is {model.input.dtype} {list(shape)}; fuselite feeds one RGB "
                        f"image as [1, height, width, 3] in {', '.join(INPUT_TYPES)}")
    if not all(low_high[0] <= side <= low_high[1] for side in shape[1:3]):
        raise UserError(f"{path}: input size {shape[1]}x{shape[2]} is outside {low_high[0]}..{low_high[1]}")
    out = model.output
    if len(out.shape) != 2 or out.shape[0] != 1 or out.dtype not in OUTPUT_TYPES:
        raise UserError(f"{path}: the output is {out.dtype} {list(out.shape)}; a classifier gives one "
                        f"score per class as [1, classes] in {', '.join(OUTPUT_TYPES)}")
    if not 1 <= out.shape[1] <= MAX_LABELS:
        raise UserError(f"{path}: {out.shape[1]} classes; a bundle holds 1 to {MAX_LABELS}")
    for name, tensor in (("input", model.input), ("output", out)):
        if tensor.dtype != "float32" and tensor.quant is None:
            raise UserError(f"{path}: the {name} is {tensor.dtype} without one scale and zero point")


# --- labels --------------------------------------------------------------------------------


def _labels(options: ImportOptions, model: ClassifierModel) -> tuple[tuple[str, ...], str]:
    """The labels, in output order, and where they came from."""
    classes = model.output.shape[1]
    if options.labels is not None:
        return parse_labels(_read_labels_file(options.labels), str(options.labels), classes), \
            f"--labels {options.labels.name}"
    meta = model.metadata
    if meta.labels_file and meta.labels_text:
        source = f"{meta.labels_file} in the model's metadata"
        return parse_labels(meta.labels_text, source, classes), source
    missing = (f"its metadata names {meta.labels_file} but the file is not attached" if meta.labels_file
               else "it has no label file in TFLite Metadata")
    raise UserError(f"{options.model}: {missing}; give --labels FILE with its {classes} class names, "
                    "one per line, in output order")


def _read_labels_file(path: Path) -> str:
    try:
        if path.stat().st_size > MAX_LABEL_FILE_BYTES:
            raise UserError(f"--labels {path}: larger than {MAX_LABEL_FILE_BYTES} bytes; one label per line")
        return path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise UserError(f"--labels {path}: cannot read it ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise UserError(f"--labels {path}: not UTF-8 text; save it as UTF-8, one label per line") from None


def parse_labels(text: str, source: str, classes: int) -> tuple[str, ...]:
    """One label per line, in output order, each unique (a repeat gets `` (2)``, `` (3)``).

    Trailing blank lines are dropped; a blank line inside would shift every label
    after it onto the wrong class, so it is refused with its line number.
    """
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    for number, line in enumerate(lines, 1):
        if not line or not normalise_label(line):
            raise UserError(f"{source}: line {number} holds no label; give one label per line")
        if len(line) > MAX_LABEL_CHARS:
            raise UserError(f"{source}: line {number} is over {MAX_LABEL_CHARS} characters")
    if len(lines) != classes:
        raise UserError(f"{source} has {len(lines)} labels but the model outputs {classes} classes; "
                        "give one label per output class, in order")
    return _unique(lines)


def _unique(labels: list[str]) -> tuple[str, ...]:
    """Repeated labels (ImageNet's two "crane"s) get a number, so each names one class."""
    seen, unique = set(), []
    for label in labels:
        name, count = label, 1
        while name in seen:
            count += 1
            name = f"{label} ({count})"
        if name != label:
            log.warning("label %r repeats; class %d is named %r", label, len(unique), name)
        seen.add(name)
        unique.append(name)
    return tuple(unique)


def _concept_index(labels: tuple[str, ...]) -> ConceptIndex:
    """Each label covers its own class; labels written alike ("Crane", "crane") cover both."""
    phrases: dict[str, list[int]] = {}
    for index, label in enumerate(labels):
        phrases.setdefault(normalise_label(label), []).append(index)
    try:
        return ConceptIndex({p: tuple(sorted(set(c))) for p, c in phrases.items()}, tuple(labels))
    except ConceptIndexError as exc:
        raise UserError(f"the labels cannot be looked up ({exc}); reword that label") from None


# --- input normalisation ---------------------------------------------------------------------


def _normalization(options: ImportOptions, model: ClassifierModel) -> tuple[tuple[float, float], str]:
    """``(scale, offset)`` with model input ``pixel * scale + offset`` (before quantizing), and its source.

    A quantized input takes the pixels as its integer values (uint8 p, int8 p - 128), as
    MediaPipe and the TFLite Task Library feed uint8 inputs: calibration maps the input's
    range onto the integer range.  The metadata's mean and std would mostly say the same,
    but 127.5 puts every pixel on a rounding tie, where a random-weight int8 model was
    seen to flip its top class.  A float input needs the metadata's normalisation (or
    ``--mean``/``--std``, which override everything).
    """
    meta = model.metadata
    if options.mean is not None:
        return _affine(options.mean, options.std), f"--mean {options.mean:g} --std {options.std:g}"
    if model.input.quant is not None:
        scale, zero_point = model.input.quant
        low = -128 if model.input.dtype == "int8" else 0
        note = f"; metadata mean {meta.mean[0]:g} std {meta.std[0]:g} not applied" if meta.mean and meta.std else ""
        return (scale, (low - zero_point) * scale), f"pixels are the {model.input.dtype} input values{note}"
    if meta.mean and meta.std:
        if len(set(meta.mean)) != 1 or len(set(meta.std)) != 1 or min(meta.std) <= 0:
            raise UserError(f"{options.model}: its metadata normalises per channel (mean {list(meta.mean)}, "
                            f"std {list(meta.std)}), which fuselite does not apply yet; give one "
                            "--mean and --std for all channels")
        return _affine(meta.mean[0], meta.std[0]), f"metadata mean {meta.mean[0]:g} std {meta.std[0]:g}"
    raise UserError(f"{options.model}: a float32 input and no normalisation in its metadata; give "
                    "--mean and --std (127.5 and 127.5 for inputs in [-1, 1], 0 and 255 for [0, 1])")


def _affine(mean: float, std: float) -> tuple[float, float]:
    return (1.0 / std, -mean / std)


# --- the manifest ----------------------------------------------------------------------------


def _manifest(options: ImportOptions, model: ClassifierModel, data: bytes, labels: tuple[str, ...],
              labels_from: str, normalization: tuple[float, float], normalization_from: str) -> Manifest:
    """A concepts manifest: identity label embeddings, the probability score, fixed labels."""
    task = PROBABILITY_OPS.get(model.output_op, "single")
    threshold = score_of_probability(options.threshold)
    return Manifest(
        variant=model.variant, task=task, labels=labels, thresholds=(threshold,) * len(labels),
        default_threshold=threshold, embedding_dim=len(labels),
        logit_scale=SCORE_SCALE, logit_bias=-SCORE_SCALE * 0.5,
        preprocessing=Preprocessing(
            input_size=(model.input.shape[1], model.input.shape[2]), color_order="RGB",
            resize=options.resize, input_dtype=model.input.dtype, normalization=normalization,
            input_quant=model.input.quant, output_quant=model.output.quant, normalize_on_board=True),
        label_source="concepts",
        output_activation="none" if model.output_op in PROBABILITY_OPS else "softmax",
        provenance=_provenance(options, model, data, labels_from, normalization_from),
    )


def score_of_probability(probability: float) -> float:
    """The label score of a class probability: ``sigmoid(10 * (p - 0.5))``."""
    return round(1.0 / (1.0 + math.exp(-SCORE_SCALE * (probability - 0.5))), 6)


def _provenance(options: ImportOptions, model: ClassifierModel, data: bytes, labels_from: str,
                normalization_from: str) -> dict:
    from fuselite.convert import modelinfo

    ops = modelinfo.model_ops(model.model_bytes)
    problems = modelinfo.runtime_problems(ops)
    return {
        "imported": {"file": options.model.name, "sha256": hashlib.sha256(data).hexdigest(),
                     "bytes": len(data), "metadata_name": model.metadata.name},
        "labels": labels_from, "normalization": normalization_from,
        "outputs": ("probabilities" if model.output_op in PROBABILITY_OPS
                    else "logits (the board applies softmax)") + f", last op {model.output_op}",
        "score": f"sigmoid({SCORE_SCALE:g} * (class probability - 0.5)); threshold = probability "
                 f"{options.threshold:g}",
        "fuselite": __version__, "ops": modelinfo.op_strings(ops),
        "runtimes": {key: not found for key, found in problems.items()},
        "runtime_problems": {key: found for key, found in problems.items() if found},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _check_loads(path: Path, model: ClassifierModel) -> None:
    """Loads the model in this host's interpreter once and checks it agrees with what was read."""
    from fuselite.convert.numerics import InterpreterError, io_details

    try:
        details = io_details(model.model_bytes)
    except InterpreterError as exc:
        raise UserError(f"{path}: {exc}") from None
    if details["input_dtype"] != model.input.dtype:
        raise UserError(f"{path}: the interpreter reads a {details['input_dtype']} input, "
                        f"the flatbuffer {model.input.dtype}")


# --- the command line ------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``import`` options; imports no TensorFlow."""
    parser.epilog = ("Labels and input normalisation come from the model's TFLite Metadata when it "
                     "has them; --labels, --mean and --std override it.")
    parser.add_argument("model", type=Path, metavar="MODEL", help="a TFLite image classifier (.tflite)")
    parser.add_argument("--out", type=Path, required=True, metavar="FILE", help="the bundle to write")
    parser.add_argument("--labels", type=Path, metavar="FILE",
                        help="class names, one per line, in output order (default: the model's metadata)")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD, metavar="P",
                        help=f"class probability at which a label is reported (default {DEFAULT_THRESHOLD})")
    parser.add_argument("--mean", type=float, help="input mean: the model takes (pixel - mean) / std")
    parser.add_argument("--std", type=float, help="input standard deviation (with --mean)")
    parser.add_argument("--resize", choices=("area", "linear"), default="area",
                        help="how the board resizes frames (default area)")


def run(args: argparse.Namespace) -> int:
    """Runs ``fuselite import``; prints what the bundle holds."""
    result = import_classifier(ImportOptions(
        model=args.model, out=args.out, labels=args.labels, threshold=args.threshold,
        mean=args.mean, std=args.std, resize=args.resize))
    for line in describe(result.manifest, result.path):
        print(line)
    return 0


def describe(manifest: Manifest, path: Path) -> list[str]:
    """The lines ``fuselite import`` prints about the bundle it wrote."""
    pre, prov = manifest.preprocessing, manifest.provenance
    size = path.stat().st_size
    labels = ", ".join(manifest.labels[:5]) + (", ..." if len(manifest.labels) > 5 else "")
    quant = f" (scale {pre.input_quant[0]:.6g}, zero point {pre.input_quant[1]})" if pre.input_quant else ""
    source = prov["imported"]["file"]
    return [
        f"wrote {path} ({size / 1024:.1f} KiB): {source} as a fixed-label {manifest.variant} bundle",
        f"  labels      {len(manifest.labels)} from {prov['labels']}: {labels}",
        f"  input       {pre.input_size[0]}x{pre.input_size[1]} {pre.input_dtype}{quant}",
        f"  normalised  {prov['normalization']}",
        f"  output      {prov['outputs']}; task {manifest.task}",
        f"  score       {prov['score']}",
    ]
