"""`fuselite convert` judges variants by the task metric (issue 32 item 6) and shows progress (item 8).

The accuracy budget (``--max-loss``) decides whether a variant is written; the per-score
tolerance only warns, with its figures, in the log and in ``convert-report.json``.  A
refusal says what to try next.  The budget is judged on the run's validation split, so
the test figure reported beside it is an unbiased estimate (issue 31); the test split
judges only when validation gives no metric, and then says so.  Fine-tuning, calibration
and the accuracy check show a progress bar on stderr.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from fuselite.cli import main
from fuselite.convert import variants as variant_table
from fuselite.convert.export import ConvertOptions, judge, refusal_message, score_warning
from fuselite.convert.report import VariantResult, exit_code
from fuselite.convert.variants import explicit_names, get_variant

pytestmark = pytest.mark.filterwarnings("ignore:distutils Version classes are deprecated:DeprecationWarning")


def _checks(agreement: float, max_error: float, delta: float | None, test_delta: float | None = None,
            test_agreement: float | None = None) -> dict:
    """Checks whose validation (judged) figures are ``agreement`` and ``delta``; the test
    split's are the same unless given."""
    test_delta = delta if test_delta is None else test_delta
    return {"top1_agreement": agreement if test_agreement is None else test_agreement,
            "max_score_error": max_error, "delta_pt": test_delta, "task_metric_name": "mAP", "split": "test",
            "judged": {"split": "validation", "delta_pt": delta, "top1_agreement": agreement}}


# --- the rule, on the figures of issue 32 --------------------------------------------


def test_fp16_past_its_score_tolerance_with_an_unchanged_metric_passes_on_the_budget():
    verdict = judge(get_variant("fp16"), _checks(0.998, 0.0238, +0.02), max_loss=1.0)
    assert verdict["passed"] and verdict["passed_by"] == "accuracy budget"
    assert verdict["within_tolerance"] is False and verdict["gate"] == "accuracy budget"


def test_a_variant_within_its_score_tolerance_but_over_the_budget_is_refused():
    verdict = judge(get_variant("int8"), _checks(0.95, 0.12, -1.8), max_loss=1.0)
    assert verdict["within_tolerance"] is True and verdict["passed"] is False


def test_the_budget_judges_the_validation_loss_not_the_test_loss():
    # Over the budget on test but within it on validation: written (the test split never chooses).
    verdict = judge(get_variant("int8"), _checks(0.95, 0.12, -0.4, test_delta=-1.8), max_loss=1.0)
    assert verdict["passed"] is True and verdict["judged_on"] == "validation"
    # Within it on test but over it on validation: refused.
    assert judge(get_variant("int8"), _checks(0.95, 0.12, -1.8, test_delta=-0.4), max_loss=1.0)["passed"] is False
    # The broken-conversion floor is the validation agreement too.
    assert judge(get_variant("int8"), _checks(0.7, 0.12, -0.1, test_agreement=0.95), 1.0)["passed"] is False


def test_without_a_task_metric_the_score_check_stays_the_gate():
    assert judge(get_variant("fp16"), _checks(0.998, 0.0238, None), 1.0)["passed"] is False
    verdict = judge(get_variant("fp16"), _checks(0.999, 0.01, None), 1.0)
    assert verdict["passed"] and verdict["gate"] == "tolerance (no task metric on the validation split)"
    message = refusal_message(get_variant("fp16"), _checks(0.998, 0.0238, None), ConvertOptions())
    assert "no task metric, so the score check decides and --max-loss cannot accept it" in message


@pytest.mark.parametrize("name, step", [
    ("int8", "try --variants qat-int8, or --max-loss 1.9 to accept it"),
    ("pruned-int8", "try --sparsity 0.5 (now 0.75) or more --finetune-steps, or --max-loss 1.9 to accept it"),
    ("fp16", "try --variants fp32, or --max-loss 1.9 to accept it"),
    ("dynamic", "try --variants fp16 or qat-int8, or --max-loss 1.9 to accept it"),
])
def test_an_over_budget_refusal_names_the_loss_the_budget_and_the_next_step(name, step):
    message = refusal_message(get_variant(name), _checks(0.95, 0.12, -1.8034, test_delta=-2.5),
                              ConvertOptions(sparsity=0.75))
    assert message.startswith("lost 1.80 pt mAP on the validation split (budget 1.0; test: -2.50 pt; "
                              "top-label agreement 0.950, max score error 0.12)")
    assert message.endswith(step)


def test_a_broken_conversion_is_refused_whatever_its_metric_and_says_what_to_check():
    message = refusal_message(get_variant("int8"), _checks(0.66, 0.93, -0.2), ConvertOptions())
    assert judge(get_variant("int8"), _checks(0.66, 0.93, -0.2), 1.0)["passed"] is False
    assert message.startswith("broken conversion: its top label agrees with Keras on 66.0% of the validation "
                              "images")
    assert "--calibration-samples" in message and "qat-int8" in message


