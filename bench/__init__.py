"""fuselite.bench: size, accuracy and latency of every bundle, measured through the runtime.

The public names are imported lazily, so ``import fuselite.bench`` costs nothing.

Example:
    >>> from fuselite.bench import run_bench, format_table
    >>> report = run_bench("bundles/", "runs/scenes", "bench-out", threads=2)
    >>> print(format_table(report))        # the Markdown table
    >>> report.files["pareto.png"]         # the plot
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "run_bench": "fuselite.bench.runner",
    "Report": "fuselite.bench.report",
    "Row": "fuselite.bench.report",
    "format_table": "fuselite.bench.report",
    "to_markdown": "fuselite.bench.report",
    "write_report": "fuselite.bench.report",
    "load_eval_data": "fuselite.bench.data",
}

__all__ = ["Report", "Row", "format_table", "load_eval_data", "run_bench", "to_markdown", "write_report"]


def __getattr__(name: str):
    """Imports a public name on first use (PEP 562)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fuselite.bench' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
