"""``fuselite demo``: the whole chain on the embedded synthetic scenes, then a zero-shot bundle.

train -> convert -> annotate a rendered video with the int8 bundle -> bench, then
the day-one bundle that needs no training: EfficientNet-Lite0's ImageNet classes
and their WordNet words, annotating scikit-image's photo of a cat.
Each step writes into ``--out`` and is skipped when its output is already there,
so an interrupted demo picks up where it stopped (``--fresh`` starts over).
Every step goes through the same command a user would type.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

from fuselite.errors import UserError

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the demo options to ``parser``."""
    parser.add_argument("--out", type=Path, default=Path("demo-out"), help="output folder (default: demo-out)")
    parser.add_argument("--config", default="scenes-default", help="training config (default: scenes-default)")
    parser.add_argument("--threads", type=int, default=2, help="interpreter threads (default: 2)")
    parser.add_argument("--fresh", action="store_true", help="delete --out first and redo every step")


def run(args: argparse.Namespace) -> int:
    """Runs every stage and prints what each produced."""
    if args.fresh and args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    run_dir = train_step(args.out / "run", args.config)
    print(f"\n[1/5] trained model: {run_dir}\n")
    bundles = convert_step(run_dir, args.out / "bundles", args.threads)
    print(f"\n[2/5] bundles: {bundles}\n")
    stream = annotate_step(bundles / "int8.tflite", args.out / "video", args.threads)
    print(f"\n[3/5] annotated video: {stream['video']}\n      events: {stream['events']}\n"
          f"      stream accuracy vs ground truth: micro-F1 {stream['micro_f1']:.3f}, "
          f"mAP {stream['mAP']:.3f} over {stream['frames']} frames\n")
    report_dir = bench_step(bundles, run_dir, args.out / "bench", args.threads)
    print(f"\n[4/5] bench report: {report_dir / 'report.md'}\n      Pareto plot: {report_dir / 'pareto.png'}")
    zero_shot = zero_shot_step(args.out / "zero-shot", args.threads)
    if zero_shot:
        scores = ", ".join(f"{label} {score:.2f}" for label, score in zero_shot["scores"].items())
        print(f"\n[5/5] zero-shot bundle: {zero_shot['bundle']}\n      {zero_shot['photo'].name}: {scores}")
    return 0


def _cli(argv: list[str], check: bool = True) -> int:
    """Runs a fuselite subcommand and returns its exit code; with ``check``, a failure stops the demo."""
    from fuselite.cli import main

    code = main(argv)
    if check and code != 0:
        raise UserError(f"`fuselite {' '.join(argv)}` failed with exit code {code}")
    return code


def _cli_process(argv: list[str]) -> None:
    """Runs a fuselite subcommand in a process of its own, as a user's shell would.

    ``fuselite run`` goes this way so that its summary line reports the runtime's own
    memory, not that of this process, which holds TensorFlow after the training step.
    """
    import subprocess
    import sys

    code = subprocess.run([sys.executable, "-m", "fuselite.cli", *argv], check=False).returncode
    if code != 0:
        raise UserError(f"`fuselite {' '.join(argv)}` failed with exit code {code}")


def train_step(run_dir: Path, config_name: str) -> Path:
    """Trains ``config_name`` into ``run_dir`` unless a finished run is already there."""
    if (run_dir / "metrics.json").exists():
        from fuselite.train.cli import format_metrics

        print(format_metrics(json.loads((run_dir / "metrics.json").read_text())))
        return run_dir
    resume = ["--resume"] if (run_dir / "checkpoints" / "state.json").exists() else []
    _cli(["train", "--config", config_name, "--out", str(run_dir), *resume])
    return run_dir


def convert_step(run_dir: Path, bundle_dir: Path, threads: int) -> Path:
    """Writes every default variant and lists the files with their sizes.

    The rest of the demo needs only the int8 bundle: when another variant is refused
    (its table row says why), the demo says so and goes on.
    """
    if not (bundle_dir / "int8.tflite").exists():
        code = _cli(["convert", str(run_dir), "--out", str(bundle_dir), "--threads", str(threads)], check=False)
        if code != 0:
            if not (bundle_dir / "int8.tflite").exists():
                raise UserError(f"`fuselite convert {run_dir}` wrote no int8 bundle (exit code {code}); "
                                "see the table above")
            print("note: some variants were not written (see the table above); the demo goes on with int8")
    _cli(["convert", "--list", str(bundle_dir)])
    return bundle_dir


