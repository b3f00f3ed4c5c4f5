"""``run_bench``: every bundle in a folder -> one measured :class:`~fuselite.bench.report.Row`.

Static facts (sizes, manifest numerics, op compatibility with ``--device``) are read
here; everything that runs the model happens in a child process per bundle
(:mod:`fuselite.bench.measure`), so rows do not share memory, caches or crashes.
A failing bundle becomes a row with its status and reason (a file it cannot read, one
over the size limit, repeated labels, a crash, NaN scores, a step that hangs past
``timeout_s``); the others are still measured.  Only a user mistake (no bundles, bad
``--data``, unknown ``--device``) raises :class:`~fuselite.errors.UserError`.

Example:
    >>> from fuselite.bench import run_bench, format_table
    >>> report = run_bench("bundles/", "runs/scenes", "bench-out", threads=2)
    >>> print(format_table(report))
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import stat
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from fuselite import metrics as m
from fuselite.bench.data import EvalData, is_run_dir, load_eval_data, source_runs
from fuselite.bench.report import CHECK_FAILED, LOAD_FAILED, Report, Row, mark_pareto, recommend
from fuselite.bundle import (
    MAX_BUNDLE_BYTES,
    Bundle,
    BundleError,
    Manifest,
    read_bundle,
    read_manifest,
)
from fuselite.errors import UserError
from fuselite.host import machine_description

log = logging.getLogger(__name__)

BUNDLE_SUFFIXES = (".tflite", ".fuselite")
DEFAULT_TIMEOUT_S = 120.0  # longest step (loading, or one frame) before a bundle counts as hung
DEFAULT_SUSTAIN_S = 3.0  # seconds of fuselite run's loop per bundle
GZIP_CHUNK = 1 << 20  # the file is compressed 1 MB at a time: memory stays flat
DEFAULT_FRAME_SIZE = (640, 480)  # width, height of the sustained loop's frames: a common camera mode
CAMERA_FRAMES = 8  # distinct camera-size frames the sustained loop cycles through


@dataclass(frozen=True)
class BenchSettings:
    """How each bundle is run.

    Attributes:
        threads: Interpreter threads (``num_threads``).
        warmup: Untimed frames before the timed ones.
        runs: Timed frames per bundle.
        profile: The ``--device`` profile, or ``None``.
        sustain_s: Seconds of ``fuselite run``'s loop per bundle (0: no sustained figures).
        timeout_s: Longest wait for one step of the measuring process (loading, or one
            frame); a bundle that takes longer is killed and gets a ❌ row.
        frame_size: ``(width, height)`` of the frames the sustained loop preprocesses (the
            data's images scaled to it, so resizing costs what a camera's frames cost),
            or ``None`` for the data's images as they are.
    """

    threads: int
    warmup: int = 10
    runs: int = 100
    profile: object | None = None
    sustain_s: float = DEFAULT_SUSTAIN_S
    timeout_s: float = DEFAULT_TIMEOUT_S
    frame_size: tuple[int, int] | None = DEFAULT_FRAME_SIZE


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
    sustain_s: float = DEFAULT_SUSTAIN_S,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    frame_size: tuple[int, int] | None = DEFAULT_FRAME_SIZE,
    groups: dict[str, list[str]] | None = None,
) -> Report:
    """Benchmarks every bundle in ``bundle_dir`` (or one bundle file); writes the report if ``out_dir``.

    ``data`` is what :func:`fuselite.bench.data.load_eval_data` accepts; ``None`` uses the
    run the bundles were converted from.  ``reference`` adds the Keras model of
    ``run_dir`` (or of the data's run) as a row; ``None`` adds it when TensorFlow imports.
    ``samples`` > 0 scores only the first images.  ``min_accuracy`` is recorded for the gate.
    ``sustain_s`` seconds of ``fuselite run``'s loop give the sustained FPS; ``timeout_s``
    bounds each step of a bundle's measurement; ``frame_size`` is the sustained loop's
    frame size (see :class:`BenchSettings`).  ``groups`` (name -> labels, as
    :func:`fuselite.bench.groups.parse_groups` gives them) add to the data manifest's tag
    groups; each is scored as top-1 with a confusion matrix.
    """
    paths = find_bundles(Path(bundle_dir))
    manifests = _readable_manifests(paths)
    settings = _settings(threads, device, warmup, runs, sustain_s, timeout_s, frame_size)
    eval_data = _eval_data(data, manifests, samples).with_groups(groups)
    rows = _measure_all(paths, eval_data, settings, progress)
    reference_run = _reference_run(run_dir, eval_data, manifests, reference)
    if reference_run is not None:
        rows.insert(0, _reference_row(reference_run, eval_data, settings))
    report = _assemble(rows, eval_data, settings, Path(bundle_dir), min_accuracy)
    report.warnings = data_warnings(rows, eval_data)
    for line in report.warnings:
        log.warning("%s", line)
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
        _plot_groups(report, out_dir)
    write_report(report, out_dir)


def find_bundles(path: Path) -> list[Path]:
    """The bundles at ``path`` (a file, or a folder's ``*.tflite``/``*.fuselite`` entries), sorted.

    A folder entry with a bundle's name that is not a regular file (a broken link, a
    FIFO, a folder) is listed too: its row says what it is, and it is never opened.
    """
    if not path.is_dir():
        if path.is_file() or path.is_symlink() or path.exists():
            return [path]
        raise UserError(f"{path}: no such bundle or folder; give the --out folder of `fuselite convert`")
    found = sorted(p for p in path.iterdir() if p.suffix in BUNDLE_SUFFIXES)
    if not found:
        raise UserError(f"{path}: no {' or '.join(BUNDLE_SUFFIXES)} bundles in it; run `fuselite convert` first")
    return found


# --- set-up ------------------------------------------------------------------------


def _settings(threads: int | None, device: str | None, warmup: int, runs: int, sustain_s: float,
              timeout_s: float, frame_size: tuple[int, int] | None = DEFAULT_FRAME_SIZE) -> BenchSettings:
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
    if not (0 <= sustain_s <= 3600 and 0 < timeout_s <= 86400):
        raise UserError("--sustain must be 0 to 3600 seconds and --timeout more than 0 (e.g. 120)")
    cores = usable_core_count()
    if threads > cores:
        log.warning("%d threads on %d usable cores: latency will be pessimistic", threads, cores)
    if frame_size is not None and not all(16 <= int(side) <= 8192 for side in frame_size):
        raise UserError(f"--frame-size {frame_size[0]}x{frame_size[1]}: each side must be 16 to 8192 pixels")
    return BenchSettings(threads, warmup, runs, profile, float(sustain_s), float(timeout_s),
                         tuple(int(side) for side in frame_size) if frame_size else None)


def _readable_manifests(paths: list[Path]) -> list[Manifest]:
    manifests = []
    for path in paths:
        if file_problem(path):
            continue  # never open a FIFO or a device: it can block forever
        try:
            manifests.append(read_manifest(path))
        except (BundleError, OSError):
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
        if settings.sustain_s and settings.frame_size:
            np.save(Path(tmp) / "camera.npy", camera_frames(data.images, settings.frame_size))
        bar = tqdm(paths, desc="bench", unit="bundle", disable=None if progress else True)
        for path in bar:
            bar.set_postfix_str(path.name)
            rows.append(bench_bundle(path, data, frames, settings, Path(tmp)))
    _unique_names(rows)
    return sorted(rows, key=lambda r: (-r.size_bytes, r.name))


def bench_bundle(path: Path, data: EvalData, frames: Path, settings: BenchSettings, work_dir: Path) -> Row:
    """One bundle's row: static checks here, measurements in a child process.

    Whatever goes wrong with this one bundle ends in its ❌ row with the reason; the
    caller goes on with the next bundle.
    """
    row = Row(name=path.stem, file=str(path))
    try:
        _measure_into(row, path, data, frames, settings, work_dir)
    except OSError as exc:
        reason = f"[Errno {exc.errno}] {exc.strerror}" if exc.errno else str(exc)
        _fail(row, f"cannot read it ({reason}): check the disk, or copy the bundle again")
    except Exception as exc:  # one bundle's failure must never cost the report
        log.debug("bench failed on %s", path, exc_info=True)
        _fail(row, f"bench could not measure it: {type(exc).__name__}: {exc}")
    return row


def file_problem(path: Path) -> str:
    """Why ``path`` is not a regular file that can be read ("" when it is one)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        if path.is_symlink():
            return f"a broken symbolic link (to {os.readlink(path)}): nothing to read"
        return "it is gone (removed while bench ran)"
    except OSError as exc:  # a symlink loop, a name too long, a permission
        return f"cannot be opened ([Errno {exc.errno}] {exc.strerror})"
    if stat.S_ISREG(mode):
        return ""
    kind = ("a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "not a file")
    return f"{kind}, not a bundle file: not opened"


def _measure_into(row: Row, path: Path, data: EvalData, frames: Path, settings: BenchSettings,
                  work_dir: Path) -> None:
    problem = file_problem(path)
    if problem:
        return _fail(row, problem)
    row.size_bytes = path.stat().st_size
    if row.size_bytes > MAX_BUNDLE_BYTES:  # before reading a byte: a sparse 1.5 GB file stays on disk
        return _fail(row, f"{row.size_bytes} bytes, over the {MAX_BUNDLE_BYTES / 2**20:g} MiB limit of a bundle: "
                          "not read (is it a bundle?)")
    row.gzip_bytes = gzip_size(path)
    try:
        bundle = read_bundle(path)
    except BundleError as exc:
        return _fail(row, str(exc))
    _describe(row, bundle)
    problem = label_problem(bundle.manifest)
    if problem:
        return _fail(row, problem)
    summary, scores = _run_child(path, frames, settings, work_dir)
    if summary.get("status") != "measured":
        return _fail(row, summary.get("message", "the measuring process failed"))
    problem = score_problem(scores, len(data))
    if problem:
        return _fail(row, problem)
    _timings(row, summary)
    _evaluate(row, scores, data, bundle.manifest)
    pointing_game(row, work_dir / f"{path.stem}.maps.npy", data, bundle.manifest)
    problems = _check_problems(bundle, summary, settings)
    if problems:
        row.status = CHECK_FAILED
        row.message = "; ".join(filter(None, [*problems, row.message]))


def _fail(row: Row, message: str) -> None:
    """Marks ``row`` ❌ with ``message``; nothing measured on it counts."""
    row.status, row.message, row.metrics = LOAD_FAILED, message, {}


def gzip_size(path: Path) -> int:
    """Bytes of ``path`` after ``gzip -9`` (header and trailer included), read in 1 MB chunks."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: the gzip container
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(GZIP_CHUNK):
            size += len(compressor.compress(chunk))
    return size + len(compressor.flush())


def label_problem(manifest: Manifest) -> str:
    """Why the labels cannot be scored one per column ("" when they can)."""
    seen: set[str] = set()
    for label in manifest.labels:
        if label in seen:
            return (f"its manifest lists the label {label!r} twice: the runtime keeps one score per label "
                    "text, so make the labels unique and convert again")
        seen.add(label)
    return ""


def score_problem(scores: np.ndarray | None, frames: int) -> str:
    """Why the child's scores cannot be evaluated ("" when every one is a finite number)."""
    if scores is None or scores.ndim != 2 or scores.shape[0] != frames:
        return "the measuring process gave no scores for the data"
    bad = int((~np.isfinite(scores)).any(axis=1).sum())
    if bad:
        return (f"the model gives NaN or infinite scores on {bad} of {frames} frames: no metric "
                "(check its outputs, logit_scale and label embeddings)")
    return ""


def _describe(row: Row, bundle: Bundle) -> None:
    manifest = bundle.manifest
    row.name = row.variant = manifest.variant
    row.model_bytes = manifest.model_size
    row.sparsity = manifest.sparsity
    row.task = manifest.task
    row.metric_name = "top1" if manifest.task == "single" else "mAP"


def _run_child(path: Path, frames: Path, settings: BenchSettings, work_dir: Path) -> tuple[dict, np.ndarray | None]:
    """Runs :mod:`fuselite.bench.measure` on one bundle; a crash or a hang becomes a summary."""
    summary_path, scores_path = work_dir / f"{path.stem}.json", work_dir / f"{path.stem}.npy"
    errors_path, maps_path = work_dir / f"{path.stem}.stderr", work_dir / f"{path.stem}.maps.npy"
    for stale in (summary_path, scores_path, maps_path):
        stale.unlink(missing_ok=True)
    command = [
        sys.executable, "-m", "fuselite.bench.measure", str(path), "--frames", str(frames),
        "--summary", str(summary_path), "--scores", str(scores_path), "--threads", str(settings.threads),
        "--warmup", str(settings.warmup), "--runs", str(settings.runs), "--sustain", str(settings.sustain_s),
        "--maps", str(maps_path),
    ]
    camera = work_dir / "camera.npy"
    if camera.is_file():
        command += ["--sustain-frames", str(camera)]
    with open(errors_path, "w+") as errors:  # a file, not a pipe: a chatty child cannot block on it
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, text=True)
        stalled = Watchdog(child).wait(settings.timeout_s)
        errors.seek(0)
        stderr = errors.read()[-20_000:]
    if stalled is not None:
        return {"status": "timed_out", "message": (
            f"timed out after {settings.timeout_s:g} s (--timeout) {stalled}: it may loop forever "
            "on real frames, or needs a larger --timeout")}, None
    if child.returncode != 0 or not summary_path.is_file():
        return {"status": "load_failed", "message": _child_failure(child.returncode, stderr)}, None
    summary = json.loads(summary_path.read_text())
    return summary, np.load(scores_path) if scores_path.is_file() else None


class Watchdog:
    """Kills a measuring process that shows no progress for too long.

    The child prints a line at least every 0.2 s while frames finish, and ``phase NAME``
    when a step starts; a step with no line for ``timeout`` seconds (a load, or one
    frame, that never ends) is a hang.
    """

    def __init__(self, child: subprocess.Popen) -> None:
        self._child = child
        self._last = time.monotonic()
        self.phase = "starting"
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self._child.stdout:
            self._last = time.monotonic()
            if line.startswith("phase "):
                self.phase = line[len("phase "):].strip()

    def wait(self, timeout: float) -> str | None:
        """Waits for the child to end: ``None``, or where it hung (after killing it)."""
        while self._child.poll() is None:
            if time.monotonic() - self._last > timeout:
                self._child.kill()
                self._child.wait()
                self._reader.join(timeout=5)
                return f"while {self.phase}"
            time.sleep(0.05)
        self._reader.join(timeout=5)
        return None


def _child_failure(returncode: int, stderr: str) -> str:
    if returncode < 0:
        return f"the interpreter crashed (signal {-returncode}) while loading or running it"
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    return f"measuring failed: {lines[-1] if lines else f'exit code {returncode}'}"


def _timings(row: Row, summary: dict) -> None:
    frame_ms, invoke_ms = np.asarray(summary["frame_ms"]), np.asarray(summary["invoke_ms"])
    row.latency_p50_ms = float(np.percentile(frame_ms, 50))
    row.latency_p90_ms = float(np.percentile(frame_ms, 90))
    row.invoke_p50_ms = float(np.percentile(invoke_ms, 50))
    row.fps = 1000.0 / row.latency_p50_ms if row.latency_p50_ms > 0 else None
    row.load_ms = float(summary["load_ms"])
    row.peak_memory_mb = float(summary["peak_memory_mb"])
    row.model_memory_mb = max(0.0, row.peak_memory_mb - float(summary["baseline_memory_mb"]))
    frames, wall = summary.get("sustained_frames", 0), summary.get("sustained_wall_s", 0.0)
    if frames and wall > 0:
        cpu = float(summary["sustained_cpu_s"])
        row.sustained_fps = frames / wall
        row.cpu_ms_per_frame = 1000.0 * cpu / frames
        row.cores_used = cpu / wall


def _evaluate(row: Row, scores: np.ndarray, data: EvalData, manifest: Manifest) -> None:
    """Task metrics of the runtime's scores (``fuselite.metrics``, as training computes them)."""
    row.metrics = task_metrics(scores, data.targets(manifest.labels), manifest.task,
                               np.asarray(manifest.thresholds))
    if not row.metrics:
        row.message = "the data has none of this bundle's labels: no metric"
    score_groups(row, scores, data, manifest.labels)


def pointing_game(row: Row, maps_path: Path, data: EvalData, manifest: Manifest) -> None:
    """Adds ``pointing_game`` (and its random-peak baseline) to ``row.metrics`` when the child
    saved the bundle's label maps and the data know where objects are (:mod:`fuselite.maps`)."""
    from fuselite.maps import pointing_game_of_heatmaps

    if data.objects is None or not maps_path.is_file():
        return
    game = pointing_game_of_heatmaps(np.load(maps_path), manifest.labels, data.objects)
    if game["pointing_game"] is not None:
        row.metrics.update(pointing_game=game["pointing_game"], pointing_chance=game["pointing_chance"])


def score_groups(row: Row, scores: np.ndarray, data: EvalData, labels) -> None:
    """Sets ``row.groups`` (top-1 and confusion matrix per tag group) and ``row.unseen_tags``."""
    from fuselite.bench.groups import all_group_metrics, unseen_tags

    row.groups = all_group_metrics(scores, list(labels), data.tags, data.groups)
    row.unseen_tags = unseen_tags(data.tags, labels)


def data_warnings(rows: list[Row], data: EvalData) -> list[str]:
    """What the user should know about the data: tags the bundles never learned (one line per
    distinct set, naming the rows), and group labels that are nobody's label nor a data tag."""
    from fuselite.bench.groups import items_with_unseen, unseen_message

    by_set: dict[tuple, list[str]] = {}
    for row in rows:
        if row.unseen_tags:
            by_set.setdefault(tuple(row.unseen_tags), []).append(row.name)
    lines = []
    for names in by_set.values():
        unseen = next(r.unseen_tags for r in rows if r.name == names[0])
        whose = "the bundles'" if len(names) == len(rows) else f"{', '.join(names)}'s"
        lines.append(unseen_message(unseen, items_with_unseen(data.tags, unseen), whose))
    return lines + _typo_warnings(rows, data)


def _typo_warnings(rows: list[Row], data: EvalData) -> list[str]:
    tags = {tag for item in data.tags for tag in item}
    lines = []
    for name, labels in data.groups.items():
        known = {label for r in rows for label in r.groups.get(name, {}).get("labels", [])
                 if label not in r.groups[name]["not_in_bundle"]}
        stray = [label for label in labels if label not in known and label not in tags]
        if stray:
            lines.append(f"tag group {name!r}: {', '.join(map(repr, stray))} is neither a bundle label nor a tag "
                         "of the data: check the spelling")
    return lines


def _plot_groups(report: Report, out_dir: Path) -> None:
    """``confusion-<group>.png`` per group that some row scored."""
    from fuselite.bench.groups import focus_row
    from fuselite.bench.plot import plot_confusion

    for name in report.groups:
        row = focus_row(report, name)
        if row is not None:
            file = f"confusion-{name}.png"
            report.files[file] = plot_confusion(row, name, report, out_dir / file)


def task_metrics(scores: np.ndarray, targets: np.ndarray, task: str, thresholds: np.ndarray) -> dict:
    """``{"top1"}`` for single-label bundles (images with one of its labels), else ``{"mAP", "micro_f1"}``."""
    if task == "single":
        keep = targets.sum(axis=1) > 0
        return {"top1": m.top1_accuracy(scores[keep], targets[keep])} if keep.any() else {}
    if not (targets > 0.5).any():
        return {}
    return {"mAP": m.mean_average_precision(scores, targets), "micro_f1": m.micro_f1(scores, targets, thresholds)}


def _check_problems(bundle: Bundle, summary: dict, settings: BenchSettings) -> list[str]:
    """Why a bundle that loaded is not fit to deploy (❎), empty when nothing is wrong."""
    problems = []
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


def camera_frames(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The first :data:`CAMERA_FRAMES` RGB images as BGR frames of ``size`` (width, height)."""
    import cv2

    return np.stack([cv2.resize(np.ascontiguousarray(image[..., ::-1]), size, interpolation=cv2.INTER_LINEAR)
                     for image in images[:CAMERA_FRAMES]])


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
        sustain_s=settings.sustain_s, timeout_s=settings.timeout_s,
        frame_size=list(settings.frame_size) if settings.frame_size else None, groups=dict(data.groups),
    )
