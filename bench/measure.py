"""Measures one bundle through the runtime's own code path, in a process of its own.

``python -m fuselite.bench.measure`` is started once per bundle by
:mod:`fuselite.bench.runner`, so each bundle's peak memory and load time are its own
and a bundle that crashes the interpreter costs one row, not the benchmark.  The child:

1. loads the bundle as a board does (:func:`fuselite.bundle.read_bundle`, the
   runtime's :class:`~fuselite.runtime.interpreter.TfliteModel` and
   :class:`~fuselite.runtime.preprocess.Preprocessor`): the load time;
2. annotates frames: warm-up runs, then timed runs of preprocess + invoke + scoring
   (latency per frame); the process's peak resident memory is read right after;
3. scores every frame with :func:`fuselite.scoring.label_probabilities` (the scorer
   every stage shares; it handles ``[1, D]`` and regional ``[1, cells, D]`` outputs);
4. checks that ``fuselite run``'s :class:`~fuselite.runtime.Annotator` loads the bundle
   and gives the same scores;
5. with ``--sustain S``: runs that Annotator's loop (preprocess + invoke + scoring, one
   frame after another, as ``fuselite run`` does) for S seconds, and records the frames,
   the wall time and the process's CPU time (every thread's, the interpreter's included).

It writes the probabilities to an ``.npy`` file and a JSON summary; no TensorFlow.
While it works it prints progress lines on stdout (at least one per
:data:`HEARTBEAT_S` of progress, and ``phase NAME`` when a step starts), so the parent
can tell a slow bundle from one that hangs and kill the latter.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fuselite.bundle import Bundle, BundleError, read_bundle
from fuselite.scoring import activate, label_probabilities

LATENCY_FRAMES = 32  # distinct frames cycled through by the timed runs
ANNOTATOR_FRAMES = 8  # frames compared between this path and fuselite run's Annotator
ANNOTATOR_TOLERANCE = 1e-4  # the Annotator folds logit_scale into the weights: float rounding
HEARTBEAT_S = 0.2  # at most this often a progress line: negligible next to any frame


class Heartbeat:
    """Progress lines on stdout for the parent's watchdog: ``phase NAME``, then ``.`` as frames finish."""

    def __init__(self, stream=None) -> None:
        self._stream = stream
        self._last = 0.0
        self.current = "starting"

    def phase(self, name: str) -> None:
        """Announces a step (it names the step a timeout or an error happened in)."""
        self.current = name
        self._write(f"phase {name}")

    def beat(self) -> None:
        """Called after every frame; writes a line at most every :data:`HEARTBEAT_S`."""
        if time.monotonic() - self._last >= HEARTBEAT_S:
            self._write(".")

    def _write(self, line: str) -> None:
        self._last = time.monotonic()
        if self._stream is not None:
            self._stream.write(line + "\n")
            self._stream.flush()


SILENT = Heartbeat()


@dataclass
class LoadedBundle:
    """A bundle loaded the way the runtime loads it.

    Attributes:
        bundle: The verified bundle.
        model: The runtime's TfliteModel of the image model.
        preprocessor: The runtime's Preprocessor for that model.
        output_quant: ``(scale, zero_point)`` of a quantized embedding, else ``None``.
    """

    bundle: Bundle
    model: object
    preprocessor: object
    output_quant: tuple[float, int] | None

    def embedding(self, frame_bgr: np.ndarray) -> np.ndarray:
        """The float32 image embedding (``[1, D]`` or ``[1, cells, D]``) of one BGR frame."""
        return self.output_embedding(self.model.run(self.preprocessor(frame_bgr)))

    def output_embedding(self, output: np.ndarray) -> np.ndarray:
        """The float32 embedding a raw model output stands for: dequantized, then activated."""
        output = output.astype(np.float32)
        if self.output_quant is not None:
            scale, zero_point = self.output_quant
            output = (output - zero_point) * scale
        return activate(output, self.bundle.manifest.output_activation)

    def probabilities(self, frame_bgr: np.ndarray) -> np.ndarray:
        """float32 ``[labels]`` probabilities of one BGR frame."""
        manifest = self.bundle.manifest
        return label_probabilities(self.embedding(frame_bgr), self.bundle.label_embeddings,
                                   manifest.logit_scale, manifest.logit_bias)[0]