def test_a_calibrated_variant_written_on_the_budget_at_low_agreement_is_told_to_check_its_calibration():
    # The figures of a grey-calibrated int8 of the weak test model: 0.683 agreement on test,
    # validation within the budget (a CI run, 2026-12-06).
    checks = {**_checks(0.78, 0.745, -0.13, test_agreement=0.683), "max_loss_pt": 1.0}
    warning = score_warning(get_variant("int8"), checks)
    assert warning.startswith("score check exceeded: max score error 0.745 (tolerance 0.3), top-label "
                              "agreement 0.683 (min 0.85); written because mAP -0.13 pt on the validation split")
    assert warning.endswith("; check the calibration images (--calibration-samples)")
    # At healthy int8 agreement, or for a variant without calibration, there is nothing to check.
    healthy = {**_checks(0.96, 0.49, -0.2), "max_loss_pt": 1.0}
    assert "calibration" not in score_warning(get_variant("int8"), healthy)
    assert "calibration" not in score_warning(get_variant("fp16"), {**checks, "top1_agreement": 0.9})


# --- exit codes ------------------------------------------------------------------------


def _result(name: str, status: str) -> VariantResult:
    return VariantResult(name, status, "" if status == "ok" else "lost 2.00 pt mAP")


def test_a_default_variant_over_budget_does_not_fail_the_command_when_others_were_written():
    results = [_result("fp32", "ok"), _result("int8", "ok"), _result("pruned-int8", "failed")]
    assert exit_code(results, explicit_names(None)) == 0
    assert exit_code(results, explicit_names(["default"])) == 0


def test_a_variant_named_in_variants_that_fails_is_exit_1():
    results = [_result("fp32", "ok"), _result("pruned-int8", "failed")]
    assert exit_code(results, explicit_names(["fp32,pruned-int8"])) == 1
    assert exit_code(results, explicit_names(["default", "fp32"])) == 0


def test_nothing_written_is_exit_1_and_only_refusals_exit_2():
    assert exit_code([_result("int8", "failed"), _result("fp16", "refused")], set()) == 1
    assert exit_code([_result("dynamic", "refused")], set()) == 2
    assert exit_code([_result("fp32", "ok"), _result("dynamic", "refused")], {"dynamic"}) == 2


# --- the real conversion ------------------------------------------------------------------


def _strict_fp16(monkeypatch):
    """fp16 with a score tolerance no conversion meets (as 0.02 was for the issue's run)."""
    strict = replace(get_variant("fp16"), max_score_error=0.0)
    table = tuple(strict if v.name == "fp16" else v for v in variant_table._TABLE)
    monkeypatch.setattr(variant_table, "_TABLE", table)
    monkeypatch.setitem(variant_table.VARIANTS, "fp16", strict)


def test_cli_writes_a_variant_past_its_score_tolerance_within_budget_with_a_warning(
        tiny_run, tmp_path, capsys, caplog, monkeypatch):
    _strict_fp16(monkeypatch)
    out = tmp_path / "out"
    with caplog.at_level("WARNING"):
        code = main(["convert", str(tiny_run), "--out", str(out), "--variants", "fp16", "--quiet"])
    stdout = capsys.readouterr().out
    assert code == 0 and (out / "fp16.tflite").exists()
    warning = next(r for r in caplog.records if r.levelname == "WARNING" and "score check" in r.getMessage())
    assert "max score error" in warning.getMessage() and "top-label agreement" in warning.getMessage()
    assert "within the 1.0 pt budget" in warning.getMessage()
    assert "fp16: warning: score check exceeded: max score error" in stdout
    report = json.loads((out / "convert-report.json").read_text())["variants"][0]
    assert report["status"] == "ok" and report["numerics"]["within_tolerance"] is False
    assert report["numerics"]["passed_by"] == "accuracy budget"
    assert "(tolerance 0)" in report["warnings"][0]


def test_cli_refuses_a_named_variant_over_budget_with_the_next_step_and_exit_1(tiny_run, tmp_path, capsys):
    # The tiny run's tower pruned to 99% in 8 steps has almost no weights left: far over a 0.1 pt
    # budget whatever the fine-tune's noise (at 90% it lost 1.1-2.5 pt, and once within 0.1 pt).
    out = tmp_path / "out"
    code = main(["convert", str(tiny_run), "--out", str(out), "--variants", "fp32", "pruned-int8",
                 "--sparsity", "0.99", "--max-loss", "0.1", "--finetune-steps", "8", "--quiet"])
    stdout = capsys.readouterr().out
    assert code == 1
    assert (out / "fp32.tflite").exists() and not (out / "pruned-int8.tflite").exists()
    line = next(line for line in stdout.splitlines() if line.startswith("pruned-int8: "))
    assert "pt mAP on the validation split (budget 0.1; test: " in line and "try --sparsity 0.74 (now 0.99)" in line
    assert "to accept it" in line
    report = json.loads((out / "convert-report.json").read_text())
    assert [v["status"] for v in report["variants"]] == ["ok", "failed"]


