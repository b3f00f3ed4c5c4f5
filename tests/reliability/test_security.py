"""Security: a loopback preview, no code from bundles or run folders, paths kept in their folder.

Manifest validation (types, ranges, sizes) is fuzzed in test_bundle_fuzz.py; here are the
promises that are not about damaged bytes.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from bundle_fuzz import Seed, in_process_verdict, manifest_field_cases
from reliability_support import REPO, fuselite_command, quiet_env

from fuselite.errors import UserError

PRODUCT_DIRS = ("fuselite", "train", "convert", "runtime", "devices", "bench")
PREVIEW_URL = re.compile(r"preview: http://([\d.]+):(\d+)/")


# --- the MJPEG preview ---------------------------------------------------------------------


def _listening_addresses(pid: int, port: int) -> set[str]:
    """Local addresses of the process's listening TCP sockets on ``port`` (IPv4 and IPv6)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        target = os.readlink(f"/proc/{pid}/fd/{fd}")
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].rsplit(":", 1)
            if fields[3] == "0A" and fields[9] in inodes and int(port_hex, 16) == port:
                found.add(address)
    return found


def _start_with_preview(bundle: Path, clip: Path, *extra) -> tuple[subprocess.Popen, str, int,
                                                                   list[str]]:
    args = ["--bundle", bundle, "--source", clip, "--loop", "--jsonl", "none", "--preview", 0,
            "--fps-limit", 10, "--threads", 1, *extra]
    process = subprocess.Popen(fuselite_command("run", *args), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, env=quiet_env())
    deadline = time.monotonic() + 60
    lines = []
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        lines.append(line)
        match = PREVIEW_URL.search(line)
        if match:
            return process, match.group(1), int(match.group(2)), lines
        if not line and process.poll() is not None:
            break
    process.kill()
    raise AssertionError("no preview line:\n" + "".join(lines))


def _stop(process: subprocess.Popen) -> str:
    process.send_signal(signal.SIGTERM)
    _, rest = process.communicate(timeout=30)
    return rest


