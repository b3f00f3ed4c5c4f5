"""The seeds suite's verdict: the mean gain over seeds, its spread, and the table."""

from __future__ import annotations

import pytest

from fuselite.bench.seeds_suite import LITE0, summarise, to_markdown


def pair(seed: int, tiny: float, distilled: float) -> dict:
    return {"seed": seed, LITE0: 0.66, "tiny": tiny, "distilled-tiny": distilled, "student_size": 64,
            "teacher_at_student_size": 0.49, "gain_pt": 100 * (distilled - tiny)}


def test_the_verdict_follows_the_mean_gain_over_seeds_not_one_lucky_seed():
    report = summarise([pair(1, 0.45, 0.52), pair(2, 0.47, 0.48), pair(3, 0.46, 0.47)])
    assert report["mean_gain_pt"] == pytest.approx(3.0)
    assert report["sd_gain_pt"] == pytest.approx(3.4641, abs=1e-3)
    assert report["target_met"] is False
    table = to_markdown(report, "seen")
    assert "| 1 | 66.0% | 49.0% | 64 px | 45.0% | 52.0% | +7.0 |" in table
    assert "mean gain +3.0 pt ± 3.5 (sample sd); target +5 pt: not met" in table


def test_one_seed_has_no_spread():
    report = summarise([pair(1, 0.40, 0.47)])
    assert report["sd_gain_pt"] is None and report["target_met"] is True
    assert "±" not in to_markdown(report, "heldout")


def test_a_student_size_reaches_the_students_train_command_and_not_the_teachers(tmp_path, monkeypatch):
    from fuselite.bench import seeds_suite

    commands = []

    def record(command, log_path, env=None):
        commands.append(command)
        return 1, 0.0  # stop at the first failure: the command is all this test needs

    monkeypatch.setattr(seeds_suite, "run_logged", record)
    for name, size in ((LITE0, None), ("tiny", 96)):
        with pytest.raises(SystemExit, match="training"):
            seeds_suite.train_and_convert(seeds_suite._spec(name), tmp_path / "train.jsonl",
                                          tmp_path / name, None, 1, image_size=size)
    teacher, student = commands
    assert "--image-size" not in teacher
    assert student[student.index("--image-size") + 1] == "96" and student[student.index("--seed") + 1] == "1"


def test_a_refused_int8_names_the_budget_and_max_loss_reaches_convert(tmp_path, monkeypatch):
    from fuselite.bench import seeds_suite

    commands = []

    def refuse(command, log_path, env=None):
        commands.append(command)
        return 1, 0.0  # as `fuselite convert` exits when the budget refuses every variant

    monkeypatch.setattr(seeds_suite, "run_logged", refuse)
    monkeypatch.setattr(seeds_suite, "finished", lambda run_dir: True)  # trained: only convert runs
    with pytest.raises(SystemExit, match="--max-loss PT"):
        seeds_suite.train_and_convert(seeds_suite._spec("tiny"), tmp_path / "train.jsonl", tmp_path / "tiny",
                                      None, 1, max_loss=1.5)
    [convert] = commands
    assert "convert" in convert and convert[convert.index("--max-loss") + 1] == "1.5"
