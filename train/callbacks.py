"""Training callbacks: a progress bar, per-epoch checkpoints with resume, early stopping, weight averaging."""

from __future__ import annotations

import io
import json
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from fuselite.files import write_atomic
from fuselite.train.backend import keras, tf

log = logging.getLogger(__name__)


class ProgressBar(keras.callbacks.Callback):
    """One progress bar over every step of the run, with the latest losses."""

    def __init__(self, epochs: int, steps_per_epoch: int, initial_epoch: int = 0, shown: bool = True):
        super().__init__()
        self.bar = tqdm(
            total=epochs * steps_per_epoch,
            initial=initial_epoch * steps_per_epoch,
            desc="train",
            unit="step",
            dynamic_ncols=True,
            disable=not shown,  # a multi-worker job's other workers leave the bar to the chief
        )

    def on_train_batch_end(self, batch, logs=None):
        """Advances the bar by one step."""
        self.bar.update(1)

    def on_epoch_end(self, epoch, logs=None):
        """Shows the epoch's training and validation loss."""
        logs = logs or {}
        self.bar.set_postfix(
            epoch=epoch + 1, loss=f"{logs.get('loss', math.nan):.4f}",
            val_score=f"{logs.get('val_score', math.nan):.4f}",
        )

    def on_train_end(self, logs=None):
        """Closes the bar."""
        self.bar.close()


# The same weights on the same validation pictures give the same score up to float
# summation order (threads); a resumed run further off than this is not where it stopped.
RESTORED_SCORE_TOLERANCE = 1e-3


def _checkpoint_epoch(path: str) -> int:
    """The epoch a checkpoint was saved after: ``.../latest/ckpt-4`` -> 4."""
    return int(path.rsplit("-", 1)[-1])


class CheckpointAndStop(keras.callbacks.Callback):
    """Saves a resumable checkpoint every epoch and stops when the validation score stalls.

    The score is the task metric on the validation split (mAP, or top-1 for
    single-label data), not the loss: the loss also moves with calibration,
    which the per-label thresholds take care of.

    The checkpoint holds the weights and optimizer state (``tf.train.Checkpoint``)
    plus a small JSON state: epochs done, best validation loss, epochs without
    improvement, history.  The best weights are kept separately, and restored at
    the end of training.

    No run stops before ``min_epochs``: under a cosine schedule the validation score
    stalls while the learning rate is still high and climbs as it anneals, so a
    54-epoch Fashion-MNIST run stopped at epoch 33 (learning rate still a third of its
    peak) ended 0.3 pt below a 40-epoch run that annealed.  The trainer sets it to
    three quarters of the epochs (learning rate 15 % of its peak): at half, a 68-epoch
    run still stopped at epoch 38.
    """

    def __init__(
        self, run_dir: Path, patience: int, val_score: Callable[[], float], min_epochs: int = 0
    ):
        super().__init__()
        self.dir = Path(run_dir) / "checkpoints"
        self.patience = patience
        self.min_epochs = min_epochs
        self.val_score = val_score
        self.state = {"epochs_done": 0, "best_val_score": -math.inf, "wait": 0, "history": []}
        self._manager = None

    @property
    def best_weights(self) -> Path:
        """Weights of the epoch with the best validation score."""
        return self.dir / "best.weights.h5"

    def attach(self, model, optimizer) -> None:
        """Creates the checkpoint manager for ``model`` and ``optimizer``."""
        self.dir.mkdir(parents=True, exist_ok=True)
        checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
        self._manager = tf.train.CheckpointManager(checkpoint, str(self.dir / "latest"), max_to_keep=1)

    def restore(self) -> int:
        """Restores the latest checkpoint; returns the number of epochs already done.

        The restored weights are scored on the validation split again and logged beside
        the score saved with them: equal scores show the run goes on from where it stopped
        (a warning says when they are not).
        """
        state_path = self.dir / "state.json"
        if not state_path.exists() or self._manager.latest_checkpoint is None:
            return 0
        self._manager.checkpoint.restore(self._manager.latest_checkpoint).expect_partial()
        self.state = json.loads(state_path.read_text())
        saved = self.state["history"][-1].get("val_score") if self.state["history"] else None
        if _checkpoint_epoch(self._manager.latest_checkpoint) != self.state["epochs_done"]:
            # Stopped between saving the next epoch's checkpoint and its state: that epoch
            # is trained again, from its own weights, and no saved score belongs to them.
            saved = None
        score = float(self.val_score())
        log.info("resuming after epoch %d: validation score %.4f (%s when saved; best %.4f)",
                 self.state["epochs_done"], score, "?" if saved is None else f"{saved:.4f}",
                 self.state["best_val_score"])
        if saved is not None and abs(score - saved) > RESTORED_SCORE_TOLERANCE:
            log.warning("the checkpoint of epoch %d scores %.4f on validation, not the %.4f saved with it: "
                        "it may come from another run or a changed data folder", self.state["epochs_done"],
                        score, saved)
        return int(self.state["epochs_done"])

    def on_epoch_end(self, epoch, logs=None):
        """Records the epoch, saves the best weights and the checkpoint, decides on stopping."""
        score = float(self.val_score())
        if logs is not None:
            logs["val_score"] = score  # shown by the progress bar, which runs after this
        logs = {k: float(v) for k, v in (logs or {}).items()}
        self.state["history"].append({"epoch": epoch + 1, **logs})
        if score > self.state["best_val_score"] + 1e-4:
            self.state.update(best_val_score=score, wait=0)
            partial = self.dir / "best.partial.weights.h5"
            self.model.save_weights(str(partial))
            os.replace(partial, self.best_weights)  # never a half-written best.weights.h5
        else:
            self.state["wait"] += 1
        self.state["epochs_done"] = epoch + 1
        self._manager.save(checkpoint_number=epoch + 1)
        # The state is written after the checkpoint, so a kill between the two resumes
        # from the previous epoch rather than claiming an epoch that was not saved.
        write_atomic(self.dir / "state.json", json.dumps(self.state).encode())
        if self.stopped_early:
            log.info("early stopping: no better validation score for %d epochs", self.state["wait"])
            self.model.stop_training = True

    @property
    def stopped_early(self) -> bool:
        """True when the last run stopped for lack of improvement."""
        return self.state["wait"] >= self.patience and self.state["epochs_done"] >= self.min_epochs


