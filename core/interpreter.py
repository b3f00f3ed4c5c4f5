"""The one module that imports a TFLite interpreter.

``ai_edge_litert`` (LiteRT, the successor of tflite-runtime) is tried first, then
``tflite_runtime`` (the only choice on 32-bit Arm); without either, an ImportError
says what to install.  TensorFlow's own ``tf.lite.Interpreter`` is never used: the
board does not have TensorFlow.  Every stage (runtime, convert, devices, bench) gets
its interpreter here, so host and board always run the same one.

Example:
    >>> Interpreter = interpreter_class()
    >>> interpreter = Interpreter(model_content=model_bytes, num_threads=2)
"""

from __future__ import annotations

import functools
import importlib

INSTALL_HINT = (
    "no TFLite interpreter is installed: `pip install ai-edge-litert` "
    '(on 32-bit Arm: `pip install tflite-runtime "numpy<2"`)'
)


class InterpreterNotFoundError(ImportError):
    """Neither ai_edge_litert nor tflite_runtime imports; the message says what to install."""


@functools.cache
def interpreter_class() -> type:
    """Returns the Interpreter class of ai_edge_litert, else tflite_runtime.

    Raises:
        InterpreterNotFoundError: neither package imports.
    """
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        pass
    else:
        return Interpreter
    try:
        from tflite_runtime.interpreter import Interpreter
    except ImportError:
        pass
    else:
        return Interpreter
    raise InterpreterNotFoundError(INSTALL_HINT)


def interpreter_name() -> str:
    """The import path of the interpreter in use, e.g. ``ai_edge_litert.interpreter``."""
    return interpreter_class().__module__


def interpreter_module():
    """The module holding the interpreter in use (for ``OpResolverType`` and the like)."""
    return importlib.import_module(interpreter_name())


def interpreter_version() -> str:
    """The package and version of the interpreter in use, e.g. ``ai_edge_litert 2.3.0``."""
    package = interpreter_name().split(".")[0]
    try:
        from importlib.metadata import version

        return f"{package} {version(package.replace('_', '-'))}"
    except Exception:  # noqa: BLE001 - a version string is nice to have, never needed
        return f"{package} {getattr(importlib.import_module(package), '__version__', '?')}"


def tensor_quantization(detail: dict) -> tuple[float, int] | None:
    """``(scale, zero_point)`` of a tensor in the interpreter's details, or ``None`` if float."""
    scale, zero_point = detail.get("quantization", (0.0, 0))
    return (float(scale), int(zero_point)) if scale else None
