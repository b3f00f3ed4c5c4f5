"""Typed phrases on a scenes run: how often they fire where they do not apply, with and
without the reference-image bound on their thresholds (:mod:`fuselite.runtime.typed_thresholds`).

    python -m fuselite.bench.suite phrases RUN_DIR BUNDLE [BUNDLE...] [--phrases "a,b"]
        [--threads 1] [--out phrases.json]

The frames are the run's test images and its held-out scenes (every one holds a
held-out colour-shape combo), embedded by each bundle's own image model.  A phrase
*applies* to a frame when one object in it carries all of the phrase's words (colour,
shape, size): the scenes generator records every object, so the truth is exact.  The
phrases are the held-out combos (never trained as labels) and a few free-text phrases
of known words (three-word "size colour shape" phrases, and one that never applies).
Each phrase is typed as a user would type it (:func:`fuselite.runtime.labels.typed_labels`);
"default" scores it at the manifest's ``default_threshold``, "bounded" at the threshold
the board sets from the bundle's reference images.  A bundle written before reference
images existed gets them from the run's validation images the way ``fuselite convert``
makes them, and the report says so.

Reported per phrase and per group: false firing (the share of the frames where it does
not apply on which it fires) and recall (the share of the frames where it applies on
which it fires).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from fuselite.host import machine_description

FREE_PHRASES = (
    "large green star",
    "small blue triangle",
    "large yellow circle",
    "large red circle",
    "small white cross",
    "large purple square",
    "small green square",
    "red star cross",  # no object is both: it never applies
)


def main(argv: list[str] | None = None) -> int:
    """Measures each bundle's phrases with and without the bound; prints and writes ``--out``."""
    parser = argparse.ArgumentParser(
        prog="python -m fuselite.bench.suite phrases", description=__doc__.split("\n")[0]
    )
    parser.add_argument("run_dir", type=Path, help="a finished scenes run")
    parser.add_argument("bundles", type=Path, nargs="+", help="bundles converted from it")
    parser.add_argument(
        "--phrases", help="free-text phrases, comma-separated (default: a fixed list)"
    )
    parser.add_argument("--threads", type=int, default=1, help="interpreter threads (default 1)")
    parser.add_argument("--out", type=Path, help="JSON file for the figures")
    args = parser.parse_args(argv)
    from fuselite.data.dataset import Splits
    from fuselite.data.sources import load_run_data
    from fuselite.train.configs import TrainConfig

    config = TrainConfig.load(args.run_dir / "config.json")
    data = load_run_data(config, Splits.load(args.run_dir / "splits.json"))
    if data.heldout is None or data.test.objects is None:
        print(
            f"{args.run_dir}: not a scenes run (no held-out scenes or objects to judge phrases by)"
        )
        return 2
    free = tuple(p.strip() for p in args.phrases.split(",")) if args.phrases else FREE_PHRASES
    record = {
        "machine": machine_description(),
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "started_utc": _now(),
        "run": str(args.run_dir),
        "bundles": {
            str(path): measure_bundle(path, data, free, args.threads) for path in args.bundles
        },
    }
    record["finished_utc"] = _now()
    for path, result in record["bundles"].items():
        print_bundle(path, result)
    if args.out:
        args.out.write_text(json.dumps(record, indent=1))
    return 0


