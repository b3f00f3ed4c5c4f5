"""Refuses impossible TFLite graphs before any interpreter sees the bytes.

The interpreter trusts a model's graph: ai-edge-litert 2.3 checks that tensor
indices are in range, but an operator that writes its output into its own input,
two operators writing one tensor, or an operator overwriting a constant (which
lives in the read-only model bytes) reach the kernels as they are, and some of
them crash the process (the bundle fuzz found EXPAND_DIMS writing its own input:
SIGSEGV in the first invoke).  A re-signed bundle can carry any such graph, so
:func:`check_graph` reads every subgraph with the bounds-checked reader of
``core/flatbuffer.py`` (:func:`fuselite.flatbuffer.read_graph`) and refuses, for each
subgraph:

* tensor indices out of range in operator inputs and outputs and in the
  subgraph's inputs and outputs (-1, "no tensor", is allowed for an optional
  operator input only);
* buffer and opcode indices out of range;
* an operator output that is also one of its inputs;
* a tensor with more than one producer;
* an operator writing a subgraph input or a constant (buffer-backed) tensor;
* an operator reading a tensor that only a later operator writes (the interpreter
  runs operators in the stored order, so that must be a topological order);
* a tensor declared larger than 1 GiB: the interpreter allocates what the shape
  says (the fuzz's ``shape-huge`` on an activation took 16 s and 6 GB before the model
  ran), which no board has room for;
* and, over the whole graph, non-constant tensors declaring more bytes in all than
  :func:`fuselite.bundle.arena_budget` allows on this machine (512 MB, or a quarter of
  its RAM if less): a 117 kB model of 491 MB tensors, each under the 1 GiB rule, once
  peaked at 1,985 MB.

What no static check sees (type rules, kernel bugs) is left to the child-process
load probe of ``runtime/childprobe.py``.

Example:
    >>> check_graph(bundle.text_encoder_bytes, "text encoder")   # BundleError if damaged
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from fuselite.bundle import ELEMENT_BITS, BundleError, arena_budget, arena_problem, declared_bytes
from fuselite.flatbuffer import (
    Graph,
    ModelFormatError,
    Operator,
    Subgraph,
    builtin_name,
    read_graph,
)

REMEDY = "re-convert the bundle"
MAX_TENSOR_BYTES = 2**30  # far above any edge model's tensor (a 4K float image: 100 MB)
__all__ = ["ELEMENT_BITS", "check_graph", "declared_bytes", "device_ram_bytes", "graph_problems", "read_graph"]
OPTIONAL_TENSOR = -1  # kTfLiteOptionalTensor: an optional operator input left out


def check_graph(model_bytes: bytes, name: str) -> None:
    """Raises :class:`BundleError` naming ``name`` and the first graph defect found."""
    try:
        graph = read_graph(model_bytes)
    except ModelFormatError as exc:
        # Worded like the interpreter's own refusals: no interpreter loads such bytes.
        raise BundleError(f"{name}: the interpreter cannot load it (its flatbuffer is broken: "
                          f"{exc}); {REMEDY}") from None
    problem = next(graph_problems(graph), None) or arena_problem(graph, arena_budget(device_ram_bytes()))
    if problem:
        raise BundleError(f"{name}: {problem}; {REMEDY}")


# --- checking ----------------------------------------------------------------------------


def graph_problems(graph: Graph) -> Iterator[str]:
    """Each defect of ``graph`` as one phrase, subgraph by subgraph."""
    for index, subgraph in enumerate(graph.subgraphs):
        where = f"subgraph {index}: " if len(graph.subgraphs) > 1 else ""
        for problem in _subgraph_problems(subgraph, graph):
            yield where + problem


def _subgraph_problems(sub: Subgraph, graph: Graph) -> Iterator[str]:
    broken = list(_index_problems(sub, graph))
    if broken:  # the checks below follow the indices, so they need them in range
        yield from broken
        return
    for tensor in range(len(sub.buffers)):
        size = declared_bytes(sub, tensor)
        if size > MAX_TENSOR_BYTES:
            yield (f"{_tensor(sub, tensor)} is declared {size / 2**30:.1f} GiB, more than any "
                   f"board holds (at most 1 GiB a tensor)")
    producers: dict[int, int] = {}  # tensor -> the operator that writes it
    for j, op in enumerate(sub.operators):
        for tensor in op.outputs:
            yield from _output_problems(sub, graph, j, op, tensor, producers)
            producers[tensor] = j
    yield from _order_problems(sub, graph, producers)


def _index_problems(sub: Subgraph, graph: Graph) -> Iterator[str]:
    """Indices that point nowhere: buffers, opcodes, tensors (checked before any use)."""
    count = len(sub.buffers)
    for tensor, buffer in enumerate(sub.buffers):
        if buffer >= len(graph.constant_buffers):
            yield (f"{_tensor(sub, tensor)} points at buffer {buffer}, but the model's "
                   f"buffers are {_numbered(len(graph.constant_buffers))}")
    for kind, indices in (("input", sub.inputs), ("output", sub.outputs)):
        for tensor in indices:
            if not 0 <= tensor < count:
                yield f"the graph's {kind} is tensor {tensor}, but its tensors are {_numbered(count)}"
    for j, op in enumerate(sub.operators):
        if op.opcode >= len(graph.opcodes):
            yield (f"operator {j} has opcode index {op.opcode}, but the model's opcodes are "
                   f"{_numbered(len(graph.opcodes))}")
        bad = [t for t in op.inputs if t != OPTIONAL_TENSOR and not 0 <= t < count]
        bad += [t for t in op.outputs if not 0 <= t < count]
        if bad:
            yield f"{_op(graph, j, op)} uses tensor {bad[0]}, but the tensors are {_numbered(count)}"


def _output_problems(sub: Subgraph, graph: Graph, j: int, op: Operator, tensor: int,
                     producers: dict[int, int]) -> Iterator[str]:
    """Why operator ``j`` must not write ``tensor``, if it must not."""
    what = f"{_op(graph, j, op)} writes {_tensor(sub, tensor)}"
    if tensor in op.inputs:
        yield f"{what}, which is also its input"
    elif tensor in producers:
        yield f"{what}, which operator {producers[tensor]} writes too"
    elif tensor in sub.inputs:
        yield f"{what}, which is an input of the graph"
    elif graph.constant_buffers[sub.buffers[tensor]]:
        yield f"{what}, which is a constant"


def _order_problems(sub: Subgraph, graph: Graph, producers: dict[int, int]) -> Iterator[str]:
    """Operators reading a tensor that a later operator writes: the interpreter runs them
    in stored order, so the reader would see memory nobody has written yet."""
    for j, op in enumerate(sub.operators):
        later = [t for t in op.inputs if producers.get(t, -1) > j]
        if later:
            yield (f"{_op(graph, j, op)} reads {_tensor(sub, later[0])} before operator "
                   f"{producers[later[0]]} writes it (operators out of order)")


def device_ram_bytes() -> int | None:
    """This machine's physical RAM in bytes, or None where the system does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _numbered(count: int) -> str:
    return f"numbered 0 to {count - 1}" if count else "missing"


def _op(graph: Graph, j: int, op: Operator) -> str:
    """``operator 1 (EXPAND_DIMS)``: names help whoever reads the message find the spot."""
    if op.opcode >= len(graph.opcodes):
        return f"operator {j}"
    code = graph.opcodes[op.opcode]
    if code.custom:
        return f"operator {j} (custom op {code.custom_name or 'custom op'!r})"
    # Only messages need names, so the enum's JSON is read only here.
    return f"operator {j} ({builtin_name(code.code)})"


def _tensor(sub: Subgraph, tensor: int) -> str:
    name = sub.names[tensor]
    return f"tensor {tensor} ({name!r})" if name else f"tensor {tensor}"
