"""Small bundles that would make a board allocate gigabytes are refused first (issue 36, item 3).

Each hostile case is a few kilobytes to a few megabytes on disk: a model whose
tensors declare hundreds of MB each (each under the 1 GiB per-tensor rule), a
``tokenizer.json`` of hundreds of thousands of empty lists or words, a zip directory
with more entries than a bundle has or a zip64 one.  Before the limits of
``fuselite.bundle`` (see its docstring) each loaded and ran; now each is one clear
``BundleError`` line, given fast and in little memory.
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import time
import zipfile

import pytest
from flatbuffer_defects import FLOAT32, chain_model
from reliability_support import error_lines, fuselite_command, runtime_env
from support.bundles import repack

from fuselite.bundle import (
    MANIFEST_MEMBER,
    MAX_ARENA_BYTES,
    MAX_JSON_MEMBER_BYTES,
    MAX_JSON_VALUES,
    MAX_VOCAB_WORDS,
    MAX_ZIP_ENTRIES,
    TOKENIZER_MEMBER,
    BundleError,
    arena_budget,
    check_bundle,
    read_bundle,
    write_bundle,
)
from fuselite.cli import main
from fuselite.runtime.graphcheck import check_graph

WIDE = 2**27  # float32 elements: 512 MiB a tensor, under the 1 GiB rule


def wide_chain(width: int = WIDE, subgraphs: int = 1) -> bytes:
    """The two-operator chain with every activation ``width`` floats wide (a few hundred
    bytes), in ``subgraphs`` copies of its subgraph."""
    def widen(parts):
        parts["tensors"][0] = ("x", [1, width], FLOAT32, 0)
        parts["tensors"][2] = ("h", [1, 1, width], FLOAT32, 0)
        parts["tensors"][3] = ("y", [1, 1, 1, width], FLOAT32, 0)
        parts["extra_subgraphs"] = subgraphs - 1
    return chain_model(edit=widen)


def with_members(source, target, **replaced: bytes):
    """``source`` with zip members replaced or added (names with ``.`` as ``__``), model kept."""
    data = source.read_bytes()
    model_size = read_bundle(source).manifest.model_size
    members = {}
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for name in zf.namelist():
            members[name] = zf.read(name)
    members.update({name.replace("__", "."): value for name, value in replaced.items()})
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, value in members.items():
            zf.writestr(name, value)
    target.write_bytes(data[:model_size] + archive.getvalue())
    return target


def refusal(path) -> str:
    """The one-line BundleError for ``path``, checked to come fast."""
    start = time.perf_counter()
    with pytest.raises(BundleError) as caught:
        check_bundle(path)
    assert time.perf_counter() - start < 2.0
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    return message


def tokenizer_with(**extra) -> bytes:
    return json.dumps({"type": "word", "max_length": 8, "vocab": ["<pad>", "<unk>", "red"], **extra}).encode()


# --- tensors --------------------------------------------------------------------------------


def test_a_graph_of_tensors_each_under_a_gib_but_over_the_budget_in_all_is_refused():
    with pytest.raises(BundleError, match=r"its tensors need 1,536 MB, more than the \d+ MB"):
        check_graph(wide_chain(), "image model")


def test_a_graph_within_the_budget_passes():
    check_graph(wide_chain(2**20), "image model")  # 4 MiB a tensor, 12 MiB in all


def test_the_budget_is_the_cap_or_a_quarter_of_the_ram():
    assert arena_budget(None) == MAX_ARENA_BYTES == 512 * 2**20
    assert arena_budget(512 * 2**20) == 128 * 2**20  # a Raspberry Pi Zero 2 W
    assert arena_budget(2**30) == 256 * 2**20
    assert arena_budget(8 * 2**30) == MAX_ARENA_BYTES


def test_check_bundle_refuses_the_wide_model_without_an_interpreter(fp32_bundle, tmp_path):
    path = repack(fp32_bundle, tmp_path / "wide.tflite", model_bytes=wide_chain())
    assert "image model: its tensors need 1,536 MB" in refusal(path)


def test_a_profile_with_little_ram_lowers_the_budget(fp32_bundle, tmp_path):
    path = repack(fp32_bundle, tmp_path / "mid.tflite", model_bytes=wide_chain(2**24))  # 192 MiB
    check_bundle(path)
    with pytest.raises(BundleError, match="more than the 128 MB"):
        check_bundle(path, ram_bytes=512 * 2**20)


def test_fuselite_run_refuses_the_wide_model_in_one_line_fast_and_in_little_memory(
    fp32_bundle, two_images, tmp_path
):
    path = repack(fp32_bundle, tmp_path / "wide.tflite", model_bytes=wide_chain())
    command = fuselite_command("run", "--bundle", path, "--source", two_images, "--jsonl", tmp_path / "e.jsonl")
    # Run through a parent that reports its child's peak resident memory.
    probe = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
             "sys.stdout.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)); "
             "sys.stderr.write(r.stderr); sys.exit(r.returncode)")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", probe, *map(str, command)], check=False, capture_output=True,
                          text=True, timeout=60, env=runtime_env())
    seconds = time.perf_counter() - start
    peak_mb = int(done.stdout) / 1024
    lines = error_lines(done.stderr)
    assert done.returncode != 0 and len(lines) == 1 and "its tensors need 1,536 MB" in lines[0], done.stderr
    assert peak_mb < 400 and seconds < 30, (peak_mb, seconds)


def test_the_tensors_of_every_subgraph_count_towards_the_budget():
    check_graph(wide_chain(2**22), "image model")  # 48 MiB in one subgraph: fine
    with pytest.raises(BundleError, match="its tensors need 576 MB"):
        check_graph(wide_chain(2**22, subgraphs=12), "image model")


def test_a_wide_text_encoder_is_refused_too(fp32_bundle, tmp_path):
    bundle = read_bundle(fp32_bundle)
    path = write_bundle(tmp_path / "wide-text.tflite", model_bytes=bundle.model_bytes, manifest=bundle.manifest,
                        tokenizer=bundle.tokenizer, label_embeddings=bundle.label_embeddings,
                        text_encoder_bytes=wide_chain())
    assert "text encoder: its tensors need 1,536 MB" in refusal(path)


def test_devices_check_measures_the_model_against_the_profiles_ram(fp32_bundle, tmp_path, capsys):
    path = repack(fp32_bundle, tmp_path / "mid.tflite", model_bytes=wide_chain(2**24))  # 192 MiB
    assert main(["devices", "check", "raspberry-pi-zero-2w", "--bundle", str(path)]) == 2  # 512 MB RAM
    assert "more than the 128 MB a model may use" in capsys.readouterr().err
    main(["devices", "check", "raspberry-pi-5", "--bundle", str(path)])  # 4 GB: the memory is fine
    assert "a model may use" not in capsys.readouterr().err


# --- tokenizer and vocabulary ------------------------------------------------------------------


def test_a_tokenizer_of_many_empty_lists_is_refused_before_parsing(fp32_bundle, tmp_path):
    lists = MAX_JSON_VALUES + 1000  # 1.5 MB on disk; 21 M of them once took 1.66 GB
    data = tokenizer_with(padding=[[]] * lists)
    assert len(data) < MAX_JSON_MEMBER_BYTES
    path = with_members(fp32_bundle, tmp_path / "lists.tflite", tokenizer__json=data)
    assert f"{TOKENIZER_MEMBER} holds about" in refusal(path)


def test_a_tokenizer_over_its_byte_limit_is_refused(fp32_bundle, tmp_path):
    data = tokenizer_with(note="x" * MAX_JSON_MEMBER_BYTES)
    path = with_members(fp32_bundle, tmp_path / "long.tflite", tokenizer__json=data)
    assert f"over {MAX_JSON_MEMBER_BYTES}" in refusal(path)


def test_a_deeply_nested_tokenizer_is_one_line_not_a_recursion_error(fp32_bundle, tmp_path):
    path = with_members(fp32_bundle, tmp_path / "deep.tflite", tokenizer__json=b"[" * 100_000 + b"]" * 100_000)
    assert "nested too deeply" in refusal(path)


def test_a_vocabulary_over_its_limit_is_refused(fp32_bundle, tmp_path):
    words = ["<pad>", "<unk>", *(f"w{i}" for i in range(MAX_VOCAB_WORDS + 1))]
    data = json.dumps({"type": "word", "max_length": 8, "vocab": words}).encode()
    path = with_members(fp32_bundle, tmp_path / "vocab.tflite", tokenizer__json=data)
    assert f"words, over {MAX_VOCAB_WORDS}" in refusal(path)


def test_a_manifest_of_many_json_values_is_refused_before_parsing(fp32_bundle, tmp_path):
    manifest = json.loads(zipfile.ZipFile(fp32_bundle).read(MANIFEST_MEMBER))
    manifest["padding"] = [[]] * MAX_JSON_VALUES  # 1.5 MB; unknown fields are otherwise ignored
    path = with_members(fp32_bundle, tmp_path / "manifest.tflite", manifest__json=json.dumps(manifest).encode())
    assert f"{MANIFEST_MEMBER} holds about" in refusal(path)


# --- zip directory ------------------------------------------------------------------------------


def test_a_zip_with_more_entries_than_a_bundle_has_is_refused(fp32_bundle, tmp_path):
    extra = {f"extra{i}__txt": b"" for i in range(MAX_ZIP_ENTRIES)}
    path = with_members(fp32_bundle, tmp_path / "entries.tflite", **extra)
    assert f"at most {MAX_ZIP_ENTRIES} entries" in refusal(path)


def test_a_zip64_directory_is_refused_from_its_end_record(fp32_bundle, tmp_path):
    """A zip64 end record claiming 2 M entries: zipfile would have read them all."""
    data = fp32_bundle.read_bytes()
    end = data.rfind(b"PK\x05\x06")
    directory_bytes, directory_offset = struct.unpack_from("<II", data, end + 12)
    zip_start = read_bundle(fp32_bundle).manifest.model_size
    record = struct.pack("<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, 2_000_000, 2_000_000,
                         directory_bytes, directory_offset)
    locator = struct.pack("<4sIQI", b"PK\x06\x07", 0, end - zip_start, 1)  # the record replaces the old end
    tail = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, directory_bytes, directory_offset, 0)
    path = tmp_path / "zip64.tflite"
    path.write_bytes(data[:end] + record + locator + tail)
    assert "zip64" in refusal(path)
