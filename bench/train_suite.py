"""Reproduces the training targets and prints a Markdown row for docs/training.md.

    python -m fuselite.bench.suite train --config scenes-default --out runs/scenes
    python -m fuselite.bench.suite train --config fashion-mnist --out runs/fashion
    python -m fuselite.bench.suite train --config fashion-mnist-small --teacher RUN1 --teacher RUN2 --out runs/student
    python -m fuselite.bench.suite train --config fashion-mnist-small --teacher RUN1 --teacher RUN2 \
        --teacher-views augmented --out runs/student
    python -m fuselite.bench.suite train --config fashion-mnist-small --seed 3 --out runs/small-s3
    python -m fuselite.bench.suite train --config fashion-mnist-small --epochs 76 --swa-epochs 0 --out runs/no-avg

Targets (docs/training.md): scenes-default test mAP >= 0.95 and heldout_combo_ap
>= 0.80 in <= 5 minutes; fashion-mnist top-1 >= 94.0% on the official 10k test
split with <= ~100k parameters.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import shutil
from pathlib import Path

from fuselite.host import machine_description
from fuselite.train.configs import TEACHER_VIEWS


def main(argv: list[str] | None = None) -> None:
    """Trains the config from scratch and prints the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--teacher", action="append", default=[], metavar="RUN",
                        help="a finished run to distill from, as `fuselite train --teacher`")
    parser.add_argument("--teacher-views", choices=TEACHER_VIEWS,
                        help="what the teachers score, as `fuselite train --teacher-views`")
    parser.add_argument("--epochs", type=int, help="override the config's epochs")
    parser.add_argument("--swa-epochs", type=int, metavar="N", help="as `fuselite train --swa-epochs`")
    parser.add_argument("--seed", type=int, help="override the config's seed")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from fuselite.train.configs import get_config
    from fuselite.train.trainer import train

    if args.out.exists():
        shutil.rmtree(args.out)
    config = get_config(args.config)
    if args.teacher:
        config = config.with_overrides(teachers=tuple(str(Path(t).resolve()) for t in args.teacher))
    config = config.with_overrides(teacher_views=args.teacher_views, epochs=args.epochs,
                                   swa_epochs=args.swa_epochs, seed=args.seed)
    metrics = train(config, args.out)
    metric = "top1" if "top1" in metrics else "mAP"
    mirror = metrics.get(f"{metric}_mirror")
    extra = f" | {mirror:.4f}" if mirror is not None else " | -"
    extra += f" | {metrics['heldout_combo_ap']:.3f}" if "heldout_combo_ap" in metrics else " | -"
    print("| config | test metric | value | with mirror averaging | heldout_combo_ap | image params | text params "
          "| wall time | machine | date |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    name = args.config + (f" + {len(config.teachers)} teacher(s), {config.teacher_views} views"
                          if config.teachers else "")
    name += f", {config.epochs} epochs, last {config.swa_epochs} averaged" if config.swa_epochs else ""
    print(f"| {name} | {metric} | {metrics[metric]:.4f}{extra} | {metrics['image_params']:,} | "
          f"{metrics['text_params']:,} | {metrics['train_seconds']:.0f} s | {machine_description()} | "
          f"{datetime.date.today().isoformat()} |")


if __name__ == "__main__":
    main()