def load(path: Path, num_threads: int) -> LoadedBundle:
    """Reads, verifies and loads a bundle; :class:`BundleError` when it cannot be used."""
    from fuselite.runtime.interpreter import TfliteModel
    from fuselite.runtime.preprocess import Preprocessor, check_output

    bundle = read_bundle(path)
    model = TfliteModel(bundle.model_bytes, num_threads, name="image model")
    preprocessor = Preprocessor(bundle.manifest, model.input)
    return LoadedBundle(bundle, model, preprocessor, check_output(bundle.manifest, model.output))


def time_frames(loaded: LoadedBundle, frames: np.ndarray, warmup: int, runs: int,
                heartbeat: Heartbeat = SILENT) -> dict:
    """Warm-up runs, then ``runs`` timed frames; per-frame milliseconds, end to end and invoke only."""
    heartbeat.phase("warming up")
    for i in range(warmup):
        loaded.probabilities(frames[i % len(frames)])
        heartbeat.beat()
    heartbeat.phase("timing single frames")
    total, invoke = [], []
    for i in range(runs):
        frame = frames[i % len(frames)]
        start = time.perf_counter()
        model_input = loaded.preprocessor(frame)
        before_invoke = time.perf_counter()
        output = loaded.model.run(model_input)
        after_invoke = time.perf_counter()
        _score(loaded, output)
        end = time.perf_counter()
        total.append((end - start) * 1000.0)
        invoke.append((after_invoke - before_invoke) * 1000.0)
        heartbeat.beat()
    return {"frame_ms": total, "invoke_ms": invoke}


def _score(loaded: LoadedBundle, output: np.ndarray) -> np.ndarray:
    """Scoring as :meth:`LoadedBundle.probabilities` does it, from a raw model output."""
    manifest = loaded.bundle.manifest
    return label_probabilities(loaded.output_embedding(output), loaded.bundle.label_embeddings,
                               manifest.logit_scale, manifest.logit_bias)


def score_all(loaded: LoadedBundle, frames: np.ndarray, heartbeat: Heartbeat = SILENT) -> np.ndarray:
    """float32 ``[N, labels]`` probabilities of every frame."""
    heartbeat.phase("scoring the data")
    scores = np.empty((len(frames), len(loaded.bundle.manifest.labels)), np.float32)
    for i in range(len(frames)):
        scores[i] = loaded.probabilities(np.ascontiguousarray(frames[i]))
        heartbeat.beat()
    return scores


def map_all(loaded: LoadedBundle, frames: np.ndarray, heartbeat: Heartbeat = SILENT) -> np.ndarray | None:
    """float32 ``[N, labels, rows, cols]``: every label's map of logits on every frame
    (:func:`fuselite.maps.logit_maps`; logits, so strong cells do not tie at probability
    1.0), or ``None`` when the bundle has no label maps."""
    from fuselite.maps import cam_cells, logit_maps
    from fuselite.runtime.annotator import map_grid

    manifest, model = loaded.bundle.manifest, loaded.model
    if map_grid(manifest, model.output, model.map_output) is None:
        return None
    heartbeat.phase("mapping the labels")
    maps = []
    for frame in frames:
        cells = loaded.embedding(np.ascontiguousarray(frame))[0]
        if model.map_output is not None:  # a pooled model's class activation map
            label_map = model.label_map().astype(np.float32)
            if manifest.label_maps.output_quant is not None:
                scale, zero_point = manifest.label_maps.output_quant
                label_map = (label_map - zero_point) * scale
            cells = cam_cells(label_map[0])
        maps.append(logit_maps(cells, loaded.bundle.label_embeddings, manifest.logit_scale,
                                       manifest.logit_bias))
        heartbeat.beat()
    return np.stack(maps)


