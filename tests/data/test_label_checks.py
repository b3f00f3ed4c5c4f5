"""Training labels are checked before anything is written: a bundle must be able to hold them,
and the tokenizer must tell them apart (``fuselite.data.sources``)."""

from __future__ import annotations

import logging

import pytest

from fuselite.bundle import MAX_LABEL_CHARS
from fuselite.data.sources import check_label_texts, warn_unreadable_labels
from fuselite.errors import UserError
from fuselite.tokenizer import Tokenizer


def test_a_label_longer_than_a_bundle_holds_is_one_clear_error():
    long_tag = "a very long tag " * 19  # 304 characters
    with pytest.raises(UserError, match=f"longer than {MAX_LABEL_CHARS} characters"):
        check_label_texts(["cat", long_tag])
    with pytest.raises(UserError, match="1 label"):  # a tag only in validation or test counts too
        check_label_texts(["cat"], other_tags=[long_tag])
    check_label_texts(["cat", "x" * MAX_LABEL_CHARS])  # the limit itself is fine


def test_labels_with_no_readable_word_are_warned_about(caplog):
    labels = ["!!!", "???", "cat"]
    with caplog.at_level(logging.WARNING):
        warn_unreadable_labels(labels, Tokenizer.fit(labels))
    assert "2 label(s) have no word" in caplog.text and "'!!!'" in caplog.text


def test_labels_the_tokenizer_reads_as_the_same_words_are_warned_about(caplog):
    labels = ["red-car", "Red car", "dog"]
    with caplog.at_level(logging.WARNING):
        warn_unreadable_labels(labels, Tokenizer.fit(labels))
    assert "'red-car' and 'Red car'" in caplog.text


def test_non_latin_labels_are_neither_empty_nor_the_same(caplog):
    labels = ["猫", "犬", "café"]
    tokenizer = Tokenizer.fit(labels)
    with caplog.at_level(logging.WARNING):
        warn_unreadable_labels(labels, tokenizer)
    assert caplog.text == ""
    assert len({tuple(tokenizer.encode(label)) for label in labels}) == 3
