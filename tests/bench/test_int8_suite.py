"""The int8-agreement suite: how it counts agreement and near ties, and a real run taken apart."""

from __future__ import annotations

import numpy as np
import pytest

from fuselite.bench.int8_suite import (
    OUTPUT_STEP,
    compare,
    main,
    margins,
    measure,
    on_output_grid,
    to_markdown,
)

LABELS = np.eye(3, dtype=np.float32)  # label i scores the embedding's i-th component


def probabilities(embeddings):
    return 1 / (1 + np.exp(-10 * embeddings @ LABELS.T))


def test_agreement_counts_top_labels_and_sets_near_ties_apart():
    reference = np.array([[0.9, 0.1, 0.0],      # clear: label 0
                          [0.50, 0.49, 0.0],    # near tie between 0 and 1
                          [0.0, 0.2, 0.8]])     # clear: label 2
    moved = np.array([[0.9, 0.1, 0.0], [0.49, 0.50, 0.0], [0.0, 0.9, 0.1]])
    row = compare("int8", moved, reference, probabilities)
    assert row.agreement == pytest.approx(1 / 3)
    assert row.differing == 2
    # the near tie does not count where float's margin is clear: 1 of the 2 clear pictures
    assert margins(probabilities(reference))[1] < 0.05
    assert row.clear_agreement == pytest.approx(0.5)
    assert row.cosine_min < row.cosine_median <= 1.0


def test_the_output_grid_is_int8s_fixed_steps_and_range():
    embedding = np.array([[0.3, -0.5, 1.2, -2.0]])
    rounded = on_output_grid(embedding)
    assert np.allclose(rounded, [[38 / 128, -64 / 128, 127 / 128, -1.0]])
    assert np.abs(rounded - np.clip(embedding, -1, 127 / 128)).max() <= OUTPUT_STEP / 2


def test_the_table_gives_the_int8_verdict():
    reference = np.eye(3, dtype=np.float32)
    rows = [compare("fp16", reference, reference, probabilities, 1.5),
            compare("int8", reference[[0, 1, 1]], reference, probabilities, 0.8)]
    table = to_markdown(rows, 3)
    assert "| fp16 | 100.0% | 100.0% | 0 of 3 | 1.0000 (1.0000) | 1.50 |" in table
    assert "| int8 | 66.7% |" in table
    assert table.endswith("int8 agrees with float on 66.7% of pictures; target 99%: not met")


def test_a_missing_run_is_one_line(tmp_path, capsys):
    assert main([str(tmp_path / "nope"), "--data", str(tmp_path / "test.jsonl")]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("error:") and "nope" in out[0]


@pytest.mark.slow
def test_a_trained_run_taken_apart_fp16_is_near_exact_and_int8_is_measured(tiny_run, tmp_path):
    from fuselite.bench.data import load_eval_data
    from fuselite.train.run import load_run

    run = load_run(tiny_run)
    images = load_eval_data(tiny_run, image_size=run.config.image_size).images[:60]
    stats = tmp_path / "layers.csv"
    rows = {row.name: row for row in measure(run, images, list(run.labels), keep_float=("Relu6,no-such-layer",),
                                             layer_stats=stats)}
    names = list(rows)
    assert names[:4] == ["int8 output grid", "fp16", "int8 weights, float activations", "int8"]
    assert rows["fp16"].agreement >= 0.95 and rows["fp16"].cosine_min > 0.999
    assert rows["int8 weights, float activations"].cosine_median > 0.99
    assert 0.5 < rows["int8"].agreement <= 1.0 and rows["int8"].ms_per_image > 0
    assert rows["int8 output grid"].ms_per_image is None
    # the layer kept in float is found by its tensor name, and that model runs
    assert names[4].startswith("int8, ") and "in float" in names[4] and not names[4].startswith("int8, 0 ")
    assert rows[names[4]].cosine_median > 0.95
    assert "mean_squared_error" in stats.read_text().splitlines()[0]
