"""The labels an annotator scores: the bundle's own, or text typed on the device.

Typed labels are embedded by the bundle's text encoder on the board itself, so a
user can ask for ``"red circle,blue star,cup"`` without retraining and without a
host.  A typed label that is also one of the bundle's labels keeps its
precomputed embedding and calibrated threshold; any other starts at the manifest's
``default_threshold``, raised where the bundle's reference images show it would fire
more often than the trained labels allow (:mod:`fuselite.runtime.typed_thresholds`).  A fixed-labels bundle
(``fuselite convert --fixed-labels``) has no text encoder: it scores any of its own
labels, and names them when asked for another.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fuselite.bundle import Bundle, BundleError
from fuselite.concepts import normalise_label, word_variants
from fuselite.errors import UserError
from fuselite.runtime.interpreter import TfliteModel
from fuselite.runtime.typed_thresholds import bounded_thresholds
from fuselite.tokenizer import Tokenizer, split_words

log = logging.getLogger(__name__)
FIXED_LABELS_LISTED = 30  # a 1000-class model's labels do not fit one line


@dataclass(frozen=True)
class LabelSet:
    """Label texts with their embeddings and thresholds.

    Attributes:
        labels: Label texts, in scoring order.
        embeddings: float32 ``[len(labels), embedding_dim]``, L2-normalised.
        thresholds: float32 ``[len(labels)]`` probability thresholds.
    """

    labels: tuple[str, ...]
    embeddings: np.ndarray
    thresholds: np.ndarray


def parse_label_text(text: str) -> tuple[str, ...]:
    """Splits ``"red circle, blue star,cup"`` into labels, dropping blanks and repeats."""
    labels = (part.strip() for part in text.split(","))
    return tuple(dict.fromkeys(label for label in labels if label))


def bundle_labels(bundle: Bundle) -> LabelSet:
    """The bundle's own labels with their precomputed embeddings and calibrated thresholds."""
    return LabelSet(
        labels=bundle.manifest.labels,
        embeddings=np.ascontiguousarray(bundle.label_embeddings, dtype=np.float32),
        thresholds=np.asarray(bundle.manifest.thresholds, dtype=np.float32),
    )


def typed_labels(bundle: Bundle, texts: Sequence[str], num_threads: int = 1) -> LabelSet:
    """Embeds ``texts`` with the bundle's text encoder; known labels reuse the bundle's data.

    A label none of whose words the vocabulary knows would get a meaningless score, so
    it is left out with a warning.

    Raises:
        ValueError: no label text is left to score.
    """
    texts = tuple(dict.fromkeys(t.strip() for t in texts if t.strip()))
    if bundle.concepts is not None:
        return concept_labels(bundle, texts)
    if bundle.manifest.label_source == "fixed":
        return own_labels(bundle, texts)
    known = {label: i for i, label in enumerate(bundle.manifest.labels)}
    read_as = {t: bundle_wording(bundle, t) for t in texts}
    texts = tuple(t for t in texts if read_as[t] in known or _has_known_word(bundle.tokenizer, read_as[t]))
    if not texts:
        raise ValueError(
            "none of the labels uses a word the bundle knows; its labels are: "
            + ", ".join(bundle.manifest.labels[:20])
        )
    new = list(dict.fromkeys(read_as[t] for t in texts if read_as[t] not in known))
    new_embeddings = embed_texts(bundle, new, num_threads) if new else {}
    new_thresholds = _typed_thresholds(bundle, new, new_embeddings)
    embeddings, thresholds = [], []
    for text in texts:
        wording = read_as[text]
        if wording in known:
            embeddings.append(bundle.label_embeddings[known[wording]])
            thresholds.append(bundle.manifest.thresholds[known[wording]])
        else:
            embeddings.append(new_embeddings[wording])
            thresholds.append(new_thresholds[wording])
    return LabelSet(
        texts, np.stack(embeddings).astype(np.float32), np.asarray(thresholds, np.float32)
    )


def _typed_thresholds(bundle: Bundle, wordings: list[str], embeddings: dict[str, np.ndarray]) -> dict[str, float]:
    """The default threshold of each new label, raised where the bundle's reference images
    show it would fire too often (:func:`fuselite.runtime.typed_thresholds.bounded_thresholds`)."""
    if not wordings:
        return {}
    matrix = np.stack([embeddings[wording] for wording in wordings])
    start = np.full(len(wordings), bundle.manifest.default_threshold, np.float32)
    return dict(zip(wordings, bounded_thresholds(bundle, wordings, matrix, start)))


def bundle_wording(bundle: Bundle, text: str) -> str:
    """``text`` in the words the bundle was trained on, the way people write labels.

    Case and a leading article go ("An Animal" -> "animal"), and a word the vocabulary
    lacks becomes its singular or plural when the vocabulary has that ("animal" ->
    "animals" for a model trained on "animals").  A label that then equals one of the
    bundle's own keeps its precomputed embedding and calibrated threshold.
    """
    if text in bundle.manifest.labels:
        return text
    vocabulary = set(bundle.tokenizer.vocab)
    words = [_known_form(word, vocabulary) for word in normalise_label(text).split()]
    wording = " ".join(words)
    if wording != text:
        log.info("label %r read as %r (the bundle's words)", text, wording)
    return wording


def _known_form(word: str, vocabulary: set[str]) -> str:
    """``word``, or the first of its singulars and plurals the vocabulary knows."""
    if word in vocabulary:
        return word
    return next((form for form in word_variants(word) if form in vocabulary), word)


