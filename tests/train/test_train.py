"""`fuselite train`: the model learns, runs resume, bad input is reported, not fatal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from fuselite.cli import main
from fuselite.train.configs import get_config, list_configs

FUSELITE = [sys.executable, "-m", "fuselite.cli"]


@pytest.mark.slow
def test_tiny_run_writes_every_file_a_later_stage_needs(tiny_run: Path):
    from fuselite.train.run import RUN_FILES, load_run

    for name in RUN_FILES:
        assert (tiny_run / name).is_file(), name
    run = load_run(tiny_run)
    assert len(run.labels) == len(run.thresholds) > 10
    assert all(0.0 <= t <= 1.0 for t in run.thresholds)


@pytest.mark.slow
def test_tiny_run_learns_loss_falls_and_map_beats_chance(tiny_run: Path):
    history = json.loads((tiny_run / "history.json").read_text())
    assert history[-1]["loss"] < 0.8 * history[0]["loss"]
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    labels = json.loads((tiny_run / "labels.json").read_text())["labels"]
    # Chance mAP is the mean share of positives per label: a handful of tags out of dozens.
    from fuselite.data.dataset import Splits
    from fuselite.train.configs import get_config as cfg
    from fuselite.train.pipeline import load_run_data

    test = load_run_data(cfg("scenes-tiny"), Splits.load(tiny_run / "splits.json")).test
    chance = float(test.multi_hot(labels).mean(axis=0)[test.multi_hot(labels).sum(0) > 0].mean())
    assert metrics["mAP"] > max(2 * chance, chance + 0.15)
    assert 0.0 <= metrics["heldout_combo_ap"] <= 1.0
    assert metrics["task"] == "multi"
    # Scenes train with flips, so the mirror-averaged score is reported too, and learned alike.
    assert metrics["mAP_mirror"] > max(2 * chance, chance + 0.15)


@pytest.mark.slow
def test_single_label_run_with_shortcuts_learns_and_reports_calibrated_probabilities(tmp_path: Path):
    from fuselite.train.run import load_run
    from fuselite.train.trainer import train

    config = get_config("fashion-mnist-tiny").with_overrides(
        residual=True, blocks=((32, 1), (64, 2), (64, 1), (128, 2))
    )
    metrics = train(config, tmp_path / "run")
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert history[-1]["loss"] < 0.8 * history[0]["loss"]
    assert metrics["task"] == "single" and metrics["top1"] > 0.5  # ten classes: chance is 0.1
    assert metrics["top1_mirror"] > 0.5 and abs(metrics["top1_mirror"] - metrics["top1"]) < 0.1
    # Softmax alone leaves the sigmoid's bias free: the right label used to score ~0.001.
    assert metrics["true_label_probability"] > 0.3
    assert any(layer.name.endswith("_add") for layer in load_run(tmp_path / "run").image_encoder.layers)


@pytest.mark.slow
def test_tiny_run_maps_point_at_the_drawn_objects_well_above_chance(tiny_run: Path):
    """The pointing game in metrics.json: each label's heatmap peaks on an object carrying it."""
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert metrics["pointing_game_pairs"] > 500 and metrics["pointing_game_heldout_pairs"] > 50
    assert 0.15 < metrics["pointing_game_chance"] < 0.5  # an 8x8 grid, objects of 10-26 % of the side
    assert metrics["pointing_game"] >= metrics["pointing_game_chance"] + 0.3
    assert metrics["pointing_game_heldout"] >= metrics["pointing_game_heldout_chance"] + 0.2


def test_heldout_phrases_are_never_training_labels(tiny_run: Path):
    labels = set(json.loads((tiny_run / "labels.json").read_text())["labels"])
    phrases = json.loads((tiny_run / "metrics.json").read_text())["heldout_combo_ap_per_phrase"]
    assert phrases and not labels & set(phrases)


@pytest.mark.slow
def test_splits_are_saved_and_disjoint(tiny_run: Path):
    splits = json.loads((tiny_run / "splits.json").read_text())
    train, val, test = (set(splits[k]) for k in ("train", "val", "test"))
    assert train and val and test
    assert not (train & val or train & test or val & test)


@pytest.mark.parametrize("name", list_configs())
def test_every_registered_config_is_valid(name: str):
    config = get_config(name)
    assert config.name == name and 64 <= config.image_size <= 224


def _state(run_dir: Path) -> dict:
    path = run_dir / "checkpoints" / "state.json"
    return json.loads(path.read_text()) if path.exists() else {"epochs_done": 0}


