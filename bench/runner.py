"""``run_bench``: every bundle in a folder -> one measured :class:`~fuselite.bench.report.Row`.

Static facts (sizes, manifest numerics, op compatibility with ``--device``) are read
here; everything that runs the model happens in a child process per bundle
(:mod:`fuselite.bench.measure`), so rows do not share memory, caches or crashes.
A failing bundle becomes a row with its status; only a user mistake (no bundles, bad
``--data``, unknown ``--device``) raises :class:`~fuselite.errors.UserError`.

Example:
    >>> from fuselite.bench import run_bench, format_table
    >>> report = run_bench("bundles/", "runs/scenes", "bench-out", threads=2)
    >>> print(format_table(report))
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import logging
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from fuselite import metrics as m
from fuselite.bench.data import EvalData, is_run_dir, load_eval_data, source_runs
from fuselite.bench.report import CHECK_FAILED, LOAD_FAILED, Report, Row, mark_pareto, recommend
from fuselite.bundle import Bundle, BundleError, Manifest, read_bundle, read_manifest
from fuselite.errors import UserError
from fuselite.host import machine_description

log = logging.getLogger(__name__)

BUNDLE_SUFFIXES = (".tflite", ".fuselite")
CHILD_TIMEOUT_S = 600.0
CHILD_TIMEOUT_PER_IMAGE_S = 0.05


@dataclass(frozen=True)
class BenchSettings:
    """How each bundle is run.

    Attributes:
        threads: Interpreter threads (``num_threads``).
        warmup: Untimed frames before the timed ones.
        runs: Timed frames per bundle.
        profile: The ``--device`` profile, or ``None``.
    """

    threads: int
    warmup: int = 10
    runs: int = 100
    profile: object | None = None


def run_bench(
    bundle_dir: str | Path,
    data: str | Path | None = None,
    out_dir: str | Path | None = None,
    *,
    threads: int | None = None,
    device: str | None = None,
    run_dir: str | Path | None = None,
    reference: bool | None = None,
    warmup: int = 10,
    runs: int = 100,
    samples: int = 0,
    min_accuracy: float | None = None,
    progress: bool = False,
) -> Report:
    """Benchmarks every bundle in ``bundle_dir`` (or one bundle file); writes the report if ``out_dir``.

    ``data`` is what :func:`fuselite.bench.data.load_eval_data` accepts; ``None`` uses the
    run the bundles were converted from.  ``reference`` adds the Keras model of
    ``run_dir`` (or of the data's run) as a row; ``None`` adds it when TensorFlow imports.
    ``samples`` > 0 scores only the first images.  ``min_accuracy`` is recorded for the gate.
    """
    paths = find_bundles(Path(bundle_dir))
    manifests = _readable_manifests(paths)
    settings = _settings(threads, device, warmup, runs)
    eval_data = _eval_data(data, manifests, samples)
    rows = _measure_all(paths, eval_data, settings, progress)
    reference_run = _reference_run(run_dir, eval_data, manifests, reference)
    if reference_run is not None:
        rows.insert(0, _reference_row(reference_run, eval_data, settings))
    report = _assemble(rows, eval_data, settings, Path(bundle_dir), min_accuracy)
    if out_dir is not None:
        write_outputs(report, Path(out_dir))
    return report


def write_outputs(report: Report, out_dir: Path) -> None:
    """Writes report.json/csv/md and pareto.png (skipped, with a warning, without matplotlib)."""
    from fuselite.bench.report import write_report

    out_dir.mkdir(parents=True, exist_ok=True)
    if importlib.util.find_spec("matplotlib") is None:
        log.warning("matplotlib is not installed (pip install matplotlib): no pareto.png")
    else:
        from fuselite.bench.plot import plot_pareto

        report.files["pareto.png"] = plot_pareto(report, out_dir / "pareto.png")
    write_report(report, out_dir)


def find_bundles(path: Path) -> list[Path]:
    """The bundle files at ``path`` (a file, or a folder's ``*.tflite``/``*.fuselite``), sorted."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise UserError(f"{path}: no such bundle or folder; give the --out folder of `fuselite convert`")
    found = sorted(p for p in path.iterdir() if p.suffix in BUNDLE_SUFFIXES and p.is_file())
    if not found:
        raise UserError(f"{path}: no {' or '.join(BUNDLE_SUFFIXES)} bundles in it; run `fuselite convert` first")
    return found


# --- set-up ------------------------------------------------------------------------


def _settings(threads: int | None, device: str | None, warmup: int, runs: int) -> BenchSettings:
    profile = None
    if device:
        from fuselite.devices.profiles import get_profile

        profile = get_profile(device)
    from fuselite.runtime.affinity import usable_core_count
    from fuselite.runtime.options import default_threads

    if threads is None:
        threads = profile.threads if profile else default_threads()
    if threads < 1 or warmup < 0 or runs < 1:
        raise UserError("--threads and --runs must be at least 1, --warmup at least 0")
    cores = usable_core_count()
    if threads > cores:
        log.warning("%d threads on %d usable cores: latency will be pessimistic", threads, cores)
    return BenchSettings(threads, warmup, runs, profile)


def _readable_manifests(paths: list[Path]) -> list[Manifest]:
    manifests = []
    for path in paths:
        try:
            manifests.append(read_manifest(path))
        except BundleError:
            continue  # its row will say why
    return manifests


def _eval_data(data, manifests: list[Manifest], samples: int) -> EvalData:
    if data is None:
        runs = source_runs(manifests)
        if len(runs) != 1:
            raise UserError(
                "give --data (a run directory, 'scenes', 'fashion-mnist' or a dataset path): "
                "the bundles do not name one existing source run"
            )
        data = runs[0]
        log.info("--data not given: using the bundles' source run %s", data)
    sizes = [max(mf.preprocessing.input_size) for mf in manifests] or [64]
    return load_eval_data(data, image_size=max(32, max(sizes)), samples=samples)


# --- bundles -----------------------------------------------------------------------


def _measure_all(paths: list[Path], data: EvalData, settings: BenchSettings, progress: bool) -> list[Row]:
    from tqdm import tqdm

    rows = []
    with tempfile.TemporaryDirectory(prefix="fuselite-bench-") as tmp:
        frames = Path(tmp) / "frames.npy"
        np.save(frames, _bgr(data.images))
        bar = tqdm(paths, desc="bench", unit="bundle", disable=None if progress else True)
        for path in bar:
            bar.set_postfix_str(path.name)
            rows.append(bench_bundle(path, data, frames, settings, Path(tmp)))
    _unique_names(rows)
    return sorted(rows, key=lambda r: (-r.size_bytes, r.name))


def bench_bundle(path: Path, data: EvalData, frames: Path, settings: BenchSettings, work_dir: Path) -> Row:
    """One bundle's row: static checks here, measurements in a child process."""
    raw = path.read_bytes()
    row = Row(name=path.stem, file=str(path), size_bytes=len(raw),
              gzip_bytes=len(gzip.compress(raw, compresslevel=9, mtime=0)))
    try:
        bundle = read_bundle(path)
    except BundleError as exc:
        row.status, row.message = LOAD_FAILED, str(exc)
        return row
    _describe(row, bundle)
    summary, scores = _run_child(path, frames, settings, work_dir, len(data))
    if summary.get("status") != "measured":
        row.status, row.message = LOAD_FAILED, summary.get("message", "the measuring process failed")
        return row
    _timings(row, summary)
    _evaluate(row, scores, data, bundle.manifest)
    problems = _check_problems(bundle, summary, scores, settings)
    if problems:
        row.status = CHECK_FAILED
        row.message = "; ".join(filter(None, [*problems, row.message]))
    return row


def _describe(row: Row, bundle: Bundle) -> None:
    manifest = bundle.manifest
    row.name = row.variant = manifest.variant
    row.model_bytes = len(bundle.model_bytes)
    row.sparsity = manifest.sparsity
    row.task = manifest.task
    row.metric_name = "top1" if manifest.task == "single" else "mAP"


def _run_child(path: Path, frames: Path, settings: BenchSettings, work_dir: Path, n: int) -> tuple[dict, np.ndarray | None]:
    """Runs :mod:`fuselite.bench.measure` on one bundle; a crash or timeout becomes a summary."""
    summary_path, scores_path = work_dir / f"{path.stem}.json", work_dir / f"{path.stem}.npy"
    for stale in (summary_path, scores_path):
        stale.unlink(missing_ok=True)
    command = [
        sys.executable, "-m", "fuselite.bench.measure", str(path), "--frames", str(frames),
        "--summary", str(summary_path), "--scores", str(scores_path), "--threads", str(settings.threads),
        "--warmup", str(settings.warmup), "--runs", str(settings.runs),
    ]
    timeout = CHILD_TIMEOUT_S + CHILD_TIMEOUT_PER_IMAGE_S * n
    try:
        done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "load_failed", "message": f"no result within {timeout:.0f} s"}, None
    if done.returncode != 0 or not summary_path.is_file():
        return {"status": "load_failed", "message": _child_failure(done)}, None
    summary = json.loads(summary_path.read_text())
    return summary, np.load(scores_path) if scores_path.is_file() else None


def _child_failure(done: subprocess.CompletedProcess) -> str:
    if done.returncode < 0:
        return f"the interpreter crashed (signal {-done.returncode}) while loading or running it"
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    return f"measuring failed: {lines[-1] if lines else f'exit code {done.returncode}'}"


def _timings(row: Row, summary: dict) -> None:
    frame_ms, invoke_ms = np.asarray(summary["frame_ms"]), np.asarray(summary["invoke_ms"])
    row.latency_p50_ms = float(np.percentile(frame_ms, 50))
    row.latency_p90_ms = float(np.percentile(frame_ms, 90))
    row.invoke_p50_ms = float(np.percentile(invoke_ms, 50))
    row.fps = 1000.0 / row.latency_p50_ms if row.latency_p50_ms > 0 else None
    row.load_ms = float(summary["load_ms"])
    row.peak_memory_mb = float(summary["peak_memory_mb"])
    row.model_memory_mb = max(0.0, row.peak_memory_mb - float(summary["baseline_memory_mb"]))


def _evaluate(row: Row, scores: np.ndarray, data: EvalData, manifest: Manifest) -> None:
    """Task metrics of the runtime's scores (``fuselite.metrics``, as training computes them)."""
    row.metrics = task_metrics(scores, data.targets(manifest.labels), manifest.task,
                               np.asarray(manifest.thresholds))
    if not row.metrics:
        row.message = "the data has none of this bundle's labels: no metric"


def task_metrics(scores: np.ndarray, targets: np.ndarray, task: str, thresholds: np.ndarray) -> dict:
    """``{"top1"}`` for single-label bundles (images with one of its labels), else ``{"mAP", "micro_f1"}``."""
    if task == "single":
        keep = targets.sum(axis=1) > 0
        return {"top1": m.top1_accuracy(scores[keep], targets[keep])} if keep.any() else {}
    if not (targets > 0.5).any():
        return {}
    return {"mAP": m.mean_average_precision(scores, targets), "micro_f1": m.micro_f1(scores, targets, thresholds)}


def _check_problems(bundle: Bundle, summary: dict, scores: np.ndarray, settings: BenchSettings) -> list[str]:
    """Why a bundle that loaded is not fit to deploy (❎), empty when nothing is wrong."""
    problems = []
    if not np.all(np.isfinite(scores)):
        problems.append("the model gives NaN or infinite scores")
    numerics = bundle.manifest.numerics
    if numerics.get("passed") is False:
        problems.append("its conversion check failed (manifest numerics: out of tolerance)")
    if summary.get("runtime_problem"):
        problems.append(summary["runtime_problem"])
    if settings.profile is not None:
        problems += _op_problems(bundle, settings.profile)
    return problems


def _op_problems(bundle: Bundle, profile) -> list[str]:
    from fuselite.devices.compat import ModelFormatError, bundle_ops, check_ops

    try:
        found = check_ops(bundle_ops(bundle), profile.runtime)
    except ModelFormatError as exc:
        return [f"its op list cannot be read ({exc})"]
    return [f"{profile.name}'s {profile.runtime_spec.name} cannot load it: {found[0]}"] if found else []


def _unique_names(rows: list[Row]) -> None:
    names = [r.name for r in rows]
    for r in rows:
        if names.count(r.name) > 1:
            r.name = Path(r.file).name


def _bgr(images: np.ndarray) -> np.ndarray:
    """RGB images -> the BGR frames a camera gives the runtime."""
    return np.ascontiguousarray(images[..., ::-1])


# --- the Keras reference -----------------------------------------------------------


def _reference_run(run_dir, data: EvalData, manifests: list[Manifest], wanted: bool | None) -> Path | None:
    """The run whose Keras model becomes the reference row, or ``None``."""
    if wanted is False:
        return None
    candidates = [Path(run_dir)] if run_dir else ([data.run_dir] if data.run_dir else source_runs(manifests))
    if run_dir and not is_run_dir(Path(run_dir)):
        raise UserError(f"--run {run_dir}: not a training run directory (no config.json/splits.json)")
    if len(candidates) != 1:
        if wanted:
            raise UserError("the Keras reference row needs a run: give --run RUN_DIR")
        return None
    if importlib.util.find_spec("tensorflow") is None or importlib.util.find_spec("tf_keras") is None:
        if wanted:
            raise UserError("the Keras reference row needs TensorFlow: pip install 'fuselite[train]'")
        log.info("TensorFlow is not installed: no Keras reference row")
        return None
    return candidates[0]


def _reference_row(run_dir: Path, data: EvalData, settings: BenchSettings) -> Row:
    """The Keras row; a run that does not load becomes a ❌ row like a broken bundle."""
    from fuselite.bench.reference import reference_row

    try:
        return reference_row(run_dir, data, settings.threads, settings.warmup, settings.runs)
    except (UserError, OSError, ValueError) as exc:
        return Row(name="keras", kind="reference", variant="keras", file=str(run_dir),
                   status=LOAD_FAILED, message=f"the Keras model of {run_dir} did not load: {exc}")


# --- the report --------------------------------------------------------------------


def _assemble(rows: list[Row], data: EvalData, settings: BenchSettings, bundle_dir: Path,
              min_accuracy: float | None) -> Report:
    from fuselite.interpreter import InterpreterNotFoundError, interpreter_version

    try:
        interpreter = interpreter_version()
    except InterpreterNotFoundError:
        interpreter = "no TFLite interpreter"
    reference = next((r for r in rows if r.kind == "reference"), None)
    if reference is not None and reference.metric is not None:
        for r in rows:
            if r.kind == "bundle" and r.metric is not None and r.metric_name == reference.metric_name:
                r.delta_pt = 100 * (r.metric - reference.metric)
    mark_pareto(rows)
    profile = settings.profile
    limits = None
    if profile is not None:
        limits = {k: getattr(profile.limits, k) for k in ("max_bundle_mb", "min_fps", "max_memory_mb")}
        recommend(rows, limits)
    return Report(
        rows=rows, data=data.description, samples=len(data), threads=settings.threads,
        warmup=settings.warmup, runs=settings.runs, machine=machine_description(), interpreter=interpreter,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"), bundle_dir=str(bundle_dir),
        device=profile.name if profile else None, limits=limits, min_accuracy=min_accuracy,
    )
