"""The benchmark script runs end to end (tiny settings; real figures come from running it)."""

from __future__ import annotations

import json

from fuselite.runtime import benchmark


def test_benchmark_prints_every_figure_with_its_target(
    int8_bundle, red_blue_clip, tmp_path, capsys
):
    figures_path = tmp_path / "figures.json"
    code = benchmark.main(
        [
            "--bundle",
            str(int8_bundle),
            "--video",
            str(red_blue_clip),
            "--frames",
            "30",
            "--rounds",
            "1",
            "--seconds",
            "0.1",
            "--memory-frames",
            "300",
            "--json",
            str(figures_path),
        ]
    )
    table = capsys.readouterr().out
    figures = json.loads(figures_path.read_text())
    assert code in (0, 1)
    assert figures["errors"] == {}
    for key in (
        "invoke_fps",
        "sequential_fps",
        "e2e_fps",
        "e2e_vs_invoke",
        "e2e_vs_sequential",
        "cold_start_s",
        "peak_rss_mb",
        "rss_growth_mb",
    ):
        assert figures[key] > 0 or key == "rss_growth_mb"
    assert figures["memory_frames"] == 300
    assert "| end-to-end / raw invoke |" in table and "≥ 0.95×" in table
    assert figures["machine"]["interpreter"] == "ai_edge_litert.interpreter"
