"""The installed package: one `fuselite` namespace, a light device side."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEVICE_MODULES = sorted(
    f"fuselite.{folder}." + p.stem
    for folder in ("runtime", "devices")
    for p in (REPO / folder).glob("*.py")
    if p.stem != "__init__"
) + ["fuselite.runtime", "fuselite.devices", "fuselite.bundle", "fuselite.tokenizer", "fuselite.metrics"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from this checkout (non-editable, as a user installs it)."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(REPO)],
        check=True, timeout=300,
    )
    return next(out.glob("fuselite-*.whl"))


def test_wheel_installs_stages_under_one_namespace(wheel: Path, tmp_path: Path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=True).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True, timeout=300)
    site = Path(subprocess.check_output(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True).strip())
    for stray in ("train", "convert", "runtime", "devices", "bench"):
        assert not (site / stray).exists(), f"top-level {stray!r} installed into site-packages"
    code = ("import fuselite.train, fuselite.convert, fuselite.runtime, fuselite.devices, fuselite.bench;"
            "import fuselite; print(fuselite.__file__)")
    printed = subprocess.check_output([python, "-c", code], cwd=tmp_path, text=True)
    assert str(site) in printed, "imported from the checkout, not from the installed wheel"


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