def measure_bundle(path: Path, data, free: tuple[str, ...], threads: int) -> dict:
    """One bundle's figures: per phrase and per group, default against bounded thresholds."""
    from fuselite.bundle import read_bundle
    from fuselite.convert.numerics import tflite_embeddings
    from fuselite.runtime.labels import typed_labels
    from fuselite.scoring import label_probabilities

    bundle = read_bundle(path)
    carried = bundle.reference_embeddings is not None
    if not carried:
        bundle = replace(bundle, reference_embeddings=_reference_from_run(bundle, data, threads))
    heldout = sorted(set(data.heldout.label_vocabulary()) - set(bundle.manifest.labels))
    phrases = (*heldout, *free)
    frames = np.concatenate([data.test.images, data.heldout.images])
    truth = _truth(phrases, list(data.test.objects) + list(data.heldout.objects))
    embeddings = tflite_embeddings(bundle.model_bytes, frames, threads)
    manifest = bundle.manifest
    bounded = typed_labels(bundle, phrases)
    default = typed_labels(replace(bundle, reference_embeddings=None), phrases)
    scores = label_probabilities(
        embeddings, bounded.embeddings, manifest.logit_scale, manifest.logit_bias
    )
    result = {
        "reference": "carried by the bundle"
        if carried
        else "made from the run's validation images",
        "reference_images": len(bundle.reference_embeddings),
        "frames": len(frames),
        "default_threshold": manifest.default_threshold,
        "phrases": {},
        "groups": {},
    }
    for name, thresholds in (("default", default.thresholds), ("bounded", bounded.thresholds)):
        fires = scores >= thresholds
        for j, phrase in enumerate(phrases):
            row = result["phrases"].setdefault(phrase, {"applies": int(truth[:, j].sum())})
            row[name] = {"threshold": float(thresholds[j]), **_rates(fires[:, [j]], truth[:, [j]])}
        for group, columns in (
            ("held-out", range(len(heldout))),
            ("free", range(len(heldout), len(phrases))),
        ):
            columns = list(columns)
            figures = _rates(fires[:, columns], truth[:, columns])
            result["groups"].setdefault(group, {})[name] = figures
    return result


def _reference_from_run(bundle, data, threads: int) -> np.ndarray:
    """The reference images ``fuselite convert`` would have put in ``bundle``."""
    from fuselite.convert.numerics import tflite_embeddings
    from fuselite.convert.reference import reference_embeddings, reference_image_count

    count = reference_image_count(len(data.val), bundle.manifest.embedding_dim)
    outputs = tflite_embeddings(bundle.model_bytes, data.val.images[:count], threads)
    return reference_embeddings(outputs, bundle.label_embeddings)


def _truth(phrases, objects) -> np.ndarray:
    """bool ``[frames, phrases]``: some object of the frame carries every word of the phrase."""
    from fuselite.runtime.typed_thresholds import label_words

    words = [label_words(p) for p in phrases]
    object_words = [
        [{w for tag in obj.tags for w in tag.split()} for obj in frame] for frame in objects
    ]
    return np.array([[any(w <= o for o in frame) for w in words] for frame in object_words])


def _rates(fires: np.ndarray, applies: np.ndarray) -> dict:
    """False firing and recall over every (frame, phrase) pair of the columns given."""
    wrong, right = fires & ~applies, fires & applies
    return {
        "false_firing": float(wrong.sum() / max((~applies).sum(), 1)),
        "recall": float(right.sum() / applies.sum()) if applies.any() else None,
        "precision": float(right.sum() / fires.sum()) if fires.any() else None,
        "fires": float(fires.mean()),
    }


def print_bundle(path: str, result: dict) -> None:
    """The bundle's table: one row per phrase, then the groups."""
    print(
        f"\n{path}: {result['frames']} frames; reference: {result['reference_images']} images, "
        f"{result['reference']}; default threshold {result['default_threshold']:.3f}"
    )
    print(
        f"{'phrase':<22} {'applies':>7}  {'threshold':>15}  {'false firing':>15}  {'recall':>15}  "
        f"{'precision':>15}"
    )
    rows = [(p, r["applies"], r["default"], r["bounded"]) for p, r in result["phrases"].items()]
    rows += [(f"[{g}]", "", r["default"], r["bounded"]) for g, r in result["groups"].items()]
    for name, applies, before, after in rows:
        threshold = (
            f"{before['threshold']:.3f} -> {after['threshold']:.3f}"
            if "threshold" in before
            else ""
        )
        print(
            f"{name:<22} {applies!s:>7}  {threshold:>15}  {_pair(before, after, 'false_firing'):>15}  "
            f"{_pair(before, after, 'recall'):>15}  {_pair(before, after, 'precision'):>15}"
        )


def _pair(before: dict, after: dict, key: str) -> str:
    def share(value: float | None) -> str:
        return "-" if value is None else f"{value:.1%}"

    return "-" if before[key] is None else f"{share(before[key])} -> {share(after[key])}"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


if __name__ == "__main__":
    sys.exit(main())
