"""``fuselite import``: a plain TFLite classifier becomes a fixed-label bundle that runs.

Fast tests wrap the colour bundles' image model (a plain uint8 model with one output
per "class"); slow ones a Keras MobileNetV2 (tests/support/classifiers.py) converted
to fp32 and int8, with and without TFLite Metadata, and check what the board computes
against Keras and against the interpreter fed as the metadata says.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from support.classifiers import CLASSES, MEAN, STD

from fuselite.bundle import read_bundle
from fuselite.cli import main
from fuselite.convert.importer import SCORE_SCALE, parse_labels, score_of_probability
from fuselite.errors import UserError
from fuselite.runtime import Annotator, AnnotatorOptions


def one_line_error(capsys) -> str:
    """The CLI's stderr, checked to be exactly one line."""
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err, err
    return err


def probabilities(annotator: Annotator, frames_rgb: np.ndarray) -> np.ndarray:
    """Each frame's class probabilities as the board scored them (the score formula inverted)."""
    rows = []
    for index, frame in enumerate(frames_rgb):
        result = annotator.annotate(np.ascontiguousarray(frame[:, :, ::-1]), timestamp_ms=100.0 * index)
        scores = np.array([result.scores[label] for label in annotator.labels], np.float64)
        rows.append(0.5 + np.log(scores / (1 - scores)) / SCORE_SCALE)
    return np.array(rows)


# --- fast: the colour model as a plain classifier ------------------------------------------------


@pytest.fixture
def plain_model(colour_bundles, tmp_path) -> tuple[Path, int]:
    """The int8 colour bundle's image model alone (uint8 in, uint8 out) and its class count."""
    bundle = read_bundle(colour_bundles["int8"])
    path = tmp_path / "plain.tflite"
    path.write_bytes(bundle.model_bytes)
    return path, bundle.manifest.embedding_dim


def write_labels(path: Path, count: int) -> Path:
    path.write_text("".join(f"class {i}\n" for i in range(count)) + "\n\n")
    return path


def test_a_model_without_metadata_needs_labels_one_line_exit_2(plain_model, tmp_path, capsys):
    model, classes = plain_model
    out = tmp_path / "bundle.tflite"
    assert main(["import", str(model), "--out", str(out)]) == 2
    error = one_line_error(capsys)
    assert "--labels" in error and f"its {classes} class names" in error
    assert not out.exists()


def test_a_label_file_with_too_few_labels_or_a_blank_line_inside_is_refused(plain_model, tmp_path, capsys):
    model, classes = plain_model
    short = tmp_path / "short.txt"
    short.write_text("cat\ndog\n")
    assert main(["import", str(model), "--labels", str(short), "--out", str(tmp_path / "b.tflite")]) == 2
    assert f"has 2 labels but the model outputs {classes} classes" in one_line_error(capsys)
    gap = tmp_path / "gap.txt"
    gap.write_text("cat\n\n" + "".join(f"c{i}\n" for i in range(classes - 1)))
    assert main(["import", str(model), "--labels", str(gap), "--out", str(tmp_path / "b.tflite")]) == 2
    assert "line 2 holds no label" in one_line_error(capsys)
    assert not (tmp_path / "b.tflite").exists()


def test_a_bundle_or_bytes_that_are_no_model_are_refused(colour_bundles, tmp_path, capsys):
    labels = write_labels(tmp_path / "labels.txt", 3)
    assert main(["import", str(colour_bundles["int8"]), "--labels", str(labels),
                 "--out", str(tmp_path / "b.tflite")]) == 2
    assert "already a fuselite bundle" in one_line_error(capsys)
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(range(256)) * 4)
    assert main(["import", str(junk), "--labels", str(labels), "--out", str(tmp_path / "b.tflite")]) == 2
    assert "not a TFLite classifier" in one_line_error(capsys)


