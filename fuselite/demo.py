"""``fuselite demo``: the whole chain on the embedded synthetic scenes.

Each step writes into ``--out`` and is skipped when its output is already there,
so an interrupted demo picks up where it stopped (``--fresh`` starts over).
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the demo options to ``parser``."""
    parser.add_argument("--out", type=Path, default=Path("demo-out"), help="output folder (default: demo-out)")
    parser.add_argument("--config", default="scenes-default", help="training config (default: scenes-default)")
    parser.add_argument("--fresh", action="store_true", help="delete --out first and redo every step")


def run(args: argparse.Namespace) -> int:
    """Runs train (and the later stages) and prints what each produced."""
    if args.fresh and args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    run_dir = train_step(args.out / "run", args.config)
    print(f"\n[1/1] trained model: {run_dir}")
    return 0


def train_step(run_dir: Path, config_name: str) -> Path:
    """Trains ``config_name`` into ``run_dir`` unless a finished run is already there."""
    from fuselite.train.cli import format_metrics
    from fuselite.train.configs import get_config
    from fuselite.train.trainer import train

    if (run_dir / "metrics.json").exists():
        log.info("reusing the finished run in %s", run_dir)
        import json

        metrics = json.loads((run_dir / "metrics.json").read_text())
    else:
        resume = (run_dir / "checkpoints" / "state.json").exists()
        metrics = train(get_config(config_name), run_dir, resume=resume)
    print(format_metrics(metrics))
    return run_dir
