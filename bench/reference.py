"""The Keras float model of a run as the benchmark's reference row (host only: TensorFlow).

It is scored on the same images with the same scorer and metrics as the bundles
(:func:`fuselite.scoring.label_probabilities`, :mod:`fuselite.metrics`), so on the run's
test split its metric equals the run's ``metrics.json``.  Latency is one frame through a
``tf.function`` of the image tower plus scoring; memory is not measured (the process
holds TensorFlow and everything else), so it is never a deployment candidate.
"""

from __future__ import annotations

import gzip
import logging
import time
from pathlib import Path

import cv2
import numpy as np

from fuselite.bench.data import EvalData, read_run_metrics
from fuselite.bench.report import Row
from fuselite.scoring import label_probabilities

log = logging.getLogger(__name__)
WEIGHT_FILES = ("image_encoder.weights.h5", "text_encoder.weights.h5")


def reference_row(run_dir: Path, data: EvalData, threads: int, warmup: int, runs: int) -> Row:
    """The row of ``run_dir``'s Keras image tower on ``data``."""
    _limit_threads(threads)
    from fuselite.bench.runner import score_groups, task_metrics
    from fuselite.train.pipeline import embed_images, embed_texts
    from fuselite.train.run import load_run

    start = time.perf_counter()
    run = load_run(run_dir)
    load_ms = (time.perf_counter() - start) * 1000.0
    images = _resize(data.images, run.config.image_size)
    label_emb = embed_texts(run.text_encoder, run.tokenizer, run.labels).astype(np.float32)
    scores = label_probabilities(embed_images(run.image_encoder, images), label_emb, run.logit_scale, run.logit_bias)
    row = Row(name="keras", kind="reference", variant="keras", file=str(run_dir), task=run.task,
              metric_name="top1" if run.task == "single" else "mAP", load_ms=load_ms)
    row.metrics = task_metrics(scores, data.targets(run.labels), run.task, np.asarray(run.thresholds))
    score_groups(row, scores, data, run.labels)
    _sizes(row, Path(run_dir), run.image_encoder)
    _latency(row, run, images, label_emb, warmup, runs)
    row.message = _metrics_json_note(row, Path(run_dir), data)
    return row


def _limit_threads(threads: int) -> None:
    """Asks TensorFlow for ``threads`` intra-op threads (only possible before it starts)."""
    from fuselite.train.backend import tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        log.debug("TensorFlow already started: its thread count stays as it was")


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    if images.shape[1:3] == (size, size):
        return images
    return np.stack([cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA) for im in images])


def _sizes(row: Row, run_dir: Path, image_encoder) -> None:
    """Size: both towers' weight files (a bundle carries both towers too)."""
    raw = b"".join((run_dir / name).read_bytes() for name in WEIGHT_FILES)
    row.size_bytes = len(raw)
    row.model_bytes = (run_dir / WEIGHT_FILES[0]).stat().st_size
    row.gzip_bytes = len(gzip.compress(raw, compresslevel=9, mtime=0))
    kernels = [w for w in image_encoder.get_weights() if w.ndim >= 2]
    total = sum(w.size for w in kernels)
    row.sparsity = float(sum(np.count_nonzero(w == 0) for w in kernels) / total) if total else 0.0


def _latency(row: Row, run, images: np.ndarray, label_emb: np.ndarray, warmup: int, runs: int) -> None:
    from fuselite.train.backend import tf

    encode = tf.function(lambda x: run.image_encoder(x, training=False))
    frames = [images[i : i + 1] for i in range(min(32, len(images)))]
    for i in range(warmup + 1):  # one more: tracing the tf.function is not a frame
        encode(frames[i % len(frames)])
    times = []
    for i in range(runs):
        start = time.perf_counter()
        embedding = encode(frames[i % len(frames)]).numpy()
        label_probabilities(embedding, label_emb, run.logit_scale, run.logit_bias)
        times.append((time.perf_counter() - start) * 1000.0)
    row.latency_p50_ms = float(np.percentile(times, 50))
    row.latency_p90_ms = float(np.percentile(times, 90))
    row.invoke_p50_ms = row.latency_p50_ms
    row.fps = 1000.0 / row.latency_p50_ms


def _metrics_json_note(row: Row, run_dir: Path, data: EvalData) -> str:
    """Says so when, on the run's own test split, the metric differs from metrics.json."""
    recorded = read_run_metrics(run_dir).get(row.metric_name)
    if data.run_dir is None or Path(data.run_dir) != run_dir or recorded is None or row.metric is None:
        return ""
    if abs(recorded - row.metric) > 1e-4:
        return f"{row.metric_name} {row.metric:.4f} differs from the run's metrics.json ({recorded:.4f})"
    return ""
