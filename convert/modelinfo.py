"""Facts read back from a converted flatbuffer: op list, loadable runtimes, sparsity.

The op list and runtime tables come from :mod:`fuselite.devices.compat` (the same
code ``fuselite devices check`` uses on a board), so convert and devices never
disagree about where a bundle loads; the stored kernels are read with the same
flatbuffer reader, :func:`fuselite.flatbuffer.read_graph`.  ``--target`` accepts a runtime key or a
board profile name (:mod:`fuselite.devices.profiles`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fuselite.devices.compat import (
    OpCode,
    check_ops,
    get_runtime,
    list_runtimes,
    ops_to_strings,
    read_ops,
)
from fuselite.devices.profiles import get_profile, list_profiles
from fuselite.errors import UserError
from fuselite.flatbuffer import Graph, Subgraph, builtin_name, read_graph

# Operators whose second input is a weight kernel (sparsity is measured over these).
KERNEL_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
# TensorType enum value -> numpy dtype, for the types a kernel is stored in.
_KERNEL_DTYPES = {0: np.float32, 1: np.float16, 3: np.uint8, 9: np.int8}


@dataclass(frozen=True)
class Target:
    """What ``--target`` names: a board profile or a bare runtime.

    Attributes:
        name: As given (``"raspberry-pi-32bit"`` or ``"tflite-runtime-2.14"``).
        runtime: The runtime key whose op table decides.
    """

    name: str
    runtime: str


def target_names() -> list[str]:
    """Every value ``--target`` accepts: runtime keys, then profile names."""
    return [*list_runtimes(), *list_profiles()]


def resolve_target(name: str) -> Target:
    """The target called ``name``; unknown names raise UserError listing the known ones."""
    if name in list_runtimes():
        return Target(name, get_runtime(name).key)
    if name in list_profiles():
        return Target(name, get_profile(name).runtime)
    raise UserError(f"unknown --target {name!r}; known: {', '.join(target_names())}")


def model_ops(*models: bytes) -> tuple[OpCode, ...]:
    """The union of the operator lists of ``models`` (a board loads all of them)."""
    return tuple(sorted({op for model in models for op in read_ops(model)}))


def runtime_problems(ops: tuple[OpCode, ...]) -> dict[str, list[str]]:
    """Maps every runtime key to the reasons it cannot load ``ops`` (empty when it can)."""
    return {key: check_ops(ops, key) for key in list_runtimes()}


def op_strings(ops: tuple[OpCode, ...]) -> list[str]:
    """``["CONV_2D v3", ...]``, as stored in the manifest."""
    return ops_to_strings(ops)


def kernel_sparsity(model_bytes: bytes) -> float:
    """Share of zeros among the stored weights of conv and fully-connected kernels.

    Read from the flatbuffer itself, so rounding to int8 counts, a float16 kernel is
    found behind its DEQUANTIZE op, and a kernel stored sparse (``pruned-fp32``, behind
    its DENSIFY op) counts every value its storage left out as a zero.  Shared buffers
    count once.
    """
    graph = read_graph(model_bytes)
    zeros = total = 0
    for subgraph in graph.subgraphs:
        producers = {out: op for op in subgraph.operators for out in op.outputs}
        seen = set()
        for op in subgraph.operators:
            code = graph.opcodes[op.opcode]
            if code.custom or builtin_name(code.code) not in KERNEL_OPS:
                continue
            tensor = _stored_tensor(graph, subgraph, producers, op.inputs[1])
            if tensor is None or subgraph.buffers[tensor] in seen:
                continue
            seen.add(subgraph.buffers[tensor])
            values = _values(graph, subgraph, tensor)
            kept_zeros = int(np.count_nonzero(values == subgraph.zero_points[tensor]))
            size = _dense_size(subgraph, tensor, values.size)
            zeros += kept_zeros + size - values.size
            total += size
    return zeros / total if total else 0.0


def _stored_tensor(graph: Graph, subgraph: Subgraph, producers: dict, index: int) -> int | None:
    """The constant tensor holding a kernel, following a DEQUANTIZE back to its input."""
    if len(graph.buffer_data[subgraph.buffers[index]]):
        return index
    producer = producers.get(index)
    if producer is not None and producer.inputs:
        source = producer.inputs[0]
        if len(graph.buffer_data[subgraph.buffers[source]]):
            return source
    return None


def _dense_size(subgraph: Subgraph, tensor: int, stored: int) -> int:
    """How many values the kernel has once densified: its shape's product when it is
    stored sparse (the storage keeps only some of them), else what is stored."""
    if not subgraph.sparse[tensor]:
        return stored
    return max(int(np.prod(subgraph.shapes[tensor], dtype=np.int64)), stored)


def _values(graph: Graph, subgraph: Subgraph, tensor: int) -> np.ndarray:
    """The stored values of a constant tensor (the zero point that means 0.0 is in
    ``subgraph.zero_points``: TFLite's int8 kernels are symmetric, so 0)."""
    dtype = _KERNEL_DTYPES.get(subgraph.types[tensor])
    if dtype is None:
        raise ValueError(f"kernel stored as TensorType {subgraph.types[tensor]}, which sparsity does not read")
    return np.frombuffer(graph.buffer_data[subgraph.buffers[tensor]], dtype=dtype)
