"""What a pooled tower's class activation map costs: the same tower converted with and
without the map output, invoke time and size side by side (needs TensorFlow).

    python -m fuselite.bench.suite map-cost RUN_DIR [--variants fp32 int8] [--rounds 5]
        [--invokes 50] [--threads 1] [--out map-cost.json]

For each variant the run's image tower is converted twice, as ``fuselite convert`` does
(int8 calibrated on the same images), once as it is and once with its class activation
map as a second output (:func:`fuselite.train.model.with_label_map`); the two models are
then invoked in turn, ``--invokes`` times each per round for ``--rounds`` rounds, on the
run's test images.  Reported: median invoke ms of each (and the range of the per-round
ratio), the flatbuffer sizes, and the targets of issue 33 (the map adds <= 10 % to the
invoke and <= 5 % to the size).  A regional run has its map in its output already: there
is nothing to compare, and the suite says so.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from fuselite.host import machine_description

CALIBRATION_IMAGES = 100


def main(argv: list[str] | None = None) -> int:
    """Converts, times and prints; writes ``--out`` JSON."""
    parser = argparse.ArgumentParser(
        prog="python -m fuselite.bench.suite map-cost", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "run_dir", type=Path, help="a finished run with a pooled (global) image tower"
    )
    parser.add_argument(
        "--variants", nargs="+", default=["fp32", "int8"], help="variants (default fp32 int8)"
    )
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument(
        "--invokes", type=int, default=50, help="invokes per model per round (default 50)"
    )
    parser.add_argument("--threads", type=int, default=1, help="interpreter threads (default 1)")
    parser.add_argument("--out", type=Path, help="JSON file for the figures")
    args = parser.parse_args(argv)
    from fuselite.convert.tflite import convert_image_model
    from fuselite.convert.variants import get_variant
    from fuselite.train.model import label_map_grid
    from fuselite.train.run import load_run

    run = load_run(args.run_dir)
    tower = run.image_encoder
    if label_map_grid(tower) is None:
        print(
            f"{args.run_dir}: its tower has no pooling-then-linear head (a regional run carries its map in "
            "its output): nothing to compare"
        )
        return 2
    images = run.load_data().test.images[:CALIBRATION_IMAGES]
    record = {
        "machine": machine_description(),
        "run": str(args.run_dir),
        "grid": label_map_grid(tower),
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "started_utc": _now(),
        "threads": args.threads,
        "variants": {},
    }
    for name in args.variants:
        variant = get_variant(name)
        plain = convert_image_model(tower, variant, images if variant.calibrated else None)
        mapped = convert_image_model(
            tower, variant, images if variant.calibrated else None, label_map=True
        )
        record["variants"][name] = {
            **_timings(plain, mapped, images, args),
            "bytes_without_map": len(plain),
            "bytes_with_map": len(mapped),
            "size_share": len(mapped) / len(plain) - 1,
        }
    record.update(load_average_after=[round(x, 2) for x in os.getloadavg()], finished_utc=_now())
    print(summary(record))
    if args.out:
        args.out.write_text(json.dumps(record, indent=1))
    return 0


def _timings(plain: bytes, mapped: bytes, images: np.ndarray, args) -> dict:
    """Median invoke ms of both models over interleaved rounds, and the per-round ratios."""
    from fuselite.convert.numerics import quantize_input
    from fuselite.interpreter import interpreter_class

    models = {}
    for key, model_bytes in (("without_map", plain), ("with_map", mapped)):
        interpreter = interpreter_class()(model_content=model_bytes, num_threads=args.threads)
        interpreter.allocate_tensors()
        detail = interpreter.get_input_details()[0]
        inputs = [quantize_input(image[np.newaxis], detail) for image in images[: args.invokes]]
        models[key] = (interpreter, detail["index"], inputs)
    times = {key: [] for key in models}
    for round_number in range(args.rounds + 1):  # the first round warms up and is not kept
        for key, (interpreter, index, inputs) in models.items():
            start = time.perf_counter()
            for model_input in inputs:
                interpreter.set_tensor(index, model_input)
                interpreter.invoke()
            if round_number:
                times[key].append((time.perf_counter() - start) * 1000.0 / len(inputs))
    ratios = [a / b - 1 for a, b in zip(times["with_map"], times["without_map"])]
    return {
        "invoke_ms_without_map": statistics.median(times["without_map"]),
        "invoke_ms_with_map": statistics.median(times["with_map"]),
        "invoke_share": statistics.median(ratios),
        "invoke_share_range": [min(ratios), max(ratios)],
    }


def summary(record: dict) -> str:
    """One line per variant, each target marked PASS or MISS."""
    lines = [
        (
            f"{record['machine']}; run {record['run']} ({record['grid'][0]}x{record['grid'][1]} map); load average "
            f"{record['load_average_before']} -> {record['load_average_after']}; {record['started_utc']} to "
            f"{record['finished_utc']}; {record['threads']} thread(s)"
        )
    ]
    for name, v in record["variants"].items():
        lo, hi = v["invoke_share_range"]
        lines.append(
            f"{name}: invoke {v['invoke_ms_without_map']:.3f} -> {v['invoke_ms_with_map']:.3f} ms, "
            f"{100 * v['invoke_share']:+.1f}% (rounds {100 * lo:+.1f}..{100 * hi:+.1f}%) "
            f"[<= 10%: {'PASS' if v['invoke_share'] <= 0.10 else 'MISS'}]; size {v['bytes_without_map']} -> "
            f"{v['bytes_with_map']} bytes, +{100 * v['size_share']:.2f}% "
            f"[<= 5%: {'PASS' if v['size_share'] <= 0.05 else 'MISS'}]"
        )
    return "\n".join(lines)


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


if __name__ == "__main__":
    sys.exit(main())
