"""How well the label heatmaps point, and what they cost: the figures of docs/explanations.md.

    python -m fuselite.bench.suite explain RUN_DIR BUNDLE [BUNDLE ...] [--reference fp32.tflite]
        [--rounds 5] [--frames 100] [--threads 1] [--out explain.json]

For each bundle, through the runtime (``Annotator``, no TensorFlow):

* the pointing game (:mod:`fuselite.maps`) of the trained labels on the run's test
  split, and of the held-out phrases (never training tags, e.g. "green star", typed
  at run time through the bundle's text encoder) on the run's held-out scenes; each
  with the hit rate of a random peak, the baseline to read it against;
* with ``--reference``, how often its peak cell equals the reference bundle's (fp32)
  on every (image, label) pair where the label is in the image;
* the per-frame cost of explaining: ``annotate`` with ``explain`` on and off, on
  640x480 frames, interleaved in ``--rounds`` rounds (median and range), against the
  invoke time of the same frames;
* the bytes the maps add to the bundle: the file against the same bundle packed
  without ``label_maps`` (the image model is the same flatbuffer either way).

Targets (issue 33): scenes-default int8 pointing game >= 95 % on the trained tags and
>= 85 % on the held-out combinations; the map adds <= 10 % to invoke latency and
<= 5 % to the bundle's size.  Each is printed with PASS or MISS.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np

from fuselite.bundle import pack_bundle, read_bundle
from fuselite.host import machine_description
from fuselite.maps import cell_of, pointing_game_of_heatmaps

TARGETS = {
    "pointing_game": 0.95,
    "pointing_game_heldout": 0.85,
    "map_invoke_share": 0.10,
    "map_size_share": 0.05,
}
CAMERA_SIZE = (640, 480)  # width, height of the frames the latency is timed on


def main(argv: list[str] | None = None) -> int:
    """Measures every bundle, prints a summary with the targets, writes ``--out`` JSON."""
    parser = argparse.ArgumentParser(
        prog="python -m fuselite.bench.suite explain", description=__doc__.split("\n")[0]
    )
    parser.add_argument("run_dir", type=Path, help="the scenes run the bundles were converted from")
    parser.add_argument("bundles", type=Path, nargs="+", help="bundles to measure")
    parser.add_argument(
        "--reference", type=Path, help="bundle whose peaks the others are compared with (fp32)"
    )
    parser.add_argument(
        "--rounds", type=int, default=5, help="interleaved latency rounds (default 5)"
    )
    parser.add_argument(
        "--frames", type=int, default=100, help="frames per latency round (default 100)"
    )
    parser.add_argument("--threads", type=int, default=1, help="interpreter threads (default 1)")
    parser.add_argument("--out", type=Path, help="JSON file for the figures")
    args = parser.parse_args(argv)
    test, heldout = _run_data(args.run_dir)
    record = {
        "machine": machine_description(),
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "started_utc": _now(),
        "command": " ".join(["python -m fuselite.bench.suite explain", *sys.argv[2:]]),
        "threads": args.threads,
        "bundles": {},
    }
    reference = _peaks(args.reference, test, args.threads) if args.reference else None
    for path in args.bundles:
        record["bundles"][path.name] = measure_bundle(path, test, heldout, args, reference)
    record["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    record["finished_utc"] = _now()
    print(summary(record))
    if args.out:
        args.out.write_text(json.dumps(record, indent=1))
    return 0


def measure_bundle(path: Path, test, heldout, args, reference) -> dict:
    """Every figure of one bundle (see the module docstring)."""
    figures = {}
    labels = list(read_bundle(path).manifest.labels)
    figures.update(_prefixed("pointing_game", _game(path, test, None, args.threads)))
    if heldout is not None:
        phrases = sorted(set(heldout.label_vocabulary()) - set(labels))
        figures.update(
            _prefixed("pointing_game_heldout", _game(path, heldout, phrases, args.threads))
        )
    if reference is not None:
        figures["peak_agreement_with_reference"] = _agreement(
            _peaks(path, test, args.threads), reference
        )
    figures.update(map_latency(path, test.images, args.rounds, args.frames, args.threads))
    figures.update(map_size(path))
    return figures


def _run_data(run_dir: Path):
    """The run's test split and held-out scenes (with their objects), rebuilt without TensorFlow."""
    from fuselite.data.dataset import Splits
    from fuselite.data.sources import DataSpec, load_sources

    config = DataSpec.load(run_dir / "config.json")
    pool, _official, heldout = load_sources(config)
    return pool.subset(Splits.load(run_dir / "splits.json").test), heldout


