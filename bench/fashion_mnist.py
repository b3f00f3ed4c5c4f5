"""The headline benchmark: Fashion-MNIST trained, converted to every variant, benchmarked.

    python -m fuselite.bench.fashion_mnist --out runs/fashion-bench
    python -m fuselite.bench.fashion_mnist --out runs/fashion-bench --run-dir runs/fashion

Steps (each is skipped when its output is already in ``--out``, so an interrupted run
picks up where it stopped): train the ``fashion-mnist`` config into ``OUT/run`` (unless
``--run-dir`` names a finished run), ``fuselite convert`` it into ``OUT/bundles``, then
``fuselite bench`` on the official 10k test split into ``OUT/report``.  Prints the
table and writes ``OUT/report/docs-section.md``, the block that goes into docs/bench.md.
Needs the ``[train]`` extra and Debian's ``dataset-fashion-mnist``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from fuselite.errors import UserError

log = logging.getLogger(__name__)
CONFIG = "fashion-mnist"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The script's options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for run/, bundles/ and report/")
    parser.add_argument("--run-dir", type=Path, help="a finished fashion-mnist run to use instead of training")
    parser.add_argument("--threads", type=int, default=2, help="interpreter threads (default 2)")
    parser.add_argument("--runs", type=int, default=300, help="timed frames per bundle (default 300)")
    parser.add_argument("--device", default="raspberry-pi-4", help="profile to recommend for")
    parser.add_argument("--reconvert", action="store_true", help="convert again even if bundles exist")
    return parser.parse_args(argv)


def train_step(run_dir: Path) -> float:
    """Trains (or resumes) the fashion-mnist config into ``run_dir``; returns seconds spent."""
    if (run_dir / "metrics.json").is_file():
        log.info("reusing the finished run in %s", run_dir)
        return 0.0
    from fuselite.train.configs import get_config
    from fuselite.train.trainer import train

    started = time.perf_counter()
    train(get_config(CONFIG), run_dir, resume=(run_dir / "checkpoints" / "state.json").is_file())
    return time.perf_counter() - started


def convert_step(run_dir: Path, bundle_dir: Path, threads: int, again: bool) -> float:
    """``fuselite convert RUN --out BUNDLES`` (every default variant); returns seconds spent."""
    from fuselite.cli import main

    if (bundle_dir / "convert-report.json").is_file() and not again:
        log.info("reusing the bundles in %s (--reconvert to redo)", bundle_dir)
        return 0.0
    started = time.perf_counter()
    code = main(["convert", str(run_dir), "--out", str(bundle_dir), "--threads", str(threads)])
    if code == 2:
        raise UserError(f"fuselite convert {run_dir} failed (exit code 2)")
    if code:
        log.warning("fuselite convert: some variants were not written (exit code %d); benchmarking the rest", code)
    return time.perf_counter() - started


def docs_section(report, seconds: dict[str, float], image: str) -> str:
    """The Markdown block for docs/bench.md: what, where, when, the table and the plot."""
    from fuselite.bench.report import to_markdown

    spent = ", ".join(f"{step} {value / 60:.1f} min" for step, value in seconds.items() if value)
    return "\n".join([
        to_markdown(report),
        *([f"- Wall time of this script: {spent}."] if spent else []),
        "",
        f"![Fashion-MNIST: accuracy against bundle size and latency]({image})",
    ])


def main(argv: list[str] | None = None) -> int:
    """Runs train -> convert -> bench and prints the table; returns the exit code."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from fuselite.bench.report import format_table
    from fuselite.bench.runner import run_bench

    try:
        run_dir = args.run_dir or args.out / "run"
        seconds = {"train": train_step(run_dir)}
        seconds["convert"] = convert_step(run_dir, args.out / "bundles", args.threads, args.reconvert)
        started = time.perf_counter()
        report = run_bench(args.out / "bundles", run_dir, args.out / "report", threads=args.threads,
                           device=args.device, runs=args.runs, progress=True)
        seconds["bench"] = time.perf_counter() - started
    except UserError as exc:
        print(f"fashion_mnist: error: {exc}", file=sys.stderr)
        return 2
    section = docs_section(report, seconds, "img/fashion-pareto.png")
    (args.out / "report" / "docs-section.md").write_text(section + "\n")
    print(format_table(report))
    print(f"\nreport: {args.out / 'report'}  (docs block: {args.out / 'report' / 'docs-section.md'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
