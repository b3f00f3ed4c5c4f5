"""Stochastic weight averaging (``swa_epochs``): the run keeps the mean of its last epochs' weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fuselite.cli import main
from fuselite.errors import UserError
from fuselite.train.configs import get_config


def _tiny_model():
    from fuselite.train.backend import keras

    inputs = keras.Input((3,))
    return keras.Model(inputs, keras.layers.Dense(2)(inputs))


def _epoch(average, model, epoch: int, value: float) -> None:
    model.set_weights([np.full_like(w, value) for w in model.get_weights()])
    average.on_epoch_end(epoch)


def test_the_average_is_the_mean_of_the_averaged_epochs_and_survives_a_resume(tmp_path: Path):
    from fuselite.train.callbacks import WeightAverage

    model = _tiny_model()
    average = WeightAverage(tmp_path, first_epoch=2)
    average.set_model(model)
    for epoch, value in enumerate([100.0, 100.0, 1.0, 2.0]):  # epochs 0 and 1 come before averaging
        _epoch(average, model, epoch, value)
    resumed = WeightAverage(tmp_path, first_epoch=2)
    resumed.set_model(model)
    resumed.restore()
    _epoch(resumed, model, 3, 50.0)  # epoch 3 again after a kill: already in the mean
    _epoch(resumed, model, 4, 6.0)
    assert resumed.count == 3
    for weights in resumed.average:
        np.testing.assert_allclose(weights, 3.0)  # (1 + 2 + 6) / 3


@pytest.mark.slow
def test_a_run_with_weight_averaging_learns_and_keeps_the_averaged_weights(tmp_path: Path):
    from fuselite.train.run import load_run

    assert main(["train", "--config", "scenes-tiny", "--swa-epochs", "3", "--out", str(tmp_path / "run")]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["mAP"] > 0.25  # about 0.1 by chance (0.36 measured; 0.44 without averaging)
    epochs = get_config("scenes-tiny").epochs
    with np.load(tmp_path / "run" / "checkpoints" / "swa.npz") as saved:
        assert int(saved["count"]) == 3 and int(saved["last_epoch"]) == epochs - 1
        averaged = {tuple(saved[name].shape): saved[name] for name in saved.files if name.startswith("w")}
    stem = load_run(tmp_path / "run").image_encoder.get_layer("stem").kernel.numpy()
    np.testing.assert_allclose(stem, averaged[stem.shape], rtol=1e-5, atol=1e-6)


def test_the_learning_rate_holds_at_a_tenth_of_its_peak_while_averaging():
    from fuselite.train.trainer import _schedule

    config = get_config("scenes-tiny").with_overrides(epochs=10, swa_epochs=4, learning_rate=1e-2)
    schedule = _schedule(config, steps_per_epoch=10)
    assert float(schedule(10)) == pytest.approx(1e-2)  # the peak after one warm-up epoch
    for step in (60, 75, 99):  # the last four epochs
        assert float(schedule(step)) == pytest.approx(1e-3)
    assert float(_schedule(config.with_overrides(swa_epochs=0), 10)(99)) < 1e-4  # to zero without


def test_averaging_every_epoch_is_refused_with_one_line(tmp_path: Path, capsys):
    with pytest.raises(UserError, match="swa_epochs 8 must be 0 .off. or fewer than the 8 epochs"):
        get_config("scenes-tiny").with_overrides(swa_epochs=8)
    argv = ["train", "--config", "scenes-tiny", "--epochs", "5", "--swa-epochs", "5", "--out", str(tmp_path / "r")]
    assert main(argv) == 2
    assert "swa_epochs 5 must be 0 (off) or fewer than the 5 epochs" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_a_short_run_of_an_averaging_config_says_how_to_fix_it(tmp_path: Path, capsys):
    # fashion-mnist-small averages its last 20 epochs, so a quick 10-epoch try must
    # say which flag to change, before any data is read or anything is written.
    argv = ["train", "--config", "fashion-mnist-small", "--epochs", "10", "--out", str(tmp_path / "r")]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert "swa_epochs 20 must be 0 (off) or fewer than the 10 epochs" in error
    assert "lower --swa-epochs (0 turns averaging off) or raise --epochs" in error
    assert len(error.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()
