"""Measures the runtime against its targets, on this machine or on a board.

    python -m fuselite.runtime.benchmark --bundle model.tflite --video clip.mp4 [--threads 1]

In one run (so the ratios compare like with like) it measures:

* raw ``invoke()`` throughput of the bundle's image model with the given threads;
* a sequential read -> preprocess -> infer -> draw loop, like the TFLite Raspberry Pi
  example (one thread, no capture thread);
* the end-to-end ``fuselite run`` loop on the video file (every frame, JSONL events);
* cold start: a fresh process importing the runtime, loading the bundle and
  annotating its first frame;
* resident memory over a long run (``--memory-frames``, 20,000 by default) and its growth.

Each figure is the best of ``--rounds`` interleaved rounds (as ``timeit`` does: on a
shared machine the best round is the least disturbed one). It prints a Markdown
table and, with ``--json``, writes every figure for machines. A measurement that
fails becomes a row saying so instead of stopping the benchmark.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from fuselite.bundle import read_bundle
from fuselite.runtime.interpreter import TfliteModel, interpreter_name
from fuselite.runtime.labels import bundle_labels
from fuselite.runtime.options import AnnotatorOptions, RunOptions
from fuselite.runtime.preprocess import Preprocessor
from fuselite.runtime.scoring import Scorer

log = logging.getLogger(__name__)

TARGETS = {
    "e2e_vs_invoke": 0.95,
    "e2e_vs_sequential": 1.0,
    "cold_start_s": 1.0,
    "peak_rss_mb": 120.0,
    "rss_growth_mb": 5.0,
}
RATIOS = {
    "e2e_vs_invoke": ("e2e_fps", "invoke_fps"),
    "e2e_vs_sequential": ("e2e_fps", "sequential_fps"),
}
COLD_START_SCRIPT = """
import sys, time
import cv2
from fuselite.runtime import Annotator, AnnotatorOptions
capture = cv2.VideoCapture(sys.argv[2])
ok, frame = capture.read()
with Annotator.create(AnnotatorOptions(sys.argv[1], num_threads=int(sys.argv[3]))) as annotator:
    result = annotator.annotate(frame, 0)
print("first-result", flush=True)
"""


def raw_invoke_fps(bundle_path: Path, threads: int, seconds: float) -> float:
    """Invocations per second of the image model alone, input already set."""
    bundle = read_bundle(bundle_path)
    model = TfliteModel(bundle.model_bytes, threads, name="image model")
    sample = np.zeros(model.input.shape, model.input.dtype)
    model.run(sample)
    for _ in range(20):
        model.invoke()
    return _rate(model.invoke, seconds)


def sequential_fps(bundle_path: Path, video: Path, threads: int, frames: int) -> float:
    """Frames per second of read -> preprocess -> infer -> draw in one thread (TFLite Pi example)."""
    bundle = read_bundle(bundle_path)
    model = TfliteModel(bundle.model_bytes, threads, name="image model")
    preprocess = Preprocessor(bundle.manifest, model.input)
    scorer = Scorer(bundle.manifest, model.output, bundle_labels(bundle).embeddings)
    labels = bundle.manifest.labels
    capture = cv2.VideoCapture(str(video))
    start, fps = time.perf_counter(), 0.0
    for i in range(frames):
        ok, frame = capture.read()
        if not ok:
            capture.release()
            capture = cv2.VideoCapture(str(video))
            ok, frame = capture.read()
        probabilities = scorer(model.run(preprocess(frame)))
        top = int(np.argmax(probabilities))
        text = f"{labels[top]} {probabilities[top]:.2f}  {fps:.1f} fps"
        cv2.putText(frame, text, (10, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (0, 255, 0), 2)
        fps = (i + 1) / (time.perf_counter() - start)
    capture.release()
    return frames / (time.perf_counter() - start)


def end_to_end_fps(bundle_path: Path, video: Path, threads: int, frames: int) -> float:
    """Annotated frames per second of the real run loop on the video (JSONL to /dev/null)."""
    from fuselite.runtime.loop import run

    options = RunOptions(
        str(video), jsonl=os.devnull, loop=True, max_frames=frames, stats_interval=0, display="off"
    )
    summary = run(options, AnnotatorOptions(bundle_path, num_threads=threads))
    return summary.frames / summary.seconds


def cold_start_s(bundle_path: Path, video: Path, threads: int, repeats: int = 3) -> float:
    """Best seconds of ``repeats`` runs from starting a fresh Python to the first result."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", COLD_START_SCRIPT, str(bundle_path), str(video), str(threads)],
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        if "first-result" not in done.stdout:
            raise RuntimeError(f"cold start run printed no result: {done.stderr.strip()[-300:]}")
        times.append(time.perf_counter() - start)
    return min(times)


