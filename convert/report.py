"""Results of a conversion, as tables for people and JSON for machines.

No TensorFlow here: :func:`describe_bundles` lists a folder of bundles, one row per
file (file, size, then variant and runtimes, or why the runtime would refuse it),
checked by :func:`fuselite.bundle.check_bundle` without loading an interpreter.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fuselite.bundle import BundleError, Manifest, check_bundle

REPORT_NAME = "convert-report.json"
STATUSES = ("ok", "failed", "refused")
EXIT_OK, EXIT_FAILED, EXIT_REFUSED = 0, 1, 2


@dataclass
class VariantResult:
    """What happened to one variant.

    Attributes:
        variant: Variant name.
        status: ``"ok"`` (written), ``"failed"`` (conversion error or numbers out of
            tolerance; nothing written) or ``"refused"`` (``--target`` cannot load it, or the
            run cannot make this variant, e.g. a mirror variant of a run trained without flips).
        message: Why it was not written, one line.
        path: The bundle written, or ``None``.
        file_size: Bytes of the bundle file (model + zip of associated files).
        gzip_size: Bytes of the bundle file after ``gzip -9``.
        model_size: Bytes of the image model flatbuffer alone.
        model_gzip_size: Bytes of the image model after ``gzip -9``.
        sparsity: Share of zeros in the model's conv/dense kernels.
        numerics: The manifest's ``numerics`` (agreement, errors, task metrics on the test
            split; ``judged``: the split the accuracy budget judged on, and its figures).
        runtimes: Runtime key -> whether it loads the bundle.
        ops: The image model's and text encoder's ops (``"CONV_2D v3"``).
        runtime_problems: Runtime key -> why it cannot load the bundle (only those that cannot).
        seconds: Wall time spent on this variant (fine-tuning included).
        warnings: What was written despite a check (the score check past its tolerance,
            with its figures), one line each.
    """

    variant: str
    status: str
    message: str = ""
    path: Path | None = None
    file_size: int = 0
    gzip_size: int = 0
    model_size: int = 0
    model_gzip_size: int = 0
    sparsity: float = 0.0
    numerics: dict = field(default_factory=dict)
    runtimes: dict = field(default_factory=dict)
    ops: list = field(default_factory=list)
    runtime_problems: dict = field(default_factory=dict)
    seconds: float = 0.0
    warnings: list = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-ready form."""
        data = asdict(self)
        data["path"] = str(self.path) if self.path else None
        return data


def gzip_size(data: bytes) -> int:
    """Length of ``data`` after gzip at level 9 (what pruning is judged by)."""
    return len(gzip.compress(data, compresslevel=9, mtime=0))


def kb(size: int) -> str:
    """``353.4 kB`` (10^3 bytes)."""
    return f"{size / 1000:.1f} kB"


