"""``fuselite train`` arguments.  TensorFlow is imported only when the command runs."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from fuselite.errors import UserError

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the train options to ``parser``."""
    from fuselite.train.backbones import list_backbones
    from fuselite.train.configs import TEACHER_VIEWS, list_configs

    parser.add_argument("--config",
                        help=f"named config: {', '.join(list_configs())} (default: custom with --data, "
                        "else scenes-default). custom: 40 epochs (early stop possible after 30), "
                        "batch 64, 15%% validation and 15%% test, input size from the data")
    parser.add_argument("--out", type=Path, required=True, help="run directory to create")
    parser.add_argument("--data", help="your dataset: a folder per class, a .csv/.jsonl manifest, "
                        "a COCO .json, or a folder of Fashion-MNIST IDX files")
    parser.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    parser.add_argument("--epochs", type=int, help="override the config's epochs")
    parser.add_argument("--image-size", type=int, metavar="PX",
                        help="input size in pixels (64-224). Default with --data: a pretrained backbone's "
                        "native size (efficientnet-lite0: 224); for the tiny tower it is chosen from the "
                        "data (the item count and a sample of image headers): 128 for 5000+ items "
                        "whose median short side is 256+ px, 96 for 500+ items of 200+ px, else 64, "
                        "never above the images' own size. The log says which and why "
                        "(docs/own-images.md)")
    parser.add_argument("--width", type=float, help="override the image tower width multiplier")
    parser.add_argument("--batch-size", type=int, help="override the batch size")
    parser.add_argument("--seed", type=int, help="override the seed")
    parser.add_argument("--limit", type=int, help="use at most this many training items")
    parser.add_argument("--swa-epochs", type=int, metavar="N",
                        help="average the weights of the last N epochs (stochastic weight averaging); "
                        "raise --epochs by N to keep the usual schedule before them")
    parser.add_argument("--teacher", action="append", type=Path, metavar="RUN",
                        help="a finished run of the same data to distill from (repeat for an "
                        "ensemble): the model also learns the teachers' averaged soft labels")
    parser.add_argument("--backbone", metavar="NAME",
                        help=f"image backbone: {', '.join(list_backbones())}; 'custom' picks "
                        "efficientnet-lite0 when the [pretrained] extra is installed, else tiny")
    parser.add_argument("--backbone-weights", metavar="FILE",
                        help="a local weights file for the backbone instead of its default source "
                        "('none' for random weights)")
    parser.add_argument("--scoring", choices=("global", "regional"),
                        help="one embedding per image (global; the default with a pretrained backbone) or "
                        "one per cell of the last feature map, a label scoring as its best cell (regional)")
    parser.add_argument("--unfreeze", type=int, metavar="N",
                        help="after training on the frozen backbone, fine-tune its top N blocks "
                        "(batch norm frozen)")
    parser.add_argument("--init-from", type=Path, metavar="RUN",
                        help="start from a finished run's towers (its architecture is kept) with new "
                        "data and new labels; labels and vocabulary are merged")
    parser.add_argument("--workers", metavar="HOST:PORT,...",
                        help="run as one worker of a multi-worker job: every worker's address, the same "
                        "list on each (worker 0 is the chief and writes --out); writes TF_CONFIG, which "
                        "may be set instead (docs/distributed.md)")
    parser.add_argument("--worker-index", type=int, metavar="I",
                        help="with --workers: this worker's place in the list (0 on the chief)")
    parser.add_argument("--distill-weight", type=float, metavar="W",
                        help="with --teacher: share of the label loss given to the teachers' soft labels, "
                        "0 to 1 (default 0.7; the rest goes to the true labels)")
    parser.add_argument("--teacher-views", choices=TEACHER_VIEWS,
                        help="what the teachers score: plain images once before training (the "
                        "default), or every augmented training batch (slower per step)")


