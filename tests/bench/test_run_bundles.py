"""Bench on bundles that `fuselite convert` made from a trained run (regional scoring).

The held-out data is the run's own test split, rebuilt without TensorFlow; the Keras
reference row must then repeat the run's ``metrics.json``.  Accuracy of a bundle is
recomputed from scores of a plain interpreter with hand-written preprocessing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from support.bundles import hand_scores

from fuselite import metrics as m
from fuselite.bench.data import run_test_split
from fuselite.bench.runner import run_bench

pytestmark = pytest.mark.slow
VARIANTS = ("fp32",)  # int8 regional scoring is covered on the colour bundles


@pytest.fixture(scope="module")
def run_bundles(tiny_converter, tmp_path_factory):
    """fp32 and int8 bundles of ``tiny_run`` (reusing the shared converter's files if present)."""
    from fuselite.convert.variants import get_variant

    folder = tmp_path_factory.mktemp("run-bundles")
    for name in VARIANTS:
        variant = get_variant(name)
        path = tiny_converter.out_dir / variant.filename
        if not path.is_file():
            assert tiny_converter.convert(variant).status == "ok"
        shutil.copy(path, folder / variant.filename)
    return folder


@pytest.fixture(scope="module")
def run_report(run_bundles, tmp_path_factory):
    """The benchmark with no --data: the bundles' source run gives the data and the reference."""
    return run_bench(run_bundles, None, tmp_path_factory.mktemp("run-report"), threads=1, warmup=2, runs=10,
                     sustain_s=0.3)


def test_test_split_is_the_one_training_evaluated(tiny_run):
    from fuselite.train.run import load_run

    ours = run_test_split(tiny_run)
    theirs = load_run(tiny_run).load_data().test
    assert np.array_equal(ours.images, theirs.images)
    assert ours.tags == theirs.tags and ours.task == theirs.task


def test_keras_reference_repeats_metrics_json(run_report, tiny_run):
    recorded = json.loads((tiny_run / "metrics.json").read_text())
    reference = run_report.rows[0]
    assert (reference.kind, reference.status, reference.message) == ("reference", "ok", "")
    assert reference.metrics["mAP"] == pytest.approx(recorded["mAP"], abs=1e-6)
    assert reference.metrics["micro_f1"] == pytest.approx(recorded["micro_f1"], abs=1e-6)


@pytest.mark.parametrize("variant", VARIANTS)
def test_bundle_map_equals_recomputation_from_a_bare_interpreter(run_report, run_bundles, tiny_run, variant):
    data = run_test_split(tiny_run)
    scores, manifest = hand_scores(run_bundles / f"{variant}.tflite", data.images)
    assert scores.shape[0] == run_report.samples == len(data)
    targets = data.targets(manifest.labels)
    row = next(r for r in run_report.rows if r.name == variant)
    assert row.metrics["mAP"] == pytest.approx(m.mean_average_precision(scores, targets), abs=1e-6)
    assert row.metrics["micro_f1"] == pytest.approx(
        m.micro_f1(scores, targets, np.asarray(manifest.thresholds)), abs=1e-6)
    assert row.delta_pt == pytest.approx(100 * (row.metric - run_report.rows[0].metric))


def test_fuselite_run_serves_regional_bundles(run_report):
    assert [r.status for r in run_report.bundles] == ["ok"], [r.message for r in run_report.bundles]


def test_rebuilding_a_runs_test_split_needs_no_tensorflow(tiny_run):
    script = (
        "import sys\n"
        "from fuselite.bench.data import load_eval_data\n"
        f"data = load_eval_data({str(tiny_run)!r}, image_size=64)\n"
        "assert len(data) > 0 and data.run_dir is not None\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tf_keras', 'keras'))\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
