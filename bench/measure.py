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
   and gives the same scores.

It writes the probabilities to an ``.npy`` file and a JSON summary; no TensorFlow.
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


def time_frames(loaded: LoadedBundle, frames: np.ndarray, warmup: int, runs: int) -> dict:
    """Warm-up runs, then ``runs`` timed frames; per-frame milliseconds, end to end and invoke only."""
    for i in range(warmup):
        loaded.probabilities(frames[i % len(frames)])
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
    return {"frame_ms": total, "invoke_ms": invoke}


def _score(loaded: LoadedBundle, output: np.ndarray) -> np.ndarray:
    """Scoring as :meth:`LoadedBundle.probabilities` does it, from a raw model output."""
    manifest = loaded.bundle.manifest
    return label_probabilities(loaded.output_embedding(output), loaded.bundle.label_embeddings,
                               manifest.logit_scale, manifest.logit_bias)


def score_all(loaded: LoadedBundle, frames: np.ndarray) -> np.ndarray:
    """float32 ``[N, labels]`` probabilities of every frame."""
    scores = np.empty((len(frames), len(loaded.bundle.manifest.labels)), np.float32)
    for i in range(len(frames)):
        scores[i] = loaded.probabilities(np.ascontiguousarray(frames[i]))
    return scores


def annotator_problem(path: Path, frames: np.ndarray, scores: np.ndarray, num_threads: int) -> str:
    """Why ``fuselite run``'s Annotator cannot serve this bundle as benchmarked ("" if it can)."""
    from fuselite.runtime.annotator import Annotator
    from fuselite.runtime.options import AnnotatorOptions

    try:
        annotator = Annotator.create(AnnotatorOptions(path, num_threads=num_threads))
    except (BundleError, ValueError) as exc:
        return f"`fuselite run` cannot load it: {exc}"
    with annotator:
        worst = 0.0
        for i in range(min(ANNOTATOR_FRAMES, len(frames))):
            result = annotator.annotate(np.ascontiguousarray(frames[i]), timestamp_ms=1000.0 * i)
            runtime_scores = np.array([result.scores[label] for label in annotator.labels])
            worst = max(worst, float(np.abs(runtime_scores - scores[i]).max()))
    if not worst <= ANNOTATOR_TOLERANCE:
        return f"`fuselite run` scores differ from the benchmark's by up to {worst:.2g}"
    return ""


def peak_memory_mb() -> float:
    """Peak resident memory of this process so far, in MB (10^6 bytes).

    Linux's ``VmHWM`` belongs to this program's address space alone; ``ru_maxrss`` is the
    fallback elsewhere, but it keeps the high-water mark of the parent from before
    ``exec`` (a parent holding TensorFlow would show up in every child).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e6
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak * (1 if sys.platform == "darwin" else 1024) / 1e6


def measure(path: Path, frames: np.ndarray, num_threads: int, warmup: int, runs: int) -> tuple[dict, np.ndarray | None]:
    """Everything the child measures; returns the summary and the scores (``None`` if it failed to load)."""
    from fuselite.interpreter import interpreter_name

    summary = {"interpreter": interpreter_name(), "baseline_memory_mb": peak_memory_mb()}
    start = time.perf_counter()
    try:
        loaded = load(path, num_threads)
    except BundleError as exc:
        return {**summary, "status": "load_failed", "message": str(exc)}, None
    summary["load_ms"] = (time.perf_counter() - start) * 1000.0
    timing_frames = np.ascontiguousarray(frames[:LATENCY_FRAMES])
    summary.update(time_frames(loaded, timing_frames, warmup, runs))
    summary["peak_memory_mb"] = peak_memory_mb()
    scores = score_all(loaded, frames)
    loaded.model.close()
    summary["runtime_problem"] = annotator_problem(path, frames, scores, num_threads)
    summary["status"] = "measured"
    return summary, scores


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
    args = parser.parse_args(argv)
    import cv2  # noqa: F401 - imported before the baseline memory reading, as the runtime imports it

    frames = np.load(args.frames, mmap_mode="r")
    summary, scores = measure(args.bundle, frames, args.threads, args.warmup, args.runs)
    if scores is not None:
        np.save(args.scores, scores)
    args.summary.write_text(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