@pytest.mark.slow
def test_kill_during_training_then_resume_finishes_every_epoch_once(tmp_path: Path):
    run_dir = tmp_path / "run"
    cmd = [*FUSELITE, "train", "--config", "scenes-tiny", "--epochs", "5", "--out", str(run_dir)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while _state(run_dir)["epochs_done"] < 2 and time.monotonic() < deadline:
        assert proc.poll() is None, "training ended before it could be interrupted"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = _state(run_dir)["epochs_done"]
    assert 2 <= done_before < 5 and not (run_dir / "metrics.json").exists()

    assert main(["train", "--config", "scenes-tiny", "--out", str(run_dir), "--resume"]) == 0
    epochs = [h["epoch"] for h in json.loads((run_dir / "history.json").read_text())]
    assert epochs == [1, 2, 3, 4, 5]
    assert json.loads((run_dir / "metrics.json").read_text())["mAP"] > 0


def _write_class_folders(root: Path, per_class: int = 24) -> None:
    rng = np.random.default_rng(0)
    for name, colour in {"red_things": (0, 0, 220), "blue-things": (220, 0, 0)}.items():
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            image = rng.integers(0, 60, (48, 48, 3), dtype=np.uint8)
            cv2.circle(image, (24, 24), int(rng.integers(8, 16)), colour, -1)
            cv2.imwrite(str(folder / f"{i}.png"), image)
    (root / "red_things" / "corrupt.png").write_bytes(b"not an image at all")


@pytest.mark.slow
def test_user_folder_with_a_corrupt_image_trains_and_counts_it(tmp_path: Path, capsys):
    data = tmp_path / "data"
    _write_class_folders(data)
    out = tmp_path / "run"
    code = main(["train", "--config", "custom", "--data", str(data), "--out", str(out),
                 "--epochs", "3", "--batch-size", "8"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["skipped_items"] == 1
    assert metrics["task"] == "single" and 0.0 <= metrics["top1"] <= 1.0
    assert metrics["train_items"] + metrics["val_items"] + metrics["test_items"] == 48
    labels = json.loads((out / "labels.json").read_text())["labels"]
    assert labels == ["blue things", "red things"]


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["train", "--config", "nope", "--out", "x"], "known configs: "),
        (["train", "--data", "/no/such/folder", "--out", "x"], "no such file or folder"),
        (["train", "--out", "x", "--image-size", "32"], "outside 64..224"),
        (["train", "--out", "/no/such/run", "--resume"], "does not exist"),
        (["train", "--out", "x", "--bogus"], "unrecognized arguments"),
    ],
)
def test_user_mistakes_exit_2_with_one_line(argv, expected):
    proc = subprocess.run([*FUSELITE, *argv], capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.startswith("fuselite")]
    assert len(lines) == 1 and expected in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def _copy_with_state(run: Path, to: Path, **changes) -> Path:
    """A copy of ``run`` whose checkpoints/state.json has ``changes`` applied."""
    import shutil

    shutil.copytree(run, to)
    state_path = to / "checkpoints" / "state.json"
    state = json.loads(state_path.read_text())
    state.update(changes)
    state_path.write_text(json.dumps(state))
    return to


@pytest.mark.slow
def test_resume_says_when_the_checkpoint_does_not_score_what_was_saved_with_it(tiny_run: Path, tmp_path,
                                                                               caplog):
    state = json.loads((tiny_run / "checkpoints" / "state.json").read_text())
    history = state["history"]
    # The run's data changed under it (here: the score saved with the checkpoint is not its own).
    changed = _copy_with_state(tiny_run, tmp_path / "changed",
                               history=[*history[:-1], {**history[-1], "val_score": history[-1]["val_score"] + 0.2}])
    with caplog.at_level("INFO", logger="fuselite.train.callbacks"):
        assert main(["train", "--config", "scenes-tiny", "--out", str(changed), "--resume"]) == 0
    assert "the checkpoint of epoch 8 scores" in caplog.text and "changed data folder" in caplog.text
    caplog.clear()
    # Killed between saving epoch 8's checkpoint and its state: epoch 8 is trained again, no warning.
    between = _copy_with_state(tiny_run, tmp_path / "between", epochs_done=7, history=history[:-1])
    with caplog.at_level("INFO", logger="fuselite.train.callbacks"):
        assert main(["train", "--config", "scenes-tiny", "--out", str(between), "--resume"]) == 0
    assert "resuming after epoch 7: validation score" in caplog.text and "(? when saved" in caplog.text
    assert "the checkpoint of epoch" not in caplog.text
    assert [h["epoch"] for h in json.loads((between / "history.json").read_text())] == list(range(1, 9))


@pytest.mark.slow
def test_existing_run_is_not_overwritten_without_resume(tiny_run: Path, capsys):
    assert main(["train", "--config", "scenes-tiny", "--out", str(tiny_run)]) == 2
    assert "--resume" in capsys.readouterr().err