def _annotator(path: Path, threads: int, labels=None, explain: bool = True):
    from fuselite.runtime import Annotator, AnnotatorOptions

    return Annotator.create(
        AnnotatorOptions(path, num_threads=threads, labels=labels, explain=explain)
    )


def _heatmaps(annotator, images: np.ndarray) -> np.ndarray:
    """``[images, labels, rows, cols]`` marking each label's peak through
    :meth:`Annotator.explain` (RGB images in): 1 at ``Category.peak``'s cell, else 0.

    The runtime's peak, found on logits; the probabilities in ``Category.heatmap`` tie
    at 1.0 on strong cells, so their first maximum is not always the peak.
    """
    rows, cols = annotator.map_grid
    maps = np.zeros((len(images), len(annotator.labels), rows, cols), np.float32)
    for i, image in enumerate(images):
        for j, category in enumerate(annotator.explain(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))):
            maps[i, j][cell_of(category.peak, (rows, cols))] = 1.0
    return maps


def _game(path: Path, data, labels: list[str] | None, threads: int) -> dict:
    """The pointing game of ``labels`` (None: the bundle's own) on ``data``."""
    with _annotator(path, threads, labels) as annotator:
        maps = _heatmaps(annotator, data.images)
        names = list(annotator.labels)
    game = pointing_game_of_heatmaps(maps, names, data.objects)
    worst = sorted(game["per_label"].items(), key=lambda item: item[1])[:3]
    return {
        "": game["pointing_game"],
        "chance": game["pointing_chance"],
        "pairs": game["pairs"],
        "labels": len(names),
        "worst": dict(worst),
    }


def _peaks(path: Path, data, threads: int) -> dict[tuple[int, str], int]:
    """The peak cell of every (image, bundle label) pair whose label is in the image."""
    with _annotator(path, threads) as annotator:
        maps, names = _heatmaps(annotator, data.images), list(annotator.labels)
    return {
        (i, label): int(np.argmax(maps[i, j]))
        for i, tags in enumerate(data.tags)
        for j, label in enumerate(names)
        if label in tags
    }


def _agreement(peaks: dict, reference: dict) -> dict:
    same = [peaks[key] == cell for key, cell in reference.items() if key in peaks]
    return {"share": float(np.mean(same)) if same else None, "pairs": len(same)}


def map_latency(path: Path, images: np.ndarray, rounds: int, frames: int, threads: int) -> dict:
    """Median (and range over rounds) ms per frame of ``annotate`` with the maps on and off,
    and of the invoke alone, on camera-size frames; the rounds interleave the two."""
    camera = [
        cv2.resize(
            cv2.cvtColor(image, cv2.COLOR_RGB2BGR), CAMERA_SIZE, interpolation=cv2.INTER_NEAREST
        )
        for image in images[:frames]
    ]
    timings = {"on": [], "off": [], "invoke": []}
    with (
        _annotator(path, threads, explain=True) as on,
        _annotator(path, threads, explain=False) as off,
    ):
        for annotator in (on, off):  # warm-up
            for frame in camera[:10]:
                annotator.annotate(frame, 0.0)
        for _ in range(rounds):
            for name, annotator in (("on", on), ("off", off)):
                per_frame, invoke = _time_frames(annotator, camera)
                timings[name].append(per_frame)
                timings["invoke"].append(invoke)
    added = [a - b for a, b in zip(timings["on"], timings["off"])]
    invoke = statistics.median(timings["invoke"])
    return {
        "frame_ms_explain_on": _spread(timings["on"]),
        "frame_ms_explain_off": _spread(timings["off"]),
        "invoke_ms": _spread(timings["invoke"]),
        "map_added_ms": _spread(added),
        "map_invoke_share": statistics.median(added) / invoke,
        "map_frame_share": statistics.median(added) / statistics.median(timings["off"]),
        "camera_frame": list(CAMERA_SIZE),
        "frames_per_round": len(camera),
        "rounds": rounds,
    }