def results_table(results: list[VariantResult]) -> str:
    """The end-of-conversion table, one row per variant, as plain aligned text."""
    header = [
        "variant", "file", "gzip", "model", "model.gz", "sparsity", "agree", "max err", "metric", "runtimes", "status",
    ]
    rows = [header] + [_row(r) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    problems = [f"{r.variant}: {r.message}" for r in results if r.status != "ok"]
    warnings = [f"{r.variant}: warning: {w}" for r in results for w in r.warnings]
    return "\n".join(lines + _budget_notes(results) + problems + warnings)


def _budget_notes(results: list[VariantResult]) -> list[str]:
    """One line saying which split judged the budget, when a row shows it beside the test figure."""
    splits = sorted({r.numerics["judged"]["split"] for r in results if r.numerics.get("judged")})
    notes = [f"metric: on the test split (pt against Keras); {_SHORT.get(s, s)}: the pt the accuracy budget "
             f"judged, on the {s} split" for s in splits if s != "test"]
    fallbacks = sorted({r.numerics["judged"]["fallback"] for r in results
                        if (r.numerics.get("judged") or {}).get("fallback")})
    return notes + [f"warning: {f}" for f in fallbacks]


def _row(r: VariantResult) -> list[str]:
    n = r.numerics
    if r.status == "failed" and not r.model_size:
        return [r.variant] + ["-"] * 9 + [r.status]
    return [
        r.variant,
        kb(r.file_size) if r.file_size else "-",
        kb(r.gzip_size) if r.gzip_size else "-",
        kb(r.model_size),
        kb(r.model_gzip_size),
        f"{100 * r.sparsity:.0f}%",
        f"{100 * n.get('top1_agreement', 0):.1f}%",
        f"{n.get('max_score_error', 0):.2g}",
        _metric(n),
        ",".join(k for k, ok in r.runtimes.items() if ok) or "none",
        r.status,
    ]


def _metric(numerics: dict) -> str:
    name, value = numerics.get("task_metric_name"), numerics.get("task_metric")
    if name is None or value is None:
        return "-"
    delta, judged = numerics.get("delta_pt"), numerics.get("judged") or {}
    deltas = [] if delta is None else [f"{delta:+.2f}"]
    if judged.get("split", "test") != "test" and judged.get("delta_pt") is not None:
        deltas.append(f"{_SHORT.get(judged['split'], judged['split'])} {judged['delta_pt']:+.2f}")
    return f"{name} {100 * value:.2f}" + (f" ({'; '.join(deltas)})" if deltas else "")


_SHORT = {"validation": "val"}


def exit_code(results: list[VariantResult], explicit: set[str]) -> int:
    """The exit code of a conversion, as a script running ``fuselite convert`` wants it.

    0 when what was asked for is usable: every variant named in ``--variants`` was
    written, and at least one bundle was.  A default variant (or one from ``default`` /
    ``all``) that is not written is reported with its next step but does not fail the
    command while another bundle was written.  Otherwise 1 when one of the variants
    that matter failed (a converter error, or over the accuracy budget), else 2 (only
    refusals: ``--target`` cannot load it, or the run cannot make it: a usage mistake).
    """
    written = any(r.status == "ok" for r in results)
    matter = [r for r in results if r.status != "ok" and (r.variant in explicit or not written)]
    if not matter:
        return EXIT_OK
    return EXIT_FAILED if any(r.status == "failed" for r in matter) else EXIT_REFUSED


def progress_bar(total: int, desc: str, enabled: bool | None = None, unit: str = "step"):
    """A tqdm bar on stderr in the style of ``train``'s (the bar closes when done).

    ``enabled``: ``None`` shows it only when stderr is a terminal, ``False`` (``--quiet``)
    never, ``True`` always (tests, or a log that wants it).
    """
    import sys

    from tqdm.auto import tqdm

    disable = None if enabled is None else not enabled
    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=False, file=sys.stderr,
                disable=disable)


def write_report(out_dir: Path, results: list[VariantResult], extra: dict) -> Path:
    """Writes ``convert-report.json`` (results plus ``extra``) atomically into ``out_dir``."""
    from fuselite.files import write_atomic

    path = Path(out_dir) / REPORT_NAME
    doc = {**extra, "variants": [r.to_dict() for r in results]}
    write_atomic(path, json.dumps(doc, indent=1, default=str).encode())
    return path


def describe_bundles(out_dir: Path) -> str:
    """Lists the ``*.tflite`` files in ``out_dir``, one row each: name, size, and either
    the variant and the runtimes that load it, or ``unusable:`` and why.

    Each file is checked the way the runtime reads it (:func:`fuselite.bundle.check_bundle`:
    checksums, manifest ranges, finite embeddings, model graph and memory), so a row
    says "runs on" only for a bundle the runtime would accept; one bad file (a dangling
    symlink, a loop, a damaged manifest) gets its own row and never hides the others.
    """
    rows = [_bundle_row(path) for path in sorted(Path(out_dir).glob("*.tflite"))]
    return "\n".join(rows) if rows else f"{out_dir}: no bundles"


def _bundle_row(path: Path) -> str:
    """One listing row for ``path``, whatever the file is."""
    head = f"{_printable(path.name):<24} {_size(path):>10}  "
    try:
        manifest = check_bundle(path).manifest
    except BundleError as exc:
        reason = str(exc).removeprefix(f"{path}: ")
        return head + f"unusable: {_printable(reason)}"
    return head + f"{_printable(manifest.variant):<16} runs on: {_runtimes(manifest)}"


def _runtimes(manifest: Manifest) -> str:
    """The runtimes convert found able to load the bundle (``provenance.runtimes``)."""
    runtimes = manifest.provenance.get("runtimes", {})
    if not isinstance(runtimes, dict):  # informational only: the runtime never reads it
        return f"unknown (provenance.runtimes is a {type(runtimes).__name__}, not a mapping)"
    loadable = [_printable(str(name)) for name, ok in runtimes.items() if ok is True]
    return ", ".join(loadable) or "no known runtime"


def _size(path: Path) -> str:
    """The file's size, or ``?`` when it cannot be read (a dangling link or a loop)."""
    try:
        return kb(path.stat().st_size)
    except OSError:
        return "?"


def _printable(text: str) -> str:
    """``text`` on one row: control characters (a newline in a file name) become ``?``."""
    return "".join(c if c.isprintable() else "?" for c in text)
