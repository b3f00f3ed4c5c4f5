"""Converts every variant of a run and measures it: ``python -m fuselite.bench.suite convert RUN_DIR``.

One row per variant (a failing variant is a row with its status, not a crash):
bundle and model sizes raw and gzipped, ratios against ``fp32`` and ``int8``, the
task metric on the test split and its change in points, and single-image latency
in :mod:`fuselite.interpreter`'s interpreter (warm-up, then timed runs; only a
measured speed-up is a speed-up).
The targets of issue 3 are checked at the end.  Results go to stdout as Markdown
and to ``--json`` for machines.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from fuselite.convert.report import VariantResult
from fuselite.convert.variants import resolve_variants
from fuselite.errors import UserError
from fuselite.host import cpu_model
from fuselite.interpreter import interpreter_class

log = logging.getLogger(__name__)

# (what, limit): checked against the measured rows by ``targets``.
TARGETS = {
    "int8_size_ratio": 0.27,  # int8 model <= 0.27 x fp32 model
    "int8_loss_pt": 0.5,
    "pruned_gzip_ratio": 0.6,  # pruned-int8 gzip <= 0.6 x int8 gzip
    "pruned_loss_pt": 1.0,
    "seconds": 180.0,  # all default variants of scenes-default
}


def latency_ms(model_bytes: bytes, image: np.ndarray, num_threads: int, runs: int = 200) -> float:
    """Median milliseconds of one ``invoke`` on one image, after 20 warm-up runs."""
    from fuselite.convert.numerics import quantize_input

    interpreter = interpreter_class()(model_content=model_bytes, num_threads=num_threads)
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    interpreter.set_tensor(detail["index"], quantize_input(image[np.newaxis], detail))
    times = []
    for i in range(20 + runs):
        start = time.perf_counter()
        interpreter.invoke()
        if i >= 20:
            times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def machine() -> dict:
    """nproc, CPU model, load average and date, to read the numbers by."""
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "python": platform.python_version(),
    }


def rows(results: list[VariantResult], latencies: dict[str, float]) -> list[dict]:
    """One dict per variant with sizes, ratios, metric and latency."""
    by_name = {r.variant: r for r in results}
    fp32, int8 = by_name.get("fp32"), by_name.get("int8")
    table = []
    for r in results:
        n = r.numerics
        table.append({
            "variant": r.variant,
            "status": r.status,
            "file_kb": r.file_size / 1000,
            "file_gzip_kb": r.gzip_size / 1000,
            "model_kb": r.model_size / 1000,
            "model_gzip_kb": r.model_gzip_size / 1000,
            "model_vs_fp32": _ratio(r.model_size, fp32.model_size if fp32 else 0),
            "file_vs_fp32": _ratio(r.file_size, fp32.file_size if fp32 else 0),
            "gzip_vs_int8": _ratio(r.model_gzip_size, int8.model_gzip_size if int8 else 0),
            "sparsity": r.sparsity,
            "metric": n.get("task_metric_name"),
            "value": n.get("task_metric"),
            "delta_pt": n.get("delta_pt"),
            "heldout_combo_ap": n.get("metrics", {}).get("heldout_combo_ap"),
            "agreement": n.get("top1_agreement"),
            "max_score_error": n.get("max_score_error"),
            "ms": latencies.get(r.variant),
            "seconds": r.seconds,
            "runtimes": [k for k, ok in r.runtimes.items() if ok],
        })
    return table


def targets(table: list[dict], seconds: float) -> list[tuple[str, str, bool | None]]:
    """``(target, measured, met)`` for each issue-3 target (None when not measured)."""
    row = {r["variant"]: r for r in table}
    int8, pruned = row.get("int8", {}), row.get("pruned-int8", {})

    def check(name, value, limit, shown):
        if value is None:
            return (name, "not measured", None)
        return (name, shown, value <= limit)

    def loss(row):
        delta = row.get("delta_pt")
        return (None if delta is None else -delta), f"{_fmt(delta, '{:+.2f}')} pt"

    int8_loss, pruned_loss = loss(int8), loss(pruned)
    return [
        check(f"int8 model <= {TARGETS['int8_size_ratio']} x fp32", int8.get("model_vs_fp32"),
              TARGETS["int8_size_ratio"], f"{_fmt(int8.get('model_vs_fp32'), '{:.3f}')} x"),
        check(f"int8 loses <= {TARGETS['int8_loss_pt']} pt", int8_loss[0], TARGETS["int8_loss_pt"], int8_loss[1]),
        check(f"pruned-int8 gzip <= {TARGETS['pruned_gzip_ratio']} x int8 gzip", pruned.get("gzip_vs_int8"),
              TARGETS["pruned_gzip_ratio"], f"{_fmt(pruned.get('gzip_vs_int8'), '{:.3f}')} x"),
        check(f"pruned-int8 loses <= {TARGETS['pruned_loss_pt']} pt", pruned_loss[0],
              TARGETS["pruned_loss_pt"], pruned_loss[1]),
        check(f"all variants <= {TARGETS['seconds']:.0f} s", seconds, TARGETS["seconds"], f"{seconds:.0f} s"),
    ]


def markdown(table: list[dict], checks, info: dict) -> str:
    """The results as Markdown: machine line, variant table, targets table."""
    lines = [
        (f"Run `{info['run_dir']}` ({info['run_config']}), {info['date']}, {info['nproc']} cores "
        f"({info['cpu']}), load average at start {info['load_average']}, "
        f"conversion of all variants {info['seconds']:.0f} s, latency with {info['threads']} thread(s), "
        f"sparsity {info.get('sparsity')}, {info.get('finetune_steps')} fine-tuning steps."),
        "",
        ("| variant | status | bundle kB | bundle gzip kB | model kB | model gzip kB | model / fp32 "
        "| gzip / int8 gzip | sparsity | metric | Δ pt | agreement | max score err | ms/image | s |"),
        "| --- " * 15 + "|",
    ]
    for r in table:
        lines.append(
            f"| {r['variant']} | {r['status']} | {r['file_kb']:.1f} | {r['file_gzip_kb']:.1f} | "
            f"{r['model_kb']:.1f} | {r['model_gzip_kb']:.1f} | {_fmt(r['model_vs_fp32'], '{:.3f}')} | "
            f"{_fmt(r['gzip_vs_int8'], '{:.3f}')} | {100 * r['sparsity']:.0f}% | "
            f"{r['metric'] or '-'} {_fmt(r['value'], '{:.2%}')} | {_fmt(r['delta_pt'], '{:+.2f}')} | "
            f"{_fmt(r['agreement'], '{:.1%}')} | {_fmt(r['max_score_error'], '{:.3f}')} | "
            f"{_fmt(r['ms'], '{:.2f}')} | {r['seconds']:.0f} |"
        )
    lines += ["", "| target | measured | met |", "| --- | --- | --- |"]
    lines += [f"| {name} | {value} | {'-' if met is None else ('yes' if met else '**no**')} |"
              for name, value, met in checks]
    return "\n".join(lines)


def benchmark(run_dir: Path, out_dir: Path, variant_names, options) -> dict:
    """Converts and measures; returns the JSON document (rows, targets, machine)."""
    from fuselite.convert.export import Converter, auto_finetune_steps
    from fuselite.train.backend import tf

    info = {**machine(), "run_dir": str(run_dir), "threads": options.num_threads, "tensorflow": tf.__version__,
            "sparsity": options.sparsity}
    started = time.perf_counter()
    converter = Converter.load(run_dir, out_dir, options)
    info["finetune_steps"] = options.finetune_steps or auto_finetune_steps(
        len(converter.data.train), converter.run.config.batch_size)
    results = [converter.convert(v) for v in resolve_variants(variant_names)]
    info["seconds"] = time.perf_counter() - started
    info["run_config"] = converter.run.config.name
    image = converter.data.test.images[0]
    latencies = {
        r.variant: latency_ms(Path(r.path).read_bytes(), image, options.num_threads)
        for r in results if r.path is not None
    }
    table = rows(results, latencies)
    checks = targets(table, info["seconds"])
    return {"machine": info, "rows": table, "targets": checks, "markdown": markdown(table, checks, info)}


def main(argv=None) -> int:
    """CLI entry point; prints the Markdown table."""
    parser = argparse.ArgumentParser(prog="python -m fuselite.bench.suite convert", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, help="where bundles go (default: a temporary folder)")
    parser.add_argument("--variants", nargs="+", default=["default"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--finetune-steps", type=int, default=None, help="default: about 7 epochs, >= 500")
    parser.add_argument("--sparsity", type=float, default=0.75)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    from fuselite.convert.export import ConvertOptions
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            options = ConvertOptions(num_threads=args.threads, finetune_steps=args.finetune_steps,
                                     sparsity=args.sparsity)
            doc = benchmark(args.run_dir, args.out or Path(tmp), args.variants, options)
    except UserError as exc:
        print(f"benchmark: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        args.json.write_text(json.dumps(doc, indent=1, default=str))
    print(doc["markdown"])
    return 0


def _ratio(value: int, reference: int) -> float | None:
    return value / reference if value and reference else None


def _fmt(value, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


if __name__ == "__main__":
    sys.exit(main())
