"""`fuselite train --teacher`: a model learns from finished runs' soft labels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fuselite.cli import main
from fuselite.errors import UserError
from fuselite.train.configs import TrainConfig, get_config


@pytest.mark.slow
def test_student_learns_from_the_teacher_alone(tiny_run: Path, tmp_path: Path):
    """With every bit of the label loss on soft labels, all the student knows comes from the teacher."""
    from fuselite.train.trainer import train

    config = get_config("scenes-tiny").with_overrides(teachers=(str(tiny_run),), distill_weight=1.0)
    metrics = train(config, tmp_path / "student")
    teacher_map = json.loads((tiny_run / "metrics.json").read_text())["mAP"]
    # A student of the same size, taught for as long, lands near its teacher (chance is ~0.1).
    assert metrics["mAP"] > 0.6 * teacher_map
    saved = TrainConfig.load(tmp_path / "student" / "config.json")
    assert saved.teachers == (str(tiny_run),) and saved.distill_weight == 1.0


@pytest.mark.slow
def test_student_learns_from_teachers_that_see_its_augmented_batches(tiny_run: Path, tmp_path: Path):
    """Consistent distillation: the teachers score each training batch, and stay out of the checkpoint."""
    from fuselite.train.backend import tf
    from fuselite.train.trainer import train

    config = get_config("scenes-tiny").with_overrides(
        teachers=(str(tiny_run),), distill_weight=1.0, teacher_views="augmented")
    metrics = train(config, tmp_path / "student")
    teacher_map = json.loads((tiny_run / "metrics.json").read_text())["mAP"]
    assert metrics["mAP"] > 0.6 * teacher_map  # all it knows came from the teacher; chance is ~0.1
    assert TrainConfig.load(tmp_path / "student" / "config.json").teacher_views == "augmented"
    # The same variables as the teacher's own checkpoint: no teacher weights saved with the student.
    student_vars = tf.train.list_variables(str(tmp_path / "student" / "checkpoints" / "latest"))
    teacher_vars = tf.train.list_variables(str(tiny_run / "checkpoints" / "latest"))
    assert sorted(name for name, _ in student_vars) == sorted(name for name, _ in teacher_vars)


@pytest.mark.slow
def test_augmented_view_teacher_scores_a_batch_as_the_precomputed_soft_labels_do(tiny_run: Path):
    from fuselite.train.distill import TeacherEnsemble, teacher_soft_labels
    from fuselite.train.run import load_run

    teacher = load_run(tiny_run)
    images = teacher.load_data().val.images[:16]
    config = teacher.config.with_overrides(teachers=(str(tiny_run), str(tiny_run)), flip=False)
    on_the_fly = TeacherEnsemble(config, "multi", teacher.labels)(images).numpy()
    [precomputed] = teacher_soft_labels(config, "multi", teacher.labels, [images])
    np.testing.assert_allclose(on_the_fly, precomputed, atol=1e-5)


@pytest.mark.slow
def test_soft_labels_are_the_teachers_probabilities_averaged_over_mirrors(tiny_run: Path):
    from fuselite.train.distill import teacher_soft_labels
    from fuselite.train.run import load_run

    teacher = load_run(tiny_run)
    images = teacher.load_data().val.images[:16]
    config = teacher.config.with_overrides(teachers=(str(tiny_run),))
    both, mirrored = teacher_soft_labels(config, "multi", teacher.labels, [images, images[:, :, ::-1]])
    np.testing.assert_allclose(both, mirrored, atol=1e-5)  # the mirror is in the average
    [plain] = teacher_soft_labels(config.with_overrides(flip=False), "multi", teacher.labels, [images])
    assert both.shape == plain.shape == (16, len(teacher.labels))
    assert 0.0 < plain.min() and plain.max() < 1.0 and not np.allclose(plain, both)
    with pytest.raises(UserError, match="other labels"):  # a multi-label teacher for single-label data
        teacher_soft_labels(config, "single", teacher.labels, [images])


@pytest.mark.slow
def test_a_teacher_of_other_labels_is_refused_with_one_line(tiny_run: Path, tmp_path: Path, capsys):
    argv = ["train", "--config", "fashion-mnist-tiny", "--limit", "200", "--teacher", str(tiny_run),
            "--out", str(tmp_path / "student")]
    assert main(argv) == 2
    assert "trained on other labels" in capsys.readouterr().err


def test_a_teacher_that_is_not_a_finished_run_is_refused(tmp_path: Path, capsys):
    argv = ["train", "--config", "scenes-tiny", "--teacher", str(tmp_path), "--out", str(tmp_path / "s")]
    assert main(argv) == 2
    assert "not a finished run" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_a_distill_weight_outside_0_to_1_is_refused():
    with pytest.raises(UserError, match="distill_weight 1.5 is outside 0..1"):
        get_config("scenes-tiny").with_overrides(distill_weight=1.5)


def test_teacher_views_without_a_teacher_is_refused_with_one_line(tmp_path: Path, capsys):
    argv = ["train", "--config", "scenes-tiny", "--teacher-views", "augmented", "--out", str(tmp_path / "s")]
    assert main(argv) == 2
    assert "--teacher-views augmented needs at least one --teacher RUN" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_a_distill_weight_without_a_teacher_is_refused_with_one_line(tmp_path: Path, capsys):
    argv = ["train", "--config", "scenes-tiny", "--distill-weight", "0.9", "--out", str(tmp_path / "s")]
    assert main(argv) == 2
    assert "--distill-weight needs at least one --teacher RUN" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_unknown_teacher_views_are_refused():
    with pytest.raises(UserError, match="teacher_views 'sideways' is not one of: plain, augmented"):
        get_config("scenes-tiny").with_overrides(teacher_views="sideways")


def test_a_refused_teacher_says_which_labels_differ_and_that_the_seed_draws_them():
    from fuselite.train.distill import _label_difference, _seed_hint

    assert _label_difference(["cat", "dog", "sun"], ["cat", "dog", "car"]) == (
        "it lacks 1 of this run's 3 labels, e.g. 'car', has 1 this run lacks, e.g. 'sun'"
    )
    assert _label_difference(["cat", "dog"], ["dog", "cat"]) == "the same labels, another task or order"
    assert "the same --seed" in _seed_hint(0, 1) and "teacher: seed 0, this run: 1" in _seed_hint(0, 1)
    assert _seed_hint(3, 3) == ""
