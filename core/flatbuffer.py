"""The one reader of TFLite flatbuffers: bounds-checked, without TensorFlow or ``flatbuffers``.

Every stage reads models through it: ``devices/compat.py`` and ``convert/modelinfo.py``
read the operator list to tell which runtime loads a model, ``convert/modelinfo.py``
reads the stored kernels to measure sparsity, and ``runtime/graphcheck.py`` reads the
graph to refuse impossible ones before any interpreter sees them.  Every read is
checked against the end of the data, so damaged bytes raise :class:`ModelFormatError`
instead of an ``IndexError``, a ``struct.error`` or a huge allocation.

:class:`Reader` knows the flatbuffer encoding; :func:`read_operator_codes` and
:func:`read_graph` know the TFLite schema (``Model``, ``OperatorCode``, ``SubGraph``,
``Tensor``, ``Buffer``), and :func:`builtin_name` names a builtin operator code.

Flatbuffer layout, in brief: a table starts with a signed offset back to its
vtable; the vtable holds its own size, the table's size, then one uint16 offset per
field (0: absent, the schema default applies).  A field holding a table, vector or
string stores a uint32 offset forward from the field itself; a vector starts with
its uint32 element count.

Example:
    >>> graph = read_graph(model_bytes)
    >>> [builtin_name(c.code) for c in graph.opcodes if not c.custom]
    ['CONV_2D', 'FULLY_CONNECTED', ...]
"""

from __future__ import annotations

import functools
import json
import struct
from dataclasses import dataclass
from pathlib import Path

TFLITE_IDENTIFIER = b"TFL3"
# BuiltinOperator enum names indexed by code, from TensorFlow's schema (package data).
BUILTIN_NAMES_FILE = Path(__file__).resolve().parent / "builtin_ops.json"
CUSTOM_CODE = 32  # BuiltinOperator.CUSTOM: the op is named by custom_code


class ModelFormatError(ValueError):
    """Bytes that are not a readable TFLite flatbuffer."""


class Reader:
    """Bounds-checked access to the tables, vectors and strings of one flatbuffer."""

    def __init__(self, data: bytes):
        self.data = memoryview(data)

    def unpack(self, fmt: str, pos: int) -> int:
        """The one value of struct format ``fmt`` at ``pos``."""
        if pos < 0 or pos + struct.calcsize(fmt) > len(self.data):
            raise ModelFormatError(f"offset {pos} is outside the {len(self.data)}-byte model")
        return struct.unpack_from(fmt, self.data, pos)[0]

    def root(self) -> int:
        """Position of the root table (the TFLite ``Model``), after checking the identifier."""
        if len(self.data) < 8 or bytes(self.data[4:8]) != TFLITE_IDENTIFIER:
            raise ModelFormatError("not a TFLite model (no 'TFL3' file identifier)")
        model = self.unpack("<I", 0)
        if model < 8:  # the root table follows the offset and the file identifier
            raise ModelFormatError("not a TFLite model (bad root offset)")
        return model

    def field(self, table: int, index: int) -> int | None:
        """Position of field ``index`` of the table at ``table``, or None when absent."""
        vtable = table - self.unpack("<i", table)
        size = self.unpack("<H", vtable)
        if size % 2:
            raise ModelFormatError(f"table at offset {table} has a broken vtable")
        entry = 4 + 2 * index
        if entry >= size:  # a short vtable (even one of size 0) leaves the field absent,
            return None  # as the flatbuffers library and the interpreter read it
        offset = self.unpack("<H", vtable + entry)
        return table + offset if offset else None

    def scalar(self, table: int, index: int, fmt: str, default: int) -> int:
        """A scalar field's value, or the schema default when absent."""
        pos = self.field(table, index)
        return default if pos is None else self.unpack(fmt, pos)

    def vector(self, table: int, index: int, item_size: int) -> tuple[int, int]:
        """``(position of the first element, element count)`` of a vector field; ``(0, 0)``
        when absent.  The whole vector must lie inside the data."""
        pos = self.field(table, index)
        if pos is None:
            return 0, 0
        start = pos + self.unpack("<I", pos)
        count = self.unpack("<I", start)
        if start + 4 + count * item_size > len(self.data):
            raise ModelFormatError(f"vector of {count} entries runs past the end of the model")
        return start + 4, count

    def table(self, table: int, index: int) -> int | None:
        """Position of the table held by field ``index``, or None when absent."""
        pos = self.field(table, index)
        return None if pos is None else pos + self.unpack("<I", pos)

    def tables(self, table: int, index: int) -> list[int]:
        """Positions of the tables in the vector held by field ``index``."""
        first, count = self.vector(table, index, 4)
        items = (first + 4 * i for i in range(count))
        return [item + self.unpack("<I", item) for item in items]

    def ints(self, table: int, index: int) -> list[int]:
        """The values of an int32 vector field (empty when absent)."""
        first, count = self.vector(table, index, 4)
        return list(struct.unpack_from(f"<{count}i", self.data, first)) if count else []

    def longs(self, table: int, index: int) -> list[int]:
        """The values of an int64 vector field (empty when absent)."""
        first, count = self.vector(table, index, 8)
        return list(struct.unpack_from(f"<{count}q", self.data, first)) if count else []

    def ubytes(self, table: int, index: int) -> memoryview:
        """The bytes of a ubyte vector field, without copying (empty when absent)."""
        first, count = self.vector(table, index, 1)
        return self.data[first : first + count]

    def string(self, table: int, index: int) -> str | None:
        """A string field's text, or None when absent."""
        first, length = self.vector(table, index, 1)
        if not first:
            return None
        return bytes(self.data[first : first + length]).decode("utf-8", "replace")


