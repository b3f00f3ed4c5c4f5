"""Reading a finished training run back: the models, labels, tokenizer and data splits.

``convert`` and ``bench`` use this; models are rebuilt from ``config.json`` and
their weights loaded from ``.weights.h5`` files, so nothing in a run directory is
ever deserialised as code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from fuselite.data.dataset import Splits
from fuselite.errors import UserError
from fuselite.tokenizer import Tokenizer
from fuselite.train.configs import TrainConfig

RUN_FILES = (
    "config.json", "tokenizer.json", "labels.json", "splits.json", "scorer.json",
    "image_encoder.weights.h5", "text_encoder.weights.h5", "metrics.json",
)


@dataclass
class TrainedRun:
    """A training run directory, loaded.

    Attributes:
        run_dir: The directory.
        config: Its :class:`TrainConfig`.
        tokenizer: The word tokenizer.
        labels: Training label texts (default labels of every bundle).
        thresholds: Per-label thresholds calibrated on validation.
        task: ``"single"`` or ``"multi"``.
        logit_scale: Scorer scale.
        logit_bias: Scorer bias.
        splits: The saved splits.
        metrics: ``metrics.json``.
        image_encoder: The image tower (tf_keras model) with trained weights.
        text_encoder: The text tower (tf_keras model) with trained weights.
    """

    run_dir: Path
    config: TrainConfig
    tokenizer: Tokenizer
    labels: list[str]
    thresholds: list[float]
    task: str
    logit_scale: float
    logit_bias: float
    splits: Splits
    metrics: dict
    image_encoder: object
    text_encoder: object

    def load_data(self):
        """The run's data with its saved splits (a ``RunData``)."""
        from fuselite.train.pipeline import load_run_data

        return load_run_data(self.config, self.splits)


def check_run_dir(run_dir: Path) -> None:
    """Raises UserError naming every file a finished run should have but ``run_dir`` lacks."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory; train one with `fuselite train --out DIR`")
    missing = [name for name in RUN_FILES if not (run_dir / name).is_file()]
    if missing:
        hint = " (training did not finish: `fuselite train --resume`)" if "metrics.json" in missing else ""
        raise UserError(f"{run_dir}: not a finished run, missing {', '.join(missing)}{hint}")


def load_run(run_dir: Path) -> TrainedRun:
    """Loads a finished run; missing or broken pieces raise UserError naming them."""
    from fuselite.train.model import image_encoder, text_encoder

    run_dir = Path(run_dir)
    check_run_dir(run_dir)
    try:
        config = TrainConfig.load(run_dir / "config.json")
        tokenizer = Tokenizer.load(run_dir / "tokenizer.json")
        labels_doc = json.loads((run_dir / "labels.json").read_text())
        scorer = json.loads((run_dir / "scorer.json").read_text())
        splits = Splits.load(run_dir / "splits.json")
        metrics = json.loads((run_dir / "metrics.json").read_text())
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{run_dir}: a run file is damaged ({exc}); train the run again") from None
    images, texts = image_encoder(config), text_encoder(config, tokenizer.vocab_size)
    try:
        images.load_weights(str(run_dir / "image_encoder.weights.h5"))
        texts.load_weights(str(run_dir / "text_encoder.weights.h5"))
    except (ValueError, OSError, KeyError) as exc:
        raise UserError(f"{run_dir}: weights do not load into the config's model ({exc})") from None
    return TrainedRun(
        run_dir=run_dir, config=config, tokenizer=tokenizer, labels=labels_doc["labels"],
        thresholds=labels_doc["thresholds"], task=labels_doc["task"],
        logit_scale=float(scorer["logit_scale"]), logit_bias=float(scorer["logit_bias"]),
        splits=splits, metrics=metrics, image_encoder=images, text_encoder=texts,
    )
