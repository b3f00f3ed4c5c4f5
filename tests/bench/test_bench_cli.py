"""``fuselite bench`` on the command line: exit codes for CI gates, the printed table, --device."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from support import REPO
from support.wheel import installed_env

from fuselite.cli import main

FAST = ["--runs", "5", "--warmup", "1", "--threads", "1", "--no-reference", "--sustain", "0.2"]


def _bench(bundles, data, out, *extra):
    return main(["bench", str(bundles), "--data", str(data), "--out", str(out), *FAST, *extra])


def test_min_accuracy_gate_exit_codes(good_bundles, colour_data, tmp_path, capsys):
    top1 = json.loads(_report_json(good_bundles, colour_data, tmp_path / "first"))["rows"][0]["metric"]
    capsys.readouterr()
    assert _bench(good_bundles, colour_data, tmp_path / "pass", "--min-accuracy", f"{top1 - 0.01:.4f}") == 0
    assert "passed" in capsys.readouterr().out
    assert _bench(good_bundles, colour_data, tmp_path / "fail", "--min-accuracy", f"{top1 + 0.01:.4f}") == 1
    assert "FAILED" in capsys.readouterr().out


def _report_json(bundles, data, out) -> str:
    assert _bench(bundles, data, out) == 0
    return (out / "report.json").read_text()


@pytest.mark.parametrize("extra", [["--min-accuracy", "91"], ["--device", "no-such-board"], ["--samples", "-1"],
                                   ["--frame-size", "640"], ["--frame-size", "8x8"]])
def test_user_mistakes_exit_2_with_one_line(good_bundles, colour_data, tmp_path, capsys, extra):
    assert _bench(good_bundles, colour_data, tmp_path / "out", *extra) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fuselite bench: error:") and "\n" not in err


def test_missing_bundle_folder_and_data_exit_2(colour_data, good_bundles, tmp_path, capsys):
    assert _bench(tmp_path / "nowhere", colour_data, tmp_path / "out") == 2
    assert _bench(good_bundles, tmp_path / "no-data", tmp_path / "out") == 2
    assert _bench(tmp_path, colour_data, tmp_path / "out") == 2  # a folder without bundles
    assert "no .tflite or .fuselite bundles" in capsys.readouterr().err


def test_prints_the_markdown_table_and_the_plot_path(good_bundles, colour_data, tmp_path, capsys):
    assert _bench(good_bundles, colour_data, tmp_path / "out") == 0
    out = capsys.readouterr().out
    assert out.startswith("|  | variant | file kB | gzip kB | model kB |")
    assert "| ✅ | fp32 |" in out and "| ✅ | int8 |" in out
    assert f"pareto.png: {tmp_path / 'out' / 'pareto.png'}" in out


def test_ops_the_device_cannot_load_make_a_check_failed_row(dynamic_bundle, colour_data, tmp_path, capsys):
    code = _bench(dynamic_bundle, colour_data, tmp_path / "out", "--device", "raspberry-pi-32bit")
    row = json.loads((tmp_path / "out" / "report.json").read_text())["rows"][0]
    assert (row["status"], row["fits"] is not None) == ("check_failed", True)
    assert "FULLY_CONNECTED v12" in row["message"] and "tflite-runtime 2.14" in row["message"]
    assert row["metrics"]["top1"] is not None  # it loaded here, so it was still measured
    assert code == 1  # no bundle passed its checks
    assert "| ❎ | dynamic |" in capsys.readouterr().out


def test_bench_without_reference_never_imports_tensorflow(good_bundles, colour_data, tmp_path):
    script = (
        "import sys\n"
        "from fuselite.cli import main\n"
        f"code = main(['bench', {str(good_bundles)!r}, '--data', {str(colour_data)!r}, '--out', "
        f"{str(tmp_path / 'out')!r}, '--runs', '2', '--warmup', '0', '--sustain', '0'])\n"
        "assert code == 0, code\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tf_keras', 'keras'))\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_bench_runs_from_the_repository_root_after_a_wheel_install(
    installed_wheel, good_bundles, colour_data, tmp_path
):
    # The measuring child process is `python -m fuselite.bench.measure`, which puts the
    # working folder first on sys.path: from the root, nothing there may shadow the package.
    python, site = installed_wheel
    done = subprocess.run(
        [python.parent / "fuselite", "bench", str(good_bundles), "--data", str(colour_data),
         "--out", str(tmp_path / "out"), *FAST],
        cwd=REPO, env=installed_env(site), capture_output=True, text=True, timeout=600, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads((tmp_path / "out" / "report.json").read_text())["rows"]
    assert rows and all(row["status"] == "ok" for row in rows), rows


@pytest.mark.parametrize("extra", [["--timeout", "0"], ["--sustain", "-1"]])
def test_bad_timeout_or_sustain_exit_2_with_one_line(good_bundles, colour_data, tmp_path, capsys, extra):
    assert _bench(good_bundles, colour_data, tmp_path / "out", *extra) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fuselite bench: error:") and "--timeout more than 0" in err and "\n" not in err
