"""Early stopping: a stalled validation score stops a run, but never in the first half."""

from __future__ import annotations

import numpy as np
import pytest

from fuselite.train.backend import keras
from fuselite.train.callbacks import CheckpointAndStop


def epochs_run(tmp_path, min_epochs: int, epochs: int = 20, patience: int = 2) -> int:
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(), loss="mse")
    scores = iter([0.5] + [0.4] * epochs)  # the best epoch is the first
    callback = CheckpointAndStop(tmp_path, patience, lambda: next(scores), min_epochs=min_epochs)
    callback.attach(model, model.optimizer)
    x, y = np.zeros((4, 2), np.float32), np.zeros((4, 1), np.float32)
    model.fit(x, y, epochs=epochs, callbacks=[callback], verbose=0)
    assert callback.stopped_early and callback.best_weights.exists()
    return callback.state["epochs_done"]


@pytest.mark.parametrize(("min_epochs", "stops_after"), [(0, 3), (10, 10)])
def test_a_stalled_score_stops_the_run_but_not_before_min_epochs(tmp_path, min_epochs, stops_after):
    assert epochs_run(tmp_path, min_epochs) == stops_after
