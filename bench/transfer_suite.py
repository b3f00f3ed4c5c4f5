"""Does the tiny tower learn more from extra pictures the teacher labels: ``python -m fuselite.bench.suite transfer``.

    python -m fuselite.bench.suite transfer --work-dir runs/seeds [--seeds 1 2 3]

Distilling the frozen EfficientNet-Lite0 run into the tiny tower on the pictures the
teacher trained on gained nothing over three seeds (``seeds`` suite, docs/pretrained.md):
there the teacher's soft labels are close to the true ones.  This suite gives the
student pictures the teacher never saw.  Debian's clip-art tree holds about 3,500 more
pictures of the seen sub-categories than the manifests keep (``--per-category`` 100):
they are flattened into ``openclipart/extra-images/`` and listed with their true tags in
``openclipart/seen-extra.jsonl`` (never in a test split).  For each seed it trains, with
``--seed``, in the work folder the ``seeds`` suite uses (finished runs are kept):

* the split's EfficientNet-Lite0 teacher and the tiny tower from scratch (as ``seeds``);
* ``teacher-labelled-tiny``: the tiny tower on seen-train plus the extra pictures, tagged
  with the teacher's best category (and sub-category, when over 0.5), distilled from the
  teacher (``--distill-weight 1.0``: its soft labels are the targets of every picture);
* ``true-labelled-tiny``: the tiny tower on the same pictures with their true tags and no
  teacher, what the extra pictures could give at best.

Every int8 bundle (the teacher's fp32) is scored on the seen test split's category top-1
through the TF-free runtime, as in the ``seeds`` suite.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np

from fuselite.bench.pretrained_suite import LITE0, Settings, TestFrames
from fuselite.bench.seeds_suite import (
    GAIN_TARGET_PT,
    _spec,
    bundle_top1,
    scoring_setup,
    train_and_convert,
)
from fuselite.files import write_atomic

log = logging.getLogger(__name__)
EXTRA_DIR = "extra-images"
SUB_CATEGORY_MIN_PROBABILITY = 0.5
STUDENTS = ("teacher-labelled-tiny", "true-labelled-tiny")


def extra_pictures(data_dir: Path) -> Path:
    """``seen-extra.jsonl``: the seen sub-categories' pictures the manifests left out (built once)."""
    from fuselite.data import openclipart

    out = data_dir / "seen-extra.jsonl"
    if out.is_file():
        return out
    summary = json.loads((data_dir / "summary.json").read_text())
    kept = {json.loads(line)["image"].rsplit("/", 1)[-1] for line in (data_dir / "seen.jsonl").open()}
    dropped: Counter = Counter()
    found = openclipart.find_clipart(Path(summary["root"]), dropped)
    categories = set(summary["categories"])
    rest = [item for item in found if item.image_name not in kept and item.category in categories]
    chosen = openclipart.select_images(rest, len(rest), 0, dropped, min_category_images=0)
    folder = data_dir / EXTRA_DIR
    folder.mkdir(exist_ok=True)
    lines = []
    for item, jpeg in chosen.items():
        write_atomic(folder / item.image_name, jpeg)
        lines.append(json.dumps({**item.manifest_entry(), "image": f"{EXTRA_DIR}/{item.image_name}"}) + "\n")
    write_atomic(out, "".join(lines).encode())
    log.info("%d extra pictures of the seen sub-categories in %s", len(lines), out)
    return out


def teacher_tags(soft_labels: np.ndarray, labels: list[str], categories: set[str]) -> list[list[str]]:
    """Per picture, the teacher's best category and, when over 0.5, its best sub-category."""
    is_category = np.array([label in categories for label in labels])
    tags = []
    for probabilities in soft_labels:
        best_category = int(np.argmax(np.where(is_category, probabilities, -np.inf)))
        best_sub = int(np.argmax(np.where(is_category, -np.inf, probabilities))) if not is_category.all() else None
        picked = [labels[best_category]]
        if best_sub is not None and probabilities[best_sub] >= SUB_CATEGORY_MIN_PROBABILITY:
            picked.append(labels[best_sub])
        tags.append(picked)
    return tags


def teacher_labelled_manifest(data_dir: Path, extra: Path, teacher_dir: Path, categories: list[str],
                              out: Path) -> float:
    """Writes seen-train plus the extra pictures with the teacher's tags; returns how often
    the teacher's category is the true one (read from the extra pictures' own tags)."""
    from fuselite.data.readers import read_dataset
    from fuselite.train.distill import teacher_soft_labels
    from fuselite.train.run import load_run

    teacher = load_run(teacher_dir)
    labels = list(teacher.labels)
    pictures = read_dataset(extra, teacher.config.image_size, own_file=False)
    config = replace(teacher.config, teachers=(str(teacher_dir),))
    [soft] = teacher_soft_labels(config, teacher.task, labels, [pictures.images])
    tags = teacher_tags(soft, labels, set(categories))
    right = sum(tag[0] in truth for tag, truth in zip(tags, pictures.tags))
    entries = [{**json.loads(line), "tags": tag} for line, tag in zip(extra.open(), tags)]
    write_atomic(out, _with_known_tags(data_dir / "seen-train.jsonl", set(labels), entries))
    return right / len(tags)


