"""``fuselite train --init-from RUN``: start from an earlier run's towers, with new data.

The new run keeps the earlier run's architecture (backbone, input size, widths,
embedding sizes, scoring), so every weight has a place to go.  Its labels are the
earlier run's followed by the new data's, and its vocabulary keeps every earlier
word at the same id, so the text tower's word table grows by new rows and the
earlier rows load as they are: a label the earlier run knew still embeds as it did
before the first step.  Earlier labels that the new data never tags are trained as
absent from the new pictures; tag them where they appear.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from fuselite.tokenizer import PAD, UNK, Tokenizer, split_words
from fuselite.train.configs import TrainConfig

log = logging.getLogger(__name__)

# The fields that make up the towers; they come from the earlier run.
ARCHITECTURE_FIELDS = (
    "backbone", "image_size", "width", "blocks", "pooling", "scoring", "embed_dim", "text_embed_dim",
    "text_hidden", "max_text_length", "residual", "activation", "squeeze_excite",
)


def inherit_architecture(config: TrainConfig, earlier: TrainConfig) -> TrainConfig:
    """``config`` with the earlier run's architecture (its data and schedule stay)."""
    changed = {name: getattr(earlier, name) for name in ARCHITECTURE_FIELDS
               if getattr(earlier, name) != getattr(config, name)}
    if changed:
        log.info("--init-from: keeping the earlier run's %s", ", ".join(f"{k}={v}" for k, v in changed.items()))
    return config.with_overrides(**changed)


def merged_labels(earlier: list[str], new: list[str]) -> list[str]:
    """The earlier run's labels in their order, then the new data's that are new."""
    known = set(earlier)
    return [*earlier, *(label for label in new if label not in known)]


def merged_tokenizer(earlier: Tokenizer, texts: list[str]) -> Tokenizer:
    """The earlier vocabulary, ids unchanged, then every new word of ``texts`` (sorted)."""
    known = set(earlier.vocab)
    new_words = sorted({w for text in texts for w in split_words(text)} - known - {PAD, UNK})
    return Tokenizer(vocab=(*earlier.vocab, *new_words), max_length=earlier.max_length)


def load_earlier_weights(model, earlier_run) -> None:
    """Copies the earlier run's towers and scorer into ``model`` (built for the merged vocabulary).

    Every weight has the same shape except the word table, whose earlier rows are
    copied and whose new rows keep their fresh initialisation.
    """
    model.image_encoder.set_weights(earlier_run.image_encoder.get_weights())
    for layer, old in zip(model.text_encoder.layers, earlier_run.text_encoder.layers):
        weights = layer.get_weights()
        if layer.name == "words":
            table = weights[0].copy()
            rows = old.get_weights()[0]
            table[: len(rows)] = rows
            layer.set_weights([table])
        elif weights:
            layer.set_weights(old.get_weights())
    model.log_scale.assign(np.log(max(earlier_run.logit_scale, 1e-3)))
    model.logit_bias.assign(earlier_run.logit_bias)
    log.info("--init-from %s: towers and scorer loaded (%d earlier words, %d in all)",
             earlier_run.run_dir, earlier_run.tokenizer.vocab_size, model.text_encoder.get_layer("words").input_dim)


def load_earlier_run(path: str | Path):
    """The finished run named by ``--init-from`` (UserError when it is not one)."""
    from fuselite.train.run import load_run

    return load_run(Path(path))
