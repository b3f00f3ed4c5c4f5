"""``fuselite run`` against the naive loop on a busy machine, in fresh processes.

    python -m fuselite.bench.suite busy --bundle int8.tflite [--bundle mnv2.tflite] \\
        [--threads 1 2] [--load none busy] [--rounds 5] [--frames 600]

A board rarely runs one program: it records, serves a page, runs a second camera.
This script measures what a user sees there.  For every load condition, round,
bundle and thread count it starts, one after the other in fresh processes:

* ``invoke``: raw ``invoke()`` of the image model, input already set (the ceiling of
  inference alone);
* ``sequential``: the TFLite Raspberry Pi example's loop, one thread: read a frame,
  preprocess it as the manifest says, invoke, score, draw the top label;
* ``run``: ``fuselite run`` on the same video (every frame, JSONL events to a file);
* ``pair``: two ``fuselite run`` processes side by side, each on the video (two cameras).

The ``busy`` load is a CPU-burning process pinned to core 0 for the whole
measurement (``stress-ng --cpu 1 --taskset 0`` does the same), so one of two cores
is taken; ``none`` runs with no added load (other jobs of a shared machine may still
run: the load average is recorded).  Rounds interleave every measure so a busy moment
hits them alike; a figure is the median of its rounds and a ratio the median of the
per-round ratios.  Each process reports its frames per second over its loop, the
process CPU time per frame of that loop, and the cores it got (CPU time / wall
time); peak RSS is the kernel's ``ru_maxrss`` of the whole process, as
``/usr/bin/time -v`` reports it.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fuselite.bench.measure import vm_hwm_kib

SEQUENTIAL_SCRIPT = """
import json, sys, time
import cv2, numpy as np
from fuselite.bundle import read_bundle
from fuselite.runtime.interpreter import TfliteModel
from fuselite.runtime.labels import bundle_labels
from fuselite.runtime.preprocess import Preprocessor, check_output
from fuselite.scoring import FrameScorer

bundle_path, video, threads, frames = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
bundle = read_bundle(bundle_path)
manifest = bundle.manifest
model = TfliteModel(bundle.model_bytes, threads, name="image model")
preprocess = Preprocessor(manifest, model.input)
scorer = FrameScorer(bundle_labels(bundle).embeddings, manifest.logit_scale, manifest.logit_bias,
                     check_output(manifest, model.output), manifest.output_activation)