def test_a_float_input_without_metadata_needs_mean_and_std(colour_bundles, tmp_path, capsys):
    bundle = read_bundle(colour_bundles["fp32"])
    model = tmp_path / "float.tflite"
    model.write_bytes(bundle.model_bytes)
    labels = write_labels(tmp_path / "labels.txt", bundle.manifest.embedding_dim)
    assert main(["import", str(model), "--labels", str(labels), "--out", str(tmp_path / "b.tflite")]) == 2
    assert "--mean and --std" in one_line_error(capsys)
    assert main(["import", str(model), "--labels", str(labels), "--mean", "0", "--std", "1",
                 "--out", str(tmp_path / "b.tflite")]) == 0
    manifest = read_bundle(tmp_path / "b.tflite").manifest
    assert manifest.variant == "fp32" and manifest.preprocessing.normalization == (1.0, 0.0)


def test_repeated_labels_get_a_number_and_trailing_blank_lines_go():
    assert parse_labels("crane\ncat\ncrane\n\n", "x", 3) == ("crane", "cat", "crane (2)")


def test_the_bundle_is_a_fixed_label_concepts_bundle_with_its_provenance(plain_model, tmp_path, capsys):
    model, classes = plain_model
    labels = write_labels(tmp_path / "labels.txt", classes)
    out = tmp_path / "bundle.tflite"
    assert main(["import", str(model), "--labels", str(labels), "--out", str(out), "--threshold", "0.3"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    bundle = read_bundle(out)
    manifest = bundle.manifest
    assert manifest.label_source == "concepts" and manifest.schema_version == 3  # normalised on the board
    assert bundle.model_bytes == model.read_bytes() and bundle.text_encoder_bytes == b""
    assert np.array_equal(bundle.label_embeddings, np.eye(classes, dtype=np.float32))
    assert bundle.concepts.resolve("Class 1") == (1,)
    assert manifest.labels == tuple(f"class {i}" for i in range(classes))
    assert manifest.thresholds == (score_of_probability(0.3),) * classes
    assert manifest.variant == "int8" and manifest.preprocessing.normalize_on_board
    imported = manifest.provenance["imported"]
    assert imported["file"] == "plain.tflite"
    assert imported["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()


def test_a_typed_label_the_bundle_does_not_have_names_the_labels_to_choose_from(plain_model, tmp_path):
    model, classes = plain_model
    out = tmp_path / "bundle.tflite"
    assert main(["import", str(model), "--labels", str(write_labels(tmp_path / "l.txt", classes)),
                 "--out", str(out)]) == 0
    with pytest.raises(UserError, match=r"'zebra': this bundle has fixed labels; choose from: class 0, class 1"):
        Annotator.create(AnnotatorOptions(out, labels=("class 1", "zebra")))
    with Annotator.create(AnnotatorOptions(out, labels=("The Class 1",))) as annotator:
        assert annotator.labels == ("The Class 1",)


def test_import_runs_without_tensorflow(plain_model, tmp_path):
    model, classes = plain_model
    labels = write_labels(tmp_path / "labels.txt", classes)
    code = (
        "import sys\nfrom fuselite.cli import main\n"
        f"code = main(['import', {str(model)!r}, '--labels', {str(labels)!r}, "
        f"'--out', {str(tmp_path / 'b.tflite')!r}])\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf_keras')"
        " or m.startswith('fuselite.train'))\n"
        "print(code, heavy)\n"
    )
    printed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", check=True)
    assert printed.stdout.strip().splitlines()[-1] == "0 []", printed.stdout + printed.stderr


# --- slow: a Keras MobileNetV2, fp32 and int8, with and without metadata ---------------------------


@pytest.fixture(scope="session")
def classifiers(tmp_path_factory) -> dict[str, Path]:
    """The MobileNetV2 classifiers of tests/support/classifiers.py (about a minute to build)."""
    from support.classifiers import build_classifiers

    return build_classifiers(tmp_path_factory.mktemp("classifiers"))


@pytest.fixture(scope="session")
def imported(classifiers, tmp_path_factory) -> dict[str, Path]:
    """Every classifier imported: metadata ones on their own, the others with --labels."""
    folder = tmp_path_factory.mktemp("imported")
    labels = str(classifiers["labels"])
    extra = {"float": ["--labels", labels, "--mean", str(MEAN), "--std", str(STD)],
             "int8": ["--labels", labels], "int8-logits": ["--labels", labels],
             "float-meta": [], "int8-meta": []}
    paths = {}
    for name, args in extra.items():
        paths[name] = folder / f"{name}.tflite"
        assert main(["import", str(classifiers[name]), *args, "--out", str(paths[name])]) == 0
    return paths


@pytest.mark.slow
def test_metadata_gives_the_labels_and_the_normalisation(imported):
    for name in ("float-meta", "int8-meta"):
        manifest = read_bundle(imported[name]).manifest
        assert manifest.labels == CLASSES
        assert manifest.provenance["labels"] == "labels.txt in the model's metadata"
    normalization = read_bundle(imported["float-meta"]).manifest.preprocessing.normalization
    assert normalization == pytest.approx((1 / STD, -MEAN / STD))
    # A uint8 input takes pixels as they are (MediaPipe's way); the metadata is only noted.
    assert read_bundle(imported["int8-meta"]).manifest.provenance["normalization"] == (
        "pixels are the uint8 input values; metadata mean 127.5 std 127.5 not applied")


@pytest.mark.slow
def test_manifests_read_variant_io_and_activation_from_the_model(imported):
    manifests = {name: read_bundle(path).manifest for name, path in imported.items()}
    assert {n: m.variant for n, m in manifests.items()} == {
        "float": "fp32", "float-meta": "fp32", "int8": "int8", "int8-meta": "int8", "int8-logits": "int8"}
    assert {n: m.preprocessing.input_dtype for n, m in manifests.items()} == {
        "float": "float32", "float-meta": "float32", "int8": "uint8", "int8-meta": "uint8",
        "int8-logits": "int8"}
    assert manifests["int8"].preprocessing.output_quant == pytest.approx((1 / 256, 0))
    assert manifests["int8-logits"].output_activation == "softmax"
    assert {m.output_activation for n, m in manifests.items() if n != "int8-logits"} == {"none"}
    assert {m.task for m in manifests.values()} == {"single"}
    assert all(m.preprocessing.input_size == (96, 96) for m in manifests.values())


@pytest.mark.slow
@pytest.mark.parametrize("name", ["float", "float-meta"])
def test_a_float_classifier_scores_what_keras_computes(imported, classifiers, name):
    frames, reference = np.load(classifiers["frames"]), np.load(classifiers["reference"])
    assert len(set(reference.argmax(axis=1))) >= 4  # the images score apart
    with Annotator.create(AnnotatorOptions(imported[name], num_threads=1)) as annotator:
        got = probabilities(annotator, frames)
        first = annotator.annotate(np.ascontiguousarray(frames[0][:, :, ::-1]), timestamp_ms=1e6)
    assert np.abs(got - reference).max() < 2e-3
    if reference[0].max() >= 0.5:  # single task: the top class, when it has half the probability
        assert [c.label for c in first.categories] == [CLASSES[int(reference[0].argmax())]]


def interpreter_probabilities(model_path: Path, frames: np.ndarray, mean: float, std: float) -> np.ndarray:
    """The classifier run directly: pixels normalised as (p - mean) / std, quantized with the
    input's parameters, the output dequantized (and softmaxed when it is logits)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(model_path), num_threads=1)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    (in_scale, in_zero), (out_scale, out_zero) = inp["quantization"], out["quantization"]
    info = np.iinfo(inp["dtype"])
    rows = []
    for frame in frames:
        real = (frame.astype(np.float32) - mean) / std
        quantized = np.clip(np.rint(real / in_scale + in_zero), info.min, info.max).astype(inp["dtype"])
        interpreter.set_tensor(inp["index"], quantized[None])
        interpreter.invoke()
        rows.append((interpreter.get_tensor(out["index"])[0].astype(np.float32) - out_zero) * out_scale)
    rows = np.array(rows)
    if "logits" in model_path.name:
        rows = np.exp(rows - rows.max(axis=1, keepdims=True))
        rows /= rows.sum(axis=1, keepdims=True)
    return rows


@pytest.mark.slow
@pytest.mark.parametrize(("name", "integer_range_low"), [
    ("int8-meta", 0),      # uint8 input with metadata: pixel p is the uint8 value p
    ("int8", 0),           # the same without metadata
    ("int8-logits", -128), # int8 input: pixel p is p - 128; softmax on the board
])
def test_an_int8_classifier_scores_what_its_interpreter_computes(imported, classifiers, name, integer_range_low):
    frames = np.load(classifiers["frames"])
    scale, zero = read_bundle(imported[name]).manifest.preprocessing.input_quant
    mean, std = zero - integer_range_low, 1 / scale  # (p - mean) / std quantizes to p + low exactly
    expected = interpreter_probabilities(classifiers[name], frames, mean, std)
    with Annotator.create(AnnotatorOptions(imported[name], num_threads=1)) as annotator:
        got = probabilities(annotator, frames)
    assert np.abs(got - expected).max() < 2e-3
    assert np.array_equal(got.argmax(axis=1), expected.argmax(axis=1))


@pytest.mark.slow
def test_run_bench_and_devices_check_work_on_an_imported_bundle(imported, classifiers, tmp_path):
    frames, reference = np.load(classifiers["frames"]), np.load(classifiers["reference"])
    data = tmp_path / "data"
    for index, (frame, probs) in enumerate(zip(frames, reference)):
        folder = data / CLASSES[int(probs.argmax())]
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"{index}.png"), frame[:, :, ::-1])
    bundle = imported["float-meta"]
    fuselite = [sys.executable, "-m", "fuselite.cli"]
    events = tmp_path / "events.jsonl"
    run = subprocess.run([*fuselite, "run", "--bundle", str(bundle), "--source", str(data / "cat"),
                          "--jsonl", str(events), "--display", "off"], check=False, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    records = [json.loads(line) for line in events.read_text().splitlines()]
    annotations = [r for r in records if r.get("type") == "annotation"]
    assert len(annotations) == int(reference.argmax(axis=1).tolist().count(0))
    assert {label["label"] for a in annotations for label in a["labels"]} == {"cat"}
    bench = subprocess.run([*fuselite, "bench", str(bundle), "--data", str(data), "--out", str(tmp_path / "bench"),
                            "--no-reference", "--runs", "10", "--sustain", "1"], check=False, capture_output=True, text=True)
    assert bench.returncode == 0, bench.stderr
    report = json.loads((tmp_path / "bench" / "report.json").read_text())
    assert json.dumps(report).count("fp32") >= 1 and "100.00" in bench.stdout
    check = subprocess.run([*fuselite, "devices", "check", "raspberry-pi-32bit", "--bundle", str(imported["int8"])],
                           check=False, capture_output=True, text=True)
    assert check.returncode == 0 and "PASS: raspberry-pi-32bit" in check.stdout, check.stdout + check.stderr


@pytest.mark.slow
def test_fuselite_run_with_a_label_the_bundle_lacks_is_one_line_exit_2(imported, classifiers, tmp_path):
    run = subprocess.run([sys.executable, "-m", "fuselite.cli", "run", "--bundle", str(imported["int8-meta"]),
                          "--source", str(tmp_path), "--labels", "cat,zebra"], check=False, capture_output=True, text=True)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1] == (
        "fuselite run: error: label 'zebra': this bundle has fixed labels; choose from: "
        "cat, dog, car, coffee cup, tree")


@pytest.mark.slow
def test_devices_verify_runs_the_imported_bundle_on_the_emulated_board(imported):
    from fuselite.devices.profiles import get_profile
    from fuselite.devices.verify import VerifyOptions, cache_ready, default_cache_dir, verify

    profile = get_profile("raspberry-pi-5")
    if not cache_ready(profile, default_cache_dir()):
        pytest.skip("no cached arm64 filesystem: run `fuselite devices verify raspberry-pi-5 --bundle FILE` once")
    result = verify(profile, VerifyOptions(bundle=imported["int8-meta"], cache_dir=default_cache_dir(),
                                           timeout=600))
    assert result.passed, result
    assert result.board["machine"] == profile.architecture
