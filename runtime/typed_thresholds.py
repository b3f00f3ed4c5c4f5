"""Thresholds of labels typed on the board, bounded by how often the trained labels fire.

A label the bundle was not trained on starts at the manifest's ``default_threshold``,
one threshold for every phrase.  A phrase made of known words can sit close to
everything in the joint space and then fire on most frames.  A bundle written by
``fuselite convert`` carries a few validation images as its image model embeds them
(``reference_embeddings.npy``, :class:`fuselite.bundle.ReferenceSet`); on them the
board counts how often each trained label fires at its calibrated threshold, and how
often the typed phrase would fire at the default.  A phrase may fire on at most as
many reference images as the rarest trained label whose words it contains (a "green
star" is never more common than "green" or "star"), or, containing none, as the most
frequent trained label; when it would fire on more, its threshold is raised until it
does not.  It is never lowered, and each raise is logged in one line.

Bundles without reference images (written before them, zero-shot and fixed-labels
bundles) keep the default threshold.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fuselite.bundle import Bundle
from fuselite.concepts import normalise_label
from fuselite.scoring import label_probabilities
from fuselite.tokenizer import split_words

log = logging.getLogger(__name__)
SCORE_CHUNK = 1 << 20  # similarities computed at once (4 MB): a bundle may have 10,000 labels


@dataclass(frozen=True)
class FiringBound:
    """How many reference images a typed label may fire on, and the trained label that says so.

    Attributes:
        images: The most reference images it may fire on.
        label: The trained label the bound comes from.
        contained: True when ``label`` is the rarest trained label whose words the typed
            label contains; False when it contains none and ``label`` is the most frequent.
    """

    images: int
    label: str
    contained: bool


def label_words(text: str) -> frozenset[str]:
    """The words of a label as the bundle reads them (case and a leading article aside)."""
    return frozenset(split_words(normalise_label(text)))


def firing_bound(words: frozenset[str], trained: Sequence[str], fired: np.ndarray) -> FiringBound:
    """The bound of a typed label made of ``words``, from the ``trained`` labels' firing
    counts ``fired`` on the reference images; at least one image, the sampling's resolution."""
    inside = [i for i, label in enumerate(trained) if label_words(label) <= words]
    if inside:
        rarest = min(inside, key=lambda i: fired[i])
        return FiringBound(max(int(fired[rarest]), 1), trained[rarest], True)
    busiest = int(np.argmax(fired))
    return FiringBound(max(int(fired[busiest]), 1), trained[busiest], False)


def threshold_for(scores: np.ndarray, threshold: float, allowed: int) -> float:
    """A threshold, not below ``threshold``, at which at most ``allowed`` of ``scores``
    reach it (a label fires when its score is at least its threshold): midway between
    the last score kept and the first left out, so neither sits on the edge."""
    ranked = np.sort(np.asarray(scores, np.float32))[::-1]
    allowed = max(int(allowed), 0)
    if allowed >= len(ranked) or ranked[allowed] < threshold:
        return float(threshold)
    first_out = ranked[allowed]
    raised = np.nextafter(first_out, np.float32(2))  # just above it: ties leave with it
    if allowed > 0 and ranked[allowed - 1] > raised:
        raised = (ranked[allowed - 1] + first_out) / np.float32(2)
    return float(min(max(raised, np.float32(threshold)), np.float32(1.0)))


def bounded_thresholds(
    bundle: Bundle, wordings: Sequence[str], embeddings: np.ndarray, thresholds: np.ndarray
) -> np.ndarray:
    """``thresholds`` of the typed labels ``wordings`` (their texts in the bundle's words,
    embedded as ``embeddings``), each raised where the reference images call for it.

    Returns a copy; the same values when the bundle carries no reference images.
    """
    reference = bundle.reference_embeddings
    thresholds = np.array(thresholds, dtype=np.float32)
    if reference is None or not len(wordings):
        return thresholds
    manifest = bundle.manifest
    fired = firing_counts(reference, bundle.label_embeddings, manifest)
    typed = label_probabilities(reference, embeddings, manifest.logit_scale, manifest.logit_bias)
    for j, wording in enumerate(wordings):
        bound = firing_bound(label_words(wording), manifest.labels, fired)
        raised = threshold_for(typed[:, j], float(thresholds[j]), bound.images)
        if raised > thresholds[j]:
            _log_raise(
                wording,
                float(thresholds[j]),
                raised,
                int((typed[:, j] >= thresholds[j]).sum()),
                len(reference),
                bound,
            )
            thresholds[j] = raised
    return thresholds


def firing_counts(reference: np.ndarray, label_embeddings: np.ndarray, manifest) -> np.ndarray:
    """How many of the ``reference`` images each trained label fires on at its calibrated
    threshold, scored a few images at a time."""
    images, cells = reference.shape[:2]
    step = max(1, SCORE_CHUNK // max(cells * len(label_embeddings), 1))
    thresholds = np.asarray(manifest.thresholds, np.float32)
    counts = np.zeros(len(label_embeddings), np.int64)
    for start in range(0, images, step):
        chunk = reference[start : start + step]
        scores = label_probabilities(
            chunk, label_embeddings, manifest.logit_scale, manifest.logit_bias
        )
        counts += (scores >= thresholds).sum(axis=0)
    return counts


def _log_raise(
    wording: str, old: float, new: float, fired: int, images: int, bound: FiringBound
) -> None:
    why = (
        "the rarest trained label among its words"
        if bound.contained
        else "the most frequent trained label"
    )
    log.info(
        "label %r: threshold %.3f -> %.3f: at %.3f it fired on %d of %d reference images, more than "
        "%r (%d), %s",
        wording,
        old,
        new,
        old,
        fired,
        images,
        bound.label,
        bound.images,
        why,
    )
