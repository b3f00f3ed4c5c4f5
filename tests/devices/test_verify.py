"""``devices verify``: probe outputs, comparisons, and the full run under qemu when cached."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fuselite.devices import probe
from fuselite.devices.profiles import get_profile
from fuselite.devices.verify import (
    VerifyOptions,
    board_requirements,
    cache_ready,
    compare_outputs,
    default_cache_dir,
    verify,
    write_cpuinfo,
)

CACHE = default_cache_dir()


def _save(folder: Path, **arrays) -> Path:
    folder.mkdir()
    for name, array in arrays.items():
        np.save(folder / f"{name}.npy", array, allow_pickle=False)
    return folder


def test_integer_outputs_must_match_bit_for_bit(tmp_path):
    host = _save(tmp_path / "host", out=np.array([[1, 2, 3]], np.int8))
    board = _save(tmp_path / "board", out=np.array([[1, 2, 4]], np.int8))
    [row] = compare_outputs(host, board)
    assert not row.passed and row.max_abs_diff == 1 and row.tolerance == 0


def test_float_outputs_may_differ_by_1e_5(tmp_path):
    values = np.linspace(-1, 1, 6, dtype=np.float32)
    host = _save(tmp_path / "host", near=values, far=values)
    board = _save(tmp_path / "board", near=values + 5e-6, far=values + 5e-5)
    rows = {r.name: r for r in compare_outputs(host, board)}
    assert rows["near.npy"].passed and not rows["far.npy"].passed


def test_an_output_missing_on_one_side_fails(tmp_path):
    host = _save(tmp_path / "host", a=np.zeros(2, np.float32), b=np.zeros(2, np.float32))
    board = _save(tmp_path / "board", a=np.zeros(2, np.float32))
    rows = {r.name: r for r in compare_outputs(host, board)}
    assert rows["a.npy"].passed and not rows["b.npy"].passed and "board" in rows["b.npy"].dtype


def test_probe_frames_are_deterministic():
    first = probe.frames(3, (8, 8), seed=7)
    assert first.dtype == np.uint8 and first.shape == (3, 8, 8, 3)
    assert np.array_equal(first, probe.frames(3, (8, 8), seed=7))
    assert not np.array_equal(first, probe.frames(3, (8, 8), seed=8))


def test_quantized_model_input_uses_the_input_scale_and_zero_point():
    frame = np.array([[[0, 128, 255]]], np.uint8)
    assert probe.model_input(frame, np.dtype(np.int8), (1.0, -128)).tolist() == [[[[-128, 0, 127]]]]
    assert probe.model_input(frame, np.dtype(np.float32), None).dtype == np.float32


def test_cpuinfo_replaces_a_link_to_the_hosts_proc(tmp_path):
    # debootstrap may leave ROOT/proc as a link to the host's /proc: never write through it.
    (tmp_path / "proc").symlink_to("/proc")
    write_cpuinfo(tmp_path, get_profile("raspberry-pi-5"))
    text = (tmp_path / "proc" / "cpuinfo").read_text()
    assert not (tmp_path / "proc").is_symlink()
    assert "CPU part\t: 0xd0b" in text and text.count("processor\t:") == 4


def test_board_wheels_follow_the_profile():
    arm64 = board_requirements(get_profile("raspberry-pi-5"))
    assert arm64[0].startswith("ai-edge-litert") and any(r.startswith("opencv-python-headless") for r in arm64)
    # armv7: only the runtime's wheel; numpy comes from Debian (no armv7 numpy<2 wheels on PyPI)
    assert board_requirements(get_profile("raspberry-pi-32bit")) == ["tflite-runtime==2.14.0"]


# --- the real thing, when the emulated filesystems are cached ----------------------


@pytest.mark.slow
@pytest.mark.parametrize("name,variant", [
    ("raspberry-pi-5", "int8"), ("raspberry-pi-5", "fp32"), ("raspberry-pi-32bit", "int8"),
])
def test_emulated_board_matches_the_host(op_bundles, name, variant):
    profile = get_profile(name)
    if not cache_ready(profile, CACHE):
        pytest.skip(f"no cached {profile.architecture} filesystem in {CACHE}: run "
                    f"`fuselite devices verify {name} --bundle FILE` once (needs qemu-user-static, "
                    "debootstrap and the package mirrors; ~45 s)")
    result = verify(profile, VerifyOptions(bundle=op_bundles[variant], cache_dir=CACHE, timeout=600))
    assert result.passed, result
    assert result.board["machine"] == profile.architecture
    assert result.board["interpreter"] == result.host["interpreter"]
    names = {c.name for c in result.comparisons}
    assert {probe.IMAGE_OUTPUT, probe.TEXT_OUTPUT} <= names
    if variant == "int8":
        assert next(c for c in result.comparisons if c.name == probe.IMAGE_OUTPUT).max_abs_diff == 0