def open_annotator(path: Path, num_threads: int):
    """``fuselite run``'s Annotator on the bundle: ``(annotator, "")`` or ``(None, why it cannot load)``."""
    from fuselite.runtime.annotator import Annotator
    from fuselite.runtime.options import AnnotatorOptions

    try:
        return Annotator.create(AnnotatorOptions(path, num_threads=num_threads)), ""
    except (BundleError, ValueError) as exc:
        return None, f"`fuselite run` cannot load it: {exc}"


def annotator_problem(annotator, frames: np.ndarray, scores: np.ndarray, heartbeat: Heartbeat = SILENT) -> str:
    """Why ``fuselite run``'s Annotator does not give the benchmark's scores ("" if it does)."""
    heartbeat.phase("comparing with fuselite run's scores")
    worst = 0.0
    try:
        for i in range(min(ANNOTATOR_FRAMES, len(frames))):
            result = annotator.annotate(np.ascontiguousarray(frames[i]), timestamp_ms=1000.0 * i)
            runtime_scores = np.array([result.scores[label] for label in annotator.labels])
            worst = max(worst, float(np.abs(runtime_scores - scores[i]).max()))
            heartbeat.beat()
    except (ValueError, KeyError, RuntimeError) as exc:  # the runtime refusing a frame is a finding
        return f"`fuselite run` fails on its frames: {exc}"
    if not worst <= ANNOTATOR_TOLERANCE:
        return f"`fuselite run` scores differ from the benchmark's by up to {worst:.2g}"
    return ""


def sustained(annotator, frames: np.ndarray, seconds: float, heartbeat: Heartbeat = SILENT) -> dict:
    """``fuselite run``'s loop for ``seconds``: frames done, wall seconds and process CPU seconds.

    One frame after another through the Annotator (preprocess from the BGR frame, invoke,
    scoring, smoothing, label selection), as ``fuselite run`` does without a source to
    decode.  CPU time is the whole process's (``time.process_time``: every thread,
    the interpreter's workers included), so CPU / wall is the cores the process got.
    """
    heartbeat.phase("sustained run")
    done = 0
    cpu_start, start = time.process_time(), time.perf_counter()
    end = start + seconds
    now = start
    while now < end or done == 0:
        annotator.annotate(frames[done % len(frames)], timestamp_ms=1000.0 * done)
        done += 1
        heartbeat.beat()
        now = time.perf_counter()
    return {"sustained_frames": done, "sustained_wall_s": now - start,
            "sustained_cpu_s": time.process_time() - cpu_start}


def vm_hwm_kib(pid: int | str = "self") -> int | None:
    """A process's ``VmHWM``: its peak resident memory since its last ``exec``, in KiB.

    ``None`` where ``/proc`` does not say (not Linux, or the process is gone).
    """
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def peak_memory_mb() -> float:
    """Peak resident memory of this process so far, in MB (10^6 bytes).

    Linux's ``VmHWM`` belongs to this program's address space alone; ``ru_maxrss`` is the
    fallback elsewhere, but it keeps the high-water mark of the parent from before
    ``exec`` (a parent holding TensorFlow would show up in every child).
    """
    kib = vm_hwm_kib()
    if kib is not None:
        return kib * 1024 / 1e6
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak * (1 if sys.platform == "darwin" else 1024) / 1e6


