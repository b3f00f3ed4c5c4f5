"""The word tokenizer the host and the board share (``fuselite.tokenizer``)."""

from __future__ import annotations

import numpy as np
import pytest

from fuselite.tokenizer import PAD, UNK, Tokenizer, split_words


@pytest.fixture
def tokenizer() -> Tokenizer:
    # vocab: <pad> <unk> a blue circle red star
    return Tokenizer.fit(["a red circle", "a blue star"], max_length=4)


def test_vocabulary_is_padding_unknown_then_every_word_sorted(tokenizer):
    assert tokenizer.vocab == (PAD, UNK, "a", "blue", "circle", "red", "star")
    assert tokenizer.vocab_size == 7


def test_fitting_does_not_depend_on_the_order_of_the_texts():
    texts = ["a red circle", "a blue star", "green square"]
    assert Tokenizer.fit(texts) == Tokenizer.fit(list(reversed(texts)))


def test_encode_maps_words_to_ids_and_pads_to_max_length(tokenizer):
    assert tokenizer.encode("Red star") == [5, 6, 0, 0]
    assert tokenizer.encode("") == [0, 0, 0, 0]


def test_ids_decode_back_to_the_words_through_the_vocabulary(tokenizer):
    ids = tokenizer.encode("a blue circle")
    assert [tokenizer.vocab[i] for i in ids] == ["a", "blue", "circle", PAD]


def test_case_and_punctuation_do_not_matter(tokenizer):
    assert tokenizer.encode("RED, star!") == tokenizer.encode("red star")
    assert split_words("Red-star, 2 cups!") == ["red", "star", "2", "cups"]


def test_unknown_words_become_id_1_and_are_reported(tokenizer):
    assert tokenizer.encode("purple star") == [1, 6, 0, 0]
    assert tokenizer.unknown_words("a purple star, teal") == ["purple", "teal"]
    assert tokenizer.unknown_words("a red star") == []


def test_long_text_is_cut_to_max_length(tokenizer):
    assert tokenizer.encode("a red circle a blue star") == [2, 5, 4, 2]


def test_encode_batch_is_int32_rows_of_max_length(tokenizer):
    batch = tokenizer.encode_batch(["red star", "purple"])
    assert batch.dtype == np.int32 and batch.shape == (2, 4)
    assert batch.tolist() == [[5, 6, 0, 0], [1, 0, 0, 0]]
    assert tokenizer.encode_batch([]).shape == (0, 4)


def test_dict_and_file_round_trips_give_the_same_tokenizer(tokenizer, tmp_path):
    assert Tokenizer.from_dict(tokenizer.to_dict()) == tokenizer
    tokenizer.save(tmp_path / "tokenizer.json")
    assert Tokenizer.load(tmp_path / "tokenizer.json") == tokenizer
    assert Tokenizer.load(tmp_path / "tokenizer.json").encode("red star") == [5, 6, 0, 0]


@pytest.mark.parametrize("data", [
    None,
    {"type": "bpe", "max_length": 4, "vocab": [PAD, UNK]},
    {"type": "word", "max_length": 4, "vocab": "abc"},
    {"type": "word", "max_length": 4, "vocab": [PAD, UNK, 3]},
    {"type": "word", "max_length": 0, "vocab": [PAD, UNK]},
    {"type": "word", "max_length": 257, "vocab": [PAD, UNK]},
    {"type": "word", "max_length": "4", "vocab": [PAD, UNK]},
    {"type": "word", "max_length": 4, "vocab": [UNK, PAD, "a"]},
    {"type": "word", "max_length": 4, "vocab": [PAD]},
])
def test_malformed_saved_tokenizers_are_refused(data):
    with pytest.raises(ValueError):
        Tokenizer.from_dict(data)


def test_max_length_must_be_positive():
    with pytest.raises(ValueError, match="max_length"):
        Tokenizer(vocab=(PAD, UNK, "a"), max_length=0)


def test_non_latin_words_are_words():
    assert split_words("猫") == ["猫"] and split_words("犬") == ["犬"]
    assert split_words("кошка, Собака!") == ["кошка", "собака"]
    tok = Tokenizer.fit(["猫", "犬"])
    assert tok.encode("猫") != tok.encode("犬") and tok.unknown_words("猫") == []


def test_accented_letters_stay_in_their_word():
    assert split_words("Café crème") == ["café", "crème"]
    assert split_words("cafe\u0301") == ["café"]  # decomposed e + combining accent: one word, NFC form
    assert split_words("हिन्दी") == ["हिन्दी"]  # vowel signs and the virama are marks inside the word


def test_compatibility_forms_and_case_folding_give_one_spelling():
    assert split_words("ＲＥＤ Straße") == ["red", "strasse"]  # full-width letters, German sharp s
    assert split_words("ﬁsh") == ["fish"]  # the ligature


def test_chinese_and_japanese_ideographs_are_one_word_each():
    assert split_words("黑猫") == ["黑", "猫"]
    assert split_words("black猫") == ["black", "猫"]


def test_ascii_text_splits_exactly_as_before():
    # The old rule, kept for every ASCII text: lower-case, runs of [a-z0-9].
    import re

    texts = ["Red-star, 2 cups!", "snake_case and CamelCase", "a\tb\nc", "x1y2 Z3", "__init__"]
    for text in texts:
        assert split_words(text) == re.findall(r"[a-z0-9]+", text.lower())
