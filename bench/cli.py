"""``fuselite bench BUNDLE_DIR --data ... --out REPORT_DIR``: size, accuracy and latency of every bundle.

Writes ``report.json``, ``report.csv``, ``report.md`` and ``pareto.png`` into ``--out``
(and ``confusion-<group>.png`` per ``--group``) and prints the Markdown table.  A bundle that cannot be read, loaded or measured (or
takes longer than ``--timeout`` on one step) is a ❌ row with the reason; the rest of the
report is still measured.  Exit codes: 0 when done; 1 when ``--min-accuracy`` is
given and no ✅ bundle reaches it, or when no bundle passed its checks; 2 for a usage
mistake.  Needs no TensorFlow unless the Keras reference row is possible.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from fuselite.errors import UserError

log = logging.getLogger(__name__)
EXIT_GATE = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``bench`` options; imports nothing heavy."""
    parser.add_argument("bundle_dir", type=Path, metavar="BUNDLE_DIR",
                        help="a folder of bundles (the --out of `fuselite convert`) or one bundle file")
    parser.add_argument(
        "--data", metavar="DATA",
        help="held-out images: a training run directory (its test split), 'scenes', 'fashion-mnist' "
             "(official test split) or a dataset path (every item is scored). Default: the bundles' source run",
    )
    parser.add_argument("--out", type=Path, required=True, metavar="REPORT_DIR",
                        help="folder for report.json, report.csv, report.md and pareto.png")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="interpreter threads (default: the --device profile's, else the CPU count, at most 4)")
    parser.add_argument("--device", metavar="PROFILE",
                        help="mark the recommended variant under this board profile's limits "
                             "(see `fuselite devices list`)")
    parser.add_argument("--min-accuracy", type=float, metavar="X",
                        help="exit 1 unless some ✅ bundle's primary metric (top-1 or mAP, 0 to 1) reaches X")
    parser.add_argument("--run", type=Path, metavar="RUN_DIR",
                        help="training run whose Keras model is the reference row (default: the data's run)")
    parser.add_argument("--no-reference", action="store_true", help="leave out the Keras reference row")
    parser.add_argument("--samples", type=int, default=0, metavar="N",
                        help="score only the first N images (0: all; 'scenes' draws 500 by default)")
    parser.add_argument("--warmup", type=int, default=10, metavar="N", help="untimed frames first (default 10)")
    parser.add_argument("--runs", type=int, default=100, metavar="N", help="timed frames per bundle (default 100)")
    parser.add_argument("--sustain", type=float, default=3.0, metavar="SECONDS",
                        help="seconds of fuselite run's loop per bundle for the sustained FPS, CPU ms per frame "
                             "and cores used (default 3; 0 skips them)")
    parser.add_argument("--frame-size", default="640x480", metavar="WxH",
                        help="size of the frames the sustained loop preprocesses, as a camera gives them "
                             "(default 640x480; 'data' for the data's images as they are)")
    parser.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS",
                        help="longest a bundle may take to load or to do one frame; a bundle that takes longer "
                             "(e.g. loops forever) is stopped and gets a ❌ row (default 120)")
    parser.add_argument("--group", action="append", metavar="NAME=LABEL,LABEL,...",
                        help="a one-of-N tag group (e.g. category=animals,food,vehicles): its top-1 and "
                             "confusion matrix go in the report and confusion-NAME.png; repeat for several "
                             "groups. A JSONL manifest may also name them on a line "
                             '{"groups": {"NAME": [LABEL, ...]}}')


def run(args: argparse.Namespace) -> int:
    """Benchmarks the bundles, writes the report, prints the table; returns the exit code."""
    from fuselite.bench.groups import parse_groups
    from fuselite.bench.report import format_table
    from fuselite.bench.runner import run_bench

    if args.min_accuracy is not None and not 0.0 <= args.min_accuracy <= 1.0:
        raise UserError(f"--min-accuracy {args.min_accuracy} must be from 0 to 1 (e.g. 0.9 for 90%)")
    if args.samples < 0:
        raise UserError("--samples must be 0 (all) or more")
    groups = parse_groups(args.group)  # before any measuring: a typo costs no time
    report = run_bench(
        args.bundle_dir, args.data, args.out, threads=args.threads, device=args.device, run_dir=args.run,
        reference=False if args.no_reference else (True if args.run else None), warmup=args.warmup,
        runs=args.runs, samples=args.samples, min_accuracy=args.min_accuracy, progress=True,
        sustain_s=args.sustain, timeout_s=args.timeout, frame_size=frame_size(args.frame_size),
        groups=groups,
    )
    print(format_table(report))
    print(summary_lines(report))
    return exit_code(report)


def frame_size(text: str) -> tuple[int, int] | None:
    """``"640x480"`` -> ``(640, 480)``; ``"data"`` -> ``None``; :class:`UserError` otherwise."""
    if text.strip().lower() == "data":
        return None
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise UserError(f"--frame-size {text!r}: give WIDTHxHEIGHT (e.g. 640x480) or 'data'") from None
    return width, height


def summary_lines(report) -> str:
    """What follows the table: the recommendation, the gate and where the files are."""
    lines = [f"{r.icon} {r.name}: {r.message}" for r in report.rows if r.message]
    if report.device:
        rec = report.recommended
        lines.append(f"recommended for {report.device}: {rec.name}" if rec else f"no bundle fits {report.device}")
    if report.min_accuracy is not None:
        verdict = "passed" if report.gate_passed() else "FAILED: no ✅ bundle reaches it"
        lines.append(f"--min-accuracy {report.min_accuracy:g}: {verdict}")
    lines += [f"⚠️ {line}" for line in report.warnings]
    lines += _group_lines(report)
    for name in ("report.md", "pareto.png", *(f"confusion-{group}.png" for group in report.groups)):
        if name in report.files:
            lines.append(f"{name}: {report.files[name]}")
    return "\n".join(lines)


def _group_lines(report) -> list[str]:
    """One line per tag group: every row's top-1 and how many items were left out."""
    lines = []
    for name in report.groups:
        results = [(r.name, r.groups[name]) for r in report.rows if r.groups.get(name, {}).get("top1") is not None]
        if not results:
            lines.append(f"tag group {name}: no top-1 (no item has exactly one of its tags, or no bundle knows them)")
            continue
        first = results[0][1]
        scores = ", ".join(f"{row} {100 * result['top1']:.1f}%" for row, result in results)
        lines.append(f"tag group {name} top-1 on {first['scored']} items: {scores} (left out: {first['no_tag']} "
                     f"without a tag of the group, {first['several_tags']} with several)")
    return lines


def exit_code(report) -> int:
    """1 when the gate fails or no bundle passed its checks, else 0."""
    if report.gate_passed() is False:
        return EXIT_GATE
    if not any(r.status == "ok" for r in report.bundles):
        log.error("no bundle passed its checks")
        return EXIT_GATE
    return 0