# --- the TFLite schema ---------------------------------------------------------------------


@functools.cache
def builtin_names() -> tuple[str, ...]:
    """BuiltinOperator enum names indexed by code (from TensorFlow's schema)."""
    return tuple(json.loads(BUILTIN_NAMES_FILE.read_text())["names"])


def builtin_name(code: int) -> str:
    """``"CONV_2D"`` for 3; ``"BUILTIN_<code>"`` for a code this table does not know."""
    names = builtin_names()
    return names[code] if 0 <= code < len(names) else f"BUILTIN_{code}"


@dataclass(frozen=True)
class OperatorCode:
    """One entry of ``Model.operator_codes``.

    Attributes:
        code: The builtin operator code (``CUSTOM_CODE`` for a custom op).
        version: The operator version the model asks for.
        custom_name: A custom op's ``custom_code``, else ``None``.
    """

    code: int
    version: int
    custom_name: str | None

    @property
    def custom(self) -> bool:
        """Whether the op is a custom one (resolved by name, not by builtin code)."""
        return self.code == CUSTOM_CODE


@dataclass(frozen=True)
class Operator:
    """One node: its opcode index and the tensors it reads and writes."""

    opcode: int
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]


@dataclass(frozen=True)
class Subgraph:
    """The parts of ``SubGraph`` that fuselite reads, one entry per tensor where plural.

    Attributes:
        buffers: The buffer index of each tensor.
        names: The name of each tensor.
        shapes: The declared shape of each tensor.
        types: The ``TensorType`` of each tensor.
        zero_points: The first quantization zero point of each tensor (0 when none).
        sparse: Whether each tensor is stored sparse (``Tensor.sparsity`` present): its
            buffer then holds only the kept values, not ``prod(shape)`` of them.
        inputs: Tensor indices of the subgraph's inputs.
        outputs: Tensor indices of its outputs.
        operators: Its operators, in execution order.
    """

    buffers: tuple[int, ...]
    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    types: tuple[int, ...]
    zero_points: tuple[int, ...]
    sparse: tuple[bool, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    operators: tuple[Operator, ...]


@dataclass(frozen=True)
class Graph:
    """A model's subgraphs, its buffers and its operator codes.

    Attributes:
        subgraphs: Every ``SubGraph``; the first is the main one.
        constant_buffers: Whether each buffer holds constant data (inline or, in models
            over 2 GB, at an offset).
        buffer_data: The inline bytes of each buffer (empty when none), not copied.
        opcodes: ``Model.operator_codes``.
    """

    subgraphs: tuple[Subgraph, ...]
    constant_buffers: tuple[bool, ...]
    buffer_data: tuple[memoryview, ...]
    opcodes: tuple[OperatorCode, ...]


def read_operator_codes(data: bytes) -> tuple[OperatorCode, ...]:
    """``Model.operator_codes`` of a TFLite flatbuffer (trailing bytes are ignored).

    Raises :class:`ModelFormatError` when ``data`` is not a readable TFLite model.
    """
    reader = Reader(data)
    return tuple(_operator_code(reader, c) for c in reader.tables(reader.root(), 1))


def read_graph(data: bytes) -> Graph:
    """The graph of a TFLite flatbuffer; :class:`ModelFormatError` when it cannot be read."""
    reader = Reader(data)
    model = reader.root()
    buffers = reader.tables(model, 4)  # Model.buffers
    return Graph(
        subgraphs=tuple(_subgraph(reader, s) for s in reader.tables(model, 2)),
        constant_buffers=tuple(_holds_data(reader, b) for b in buffers),
        buffer_data=tuple(reader.ubytes(b, 0) for b in buffers),  # Buffer.data
        opcodes=tuple(_operator_code(reader, c) for c in reader.tables(model, 1)),
    )


def _operator_code(reader: Reader, table: int) -> OperatorCode:
    # Codes above 127 live only in the int32 field; the int8 one holds 127 then.
    code = max(reader.scalar(table, 0, "<b", 0), reader.scalar(table, 3, "<i", 0))
    custom_name = reader.string(table, 1) if code == CUSTOM_CODE else None
    return OperatorCode(code, reader.scalar(table, 2, "<i", 1), custom_name)


def _subgraph(reader: Reader, table: int) -> Subgraph:
    tensors = reader.tables(table, 0)  # SubGraph.tensors
    operators = tuple(
        Operator(reader.scalar(op, 0, "<I", 0), tuple(reader.ints(op, 1)), tuple(reader.ints(op, 2)))
        for op in reader.tables(table, 3)  # SubGraph.operators
    )
    return Subgraph(
        buffers=tuple(reader.scalar(t, 2, "<I", 0) for t in tensors),  # Tensor.buffer
        names=tuple(reader.string(t, 3) or "" for t in tensors),  # Tensor.name
        shapes=tuple(tuple(reader.ints(t, 0)) for t in tensors),  # Tensor.shape
        types=tuple(reader.scalar(t, 1, "<b", 0) for t in tensors),  # Tensor.type
        zero_points=tuple(_zero_point(reader, t) for t in tensors),
        sparse=tuple(reader.field(t, 6) is not None for t in tensors),  # Tensor.sparsity
        inputs=tuple(reader.ints(table, 1)),
        outputs=tuple(reader.ints(table, 2)),
        operators=operators,
    )


def _zero_point(reader: Reader, tensor: int) -> int:
    """The first of ``Tensor.quantization.zero_point``; 0 without quantization."""
    quantization = reader.table(tensor, 4)
    zero_points = reader.longs(quantization, 3) if quantization is not None else []
    return zero_points[0] if zero_points else 0


def _holds_data(reader: Reader, buffer: int) -> bool:
    """Whether a Buffer holds constant data: inline bytes, or (models over 2 GB) an offset."""
    _, size = reader.vector(buffer, 0, 1)  # Buffer.data
    offset = reader.scalar(buffer, 1, "<Q", 0)  # Buffer.offset; 0 and 1 mean "none"
    return size > 0 or (offset > 1 and reader.scalar(buffer, 2, "<Q", 0) > 0)
