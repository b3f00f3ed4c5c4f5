"""What a plain TFLite image classifier says about itself, read without TensorFlow.

``fuselite import`` wraps a classifier it did not train, so everything the bundle's
manifest needs comes from the file: the input and output tensors (shape, type,
quantization), the operator that makes the output (``SOFTMAX``: probabilities,
``LOGISTIC``: independent probabilities, anything else: logits), and, when the file
carries TFLite Metadata (as Model Maker and TF Hub models do), its label file and
input normalisation.

TFLite Metadata is a ``ModelMetadata`` flatbuffer (file identifier ``M001``) held in
the model buffer that the ``Model.metadata`` entry named ``TFLITE_METADATA`` points
at; the files it names (``labels.txt``) sit in a zip appended after the model.  Both
are read with :class:`fuselite.flatbuffer.Reader`, bounds-checked, so a damaged file
raises :class:`~fuselite.flatbuffer.ModelFormatError`, never an ``IndexError``.

Example:
    >>> model = read_classifier(Path("mobilenet.tflite").read_bytes())
    >>> model.input.shape, model.output_op, model.metadata.labels[:3]
    ((1, 224, 224, 3), 'SOFTMAX', ('background', 'tench', 'goldfish'))
"""

from __future__ import annotations

import io
import struct
import zipfile
from dataclasses import dataclass

from fuselite.bundle import ZIP_ERRORS
from fuselite.flatbuffer import ModelFormatError, Reader, builtin_name, read_graph

METADATA_NAME = "TFLITE_METADATA"
METADATA_IDENTIFIER = b"M001"
TENSOR_AXIS_LABELS = 2  # AssociatedFileType: one label per output class
NORMALIZATION_OPTIONS = 1  # ProcessUnitOptions union type
MAX_LABEL_FILE_BYTES = 4 * 1024 * 1024
# TensorType enum values -> numpy names (the ones an image classifier's tensors use).
TENSOR_TYPES = {0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 7: "int16", 9: "int8"}
# Ops that pass a classifier's scores through unchanged in meaning.
PASS_THROUGH_OPS = ("DEQUANTIZE", "QUANTIZE", "RESHAPE", "SQUEEZE")


@dataclass(frozen=True)
class TensorInfo:
    """One input or output tensor of the classifier.

    Attributes:
        shape: Declared shape, batch first.
        dtype: numpy name of its type (``"uint8"``, ``"int8"``, ``"float32"``, ...).
        quant: ``(scale, zero_point)`` of a per-tensor quantized tensor, else ``None``.
    """

    shape: tuple[int, ...]
    dtype: str
    quant: tuple[float, int] | None


@dataclass(frozen=True)
class ClassifierMetadata:
    """What the file's TFLite Metadata gives (every field empty without metadata).

    Attributes:
        name: ``ModelMetadata.name``.
        labels_file: Name of the output's label file (``TENSOR_AXIS_LABELS``).
        labels_text: That file's text, read from the appended zip.
        mean: Per-channel input mean of ``NormalizationOptions`` (``(x - mean) / std``).
        std: Per-channel input standard deviation.
    """

    name: str = ""
    labels_file: str = ""
    labels_text: str = ""
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()


@dataclass(frozen=True)
class ClassifierModel:
    """A plain TFLite classifier, read.

    Attributes:
        model_bytes: The flatbuffer alone (an appended zip of associated files dropped).
        input: The single input tensor.
        output: The single output tensor.
        output_op: Name of the op that computes the scores (behind any DEQUANTIZE).
        tensor_types: The numpy names of every tensor type in the main graph.
        metadata: Its TFLite Metadata.
    """

    model_bytes: bytes
    input: TensorInfo
    output: TensorInfo
    output_op: str
    tensor_types: frozenset[str]
    metadata: ClassifierMetadata

    @property
    def variant(self) -> str:
        """The conversion variant its tensor types show: int8, fp16, dynamic or fp32."""
        if self.input.dtype in ("uint8", "int8"):
            return "int8"
        if "float16" in self.tensor_types:
            return "fp16"
        return "dynamic" if self.tensor_types & {"int8", "uint8"} else "fp32"


def read_classifier(data: bytes) -> ClassifierModel:
    """Reads a single-input, single-output TFLite model (with or without metadata).

    Raises:
        ModelFormatError: the bytes are not a readable TFLite model.
    """
    model_bytes, files = split_associated_files(data)
    graph = read_graph(model_bytes)
    if not graph.subgraphs:
        raise ModelFormatError("the model has no subgraph")
    main = graph.subgraphs[0]
    reader = Reader(model_bytes)
    tensors = reader.tables(reader.tables(reader.root(), 2)[0], 0)  # Model.subgraphs[0].tensors
    infos = [_tensor_info(reader, tensors, index) for index in (*main.inputs, *main.outputs)]
    if len(main.inputs) != 1 or len(main.outputs) != 1:
        raise ModelFormatError(f"the model has {len(main.inputs)} inputs and {len(main.outputs)} outputs; "
                               "fuselite runs image classifiers with one of each")
    return ClassifierModel(
        model_bytes=model_bytes, input=infos[0], output=infos[1],
        output_op=_output_op(graph, main),
        tensor_types=frozenset(TENSOR_TYPES.get(t, f"type {t}") for t in main.types),
        metadata=read_metadata(reader, graph.buffer_data, files),
    )