class WeightAverage(keras.callbacks.Callback):
    """Stochastic weight averaging (Izmailov et al. 2018): the mean of the last epochs' weights.

    From epoch ``first_epoch`` (0-based) on, the model's weights at the end of every
    epoch join a running mean, saved to ``checkpoints/swa.npz`` so ``--resume`` keeps
    it.  Averaging points a constant learning rate visits lands nearer the middle of
    a wide minimum than any one of them, much as an ensemble of runs would, at the
    cost of none on the device.  Batch-norm statistics of the averaged weights are
    recomputed by :meth:`apply`.
    """

    def __init__(self, run_dir: Path, first_epoch: int):
        super().__init__()
        self.path = Path(run_dir) / "checkpoints" / "swa.npz"
        self.first_epoch = first_epoch
        self.average: list | None = None
        self.count = 0
        self.last_epoch = -1

    def restore(self) -> None:
        """Loads the running mean saved by an interrupted run, if any."""
        if not self.path.exists():
            return
        with np.load(self.path) as saved:
            self.count, self.last_epoch = int(saved["count"]), int(saved["last_epoch"])
            self.average = [saved[f"w{i}"] for i in range(len(saved.files) - 2)]

    def on_epoch_end(self, epoch, logs=None):
        """Adds this epoch's weights to the mean (once per epoch, also across a resume)."""
        if epoch < self.first_epoch or epoch <= self.last_epoch:
            return
        weights = self.model.get_weights()
        if self.average is None:
            self.average = [np.array(w, np.float64) for w in weights]
        else:
            self.average = [a + (w - a) / (self.count + 1) for a, w in zip(self.average, weights)]
        self.count, self.last_epoch = self.count + 1, epoch
        buffer = io.BytesIO()
        np.savez(buffer, count=self.count, last_epoch=epoch, **{f"w{i}": a for i, a in enumerate(self.average)})
        write_atomic(self.path, buffer.getvalue())

    def apply(self, model, image_batches) -> None:
        """Sets the averaged weights and re-estimates batch norm on ``image_batches``.

        The running means and variances of the averaged weights are not the average
        of the running statistics, so they are measured again: forward passes in
        training mode, with batch-norm momentum 0.9, forget the old values within a
        few dozen batches.
        """
        model.set_weights([a.astype(w.dtype) for a, w in zip(self.average, model.get_weights())])
        update = tf.function(lambda images: model.image_encoder(images, training=True))
        for images in image_batches:
            update(images)
        log.info("weights averaged over the last %d epochs; batch norm re-estimated", self.count)