def test_a_fine_tune_calibration_and_check_show_progress_on_stderr(tiny_converter, monkeypatch, capsys):
    monkeypatch.setattr(tiny_converter, "options", replace(tiny_converter.options, progress=True, finetune_steps=8))
    monkeypatch.setattr(tiny_converter, "_compressed", {})  # fine-tune afresh
    tiny_converter.convert(replace(get_variant("pruned-int8"), name="pruned-progress"))
    err = capsys.readouterr().err
    assert "pruning fine-tune" in err and "/8 " in err
    assert "pruned-progress: calibration" in err and "pruned-progress: accuracy check" in err


def test_quiet_shows_no_progress(tiny_converter, monkeypatch, capsys):
    monkeypatch.setattr(tiny_converter, "options", replace(tiny_converter.options, progress=False))
    tiny_converter.convert(replace(get_variant("int8"), name="int8-quiet"))
    assert "calibration" not in capsys.readouterr().err


# --- the split that judges (issue 31) -------------------------------------------------------


def _map_delta(bundle, encoder, images, targets) -> float:
    """Points of mAP the bundle loses against ``encoder`` on ``images``, computed apart from convert."""
    from fuselite import metrics as m
    from fuselite.convert.numerics import tflite_embeddings
    from fuselite.scoring import Scorer
    from fuselite.train.pipeline import embed_images

    scorer = Scorer(bundle.manifest.logit_scale, bundle.manifest.logit_bias)
    tflite = scorer(tflite_embeddings(bundle.model_bytes, images, num_threads=2), bundle.label_embeddings)
    keras = scorer(embed_images(encoder, images), bundle.label_embeddings)
    return 100 * (m.mean_average_precision(tflite, targets) - m.mean_average_precision(keras, targets))


def test_the_judged_loss_in_the_report_is_the_validation_loss_and_the_test_loss_is_reported_too(
        tiny_converter, tmp_path):
    from fuselite.bundle import read_bundle
    from fuselite.convert.report import results_table, write_report

    result = tiny_converter.convert(replace(get_variant("int8"), name="int8-judged"))
    assert result.status == "ok", result.message
    write_report(tmp_path, [result], {})
    (reported,) = json.loads((tmp_path / "convert-report.json").read_text())["variants"]
    numerics, judged = reported["numerics"], reported["numerics"]["judged"]
    run, data, bundle = tiny_converter.run, tiny_converter.data, read_bundle(result.path)
    val, test = data.val, data.test
    assert numerics["task_metric_name"] == "mAP" and numerics["judged_on"] == "validation"
    assert judged["split"] == "validation" and judged["samples"] == len(val) and judged["fallback"] is None
    assert judged["delta_pt"] == pytest.approx(
        _map_delta(bundle, run.image_encoder, val.images, val.multi_hot(run.labels)), abs=1e-6)
    # the test figure stays the one reported, beside the judged one
    assert numerics["split"] == "test" and numerics["delta_pt"] == pytest.approx(
        _map_delta(bundle, run.image_encoder, test.images, test.multi_hot(run.labels)), abs=1e-6)
    assert bundle.manifest.numerics["judged"] == judged
    assert f"; val {judged['delta_pt']:+.2f})" in results_table([result])


def test_without_validation_images_the_test_split_judges_and_says_so(tiny_converter, monkeypatch, caplog):
    from fuselite.bundle import read_bundle
    from fuselite.convert.report import results_table

    data = replace(tiny_converter.data, val=tiny_converter.data.val.subset([]))
    monkeypatch.setattr(tiny_converter, "data", data)
    with caplog.at_level("WARNING"):
        monkeypatch.setattr(tiny_converter, "judged_split", tiny_converter._judged_split())
    assert "accuracy budget judged on the test split: the run has no validation images" in caplog.text
    result = tiny_converter.convert(replace(get_variant("fp32"), name="fp32-test-judged"))
    assert result.status == "ok", result.message
    judged = read_bundle(result.path).manifest.numerics["judged"]
    assert judged["split"] == "test" and "no validation images" in judged["fallback"]
    assert judged["delta_pt"] == result.numerics["delta_pt"] and result.numerics["judged_on"] == "test"
    assert "warning: accuracy budget judged on the test split" in results_table([result])


def test_a_metric_that_moves_on_ties_with_the_same_scores_as_keras_is_not_a_loss():
    # The runtime suite's one-epoch board model: int8 scores within 3.8e-5 of Keras, every
    # top label the same, and mAP "lost" 1.68 pt on validation from reordered ties.
    verdict = judge(get_variant("int8"), _checks(1.0, 3.8e-5, -1.68), max_loss=1.0)
    assert verdict["passed"] and verdict["passed_by"] == "same scores as Keras"
    # Scores that really differ, or a fine-tuned variant compared with its own reference, stay refused.
    assert judge(get_variant("int8"), _checks(1.0, 0.02, -1.68), max_loss=1.0)["passed"] is False
    assert judge(get_variant("pruned-int8"), _checks(1.0, 3.8e-5, -1.68), max_loss=1.0)["passed"] is False