def split_associated_files(data: bytes) -> tuple[bytes, dict[str, bytes]]:
    """``(the flatbuffer, {name: bytes} of the zip appended after it)``; no zip: ``(data, {})``.

    The metadata writer appends a zip whose offsets count from its own start, so the
    zip's first local header sits where the flatbuffer ends.
    """
    stream = io.BytesIO(data)
    if not zipfile.is_zipfile(stream):
        return data, {}
    try:
        with zipfile.ZipFile(stream) as archive:
            infos = archive.infolist()
            files = {info.filename: _read_member(archive, info) for info in infos}
    except ZIP_ERRORS:
        return data, {}  # not a zip after all: bytes that happen to look like its end record
    start = min((info.header_offset for info in infos), default=len(data))
    if start < 8 or data[4:8] != b"TFL3":
        return data, {}
    return data[:start], files


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """A member's bytes, or empty when it is too large to be a label file."""
    if info.file_size > MAX_LABEL_FILE_BYTES or info.flag_bits & 0x1:
        return b""
    with archive.open(info) as member:
        return member.read(MAX_LABEL_FILE_BYTES + 1)[:MAX_LABEL_FILE_BYTES]


def _tensor_info(reader: Reader, tensors: list[int], index: int) -> TensorInfo:
    """Shape, type and per-tensor quantization of tensor ``index``."""
    if not 0 <= index < len(tensors):
        raise ModelFormatError(f"input/output tensor {index} does not exist")
    table = tensors[index]
    type_code = reader.scalar(table, 1, "<b", 0)  # Tensor.type
    quantization = reader.table(table, 4)  # Tensor.quantization
    quant = None
    if quantization is not None:
        first, count = reader.vector(quantization, 2, 4)  # QuantizationParameters.scale
        zero_points = reader.longs(quantization, 3)
        if count == 1:
            quant = (struct.unpack_from("<f", reader.data, first)[0], zero_points[0] if zero_points else 0)
    return TensorInfo(tuple(reader.ints(table, 0)), TENSOR_TYPES.get(type_code, f"type {type_code}"), quant)


def _output_op(graph, subgraph) -> str:
    """The op that makes the output's values, looking back through DEQUANTIZE and reshapes."""
    producers = {out: op for op in subgraph.operators for out in op.outputs}
    tensor = subgraph.outputs[0]
    for _ in range(len(subgraph.operators) + 1):
        op = producers.get(tensor)
        if op is None or not 0 <= op.opcode < len(graph.opcodes):
            return "none"
        name = builtin_name(graph.opcodes[op.opcode].code)
        if name not in PASS_THROUGH_OPS or not op.inputs:
            return name
        tensor = op.inputs[0]
    return "none"


# --- TFLite Metadata ----------------------------------------------------------------------


def read_metadata(reader: Reader, buffers, files: dict[str, bytes]) -> ClassifierMetadata:
    """The label file and input normalisation from ``TFLITE_METADATA``; empty without it."""
    buffer = _metadata_buffer(reader, len(buffers))
    if buffer is None:
        return ClassifierMetadata()
    meta = Reader(bytes(buffers[buffer]))
    if len(meta.data) < 8 or bytes(meta.data[4:8]) != METADATA_IDENTIFIER:
        raise ModelFormatError(f"the {METADATA_NAME} buffer is not a ModelMetadata flatbuffer")
    root = meta.unpack("<I", 0)
    subgraphs = meta.tables(root, 3)  # ModelMetadata.subgraph_metadata
    inputs = meta.tables(subgraphs[0], 2) if subgraphs else []  # input_tensor_metadata
    outputs = meta.tables(subgraphs[0], 3) if subgraphs else []  # output_tensor_metadata
    mean, std = _normalization(meta, inputs[0]) if inputs else ((), ())
    label_files = [*(_label_files(meta, outputs[0], 6) if outputs else []), *_label_files(meta, root, 6)]
    labels_file = label_files[0] if label_files else ""
    text = files.get(labels_file, b"").decode("utf-8", "replace") if labels_file else ""
    return ClassifierMetadata(meta.string(root, 0) or "", labels_file, text, mean, std)


def _metadata_buffer(reader: Reader, buffer_count: int) -> int | None:
    """The buffer index of the ``TFLITE_METADATA`` entry of ``Model.metadata``, if any."""
    for entry in reader.tables(reader.root(), 6):  # Model.metadata
        if reader.string(entry, 0) == METADATA_NAME:
            buffer = reader.scalar(entry, 1, "<I", 0)
            if not 0 < buffer < buffer_count:
                raise ModelFormatError(f"{METADATA_NAME} points at buffer {buffer}, which does not exist")
            return buffer
    return None


def _normalization(meta: Reader, tensor: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` of the first ``NormalizationOptions`` among a tensor's process units."""
    for unit in meta.tables(tensor, 4):  # TensorMetadata.process_units
        if meta.scalar(unit, 0, "<B", 0) == NORMALIZATION_OPTIONS:  # ProcessUnit.options_type
            options = meta.table(unit, 1)
            if options is not None:
                return _floats(meta, options, 0), _floats(meta, options, 1)
    return (), ()


def _floats(meta: Reader, table: int, index: int) -> tuple[float, ...]:
    first, count = meta.vector(table, index, 4)
    return tuple(struct.unpack_from(f"<{count}f", meta.data, first)) if count else ()


def _label_files(meta: Reader, table: int, index: int) -> list[str]:
    """Names of the ``TENSOR_AXIS_LABELS`` files among a table's associated files, those
    without a locale first (a model may carry translations too)."""
    found = []
    for entry in meta.tables(table, index):
        if meta.scalar(entry, 2, "<b", 0) == TENSOR_AXIS_LABELS and meta.string(entry, 0):
            found.append((bool(meta.string(entry, 3)), meta.string(entry, 0)))
    return [name for _, name in sorted(found, key=lambda item: item[0])]