def measure(path: Path, frames: np.ndarray, num_threads: int, warmup: int, runs: int,
            sustain_s: float = 0.0, heartbeat: Heartbeat = SILENT,
            camera: np.ndarray | None = None, maps_path: Path | None = None) -> tuple[dict, np.ndarray | None]:
    """Everything the child measures; returns the summary and the scores (``None`` if it failed to load).

    ``camera`` holds the frames of the sustained loop (default: the first data frames);
    with ``maps_path``, a bundle with label maps saves every label's heatmaps there
    (:func:`map_all`), for the pointing game.
    """
    from fuselite.interpreter import interpreter_name

    summary = {"interpreter": interpreter_name(), "baseline_memory_mb": peak_memory_mb()}
    heartbeat.phase("loading")
    start = time.perf_counter()
    try:
        loaded = load(path, num_threads)
    except BundleError as exc:
        return {**summary, "status": "load_failed", "message": str(exc)}, None
    summary["load_ms"] = (time.perf_counter() - start) * 1000.0
    timing_frames = np.ascontiguousarray(frames[:LATENCY_FRAMES])
    summary.update(time_frames(loaded, timing_frames, warmup, runs, heartbeat))
    summary["peak_memory_mb"] = peak_memory_mb()
    scores = score_all(loaded, frames, heartbeat)
    maps = map_all(loaded, frames, heartbeat) if maps_path is not None else None
    loaded.model.close()
    if maps is not None:
        np.save(maps_path, maps)
    summary["status"] = "measured"
    if not np.all(np.isfinite(scores)):
        return summary, scores  # the parent refuses it: nothing the runtime does with it counts
    summary.update(_runtime_loop(path, timing_frames, scores, num_threads, sustain_s, heartbeat,
                                 timing_frames if camera is None else camera))
    return summary, scores


def _runtime_loop(path: Path, frames: np.ndarray, scores: np.ndarray, num_threads: int, sustain_s: float,
                  heartbeat: Heartbeat, camera: np.ndarray) -> dict:
    """The Annotator's check against the scores, then its sustained loop (when ``sustain_s`` > 0)."""
    heartbeat.phase("loading for fuselite run")
    annotator, problem = open_annotator(path, num_threads)
    if annotator is None:
        return {"runtime_problem": problem}
    with annotator:
        found = {"runtime_problem": annotator_problem(annotator, frames, scores, heartbeat)}
        if sustain_s > 0 and not found["runtime_problem"]:
            annotator.reset()
            found.update(sustained(annotator, camera, sustain_s, heartbeat))
            found["sustained_frame_size"] = [int(camera.shape[2]), int(camera.shape[1])]
    return found


def main(argv: list[str] | None = None) -> int:
    """Child entry point: measures one bundle and writes ``--summary`` and ``--scores``."""
    parser = argparse.ArgumentParser(description="measure one bundle (started by fuselite bench)")
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--frames", type=Path, required=True, help=".npy of uint8 BGR frames [N, H, W, 3]")
    parser.add_argument("--summary", type=Path, required=True)
    parser.add_argument("--scores", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--sustain", type=float, default=0.0, help="seconds of fuselite run's loop (0: none)")
    parser.add_argument("--sustain-frames", type=Path, help=".npy of BGR frames for that loop (default: --frames)")
    parser.add_argument("--maps", type=Path, help=".npy for every label's heatmaps (bundles with label maps)")
    args = parser.parse_args(argv)
    import cv2  # noqa: F401 - imported before the baseline memory reading, as the runtime imports it

    frames = np.load(args.frames, mmap_mode="r")
    heartbeat = Heartbeat(sys.stdout)
    try:
        camera = np.load(args.sustain_frames) if args.sustain_frames else None
        summary, scores = measure(args.bundle, frames, args.threads, args.warmup, args.runs, args.sustain,
                                  heartbeat, camera, args.maps)
    except Exception as exc:  # noqa: BLE001 - the runtime refusing this bundle is the finding, not a traceback
        summary = {"status": "failed", "message": f"{type(exc).__name__} while {heartbeat.current}: {exc}"}
        scores = None
    if scores is not None:
        np.save(args.scores, scores)
    args.summary.write_text(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
