"""The concept index: free-text labels -> ImageNet classes, with no WordNet on the board.

A zero-shot bundle scores a label by summing an ImageNet classifier's probabilities
over the classes the label names or that fall under it in WordNet ("cat" -> tabby,
Persian, Siamese, ...; "vehicle" -> sports car, school bus, ...).  The host builds
the mapping once (:mod:`fuselite.convert.concepts_build`) and the bundle carries it
as compact JSON; the board only looks typed labels up in it.

Example::

    index = ConceptIndex.from_json(data)
    index.resolve("the Cats")            # -> (281, 282, 283, ...)
    matrix = index.label_matrix(["cat", "vehicle"])   # [2, 1000] multi-hot
    scores = matrix @ probabilities                   # one score per label

This module imports only numpy and the standard library: it runs on the board.
"""

from __future__ import annotations

import difflib
import itertools
import json
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fuselite.errors import UserError

logger = logging.getLogger(__name__)

FORMAT_NAME = "fuselite.concepts"
FORMAT_VERSION = 1
MAX_JSON_BYTES = 8 * 1024 * 1024
MAX_PHRASE_CHARS = 200

_ARTICLES = ("a", "an", "the", "some")
_SIBILANT_ENDINGS = ("s", "x", "z", "ch", "sh")
# A hyphen or underscore joins words; a period or apostrophe is dropped so that
# "St. Bernard" and "st bernard", "jack-o'-lantern" and "jack o lantern" meet.
_SEPARATORS = re.compile(r"[_\-\s]+")
_DROPPED = re.compile(r"[.'\u2019]")


class ConceptIndexError(ValueError):
    """Concept-index JSON that cannot be used; the message says what is wrong."""


def normalise_label(text: str) -> str:
    """Return the lookup form of a label: ``"The Golden_Retriever"`` -> ``"golden retriever"``.

    Lowercases, turns underscores and hyphens into spaces, drops periods and
    apostrophes, collapses whitespace, and strips one leading article ("a", "an",
    "the", "some") when words follow it.
    """
    words = _SEPARATORS.sub(" ", _DROPPED.sub("", text.lower())).split()
    if len(words) > 1 and words[0] in _ARTICLES:
        words = words[1:]
    return " ".join(words)


def singular_forms(phrase: str) -> list[str]:
    """Return candidate singulars of a normalised phrase's last word, most specific first.

    Regular English only ("berries" -> "berry", "knives" -> "knife", "dishes" ->
    "dish", "animals" -> "animal"); irregular plurals ("mice", "geese") are stored
    in the index itself, taken from WordNet's exception list.
    """
    candidates = []
    if phrase.endswith("ies") and len(phrase) > 4:
        candidates.append(phrase[:-3] + "y")
    if phrase.endswith("ves") and len(phrase) > 4:
        candidates += [phrase[:-3] + "fe", phrase[:-3] + "f"]
    if phrase.endswith("es") and phrase[:-2].endswith(_SIBILANT_ENDINGS):
        candidates.append(phrase[:-2])
    if phrase.endswith("s") and not phrase.endswith("ss") and len(phrase) > 3:
        candidates.append(phrase[:-1])
    return candidates


def plural_forms(word: str) -> list[str]:
    """Return candidate plurals of a word, most likely first ("box" -> "boxes", "berry" ->
    "berries", "car" -> "cars"); regular English only."""
    if word.endswith(_SIBILANT_ENDINGS):
        return [word + "es"]
    if word.endswith("y") and len(word) > 2 and word[-2] not in "aeiou":
        return [word[:-1] + "ies", word + "s"]
    return [word + "s"]


def word_variants(word: str) -> list[str]:
    """The word's regular singulars and plurals, to meet a vocabulary that has the other form."""
    return [*singular_forms(word), *plural_forms(word)]


