"""TFLite flatbuffers with exactly one semantic defect each, for the bundle fuzz.

Bit flips mostly break a flatbuffer's structure; these keep the structure valid
(re-serialised through the TFLite schema's object API, which ai-edge-litert ships as
``ai_edge_litert.schema_py_generated``) and change one meaning: a tensor index that
points nowhere, a shape that no longer fits its weights, a zero point outside its
type's range, an operator code that does not exist.  A flatbuffer verifier accepts
all of them; only the interpreter's own checks stand between them and memory.

Example:
    >>> for name, model in defects(model_bytes):
    ...     ...  # "tensor3:zero-point-out-of-range", b"...TFL3..."
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

FILE_IDENTIFIER = b"TFL3"
INT8, UINT8, FLOAT32 = schema.TensorType.INT8, schema.TensorType.UINT8, schema.TensorType.FLOAT32


def parse(model_bytes: bytes) -> schema.ModelT:
    """The model as mutable Python objects."""
    return schema.ModelT.InitFromObj(schema.Model.GetRootAs(model_bytes, 0))


def serialise(model: schema.ModelT) -> bytes:
    """The objects back as a flatbuffer with the TFLite file identifier."""
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=FILE_IDENTIFIER)
    return bytes(builder.Output())


def mutated(model_bytes: bytes, change: Callable[[schema.ModelT], None]) -> bytes:
    """A fresh copy of the model with ``change`` applied."""
    model = parse(model_bytes)
    change(model)
    return serialise(model)


def _put(obj, attr: str, index: int, value: int | Callable[[int], int]) -> None:
    """Sets ``obj.attr[index]`` on a writable copy (the parsed arrays are read-only)."""
    array = np.array(getattr(obj, attr))
    array[index] = value(array[index]) if callable(value) else value
    setattr(obj, attr, array)


def _tensor_changes(tensor: schema.TensorT, count: int, buffers: int) -> dict[str, Callable]:
    changes: dict[str, Callable] = {
        "shape-doubled": lambda t: _put(t, "shape", -1, lambda n: n * 2),
        "shape-huge": lambda t: _put(t, "shape", 0, 2**31 - 1),
        "shape-negative": lambda t: _put(t, "shape", -1, -7),
        "rank-0": lambda t: setattr(t, "shape", np.zeros(0, np.int32)),
        "buffer-out-of-range": lambda t: setattr(t, "buffer", buffers + 7),
        "type-unknown": lambda t: setattr(t, "type", 99),
        "type-swapped": lambda t: setattr(t, "type", FLOAT32 if t.type != FLOAT32 else INT8),
    }
    if tensor.shape is None or len(tensor.shape) == 0:
        for name in ("shape-doubled", "shape-huge", "shape-negative"):
            del changes[name]
    q = tensor.quantization
    if q is not None and q.scale is not None and len(q.scale):
        bad_zero_point = -3712 if tensor.type == INT8 else 1000
        changes.update({
            "zero-point-out-of-range": lambda t: _set_quant(t, zero_point=bad_zero_point),
            "scale-zero": lambda t: _set_quant(t, scale=0.0),
            "scale-negative": lambda t: _set_quant(t, scale=-1.0),
            "scale-nan": lambda t: _set_quant(t, scale=math.nan),
            "quant-dimension-out-of-range": lambda t: setattr(t.quantization,
                                                              "quantizedDimension", 9),
        })
    return changes


def _set_quant(tensor: schema.TensorT, scale: float | None = None,
               zero_point: int | None = None) -> None:
    q = tensor.quantization
    if scale is not None:
        q.scale = np.full(len(q.scale), scale, np.float32)
    if zero_point is not None:
        q.zeroPoint = np.full(len(q.zeroPoint), zero_point, np.int64)


def _operator_changes(tensors: int, opcodes: int) -> dict[str, Callable]:
    return {
        "input-out-of-range": lambda op: _put(op, "inputs", 0, tensors + 3),
        "input-negative": lambda op: _put(op, "inputs", 0, -5),
        "output-out-of-range": lambda op: _put(op, "outputs", 0, tensors + 3),
        "output-is-its-input": lambda op: _put(op, "outputs", 0, int(op.inputs[0])),
        "opcode-out-of-range": lambda op: setattr(op, "opcodeIndex", opcodes + 2),
        "no-inputs": lambda op: setattr(op, "inputs", np.zeros(0, np.int32)),
        "options-dropped": lambda op: (setattr(op, "builtinOptionsType", 0),
                                       setattr(op, "builtinOptions", None)),
    }


def _graph_changes(tensors: int) -> dict[str, Callable]:
    return {
        "graph-input-out-of-range": lambda g: _put(g, "inputs", 0, tensors + 5),
        "graph-output-out-of-range": lambda g: _put(g, "outputs", 0, tensors + 5),
        "graph-output-negative": lambda g: _put(g, "outputs", 0, -3),
        "graph-no-outputs": lambda g: setattr(g, "outputs", np.zeros(0, np.int32)),
        "graph-no-operators": lambda g: setattr(g, "operators", []),
    }


def defects(model_bytes: bytes) -> Iterator[tuple[str, bytes]]:
    """``(name, model)`` for the unchanged round trip, then one defect at a time."""
    model = parse(model_bytes)
    graph = model.subgraphs[0]
    tensors, opcodes, buffers = len(graph.tensors), len(model.operatorCodes), len(model.buffers)
    yield "roundtrip", serialise(model)
    for i, tensor in enumerate(graph.tensors):
        for name, change in _tensor_changes(tensor, tensors, buffers).items():
            yield (f"tensor{i}:{name}",
                   mutated(model_bytes, lambda m, i=i, c=change: c(m.subgraphs[0].tensors[i])))
    for j in range(len(graph.operators)):
        for name, change in _operator_changes(tensors, opcodes).items():
            yield (f"op{j}:{name}",
                   mutated(model_bytes, lambda m, j=j, c=change: c(m.subgraphs[0].operators[j])))
    for name, change in _graph_changes(tensors).items():
        yield name, mutated(model_bytes, lambda m, c=change: c(m.subgraphs[0]))
    yield from _buffer_and_opcode_defects(model_bytes, model)


def _buffer_and_opcode_defects(model_bytes: bytes, model: schema.ModelT) -> Iterator:
    for k, buffer in enumerate(model.buffers):
        if buffer.data is not None and len(buffer.data) > 1:
            yield (f"buffer{k}:half-data", mutated(
                model_bytes, lambda m, k=k: setattr(m.buffers[k], "data",
                                                    m.buffers[k].data[: len(m.buffers[k].data) // 2])))
            yield f"buffer{k}:no-data", mutated(
                model_bytes, lambda m, k=k: setattr(m.buffers[k], "data", None))
    for k in range(len(model.operatorCodes)):
        yield f"opcode{k}:builtin-unknown", mutated(
            model_bytes, lambda m, k=k: (setattr(m.operatorCodes[k], "builtinCode", 9999),
                                         setattr(m.operatorCodes[k], "deprecatedBuiltinCode", 127)))
        yield f"opcode{k}:version-99", mutated(
            model_bytes, lambda m, k=k: setattr(m.operatorCodes[k], "version", 99))


def _first_operator(model: schema.ModelT, builtin: int) -> schema.OperatorT:
    graph = model.subgraphs[0]
    for op in graph.operators:
        code = model.operatorCodes[op.opcodeIndex]
        if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin:
            return op
    raise LookupError(f"no operator with builtin code {builtin}")


def output_aliasing_input(model_bytes: bytes, builtin: int) -> bytes:
    """The first ``builtin`` operator made to write its output into its own first input."""
    return mutated(model_bytes, lambda m: _put(
        _first_operator(m, builtin), "outputs", 0, int(_first_operator(m, builtin).inputs[0])))


def output_retyped(model_bytes: bytes, builtin: int, tensor_type: int) -> bytes:
    """The output tensor of the first ``builtin`` operator declared as ``tensor_type``."""
    def change(m: schema.ModelT) -> None:
        index = int(_first_operator(m, builtin).outputs[0])
        m.subgraphs[0].tensors[index].type = tensor_type

    return mutated(model_bytes, change)


# --- hand-built graphs -----------------------------------------------------------------
#
# The smallest runnable model with two operators, so each graph defect can be built on
# purpose: x [1, 4] -> EXPAND_DIMS(x, axis0) -> h [1, 1, 4] -> EXPAND_DIMS(h, axis1) -> y.
X, AXIS0, H, Y, AXIS1 = range(5)  # tensor indices of chain_model()


def build_model(tensors: list[tuple[str, list[int], int, int]], operators: list[tuple],
                inputs: list[int], outputs: list[int], buffers: list[bytes | None],
                builtins: tuple[int, ...] = (schema.BuiltinOperator.EXPAND_DIMS,),
                extra_subgraphs: int = 0) -> bytes:
    """A flatbuffer from plain lists: tensors ``(name, shape, type, buffer)``, operators
    ``(opcode index, inputs, outputs)``; ``extra_subgraphs`` copies of the main one follow it."""
    model = schema.ModelT()
    model.version = 3
    model.operatorCodes = [_opcode(b) for b in builtins]
    model.subgraphs = [_subgraph(tensors, operators, inputs, outputs)
                       for _ in range(1 + extra_subgraphs)]
    model.buffers = [_buffer(data) for data in buffers]
    return serialise(model)


def chain_model(**changes) -> bytes:
    """The two-operator chain above; ``changes`` replaces any argument of build_model
    (``operators=...``), or is called on a copy of it (``edit=lambda parts: ...``)."""
    axis = np.array([1], np.int32).tobytes()
    parts = {
        "tensors": [("x", [1, 4], FLOAT32, 0), ("axis0", [1], schema.TensorType.INT32, 1),
                    ("h", [1, 1, 4], FLOAT32, 0), ("y", [1, 1, 1, 4], FLOAT32, 0),
                    ("axis1", [1], schema.TensorType.INT32, 2)],
        "operators": [(0, [X, AXIS0], [H]), (0, [H, AXIS1], [Y])],
        "inputs": [X], "outputs": [Y], "buffers": [None, axis, axis],
    }
    edit = changes.pop("edit", None)
    parts.update(changes)
    if edit is not None:
        edit(parts)
    return build_model(**parts)


def _opcode(builtin: int) -> schema.OperatorCodeT:
    code = schema.OperatorCodeT()
    code.builtinCode, code.deprecatedBuiltinCode, code.version = builtin, min(builtin, 127), 1
    return code


def _subgraph(tensors, operators, inputs, outputs) -> schema.SubGraphT:
    graph = schema.SubGraphT()
    graph.tensors = []
    for name, shape, tensor_type, buffer in tensors:
        tensor = schema.TensorT()
        tensor.name, tensor.shape, tensor.type, tensor.buffer = (
            name, np.array(shape, np.int32), tensor_type, buffer)
        graph.tensors.append(tensor)
    graph.operators = []
    for opcode, op_inputs, op_outputs in operators:
        op = schema.OperatorT()
        op.opcodeIndex = opcode
        op.inputs, op.outputs = np.array(op_inputs, np.int32), np.array(op_outputs, np.int32)
        graph.operators.append(op)
    graph.inputs, graph.outputs = np.array(inputs, np.int32), np.array(outputs, np.int32)
    return graph


def _buffer(data: bytes | None) -> schema.BufferT:
    buffer = schema.BufferT()
    buffer.data = None if data is None else np.frombuffer(data, np.uint8)
    return buffer