def true_labelled_manifest(data_dir: Path, extra: Path, out: Path) -> None:
    """Writes seen-train plus the extra pictures with their true tags."""
    write_atomic(out, (data_dir / "seen-train.jsonl").read_bytes() + extra.read_bytes())


def _with_known_tags(manifest: Path, known: set[str], extra_entries: list[dict]) -> bytes:
    """The manifest's lines (tags the teacher never trained on dropped: it could not teach
    them, and a student with a label its teacher lacks is refused) and then the extra entries."""
    entries = [json.loads(line) for line in manifest.open()]
    entries = [{**entry, "tags": [t for t in entry["tags"] if t in known]} for entry in entries]
    return "".join(json.dumps(entry) + "\n" for entry in [*entries, *extra_entries]).encode()


def main(argv: list[str] | None = None) -> int:
    """Trains, scores, prints the table and the verdict; writes ``WORK/transfer.json``."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    work = args.work_dir.resolve()
    settings, data, frames, categories = scoring_setup(work, "seen")
    extra = extra_pictures(data)
    rows = [run_seed(seed, work, data, extra, frames, categories, settings) for seed in args.seeds]
    report = summarise(rows, sum(1 for _ in extra.open()))
    (work / "transfer.json").write_text(json.dumps(report, indent=1))
    print(to_markdown(report))
    return 0


def run_seed(seed: int, work: Path, data: Path, extra: Path, frames: TestFrames, categories: list[str],
             settings: Settings) -> dict:
    """One seed's teacher, tiny tower and two students, trained (unless finished) and scored."""
    runs = work / "seen"
    teacher = runs / f"{LITE0}-seed{seed}"
    train_and_convert(_spec(LITE0), data / "seen-train.jsonl", teacher, None, seed, "fp32")
    train_and_convert(_spec("tiny"), data / "seen-train.jsonl", runs / f"tiny-seed{seed}", None, seed)
    labelled = data / f"seen-train-teacher-labelled-seed{seed}.jsonl"
    agreement_path = labelled.with_suffix(".agreement.json")
    if not agreement_path.is_file():  # written after the manifest: both are there, or neither counts
        agreement = teacher_labelled_manifest(data, extra, teacher, categories, labelled)
        write_atomic(agreement_path, json.dumps(agreement).encode())
    true_labelled = data / "seen-train-true-labelled.jsonl"
    if not true_labelled.is_file():
        true_labelled_manifest(data, extra, true_labelled)
    train_and_convert(_spec("distilled-tiny"), labelled, runs / f"teacher-labelled-tiny-seed{seed}", teacher, seed)
    train_and_convert(_spec("tiny"), true_labelled, runs / f"true-labelled-tiny-seed{seed}", None, seed)
    row = {"seed": seed, "teacher_right_on_extra": json.loads(agreement_path.read_text()),
           LITE0: bundle_top1(teacher, frames, categories, settings, "fp32")}
    for name in ("tiny", *STUDENTS):
        row[name] = bundle_top1(runs / f"{name}-seed{seed}", frames, categories, settings)
    log.info("seed %d: %s", seed, row)
    return row


def summarise(rows: list[dict], extra_pictures: int) -> dict:
    """Each seed's scores, and each student's mean gain over the tiny tower."""
    gains = {name: [100 * (row[name] - row["tiny"]) for row in rows] for name in STUDENTS}
    return {
        "rows": rows, "extra_pictures": extra_pictures,
        "mean_gain_pt": {name: statistics.fmean(values) for name, values in gains.items()},
        "sd_gain_pt": {name: statistics.stdev(values) if len(values) > 1 else None for name, values in gains.items()},
        "target_met": statistics.fmean(gains["teacher-labelled-tiny"]) >= GAIN_TARGET_PT,
    }


def to_markdown(report: dict) -> str:
    """The table for docs/pretrained.md."""
    lines = [("| seed | teacher (lite0) fp32 | its category right on the extra pictures | tiny int8 "
              "| + extra, teacher-labelled, distilled | + extra, true tags |"),
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for row in report["rows"]:
        gain = {name: 100 * (row[name] - row["tiny"]) for name in STUDENTS}
        lines.append(f"| {row['seed']} | {100 * row[LITE0]:.1f}% | {100 * row['teacher_right_on_extra']:.1f}% "
                     f"| {100 * row['tiny']:.1f}% "
                     + " ".join(f"| {100 * row[name]:.1f}% ({gain[name]:+.1f})" for name in STUDENTS) + " |")
    means = [f"{name} {report['mean_gain_pt'][name]:+.1f} pt"
             + ("" if report["sd_gain_pt"][name] is None else f" ± {report['sd_gain_pt'][name]:.1f}")
             for name in STUDENTS]
    verdict = "met" if report["target_met"] else "not met"
    lines += ["", (f"{report['extra_pictures']} extra pictures; mean gain over tiny: {'; '.join(means)}; "
                   f"target +{GAIN_TARGET_PT:g} pt for the distilled student: {verdict}")]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fuselite.bench.suite transfer",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, required=True,
                        help="manifests, runs, bundles, transfer.json (the seeds suite's folder shares its runs)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1], help="seeds (default 1)")
    return parser


if __name__ == "__main__":
    sys.exit(main())