def memory(bundle_path: Path, video: Path, threads: int, frames: int) -> dict[str, float]:
    """RSS of a ``fuselite run`` subprocess over ``frames`` frames: peak, and growth after warm-up."""
    with tempfile.TemporaryDirectory() as tmp:
        jsonl = Path(tmp) / "events.jsonl"
        command = [
            sys.executable,
            "-m",
            "fuselite.cli",
            "run",
            "--bundle",
            str(bundle_path),
            "--source",
            str(video),
            "--loop",
            "--max-frames",
            str(frames),
            "--threads",
            str(threads),
            "--jsonl",
            str(jsonl),
            "--stats-interval",
            "1",
            "--display",
            "off",
        ]
        subprocess.run(command, capture_output=True, text=True, check=True, timeout=3600)
        stats = [r for r in map(json.loads, jsonl.open()) if r.get("type") == "stats"]
    warm = next((r for r in stats if r["frames"] >= min(1000, frames // 10)), stats[0])
    return {
        "peak_rss_mb": max(r["rss_mb"] for r in stats),
        "rss_after_warmup_mb": warm["rss_mb"],
        "rss_final_mb": stats[-1]["rss_mb"],
        "rss_growth_mb": stats[-1]["rss_mb"] - warm["rss_mb"],
        "memory_frames": stats[-1]["frames"],
    }


def _rate(step: Callable[[], Any], seconds: float) -> float:
    count, start = 0, time.perf_counter()
    while True:
        for _ in range(10):
            step()
        count += 10
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return count / elapsed


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Runs every measurement; a failing one is recorded as an error, not raised."""
    figures: dict[str, Any] = {"machine": machine_info(args.threads), "errors": {}}
    bundle, video, threads = args.bundle, args.video, args.threads
    throughputs = {
        "invoke_fps": lambda: raw_invoke_fps(bundle, threads, args.seconds),
        "sequential_fps": lambda: sequential_fps(bundle, video, threads, args.frames),
        "e2e_fps": lambda: end_to_end_fps(bundle, video, threads, args.frames),
    }
    rounds: dict[str, list[float]] = {name: [] for name in throughputs}
    for _ in range(args.rounds):  # interleaved, so a busy moment hits every measure alike
        for name, work in throughputs.items():
            value = _attempt(figures, name, work)
            if value is not None:
                rounds[name].append(value)
    for name, values in rounds.items():
        if values:
            figures[name] = max(values)
            figures[f"{name}_rounds"] = values
    for ratio, (numerator, denominator) in RATIOS.items():
        if numerator in figures and denominator in figures:
            figures[ratio] = figures[numerator] / figures[denominator]
    cold = _attempt(figures, "cold_start_s", lambda: cold_start_s(bundle, video, threads))
    if cold is not None:
        figures["cold_start_s"] = cold
    if args.memory_frames:
        work = functools.partial(memory, bundle, video, threads, args.memory_frames)
        figures.update(_attempt(figures, "memory", work) or {})
    return figures


def _attempt(figures: dict[str, Any], name: str, work: Callable[[], Any]) -> Any:
    """Returns what ``work`` returns, or ``None`` after recording its error."""
    try:
        return work()
    except Exception as exc:  # noqa: BLE001 - one failing measurement must not hide the others
        log.warning("%s failed: %s", name, exc)
        figures["errors"][name] = f"{type(exc).__name__}: {exc}"
        return None


def machine_info(threads: int) -> dict[str, Any]:
    """Where and with what the figures were measured."""
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": platform.machine(),
        "processor": _cpu_model(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "interpreter": interpreter_name(),
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "threads": threads,
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def markdown(figures: dict[str, Any]) -> str:
    """The figures as a Markdown table with the targets."""
    rows = [
        ("raw invoke() throughput", "invoke_fps", "{:.1f} FPS", None, None),
        (
            "sequential read→infer→draw (TFLite Pi example)",
            "sequential_fps",
            "{:.1f} FPS",
            None,
            None,
        ),
        ("end-to-end `fuselite run` on the video", "e2e_fps", "{:.1f} FPS", None, None),
        ("end-to-end / raw invoke", "e2e_vs_invoke", "{:.3f}×", "≥ 0.95×", "e2e_vs_invoke"),
        (
            "end-to-end / sequential loop",
            "e2e_vs_sequential",
            "{:.3f}×",
            "≥ 1.0×",
            "e2e_vs_sequential",
        ),
        (
            "cold start (import, load, first result)",
            "cold_start_s",
            "{:.2f} s",
            "≤ 1 s",
            "cold_start_s",
        ),
        ("peak resident memory", "peak_rss_mb", "{:.1f} MB", "≤ 120 MB", "peak_rss_mb"),
        ("memory growth after warm-up", "rss_growth_mb", "{:+.1f} MB", "≤ 5 MB", "rss_growth_mb"),
    ]
    lines = ["| measure | value | target | status |", "| --- | --- | --- | --- |"]
    for title, key, fmt, target, target_key in rows:
        value = fmt.format(figures[key]) if key in figures else "not measured"
        lines.append(
            f"| {title} | {value} | {target or ''} | {_status(figures, key, target_key)} |"
        )
    info = figures["machine"]
    lines.append("")
    lines.append(
        f"{info['date']}; {info['processor']} ({info['machine']}, {info['cpus']} CPUs); "
        f"{info['threads']} interpreter thread(s); {info['interpreter']}; Python {info['python']}, "
        f"numpy {info['numpy']}, OpenCV {info['opencv']}; memory over "
        f"{figures.get('memory_frames', 0)} frames."
    )
    for name, error in figures["errors"].items():
        lines.append(f"- {name} failed: {error}")
    return "\n".join(lines)


def _status(figures: dict[str, Any], key: str, target_key: str | None) -> str:
    if key not in figures:
        return "error" if any(key.startswith(k[:6]) for k in figures["errors"]) else "n/a"
    if target_key is None:
        return ""
    limit = TARGETS[target_key]
    lower_is_better = target_key in ("cold_start_s", "peak_rss_mb", "rss_growth_mb")
    ok = figures[key] <= limit if lower_is_better else figures[key] >= limit
    return "pass" if ok else "FAIL"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The benchmark's command line."""
    parser = argparse.ArgumentParser(
        prog="python -m fuselite.runtime.benchmark", description=__doc__
    )
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--bundle", type=Path, required=True, help="the bundle (.tflite)")
    parser.add_argument("--video", type=Path, required=True, help="a video file to annotate")
    parser.add_argument("--threads", type=int, default=1, help="interpreter threads (default 1)")
    parser.add_argument("--frames", type=int, default=400, help="frames per throughput round")
    parser.add_argument(
        "--seconds", type=float, default=1.0, help="seconds of raw invoke per round"
    )
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (best taken)")
    parser.add_argument(
        "--memory-frames", type=int, default=20_000, help="frames of the memory run (0 skips it)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark and prints the Markdown table; returns 1 if a target is missed."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not args.bundle.is_file() or not args.video.is_file():
        print("error: --bundle and --video must be existing files", file=sys.stderr)
        return 2
    figures = measure(args)
    print(markdown(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    statuses = [_status(figures, key, key) for key in TARGETS]
    return 0 if all(s == "pass" for s in statuses) else 1


if __name__ == "__main__":
    sys.exit(main())
