"""Data for a training run: which images, which splits, and the tf.data input pipeline."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fuselite.errors import UserError
from fuselite.tokenizer import Tokenizer
from fuselite.train.backend import tf
from fuselite.train.configs import TrainConfig
from fuselite.train.data import ImageTextData, Splits

log = logging.getLogger(__name__)


@dataclass
class RunData:
    """The images of one run, already split.

    Attributes:
        train: Training split.
        val: Validation split (thresholds, early stopping).
        test: Test split (``metrics.json``).
        heldout: Scenes made of held-out attribute-object combinations, or ``None``.
        splits: The indices the splits were cut with, saved in the run.
        skipped: How many source items were unusable and left out.
    """

    train: ImageTextData
    val: ImageTextData
    test: ImageTextData
    heldout: ImageTextData | None
    splits: Splits
    skipped: int = 0


def load_run_data(config: TrainConfig, splits: Splits | None = None) -> RunData:
    """Loads the config's source and cuts it into splits (or reuses saved ``splits``)."""
    pool, official_test, heldout = _load_sources(config)
    if splits is None:
        test_fraction = 0.0 if official_test is not None else config.test_fraction
        splits = Splits.make(len(pool), config.val_fraction, test_fraction, config.seed)
        if official_test is not None:
            splits = Splits(splits.train, splits.val, list(range(len(official_test))))
        if config.limit:
            splits = Splits(splits.train[: config.limit], splits.val, splits.test)
    test_source = official_test if official_test is not None else pool
    data = RunData(
        train=pool.subset(splits.train),
        val=pool.subset(splits.val),
        test=test_source.subset(splits.test),
        heldout=heldout,
        splits=splits,
        skipped=len(pool.skipped) + (len(official_test.skipped) if official_test is not None else 0),
    )
    if len(data.train) == 0 or len(data.test) == 0:
        raise UserError(f"{config.data}: too few usable items to split into train/val/test")
    return data


def _load_sources(config: TrainConfig):
    """Returns (pool, official test split or None, held-out scenes or None)."""
    if config.data == "scenes":
        from fuselite.train.scenes import SceneSpec, generate_scenes

        spec = SceneSpec(image_size=config.image_size)
        pool = generate_scenes(config.scenes_train, spec, seed=config.seed)
        heldout = generate_scenes(config.scenes_heldout, spec, seed=config.seed + 1, heldout=True)
        return pool, None, heldout
    if config.data == "fashion-mnist":
        from fuselite.train.readers import read_fashion_mnist

        train = read_fashion_mnist(image_size=config.image_size, split="train")
        return train, read_fashion_mnist(image_size=config.image_size, split="test"), None
    if not config.data:
        raise UserError("this config needs --data PATH (a class folder, manifest, COCO JSON or IDX folder)")
    from fuselite.train.readers import read_dataset

    return read_dataset(Path(config.data), config.image_size), None, None


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
) -> tf.data.Dataset:
    """A batched tf.data pipeline of ``{"image", "targets", "caption_ids"}``.

    Training batches are shuffled (seeded), augmented and drop the remainder so
    every step sees a full batch (the pair loss needs in-batch negatives).
    """
    tensors = {
        "image": data.images,
        "targets": data.multi_hot(labels),
        "caption_ids": tokenizer.encode_batch(data.captions),
    }
    ds = tf.data.Dataset.from_tensor_slices(tensors)
    if training:
        ds = ds.shuffle(min(len(data), 20_000), seed=config.seed, reshuffle_each_iteration=True)
        if config.augment:
            ds = ds.map(_augmenter(config), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(config.batch_size, drop_remainder=training and len(data) >= config.batch_size)
    return ds.prefetch(tf.data.AUTOTUNE)


def _augmenter(config: TrainConfig):
    """Random shift (pad + crop), optional horizontal flip and a small brightness change.

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
        example["image"] = tf.cast(tf.clip_by_value(image, 0.0, 255.0), tf.uint8)
        return example

    return augment


def embed_images(encoder, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Image embeddings ``[N, D]`` of uint8 images, in batches."""
    out = [encoder(images[i : i + batch_size], training=False).numpy() for i in range(0, len(images), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, *encoder.output_shape[1:]), np.float32)


def embed_texts(encoder, tokenizer: Tokenizer, texts: list[str], batch_size: int = 1024) -> np.ndarray:
    """Text embeddings ``[N, D]`` of label texts or captions."""
    ids = tokenizer.encode_batch(texts)
    out = [encoder(ids[i : i + batch_size], training=False).numpy() for i in range(0, len(ids), batch_size)]
    return np.concatenate(out)