@dataclass(frozen=True, eq=True)
class ConceptIndex:
    """Which ImageNet classes each known phrase covers, plus a display name per class.

    Attributes:
        phrases: Normalised phrase (:func:`normalise_label`) -> sorted, distinct
            class indices the phrase names or that fall under it.
        class_names: One display name per class, in class-index order.
    """

    phrases: dict[str, tuple[int, ...]]
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        _check_class_names(self.class_names)
        for phrase, classes in self.phrases.items():
            _check_phrase(phrase, classes, len(self.class_names))

    @property
    def num_classes(self) -> int:
        """How many classes the classifier has (the label matrix's width)."""
        return len(self.class_names)

    def resolve(self, text: str) -> tuple[int, ...]:
        """Return the classes a label covers, or ``()`` when it names none.

        Tries the normalised text, then its regular singular forms ("buses" -> "bus").
        """
        phrase = normalise_label(text)
        for candidate in [phrase, *singular_forms(phrase)]:
            classes = self.phrases.get(candidate)
            if classes:
                return classes
        return ()

    def closest(self, text: str, n: int = 3) -> list[str]:
        """Return up to ``n`` known phrases spelled most like ``text`` (for error messages)."""
        return difflib.get_close_matches(normalise_label(text), self.phrases, n=n, cutoff=0.6)

    def resolve_all(self, labels: Sequence[str]) -> list[tuple[int, ...]]:
        """Resolve every label, raising :class:`UserError` for the first that names nothing."""
        resolved = []
        for label in labels:
            classes = self.resolve(label)
            if not classes:
                raise UserError(self._unknown_message(label))
            resolved.append(classes)
        return resolved

    def label_matrix(self, labels: Sequence[str]) -> np.ndarray:
        """Return float32 ``[len(labels), num_classes]``: 1 where a label covers a class.

        A label's score is then ``matrix @ probabilities`` (the sum of its classes'
        probabilities).  Raises :class:`UserError` for a label that names no class.
        """
        matrix = np.zeros((len(labels), self.num_classes), dtype=np.float32)
        for row, classes in enumerate(self.resolve_all(labels)):
            matrix[row, list(classes)] = 1.0
        return matrix

    def class_names_for(self, text: str) -> list[str]:
        """Return the display names of the classes a label covers (for logs and reports)."""
        return [self.class_names[i] for i in self.resolve(text)]

    def to_json(self) -> bytes:
        """Serialise compactly: each distinct class list is stored once and phrases point at it."""
        set_ids: dict[tuple[int, ...], int] = {}
        phrase_refs = {}
        for phrase in sorted(self.phrases):
            classes = self.phrases[phrase]
            phrase_refs[phrase] = set_ids.setdefault(classes, len(set_ids))
        document = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "class_names": list(self.class_names),
            "class_sets": [_delta_encode(classes) for classes in set_ids],
            "phrases": phrase_refs,
        }
        data = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        logger.debug("concept index: %d phrases, %d class sets, %d bytes",
                     len(phrase_refs), len(set_ids), len(data))
        return data

    @classmethod
    def from_json(cls, data: bytes) -> ConceptIndex:
        """Read :meth:`to_json` output, refusing anything malformed with :class:`ConceptIndexError`."""
        document = _load_document(data)
        class_names = tuple(document["class_names"])
        _check_class_names(class_names)
        class_sets = _decode_class_sets(document["class_sets"], len(class_names))
        phrases = {}
        for phrase, ref in _check_refs(document["phrases"], len(class_sets)):
            phrases[phrase] = class_sets[ref]
        return cls(phrases=phrases, class_names=class_names)

    def _unknown_message(self, label: str) -> str:
        close = self.closest(label, n=5)
        if close:
            return f"{label!r} names no ImageNet class; closest known words: {', '.join(close)}"
        return (f"{label!r} names no ImageNet class; try a broader word such as "
                "animal, dog, vehicle, food, furniture or musical instrument")


