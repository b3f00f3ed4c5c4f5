"""A small, bounds-checked reader of TFLite flatbuffers, without TensorFlow or ``flatbuffers``.

Both sides read models by hand: ``devices/compat.py`` reads the operator list to
tell which runtime loads a model, and ``runtime/graphcheck.py`` reads the graph to
refuse impossible ones before any interpreter sees them.  Every read is checked
against the end of the data, so damaged bytes raise :class:`ModelFormatError`
instead of an ``IndexError``, a ``struct.error`` or a huge allocation.

Flatbuffer layout, in brief: a table starts with a signed offset back to its
vtable; the vtable holds its own size, the table's size, then one uint16 offset per
field (0: absent, the schema default applies).  A field holding a table, vector or
string stores a uint32 offset forward from the field itself; a vector starts with
its uint32 element count.

Example:
    >>> reader = Reader(model_bytes)
    >>> model = reader.root()                  # the Model table
    >>> subgraphs = reader.tables(model, 2)    # Model.subgraphs
"""

from __future__ import annotations

import struct

TFLITE_IDENTIFIER = b"TFL3"


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

    def tables(self, table: int, index: int) -> list[int]:
        """Positions of the tables in the vector held by field ``index``."""
        first, count = self.vector(table, index, 4)
        items = (first + 4 * i for i in range(count))
        return [item + self.unpack("<I", item) for item in items]

    def ints(self, table: int, index: int) -> list[int]:
        """The values of an int32 vector field (empty when absent)."""
        first, count = self.vector(table, index, 4)
        return list(struct.unpack_from(f"<{count}i", self.data, first)) if count else []

    def string(self, table: int, index: int) -> str | None:
        """A string field's text, or None when absent."""
        first, length = self.vector(table, index, 1)
        if not first:
            return None
        return bytes(self.data[first : first + length]).decode("utf-8", "replace")