@pytest.fixture(scope="module")
def looping_clip(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("clip") / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for colour in ((0, 0, 255), (255, 0, 0)) * 5:
        writer.write(np.full((48, 64, 3), colour, np.uint8))
    writer.release()
    return path


def test_the_mjpeg_preview_listens_on_loopback_only_by_default(colour_bundles, looping_clip):
    process, host, port, lines = _start_with_preview(colour_bundles["fp32"], looping_clip)
    try:
        addresses = _listening_addresses(process.pid, port)
    finally:
        stderr = "".join(lines) + _stop(process)
    assert host == "127.0.0.1"
    assert addresses == {"0100007F"}, addresses  # 127.0.0.1, nothing on 0.0.0.0 or ::
    assert process.returncode == 0 and "no password" not in stderr


def test_the_preview_on_every_interface_must_be_asked_for_and_warns(colour_bundles, looping_clip):
    process, _, port, lines = _start_with_preview(
        colour_bundles["fp32"], looping_clip, "--bind", "0.0.0.0"
    )
    try:
        addresses = _listening_addresses(process.pid, port)
    finally:
        stderr = "".join(lines) + _stop(process)
    assert addresses == {"00000000"}
    assert "no password" in stderr


def test_the_options_default_to_loopback_too():
    from fuselite.runtime.options import RunOptions

    assert RunOptions("0").preview_bind == "127.0.0.1"


# --- no code from bundles or run folders ---------------------------------------------------

# Calls that would run code hidden in a file: unpickling, marshalled bytecode, eval/exec,
# unsafe YAML; and Keras model deserialisation (a saved model may carry Lambda bytecode).
FORBIDDEN_CALLS = {
    "pickle.load", "pickle.loads", "cPickle.load", "marshal.loads", "dill.load", "joblib.load",
    "torch.load", "eval", "exec", "yaml.load", "yaml.unsafe_load", "saved_model.load",
}
KERAS_LOADERS = {
    "load_model", "model_from_json", "model_from_yaml", "model_from_config",
    "deserialize_keras_object", "enable_unsafe_deserialization",
}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _keras_imports(tree: ast.AST) -> set[str]:
    """Names imported from a Keras module (``from tf_keras.models import load_model``)."""
    return {alias.asname or alias.name for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and "keras" in (node.module or "")
            for alias in node.names}


def _is_keras_loader(name: str, keras_names: set[str]) -> bool:
    *prefix, last = name.split(".")
    if last not in KERAS_LOADERS:
        return False
    if not prefix:
        return last in keras_names
    return any(part in ("keras", "tf_keras", "models", "saving") for part in prefix)


def _unsafe_calls(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    keras_names = _keras_imports(tree)
    label = path.relative_to(REPO) if path.is_relative_to(REPO) else path.name
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        keywords = {k.arg: k.value for k in node.keywords}
        where = f"{label}:{node.lineno} {name}"
        if any(name == f or name.endswith("." + f) for f in FORBIDDEN_CALLS):
            found.append(where)
        if _is_keras_loader(name, keras_names):
            found.append(where + " (Keras deserialisation)")
        pickle = keywords.get("allow_pickle")
        if name.endswith("load") and pickle is not None and not (
            isinstance(pickle, ast.Constant) and pickle.value is False
        ):
            found.append(where + " with allow_pickle")  # numpy's default (False) is fine
        if isinstance(keywords.get("safe_mode"), ast.Constant) and not keywords["safe_mode"].value:
            found.append(where + " with safe_mode=False")
        if name.endswith("layers.Lambda"):
            found.append(where + " (Lambda layers carry bytecode)")
    return found


def test_no_product_code_unpickles_evaluates_or_deserialises_models_or_lambdas():
    files = [p for d in PRODUCT_DIRS for p in sorted((REPO / d).rglob("*.py"))]
    assert len(files) > 40
    unsafe = [hit for path in files for hit in _unsafe_calls(path)]
    assert unsafe == []


def test_the_scanner_finds_what_it_looks_for(tmp_path):
    sample = tmp_path / "scanner_sample.py"
    sample.write_text(
        "import numpy as np, pickle\nfrom tf_keras.models import load_model\n"
        "np.load('x', allow_pickle=True)\npickle.loads(b'')\nload_model('m', safe_mode=False)\n"
        "keras.layers.Lambda(f)\nnp.load('y', allow_pickle=False)\nnp.load('z')\n"
        "tf.keras.models.model_from_json('{}')\nprobe.load_model(b'')\n"
    )
    hits = _unsafe_calls(sample)
    assert [h.split()[0].split(":")[1] for h in hits] == ["3", "4", "5", "5", "6", "9"], hits


def test_every_model_tower_is_built_from_stock_layers_without_lambdas():
    from fuselite.train.backend import keras
    from fuselite.train.configs import get_config, list_configs
    from fuselite.train.model import image_encoder, text_encoder

    for name in list_configs():
        config = get_config(name)
        for model in (image_encoder(config), text_encoder(config, vocab_size=50)):
            kinds = {type(layer) for layer in model.layers}
            assert keras.layers.Lambda not in kinds, name
            custom = [k.__name__ for k in kinds if not k.__module__.startswith("tf_keras.")]
            assert custom == [], (name, custom)


@pytest.mark.slow
def test_a_run_folder_whose_weights_file_holds_a_lambda_model_never_runs_it(tiny_run, tmp_path):
    """A full Keras H5 model with a Lambda (marshalled bytecode) in place of the weights."""
    from fuselite.train.backend import keras
    from fuselite.train.run import load_run

    marker = str(tmp_path / "lambda-ran")
    inputs = keras.Input((4,))
    outputs = keras.layers.Lambda(lambda x: (open(marker, "w").close(), x)[1])(inputs)
    keras.Model(inputs, outputs).save(str(tmp_path / "evil.h5"))
    os.unlink(marker)  # building the model ran the function once, here
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    shutil.copy(tmp_path / "evil.h5", run_dir / "image_encoder.weights.h5")
    with pytest.raises(UserError, match="weights do not load"):
        load_run(run_dir)
    assert not os.path.exists(marker)


@pytest.mark.slow
def test_a_run_folder_config_with_unknown_fields_is_refused_not_interpreted(tiny_run, tmp_path):
    from fuselite.train.run import load_run

    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    config["__class__"] = "os.system"
    (run_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="damaged"):
        load_run(run_dir)


# --- manifest values -------------------------------------------------------------------------


def test_manifest_values_of_a_wrong_type_range_or_size_are_refused(colour_bundles, tmp_path):
    """Every field missing and of each wrong kind (the nesting cases: test_bundle_defects)."""
    seed = Seed.read(colour_bundles["int8"])
    cases = [c for c in manifest_field_cases(seed) if "nested" not in c.name]
    verdicts = {c.name: in_process_verdict(c, tmp_path / f"{i}") for i, c in enumerate(cases)}
    assert not [n for n, (v, _) in verdicts.items() if v == "bug"]
    # Fields added after schema 1 default when missing, so bundles written before them load.
    optional = ("label_source", "output_activation", "label_maps", "reference")
    checked = [k for k in seed.manifest if k not in ("provenance", "numerics", "variant")]
    for key in checked:
        if key not in optional:
            assert verdicts[f"manifest:missing-{key}"][0] == "rejected", key
        for kind in ("null", "text", "list", "object", "nan", "inf"):
            if kind == "null" and key in ("label_maps", "reference"):  # how a bundle without them says so
                assert verdicts[f"manifest:{key}={kind}"][0] == "loaded"
                continue
            verdict, message = verdicts[f"manifest:{key}={kind}"]
            named = key.rstrip("s") in message or ("sha256" in key and "sha256" in message) \
                or (key == "preprocessing" and "input_size" in message)
            assert verdict == "rejected" and named, (key, kind, message)
    for name in ("labels-empty", "labels-10001", "label-201-chars", "thresholds-one-short",
                 "threshold-1.5", "embedding_dim-4097", "input_size-1025", "input_size-7",
                 "model_size-5000-digits", "schema_version-2", "task-other", "not-utf8",
                 "input_quant-zero-scale", "input_quant-fraction-zero-point"):
        assert verdicts[f"manifest:{name}"][0] == "rejected", name


# --- paths from datasets ----------------------------------------------------------------------


@pytest.fixture
def dataset_beside_a_secret(tmp_path) -> Path:
    """``data/`` with one good image, and ``outside/secret.png`` next to it."""
    image = np.full((20, 20, 3), (0, 0, 200), np.uint8)
    for path in (tmp_path / "data" / "ok.png", tmp_path / "outside" / "secret.png"):
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), image)
    return tmp_path


