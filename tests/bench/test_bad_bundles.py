"""One bad bundle costs one ❌ row, never the report (issue 36, item 12).

A folder holds the good fp32 colour bundle beside bundles that are bad in the ways an
independent attack found: two labels with the same text, a read error (EIO), a sparse
file far over the size limit, a model whose outputs are NaN and a model that hangs on
real frames (a WHILE loop that runs 0 times on zeros and ~10^9 times on a frame).  One
benchmark of that folder must give a ❌ row with its reason for each, and still measure
the good bundle.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from support.bundles import colour_manifest, repack, tensorflow, to_tflite

from fuselite.bench.runner import run_bench
from fuselite.bundle import MAX_BUNDLE_BYTES, read_bundle, write_bundle

TIMEOUT_S = 4.0  # the hanging bundle's budget here; the default is 120 s
SPARSE_BYTES = 1_500_000_000  # the size the issue saw: a sparse file, no disk used


def _nan_model_bytes() -> bytes:
    """A float model whose dense head is NaN: every output is NaN on every frame."""
    _, keras = tensorflow()
    inputs = keras.Input((32, 32, 3), batch_size=1, dtype="float32")
    head = keras.layers.Dense(8)
    model = keras.Model(inputs, head(keras.layers.GlobalAveragePooling2D()(inputs)))
    head.set_weights([np.full((3, 8), np.nan, np.float32), np.zeros(8, np.float32)])
    return to_tflite(model)


def _hanging_model_bytes() -> bytes:
    """A WHILE loop run ``mean(frame) * 2e9`` times: 0 on zeros (a load probe passes), a hang on frames."""
    tf, _ = tensorflow()

    @tf.function(input_signature=[tf.TensorSpec([1, 32, 32, 3], tf.float32)])
    def model(x):
        n = tf.cast(tf.reduce_mean(x) * 2e9, tf.int32)
        i = tf.while_loop(lambda i: i < n, lambda i: i + 1, [tf.constant(0)])[0]
        return tf.reduce_mean(x, axis=[1, 2])[:, :1] * 0.0 + tf.ones([1, 8]) + tf.cast(i, tf.float32) * 0.0

    converter = tf.lite.TFLiteConverter.from_concrete_functions([model.get_concrete_function()], model)
    return converter.convert()


def _bundle_from(source, path, model_bytes, variant):
    bundle = read_bundle(source)
    return write_bundle(path, model_bytes=model_bytes, manifest=colour_manifest(variant, model_bytes, task="single"),
                        tokenizer=bundle.tokenizer, label_embeddings=bundle.label_embeddings,
                        text_encoder_bytes=bundle.text_encoder_bytes)


@pytest.fixture(scope="module")
def bad_dir(tmp_path_factory, bundle_dir):
    """The good fp32 bundle and five bad ones."""
    folder = tmp_path_factory.mktemp("bad-bundles")
    fp32 = bundle_dir / "fp32.tflite"
    repack(fp32, folder / "fp32.tflite")
    repack(fp32, folder / "twice.tflite", variant="twice", labels=("red", "red", "blue", "gray"))
    (folder / "eio.tflite").symlink_to("/proc/self/mem")  # reading offset 0 of it is EIO
    with open(folder / "huge.tflite", "wb") as f:
        f.truncate(SPARSE_BYTES)
    _bundle_from(fp32, folder / "nan.tflite", _nan_model_bytes(), "nan")
    _bundle_from(fp32, folder / "hang.tflite", _hanging_model_bytes(), "hang")
    return folder


@pytest.fixture(scope="module")
def bad_report(bad_dir, colour_data, tmp_path_factory):
    """``(report, seconds taken, out_dir)`` of one benchmark of ``bad_dir``."""
    out = tmp_path_factory.mktemp("bad-out")
    start = time.monotonic()
    report = run_bench(bad_dir, colour_data, out, threads=1, warmup=1, runs=3, reference=False,
                       sustain_s=0.3, timeout_s=TIMEOUT_S)
    return report, time.monotonic() - start, out


def _row(report, name):
    return next(r for r in report.rows if r.file.endswith(f"{name}.tflite"))


def test_the_good_bundle_is_still_measured(bad_report):
    report, _, out = bad_report
    good = _row(report, "fp32")
    assert (good.status, good.message) == ("ok", "")
    assert good.metrics["top1"] > 0.5 and good.latency_p50_ms > 0 and good.sustained_fps > 0
    assert [r.status for r in report.rows if r is not good] == ["load_failed"] * 5
    markdown = (out / "report.md").read_text()
    assert markdown.count("| ❌ |") == 5 and "| ✅ | fp32 |" in markdown
    assert len(json.loads((out / "report.json").read_text())["rows"]) == 6


def test_duplicate_labels_are_a_failed_row(bad_report):
    row = _row(bad_report[0], "twice")
    assert row.icon == "❌" and "'red'" in row.message and "twice" in row.message
    assert row.metrics == {}


def test_a_read_error_is_a_failed_row(bad_report):
    row = _row(bad_report[0], "eio")
    assert row.icon == "❌" and "[Errno 5] Input/output error" in row.message


def test_a_huge_file_is_refused_by_its_size_before_reading(bad_report):
    row = _row(bad_report[0], "huge")
    assert row.icon == "❌" and f"{SPARSE_BYTES} bytes" in row.message
    assert row.size_bytes == SPARSE_BYTES and row.gzip_bytes == 0


def test_nan_scores_are_a_failed_row_without_a_metric(bad_report):
    row = _row(bad_report[0], "nan")
    assert row.icon == "❌" and "NaN" in row.message
    assert row.metrics == {} and row.metric is None


def test_a_hanging_bundle_times_out(bad_report):
    report, seconds, _ = bad_report
    row = _row(report, "hang")
    assert row.icon == "❌" and f"timed out after {TIMEOUT_S:g} s" in row.message
    assert seconds < 60  # the hang cost its budget, not the loop's 10^9 iterations


def test_a_huge_sparse_file_is_never_read_into_memory(tmp_path, bundle_dir, colour_data):
    folder = tmp_path / "bundles"
    folder.mkdir()
    repack(bundle_dir / "fp32.tflite", folder / "fp32.tflite")
    with open(folder / "huge.tflite", "wb") as f:
        f.truncate(MAX_BUNDLE_BYTES + 100_000_000)
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from fuselite.bench.runner import run_bench\n"
        f"report = run_bench({str(folder)!r}, {str(colour_data)!r}, None, threads=1, warmup=0, runs=2,\n"
        "                   reference=False, sustain_s=0)\n"
        "assert [r.status for r in report.rows] == ['load_failed', 'ok'], report.rows\n"
        "hwm = [l for l in Path('/proc/self/status').read_text().splitlines() if l.startswith('VmHWM')]\n"
        "print(int(hwm[0].split()[1]) // 1024)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.split()[-1]) < 400  # MB: the file is over 600 MB


def test_the_measuring_process_reports_an_error_as_a_summary(tmp_path, bundle_dir):
    from fuselite.bench.measure import main

    frames = tmp_path / "frames.npy"
    np.save(frames, np.zeros((4, 32, 32, 5), np.uint8))  # five channels: the preprocessing refuses them
    summary = tmp_path / "summary.json"
    code = main([str(bundle_dir / "fp32.tflite"), "--frames", str(frames), "--summary", str(summary),
                 "--scores", str(tmp_path / "scores.npy"), "--warmup", "1", "--runs", "1"])
    found = json.loads(summary.read_text())
    assert code == 0 and found["status"] == "failed"
    assert "while warming up" in found["message"]


def test_entries_that_are_not_files_get_rows_and_are_never_opened(tmp_path, bundle_dir, colour_data):
    folder = tmp_path / "bundles"
    folder.mkdir()
    repack(bundle_dir / "fp32.tflite", folder / "fp32.tflite")
    os.mkfifo(folder / "fifo.tflite")  # opening it for reading would block forever
    (folder / "folder.tflite").mkdir()
    (folder / "broken.tflite").symlink_to(tmp_path / "nowhere.tflite")
    (folder / "loop.tflite").symlink_to(folder / "loop.tflite")
    report = run_bench(folder, colour_data, None, threads=1, warmup=0, runs=2, reference=False, sustain_s=0)
    reasons = {r.file.rsplit("/", 1)[-1]: (r.icon, r.message) for r in report.rows}
    assert reasons["fp32.tflite"] == ("✅", "")
    assert reasons["fifo.tflite"] == ("❌", "a FIFO, not a bundle file: not opened")
    assert reasons["folder.tflite"] == ("❌", "a folder, not a bundle file: not opened")
    assert reasons["broken.tflite"][1].startswith("a broken symbolic link (to ")
    assert "Too many levels of symbolic links" in reasons["loop.tflite"][1]


def test_the_watchdog_kills_a_silent_child_and_reports_a_crash():
    from fuselite.bench.runner import Watchdog, _child_failure

    quiet = "import time; print('phase loading', flush=True); time.sleep(60)"
    child = subprocess.Popen([sys.executable, "-c", quiet], stdout=subprocess.PIPE, text=True)
    start = time.monotonic()
    assert Watchdog(child).wait(1.0) == "while loading"
    assert child.returncode is not None and time.monotonic() - start < 20
    crash = "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"
    child = subprocess.Popen([sys.executable, "-c", crash], stdout=subprocess.PIPE, text=True)
    assert Watchdog(child).wait(30.0) is None
    assert _child_failure(child.returncode, "") == "the interpreter crashed (signal 11) while loading or running it"
