"""Temporal smoothing of label scores: an exponential moving average plus hysteresis.

A label's score on one frame is noisy; on video the labels would flicker on and off
around their thresholds.  The moving average calms the scores, and hysteresis asks a
label to clear ``threshold + margin`` to turn on and to drop below
``threshold - margin`` to turn off.
"""

from __future__ import annotations

import numpy as np


class ScoreSmoother:
    """Keeps, per label, a smoothed score and whether the label is on.

    Example:
        >>> smoother = ScoreSmoother(np.array([0.5]), smoothing=0.6, hysteresis=0.1)
        >>> scores, present = smoother.update(np.array([0.9]))
    """

    def __init__(
        self, thresholds: np.ndarray, smoothing: float = 0.0, hysteresis: float = 0.0
    ) -> None:
        self.thresholds = np.asarray(thresholds, dtype=np.float32)
        self.smoothing = float(smoothing)
        self.hysteresis = float(hysteresis)
        self._scores: np.ndarray | None = None
        self._present = np.zeros(self.thresholds.shape, dtype=bool)

    def update(self, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Folds in one frame's probabilities; returns ``(smoothed scores, present flags)``."""
        if self._scores is None or self.smoothing == 0.0:
            self._scores = np.asarray(probabilities, dtype=np.float32).copy()
        else:
            self._scores *= self.smoothing
            self._scores += (1.0 - self.smoothing) * probabilities
        if self.hysteresis == 0.0:
            self._present = self._scores >= self.thresholds
        else:
            turn_on = self._scores >= self.thresholds + self.hysteresis
            stay_on = self._present & (self._scores >= self.thresholds - self.hysteresis)
            self._present = turn_on | stay_on
        return self._scores, self._present

    def reset(self) -> None:
        """Forgets the past, e.g. when a new, unrelated stream starts."""
        self._scores = None
        self._present = np.zeros(self.thresholds.shape, dtype=bool)
