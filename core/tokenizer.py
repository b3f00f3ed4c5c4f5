"""The project's own word tokenizer, shared by training and the device.

It is deliberately tiny and deterministic: normalise to NFKC and case-fold, split on
anything that is not a letter, digit or combining mark, make each Chinese/Japanese
ideograph a word of its own (they are written without spaces), and map each word to
an id from a saved vocabulary.  ASCII text splits exactly as it always did (runs of
``[a-z0-9]`` after lower-casing), so existing vocabularies keep their ids.  No
TensorFlow string ops are involved, so the exported graphs take integer ids and
the board tokenizes label text with the very same code.

Example:
    >>> tok = Tokenizer.fit(["a red circle", "a blue star"], max_length=4)
    >>> tok.encode("Red star")
    [5, 6, 0, 0]
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PAD = "<pad>"
UNK = "<unk>"
_ASCII_WORD = re.compile(r"[a-z0-9]+")
# CJK Unified Ideographs and their extensions and compatibility forms (as BERT's
# basic tokenizer): each one is a word, since these scripts put no spaces between words.
_IDEOGRAPHS = (
    (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF),
    (0x20000, 0x2A6DF), (0x2A700, 0x2CEAF), (0x2F800, 0x2FA1F), (0x30000, 0x323AF),
)


def split_words(text: str) -> list[str]:
    """Returns the words of ``text``: NFKC, case-folded, runs of letters, digits and marks.

    ``"Café crème"`` -> ``["café", "crème"]``; ``"黑猫"`` -> ``["黑", "猫"]``;
    ``"Red-star, 2 cups!"`` -> ``["red", "star", "2", "cups"]``.
    """
    text = unicodedata.normalize("NFKC", text).casefold()
    if text.isascii():  # the common case, and the rule every ASCII vocabulary was built with
        return _ASCII_WORD.findall(text)
    words: list[str] = []
    current: list[str] = []
    for char in text:
        if _is_ideograph(char):
            words += ["".join(current), char] if current else [char]
            current = []
        elif char.isalnum() or (current and unicodedata.category(char).startswith("M")):
            current.append(char)  # a mark (accent, vowel sign) belongs to the letter before it
        elif current:
            words.append("".join(current))
            current = []
    if current:
        words.append("".join(current))
    return words


def _is_ideograph(char: str) -> bool:
    """True for a CJK ideograph."""
    point = ord(char)
    return any(low <= point <= high for low, high in _IDEOGRAPHS)


@dataclass(frozen=True)
class Tokenizer:
    """Maps label text to fixed-length integer ids.

    Attributes:
        vocab: Words by id. Id 0 is padding and id 1 stands for unknown words.
        max_length: Every encoding is padded or cut to this many ids.
    """

    vocab: tuple[str, ...]
    max_length: int = 8

    def __post_init__(self) -> None:
        if len(self.vocab) < 2 or self.vocab[0] != PAD or self.vocab[1] != UNK:
            raise ValueError(f"vocabulary must start with {PAD!r} and {UNK!r}")
        if self.max_length < 1:
            raise ValueError("max_length must be at least 1")
        object.__setattr__(self, "_ids", {w: i for i, w in enumerate(self.vocab)})

    @classmethod
    def fit(cls, texts: Iterable[str], max_length: int = 8) -> Tokenizer:
        """Builds a vocabulary from ``texts``: every word seen, sorted, so it is deterministic."""
        words = sorted({w for text in texts for w in split_words(text)})
        return cls(vocab=(PAD, UNK, *words), max_length=max_length)

    @property
    def vocab_size(self) -> int:
        """The number of ids, padding and unknown included."""
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        """Returns ``max_length`` ids for ``text``; unknown words map to id 1."""
        ids = [self._ids.get(w, 1) for w in split_words(text)][: self.max_length]
        return ids + [0] * (self.max_length - len(ids))

    def encode_batch(self, texts: Sequence[str]) -> np.ndarray:
        """Encodes several texts into an int32 array of shape ``[len(texts), max_length]``."""
        return np.array([self.encode(t) for t in texts], dtype=np.int32).reshape(
            len(texts), self.max_length
        )

    def unknown_words(self, text: str) -> list[str]:
        """Returns the words of ``text`` that the vocabulary does not know."""
        return [w for w in split_words(text) if w not in self._ids]

    def to_dict(self) -> dict:
        """A JSON-ready form, the one stored in run directories and bundles."""
        return {"type": "word", "max_length": self.max_length, "vocab": list(self.vocab)}

    @classmethod
    def from_dict(cls, data: dict) -> Tokenizer:
        """Rebuilds a tokenizer saved by :meth:`to_dict`, validating its fields."""
        if not isinstance(data, dict) or data.get("type") != "word":
            raise ValueError("tokenizer must be a mapping with type 'word'")
        vocab, max_length = data.get("vocab"), data.get("max_length")
        if not isinstance(vocab, list) or not all(isinstance(w, str) for w in vocab):
            raise ValueError("tokenizer vocab must be a list of strings")
        if not isinstance(max_length, int) or not 1 <= max_length <= 256:
            raise ValueError("tokenizer max_length must be an integer from 1 to 256")
        return cls(vocab=tuple(vocab), max_length=max_length)

    def save(self, path: Path) -> None:
        """Writes the tokenizer as JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: Path) -> Tokenizer:
        """Reads a tokenizer written by :meth:`save`."""
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
