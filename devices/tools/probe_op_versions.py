"""Measures which builtin op versions a TFLite interpreter loads; writes an op table.

A development tool, not part of the installed package.  For every builtin
operator code and version 1..``--max-version`` it builds a model whose
``operator_codes`` hold just that (code, version) pair and an empty subgraph,
then asks the interpreter to load it.  The interpreter resolves every operator
code when it is constructed, so an unsupported version fails with "Didn't find
op for builtin opcode ..." - exactly what a real model with that op would hit.

Run it with the interpreter to be measured, in an environment that also has the
``flatbuffers`` package (a dependency of ai-edge-litert)::

    python devices/tools/probe_op_versions.py --runtime ai-edge-litert \\
        --out devices/optables/ai-edge-litert.json
    /tmp/tflrt214/bin/python devices/tools/probe_op_versions.py --runtime tflite-runtime \\
        --out devices/optables/tflite-runtime-2.14.json

Only the interpreter and ``flatbuffers`` are imported: no TensorFlow.

This script stays standalone on purpose, and is the one exception to "only
``fuselite.interpreter`` imports the interpreter": it must measure the runtime named
by ``--runtime`` (not whichever one the fallback chain would pick), and it runs from
the checkout in a throwaway environment that holds only that runtime and
``flatbuffers``, without fuselite installed.  It reads the op names from the
checkout's ``core/builtin_ops.json`` (the table :mod:`fuselite.flatbuffer` uses).
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.metadata
import json
import platform
import sys
from pathlib import Path

import flatbuffers

NAMES_FILE = Path(__file__).resolve().parents[2] / "core" / "builtin_ops.json"
PACKAGES = {
    "ai-edge-litert": "ai_edge_litert.interpreter",
    "tflite-runtime": "tflite_runtime.interpreter",
}
# Codes that are not kernels: CUSTOM is resolved by name, the other two are markers.
NOT_KERNELS = {"CUSTOM", "DELEGATE", "PLACEHOLDER_FOR_GREATER_OP_CODES"}


def model_with_opcode(code: int, version: int) -> bytes:
    """A TFLite model with one operator code (``code``, ``version``) and an empty subgraph."""
    b = flatbuffers.Builder(256)
    b.StartObject(4)  # OperatorCode
    b.PrependInt32Slot(3, code, 0)  # builtin_code
    b.PrependInt32Slot(2, version, 1)  # version
    b.PrependInt8Slot(0, min(code, 127), 0)  # deprecated_builtin_code
    opcode = b.EndObject()
    b.StartVector(4, 1, 4)
    b.PrependUOffsetTRelative(opcode)
    opcodes = b.EndVector()
    empty = [_empty_int_vector(b) for _ in range(3)]
    b.StartVector(4, 0, 4)
    tensors = b.EndVector()
    b.StartVector(4, 0, 4)
    operators = b.EndVector()
    b.StartObject(5)  # SubGraph
    b.PrependUOffsetTRelativeSlot(0, tensors, 0)
    b.PrependUOffsetTRelativeSlot(1, empty[0], 0)
    b.PrependUOffsetTRelativeSlot(2, empty[1], 0)
    b.PrependUOffsetTRelativeSlot(3, operators, 0)
    subgraph = b.EndObject()
    b.StartVector(4, 1, 4)
    b.PrependUOffsetTRelative(subgraph)
    subgraphs = b.EndVector()
    b.StartObject(1)  # Buffer 0: the empty sentinel every model has
    buffer = b.EndObject()
    b.StartVector(4, 1, 4)
    b.PrependUOffsetTRelative(buffer)
    buffers = b.EndVector()
    b.StartObject(5)  # Model
    b.PrependUint32Slot(0, 3, 0)
    b.PrependUOffsetTRelativeSlot(1, opcodes, 0)
    b.PrependUOffsetTRelativeSlot(2, subgraphs, 0)
    b.PrependUOffsetTRelativeSlot(4, buffers, 0)
    model = b.EndObject()
    b.Finish(model, file_identifier=b"TFL3")
    return bytes(b.Output())


def _empty_int_vector(b: flatbuffers.Builder) -> int:
    b.StartVector(4, 0, 4)
    return b.EndVector()


def loads(interpreter_cls, code: int, version: int) -> bool:
    """True when the interpreter accepts a model using builtin ``code`` at ``version``."""
    try:
        interpreter_cls(model_content=model_with_opcode(code, version))
    except (ValueError, RuntimeError):
        return False
    return True


def probe(interpreter_cls, names: list[str], max_version: int) -> dict[str, list[int]]:
    """Maps each loadable op name to its loadable versions."""
    table = {}
    for code, name in enumerate(names):
        if name in NOT_KERNELS:
            continue
        versions = [v for v in range(1, max_version + 1) if loads(interpreter_cls, code, v)]
        if versions:
            table[name] = versions
    return table


def main() -> int:
    """Probes the chosen runtime and writes its op table as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime", choices=sorted(PACKAGES), required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--max-version", type=int, default=30)
    args = parser.parse_args()
    interpreter_cls = importlib.import_module(PACKAGES[args.runtime]).Interpreter
    names = json.loads(NAMES_FILE.read_text())["names"]
    table = probe(interpreter_cls, names, args.max_version)
    gaps = {n: v for n, v in table.items() if v != list(range(v[0], v[-1] + 1))}
    version = importlib.metadata.version(args.runtime)
    # Keep the hand-written description of the runtime; replace only what was measured.
    result = json.loads(args.out.read_text()) if args.out.exists() else {}
    result |= {
        "probed": f"{args.runtime} {version}, Python {platform.python_version()}, "
        f"{platform.machine()}, {datetime.date.today().isoformat()}",
        "min_versions": {n: v[0] for n, v in sorted(table.items()) if v[0] != 1},
        "max_versions": {n: v[-1] for n, v in sorted(table.items())},
        "gaps": gaps,
    }
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{len(table)} loadable ops written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
