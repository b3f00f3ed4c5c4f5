"""``fuselite convert --list DIR``: one row per file, and "runs on" only for bundles the runtime accepts.

Before (issue 36, item 11) a dangling symlink, a symlink loop or a ``provenance.runtimes``
that is not a mapping traced back and hid the whole listing, and bundles the runtime
refuses (pickled or NaN embeddings, ``model_size`` 0, a bare zip) were listed as
runnable.  The listing now checks each file with :func:`fuselite.bundle.check_bundle`.
No TensorFlow beyond building the colour bundles; no interpreter is loaded.
"""

from __future__ import annotations

import io
import shutil
import zipfile

import numpy as np
import pytest
from support.bundles import repack

from fuselite.bundle import EMBEDDINGS_MEMBER, MANIFEST_MEMBER, read_bundle
from fuselite.cli import main


def with_member(source, target, name: str, content: bytes):
    """``source`` with one zip member replaced, the model bytes kept (not re-signed)."""
    data = source.read_bytes()
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    members[name] = content
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        for member, value in members.items():
            zf.writestr(member, value)
    target.write_bytes(data[: read_bundle(source).manifest.model_size] + archive.getvalue())
    return target


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


@pytest.fixture
def mixed_folder(fp32_bundle, tmp_path):
    """One good bundle and one of each kind of bad file, named for what they are."""
    folder = tmp_path / "bundles"
    folder.mkdir()
    shutil.copy(fp32_bundle, folder / "a-good.tflite")
    (folder / "dangling.tflite").symlink_to(folder / "gone.tflite")
    (folder / "loop.tflite").symlink_to(folder / "loop.tflite")
    repack(fp32_bundle, folder / "runtimes-list.tflite", provenance={"runtimes": ["ai-edge-litert"]})
    shape = read_bundle(fp32_bundle).label_embeddings.shape
    with_member(fp32_bundle, folder / "nan.tflite", EMBEDDINGS_MEMBER, npy(np.full(shape, np.nan, np.float32)))
    with_member(fp32_bundle, folder / "pickled.tflite", EMBEDDINGS_MEMBER,
                npy(np.array([object()] * shape[0], dtype=object)))
    repack(fp32_bundle, folder / "size0.tflite", model_bytes=b"")
    repack(fp32_bundle, folder / "not-tflite.tflite", model_bytes=b"\0" * 64)
    manifest = zipfile.ZipFile(fp32_bundle).read(MANIFEST_MEMBER)
    with zipfile.ZipFile(folder / "zip-only.tflite", "w") as zf:
        zf.writestr(MANIFEST_MEMBER, manifest)
    (folder / "folder.tflite").mkdir()
    return folder


def listing(folder, capsys) -> dict[str, str]:
    assert main(["convert", "--list", str(folder)]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    rows = captured.out.strip().splitlines()
    return {row.split()[0]: row for row in rows}


def test_every_file_gets_its_own_row_and_only_the_good_bundle_runs(mixed_folder, capsys):
    rows = listing(mixed_folder, capsys)
    assert sorted(rows) == sorted(p.name for p in mixed_folder.iterdir())
    runnable = sorted(name for name, row in rows.items() if "runs on:" in row)
    assert runnable == ["a-good.tflite", "runtimes-list.tflite"]
    assert "fp32" in rows["a-good.tflite"] and "kB" in rows["a-good.tflite"]


@pytest.mark.parametrize(("name", "reason"), [
    ("dangling.tflite", "cannot read bundle (No such file or directory)"),
    ("loop.tflite", "cannot read bundle (Too many levels of symbolic links)"),
    ("nan.tflite", "label embeddings contain NaN or infinity"),
    ("pickled.tflite", "label embeddings must be little-endian float32"),
    ("size0.tflite", "model_size 0 leaves no image model"),
    ("not-tflite.tflite", "image model: not a TFLite flatbuffer"),
    ("zip-only.tflite", "not a fuselite bundle"),
    ("folder.tflite", "not a file"),
])
def test_an_unusable_file_says_why(mixed_folder, capsys, name, reason):
    row = listing(mixed_folder, capsys)[name]
    assert "unusable: " in row and reason in row and "runs on" not in row
    assert str(mixed_folder) not in row  # the row names the file once, not its full path


def test_runtimes_of_the_wrong_type_are_reported_not_a_traceback(mixed_folder, capsys):
    row = listing(mixed_folder, capsys)["runtimes-list.tflite"]
    assert "runs on: unknown (provenance.runtimes is a list, not a mapping)" in row


def test_a_file_name_with_a_newline_stays_on_one_row(fp32_bundle, tmp_path, capsys):
    shutil.copy(fp32_bundle, tmp_path / "two\nlines.tflite")
    assert main(["convert", "--list", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[0].startswith("two?lines.tflite")
