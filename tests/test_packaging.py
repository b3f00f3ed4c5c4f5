"""The installed package: one `fuselite` namespace, a light device side."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from support.wheel import installed_env

REPO = Path(__file__).resolve().parents[1]
DEVICE_MODULES = sorted(
    f"fuselite.{folder}." + p.stem
    for folder in ("runtime", "devices")
    for p in (REPO / folder).glob("*.py")
    if p.stem != "__init__"
) + ["fuselite.runtime", "fuselite.devices", "fuselite.bundle", "fuselite.tokenizer", "fuselite.metrics",
     "fuselite.scoring", "fuselite.interpreter", "fuselite.flatbuffer", "fuselite.files"]


def test_wheel_installs_stages_under_one_namespace(installed_wheel):
    python, site = installed_wheel
    for stray in ("train", "convert", "runtime", "devices", "bench"):
        assert not (site / stray).exists(), f"top-level {stray!r} installed into site-packages"
    code = ("import fuselite.train, fuselite.convert, fuselite.runtime, fuselite.devices, fuselite.bench;"
            "import fuselite; print(fuselite.__file__)")
    printed = subprocess.check_output([python, "-c", code], cwd=site.parent, text=True)
    assert str(site) in printed, "imported from the checkout, not from the installed wheel"


@pytest.mark.parametrize("stage", ["data", "train", "convert", "runtime", "devices", "bench", "cli"])
def test_every_stage_imports_from_the_repository_root_after_a_wheel_install(installed_wheel, stage):
    # Python puts the working folder first on sys.path: a folder named fuselite/ at the
    # root would shadow the installed package (it once held only part of the namespace).
    python, site = installed_wheel
    printed = subprocess.check_output(
        [python, "-c", f"import fuselite.{stage} as m; print(m.__file__)"], cwd=REPO, text=True,
        env=installed_env(site))
    assert printed.startswith(str(site)), f"fuselite.{stage} came from {printed.strip()}"


@pytest.mark.parametrize("module", DEVICE_MODULES)
def test_device_side_never_imports_tensorflow(module: str):
    code = (
        f"import sys, {module}\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'tensorflow', 'keras', 'tf_keras', 'tensorflow_model_optimization'} "
        "or m.startswith(('fuselite.train', 'fuselite.convert')))\n"
        "print(heavy)\n"
    )
    printed = subprocess.check_output([sys.executable, "-c", code], text=True, cwd="/")
    assert printed.strip() == "[]", f"{module} imports {printed.strip()}"


def test_the_device_probe_imports_without_opencv():
    """`fuselite devices verify` runs the probe where only numpy and the interpreter are
    installed (tflite-runtime boards): nothing it imports may need OpenCV at import time."""
    code = (
        "import sys\n"
        "sys.modules['cv2'] = None  # an import of cv2 now raises ImportError\n"
        "import fuselite.devices.probe\n"
    )
    done = subprocess.run([sys.executable, "-c", code], check=False, text=True, capture_output=True, cwd="/")
    assert done.returncode == 0, done.stderr.strip().splitlines()[-1]