def concept_labels(bundle: Bundle, texts: Sequence[str]) -> LabelSet:
    """Labels of a zero-shot bundle: each text becomes the classes it names or covers.

    Raises:
        ValueError: a label names no class (the message lists the closest known words,
            or the labels to choose from when the bundle has fixed labels).
    """
    if has_fixed_labels(bundle):
        _check_fixed_labels(bundle, texts)
    matrix = bundle.concepts.label_matrix(texts)
    for text, row in zip(texts, matrix):
        log.info("label %r covers %d classes", text, int(row.sum()))
    thresholds = np.full(len(texts), bundle.manifest.default_threshold, np.float32)
    return LabelSet(tuple(texts), matrix, thresholds)


def own_labels(bundle: Bundle, texts: Sequence[str]) -> LabelSet:
    """Labels of a fixed-labels bundle: each text must be one of its labels (case and a
    leading article aside), which keeps its precomputed embedding and threshold.

    Raises:
        UserError: a text is none of the bundle's labels (the message lists them).
    """
    own = {normalise_label(label): i for i, label in enumerate(bundle.manifest.labels)}
    unknown = [text for text in texts if normalise_label(text) not in own]
    if unknown:
        close = difflib.get_close_matches(normalise_label(unknown[0]), list(own), n=3)
        hint = f" (closest: {', '.join(bundle.manifest.labels[own[c]] for c in close)})" if close else ""
        raise fixed_labels_error(bundle, unknown[0], hint)
    rows = [own[normalise_label(text)] for text in texts]
    return LabelSet(tuple(texts), np.ascontiguousarray(bundle.label_embeddings[rows], dtype=np.float32),
                    np.asarray([bundle.manifest.thresholds[i] for i in rows], np.float32))


def has_fixed_labels(bundle: Bundle) -> bool:
    """Whether a bundle knows only its own labels: a fixed-labels bundle, or a concepts
    bundle whose index holds no word beyond them (``fuselite import``), so no other
    label text can be scored."""
    if bundle.manifest.label_source == "fixed":
        return True
    own = {normalise_label(label) for label in bundle.manifest.labels}
    return bundle.concepts is not None and set(bundle.concepts.phrases) <= own


def fixed_labels_error(bundle: Bundle, text: str, hint: str = "") -> UserError:
    """The one-line error for ``text``, which a bundle with fixed labels does not hold."""
    labels = bundle.manifest.labels
    listed = ", ".join(labels[:FIXED_LABELS_LISTED])
    more = f" (and {len(labels) - FIXED_LABELS_LISTED} more)" if len(labels) > FIXED_LABELS_LISTED else ""
    return UserError(f"label {text!r}: this bundle has fixed labels; choose from: {listed}{more}{hint}")


def _check_fixed_labels(bundle: Bundle, texts: Sequence[str]) -> None:
    """A :class:`UserError` naming the labels to choose from, for a text that is none of them."""
    unknown = [text for text in texts if not bundle.concepts.resolve(text)]
    if unknown:
        close = bundle.concepts.closest(unknown[0])
        raise fixed_labels_error(bundle, unknown[0], f" (closest: {', '.join(close)})" if close else "")


def _has_known_word(tokenizer: Tokenizer, text: str) -> bool:
    """Warns about unknown words; False when the label has no known word at all."""
    words = split_words(text)
    if not words:  # punctuation or symbols only: it would score as padding, like every such label
        log.warning("label %r left out: it has no word (letters or digits)", text)
        return False
    unknown = tokenizer.unknown_words(text)
    if not unknown:
        return True
    names = ", ".join(repr(w) for w in unknown)
    if len(unknown) == len(words):
        log.warning("label %r left out: the bundle's vocabulary knows none of its words", text)
        return False
    log.warning("label %r: the bundle's vocabulary does not know %s; ignored", text, names)
    return True


def embed_texts(
    bundle: Bundle, texts: Sequence[str], num_threads: int = 1
) -> dict[str, np.ndarray]:
    """Runs the bundle's text encoder on each text (unknown words map to the unknown id)."""
    encoder = TfliteModel(bundle.text_encoder_bytes, num_threads, name="text encoder")
    try:
        _check_text_encoder(encoder, bundle)
        return {text: _embed_one(encoder, bundle, text) for text in texts}
    finally:
        encoder.close()


def _embed_one(encoder: TfliteModel, bundle: Bundle, text: str) -> np.ndarray:
    ids = np.asarray([bundle.tokenizer.encode(text)], dtype=encoder.input.dtype)
    embedding = encoder.run(ids).reshape(-1).astype(np.float32)
    if not np.all(np.isfinite(embedding)):
        raise BundleError(f"text encoder returned NaN or infinity for label {text!r}")
    return embedding


def _check_text_encoder(encoder: TfliteModel, bundle: Bundle) -> None:
    expected_in = (1, bundle.tokenizer.max_length)
    expected_out = (1, bundle.manifest.embedding_dim)
    if encoder.input.shape != expected_in or encoder.input.dtype.kind not in "iu":
        raise BundleError(
            f"text encoder takes {encoder.input.dtype} {list(encoder.input.shape)}, but the "
            f"tokenizer gives int32 {list(expected_in)}"
        )
    if encoder.output.shape != expected_out or encoder.output.dtype != np.float32:
        raise BundleError(
            f"text encoder returns {encoder.output.dtype} {list(encoder.output.shape)}, but the "
            f"manifest's embedding_dim needs float32 {list(expected_out)}"
        )
    # The largest token id must index the encoder's word table, or GATHER fails mid-run.
    largest = np.full(expected_in, bundle.tokenizer.vocab_size - 1, dtype=encoder.input.dtype)
    try:
        encoder.run(largest)
    except (RuntimeError, ValueError):
        raise BundleError(
            f"the tokenizer has {bundle.tokenizer.vocab_size} words but the text encoder's word "
            "table is smaller; re-convert the bundle"
        ) from None
