"""Hand-made TFLite flatbuffers that only declare operator codes (no TensorFlow).

A module of its own, not ``conftest``: several test folders have a ``conftest.py``,
and ``from conftest import ...`` would find whichever one was imported first.
"""

from __future__ import annotations

from fuselite.flatbuffer import builtin_names


def opcode_model(opcodes: list[tuple[int, int, int, str | None]]) -> bytes:
    """A TFLite flatbuffer whose operator_codes are ``(deprecated, builtin, version, custom)``.

    Built with the ``flatbuffers`` package (an ai-edge-litert dependency), independent
    of the reader under test.
    """
    import flatbuffers

    b = flatbuffers.Builder(256)
    names = [b.CreateString(custom) if custom else None for *_, custom in opcodes]
    tables = []
    for (deprecated, builtin, version, _), name in zip(opcodes, names):
        b.StartObject(4)
        if builtin is not None:
            b.PrependInt32Slot(3, builtin, -1)
        b.PrependInt32Slot(2, version, -1)
        if name is not None:
            b.PrependUOffsetTRelativeSlot(1, name, 0)
        b.PrependInt8Slot(0, deprecated, -1)
        tables.append(b.EndObject())
    b.StartVector(4, len(tables), 4)
    for table in reversed(tables):
        b.PrependUOffsetTRelative(table)
    codes = b.EndVector()
    b.StartObject(2)
    b.PrependUOffsetTRelativeSlot(1, codes, 0)
    b.PrependUint32Slot(0, 3, 0)
    b.Finish(b.EndObject(), file_identifier=b"TFL3")
    return bytes(b.Output())


def code(name: str) -> int:
    """The builtin code of op ``name``."""
    return builtin_names().index(name)
