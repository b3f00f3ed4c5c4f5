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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fuselite.errors import UserError
from fuselite.train.backend import tf
from fuselite.train.configs import TrainConfig
from fuselite.train.model import image_similarity
from fuselite.train.pipeline import embed_texts

log = logging.getLogger(__name__)


def teacher_soft_labels(config: TrainConfig, task: str, labels: list[str],
                        image_sets: list[np.ndarray], images_at=None) -> list[np.ndarray]:
    """Teachers' averaged label probabilities ``[N, num_labels]``, one array per image set.

    Every teacher is loaded once for all the sets, and each image is scored as it is
    and, when the config flips, mirrored.  A teacher with another input size than the
    student sees the same items read at its own size: ``images_at(size)`` returns the
    image sets at ``size`` (without it, the student's pictures are resized).
    """
    teachers = TeacherEnsemble(config, task, labels)
    flips = config.augment and config.flip
    by_size = {config.image_size: image_sets}
    soft_labels = []
    for index in range(len(image_sets)):
        scores = []
        for member in teachers.members:
            if member.size not in by_size and images_at is not None:
                by_size[member.size] = images_at(member.size)
            images = by_size.get(member.size, image_sets)[index]
            views = [images, images[:, :, ::-1]] if flips else [images]
            scores += [teachers.score_member(member, view, len(labels)) for view in views]
        soft_labels.append(np.mean(scores, axis=0))
    return soft_labels


def load_teacher(teacher_dir: str, config: TrainConfig, task: str, labels: list[str]):
    """A finished run that can teach this config: the same labels and task.

    Its backbone and input size may differ from the student's (an EfficientNet-Lite0
    run at 224 px can teach a tiny tower at 64 px): each sees the image at its own size.
    """
    from fuselite.train.run import load_run

    teacher = load_run(Path(teacher_dir))
    if teacher.task != task or list(teacher.labels) != list(labels):
        raise UserError(f"--teacher {teacher_dir}: trained on other labels than this run "
                        f"({_label_difference(teacher.labels, labels)}); a teacher must come from "
                        f"the same data{_seed_hint(teacher.config.seed, config.seed)}")
    return teacher


def _label_difference(teacher_labels: list[str], labels: list[str]) -> str:
    """What tells the two label lists apart, in a few words."""
    lacks = [label for label in labels if label not in set(teacher_labels)]
    extra = [label for label in teacher_labels if label not in set(labels)]
    if not lacks and not extra:
        return "the same labels, another task or order"
    parts = [f"it lacks {len(lacks)} of this run's {len(labels)} labels, e.g. {lacks[0]!r}" if lacks else "",
             f"has {len(extra)} this run lacks, e.g. {extra[0]!r}" if extra else ""]
    return ", ".join(part for part in parts if part)


def _seed_hint(teacher_seed: int, seed: int) -> str:
    if teacher_seed == seed:
        return ""
    return (f" and the same --seed: the seed draws the validation and test split, and the labels "
            f"come from what is left to train on (teacher: seed {teacher_seed}, this run: {seed})")


@dataclass(frozen=True)
class Teacher:
    """One teacher's image tower, label embeddings and scorer.

    Attributes:
        encoder: Its image tower (uint8 pixels at ``size`` -> embeddings).
        label_emb: Its text tower's embeddings of the student's labels.
        scale: Its scorer's scale.
        bias: Its scorer's bias.
        size: Its input size in pixels.
    """

    encoder: object
    label_emb: object
    scale: float
    bias: float
    size: int


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
            self.members.append(Teacher(teacher.image_encoder, label_emb, teacher.logit_scale,
                                        teacher.logit_bias, teacher.config.image_size))

    def __call__(self, images):
        """Soft labels ``[batch, num_labels]`` for a batch, with no gradient to the teachers."""
        probabilities = [self._probabilities(member, images) for member in self.members]
        return tf.stop_gradient(tf.add_n(probabilities) / len(probabilities))

    def _probabilities(self, member: Teacher, images):
        """One teacher's probabilities for a batch, resized to its input size if needed."""
        if images.shape[1] != member.size:
            resized = tf.image.resize(tf.cast(images, tf.float32), (member.size, member.size), antialias=True)
            images = tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)
        logits = member.scale * image_similarity(member.encoder(images, training=False), member.label_emb)
        logits += member.bias
        return tf.nn.softmax(logits) if self.task == "single" else tf.sigmoid(logits)

    def score_member(self, member: Teacher, images: np.ndarray, num_labels: int,
                     batch_size: int = 64) -> np.ndarray:
        """One teacher's probabilities ``[N, num_labels]`` of a uint8 image array, in batches."""
        batches = [self._probabilities(member, np.ascontiguousarray(images[i : i + batch_size])).numpy()
                   for i in range(0, len(images), batch_size)]
        return np.concatenate(batches) if batches else np.zeros((0, num_labels), np.float32)


def agreement(soft_labels: np.ndarray, targets: np.ndarray) -> float:
    """How often the teachers' top label is a true label (a sanity figure for the log)."""
    top = soft_labels.argmax(axis=1)
    return float(np.mean(targets[np.arange(len(top)), top] > 0))

