"""Host tools under data faults: bad images in a dataset, ``kill -9`` in training and conversion.

The long version of the resume check (several seeds, three kill points) is
``python tests/reliability/resume_quality.py``; its figures are in docs/reliability.md.
"""

from __future__ import annotations

import json
import logging
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from reliability_support import fuselite_command, quiet_env, run_cli

from fuselite.bundle import read_bundle
from fuselite.cli import main

# A resumed run goes on from its checkpoint: the restored weights score on validation what
# was saved with them (train/callbacks.py logs both). Its final mAP is one more draw of
# scenes-tiny's training noise: 17 runs of 8 epochs (seeds, repeats, resumed; 2026-11-27/12-06,
# docs/reliability.md) ended between 0.398 and 0.464, and in one CI run the uninterrupted
# run drew 0.455 and the resumed one 0.371 (its epochs 5-8 scored 0.38-0.39 on validation,
# no restart from scratch). The final mAP may fall 0.10 below the uninterrupted run's;
# a run that restarted from scratch is caught by the score check, not by this.
RESUME_MAP_TOLERANCE = 0.10
RESTORED = re.compile(r"resuming after epoch (\d+): validation score ([\d.]+) \(([\d.]+) when saved")


def write_scene_manifest(folder: Path, items: int = 200, bad: int = 10) -> Path:
    """A CSV manifest of rendered scenes; ``bad`` of its items corrupt or missing."""
    from fuselite.data.scenes import SceneSpec, generate_scenes

    scenes = generate_scenes(items, SceneSpec(image_size=64), seed=3)
    rows = ["image,tags,caption"]
    for i, (image, tags, caption) in enumerate(zip(scenes.images, scenes.tags, scenes.captions)):
        name = f"images/{i:04d}.png"
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if i % (items // bad) == 0:
            if (i // (items // bad)) % 2:  # half corrupt: a PNG cut short, half missing
                _ok, png = cv2.imencode(".png", image[:, :, ::-1])
                path.write_bytes(png.tobytes()[:40])
        else:
            cv2.imwrite(str(path), image[:, :, ::-1])
        rows.append(f'{name},{";".join(tags)},"{caption}"')
    manifest = folder / "dataset.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


@pytest.mark.slow
def test_a_manifest_dataset_with_5_percent_bad_images_trains_and_reports_the_count(
    tmp_path, caplog
):
    manifest = write_scene_manifest(tmp_path / "data", items=200, bad=10)
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING):
        code = main(["train", "--config", "custom", "--data", str(manifest), "--out", str(out),
                     "--epochs", "1", "--batch-size", "32"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["skipped_items"] == 10
    assert metrics["train_items"] + metrics["val_items"] + metrics["test_items"] == 190
    assert "skipped 10 unusable item(s)" in caplog.text
    reasons = caplog.text
    assert "not a decodable image" in reasons and "image file not found" in reasons


def _epochs_done(run_dir: Path) -> int:
    path = run_dir / "checkpoints" / "state.json"
    return json.loads(path.read_text())["epochs_done"] if path.exists() else 0


@pytest.mark.slow
def test_kill_9_during_training_then_resume_reaches_the_uninterrupted_quality(
    tiny_run, tmp_path, caplog
):
    """tiny_run is the same config and seed, trained without interruption."""
    run_dir = tmp_path / "killed"
    process = subprocess.Popen(
        fuselite_command("train", "--config", "scenes-tiny", "--out", run_dir),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=quiet_env(),
    )
    deadline = time.monotonic() + 240
    try:
        while _epochs_done(run_dir) < 4:
            assert process.poll() is None and time.monotonic() < deadline, "no epoch 4 to kill"
            time.sleep(0.1)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait(30)
    assert process.returncode == -signal.SIGKILL
    assert not (run_dir / "metrics.json").exists()

    with caplog.at_level(logging.INFO, logger="fuselite.train.callbacks"):
        assert main(["train", "--config", "scenes-tiny", "--out", str(run_dir), "--resume"]) == 0
    epoch, restored, saved = RESTORED.search(caplog.text).groups()
    assert int(epoch) >= 4 and abs(float(restored) - float(saved)) <= 1e-3, caplog.text
    resumed = json.loads((run_dir / "metrics.json").read_text())
    uninterrupted = json.loads((tiny_run / "metrics.json").read_text())
    assert resumed["mAP"] >= uninterrupted["mAP"] - RESUME_MAP_TOLERANCE, (resumed, uninterrupted)
    epochs = [h["epoch"] for h in json.loads((run_dir / "history.json").read_text())]
    assert epochs == list(range(1, 9))


# Runs `fuselite convert` and SIGKILLs itself inside write_atomic, after the new bundle's
# bytes are in the temporary file and fsync'ed, before the rename: the worst moment.
KILL_WHILE_WRITING = """
import os, signal, sys
real_fsync = os.fsync
def fsync_then_die(fd):
    real_fsync(fd)
    if os.readlink(f"/proc/self/fd/{fd}").endswith(".part") and sys.argv[1] in \\
            os.readlink(f"/proc/self/fd/{fd}"):
        os.kill(os.getpid(), signal.SIGKILL)
os.fsync = fsync_then_die
from fuselite.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow
def test_kill_9_while_a_bundle_is_written_leaves_no_partial_bundle(
    tiny_run, colour_bundles, tmp_path
):
    out = tmp_path / "bundles"
    out.mkdir()
    previous = out / "int8.tflite"
    previous.write_bytes(colour_bundles["int8"].read_bytes())  # a bundle from an earlier run
    args = ["convert", str(tiny_run), "--out", str(out), "--variants", "int8",
            "--calibration-samples", "50", "--eval-samples", "50", "--threads", "1",
            "--max-loss", "10"]  # 50 pictures cannot judge 1 pt; not what this test is about
    done = subprocess.run([sys.executable, "-c", KILL_WHILE_WRITING, "int8.tflite", *args],
                          capture_output=True, text=True, timeout=300, env=quiet_env(), check=False)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]

    assert previous.read_bytes() == colour_bundles["int8"].read_bytes()  # untouched
    read_bundle(previous)
    leftovers = sorted(p.name for p in out.iterdir() if p != previous)
    assert len(leftovers) == 1 and leftovers[0].startswith(".int8.tflite.")
    assert leftovers[0].endswith(".part")  # hidden, and not a *.tflite anything would load
    listing = run_cli("convert", "--list", out, timeout=60)
    assert listing.returncode == 0 and "not a bundle" not in listing.stdout
    assert [line.split()[0] for line in listing.stdout.splitlines()] == ["int8.tflite"]

    from fuselite.convert.export import remove_stale_parts
    from fuselite.convert.variants import get_variant

    remove_stale_parts(out, get_variant("int8"))  # what the next conversion does first
    assert sorted(p.name for p in out.iterdir()) == ["int8.tflite"]


def test_the_scene_manifest_helper_makes_exactly_the_bad_items_it_promises(tmp_path):
    manifest = write_scene_manifest(tmp_path, items=40, bad=4)
    rows = manifest.read_text().splitlines()[1:]
    paths = [tmp_path / row.split(",")[0] for row in rows]
    missing = [p for p in paths if not p.exists()]
    corrupt = [p for p in paths if p.exists() and cv2.imread(str(p)) is None]
    assert len(rows) == 40 and len(missing) == 2 and len(corrupt) == 2
    assert all(np.asarray(cv2.imread(str(p))).shape == (64, 64, 3)
               for p in paths if p not in missing + corrupt)


# ---- issue 36, items 7 and 10: a train that fails on its data leaves nothing behind ------

TINY_TRAIN = ["--backbone", "tiny", "--image-size", "64", "--epochs", "1", "--batch-size", "2"]


def write_tiny_jsonl(folder: Path, lines: list[str]) -> Path:
    """A JSONL manifest of ``lines`` beside four small images ``0.png`` ... ``3.png``."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(4):
        cv2.imwrite(str(folder / f"{i}.png"), np.full((32, 32, 3), 60 * i, np.uint8))
    manifest = folder / "data.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def train_fails_with_one_line(capsys, manifest: Path, out: Path, *extra: str) -> str:
    """Runs ``fuselite train`` expecting a user error; returns its one stderr line."""
    code = main(["train", "--data", str(manifest), "--out", str(out), *TINY_TRAIN, *extra])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(error) == 1 and error[0].startswith("fuselite train: error:"), error
    return error[0]


def test_a_label_longer_than_a_bundle_holds_stops_train_before_the_run_directory(
    tmp_path, capsys
):
    long_tag = "x" * 300
    lines = [json.dumps({"image": f"{i}.png", "tags": [long_tag if i == 0 else "dark"]})
             for i in range(4)]
    out = tmp_path / "run"
    line = train_fails_with_one_line(capsys, write_tiny_jsonl(tmp_path / "data", lines), out)
    assert "longer than 200 characters" in line
    assert not out.exists()


def test_data_with_nothing_usable_leaves_no_run_directory_and_keeps_the_users_folder(
    tmp_path, capsys
):
    deep = '{"image": "0.png", "tags": ' + "[" * 100_000 + "]" * 100_000 + "}"
    nul = json.dumps({"image": "0\u0000.png", "tags": ["dark"]})
    manifest = write_tiny_jsonl(tmp_path / "data", [deep, nul])
    line = train_fails_with_one_line(capsys, manifest, tmp_path / "run")
    assert "no usable items" in line and not (tmp_path / "run").exists()

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    train_fails_with_one_line(capsys, manifest, mine)
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


def test_resume_of_a_run_that_never_started_is_one_clear_line(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    from fuselite.train.configs import get_config

    get_config("custom").save(out / "config.json")  # all that a failed start used to leave
    manifest = write_tiny_jsonl(tmp_path / "data", [json.dumps({"image": "0.png", "tags": ["a"]})])
    line = train_fails_with_one_line(capsys, manifest, out, "--resume")
    assert "nothing to resume" in line


@pytest.mark.slow
def test_a_train_that_fails_after_its_data_loaded_removes_the_run_directory(tmp_path):
    lines = [json.dumps({"image": f"{i}.png", "tags": ["dark" if i < 2 else "light"]})
             for i in range(4)]
    manifest = write_tiny_jsonl(tmp_path / "data", lines)
    (tmp_path / "bad.h5").write_bytes(b"not a weights file")  # fails when the model is built
    out = tmp_path / "run"
    try:
        main(["train", "--data", str(manifest), "--out", str(out), "--backbone", "efficientnet-lite0",
              "--backbone-weights", str(tmp_path / "bad.h5"), "--image-size", "160",
              "--epochs", "1", "--batch-size", "2"])
    except OSError:  # how h5py reports the bad file; this test is about what is left behind
        pass
    assert not out.exists()