def annotate_step(bundle: Path, out_dir: Path, threads: int) -> dict:
    """Renders a scenes video, annotates it with ``fuselite run`` and scores the stream."""
    from fuselite.data.video import read_truth, render_video

    out_dir.mkdir(parents=True, exist_ok=True)
    video, annotated, events = out_dir / "scenes.mp4", out_dir / "annotated.mp4", out_dir / "events.jsonl"
    truth_path = video.with_suffix(".truth.jsonl")
    if not truth_path.exists():
        render_video(video)
    if not events.exists():
        _cli_process(["run", "--bundle", str(bundle), "--source", str(video), "--threads", str(threads),
              "--jsonl", str(events), "--video-out", str(annotated), "--max-results", "20",
                      "--all-scores"])  # stream_accuracy's mAP needs every label's score
    scores = stream_accuracy(events, read_truth(truth_path))
    return {"video": annotated, "events": events, **scores}


def stream_accuracy(events_path: Path, truth: list[list[str]]) -> dict:
    """Micro-F1 of the reported labels and mAP of the scores, against each frame's true tags."""
    import numpy as np

    from fuselite.metrics import mean_average_precision

    events = [json.loads(line) for line in events_path.read_text().splitlines() if line.strip()]
    events = [e for e in events if e.get("type") == "annotation" and 0 <= e["frame"] < len(truth)]
    if not events:
        raise UserError(f"{events_path}: no annotation events to score")
    labels = sorted(events[0]["scores"])
    scores = np.array([[e["scores"][label] for label in labels] for e in events])
    targets = np.array([[label in truth[e["frame"]] for label in labels] for e in events], dtype=float)
    reported = sum(len(e["labels"]) for e in events)
    correct = sum(sum(c["label"] in truth[e["frame"]] for c in e["labels"]) for e in events)
    actual = int(targets.sum())
    micro_f1 = 2 * correct / (reported + actual) if reported + actual else 0.0
    return {"micro_f1": micro_f1, "mAP": mean_average_precision(scores, targets), "frames": len(events)}


ZERO_SHOT_LABELS = "cat,dog,animal,vehicle,food,furniture"


def zero_shot_step(out_dir: Path, threads: int) -> dict | None:
    """Builds the zero-shot bundle and annotates scikit-image's cat photo with it.

    Needs the ``[pretrained]`` extra and scikit-image (the photo); without them the
    demo says what to install and ends after the scenes chain.
    """
    from fuselite.train.backbones import pretrained_available

    try:
        import skimage
    except ImportError:
        skimage = None
    if skimage is None or not pretrained_available("efficientnet-lite0"):
        print("\n[5/5] skipped the zero-shot bundle: pip install 'fuselite[pretrained]' scikit-image")
        return None
    bundle = out_dir / "imagenet-lite0.tflite"
    if not bundle.exists():
        _cli(["convert", "--pretrained", "efficientnet-lite0", "--out", str(out_dir), "--threads", str(threads)])
    photo = out_dir / "photos" / "chelsea.png"
    photo.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(skimage.__file__).parent / "data" / "chelsea.png", photo)
    events = out_dir / "events.jsonl"
    events.unlink(missing_ok=True)  # `run` appends; this step reads only this run's event
    _cli_process(["run", "--bundle", str(bundle), "--source", str(photo.parent), "--labels", ZERO_SHOT_LABELS,
                  "--jsonl", str(events), "--threads", str(threads), "--all-scores"])
    annotation = next(e for e in map(json.loads, events.read_text().splitlines()) if e.get("type") == "annotation")
    return {"bundle": bundle, "photo": photo, "scores": annotation["scores"]}


def bench_step(bundle_dir: Path, run_dir: Path, report_dir: Path, threads: int) -> Path:
    """Benchmarks every bundle on the run's test split and prints the table."""
    _cli(["bench", str(bundle_dir), "--data", str(run_dir), "--out", str(report_dir),
          "--threads", str(threads)])
    return report_dir
