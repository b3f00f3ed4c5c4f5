"""The variant table and the parts of convert that need no TensorFlow."""

from __future__ import annotations

import pytest

from fuselite.cli import main
from fuselite.convert.report import VariantResult, results_table
from fuselite.convert.variants import (
    VARIANTS,
    default_variants,
    get_variant,
    list_variants,
    resolve_variants,
)
from fuselite.errors import UserError


def test_the_issue_variants_are_the_defaults_in_table_order():
    assert default_variants() == ["fp32", "fp16", "dynamic", "int8", "pruned-int8"]
    assert set(default_variants()) < set(list_variants())


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_variant_has_a_file_name_and_sane_tolerances(name):
    variant = get_variant(name)
    assert variant.filename == f"{name}.tflite"
    assert 0.5 <= variant.min_agreement <= 1.0
    assert 0.0 < variant.max_score_error <= 0.5
    assert variant.calibrated == (variant.quantization == "int8")


def test_resolve_variants_takes_names_comma_lists_default_and_all():
    assert [v.name for v in resolve_variants(["int8,fp32", "fp32"])] == ["fp32", "int8"]
    assert [v.name for v in resolve_variants(None)] == default_variants()
    assert [v.name for v in resolve_variants(["all"])] == list_variants()


def test_an_unknown_variant_is_refused_listing_the_known_ones():
    with pytest.raises(UserError, match="known: fp32, fp16"):
        resolve_variants(["int4"])


def test_cli_refuses_an_unknown_variant_with_one_line_and_exit_2(capsys, tmp_path):
    assert main(["convert", str(tmp_path), "--out", str(tmp_path / "o"), "--variants", "int4"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown variant 'int4'" in err


def test_cli_needs_a_run_and_an_output_folder(capsys):
    assert main(["convert"]) == 2
    assert "RUN_DIR and --out" in capsys.readouterr().err


def test_results_table_shows_every_variant_and_why_one_was_not_written():
    results = [
        VariantResult("fp32", "ok", file_size=464_800, gzip_size=433_000, model_size=353_400,
                      model_gzip_size=322_000, numerics={"top1_agreement": 1.0, "max_score_error": 1e-6,
                                                         "task_metric_name": "mAP", "task_metric": 0.98,
                                                         "delta_pt": 0.0},
                      runtimes={"ai-edge-litert": True, "tflite-runtime-2.14": True}),
        VariantResult("dynamic", "refused", "FULLY_CONNECTED v12 needs a newer runtime", model_size=118_700,
                      runtimes={"ai-edge-litert": True, "tflite-runtime-2.14": False}),
        VariantResult("int8", "failed", "the TFLite converter failed: boom"),
    ]
    table = results_table(results)
    assert "464.8 kB" in table and "mAP 98.00 (+0.00)" in table
    assert "dynamic: FULLY_CONNECTED v12" in table
    assert "int8: the TFLite converter failed: boom" in table


def test_benchmark_checks_the_issue_targets_against_measured_rows():
    from fuselite.bench.convert_suite import markdown, rows, targets

    def result(name, model, gz, metric):
        return VariantResult(name, "ok", file_size=model + 100, gzip_size=gz + 90, model_size=model,
                             model_gzip_size=gz, numerics={"task_metric_name": "mAP", "task_metric": metric,
                                                           "delta_pt": 100 * (metric - 0.98)})

    table = rows([result("fp32", 1000, 900, 0.98), result("int8", 260, 200, 0.978),
                  result("pruned-int8", 260, 130, 0.975)], latencies={"fp32": 0.1})
    checks = targets(table, seconds=150)
    assert [met for *_, met in checks] == [True, True, False, True, True]
    assert checks[2][1] == "0.650 x"
    text = markdown(table, checks, {"run_dir": "r", "run_config": "c", "date": "d", "nproc": 2, "cpu": "x",
                                    "load_average": [1, 1, 1], "seconds": 150, "threads": 2})
    assert "| pruned-int8 gzip <= 0.6 x int8 gzip | 0.650 x | **no** |" in text


def test_scorer_logits_are_what_the_shared_bundle_scorer_applies_the_sigmoid_to():
    import numpy as np

    from fuselite.scoring import Scorer

    rng = np.random.default_rng(0)
    scorer = Scorer(logit_scale=12.0, logit_bias=-4.0)
    labels = rng.normal(size=(5, 8)).astype(np.float32)
    for images in (rng.normal(size=(3, 8)), rng.normal(size=(3, 16, 8))):  # global, regional
        probabilities = scorer(images.astype(np.float32), labels)
        assert probabilities.shape == (3, 5)
        assert np.allclose(1 / (1 + np.exp(-scorer.logits(images, labels))), probabilities, atol=1e-6)


def test_pruned_variants_fine_tune_about_seven_epochs_of_large_datasets():
    from fuselite.convert.export import auto_finetune_steps

    assert auto_finetune_steps(4_000, 64) == 500  # synthetic scenes: the floor
    assert 3_000 <= auto_finetune_steps(57_000, 128) <= 3_300  # Fashion-MNIST: ~7 epochs
