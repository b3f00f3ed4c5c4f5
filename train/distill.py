"""Distillation from finished runs: a tower learns from its teachers' soft labels.

``fuselite train --teacher RUN [--teacher RUN ...]`` scores every training and
validation image with each teacher once, before the first epoch, and averages the
label probabilities (over the teachers, and over each image and its mirror when the
student trains with flips).  The student then fits a mix of the true labels and those
soft labels (``distill_weight``).  An ensemble of finished runs knows which garments
look alike; a small tower that copies its soft labels learns more than from the
one-hot labels alone, and costs nothing extra on the device.

Precomputing the soft labels keeps a training step as fast as without teachers;
the augmented view of an image is fitted to its teachers' view of the plain image.
With ``teacher_views="augmented"`` the teachers instead score every training batch
as the student sees it (:class:`TeacherEnsemble`): a shifted, cut-out garment
gets the teachers' opinion of *that* picture ("consistent" distillation, Beyer et
al. 2022), and each step pays for the teachers' forward passes.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from fuselite.errors import UserError
from fuselite.train.backend import tf
from fuselite.train.configs import TrainConfig
from fuselite.train.model import image_similarity
from fuselite.train.pipeline import embed_texts

log = logging.getLogger(__name__)


def teacher_soft_labels(config: TrainConfig, task: str, labels: list[str],
                        image_sets: list[np.ndarray]) -> list[np.ndarray]:
    """Teachers' averaged label probabilities ``[N, num_labels]``, one array per image set.

    Every teacher is loaded once for all the sets, and each image is scored as it is
    and, when the config flips, mirrored.
    """
    teachers = TeacherEnsemble(config, task, labels)
    flips = config.augment and config.flip
    soft_labels = []
    for images in image_sets:
        views = [images, images[:, :, ::-1]] if flips else [images]
        soft_labels.append(np.mean([teachers.score(view, len(labels)) for view in views], axis=0))
    return soft_labels


def load_teacher(teacher_dir: str, config: TrainConfig, task: str, labels: list[str]):
    """A finished run that can teach this config: same labels, task and input size."""
    from fuselite.train.run import load_run

    teacher = load_run(Path(teacher_dir))
    if teacher.task != task or list(teacher.labels) != list(labels):
        raise UserError(f"--teacher {teacher_dir}: trained on other labels than this run; "
                        "a teacher must come from the same data")
    if teacher.config.image_size != config.image_size:
        raise UserError(f"--teacher {teacher_dir}: its input is {teacher.config.image_size} px, this "
                        f"run's {config.image_size} px; pass --image-size {teacher.config.image_size}")
    return teacher


class TeacherEnsemble:
    """The teachers as one TensorFlow function: a batch of uint8 images -> averaged probabilities.

    Single-label teachers give softmax probabilities (what the softmax loss fits),
    multi-label teachers their sigmoid probabilities.  A plain object, not a Keras
    layer, so the teachers' weights stay out of the student's weights, checkpoints
    and saved towers when it scores the student's batches in the training step.
    """

    def __init__(self, config: TrainConfig, task: str, labels: list[str]):
        self.task = task
        self.members = []
        for teacher_dir in config.teachers:
            teacher = load_teacher(teacher_dir, config, task, labels)
            label_emb = tf.constant(embed_texts(teacher.text_encoder, teacher.tokenizer, labels))
            self.members.append((teacher.image_encoder, label_emb, teacher.logit_scale, teacher.logit_bias))

    def __call__(self, images):
        """Soft labels ``[batch, num_labels]`` for a batch, with no gradient to the teachers."""
        probabilities = []
        for encoder, label_emb, scale, bias in self.members:
            logits = scale * image_similarity(encoder(images, training=False), label_emb) + bias
            probabilities.append(tf.nn.softmax(logits) if self.task == "single" else tf.sigmoid(logits))
        return tf.stop_gradient(tf.add_n(probabilities) / len(probabilities))

    def score(self, images: np.ndarray, num_labels: int, batch_size: int = 256) -> np.ndarray:
        """Averaged probabilities ``[N, num_labels]`` of a uint8 image array, in batches."""
        batches = [self(np.ascontiguousarray(images[i : i + batch_size])).numpy()
                   for i in range(0, len(images), batch_size)]
        return np.concatenate(batches) if batches else np.zeros((0, num_labels), np.float32)


def agreement(soft_labels: np.ndarray, targets: np.ndarray) -> float:
    """How often the teachers' top label is a true label (a sanity figure for the log)."""
    top = soft_labels.argmax(axis=1)
    return float(np.mean(targets[np.arange(len(top)), top] > 0))

