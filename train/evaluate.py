"""Test-split metrics of a trained fused model, written to ``metrics.json``.

Scores are computed exactly as the device computes them: embeddings from the two
towers, then ``sigmoid(scale * <image, text> + bias)`` (see ``fuselite.scoring``).
"""

from __future__ import annotations

import numpy as np

from fuselite import metrics as m
from fuselite.data.dataset import ImageTextData
from fuselite.maps import cam_cells, pointing_game
from fuselite.scoring import global_embedding, label_probabilities
from fuselite.tokenizer import Tokenizer
from fuselite.train.model import mirror_averaged, with_label_map
from fuselite.train.pipeline import RunData, embed_images, embed_texts


def label_scores(model, tokenizer: Tokenizer, texts: list[str], images: np.ndarray, image_encoder=None) -> np.ndarray:
    """Probabilities ``[len(images), len(texts)]`` that each text applies to each image.

    ``image_encoder`` replaces the model's own tower (e.g. its mirror-averaged wrapper).
    """
    image_emb = embed_images(image_encoder or model.image_encoder, images)
    text_emb = embed_texts(model.text_encoder, tokenizer, texts)
    scale, bias = model.logit_scale_value(), float(model.logit_bias.numpy())
    return label_probabilities(image_emb, text_emb, scale, bias)


def evaluate(model, tokenizer: Tokenizer, labels: list[str], data: RunData) -> dict:
    """Metrics on the test split; thresholds are calibrated on validation.

    Returns ``task``, ``top1`` and ``true_label_probability`` (single-label) or ``mAP`` and ``micro_f1``
    (multi-label), the same metric scored with mirror averaging (``top1_mirror`` or
    ``mAP_mirror``) for runs trained with flips, caption retrieval recall when captions exist,
    ``heldout_combo_ap`` when held-out scenes exist, the pointing game of a regional
    model on data whose objects are known (:func:`pointing_metrics`), and the ``thresholds``.
    """
    val_scores = label_scores(model, tokenizer, labels, data.val.images)
    thresholds = m.calibrate_thresholds(val_scores, data.val.multi_hot(labels))
    test_scores = label_scores(model, tokenizer, labels, data.test.images)
    targets = data.test.multi_hot(labels)
    results: dict = {"task": data.test.task, "thresholds": thresholds.tolist()}
    if data.test.task == "single":
        results["top1"] = m.top1_accuracy(test_scores, targets)
        # What a device shows next to the right label: the sigmoid is calibrated too.
        results["true_label_probability"] = round(float(test_scores[targets > 0].mean()), 4)
    else:
        results["mAP"] = m.mean_average_precision(test_scores, targets)
        results["micro_f1"] = m.micro_f1(test_scores, targets, thresholds)
    if model.config.augment and model.config.flip:
        results.update(mirror_metric(model, tokenizer, labels, data.test))
    if data.test.has_captions:
        results.update(_caption_recall(model, tokenizer, data.test))
    if data.heldout is not None:
        results.update(heldout_combo_ap(model, tokenizer, labels, data.test, data.heldout))
    results.update(pointing_metrics(model, tokenizer, labels, data.test, data.heldout))
    return results


def pointing_metrics(model, tokenizer: Tokenizer, labels: list[str], test: ImageTextData,
                     heldout: ImageTextData | None) -> dict:
    """The pointing game of the model's label heatmaps (:func:`fuselite.maps.pointing_game`).

    ``pointing_game`` over the test images and the trained labels, and
    ``pointing_game_heldout`` over the held-out scenes and the held-out phrases (never
    training tags, e.g. "green star"), each with the hit rate of a random peak
    (``..._chance``) beside it.  The cells are a regional tower's, or a pooled tower's
    class activation map (what its bundles export).  Empty when the data do not record
    where objects are, or the tower has neither.
    """
    scale, bias = model.logit_scale_value(), float(model.logit_bias.numpy())
    mapped = None if model.config.scoring == "regional" else with_label_map(model.image_encoder)
    if mapped is None and model.config.scoring != "regional":
        return {}
    results = {}
    splits = [("pointing_game", test, labels)]
    if heldout is not None:
        splits.append(("pointing_game_heldout", heldout, sorted(set(heldout.label_vocabulary()) - set(labels))))
    for name, data, texts in splits:
        if data.objects is None or not texts or not len(data):
            continue
        cells = embed_images(model.image_encoder, data.images) if mapped is None else _cam(mapped, data.images)
        game = pointing_game(cells, embed_texts(model.text_encoder, tokenizer, texts), texts, scale, bias,
                             data.objects)
        if game["pointing_game"] is not None:
            results.update({name: game["pointing_game"], f"{name}_chance": game["pointing_chance"],
                            f"{name}_pairs": game["pairs"]})
    return results


def mirror_metric(model, tokenizer: Tokenizer, labels: list[str], test: ImageTextData) -> dict:
    """``top1_mirror`` (single-label) or ``mAP_mirror``: the task metric when every test
    image is scored together with its left-right mirror, as an ``int8-mirror`` bundle does."""
    scores = label_scores(model, tokenizer, labels, test.images, mirror_averaged(model.image_encoder))
    targets = test.multi_hot(labels)
    if test.task == "single":
        return {"top1_mirror": m.top1_accuracy(scores, targets)}
    return {"mAP_mirror": m.mean_average_precision(scores, targets)}


def _caption_recall(model, tokenizer: Tokenizer, test: ImageTextData) -> dict:
    image_emb = global_embedding(embed_images(model.image_encoder, test.images))
    caption_emb = embed_texts(model.text_encoder, tokenizer, test.captions)
    return m.retrieval_recall(image_emb, caption_emb, test.captions)


def heldout_combo_ap(model, tokenizer, labels, test: ImageTextData, heldout: ImageTextData) -> dict:
    """AP of phrases never used as training tags, over test + held-out scenes.

    Each held-out phrase (e.g. "green star") is scored as text on every image;
    positives are the held-out scenes that contain it.  Reported per phrase and
    as the mean, ``heldout_combo_ap``.
    """
    phrases = sorted(set(heldout.label_vocabulary()) - set(labels))
    images = np.concatenate([test.images, heldout.images])
    tags = test.tags + heldout.tags
    scores = label_scores(model, tokenizer, phrases, images)
    per_phrase = {
        p: m.average_precision(scores[:, j], np.array([p in t for t in tags]))
        for j, p in enumerate(phrases)
    }
    per_phrase = {p: ap for p, ap in per_phrase.items() if not np.isnan(ap)}
    mean = float(np.mean(list(per_phrase.values()))) if per_phrase else float("nan")
    return {"heldout_combo_ap": mean, "heldout_combo_ap_per_phrase": per_phrase}


def _cam(mapped, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """``[N, cells, D]``: a pooled tower's class activation map per image, scaled as the board
    scales it (:func:`fuselite.maps.cam_cells`), from a :func:`with_label_map` model."""
    maps = [mapped(images[i : i + batch_size], training=False)[1].numpy() for i in range(0, len(images), batch_size)]
    return np.stack([cam_cells(m) for m in np.concatenate(maps)])
