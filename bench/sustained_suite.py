"""``fuselite bench``'s sustained FPS against a loop written without fuselite, in fresh processes.

    python -m fuselite.bench.suite sustained --bundle int8.tflite [--bundle mnv2.tflite] \\
        [--load none busy] [--rounds 5] [--seconds 3] [--threads 1]

``fuselite bench`` reports each bundle's sustained FPS: the runtime's ``Annotator``
annotating 640x480 frames one after another for ``--sustain`` seconds, in the child
that measures the bundle.  A user picks a model by that column, so this script checks
it against an independent measure.  For every load, round and bundle it starts, one
after the other in fresh processes:

* ``bench``: bench's own child (``python -m fuselite.bench.measure``), with
  ``--sustain SECONDS`` on the frames below; its ``sustained_frames / sustained_wall_s``;
* ``independent``: a loop written here against the interpreter alone (ai-edge-litert or
  tflite-runtime; no fuselite runtime code in the loop): resize each frame as the
  manifest says, BGR to RGB, quantize with the input's parameters, invoke, dequantize,
  score every label with a dot product (its best cell for a regional bundle) and a
  sigmoid, for the same seconds on the same frames.

The frames are 8 synthetic 640x480 pictures (smoothed noise, fixed seed): what they
show does not change the time.  The ``busy`` load is a process burning core 0, as in
the ``busy`` suite.  A ratio is the median of the per-round ratios; the target is
bench / independent within 15%.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from fuselite.bench.busy_suite import (
    _finish,
    _load_context,
    _python,
    _start,
    all_bundles_exist,
    machine_header,
)

TOLERANCE = 0.15
FRAME_SIZE = (480, 640)

INDEPENDENT_SCRIPT = """
import json, sys, time
import cv2, numpy as np
from fuselite.bundle import read_bundle
from fuselite.interpreter import interpreter_class  # ai-edge-litert or tflite-runtime

bundle_path, frames_path, threads, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
bundle = read_bundle(bundle_path)  # parsing and the interpreter's class only; the loop uses no fuselite code
pre = bundle.manifest.preprocessing
frames = np.load(frames_path)
labels = np.ascontiguousarray(bundle.label_embeddings, np.float32)
one_per_class = labels.shape[0] == labels.shape[1] and np.array_equal(labels, np.eye(len(labels)))
interpreter = interpreter_class()(model_content=bundle.model_bytes, num_threads=threads)
interpreter.allocate_tensors()
inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
height, width = inp["shape"][1], inp["shape"][2]
in_scale, in_zero = inp["quantization"]
out_scale, out_zero = out["quantization"]
interpolation = cv2.INTER_AREA if pre.resize == "area" else cv2.INTER_LINEAR
scale, offset = pre.normalization


def one(frame):
    rgb = cv2.cvtColor(cv2.resize(frame, (width, height), interpolation=interpolation), cv2.COLOR_BGR2RGB)
    x = rgb.astype(np.float32) * scale + offset if pre.normalize_on_board else rgb
    raw_pixels = x is rgb and inp["dtype"] == np.uint8 and (in_scale, in_zero) == (1.0, 0)
    if in_scale and inp["dtype"] != np.float32 and not raw_pixels:
        info = np.iinfo(inp["dtype"])
        x = np.clip(np.rint(np.asarray(x, np.float32) / in_scale + in_zero), info.min, info.max)
    interpreter.set_tensor(inp["index"], np.asarray(x, inp["dtype"])[np.newaxis])
    interpreter.invoke()
    y = interpreter.get_tensor(out["index"]).astype(np.float32)
    y = (y - out_zero) * out_scale if out_scale else y
    if one_per_class:  # an imported classifier's output is already per label
        return 1.0 / (1.0 + np.exp(-y.reshape(-1)))
    cells = y.reshape(-1, labels.shape[1])  # one embedding, or one per cell (regional scoring)
    return 1.0 / (1.0 + np.exp(-(cells @ labels.T).max(axis=0)))  # a label scores its best cell


for frame in frames[:3]:
    one(frame)  # warm-up, as bench's child has loaded and checked the bundle first
done, wall, cpu = 0, time.perf_counter(), time.process_time()
end = wall + seconds
while time.perf_counter() < end or done == 0:
    one(frames[done % len(frames)])
    done += 1
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
print(json.dumps({"fps": done / wall, "cpu_ms": cpu * 1000 / done, "cores": cpu / wall}))
"""


def synthetic_frames(count: int = 8, seed: int = 0) -> np.ndarray:
    """uint8 BGR ``[count, 480, 640, 3]``: smoothed noise, like a textured scene."""
    import cv2

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (count, FRAME_SIZE[0] // 16, FRAME_SIZE[1] // 16, 3), dtype=np.uint8)
    return np.stack([cv2.resize(f, FRAME_SIZE[::-1], interpolation=cv2.INTER_CUBIC) for f in small])


def measure_bench(bundle: Path, frames: Path, threads: int, seconds: float, work: Path) -> dict[str, float]:
    """``fuselite bench``'s child on ``bundle``: its sustained figures."""
    summary, scores = work / "summary.json", work / "scores.npy"
    command = [sys.executable, "-m", "fuselite.bench.measure", str(bundle), "--frames", str(frames),
               "--summary", str(summary), "--scores", str(scores), "--threads", str(threads),
               "--warmup", "2", "--runs", "10", "--sustain", str(seconds), "--sustain-frames", str(frames)]
    _finish(_start(command))
    found = json.loads(summary.read_text())
    if "sustained_frames" not in found:
        raise RuntimeError(f"{bundle}: bench measured no sustained loop: {found.get('message') or found}")
    wall, cpu = found["sustained_wall_s"], found["sustained_cpu_s"]
    return {"fps": found["sustained_frames"] / wall, "cpu_ms": cpu * 1000 / found["sustained_frames"],
            "cores": cpu / wall}


