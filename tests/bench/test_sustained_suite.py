"""The sustained-FPS check: bench's child against a loop written without fuselite."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from fuselite.bench import sustained_suite
from fuselite.bench.sustained_suite import INDEPENDENT_SCRIPT
from fuselite.bundle import read_bundle


def test_both_loops_run_the_bundle_and_the_report_says_the_ratio(colour_bundles, tmp_path, capsys):
    report = tmp_path / "sustained.json"
    code = sustained_suite.main(["--bundle", str(colour_bundles["int8"]), "--rounds", "1", "--seconds", "0.3",
                                 "--load", "none", "--json", str(report)])
    found = json.loads(report.read_text())
    case = found["cases"][0]
    bench, independent = case["rounds"][0]["bench"], case["rounds"][0]["independent"]
    assert bench["fps"] > 50 and independent["fps"] > 50 and bench["cpu_ms"] > 0
    assert case["median"]["ratio"] == bench["fps"] / independent["fps"]
    assert code == (0 if abs(case["median"]["ratio"] - 1) <= 0.15 else 1)
    table = capsys.readouterr().out
    assert "| bench sustained FPS | independent FPS | bench / independent |" in table


@pytest.mark.parametrize("bundles", ["colour_bundles", "regional_colour_bundles"])
def test_the_independent_loop_does_the_real_work(bundles, request, tmp_path):
    # Its FPS is only a yardstick if it reads frames as the runtime does (BGR in, the
    # bundle's size and colour order) and scores the bundle's labels, pooled or per cell.
    bundle = request.getfixturevalue(bundles)["int8"]
    frames = np.zeros((2, 480, 640, 3), np.uint8)
    frames[0, ..., 2] = 255  # BGR: red
    frames[1, ..., 0] = 255  # blue
    path = tmp_path / "frames.npy"
    np.save(path, frames)
    probe = INDEPENDENT_SCRIPT.replace(
        "for frame in frames[:3]:", "print(json.dumps([one(f).tolist() for f in frames]))\nfor frame in frames[:0]:")
    out = subprocess.run([sys.executable, "-c", probe, str(bundle), str(path), "1", "0.01"],
                         capture_output=True, text=True, check=True).stdout.splitlines()[0]
    scores = np.array(json.loads(out))
    labels = read_bundle(bundle).manifest.labels
    assert [labels[i] for i in scores.argmax(axis=1)] == ["red", "blue"]
