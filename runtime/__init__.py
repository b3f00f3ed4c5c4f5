"""fuselite.runtime: annotate camera streams on a board, without TensorFlow.

Only numpy, OpenCV and one TFLite interpreter (ai-edge-litert or tflite-runtime) are
needed.  The public names below are imported lazily, so ``import fuselite.runtime``
costs almost nothing and ``fuselite run --help`` stays fast.

Example:
    >>> from fuselite.runtime import Annotator, AnnotatorOptions
    >>> with Annotator.create(AnnotatorOptions("model.tflite")) as annotator:
    ...     result = annotator.annotate(frame_bgr, timestamp_ms=0)
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Annotator": "fuselite.runtime.annotator",
    "AnnotatorOptions": "fuselite.runtime.options",
    "RunOptions": "fuselite.runtime.options",
    "AnnotationResult": "fuselite.runtime.results",
    "Category": "fuselite.runtime.results",
    "Latency": "fuselite.runtime.results",
    "run": "fuselite.runtime.loop",
    "RunSummary": "fuselite.runtime.loop",
    "InterpreterNotFoundError": "fuselite.interpreter",
}

__all__ = [
    "AnnotationResult",
    "Annotator",
    "AnnotatorOptions",
    "Category",
    "InterpreterNotFoundError",
    "Latency",
    "RunOptions",
    "RunSummary",
    "run",
]


def __getattr__(name: str):
    """Imports a public name on first use (PEP 562)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fuselite.runtime' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