def test_a_manifest_path_with_dotdot_is_skipped(dataset_beside_a_secret):
    from fuselite.data.readers import read_manifest

    root = dataset_beside_a_secret
    (root / "data" / "m.csv").write_text("image,tags\nok.png,red\n../outside/secret.png,red\n")
    data = read_manifest(root / "data" / "m.csv", 32)
    assert data.ids == ["ok.png"]
    assert data.skipped == [("../outside/secret.png", "path escapes the dataset folder")]


@pytest.mark.parametrize("kind", ["absolute-path", "symlink"])
def test_a_manifest_path_leaving_the_folder_by_any_route_is_skipped(
    dataset_beside_a_secret, kind
):
    from fuselite.data.readers import read_manifest

    root = dataset_beside_a_secret
    secret = root / "outside" / "secret.png"
    written = str(secret)
    if kind == "symlink":
        (root / "data" / "link.png").symlink_to(secret)
        written = "link.png"
    (root / "data" / "m.csv").write_text(f"image,tags\nok.png,red\n{written},red\n")
    data = read_manifest(root / "data" / "m.csv", 32)
    assert data.ids == ["ok.png"]


def test_a_coco_file_name_outside_the_images_folder_is_skipped(dataset_beside_a_secret):
    from fuselite.data.readers import read_coco

    root = dataset_beside_a_secret
    document = {"images": [{"id": 1, "file_name": "ok.png"},
                           {"id": 2, "file_name": str(root / "outside" / "secret.png")}],
                "annotations": [{"image_id": 1, "caption": "a"}, {"image_id": 2, "caption": "b"}]}
    (root / "data" / "coco.json").write_text(json.dumps(document))
    assert read_coco(root / "data" / "coco.json", 32).ids == ["ok.png"]


def test_a_class_folder_that_is_a_symlink_to_elsewhere_is_not_read(dataset_beside_a_secret):
    from fuselite.data.readers import read_folder_per_class

    root = dataset_beside_a_secret
    (root / "classes" / "red").mkdir(parents=True)
    shutil.copy(root / "data" / "ok.png", root / "classes" / "red" / "ok.png")
    (root / "classes" / "blue").symlink_to(root / "outside")
    assert read_folder_per_class(root / "classes", 32).ids == ["red/ok.png"]