def measure_independent(bundle: Path, frames: Path, threads: int, seconds: float) -> dict[str, float]:
    """The loop written here, in a fresh process."""
    out, _rss = _finish(_start(_python(INDEPENDENT_SCRIPT, bundle, frames, threads, seconds)))
    return json.loads(out.splitlines()[-1])


def measure(args: argparse.Namespace, frames: Path, work: Path) -> list[dict[str, Any]]:
    """Every round of every case, interleaved; each case gets its rounds and medians."""
    cases = [{"load": load, "bundle": str(bundle), "threads": args.threads, "rounds": []}
             for load in args.load for bundle in args.bundle]
    for number in range(args.rounds):
        for case in cases:
            with _load_context(case["load"]):
                bench = measure_bench(Path(case["bundle"]), frames, args.threads, args.seconds, work)
                independent = measure_independent(Path(case["bundle"]), frames, args.threads, args.seconds)
            figures = {"bench": bench, "independent": independent, "ratio": bench["fps"] / independent["fps"]}
            case["rounds"].append(figures)
            print(f"round {number + 1}/{args.rounds} {Path(case['bundle']).name} load={case['load']}: "
                  f"bench {bench['fps']:.1f} FPS, independent {independent['fps']:.1f} FPS, "
                  f"ratio {figures['ratio']:.3f}", flush=True)
    for case in cases:
        case["median"] = {part: {key: statistics.median(r[part][key] for r in case["rounds"])
                                 for key in ("fps", "cpu_ms", "cores")} for part in ("bench", "independent")}
        case["median"]["ratio"] = statistics.median(r["ratio"] for r in case["rounds"])
    return cases


def within_target(case: dict[str, Any]) -> bool:
    """Whether the median ratio is within :data:`TOLERANCE` of 1."""
    return abs(case["median"]["ratio"] - 1.0) <= TOLERANCE


def markdown(cases: list[dict[str, Any]], header: dict[str, Any]) -> str:
    """The report: one row per case."""
    lines = [
        (f"{header['date']}, {header['cpu']}, {header['cpus']} cores, load average before {header['load']}; "
         f"{header['seconds']} s per loop, {header['rounds']} rounds, fresh processes, {header['threads']} thread(s)"),
        f"`{header['command']}`",
        "",
        "| bundle | load | bench sustained FPS | independent FPS | bench / independent | CPU ms/frame bench (ind.) | cores bench (ind.) | within 15% |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for case in cases:
        m, ratios = case["median"], [r["ratio"] for r in case["rounds"]]
        lines.append(
            f"| {Path(case['bundle']).name} | {case['load']} | {m['bench']['fps']:.1f} | {m['independent']['fps']:.1f} "
            f"| **{m['ratio']:.3f}** ({min(ratios):.3f}–{max(ratios):.3f}) "
            f"| {m['bench']['cpu_ms']:.2f} ({m['independent']['cpu_ms']:.2f}) "
            f"| {m['bench']['cores']:.2f} ({m['independent']['cores']:.2f}) | {'yes' if within_target(case) else '**no**'} |")
    return "\n".join(lines)


def _header(args: argparse.Namespace) -> dict[str, Any]:
    return {**machine_header("sustained", args.argv), "seconds": args.seconds, "rounds": args.rounds,
            "threads": args.threads}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m fuselite.bench.suite sustained", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, action="append", required=True, help="a bundle (repeatable)")
    parser.add_argument("--threads", type=int, default=1, help="interpreter threads (default 1)")
    parser.add_argument("--load", nargs="+", choices=("none", "busy"), default=["none", "busy"],
                        help="load conditions (default: both)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per loop (default 3, as bench)")
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def main(argv: list[str] | None = None) -> int:
    """Measures, prints the Markdown table, writes the JSON if asked; 1 if a case misses 15%."""
    args = parse_args(argv)
    if not all_bundles_exist(args.bundle):
        return 2
    header = _header(args)
    with tempfile.TemporaryDirectory(prefix="fuselite-sustained-") as tmp:
        frames = Path(tmp) / "frames.npy"
        np.save(frames, synthetic_frames())
        cases = measure(args, frames, Path(tmp))
    print(markdown(cases, header))
    if args.json:
        from fuselite.files import write_atomic

        write_atomic(args.json, json.dumps({"header": header, "cases": cases}, indent=1).encode())
    return 0 if all(within_target(case) for case in cases) else 1


if __name__ == "__main__":
    sys.exit(main())