capture = cv2.VideoCapture(video)
wall, cpu, fps = time.perf_counter(), time.process_time(), 0.0
for i in range(frames):
    ok, frame = capture.read()
    if not ok:
        capture.release()
        capture = cv2.VideoCapture(video)
        ok, frame = capture.read()
    probabilities = scorer(model.run(preprocess(frame)))
    top = int(np.argmax(probabilities))
    text = f"{manifest.labels[top]} {probabilities[top]:.2f}  {fps:.1f} fps"
    cv2.putText(frame, text, (10, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (0, 255, 0), 2)
    fps = (i + 1) / (time.perf_counter() - wall)
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
print(json.dumps({"fps": frames / wall, "cpu_ms": cpu * 1000 / frames, "cores": cpu / wall}))
"""

INVOKE_SCRIPT = """
import json, sys, time
import numpy as np
from fuselite.bundle import read_bundle
from fuselite.runtime.interpreter import TfliteModel

bundle_path, threads, frames = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
model = TfliteModel(read_bundle(bundle_path).model_bytes, threads, name="image model")
model.run(np.zeros(model.input.shape, model.input.dtype))
wall, cpu = time.perf_counter(), time.process_time()
for _ in range(frames):
    model.invoke()
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
print(json.dumps({"fps": frames / wall, "cpu_ms": cpu * 1000 / frames, "cores": cpu / wall}))
"""

FLOOR_SCRIPT = "import numpy, cv2\nfrom fuselite.interpreter import interpreter_class\ninterpreter_class()\n"
BURNER_SCRIPT = "import os\nos.sched_setaffinity(0, {0})\nwhile True:\n    pass\n"
TARGETS = {"run_vs_sequential": 1.0, "run_vs_invoke": 0.9, "pair_vs_run": 0.45, "cpu_vs_sequential": 1.1}


# --- one measure in a fresh process ----------------------------------------------


def _start(command: list[str]) -> subprocess.Popen:
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(process: subprocess.Popen, timeout: float = 900.0) -> tuple[str, float]:
    """Waits for ``process``; its stdout and its peak RSS in MiB.

    The peak is the child's own ``VmHWM``, read while it runs, plus that of the programs
    it started (the ``ffmpeg`` decoding for ``fuselite run``): a board holds both.
    ``wait4``'s ``ru_maxrss`` would keep the high-water mark this benchmark had when it
    forked, before ``exec``.
    """
    deadline = time.monotonic() + timeout
    peak_kib = 0
    while True:
        tree = [process.pid, *child_pids(process.pid)]
        peak_kib = max(peak_kib, sum(vm_hwm_kib(pid) or 0 for pid in tree))
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"timed out: {shlex.join(process.args)}")
        time.sleep(0.05)
    process.returncode = os.waitstatus_to_exitcode(status)
    out, err = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"exit {process.returncode}: {err.strip()[-400:]}")
    return out, (peak_kib or usage.ru_maxrss) / 1024  # ru_maxrss only where /proc is silent


def child_pids(pid: int) -> list[int]:
    """The processes ``pid`` started that still run (Linux's ``/proc/PID/task/*/children``)."""
    pids = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                pids += [int(child) for child in f.read().split()]
    except (OSError, ValueError):
        pass
    return pids


def _python(script: str, *args: object) -> list[str]:
    return [sys.executable, "-c", script, *map(str, args)]


def _run_command(bundle: Path, video: Path, threads: int, frames: int, jsonl: Path) -> list[str]:
    return [
        sys.executable, "-m", "fuselite.cli", "run", "--bundle", str(bundle), "--source", str(video),
        "--loop", "--max-frames", str(frames), "--threads", str(threads), "--jsonl", str(jsonl),
        "--stats-interval", "0", "--display", "off",
    ]  # fmt: skip


def _run_figures(jsonl: Path, rss_mb: float) -> dict[str, float]:
    """The figures of a finished ``fuselite run`` from its final stats record."""
    final = [r for r in map(json.loads, jsonl.open()) if r.get("type") == "stats" and r.get("final")]
    if not final:
        raise RuntimeError(f"{jsonl}: no final stats record")
    record = final[-1]
    return {
        "fps": record["frames"] / record["elapsed_s"],
        "cpu_ms": record["cpu_ms_per_frame"],
        "cores": record["cores"],
        "rss_mb": rss_mb,
    }


def measure_invoke(bundle: Path, threads: int, frames: int) -> dict[str, float]:
    """Raw invoke() in a fresh process."""
    out, rss = _finish(_start(_python(INVOKE_SCRIPT, bundle, threads, frames)))
    return {**json.loads(out.splitlines()[-1]), "rss_mb": rss}


def measure_sequential(bundle: Path, video: Path, threads: int, frames: int) -> dict[str, float]:
    """The naive one-thread loop in a fresh process."""
    out, rss = _finish(_start(_python(SEQUENTIAL_SCRIPT, bundle, video, threads, frames)))
    return {**json.loads(out.splitlines()[-1]), "rss_mb": rss}


def library_floor_mb() -> float:
    """Peak RSS of a process that only imports numpy, OpenCV and the interpreter: the floor."""
    return _finish(_start(_python(FLOOR_SCRIPT)))[1]


def measure_runs(bundle: Path, video: Path, threads: int, frames: int, copies: int) -> list[dict[str, float]]:
    """``copies`` ``fuselite run`` processes started together; the figures of each."""
    with tempfile.TemporaryDirectory(prefix="fuselite-busy-") as tmp:
        jsonls = [Path(tmp) / f"events-{i}.jsonl" for i in range(copies)]
        processes = [_start(_run_command(bundle, video, threads, frames, j)) for j in jsonls]
        finished = [_finish(p) for p in processes]
        return [_run_figures(j, rss) for j, (_out, rss) in zip(jsonls, finished)]


# --- load ----------------------------------------------------------------------------


class Burner:
    """A process burning core 0 while the ``with`` block runs (``busy`` load)."""

    def __enter__(self) -> Burner:  # noqa: PYI034 (typing.Self needs Python 3.11; 3.10 is supported)
        self.process = subprocess.Popen([sys.executable, "-c", BURNER_SCRIPT])
        time.sleep(0.5)  # let it settle on its core
        return self

    def __exit__(self, *exc_info) -> None:
        self.process.kill()
        self.process.wait()


def _load_context(load: str):
    import contextlib

    return Burner() if load == "busy" else contextlib.nullcontext()


# --- the rounds ------------------------------------------------------------------------


def one_round(bundle: Path, video: Path, threads: int, frames: int) -> dict[str, dict[str, float]]:
    """Every measure once, in fresh processes, one after the other."""
    single = measure_runs(bundle, video, threads, frames, 1)[0]
    pair = measure_runs(bundle, video, threads, frames, 2)
    return {
        "invoke": measure_invoke(bundle, threads, frames * 3),
        "sequential": measure_sequential(bundle, video, threads, frames),
        "run": single,
        "pair": {"fps": min(p["fps"] for p in pair), "cpu_ms": max(p["cpu_ms"] for p in pair),
                 "cores": sum(p["cores"] for p in pair), "rss_mb": max(p["rss_mb"] for p in pair)},
    }


def ratios(figures: dict[str, dict[str, float]]) -> dict[str, float]:
    """The targets' ratios of one round."""
    return {
        "run_vs_sequential": figures["run"]["fps"] / figures["sequential"]["fps"],
        "run_vs_invoke": figures["run"]["fps"] / figures["invoke"]["fps"],
        "pair_vs_run": figures["pair"]["fps"] / figures["run"]["fps"],
        "cpu_vs_sequential": figures["run"]["cpu_ms"] / figures["sequential"]["cpu_ms"],
    }


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    """All rounds of all cases; each case: its per-round figures and the medians."""
    cases = [
        {"load": load, "bundle": str(bundle), "threads": threads, "rounds": []}
        for load in args.load for bundle in args.bundle for threads in args.threads
    ]  # fmt: skip
    for round_number in range(args.rounds):
        for case in cases:
            with _load_context(case["load"]):
                figures = one_round(Path(case["bundle"]), args.video, case["threads"], args.frames)
            figures["ratios"] = ratios(figures)
            case["rounds"].append(figures)
            print(f"round {round_number + 1}/{args.rounds} {_label(case)}: " + _brief(figures), flush=True)
    for case in cases:
        case["median"] = _medians(case["rounds"])
    return cases


def _medians(rounds: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    return {
        part: {key: statistics.median(r[part][key] for r in rounds) for key in rounds[0][part]}
        for part in rounds[0]
    }


def _label(case: dict[str, Any]) -> str:
    return f"{Path(case['bundle']).name} threads={case['threads']} load={case['load']}"


def _brief(figures: dict[str, dict[str, float]]) -> str:
    fps = ", ".join(f"{part} {figures[part]['fps']:.1f}" for part in ("invoke", "sequential", "run", "pair"))
    r = figures["ratios"]
    return (f"FPS {fps}; run/sequential {r['run_vs_sequential']:.2f}, run/invoke {r['run_vs_invoke']:.2f}, "
            f"pair/run {r['pair_vs_run']:.2f}, CPU/frame run/sequential {r['cpu_vs_sequential']:.2f}")


def markdown(cases: list[dict[str, Any]], header: dict[str, Any]) -> str:
    """The report: one row per case, medians with the min-max of the ratios."""
    lines = [
        (f"{header['date']}, {header['cpu']}, {header['cpus']} cores, load average before {header['load']}; "
         f"{header['frames']} frames per process, {header['rounds']} rounds, fresh processes; "
         f"peak RSS of importing numpy, OpenCV and the interpreter alone: {header['library_floor_mb']:.0f} MB"),
        f"`{header['command']}`",
        "",
        ("| bundle | threads | load | invoke FPS | sequential FPS | run FPS | run / sequential | "
         "run / invoke | pair / run | CPU ms/frame run (seq) | cores run (seq) | peak RSS run (seq) |"),
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for case in cases:
        m, rounds = case["median"], case["rounds"]
        spread = {k: (min(r["ratios"][k] for r in rounds), max(r["ratios"][k] for r in rounds))
                  for k in TARGETS}
        cells = [Path(case["bundle"]).name, str(case["threads"]), case["load"]]
        cells += [f"{m[p]['fps']:.1f}" for p in ("invoke", "sequential", "run")]
        cells += [f"{m['ratios'][k]:.2f} ({spread[k][0]:.2f}–{spread[k][1]:.2f})"
                  for k in ("run_vs_sequential", "run_vs_invoke", "pair_vs_run")]
        cells += [f"{m['run']['cpu_ms']:.2f} ({m['sequential']['cpu_ms']:.2f})",
                  f"{m['run']['cores']:.2f} ({m['sequential']['cores']:.2f})",
                  f"{m['run']['rss_mb']:.0f} MB ({m['sequential']['rss_mb']:.0f} MB)"]
        lines.append("| " + " | ".join(cells) + " |")
    targets = ", ".join(f"{k} ≥ {v}" if k != "cpu_vs_sequential" else f"{k} ≤ {v}" for k, v in TARGETS.items())
    lines += ["", f"Targets: {targets}."]
    return "\n".join(lines)


def machine_header(suite: str, argv: list[str]) -> dict[str, Any]:
    """What every runtime suite's report starts with: date, CPU, cores, load, the command."""
    from fuselite.bench.runtime_suite import _cpu_model

    return {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "cpu": _cpu_model(), "cpus": os.cpu_count(),
            "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
            "command": shlex.join(["python", "-m", "fuselite.bench.suite", suite, *argv])}


def all_bundles_exist(bundles: list[Path]) -> bool:
    """True, or False after one line naming the bundles that are not files."""
    missing = [str(b) for b in bundles if not b.is_file()]
    if missing:
        print(f"error: no such bundle: {', '.join(missing)}", file=sys.stderr)
    return not missing


def _header(args: argparse.Namespace) -> dict[str, Any]:
    return {**machine_header("busy", args.argv), "frames": args.frames, "rounds": args.rounds,
            "library_floor_mb": round(library_floor_mb(), 1)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m fuselite.bench.suite busy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, action="append", required=True, help="a bundle (repeatable)")
    parser.add_argument("--video", type=Path, help="the clip (default: a 640x480 30 fps clip made once)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1], help="interpreter threads (default 1)")
    parser.add_argument("--load", nargs="+", choices=("none", "busy"), default=["none", "busy"],
                        help="load conditions (default: both)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--frames", type=int, default=600, help="frames per process (default 600)")
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def main(argv: list[str] | None = None) -> int:
    """Measures, prints the Markdown table, writes the JSON if asked."""
    from fuselite.bench.runtime_suite import DEFAULT_WORK_DIR, benchmark_clip

    args = parse_args(argv)
    if not all_bundles_exist(args.bundle):
        return 2
    args.video = args.video or benchmark_clip(DEFAULT_WORK_DIR)
    header = _header(args)
    cases = measure(args)
    print(markdown(cases, header))
    if args.json:
        from fuselite.files import write_atomic

        write_atomic(args.json, json.dumps({"header": header, "cases": cases}, indent=1).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
