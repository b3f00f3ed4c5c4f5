"""``fuselite convert RUN_DIR --out DIR``: a trained run -> one TFLite bundle per variant.

Exit codes (:func:`fuselite.convert.report.exit_code`): 0 when at least one bundle was
written and every variant named in ``--variants`` was (a default variant over the
accuracy budget is reported with its next step, not an error); 1 when a named variant
(or, with nothing written, any) failed: a converter error or over ``--max-loss``; 2 for
a usage mistake, including a variant that ``--target`` cannot load.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from fuselite.convert.variants import (
    VARIANTS,
    default_variants,
    explicit_names,
    list_variants,
    resolve_variants,
)
from fuselite.errors import UserError

log = logging.getLogger(__name__)
EXIT_FAILED = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``convert`` options; imports no TensorFlow."""
    table = "; ".join(f"{v.name}: {v.description}" for v in VARIANTS.values())
    parser.epilog = f"Variants - {table}. Default: {', '.join(default_variants())}."
    parser.add_argument("run_dir", type=Path, nargs="?", metavar="RUN_DIR", help="a finished `fuselite train` run")
    parser.add_argument("--out", type=Path, metavar="DIR", help="folder for <variant>.tflite bundles")
    parser.add_argument(
        "--variants", nargs="+", metavar="NAME",
        help=f"variants to write (names, comma lists, 'default' or 'all'; known: {', '.join(list_variants())})",
    )
    parser.add_argument(
        "--sparsity", type=float, default=None,
        help="pin the sparsity of pruned variants (default: the highest of 0.9, 0.8, 0.7, 0.6, 0.5 "
             "within --max-loss, each fine-tuned and checked)",
    )
    parser.add_argument(
        "--clusters", type=int, default=None, metavar="N",
        help="pin the shared values per kernel of clustered variants (default: the fewest of 8, 16, 32 "
             "within --max-loss, each fine-tuned and checked)",
    )
    parser.add_argument(
        "--target", metavar="PROFILE",
        help="refuse variants this device profile's (or runtime's) interpreter cannot load",
    )
    parser.add_argument("--threads", type=int, default=2, help="interpreter threads for the numeric checks")
    parser.add_argument("--calibration-samples", type=int, default=200, help="training images for int8 calibration")
    parser.add_argument(
        "--max-loss", type=float, default=1.0, metavar="PT",
        help="accuracy budget: a variant whose numbers drift past its tolerance is still written when "
             "its task metric on the validation split loses at most PT points against Keras (default: 1.0)",
    )
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="no progress bars (they go to stderr, and only when it is a terminal)")
    parser.add_argument("--eval-samples", type=int, default=0,
                        help="images of each split (validation, test) to check on (0: all)")
    parser.add_argument(
        "--finetune-steps", type=int, default=None,
        help="fine-tuning steps of pruned, clustered and qat variants (default: about 7 epochs of "
             "the run's training split, 500 to 4000)",
    )
    parser.add_argument(
        "--fixed-labels", action="store_true",
        help="bundles with the run's label embeddings only: no text encoder and no tokenizer, so the "
             "board scores only the run's labels (--labels must name some of them); the smallest file",
    )
    parser.add_argument("--list", type=Path, metavar="DIR", help="only list the bundles in DIR with their sizes")
    parser.add_argument(
        "--pretrained", metavar="BACKBONE",
        help="no run needed: write a zero-shot bundle (imagenet-lite0.tflite) that annotates with the "
             "ImageNet classes and their WordNet words, e.g. --pretrained efficientnet-lite0 --out DIR",
    )
    parser.add_argument("--calibration", type=Path, metavar="DIR",
                        help="with --pretrained: photos to calibrate int8 on (default: scikit-image's)")


def run(args: argparse.Namespace) -> int:
    """Runs the conversion; returns the exit code."""
    if args.list is not None:
        from fuselite.convert.report import describe_bundles

        print(describe_bundles(args.list))
        return 0
    if args.pretrained is not None:
        if args.fixed_labels:
            raise UserError("--fixed-labels applies to a trained run (RUN_DIR); a --pretrained bundle has "
                            "no text encoder to leave out")
        return _zero_shot(args)
    if args.run_dir is None or args.out is None:
        raise UserError("give RUN_DIR and --out DIR (or --list DIR, or --pretrained BACKBONE --out DIR)")
    variants = resolve_variants(args.variants)
    from fuselite.convert.export import Converter, ConvertOptions
    from fuselite.convert.report import results_table, write_report

    options = ConvertOptions(
        sparsity=args.sparsity, clusters=args.clusters, target=args.target, num_threads=args.threads,
        calibration_samples=args.calibration_samples, eval_samples=args.eval_samples,
        finetune_steps=args.finetune_steps, max_loss=args.max_loss, progress=False if args.quiet else None,
        fixed_labels=args.fixed_labels,
    )
    started = time.perf_counter()
    converter = Converter.load(args.run_dir, args.out, options)
    if args.variants is None:
        variants = converter.default_variants(variants)
    results = [converter.convert(v) for v in _progress(variants, options.progress)]
    seconds = round(time.perf_counter() - started, 1)
    write_report(args.out, results, {"run_dir": str(args.run_dir), "seconds": seconds, "options": vars(options)})
    print(results_table(results))
    print(f"{sum(r.status == 'ok' for r in results)} of {len(results)} bundles in {args.out} ({seconds:.0f} s)")
    return _exit_code(results, explicit_names(args.variants))


def _zero_shot(args: argparse.Namespace) -> int:
    """``--pretrained BACKBONE --out DIR``: the zero-shot bundle, then its listing."""
    if args.out is None or args.run_dir is not None:
        raise UserError("--pretrained takes no RUN_DIR; give --pretrained BACKBONE --out DIR")
    from fuselite.convert.report import describe_bundles
    from fuselite.convert.zeroshot import build_zero_shot_bundle

    path = build_zero_shot_bundle(args.pretrained, args.out, args.calibration, args.threads)
    print(describe_bundles(args.out))
    print(f"zero-shot bundle: {path}\ntry: fuselite run --bundle {path} --source 0 --labels \"cat,cup,vehicle\"")
    return 0


def _progress(variants, enabled):
    from tqdm import tqdm

    return tqdm(variants, desc="convert", unit="variant", disable=not sys.stderr.isatty() or enabled is False)


def _exit_code(results, explicit: set[str]) -> int:
    from fuselite.convert.report import EXIT_REFUSED, exit_code

    code = exit_code(results, explicit)
    if code == EXIT_REFUSED:
        refused = [r for r in results if r.status == "refused"]
        raise UserError("; ".join(f"{r.variant} not written: {r.message}" for r in refused))
    return code