def _time_frames(annotator, frames) -> tuple[float, float]:
    """Mean ms per frame of ``annotate`` over ``frames``, and of its invoke alone."""
    start, invoke = time.perf_counter(), 0.0
    for i, frame in enumerate(frames):
        invoke += annotator.annotate(frame, float(i)).latency.inference_ms
    return (time.perf_counter() - start) * 1000.0 / len(frames), invoke / len(frames)


def map_size(path: Path) -> dict:
    """The bundle's bytes with and without ``label_maps`` (the same image model both ways)."""
    bundle = read_bundle(path)
    parts = (
        {"tokenizer": bundle.tokenizer, "text_encoder_bytes": bundle.text_encoder_bytes}
        if bundle.manifest.label_source == "text_encoder"
        else {"fixed_labels": True}
    )
    without = pack_bundle(
        model_bytes=bundle.model_bytes,
        manifest=replace(bundle.manifest, label_maps=None),
        label_embeddings=bundle.label_embeddings,
        **parts,
    )
    size = path.stat().st_size
    return {
        "bundle_bytes": size,
        "bundle_bytes_without_maps": len(without),
        "map_size_share": (size - len(without)) / len(without),
    }


def summary(record: dict) -> str:
    """The figures as text, each target marked PASS or MISS."""
    lines = [
        (
            f"{record['machine']}; load average {record['load_average_before']} -> "
            f"{record['load_average_after']}; {record['started_utc']} to {record['finished_utc']}; "
            f"{record['threads']} thread(s)"
        )
    ]
    for name, figures in record["bundles"].items():
        lines.append(f"{name}:")
        for key in ("pointing_game", "pointing_game_heldout"):
            if figures.get(key) is not None:
                lines.append(
                    f"  {key}: {100 * figures[key]:.2f}% (random peak {100 * figures[key + '_chance']:.1f}%, "
                    f"{figures[key + '_pairs']} pairs) {_verdict(key, figures[key])}"
                )
        if "peak_agreement_with_reference" in figures:
            agree = figures["peak_agreement_with_reference"]
            lines.append(
                f"  peak cell equal to the reference: {100 * agree['share']:.2f}% of {agree['pairs']} pairs"
            )
        lines.append(
            f"  ms/frame explain on {figures['frame_ms_explain_on']['median']:.3f}, off "
            f"{figures['frame_ms_explain_off']['median']:.3f}, invoke {figures['invoke_ms']['median']:.3f}; "
            f"map adds {figures['map_added_ms']['median']:.3f} ms = "
            f"{100 * figures['map_invoke_share']:.1f}% of invoke {_verdict('map_invoke_share', figures['map_invoke_share'])}, "
            f"{100 * figures['map_frame_share']:.1f}% of the frame without maps"
        )
        lines.append(
            f"  bundle {figures['bundle_bytes']} bytes, {figures['bundle_bytes_without_maps']} without maps: "
            f"+{100 * figures['map_size_share']:.3f}% {_verdict('map_size_share', figures['map_size_share'])}"
        )
    return "\n".join(lines)


def _verdict(key: str, value: float) -> str:
    target = TARGETS[key]
    met = value >= target if key.startswith("pointing") else value <= target
    return f"[target {'>=' if key.startswith('pointing') else '<='} {100 * target:g}%: {'PASS' if met else 'MISS'}]"


def _prefixed(prefix: str, figures: dict) -> dict:
    return {(f"{prefix}_{key}" if key else prefix): value for key, value in figures.items()}


def _spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


if __name__ == "__main__":
    sys.exit(main())
