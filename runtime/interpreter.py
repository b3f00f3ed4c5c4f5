"""The runtime's model loader: a TFLite model checked before it runs.

The interpreter itself (ai_edge_litert, else tflite_runtime) comes from
:mod:`fuselite.interpreter`, the one module that imports it.

:class:`TfliteModel` wraps one single-input model with one output (or an embedding
and a label map, :func:`fuselite.maps.split_outputs`) loaded from
bytes that :func:`fuselite.bundle.read_bundle` has already verified.  A bundle can be
re-signed, so verified bytes may still hold a model that crashes the interpreter;
before this process runs any of it, the model passes, in order: the flatbuffer
header, the graph check (``graphcheck.py``: indices, writers, order, sizes), the
quantization check (a delegate-free interpreter that only parses), and the load
probe (``childprobe.py``: the real load in a child process, whose crash is a
:class:`BundleError`, not ours).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from fuselite.bundle import BundleError
from fuselite.flatbuffer import TFLITE_IDENTIFIER
from fuselite.interpreter import (
    interpreter_class,
    interpreter_module,
    interpreter_name,
    tensor_quantization,
)
from fuselite.maps import split_outputs
from fuselite.runtime.childprobe import probe_load
from fuselite.runtime.graphcheck import check_graph

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TensorSpec:
    """What a model expects or returns at one tensor.

    Attributes:
        index: Tensor index inside the interpreter.
        shape: Tensor shape, batch first.
        dtype: numpy dtype.
        quantization: ``(scale, zero_point)`` of a quantized tensor, else ``None``.
    """

    index: int
    shape: tuple[int, ...]
    dtype: np.dtype
    quantization: tuple[float, int] | None


class TfliteModel:
    """A loaded single-input TFLite model: one output, or an embedding and a label map.

    ``output`` is the embedding (what :meth:`run` returns); ``map_output`` the label map
    of a pooled image model that carries one (:meth:`label_map` reads it), else ``None``.

    Example:
        >>> model = TfliteModel(bundle.model_bytes, num_threads=2, name="image model")
        >>> embedding = model.run(pixels)
    """

    def __init__(self, model_bytes: bytes, num_threads: int, name: str = "model") -> None:
        check_flatbuffer(model_bytes, name)
        check_graph(model_bytes, name)  # impossible graphs never reach native code
        self.name = name
        self._model_bytes = model_bytes  # the interpreter reads from this buffer
        _check_quantization(model_bytes, name)
        # What no static check sees crashes a child process, not this one.
        probe_load(model_bytes, interpreter_name(), num_threads, name)
        self._interpreter = _load(model_bytes, num_threads, name)
        self.input = _single_tensor(self._interpreter.get_input_details(), name, "input")
        self.output, self.map_output = _output_tensors(self._interpreter.get_output_details(), name)
        # When the invoke in progress started (time.monotonic(); 0.0: none runs), for the
        # run's watchdog (runtime/watchdog.py), which cannot interrupt an invoke but can see one.
        self.invoke_started = 0.0
        self.load_invoke_s = self._first_invoke()

    def _first_invoke(self) -> float:
        """Runs once on zeros, so a model that cannot run fails at load, not on frame one;
        returns the seconds it took (warm-up included), from which a time budget is made."""
        started = time.perf_counter()
        try:
            self.run(np.zeros(self.input.shape, dtype=self.input.dtype))
        except (RuntimeError, ValueError) as exc:
            raise BundleError(f"{self.name}: the interpreter cannot run it ({_first_line(exc)})") from None
        return time.perf_counter() - started

    def run(self, model_input: np.ndarray) -> np.ndarray:
        """Invokes the model on ``model_input`` and returns a copy of its output."""
        interpreter = self._interpreter
        interpreter.set_tensor(self.input.index, model_input)
        # As in invoke(), written out: this is the hot path of every frame.
        self.invoke_started = time.monotonic()
        try:
            interpreter.invoke()
        finally:
            self.invoke_started = 0.0
        return interpreter.get_tensor(self.output.index)

    def label_map(self) -> np.ndarray:
        """A copy of the label map output of the last :meth:`run` (models with ``map_output``)."""
        return self._interpreter.get_tensor(self.map_output.index)

    def invoke(self) -> None:
        """Invokes the model on whatever its input tensor holds (benchmarks call it alone).

        ``invoke_started`` holds the start time meanwhile (a try/finally costs nothing
        when nothing is raised), so a watchdog thread can tell a hung invoke.
        """
        self.invoke_started = time.monotonic()
        try:
            self._interpreter.invoke()
        finally:
            self.invoke_started = 0.0

    def close(self) -> None:
        """Releases the interpreter; the model cannot run afterwards."""
        self._interpreter = None
        self._model_bytes = b""


def check_flatbuffer(model_bytes: bytes, name: str) -> None:
    """Raises :class:`BundleError` unless ``model_bytes`` starts like a TFLite flatbuffer."""
    if len(model_bytes) < 16 or model_bytes[4:8] != TFLITE_IDENTIFIER:
        raise BundleError(
            f"{name} is not a TFLite flatbuffer (no {TFLITE_IDENTIFIER.decode()} header)"
        )


def _check_quantization(model_bytes: bytes, name: str) -> None:
    """Refuses impossible quantization (scale <= 0 or NaN, zero point out of range).

    LiteRT's default XNNPACK delegate crashes the process on such tensors inside
    ``allocate_tensors``, so they are read first through an interpreter without
    delegates, which only parses the model.
    """
    interpreter_type = interpreter_class()
    resolver = getattr(interpreter_module(), "OpResolverType", None)
    if resolver is None:
        return
    try:
        probe = interpreter_type(
            model_content=model_bytes, num_threads=1,
            experimental_op_resolver_type=resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        )
        details = probe.get_tensor_details()
    except (ValueError, RuntimeError) as exc:
        raise BundleError(f"{name}: the interpreter cannot load it ({_first_line(exc)})") from None
    for detail in details:
        problem = _quantization_problem(detail)
        if problem:
            raise BundleError(f"{name}: tensor {detail.get('name', '?')!r} {problem}; re-convert the bundle")


def _quantization_problem(detail: dict) -> str | None:
    params = detail.get("quantization_parameters") or {}
    scales = np.asarray(params.get("scales", []), dtype=np.float64)
    zero_points = np.asarray(params.get("zero_points", []), dtype=np.int64)
    if scales.size and (not np.all(np.isfinite(scales)) or np.any(scales <= 0)):
        return "has a quantization scale that is not a positive number"
    dtype = np.dtype(detail["dtype"])
    if zero_points.size and dtype.kind in "iu":
        info = np.iinfo(dtype)
        if np.any(zero_points < info.min) or np.any(zero_points > info.max):
            return f"has a zero point outside the {dtype.name} range"
    return None


def _load(model_bytes: bytes, num_threads: int, name: str) -> Any:
    interpreter_type = interpreter_class()
    try:
        interpreter = interpreter_type(model_content=model_bytes, num_threads=num_threads)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise BundleError(f"{name}: the interpreter cannot load it ({_first_line(exc)})") from None
    log.debug("%s loaded by %s with %d threads", name, interpreter_type.__module__, num_threads)
    return interpreter


def _single_tensor(details: list[dict], name: str, kind: str) -> TensorSpec:
    if len(details) != 1:
        raise BundleError(f"{name} has {len(details)} {kind}s; the runtime needs exactly one")
    return _spec(details[0])


def _output_tensors(details: list[dict], name: str) -> tuple[TensorSpec, TensorSpec | None]:
    """The embedding output and the label map output (``None`` when there is none)."""
    try:
        embedding, label_map = split_outputs(details)
    except ValueError as exc:
        raise BundleError(f"{name} {exc}") from None
    return _spec(embedding), None if label_map is None else _spec(label_map)


def _spec(detail: dict) -> TensorSpec:
    return TensorSpec(
        index=int(detail["index"]),
        shape=tuple(int(s) for s in detail["shape"]),
        dtype=np.dtype(detail["dtype"]),
        quantization=tensor_quantization(detail),
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
