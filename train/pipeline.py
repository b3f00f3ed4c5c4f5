"""The tf.data input pipeline and batched embedding helpers.

Which images and which splits a run uses is decided in :mod:`fuselite.data.sources`
(no TensorFlow there, so bench can rebuild a run's test split on a board).
"""

from __future__ import annotations

import logging

import numpy as np

from fuselite.data.dataset import ImageTextData
from fuselite.data.sources import RunData, load_run_data  # noqa: F401  (re-exported)
from fuselite.errors import UserError
from fuselite.tokenizer import Tokenizer
from fuselite.train.backend import tf
from fuselite.train.configs import TrainConfig

log = logging.getLogger(__name__)


def label_vocabulary(train: ImageTextData) -> list[str]:
    """The labels the model is trained to score: every tag in the training split."""
    labels = train.label_vocabulary()
    if not labels:
        raise UserError(f"{train.name}: the training split has no tags to learn from")
    return labels


def fit_tokenizer(data: RunData, labels: list[str], max_length: int) -> Tokenizer:
    """Builds the word vocabulary from the training labels and captions."""
    return Tokenizer.fit([*labels, *data.train.captions], max_length=max_length)


def make_dataset(
    data: ImageTextData,
    labels: list[str],
    tokenizer: Tokenizer,
    config: TrainConfig,
    training: bool,
    soft_labels: np.ndarray | None = None,
) -> tf.data.Dataset:
    """A batched tf.data pipeline of ``{"image", "targets", "caption_ids"}``.

    Training batches are shuffled (seeded), augmented and drop the remainder so
    every step sees a full batch (the pair loss needs in-batch negatives).  With
    ``soft_labels`` (teachers' probabilities, ``[N, num_labels]``), batches also
    carry ``"soft_labels"``.
    """
    tensors = {
        "image": data.images,
        "targets": data.multi_hot(labels),
        "caption_ids": tokenizer.encode_batch(data.captions),
    }
    if soft_labels is not None:
        tensors["soft_labels"] = soft_labels
    ds = tf.data.Dataset.from_tensor_slices(tensors)
    if training:
        ds = ds.shuffle(min(len(data), 20_000), seed=config.seed, reshuffle_each_iteration=True)
        if config.augment:
            ds = ds.map(_augmenter(config), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(config.batch_size, drop_remainder=training and len(data) >= config.batch_size)
    return ds.prefetch(tf.data.AUTOTUNE)


def _augmenter(config: TrainConfig):
    """Random shift (pad + crop), optional horizontal flip, a small brightness change, cutout.

    Colours stay close to the original: labels name colours, so hue is never changed.
    """
    size = config.image_size
    pad = max(2, size // 16)

    def augment(example):
        image = tf.cast(example["image"], tf.float32)
        image = tf.pad(image[None], [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="REFLECT")[0]
        image = tf.image.random_crop(image, (size, size, 3))
        if config.flip:
            image = tf.image.random_flip_left_right(image)
        image = image + tf.random.uniform((), -12.0, 12.0)
        if config.cutout > 0:
            image = _maybe_cutout(image, int(size * config.cutout), config.cutout_probability)
        example["image"] = tf.cast(tf.clip_by_value(image, 0.0, 255.0), tf.uint8)
        return example

    return augment


def _maybe_cutout(image, side: int, probability: float):
    """Applies :func:`_cutout` to a random ``probability`` share of the images."""
    if probability >= 1.0:  # no extra random draw: existing configs augment exactly as before
        return _cutout(image, side)
    return tf.cond(tf.random.uniform(()) < probability, lambda: _cutout(image, side), lambda: image)


def _cutout(image, side: int):
    """Blanks a random ``side`` x ``side`` square to mid-grey (random erasing)."""
    size = image.shape[0]
    y = tf.random.uniform((), 0, size - side + 1, dtype=tf.int32)
    x = tf.random.uniform((), 0, size - side + 1, dtype=tf.int32)
    rows = tf.logical_and(tf.range(size) >= y, tf.range(size) < y + side)
    cols = tf.logical_and(tf.range(size) >= x, tf.range(size) < x + side)
    mask = tf.logical_and(rows[:, None], cols[None, :])[:, :, None]
    return tf.where(mask, tf.fill(tf.shape(image), 127.0), image)


def embed_images(encoder, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Image embeddings ``[N, D]`` of uint8 images, in batches."""
    out = [encoder(images[i : i + batch_size], training=False).numpy() for i in range(0, len(images), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, *encoder.output_shape[1:]), np.float32)


def embed_texts(encoder, tokenizer: Tokenizer, texts: list[str], batch_size: int = 1024) -> np.ndarray:
    """Text embeddings ``[N, D]`` of label texts or captions."""
    ids = tokenizer.encode_batch(texts)
    out = [encoder(ids[i : i + batch_size], training=False).numpy() for i in range(0, len(ids), batch_size)]
    return np.concatenate(out)
