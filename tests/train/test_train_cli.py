"""``fuselite train`` picks the config a user means, and says so when it cannot."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest

from fuselite.cli import main
from fuselite.errors import UserError
from fuselite.train.cli import _named_config, format_metrics


def _args(config=None, data=None):
    return argparse.Namespace(config=config, data=data)


def test_data_without_a_config_trains_the_custom_config(tmp_path):
    assert _named_config(_args(data=str(tmp_path))).name == "custom"
    assert _named_config(_args()).name == "scenes-default"
    assert _named_config(_args("custom", str(tmp_path))).name == "custom"


def test_a_config_with_data_of_its_own_refuses_user_data(tmp_path):
    with pytest.raises(UserError, match="use --config custom"):
        _named_config(_args("scenes-default", str(tmp_path)))


def test_the_refusal_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["train", "--config", "fashion-mnist", "--data", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--config custom" in err and "\n" not in err


def test_metrics_without_held_out_phrases_print_no_stray_braces():
    text = format_metrics({"top1": 0.5, "train_seconds": 1.0})
    assert text.splitlines()[-1].strip().startswith("train_seconds") and "{}" not in text


@pytest.mark.skipif(os.path.exists("/dev/nvidiactl"), reason="a GPU host: CUDA's messages matter there")
def test_a_host_without_a_gpu_prints_no_cuda_error_line():
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    code = "from fuselite.train.backend import tf; tf.config.list_logical_devices('GPU')"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300, check=True)
    assert "cuInit" not in done.stderr and "CUDA error" not in done.stderr
