"""A pooled (global) tower's bundles carry its class activation map as a second output,
and the runtime turns it into heatmaps that point at the objects: in every variant (fp32,
int8, the mirror-averaged int8 whose map is flipped back in the graph, the
quantization-aware int8) and for ``avgmax`` pooling too."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from fuselite.bundle import read_bundle
from fuselite.flatbuffer import builtin_name, read_graph
from fuselite.maps import cell_of, pointing_game_of_heatmaps

pytestmark = pytest.mark.slow

AVG_VARIANTS = ("fp32", "int8", "int8-mirror", "qat-int8")
AVGMAX_VARIANTS = ("fp32", "int8")
# (tower, variant) pairs: the tower's pooling and the bundle made of it.
BUNDLES = [("avg", name) for name in AVG_VARIANTS] + [("avgmax", name) for name in AVGMAX_VARIANTS]
# QAT fine-tuning steps: enough to train through the fake quantizers, far from recovering
# every point of accuracy (the shared tests' converter uses as many).
QAT_STEPS = 40


def _pooled_run_and_bundles(tmp_path_factory, pooling: str, variants) -> dict:
    """A few epochs of ``scenes-tiny`` with global scoring and ``pooling``, its run directory
    and the bundles of ``variants`` (variant name -> path)."""
    from fuselite.convert.export import Converter, ConvertOptions
    from fuselite.convert.variants import get_variant
    from fuselite.train.configs import get_config
    from fuselite.train.trainer import train

    run_dir = tmp_path_factory.mktemp(f"global-{pooling}-run") / "run"
    train(
        get_config("scenes-tiny").with_overrides(scoring="global", pooling=pooling, epochs=5),
        run_dir,
    )
    options = ConvertOptions(
        max_loss=5.0, eval_samples=60, calibration_samples=60, finetune_steps=QAT_STEPS
    )
    converter = Converter.load(
        run_dir, tmp_path_factory.mktemp(f"global-{pooling}-bundles"), options
    )
    results = {name: converter.convert(get_variant(name)) for name in variants}
    assert all(r.status == "ok" for r in results.values()), {
        n: r.message for n, r in results.items()
    }
    return {"run": run_dir, **{name: r.path for name, r in results.items()}}


@pytest.fixture(scope="module")
def global_bundles(tmp_path_factory) -> dict:
    """Bundles of every :data:`AVG_VARIANTS` of a global ``scenes-tiny`` run, and its run."""
    return _pooled_run_and_bundles(tmp_path_factory, "avg", AVG_VARIANTS)


@pytest.fixture(scope="module")
def avgmax_bundles(tmp_path_factory) -> dict:
    """The same with ``avgmax`` pooling (average and maximum concatenated): :data:`AVGMAX_VARIANTS`."""
    return _pooled_run_and_bundles(tmp_path_factory, "avgmax", AVGMAX_VARIANTS)


@pytest.fixture
def pooled(request, global_bundles) -> dict:
    """The run and bundles of the parametrized tower (``"avg"`` or ``"avgmax"``)."""
    return global_bundles if request.param == "avg" else request.getfixturevalue("avgmax_bundles")


def _explained(path, images):
    from fuselite.runtime import Annotator, AnnotatorOptions

    with Annotator.create(AnnotatorOptions(path, num_threads=1)) as annotator:
        assert annotator.map_grid == (8, 8)
        return list(annotator.labels), [
            annotator.explain(image[..., ::-1].copy()) for image in images
        ]


@pytest.mark.parametrize(("pooled", "name"), BUNDLES, indirect=["pooled"])
def test_a_global_bundle_names_its_class_activation_map(pooled, name):
    from ai_edge_litert.interpreter import Interpreter

    bundle = read_bundle(pooled[name])
    maps = bundle.manifest.label_maps
    assert maps.source == "cam" and maps.grid == (8, 8)
    outputs = Interpreter(model_content=bundle.model_bytes).get_output_details()
    assert sorted(len(o["shape"]) for o in outputs) == [2, 3]
    label_map = next(o for o in outputs if len(o["shape"]) == 3)
    if name == "fp32":
        assert maps.output_quant is None
    else:  # the int8 map's own scale and zero point are the ones the model has
        assert maps.output_quant == pytest.approx(label_map["quantization"])
    # The embedding and the map read the projection's kernel from one buffer (a QAT tower's
    # two int8 copies of it are stored once), so the map adds no weights to the file.
    graph = read_graph(bundle.model_bytes)
    main = graph.subgraphs[0]
    kernels = [
        main.buffers[op.inputs[1]]
        for op in main.operators
        if builtin_name(graph.opcodes[op.opcode].code) == "FULLY_CONNECTED"
    ]
    assert len(kernels) == 2 and len(set(kernels)) == 1, kernels
    # Every supported runtime loads its ops at their versions, tflite-runtime 2.14 included.
    runtimes = bundle.manifest.provenance["runtimes"]
    assert "tflite-runtime-2.14" in runtimes and all(runtimes.values()), runtimes


@pytest.mark.parametrize(("pooled", "name"), BUNDLES, indirect=["pooled"])
def test_global_maps_point_at_the_objects_and_average_to_the_score(pooled, name):
    from fuselite.bench.data import run_test_split

    test = run_test_split(pooled["run"])
    labels, explained = _explained(pooled[name], test.images)
    peaks = np.zeros((len(explained), len(labels), 8, 8))  # the runtime's peaks, found on logits
    for i, categories in enumerate(explained):
        for j, category in enumerate(categories):
            peaks[i, j][cell_of(category.peak, (8, 8))] = 1.0
    game = pointing_game_of_heatmaps(peaks, labels, test.objects)
    assert game["pairs"] > 500
    assert game["pointing_game"] >= game["pointing_chance"] + 0.2
    metrics = json.loads((pooled["run"] / "metrics.json").read_text())  # training's own figure
    assert metrics["pointing_game"] >= metrics["pointing_game_chance"] + 0.2
    # The frame's logit is the mean of the cells' logits (a class activation map is exact);
    # int8 rounds the embedding output to steps of its scale, which moves a logit by at most
    # logit_scale * scale / 2 * sqrt(D) (the map's own rounding averages out over the cells).
    # The mirror's map averages the two views' projections, its embedding their directions:
    # equal for views whose projections are equally long (within 0.016 logit in float here).
    # A QAT tower's pooled projection is clipped to the range its fake quantizer learnt (about
    # +-6 after these 40 steps, where the cells' mean reaches 10), which no per-cell map can
    # follow: there the identity holds on most pairs (91.5% in one run), not all.
    manifest = read_bundle(pooled[name]).manifest
    quant = manifest.preprocessing.output_quant
    tolerance = (
        1e-3
        if quant is None
        else manifest.logit_scale * quant[0] / 2 * np.sqrt(manifest.embedding_dim)
    )
    gaps = []
    for categories in explained[:20]:
        for category in categories:
            cells, frame = category.heatmap.astype(np.float64), category.raw_score
            if min(cells.min(), frame) < 1e-5 or max(cells.max(), frame) > 1 - 1e-5:
                continue  # float32 sigmoids this close to 0 or 1 no longer carry their logit
            gaps.append(abs(np.log(cells / (1 - cells)).mean() - np.log(frame / (1 - frame))))
    assert len(gaps) > 50
    within = np.mean(np.asarray(gaps) <= tolerance)
    assert within >= (0.8 if name == "qat-int8" else 1.0), (within, max(gaps), tolerance)


def test_the_mirror_bundles_map_is_in_the_frames_coordinates(global_bundles):
    """A mirrored frame's map is the frame's map mirrored: the mirror view's map was flipped
    back before the two were averaged (without the flip both frames would get one map)."""
    from fuselite.bench.data import run_test_split

    images = run_test_split(global_bundles["run"]).images[:20]
    _, plain = _explained(global_bundles["int8-mirror"], images)
    _, mirrored = _explained(global_bundles["int8-mirror"], images[:, :, ::-1])
    lopsided = 0
    for frame, flipped in zip(plain, mirrored):
        for a, b in zip(frame, flipped):
            assert b.heatmap == pytest.approx(a.heatmap[:, ::-1], abs=1e-6)
            assert b.peak[0] == pytest.approx(1 - a.peak[0]) or a.heatmap[
                :, ::-1
            ].max() == pytest.approx(
                a.heatmap.max()
            )  # a tie between a cell and its mirror may pick either
            lopsided += not np.allclose(a.heatmap, a.heatmap[:, ::-1], atol=1e-3)
    assert lopsided > 20  # maps that are not symmetric themselves, so the flip is seen


@pytest.mark.parametrize("name", ["int8-mirror", "qat-int8"])
def test_run_events_of_mirror_and_qat_bundles_carry_a_point_and_box(global_bundles, name, tmp_path):
    """``fuselite run`` on scenes: each reported label has its peak inside its box, in the frame."""
    from fuselite.bench.data import run_test_split

    folder = tmp_path / "scenes"
    folder.mkdir()
    for i, image in enumerate(run_test_split(global_bundles["run"]).images[:8]):
        cv2.imwrite(str(folder / f"{i}.png"), cv2.resize(image[..., ::-1], (192, 128)))
    jsonl = tmp_path / "events.jsonl"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "fuselite.cli",
            "run",
            "--bundle",
            str(global_bundles[name]),
            "--source",
            str(folder),
            "--jsonl",
            str(jsonl),
            "--threads",
            "1",
            "--display",
            "off",
            "--stats-interval",
            "0",
            "--threshold",
            "0.2",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    entries = [e for r in records if r.get("type") == "annotation" for e in r["labels"]]
    assert len(entries) >= 8
    for entry in entries:
        (x, y), (x0, y0, x1, y1) = entry["point"], entry["box"]
        assert 0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0
        assert x0 <= x <= x1 and y0 <= y <= y1


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
    assert {row.name for row in report.rows} >= set(AVG_VARIANTS)
    for row in report.rows:
        assert row.status == "ok", row.message
        assert row.metrics["pointing_game"] >= row.metrics["pointing_chance"] + 0.2
