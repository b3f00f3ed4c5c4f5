"""A pooled (global) tower's bundles carry its class activation map as a second output,
and the runtime turns it into heatmaps that point at the objects, in fp32 and int8."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fuselite.bundle import read_bundle
from fuselite.maps import cell_of, pointing_game_of_heatmaps

pytestmark = pytest.mark.slow

VARIANTS = ("fp32", "int8")


@pytest.fixture(scope="module")
def global_bundles(tmp_path_factory) -> dict:
    """fp32 and int8 bundles of a few epochs of ``scenes-tiny`` with global scoring, and its run."""
    from fuselite.convert.export import Converter, ConvertOptions
    from fuselite.convert.variants import get_variant
    from fuselite.train.configs import get_config
    from fuselite.train.trainer import train

    run_dir = tmp_path_factory.mktemp("global-run") / "run"
    train(get_config("scenes-tiny").with_overrides(scoring="global", epochs=5), run_dir)
    options = ConvertOptions(max_loss=5.0, eval_samples=60, calibration_samples=60)
    converter = Converter.load(run_dir, tmp_path_factory.mktemp("global-bundles"), options)
    results = {name: converter.convert(get_variant(name)) for name in VARIANTS}
    assert all(r.status == "ok" for r in results.values()), {
        n: r.message for n, r in results.items()
    }
    return {"run": run_dir, **{name: r.path for name, r in results.items()}}


def _explained(path, images):
    from fuselite.runtime import Annotator, AnnotatorOptions

    with Annotator.create(AnnotatorOptions(path, num_threads=1)) as annotator:
        assert annotator.map_grid == (8, 8)
        return list(annotator.labels), [
            annotator.explain(image[..., ::-1].copy()) for image in images
        ]


@pytest.mark.parametrize("name", VARIANTS)
def test_a_global_bundle_names_its_class_activation_map(global_bundles, name):
    from ai_edge_litert.interpreter import Interpreter

    maps = read_bundle(global_bundles[name]).manifest.label_maps
    assert maps.source == "cam" and maps.grid == (8, 8)
    assert (maps.output_quant is not None) == (name == "int8")  # the int8 map's own scale is read
    outputs = Interpreter(
        model_content=read_bundle(global_bundles[name]).model_bytes
    ).get_output_details()
    assert sorted(len(o["shape"]) for o in outputs) == [2, 3]


@pytest.mark.parametrize("name", VARIANTS)
def test_global_maps_point_at_the_objects_and_average_to_the_score(global_bundles, name):
    from fuselite.bench.data import run_test_split

    test = run_test_split(global_bundles["run"])
    labels, explained = _explained(global_bundles[name], test.images)
    peaks = np.zeros((len(explained), len(labels), 8, 8))  # the runtime's peaks, found on logits
    for i, categories in enumerate(explained):
        for j, category in enumerate(categories):
            peaks[i, j][cell_of(category.peak, (8, 8))] = 1.0
    game = pointing_game_of_heatmaps(peaks, labels, test.objects)
    assert game["pairs"] > 500
    assert game["pointing_game"] >= game["pointing_chance"] + 0.2
    metrics = json.loads(
        (global_bundles["run"] / "metrics.json").read_text()
    )  # training's own figure
    assert metrics["pointing_game"] >= metrics["pointing_game_chance"] + 0.2
    # The frame's logit is the mean of the cells' logits (a class activation map is exact);
    # int8 rounds the embedding output to steps of its scale, which moves a logit by at most
    # logit_scale * scale / 2 * sqrt(D) (the map's own rounding averages out over the cells).
    manifest = read_bundle(global_bundles[name]).manifest
    quant = manifest.preprocessing.output_quant
    tolerance = (
        1e-3
        if quant is None
        else manifest.logit_scale * quant[0] / 2 * np.sqrt(manifest.embedding_dim)
    )
    checked = 0
    for categories in explained[:20]:
        for category in categories:
            cells, frame = category.heatmap.astype(np.float64), category.raw_score
            if min(cells.min(), frame) < 1e-5 or max(cells.max(), frame) > 1 - 1e-5:
                continue  # float32 sigmoids this close to 0 or 1 no longer carry their logit
            mean_cell_logit = np.log(cells / (1 - cells)).mean()
            assert mean_cell_logit == pytest.approx(np.log(frame / (1 - frame)), abs=tolerance)
            checked += 1
    assert checked > 50


def test_bench_gives_global_bundles_a_pointing_game(global_bundles):
    """``fuselite bench`` reads the class activation map in its measuring child too."""
    from fuselite.bench.runner import run_bench

    folder = global_bundles["fp32"].parent
    report = run_bench(
        folder,
        global_bundles["run"],
        None,
        threads=1,
        warmup=0,
        runs=2,
        sustain_s=0,
        reference=False,
    )
    for row in report.rows:
        assert row.status == "ok", row.message
        assert row.metrics["pointing_game"] >= row.metrics["pointing_chance"] + 0.2
