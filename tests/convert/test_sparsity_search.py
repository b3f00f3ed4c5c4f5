"""The accuracy budget drives pruning and clustering (issue 31): sparsity is searched from
high to low, cluster counts from few to many.

Without ``--sparsity`` a pruned variant is tried at 0.9, 0.8, ... and the first whose
bundle loses no more than ``--max-loss`` on the validation split is written (the test
split never chooses, so its figure stays unbiased); the manifest and
``convert-report.json`` record the choice and every candidate tried.  The fine-tuning
schedule scales with the training split, between a floor and a cap.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from fuselite.bundle import read_bundle
from fuselite.cli import main
from fuselite.convert.compress import (
    MAX_FINETUNE_STEPS,
    MIN_FINETUNE_STEPS,
    finetune_steps,
    search_compression,
)
from fuselite.convert.export import ConvertOptions, next_step
from fuselite.convert.variants import CLUSTER_CANDIDATES, SPARSITY_CANDIDATES, get_variant

pytestmark = pytest.mark.filterwarnings("ignore:distutils Version classes are deprecated:DeprecationWarning")


def _losses(table: dict, budget: float = 1.0, calls: list | None = None):
    """An attempt over a table of sparsity -> points lost (None: the converter failed)."""
    def attempt(sparsity):
        (calls if calls is not None else []).append(sparsity)
        loss = table[sparsity]
        if loss is None:
            return False, None, "the TFLite converter failed", False, f"failed at {sparsity}"
        return loss <= budget, loss, f"lost {loss} pt", loss > budget, f"model at {sparsity}"
    return attempt


def test_the_search_keeps_the_highest_sparsity_within_the_budget_and_records_each_try():
    calls: list = []
    search = search_compression(SPARSITY_CANDIDATES, _losses({0.9: 3.1, 0.8: 1.4, 0.7: 0.6, 0.6: 0.2, 0.5: 0.1},
                                                         calls=calls))
    assert search.chosen == 0.7 and search.outcome == "model at 0.7"
    assert calls == [0.9, 0.8, 0.7]  # stops at the first within the budget: lower ones cost time and zeros
    record = search.record()
    assert record["chosen"] == 0.7 and record["pinned"] is False and record["judged_on"] == "validation"
    assert [(c["sparsity"], c["passed"], c["loss_pt"]) for c in record["candidates"]] == [
        (0.9, False, 3.1), (0.8, False, 1.4), (0.7, True, 0.6)]


def test_a_search_where_no_sparsity_fits_ends_at_the_lowest_and_chooses_none():
    search = search_compression((0.9, 0.8), _losses({0.9: 4.0, 0.8: 2.0}))
    assert search.chosen is None and search.outcome == "model at 0.8" and len(search.tried) == 2


def test_a_failure_a_lower_sparsity_cannot_cure_stops_the_search():
    calls: list = []
    search = search_compression(SPARSITY_CANDIDATES, _losses({0.9: None, 0.8: 0.1}, calls=calls))
    assert calls == [0.9] and search.chosen is None and search.outcome == "failed at 0.9"


def test_candidates_come_from_the_table_or_the_pinned_sparsity():
    assert get_variant("pruned-int8").sparsity_candidates() == (0.9, 0.8, 0.7, 0.6, 0.5)
    assert get_variant("pruned-int8").sparsity_candidates(0.75) == (0.75,)
    assert get_variant("pruned-fp32").sparsity_candidates() == (0.9, 0.8)  # sparse inference needs >= 2/3 zeros
    assert get_variant("int8").sparsity_candidates() == ()


def test_cluster_counts_are_tried_fewest_first_or_pinned():
    assert get_variant("clustered-int8").cluster_candidates() == CLUSTER_CANDIDATES == (8, 16, 32)
    assert get_variant("clustered-int8").cluster_candidates(64) == (64,)
    assert get_variant("pruned-int8").cluster_candidates() == ()
    assert get_variant("clustered-int8").search_knob == "clusters"
    assert get_variant("pruned-int8").search_knob == "sparsity" and get_variant("int8").search_knob is None


def test_a_cluster_search_keeps_the_fewest_clusters_within_the_budget_under_its_own_name():
    calls: list = []
    search = search_compression(CLUSTER_CANDIDATES, _losses({8: 2.4, 16: 0.8, 32: 0.1}, calls=calls),
                                knob="clusters")
    assert search.chosen == 16 and calls == [8, 16]
    assert [(c["clusters"], c["passed"]) for c in search.record()["candidates"]] == [(8, False), (16, True)]


def test_a_refused_cluster_search_names_how_far_it_went_and_the_next_step():
    assert next_step(get_variant("clustered-int8"), ConvertOptions()) == (
        "the search went up to 32 clusters; try --clusters 64 or more --finetune-steps, or --variants qat-int8")
    assert next_step(get_variant("clustered-int8"), ConvertOptions(clusters=16)).startswith("try --clusters 32")


def test_a_cluster_count_outside_2_to_256_is_one_clear_error():
    from fuselite.errors import UserError

    with pytest.raises(UserError, match="--clusters 1 must be 2 to 256"):
        ConvertOptions(clusters=1)


def test_the_sparse_float_variant_is_not_a_default_and_is_pruned_float32():
    variant = get_variant("pruned-fp32")
    assert variant.sparse_inference and variant.quantization == "none" and not variant.default


def test_a_refused_search_names_how_low_it_went_and_the_next_step():
    assert next_step(get_variant("pruned-int8"), ConvertOptions()) == (
        "the search went down to 0.5; try --sparsity 0.3 or more --finetune-steps")
    assert "--variants pruned-int8" in next_step(get_variant("pruned-fp32"), ConvertOptions())
    assert next_step(get_variant("pruned-int8"), ConvertOptions(sparsity=0.9)).startswith("try --sparsity 0.65")


def test_fine_tuning_scales_with_the_training_split_between_a_floor_and_a_cap():
    assert finetune_steps(4_000, 64) == MIN_FINETUNE_STEPS == 500  # the scenes: the floor
    assert finetune_steps(20_000, 64) == round(7 * 20_000 / 64)  # proportional in between
    assert finetune_steps(57_000, 128) == round(7 * 57_000 / 128)  # Fashion-MNIST: ~7 epochs
    assert finetune_steps(1_000_000, 64) == MAX_FINETUNE_STEPS == 4000  # bounds a five-candidate search


# --- on the tiny trained run ------------------------------------------------------------


@pytest.mark.slow
def test_an_unpinned_pruned_variant_is_written_at_the_searched_sparsity_with_its_record(tiny_converter,
                                                                                        monkeypatch):
    # A 100-point budget takes the first candidate: 0.9, tried once.
    monkeypatch.setattr(tiny_converter, "options", replace(tiny_converter.options, sparsity=None, max_loss=100.0))
    result = tiny_converter.convert(replace(get_variant("pruned-int8"), name="pruned-searched"))
    assert result.status == "ok", result.message
    manifest = read_bundle(result.path).manifest
    record = manifest.numerics["sparsity_search"]
    assert record["chosen"] == 0.9 and [c["sparsity"] for c in record["candidates"]] == [0.9]
    # each candidate's loss is the one judged, on the validation split (not the test figure)
    judged = manifest.numerics["judged"]
    assert record["judged_on"] == judged["split"] == "validation"
    assert record["candidates"][0]["loss_pt"] == pytest.approx(-judged["delta_pt"], abs=1e-3)
    compression = manifest.provenance["compression"]
    assert compression["target_sparsity"] == 0.9 and compression["search"] == record


@pytest.mark.slow
def test_the_cli_reports_the_search_in_convert_report_json(tiny_run, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["convert", str(tiny_run), "--out", str(out), "--variants", "pruned-fp32", "--max-loss", "100",
                 "--finetune-steps", "20", "--quiet"])
    capsys.readouterr()
    assert code == 0
    (variant,) = json.loads((out / "convert-report.json").read_text())["variants"]
    assert variant["status"] == "ok" and variant["numerics"]["sparsity_search"]["chosen"] == 0.9
    # kept sparse in the file: DENSIFY ops feed the pruned 1x1 kernels
    assert any(op.startswith("DENSIFY") for op in variant["ops"])
    # and the sparsity column counts the zeros the sparse storage left out (it read 0%)
    assert variant["sparsity"] > 0.5


def test_a_candidate_that_gains_accuracy_is_described_as_a_gain():
    from fuselite.convert.export import _loss_text

    assert _loss_text(-0.094) == "gained 0.09 pt" and _loss_text(0.31) == "lost 0.31 pt"
    assert _loss_text(None) == "no task metric"


def test_the_search_records_the_split_it_judged_on():
    search = search_compression((0.9, 0.8), _losses({0.9: 2.0, 0.8: 0.5}), judged_on="test")
    assert search.chosen == 0.8 and search.record()["judged_on"] == "test"