def _delta_encode(classes: Iterable[int]) -> list[int]:
    """Sorted indices -> first index then gaps (small numbers keep the JSON short)."""
    previous, gaps = 0, []
    for index in classes:
        gaps.append(index - previous)
        previous = index
    return gaps


def _load_document(data: bytes) -> dict[str, Any]:
    """Parse the JSON envelope and check its format, version and member types."""
    if not isinstance(data, (bytes, bytearray)):
        raise ConceptIndexError(f"concept index must be bytes, not {type(data).__name__}")
    if len(data) > MAX_JSON_BYTES:
        raise ConceptIndexError(f"concept index is {len(data)} bytes; at most {MAX_JSON_BYTES}")
    try:
        document = json.loads(bytes(data).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ConceptIndexError(f"concept index is not UTF-8 JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ConceptIndexError("concept index must be a JSON object")
    if document.get("format") != FORMAT_NAME or document.get("version") != FORMAT_VERSION:
        raise ConceptIndexError(f"concept index is not {FORMAT_NAME} version {FORMAT_VERSION}")
    expected = {"class_names": list, "class_sets": list, "phrases": dict}
    for key, kind in expected.items():
        if not isinstance(document.get(key), kind):
            raise ConceptIndexError(f"concept index field {key!r} must be a JSON {kind.__name__}")
    return document


def _decode_class_sets(raw_sets: list[Any], num_classes: int) -> list[tuple[int, ...]]:
    """Undo :func:`_delta_encode`, checking every entry is a non-empty list of ints."""
    class_sets = []
    for position, gaps in enumerate(raw_sets):
        if not isinstance(gaps, list) or not gaps or not all(_is_int(g) for g in gaps):
            raise ConceptIndexError(f"concept index class_sets[{position}] must be a "
                                    "non-empty list of integers")
        classes = tuple(itertools.accumulate(gaps))
        if classes[0] < 0 or any(g <= 0 for g in gaps[1:]) or classes[-1] >= num_classes:
            raise ConceptIndexError(f"concept index class_sets[{position}] is not a sorted "
                                    f"set of classes below {num_classes}")
        class_sets.append(classes)
    return class_sets


def _check_refs(refs: dict[Any, Any], num_sets: int) -> Iterable[tuple[str, int]]:
    """Yield ``(phrase, set index)`` pairs after checking each reference is in range."""
    for phrase, ref in refs.items():
        if not _is_int(ref) or not 0 <= ref < num_sets:
            raise ConceptIndexError(f"concept index phrase {phrase!r} points at no class set")
        yield phrase, ref


def _check_class_names(class_names: tuple[Any, ...]) -> None:
    """Refuse an empty class list or a class name that is not a string."""
    if not class_names:
        raise ConceptIndexError("concept index has no class names")
    if not all(isinstance(name, str) for name in class_names):
        raise ConceptIndexError("concept index class names must be strings")


def _check_phrase(phrase: Any, classes: Any, num_classes: int) -> None:
    """Refuse a phrase not in normalised form or a class list that is not sorted and in range."""
    if not isinstance(phrase, str) or not phrase or len(phrase) > MAX_PHRASE_CHARS:
        raise ConceptIndexError(f"concept index phrase {phrase!r} must be a short string")
    if normalise_label(phrase) != phrase:
        raise ConceptIndexError(f"concept index phrase {phrase!r} is not normalised")
    if not isinstance(classes, tuple) or not classes or not all(_is_int(c) for c in classes):
        raise ConceptIndexError(f"concept index phrase {phrase!r} needs a tuple of class indices")
    if list(classes) != sorted(set(classes)) or classes[0] < 0 or classes[-1] >= num_classes:
        raise ConceptIndexError(f"concept index phrase {phrase!r} has classes that are not "
                                f"sorted, distinct and below {num_classes}")


def _is_int(value: Any) -> bool:
    """True for a JSON integer (``bool`` is an ``int`` subclass but not a class index)."""
    return isinstance(value, int) and not isinstance(value, bool)
