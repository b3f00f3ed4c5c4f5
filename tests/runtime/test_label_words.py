"""Typed labels at run time: a label with no word the bundle knows is left out with a warning,
also when it has no word at all (punctuation, emoji) or is in a script the vocabulary lacks."""

from __future__ import annotations

import logging

from fuselite.bundle import read_bundle
from fuselite.runtime.labels import typed_labels


def test_labels_without_a_known_word_are_left_out_with_a_warning(colour_bundles, caplog):
    bundle = read_bundle(colour_bundles["fp32"])
    with caplog.at_level(logging.WARNING):
        labels = typed_labels(bundle, ["red", "猫", "!!!"])
    assert labels.labels == ("red",)
    assert "'猫' left out" in caplog.text and "'!!!' left out" in caplog.text