def run(args: argparse.Namespace) -> int:
    """Trains and prints the test metrics (a non-chief worker prints one line)."""
    from fuselite.train.configs import resolve_backbone

    cluster = _cluster(args)
    config = _named_config(args)
    if args.data is not None:
        if not Path(args.data).exists():
            raise UserError(f"--data {args.data}: no such file or folder")
        config = config.with_overrides(data=str(Path(args.data).resolve()))
    if args.init_from is not None and not args.resume:
        config = _inherit(config, args)
    elif not args.resume:
        config = resolve_backbone(config, args.backbone, args.image_size, args.scoring)
    config = config.with_overrides(
        epochs=args.epochs, image_size=args.image_size, width=args.width,
        batch_size=args.batch_size, seed=args.seed, limit=args.limit, swa_epochs=args.swa_epochs,
        backbone_weights=args.backbone_weights, unfreeze=args.unfreeze,
    )
    if args.teacher:
        config = config.with_overrides(teachers=tuple(str(_finished_run(t)) for t in args.teacher))
    config = config.with_overrides(teacher_views=args.teacher_views, distill_weight=args.distill_weight)
    if config.teacher_views == "augmented" and not config.teachers:
        raise UserError("--teacher-views augmented needs at least one --teacher RUN")
    if args.distill_weight is not None and not config.teachers:
        raise UserError("--distill-weight needs at least one --teacher RUN")
    if args.resume and not args.out.exists():
        raise UserError(f"--resume: {args.out} does not exist")
    from fuselite.train.trainer import train  # heavy: TensorFlow

    metrics = train(config, args.out, resume=args.resume)
    if cluster is not None and not cluster.is_chief:
        print(f"{cluster.task} of {cluster.workers}: done; the chief wrote the run to {args.out}")
        return 0
    print(format_metrics(metrics))
    print(f"run written to {args.out}")
    return 0


def _cluster(args: argparse.Namespace):
    """The multi-worker job this process belongs to (``TF_CONFIG``, or written from ``--workers``)."""
    import os

    from fuselite.train.distributed import cluster_from_env, tf_config_for

    if args.workers is None:
        if args.worker_index is not None:
            raise UserError("--worker-index needs --workers (every worker's host:port)")
        return cluster_from_env()
    if args.worker_index is None:
        raise UserError("--workers needs --worker-index I (0 on the chief)")
    if os.environ.get("TF_CONFIG"):
        raise UserError("TF_CONFIG is set and so is --workers; use one of them")
    os.environ["TF_CONFIG"] = tf_config_for(args.workers, args.worker_index)
    return cluster_from_env()


def _named_config(args: argparse.Namespace):
    """The config to train: as named; else ``custom`` for ``--data``, else the scenes.

    A config with data of its own (the scenes, Fashion-MNIST) never silently trains on
    ``--data``: its schedule and settings were made for that data.
    """
    from fuselite.train.configs import get_config

    if args.config is None:
        return get_config("custom" if args.data is not None else "scenes-default")
    config = get_config(args.config)
    if args.data is not None and config.data:
        raise UserError(f"--config {args.config} trains on its own data ({config.data}); "
                        "for your images use --config custom (or leave --config out)")
    return config


def _inherit(config, args: argparse.Namespace):
    """The config with the ``--init-from`` run's architecture, refusing flags that would change it."""
    from fuselite.train.configs import TrainConfig
    from fuselite.train.init_from import inherit_architecture

    earlier_dir = _finished_run(args.init_from)
    earlier = TrainConfig.load(earlier_dir / "config.json")
    for flag, name in (("--backbone", "backbone"), ("--image-size", "image_size"), ("--width", "width"),
                       ("--scoring", "scoring")):
        given = getattr(args, name)
        if given is not None and given != getattr(earlier, name):
            raise UserError(f"--init-from {args.init_from} keeps its {name} ({getattr(earlier, name)}); "
                            f"drop {flag} or train from scratch")
    return inherit_architecture(config, earlier).with_overrides(init_from=str(earlier_dir))


def _finished_run(path: Path) -> Path:
    """``path`` resolved, if it holds a finished run (checked before TensorFlow loads)."""
    from fuselite.train.run import check_run_dir

    check_run_dir(path)
    return path.resolve()


def format_metrics(metrics: dict) -> str:
    """The headline metrics as a few aligned lines."""
    keys = ["top1", "mAP", "micro_f1", "heldout_combo_ap", "image_to_caption_r@1",
            "image_to_caption_r@5", "caption_to_image_r@1", "image_params", "text_params",
            "train_seconds"]
    lines = [f"  {k:<22} {metrics[k]:.4f}" if isinstance(metrics[k], float) else f"  {k:<22} {metrics[k]}"
             for k in keys if k in metrics]
    per_phrase = metrics.get("heldout_combo_ap_per_phrase")
    text = "test metrics:\n" + "\n".join(lines)
    return text + "\n" + json.dumps(per_phrase) if per_phrase else text
