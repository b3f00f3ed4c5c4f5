"""The bundle: the one contract between ``convert`` (host) and ``runtime`` (board).

A bundle is a plain ``.tflite`` flatbuffer followed by a zip archive, the way
MediaPipe model files carry their associated files.  Every TFLite interpreter
loads the flatbuffer and ignores the trailing bytes; Python's ``zipfile`` reads
the zip.  The zip holds:

* ``manifest.json``        - :class:`Manifest`: labels, preprocessing, thresholds,
  scorer, provenance, numeric checks;
* ``tokenizer.json``       - the word tokenizer (:mod:`fuselite.tokenizer`);
* ``label_embeddings.npy`` - float32 ``[len(labels), embedding_dim]``, the text
  tower's embeddings of the default labels, computed in advance;
* ``text_encoder.tflite``  - the text tower, so a board can embed labels the user
  types without the host;
* ``reference_embeddings.npy`` (optional) - int8 ``[images, cells, embedding_dim]``,
  the bundle's own image model's embeddings of up to 128 validation images (each
  image's best-scoring cells), with the scale in the manifest's ``reference``
  (:class:`ReferenceSet`).  The board measures how often a typed label would fire on
  them and raises its threshold when it would fire more often than the trained labels
  allow (:mod:`fuselite.runtime.typed_thresholds`).  Bundles written before it load
  without it, and a runtime that predates it ignores the member and the field.

A *zero-shot* bundle (``label_source == "concepts"``, schema version 2; written by
``fuselite convert --pretrained``) has no tokenizer and no text tower: its image
model outputs ImageNet class probabilities, and ``concepts.json``
(:class:`fuselite.concepts.ConceptIndex`) maps each word a user may type to the
classes it covers.  Its label embeddings are those multi-hot rows, so the same
scorer gives ``sigmoid(logit_scale * summed probability + logit_bias)``.

A *fixed-labels* bundle (``label_source == "fixed"``, schema version 4; written by
``fuselite convert --fixed-labels``) is a trained run's bundle for a board that never
takes new label texts: it keeps ``label_embeddings.npy`` and drops the tokenizer and
the text tower (on the demo, a third of the int8 file).  Its labels score exactly as
in a ``text_encoder`` bundle; asked for any other label, the runtime names the ones
it holds.  The version is new so that a runtime that predates it refuses the bundle
instead of looking for a text encoder.

The image model maps a ``[1, H, W, 3]`` RGB image to L2-normalised embeddings:
``[1, D]`` (global scoring) or ``[1, cells, D]`` (regional scoring, one per cell of
the last feature map).  The manifest's ``logit_scale`` and ``logit_bias`` turn
them into label probabilities with the shared scorer, :mod:`fuselite.scoring`.

Label maps (``label_maps`` in the manifest, :class:`LabelMaps`): a regional image
model's output holds one embedding per cell, and scored per cell they are each label's
heatmap (:mod:`fuselite.maps`).  ``convert`` records the grid; the field is optional,
so bundles written before it still load, and the runtime derives the same grid from
a regional output's shape when the field is absent.  A pooled model without that
second output, such as an imported classifier, has no maps.  An older runtime ignores
the field (and refuses a two-output model in one line), so it needs no new schema
version.

This module imports nothing heavier than numpy, and reading never executes or
unpickles anything: it validates sizes, member names, types and ranges, and the
sha256 of the model bytes, before any byte reaches an interpreter.

Resource limits, checked before anything is allocated (a small file must not be able
to make a board allocate gigabytes; each limit has a wide margin over real bundles,
whose numbers follow in brackets):

* the zip's entry count, read from its end-of-central-directory record before
  ``zipfile`` parses the directory: at most :data:`MAX_ZIP_ENTRIES` = 64 entries and a
  central directory of at most :data:`MAX_CENTRAL_DIRECTORY_BYTES` = 256 KiB (real
  bundles: 3 or 4 entries, under 300 bytes; 2 M entries once took 1.4 GB and 34 s);
* ``manifest.json``, ``tokenizer.json`` and ``concepts.json``: at most
  :data:`MAX_JSON_MEMBER_BYTES` = 4 MiB and :data:`MAX_JSON_VALUES` = 500,000 values,
  counted from the separators before parsing (real: manifests of 2 to 5 kB, tokenizers
  of 195 bytes, a zero-shot concept index of 96 kB; 21 M empty lists once took
  1.66 GB); a vocabulary of at most :data:`MAX_VOCAB_WORDS` = 200,000 words
  (real: 17 to a few thousand; CLIP's is 49,408);
* the tensors of each model graph: at most :func:`arena_budget` bytes in all its
  non-constant tensors, summed over every tensor of every subgraph as declared
  (an upper bound of the interpreter's arena): :data:`MAX_ARENA_BYTES` = 512 MiB, or a
  quarter of the device's RAM when that is smaller (real: 0.8 MB for the demo's
  bundles, 3.6 to 7.2 MB for int8 MobileNet and EfficientNet-Lite0 bundles, 14.5 MB
  for an fp32 one at 160 px; a 117 kB model declaring 491 MB tensors, each under the
  1 GiB per-tensor rule, once peaked at 1,985 MB).

Every number the board computes with in float32 must be finite in float32 and keep
the scores finite: ``logit_scale`` in (0, :data:`MAX_LOGIT_SCALE` = 1000] and
``|logit_bias|`` at most 1000 (real: 10 to 22, -2.5 to -5.2), quantization scales
finite in float32, and each label embedding finite with an L2 norm of at most
:data:`MAX_EMBEDDING_NORM` = 1000 (real: 1.0 for text embeddings, at most 20 for a
concept row).  1e300 is finite in float64 but infinite in float32, and an embedding
of 1e38 overflows its dot product: both once gave NaN scores.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import struct
import zipfile
import zlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from fuselite.concepts import ConceptIndex, ConceptIndexError
from fuselite.files import write_atomic
from fuselite.flatbuffer import TFLITE_IDENTIFIER, Graph, ModelFormatError, Subgraph, read_graph
from fuselite.tokenizer import Tokenizer

SCHEMA_VERSION = 1
CONCEPTS_SCHEMA_VERSION = 2  # label_source "concepts": a runtime that predates it refuses clearly
# A concepts bundle whose pixels are normalised on the board (an imported classifier): a
# runtime that predates preprocessing.normalize_on_board would feed it raw pixels, so
# such a bundle carries a version that runtime refuses.
BOARD_NORMALISATION_SCHEMA_VERSION = 3
CONCEPTS_VERSIONS = (CONCEPTS_SCHEMA_VERSION, BOARD_NORMALISATION_SCHEMA_VERSION)
FIXED_LABELS_SCHEMA_VERSION = 4  # label_source "fixed": no text encoder, a runtime that predates it refuses
MANIFEST_MEMBER = "manifest.json"
TOKENIZER_MEMBER = "tokenizer.json"
EMBEDDINGS_MEMBER = "label_embeddings.npy"
TEXT_ENCODER_MEMBER = "text_encoder.tflite"
CONCEPTS_MEMBER = "concepts.json"
REFERENCE_MEMBER = "reference_embeddings.npy"
# What each way of turning label text into embeddings needs besides the manifest.
LABEL_SOURCE_MEMBERS = {
    "text_encoder": (TOKENIZER_MEMBER, EMBEDDINGS_MEMBER, TEXT_ENCODER_MEMBER),
    "concepts": (EMBEDDINGS_MEMBER, CONCEPTS_MEMBER),
    "fixed": (EMBEDDINGS_MEMBER,),
}
# The schema version each label source needs (concepts: 2, or 3 when normalised on the board).
LABEL_SOURCE_VERSIONS = {
    "text_encoder": (SCHEMA_VERSION,),
    "concepts": CONCEPTS_VERSIONS,
    "fixed": (FIXED_LABELS_SCHEMA_VERSION,),
}
OUTPUT_ACTIVATIONS = ("none", "softmax")
# Where label maps come from: the embedding output's cells (regional), or a second output
# holding a pooled tower's class activation map (global).
MAP_SOURCES = ("cells", "cam")
MAX_MAP_SIDE = 64
KNOWN_MEMBERS = (MANIFEST_MEMBER, TOKENIZER_MEMBER, EMBEDDINGS_MEMBER, TEXT_ENCODER_MEMBER, CONCEPTS_MEMBER,
                 REFERENCE_MEMBER)
# Reference images (real: 128 images of 1 or 2 cells, 8,192 int8 values): the board scores
# every trained and typed label on each image's cells, so their count is bounded as well.
MAX_REFERENCE_IMAGES = 1024
MAX_REFERENCE_EMBEDDINGS = 4096  # images x cells
MAX_REFERENCE_VALUES = 1024 * 1024  # images x cells x embedding_dim: 4 MB as float32

MAX_BUNDLE_BYTES = 512 * 1024 * 1024
MAX_MEMBER_BYTES = 64 * 1024 * 1024
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_LABELS = 10_000
MAX_LABEL_CHARS = 200
MIN_MODEL_BYTES = 16  # a TFLite flatbuffer's root offset and identifier, at least
# Resource limits (see the module docstring for the real bundles' figures).
MAX_ZIP_ENTRIES = 64
MAX_CENTRAL_DIRECTORY_BYTES = 256 * 1024
MAX_JSON_MEMBER_BYTES = 4 * 1024 * 1024
MAX_JSON_VALUES = 500_000
MAX_VOCAB_WORDS = 200_000
MAX_ARENA_BYTES = 512 * 1024 * 1024
MAX_LOGIT_SCALE = 1000.0
MAX_LOGIT_BIAS = 1000.0
MAX_EMBEDDING_NORM = 1000.0
# Bits per element by TFLite TensorType, in the schema's order (FLOAT32, FLOAT16, INT32,
# ..., INT4, BFLOAT16, INT2, UINT4, FLOAT8 x2); unknown types count as 8.
ELEMENT_BITS = (32, 16, 32, 8, 64, 8, 8, 16, 64, 8, 64, 128, 64, 8, 8, 32, 16, 4, 16, 2, 4, 8, 8)
_COUNT_LIMIT = 2**33  # element counts past this are far over every limit: stop multiplying
_EOCD, _EOCD_SIZE, _ZIP64_LOCATOR = b"PK\x05\x06", 22, b"PK\x06\x07"

# Everything zipfile/zlib raise on damaged, encrypted or exotic archives.
ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, RuntimeError,
               NotImplementedError)


class BundleError(ValueError):
    """A file that is not a usable bundle; the message says what is wrong."""


@dataclass(frozen=True)
class Preprocessing:
    """How a frame becomes the image model's input; the single source of truth.

    Attributes:
        input_size: ``(height, width)`` the frame is resized to.
        color_order: Channel order the model expects (``"RGB"``).
        resize: OpenCV interpolation name used on the device (``"area"`` or ``"linear"``).
        input_dtype: ``"uint8"`` (pixels 0-255, normalised inside the model) or
            ``"float32"`` (the same 0-255 pixel values, as floats).
        normalization: What the model does with pixels, for documentation:
            ``x * scale + offset``.
        input_quant: ``(scale, zero_point)`` of a quantized input, or ``None``.
        output_quant: ``(scale, zero_point)`` of a quantized embedding output, or ``None``.
        normalize_on_board: ``False`` (the model normalises inside and takes 0-255 pixels)
            or ``True`` (an imported classifier's graph takes normalised input, so the
            board applies ``normalization`` to the pixels before quantizing or casting).
    """

    input_size: tuple[int, int]
    color_order: str = "RGB"
    resize: str = "area"
    input_dtype: str = "uint8"
    normalization: tuple[float, float] = (1 / 127.5, -1.0)
    input_quant: tuple[float, int] | None = None
    output_quant: tuple[float, int] | None = None
    normalize_on_board: bool = False


@dataclass(frozen=True)
class LabelMaps:
    """Where the image model keeps its per-cell label evidence (see :mod:`fuselite.maps`).

    Attributes:
        grid: ``(rows, cols)`` of the cells, row-major, covering the whole input image.
        source: ``"cells"``: the embedding output ``[1, rows * cols, D]`` holds one
            embedding per cell (regional scoring), so the maps cost no extra invoke;
            ``"cam"``: a pooled (global) model's second output ``[1, rows * cols, D]``
            holds its class activation map, the projection head applied to each cell
            before pooling (:func:`fuselite.maps.cam_cells`).
        output_quant: ``(scale, zero_point)`` of a quantized ``"cam"`` output, or ``None``.
    """

    grid: tuple[int, int]
    source: str = "cells"
    output_quant: tuple[float, int] | None = None


@dataclass(frozen=True)
class ReferenceSet:
    """What ``reference_embeddings.npy`` holds: validation images as the image model sees them.

    Attributes:
        scale: One int8 step: an embedding value is ``int8 * scale``.
        images: Rows of the member (validation images).
        cells: Embeddings kept per image: a regional model's best-scoring cells (the
            cells where a trained label scores highest), 1 for a pooled model.
    """

    scale: float
    images: int
    cells: int


@dataclass(frozen=True)
class Manifest:
    """Everything the runtime needs besides the weights.

    Attributes:
        variant: Conversion variant (``fp32``, ``fp16``, ``dynamic``, ``int8``, ...).
        task: ``"single"`` (one label per image, top-1) or ``"multi"`` (tags).
        labels: Default label texts, in the order of ``label_embeddings.npy``.
        thresholds: Per-label probability thresholds calibrated on validation.
        default_threshold: Threshold for labels typed at run time.
        embedding_dim: Size of the joint image-text space.
        logit_scale: Scorer scale applied to the cosine similarity.
        logit_bias: Scorer bias added before the sigmoid.
        preprocessing: See :class:`Preprocessing`.
        model_sha256: sha256 of the flatbuffer bytes (the file up to ``model_size``).
        model_size: Length in bytes of the flatbuffer at the start of the file.
        text_encoder_sha256: sha256 of ``text_encoder.tflite``.
        sparsity: Fraction of zero weights in the image model's kernels.
        provenance: Source run, versions, op list with versions, loadable runtimes.
        numerics: Agreement with the Keras model measured at conversion time.
        schema_version: Version of this schema.
        label_source: How label text becomes embeddings: ``"text_encoder"`` (the
            bundle's text tower), ``"concepts"`` (the concept index of a zero-shot
            bundle, whose embeddings are multi-hot rows over the image model's classes)
            or ``"fixed"`` (only the default labels' embeddings; schema 4).
        output_activation: What the board applies to the image model's output before
            scoring: ``"none"``, or ``"softmax"`` (class logits -> probabilities; schema 2 only).
        label_maps: Where per-label heatmaps come from (:class:`LabelMaps`), or ``None``
            (absent in bundles written before it, and in bundles without cells).
        reference: The reference images' embeddings (:class:`ReferenceSet`), or ``None``
            (absent in bundles written before it, and in bundles without a text encoder).
    """

    variant: str
    task: str
    labels: tuple[str, ...]
    thresholds: tuple[float, ...]
    default_threshold: float
    embedding_dim: int
    logit_scale: float
    logit_bias: float
    preprocessing: Preprocessing
    model_sha256: str = ""
    model_size: int = 0
    text_encoder_sha256: str = ""
    sparsity: float = 0.0
    provenance: dict[str, Any] = field(default_factory=dict)
    numerics: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    label_source: str = "text_encoder"
    output_activation: str = "none"
    label_maps: LabelMaps | None = None
    reference: ReferenceSet | None = None

    def to_json(self) -> str:
        """Serialises the manifest as JSON text."""
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        """Parses and validates manifest JSON; raises :class:`BundleError` naming the bad field."""
        try:
            data = json.loads(text)
        except RecursionError:
            raise BundleError("manifest JSON is nested too deeply") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BundleError(f"manifest is not valid JSON ({exc})") from None
        return _manifest_from_dict(data)


@dataclass(frozen=True)
class Bundle:
    """A bundle read from disk and verified.

    Attributes:
        path: Where it was read from.
        manifest: The validated manifest.
        model_bytes: The image model flatbuffer, ready for an interpreter.
        tokenizer: The word tokenizer for label text (None in a zero-shot or
            fixed-labels bundle).
        label_embeddings: float32 ``[len(labels), embedding_dim]``.
        text_encoder_bytes: The text tower flatbuffer (empty in a zero-shot or
            fixed-labels bundle).
        concepts: The concept index of a zero-shot bundle, else None.
        reference_embeddings: float32 ``[images, cells, embedding_dim]``, the reference
            images' embeddings (:class:`ReferenceSet`), else None.
    """

    path: Path
    manifest: Manifest
    model_bytes: bytes
    tokenizer: Tokenizer | None
    label_embeddings: np.ndarray
    text_encoder_bytes: bytes
    concepts: ConceptIndex | None = None
    reference_embeddings: np.ndarray | None = None


def sha256(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def pack_bundle(
    model_bytes: bytes,
    manifest: Manifest,
    label_embeddings: np.ndarray,
    tokenizer: Tokenizer | None = None,
    text_encoder_bytes: bytes = b"",
    concepts: ConceptIndex | None = None,
    fixed_labels: bool = False,
    reference_embeddings: np.ndarray | None = None,
) -> bytes:
    """Returns the bundle bytes: the flatbuffer, then a zip of the associated files.

    Give ``tokenizer`` and ``text_encoder_bytes`` (a trained run's bundle),
    ``concepts`` (a zero-shot bundle), or ``fixed_labels=True`` and neither (a bundle
    that scores only its own labels).  ``model_sha256``, ``model_size``,
    ``text_encoder_sha256``, ``label_source`` and ``schema_version`` are filled in here.
    ``reference_embeddings`` (float ``[images, cells, embedding_dim]``, with a text
    encoder only) are stored as int8; the manifest's ``reference`` records their scale.
    """
    sources = [name for name, given in (("text_encoder", tokenizer is not None),
                                        ("concepts", concepts is not None), ("fixed", fixed_labels)) if given]
    if len(sources) != 1:
        raise ValueError("a bundle needs exactly one of: a tokenizer and text encoder, a concept index, "
                         "or fixed_labels")
    source = sources[0]
    embeddings = np.ascontiguousarray(label_embeddings, dtype=np.float32)
    manifest = replace(
        manifest,
        model_sha256=sha256(model_bytes),
        model_size=len(model_bytes),
        text_encoder_sha256=sha256(text_encoder_bytes) if source == "text_encoder" else "",
        label_source=source,
        schema_version=_schema_version(manifest, source),
        reference=None,
    )
    reference = None
    if reference_embeddings is not None:
        if source != "text_encoder":
            raise ValueError("reference embeddings serve typed labels: only a bundle with a text encoder has them")
        reference, reference_set = quantize_reference(reference_embeddings, manifest.embedding_dim)
        manifest = replace(manifest, reference=reference_set)
    _validate_embeddings(embeddings, manifest)
    npy = io.BytesIO()
    np.save(npy, embeddings, allow_pickle=False)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(MANIFEST_MEMBER, manifest.to_json())
        zf.writestr(EMBEDDINGS_MEMBER, npy.getvalue())
        if source == "text_encoder":
            zf.writestr(TOKENIZER_MEMBER, json.dumps(tokenizer.to_dict()))
            zf.writestr(TEXT_ENCODER_MEMBER, text_encoder_bytes)
            if reference is not None:
                zf.writestr(REFERENCE_MEMBER, _npy_bytes(reference))
        elif source == "concepts":
            zf.writestr(CONCEPTS_MEMBER, concepts.to_json())
    return model_bytes + archive.getvalue()


def quantize_reference(embeddings: np.ndarray, embedding_dim: int) -> tuple[np.ndarray, ReferenceSet]:
    """int8 ``[images, cells, embedding_dim]`` and its :class:`ReferenceSet` (one scale for all).

    Raises:
        ValueError: the array has the wrong shape, too many images, or a value that is not finite.
    """
    values = np.asarray(embeddings, np.float32)
    if values.ndim != 3 or values.shape[2] != embedding_dim:
        raise ValueError(f"reference embeddings must be [images, cells, {embedding_dim}], not {list(values.shape)}")
    problem = reference_problem(values.shape[0], values.shape[1], embedding_dim)
    if problem or not np.all(np.isfinite(values)):
        raise ValueError(problem or "reference embeddings must be finite")
    peak = float(np.abs(values).max())
    scale = peak / 127 if peak > 0 else 1.0
    quantized = np.clip(np.round(values / scale), -127, 127).astype(np.int8)
    return quantized, ReferenceSet(scale=scale, images=len(values), cells=int(values.shape[1]))


def reference_problem(images: int, cells: int, embedding_dim: int) -> str | None:
    """Why reference embeddings of this shape are refused (too many for a board), or None."""
    if not 1 <= images <= MAX_REFERENCE_IMAGES or not 1 <= cells <= MAX_MAP_SIDE**2:
        return f"reference images must be 1 to {MAX_REFERENCE_IMAGES}, of 1 to {MAX_MAP_SIDE**2} cells each"
    if images * cells > MAX_REFERENCE_EMBEDDINGS or images * cells * embedding_dim > MAX_REFERENCE_VALUES:
        return (f"reference images hold {images} x {cells} embeddings of {embedding_dim}: over "
                f"{MAX_REFERENCE_EMBEDDINGS} embeddings or {MAX_REFERENCE_VALUES} values")
    return None


def _npy_bytes(array: np.ndarray) -> bytes:
    stream = io.BytesIO()
    np.save(stream, array, allow_pickle=False)
    return stream.getvalue()


def write_bundle(path: Path, **parts: Any) -> Path:
    """Packs a bundle (see :func:`pack_bundle` for ``parts``) and writes it atomically."""
    write_atomic(Path(path), pack_bundle(**parts))
    return Path(path)


def read_bundle(path: Path) -> Bundle:
    """Reads and verifies a bundle; raises :class:`BundleError` with one clear line."""
    path = Path(path)
    data = _read_file(path)
    try:
        members = _read_members(data)
    except ZIP_ERRORS as exc:
        raise BundleError(f"{path}: not a fuselite bundle ({exc}); re-run `fuselite convert`") from None
    manifest = _parse_member(path, lambda: _load_manifest(members[MANIFEST_MEMBER]))
    missing = [m for m in LABEL_SOURCE_MEMBERS[manifest.label_source] if m not in members]
    if missing:
        raise BundleError(f"{path}: not a fuselite bundle (missing {', '.join(missing)}); "
                          "re-run `fuselite convert`")
    embeddings = _parse_member(path, lambda: _load_embeddings(members[EMBEDDINGS_MEMBER], manifest))
    if manifest.model_size < MIN_MODEL_BYTES:
        raise BundleError(f"{path}: the manifest's model_size {manifest.model_size} leaves no image model "
                          "before the zip; re-run `fuselite convert`")
    model_bytes = data[: manifest.model_size]
    if manifest.model_size > len(data) or sha256(model_bytes) != manifest.model_sha256:
        raise BundleError(f"{path}: model bytes do not match the manifest's sha256 (file altered or truncated)")
    if manifest.label_source == "concepts":
        concepts = _parse_member(path, lambda: _load_concepts(members[CONCEPTS_MEMBER], manifest))
        return Bundle(path, manifest, model_bytes, None, embeddings, b"", concepts)
    if manifest.label_source == "fixed":
        return Bundle(path, manifest, model_bytes, None, embeddings, b"")
    tokenizer = _parse_member(path, lambda: _load_tokenizer(members[TOKENIZER_MEMBER]))
    text_encoder = members[TEXT_ENCODER_MEMBER]
    if sha256(text_encoder) != manifest.text_encoder_sha256:
        raise BundleError(f"{path}: text encoder does not match the manifest's sha256 (file altered)")
    reference = None
    if manifest.reference is not None:
        if REFERENCE_MEMBER not in members:
            raise BundleError(f"{path}: the manifest names reference embeddings but {REFERENCE_MEMBER} is "
                              "missing; re-run `fuselite convert`")
        reference = _parse_member(path, lambda: _load_reference(members[REFERENCE_MEMBER], manifest))
    return Bundle(path, manifest, model_bytes, tokenizer, embeddings, text_encoder,
                  reference_embeddings=reference)


def check_bundle(path: Path, ram_bytes: int | None = None) -> Bundle:
    """Reads a bundle and checks what can be checked without an interpreter.

    :func:`read_bundle`'s checks (manifest ranges in float32, finite and bounded label
    embeddings, checksums, sizes), then each model: a TFLite flatbuffer whose graph
    can be read and whose tensors fit :func:`arena_budget` for ``ram_bytes`` of RAM
    (None: this limit alone, as for an unknown device).  ``convert --list`` and bench
    use it to tell a runnable bundle from one the runtime would refuse; the runtime
    adds the full graph check and a load probe.

    Raises:
        BundleError: one line naming the file and what is wrong.
    """
    bundle = read_bundle(path)
    models = [("image model", bundle.model_bytes)]
    if bundle.manifest.label_source == "text_encoder":
        models.append(("text encoder", bundle.text_encoder_bytes))
    for name, model_bytes in models:
        problem = model_problem(model_bytes, arena_budget(ram_bytes))
        if problem:
            raise BundleError(f"{bundle.path}: {name}: {problem}; re-run `fuselite convert`")
    return bundle


def model_problem(model_bytes: bytes, budget: int = MAX_ARENA_BYTES) -> str | None:
    """Why a model cannot run, as far as its bytes tell without an interpreter, or None."""
    if len(model_bytes) < MIN_MODEL_BYTES or model_bytes[4:8] != TFLITE_IDENTIFIER:
        return f"not a TFLite flatbuffer (no {TFLITE_IDENTIFIER.decode()} header)"
    try:
        graph = read_graph(model_bytes)
    except ModelFormatError as exc:
        return f"its flatbuffer is broken ({exc})"
    return arena_problem(graph, budget)


def arena_problem(graph: Graph, budget: int) -> str | None:
    """Why ``graph``'s tensors do not fit ``budget`` bytes, or None when they do."""
    total = arena_bytes(graph)
    if total <= budget:
        return None
    return (f"its tensors need {total / 2**20:,.0f} MB, more than the {budget / 2**20:,.0f} MB "
            "a model may use on this device")


def arena_budget(ram_bytes: int | None = None) -> int:
    """The most bytes a model's tensors may declare: :data:`MAX_ARENA_BYTES`, or a
    quarter of ``ram_bytes`` (the device's RAM, when known) if that is smaller.

    The rest of the RAM holds the system, Python, OpenCV, the frames and the model's
    weights; a Pi Zero 2 W's quarter (128 MB) is still 9x what an fp32 EfficientNet-Lite0
    declares.
    """
    if not ram_bytes or ram_bytes <= 0:
        return MAX_ARENA_BYTES
    return min(MAX_ARENA_BYTES, ram_bytes // 4)


def arena_bytes(graph: Graph) -> int:
    """Bytes declared by every tensor not backed by constant data, over every subgraph.

    The interpreter's arena reuses memory between tensors, so this is an upper bound
    of it; it is what a hostile shape makes the interpreter allocate.
    """
    total = 0
    for sub in graph.subgraphs:
        for tensor, buffer in enumerate(sub.buffers):
            if not (0 <= buffer < len(graph.constant_buffers) and graph.constant_buffers[buffer]):
                total += declared_bytes(sub, tensor)
    return total


def declared_bytes(sub: Subgraph, tensor: int) -> int:
    """The bytes a tensor's declared shape needs at its type's element size."""
    count = 1
    for dim in sub.shapes[tensor]:
        count *= max(dim, 1)  # negative (unknown) dimensions are the interpreter's to refuse
        if count > _COUNT_LIMIT:  # too big already: stop before the number explodes
            break
    tensor_type = sub.types[tensor]
    bits = ELEMENT_BITS[tensor_type] if 0 <= tensor_type < len(ELEMENT_BITS) else 8
    return count * bits // 8


def _load_concepts(raw: bytes, manifest: Manifest) -> ConceptIndex:
    """The concept index, checked against the image model's class count."""
    _check_json_size(raw, CONCEPTS_MEMBER)
    try:
        concepts = ConceptIndex.from_json(raw)
    except ConceptIndexError as exc:
        raise BundleError(f"concepts.json: {exc}") from None
    if concepts.num_classes != manifest.embedding_dim:
        raise BundleError(f"concepts.json names {concepts.num_classes} classes but the manifest's "
                          f"embedding_dim is {manifest.embedding_dim}")
    return concepts


def _load_manifest(raw: bytes) -> Manifest:
    """The manifest, its JSON size bounded before parsing."""
    _check_json_size(raw, MANIFEST_MEMBER)
    return Manifest.from_json(raw.decode())


def _load_tokenizer(raw: bytes) -> Tokenizer:
    """The tokenizer, its size bounded before and its vocabulary after JSON parsing."""
    _check_json_size(raw, TOKENIZER_MEMBER)
    try:
        data = json.loads(raw.decode())
    except RecursionError:
        raise BundleError(f"{TOKENIZER_MEMBER} is nested too deeply") from None
    vocab = data.get("vocab") if isinstance(data, dict) else None
    if isinstance(vocab, list) and len(vocab) > MAX_VOCAB_WORDS:
        raise BundleError(f"{TOKENIZER_MEMBER} holds {len(vocab)} words, over {MAX_VOCAB_WORDS}")
    return Tokenizer.from_dict(data)


def _check_json_size(raw: bytes, name: str) -> None:
    """Refuses a JSON member that would take far more memory parsed than a bundle needs.

    Parsed, each JSON value costs Python 30-60 bytes, so 60 MB of ``[],`` once took
    1.66 GB; separators and brackets bound the number of values before any parsing.
    """
    if len(raw) > MAX_JSON_MEMBER_BYTES:
        raise BundleError(f"{name} is {len(raw)} bytes, over {MAX_JSON_MEMBER_BYTES}")
    values = sum(raw.count(c) for c in (b",", b":", b"[", b"{"))
    if values > MAX_JSON_VALUES:
        raise BundleError(f"{name} holds about {values} JSON values, over {MAX_JSON_VALUES}")


def read_manifest(path: Path) -> Manifest:
    """Reads only the manifest of a bundle (no checksum checks); for listings and reports."""
    path = Path(path)
    try:
        members = _read_members(_read_file(path))
    except ZIP_ERRORS as exc:
        raise BundleError(f"{path}: not a fuselite bundle ({exc})") from None
    return _parse_member(path, lambda: _load_manifest(members[MANIFEST_MEMBER]))


# --- reading helpers -------------------------------------------------------------


def _read_file(path: Path) -> bytes:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise BundleError(f"{path}: cannot read bundle ({exc.strerror})") from None
    if size > MAX_BUNDLE_BYTES:
        raise BundleError(f"{path}: {size} bytes is larger than any bundle ({MAX_BUNDLE_BYTES})")
    if not path.is_file():
        raise BundleError(f"{path}: not a file")
    try:  # a file that cannot be read (permissions, EIO) is one line, like a missing one
        return path.read_bytes()
    except OSError as exc:
        raise BundleError(f"{path}: cannot read bundle ({exc.strerror or exc})") from None


def _read_members(data: bytes) -> dict[str, bytes]:
    """Reads the trailing zip's known members, refusing unsafe or oversize ones.

    Which of them a bundle needs depends on its manifest's ``label_source``; the
    caller checks that once the manifest is parsed.
    """
    _check_zip_directory(data)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        infos = {}
        for info in zf.infolist():
            name = info.filename
            if name.startswith(("/", "\\")) or ".." in name.replace("\\", "/").split("/"):
                raise ValueError(f"unsafe member name {name!r}")
            if info.flag_bits & 0x1 or info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise ValueError(f"member {name!r} is encrypted or uses an unsupported compression")
            infos[name] = info
        if MANIFEST_MEMBER not in infos:
            raise ValueError(f"missing {MANIFEST_MEMBER}")
        members = {}
        for name in (m for m in KNOWN_MEMBERS if m in infos):
            limit = MAX_MANIFEST_BYTES if name == MANIFEST_MEMBER else MAX_MEMBER_BYTES
            if infos[name].file_size > limit:
                raise ValueError(f"{name} is {infos[name].file_size} bytes, over {limit}")
            with zf.open(infos[name]) as f:
                members[name] = f.read(limit + 1)
            if len(members[name]) > limit:
                raise ValueError(f"{name} is over {limit} bytes")
    return members


def _check_zip_directory(data: bytes) -> None:
    """Refuses a zip directory larger than any bundle's, from its end record alone.

    ``zipfile`` turns every directory entry into an object before anyone can count
    them (2 M entries: 1.4 GB, 34 s), so the count and size in the
    end-of-central-directory record are checked first.  It reads as many entries as
    the directory's byte size holds, so that size is bounded too; zip64 (over 65,535
    entries or 4 GB) is never needed by a bundle.
    """
    end = len(data) - _EOCD_SIZE
    if data[end:end + 4] != _EOCD:  # a zip comment follows the record: find the last one
        end = data.rfind(_EOCD, max(0, len(data) - _EOCD_SIZE - 0xFFFF))
    if end < 0 or end + _EOCD_SIZE > len(data):
        raise zipfile.BadZipFile("File is not a zip file")
    disk_entries, entries, directory_bytes = struct.unpack_from("<HHI", data, end + 8)
    if data[max(0, end - 20):end].startswith(_ZIP64_LOCATOR) or 0xFFFF in (disk_entries, entries):
        raise ValueError("a zip64 archive; a bundle's zip has a few small members")
    if max(disk_entries, entries) > MAX_ZIP_ENTRIES or directory_bytes > MAX_CENTRAL_DIRECTORY_BYTES:
        raise ValueError(f"its zip directory lists {entries} entries in {directory_bytes} bytes; a "
                         f"bundle has at most {MAX_ZIP_ENTRIES} entries and {MAX_CENTRAL_DIRECTORY_BYTES} bytes")


def _parse_member(path: Path, parse):
    try:
        return parse()
    except BundleError as exc:
        raise BundleError(f"{path}: {exc}") from None
    except (ValueError, TypeError, KeyError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path}: invalid bundle content ({exc})") from None


def _npy_header(raw: bytes, what: str) -> tuple[io.BytesIO, tuple]:
    """``(stream at the body, (shape, fortran_order, dtype))`` of a .npy member's header,
    parsed before any body byte is read; a header numpy cannot parse names ``what``."""
    stream = io.BytesIO(raw)
    try:
        version = np.lib.format.read_magic(stream)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        return stream, read_header(stream)
    except Exception as exc:  # noqa: BLE001 - numpy parses the untrusted header with ast/tokenize
        raise BundleError(f"{what} are not a valid .npy array ({type(exc).__name__})") from None


def _load_embeddings(raw: bytes, manifest: Manifest) -> np.ndarray:
    """Parses the .npy header first, so a lying header never allocates or reads past the data."""
    stream, (shape, fortran, dtype) = _npy_header(raw, "label embeddings")
    if not isinstance(shape, tuple):
        raise BundleError("label embeddings have no valid shape")
    expected = (len(manifest.labels), manifest.embedding_dim)
    if dtype != np.dtype("<f4") or fortran or tuple(shape) != expected:
        raise BundleError(
            f"label embeddings must be little-endian float32 {expected}, not {dtype} {tuple(shape)}"
        )
    body = raw[stream.tell():]
    if len(body) != expected[0] * expected[1] * 4:
        raise BundleError("label embeddings hold the wrong number of bytes for their shape")
    embeddings = np.frombuffer(body, dtype="<f4").reshape(expected).copy()
    _validate_embeddings(embeddings, manifest)
    return embeddings


def _load_reference(raw: bytes, manifest: Manifest) -> np.ndarray:
    """The reference embeddings as float32, from an int8 .npy whose header must match
    the manifest's ``reference`` (checked before the body is read)."""
    reference = manifest.reference
    expected = (reference.images, reference.cells, manifest.embedding_dim)
    stream, (shape, fortran, dtype) = _npy_header(raw, "reference embeddings")
    if dtype != np.dtype("i1") or fortran or not isinstance(shape, tuple) or tuple(shape) != expected:
        raise BundleError(f"reference embeddings must be int8 {expected} as the manifest says, "
                          f"not {dtype} {shape}")
    body = raw[stream.tell():]
    if len(body) != math.prod(expected):
        raise BundleError("reference embeddings hold the wrong number of bytes for their shape")
    return np.frombuffer(body, dtype=np.int8).reshape(expected).astype(np.float32) * np.float32(reference.scale)


def _validate_embeddings(embeddings: np.ndarray, manifest: Manifest) -> None:
    expected = (len(manifest.labels), manifest.embedding_dim)
    if embeddings.shape != expected:
        raise BundleError(
            f"label embeddings have shape {embeddings.shape}, but the manifest's "
            f"{len(manifest.labels)} labels and embedding_dim need {expected}"
        )
    problem = embedding_problem(embeddings, manifest.labels)
    if problem:
        raise BundleError(problem)


def embedding_problem(embeddings: np.ndarray, labels: tuple[str, ...]) -> str | None:
    """Why label embeddings cannot be scored in float32 (NaN, infinity, or a row longer
    than :data:`MAX_EMBEDDING_NORM`, whose dot product could overflow), or None.

    The runtime checks the embeddings of labels typed at run time with it too.
    """
    if not np.all(np.isfinite(embeddings)):
        return "label embeddings contain NaN or infinity"
    norms = np.linalg.norm(np.asarray(embeddings, np.float64), axis=1)
    if norms.max(initial=0.0) > MAX_EMBEDDING_NORM:
        row = int(np.argmax(norms))
        return (f"label embedding {row} ({labels[row]!r}) has length {norms[row]:.3g}, "
                f"over {MAX_EMBEDDING_NORM:g}: its scores would overflow float32")
    return None


# --- manifest validation ---------------------------------------------------------


def _schema_version(manifest: Manifest, label_source: str) -> int:
    """The oldest schema that can describe ``manifest`` (so older runtimes read what they can)."""
    if label_source != "concepts":
        return LABEL_SOURCE_VERSIONS[label_source][0]
    return BOARD_NORMALISATION_SCHEMA_VERSION if manifest.preprocessing.normalize_on_board else CONCEPTS_SCHEMA_VERSION


def _manifest_from_dict(data: Any) -> Manifest:
    if not isinstance(data, dict):
        raise BundleError("manifest must be a JSON object")
    version = _field(data, "schema_version", int)
    known = sorted({v for versions in LABEL_SOURCE_VERSIONS.values() for v in versions})
    if version not in known:
        raise BundleError(
            f"manifest schema_version {version} is not one of {', '.join(map(str, known))}; "
            "upgrade fuselite or re-convert the bundle"
        )
    label_source = data.get("label_source", "text_encoder")
    if not isinstance(label_source, str) or label_source not in LABEL_SOURCE_MEMBERS:
        raise BundleError(f"manifest label_source must be one of {', '.join(LABEL_SOURCE_MEMBERS)}, "
                          f"not {label_source!r}")
    if version not in LABEL_SOURCE_VERSIONS[label_source]:
        raise BundleError(f"manifest label_source {label_source!r} does not match schema_version {version}")
    activation = data.get("output_activation", "none")
    if not isinstance(activation, str) or activation not in OUTPUT_ACTIVATIONS or (activation != "none" and version not in CONCEPTS_VERSIONS):
        raise BundleError(f"manifest output_activation {activation!r} must be 'none', or 'softmax' "
                          f"with schema_version {CONCEPTS_SCHEMA_VERSION}")
    labels = _labels(data)
    thresholds = tuple(_probability(t, "thresholds") for t in _field(data, "thresholds", list))
    if len(thresholds) != len(labels):
        raise BundleError(f"manifest has {len(labels)} labels but {len(thresholds)} thresholds")
    task = _field(data, "task", str)
    if task not in ("single", "multi"):
        raise BundleError(f"manifest task must be 'single' or 'multi', not {task!r}")
    dim = _field(data, "embedding_dim", int)
    if not 1 <= dim <= 4096:
        raise BundleError(f"manifest embedding_dim {dim} is outside 1..4096")
    preprocessing = _preprocessing(_field(data, "preprocessing", dict))
    if preprocessing.normalize_on_board != (version == BOARD_NORMALISATION_SCHEMA_VERSION):
        raise BundleError(f"manifest preprocessing.normalize_on_board needs schema_version "
                          f"{BOARD_NORMALISATION_SCHEMA_VERSION}, and only it (this one has {version})")
    return Manifest(
        variant=_field(data, "variant", str)[:64],
        task=task,
        labels=labels,
        thresholds=thresholds,
        default_threshold=_probability(_field(data, "default_threshold", (int, float)), "default_threshold"),
        embedding_dim=dim,
        logit_scale=_in_range(data, "logit_scale", 0.0, MAX_LOGIT_SCALE),
        logit_bias=_in_range(data, "logit_bias", -MAX_LOGIT_BIAS, MAX_LOGIT_BIAS),
        preprocessing=preprocessing,
        model_sha256=_field(data, "model_sha256", str),
        model_size=_field(data, "model_size", int),
        text_encoder_sha256=_field(data, "text_encoder_sha256", str),
        sparsity=_probability(_field(data, "sparsity", (int, float)), "sparsity"),
        provenance=_field(data, "provenance", dict),
        numerics=_field(data, "numerics", dict),
        schema_version=version,
        label_source=label_source,
        output_activation=activation,
        label_maps=_label_maps(data.get("label_maps")),
        reference=_reference(data.get("reference"), label_source, dim),
    )


def _reference(value: Any, label_source: str, embedding_dim: int) -> ReferenceSet | None:
    """The optional ``reference`` field (absent or null: no reference embeddings)."""
    if value is None:
        return None
    if label_source != "text_encoder" or not isinstance(value, dict):
        raise BundleError("manifest reference must be an object with 'scale', 'images' and 'cells', "
                          "in a bundle with a text encoder")
    scale = value.get("scale")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not _finite32(scale) or not 0 < scale <= 1e6:
        raise BundleError("manifest reference.scale must be a positive finite number")
    limits = {"images": MAX_REFERENCE_IMAGES, "cells": MAX_MAP_SIDE**2}
    counts = {name: value.get(name) for name in limits}
    for name, count in counts.items():
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= limits[name]:
            raise BundleError(f"manifest reference.{name} must be a whole number from 1 to {limits[name]}")
    problem = reference_problem(counts["images"], counts["cells"], embedding_dim)
    if problem:
        raise BundleError(f"manifest reference: {problem}")
    return ReferenceSet(scale=float(scale), **counts)


def _label_maps(value: Any) -> LabelMaps | None:
    """The optional ``label_maps`` field (absent or null: no maps)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise BundleError("manifest label_maps must be an object with 'grid' and 'source'")
    grid = value.get("grid")
    if (not isinstance(grid, list) or len(grid) != 2
            or not all(isinstance(g, int) and not isinstance(g, bool) and 1 <= g <= MAX_MAP_SIDE for g in grid)):
        raise BundleError(f"manifest label_maps.grid must be [rows, cols] from 1 to {MAX_MAP_SIDE}")
    source = value.get("source", "cells")
    if source not in MAP_SOURCES:
        raise BundleError(f"manifest label_maps.source must be one of {', '.join(MAP_SOURCES)}, not {source!r}")
    quant = _quant(value.get("output_quant"), "label_maps.output_quant")
    return LabelMaps(grid=(grid[0], grid[1]), source=source, output_quant=quant)


def _field(data: dict, name: str, kind) -> Any:
    if name not in data:
        raise BundleError(f"manifest is missing {name!r}")
    value = data[name]
    if isinstance(value, bool) or not isinstance(value, kind):
        raise BundleError(f"manifest field {name!r} has the wrong type ({type(value).__name__})")
    return value


def _finite(data: dict, name: str) -> float:
    value = float(_field(data, name, (int, float)))
    if not _finite32(value):
        raise BundleError(f"manifest field {name!r} is not a finite float32 number ({value!r})")
    return value


def _in_range(data: dict, name: str, low: float, high: float) -> float:
    """A finite float32 number in ``(low, high]`` (``[low, high]`` when ``low`` is negative)."""
    value = _finite(data, name)
    if not (low < value if low >= 0 else low <= value) or value > high:
        raise BundleError(f"manifest field {name!r} is {value:g}, outside "
                          f"{'(' if low >= 0 else '['}{low:g}, {high:g}]: its scores would not be usable")
    return value


def _finite32(value: float) -> bool:
    """Whether ``value`` stays finite as a float32, the type the board computes in
    (1e300 is finite in float64 but infinite in float32)."""
    with np.errstate(over="ignore"):
        return math.isfinite(value) and bool(np.isfinite(np.float32(value)))


def _probability(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise BundleError(f"manifest field {name!r} must hold numbers from 0 to 1")
    return float(value)


def _labels(data: dict) -> tuple[str, ...]:
    labels = _field(data, "labels", list)
    if not 1 <= len(labels) <= MAX_LABELS:
        raise BundleError(f"manifest must list 1 to {MAX_LABELS} labels, not {len(labels)}")
    for label in labels:
        if not isinstance(label, str) or not 0 < len(label) <= MAX_LABEL_CHARS:
            raise BundleError(f"manifest label {label!r} must be text of 1 to {MAX_LABEL_CHARS} characters")
    return tuple(labels)


def _preprocessing(data: dict) -> Preprocessing:
    size = _field(data, "input_size", list)
    if len(size) != 2 or not all(isinstance(s, int) and 8 <= s <= 1024 for s in size):
        raise BundleError("manifest preprocessing.input_size must be [height, width] from 8 to 1024")
    if data.get("color_order") not in ("RGB", "BGR"):
        raise BundleError("manifest preprocessing.color_order must be 'RGB' or 'BGR'")
    if data.get("resize") not in ("area", "linear"):
        raise BundleError("manifest preprocessing.resize must be 'area' or 'linear'")
    if data.get("input_dtype") not in ("uint8", "int8", "float32"):
        raise BundleError("manifest preprocessing.input_dtype must be uint8, int8 or float32")
    on_board = data.get("normalize_on_board", False)  # absent in bundles written before it
    if not isinstance(on_board, bool):
        raise BundleError("manifest preprocessing.normalize_on_board must be true or false")
    return Preprocessing(
        input_size=(size[0], size[1]),
        color_order=data["color_order"],
        resize=data["resize"],
        input_dtype=data["input_dtype"],
        normalization=_pair(data.get("normalization"), "normalization", float),
        input_quant=_quant(data.get("input_quant"), "input_quant"),
        output_quant=_quant(data.get("output_quant"), "output_quant"),
        normalize_on_board=on_board,
    )


def _pair(value: Any, name: str, second) -> tuple:
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        or not all(_finite32(v) for v in value)
    ):
        raise BundleError(f"manifest preprocessing.{name} must be a pair of finite numbers")
    return (float(value[0]), second(value[1]))


def _quant(value: Any, name: str) -> tuple[float, int] | None:
    if value is None:
        return None
    scale, zero_point = _pair(value, name, float)
    if np.float32(scale) <= 0 or zero_point != int(zero_point):
        raise BundleError(f"manifest preprocessing.{name} needs a positive scale and an integer zero point")
    return (scale, int(zero_point))
