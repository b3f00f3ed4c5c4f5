"""The op-list reader and the runtime op tables (fuselite.devices.compat)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from devices_opcodes import code, opcode_model

from fuselite.bundle import read_bundle
from fuselite.devices.compat import (
    ModelFormatError,
    OpCode,
    bundle_ops,
    check_ops,
    get_runtime,
    list_runtimes,
    loadable_runtimes,
    ops_to_strings,
    read_ops,
)
from fuselite.errors import UserError

TFLRT214_PYTHON = Path(os.environ.get("FUSELITE_TFLITE_RUNTIME_214_PYTHON", "/tmp/tflrt214/bin/python"))


def test_read_ops_takes_the_larger_of_the_two_builtin_code_fields():
    fc, stablehlo = code("FULLY_CONNECTED"), code("STABLEHLO_ADD")
    model = opcode_model([
        (fc, None, 3, None),  # an old model: only the int8 field
        (127, stablehlo, 1, None),  # codes above 127 live only in the int32 field
        (0, fc, 12, None),  # a new converter may leave the int8 field at 0
    ])
    assert read_ops(model) == (OpCode("FULLY_CONNECTED", 3), OpCode("FULLY_CONNECTED", 12), OpCode("STABLEHLO_ADD", 1))


def test_read_ops_names_custom_ops_and_unknown_codes():
    model = opcode_model([(32, 32, 1, "MyCustomOp"), (127, 5000, 2, None)])
    assert read_ops(model) == (OpCode("BUILTIN_5000", 2), OpCode("MyCustomOp", 1, custom=True))


def test_read_ops_ignores_bytes_after_the_flatbuffer():
    model = opcode_model([(code("ADD"), code("ADD"), 2, None)])
    assert read_ops(model + b"PK\x03\x04 trailing zip") == (OpCode("ADD", 2),)


@pytest.mark.parametrize("data", [b"", b"not a model at all", b"\x00" * 4 + b"TFL3"])
def test_read_ops_rejects_bytes_that_are_not_a_model(data):
    with pytest.raises(ModelFormatError):
        read_ops(data)


def test_read_ops_reports_a_truncated_model_instead_of_crashing():
    model = opcode_model([(code("ADD"), code("ADD"), 2, None)])
    with pytest.raises(ModelFormatError):
        read_ops(model[:12])


def test_opcode_string_round_trips():
    for op in (OpCode("CONV_2D", 3), OpCode("Foo", 1, custom=True)):
        assert OpCode.parse(str(op)) == op
    with pytest.raises(ValueError, match="CONV_2D v3"):
        OpCode.parse("CONV_2D")


def test_check_ops_explains_fully_connected_v12_on_tflite_runtime_214():
    problems = check_ops([OpCode("FULLY_CONNECTED", 12), OpCode("CONV_2D", 1)], "tflite-runtime-2.14")
    assert problems == [
        (
            "FULLY_CONNECTED v12 needs a newer runtime than tflite-runtime 2.14 (max v10); "
            "use the fp32 or int8 variant, or ai-edge-litert 2.x"
        )
    ]
    assert check_ops([OpCode("FULLY_CONNECTED", 12)], "ai-edge-litert") == []


def test_check_ops_flags_missing_and_custom_ops():
    problems = check_ops([OpCode("STABLEHLO_ADD", 1), OpCode("Foo", 1, custom=True)], "tflite-runtime-2.14")
    assert any(p.startswith("STABLEHLO_ADD is not in tflite-runtime 2.14") and "ai-edge-litert" in p for p in problems)
    assert any(p.startswith("custom op 'Foo' is not built into") for p in problems)


def test_check_ops_flags_versions_below_the_minimum():
    # BROADCAST_TO v1 was rolled back; runtimes register v2 and up only.
    assert check_ops([OpCode("BROADCAST_TO", 1)], "tflite-runtime-2.14")


def test_unknown_runtime_lists_the_known_ones():
    with pytest.raises(UserError, match="known: ai-edge-litert, tflite-runtime-2.14"):
        get_runtime("tflite-runtime-1.0")


@pytest.mark.parametrize("key", list_runtimes())
def test_runtime_table_is_complete(key):
    spec = get_runtime(key)
    assert spec.key == key and spec.requirements and spec.probed
    assert spec.requirements[0].startswith(spec.package)
    assert spec.max_versions["FULLY_CONNECTED"] >= 9
    assert all(v >= 1 for v in spec.max_versions.values())
    assert all(spec.min_versions[n] <= spec.max_versions[n] for n in spec.min_versions)


def test_tflite_runtime_214_table_matches_tensorflow_register_cc():
    # AddBuiltin(..., min_version, max_version) in TensorFlow v2.14.0 register.cc
    table = get_runtime("tflite-runtime-2.14").max_versions
    expected = {"FULLY_CONNECTED": 10, "CONV_2D": 7, "DEPTHWISE_CONV_2D": 7, "ADD": 5, "MUL": 7, "SOFTMAX": 3}
    assert {name: table[name] for name in expected} == expected


# --- real converted models ---------------------------------------------------------


@pytest.mark.slow
def test_fp32_and_int8_load_everywhere_but_dynamic_needs_ai_edge_litert(op_bundles):
    loadable = {v: loadable_runtimes(bundle_ops(read_bundle(p))) for v, p in op_bundles.items()}
    assert loadable["fp32"] == {"ai-edge-litert": True, "tflite-runtime-2.14": True}
    assert loadable["int8"] == {"ai-edge-litert": True, "tflite-runtime-2.14": True}
    assert loadable["dynamic"] == {"ai-edge-litert": True, "tflite-runtime-2.14": False}
    problems = check_ops(bundle_ops(read_bundle(op_bundles["dynamic"])), "tflite-runtime-2.14")
    assert problems and all(p.startswith("FULLY_CONNECTED v12 needs a newer runtime") for p in problems)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["fp32", "dynamic", "int8"])
def test_reader_agrees_with_the_generated_flatbuffers_schema(op_bundles, variant):
    schema = pytest.importorskip("ai_edge_litert.schema_py_generated")
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    data = read_bundle(op_bundles[variant]).model_bytes
    model = schema.Model.GetRootAs(data, 0)
    expected = set()
    for i in range(model.OperatorCodesLength()):
        op = model.OperatorCodes(i)
        expected.add(OpCode(names[max(op.BuiltinCode(), op.DeprecatedBuiltinCode())], op.Version()))
    assert set(read_ops(data)) == expected


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["fp32", "dynamic", "int8"])
def test_prediction_matches_the_installed_ai_edge_litert(op_bundles, variant):
    interpreter = pytest.importorskip("ai_edge_litert.interpreter")
    bundle = read_bundle(op_bundles[variant])
    assert loadable_runtimes(read_ops(bundle.model_bytes))["ai-edge-litert"]
    interpreter.Interpreter(model_content=bundle.model_bytes)  # raises if it cannot load


@pytest.mark.slow
@pytest.mark.skipif(not TFLRT214_PYTHON.exists(), reason=(
    f"no tflite-runtime 2.14 environment at {TFLRT214_PYTHON}: create it with `python3.11 -m venv "
    "/tmp/tflrt214 && /tmp/tflrt214/bin/pip install tflite-runtime==2.14.0 'numpy<2'` "
    "or set FUSELITE_TFLITE_RUNTIME_214_PYTHON"))
@pytest.mark.parametrize("variant", ["fp32", "dynamic", "int8"])
def test_prediction_matches_the_real_tflite_runtime_214(op_bundles, variant):
    bundle = read_bundle(op_bundles[variant])
    model = op_bundles[variant].with_suffix(".tflite")
    model.write_bytes(bundle.model_bytes)
    script = "import sys; from tflite_runtime.interpreter import Interpreter; Interpreter(model_path=sys.argv[1])"
    done = subprocess.run([str(TFLRT214_PYTHON), "-c", script, str(model)], capture_output=True, text=True,
                          timeout=120, check=False)
    predicted = loadable_runtimes(read_ops(bundle.model_bytes))["tflite-runtime-2.14"]
    assert (done.returncode == 0) == predicted, done.stderr
    if not predicted:
        assert "Didn't find op for builtin opcode 'FULLY_CONNECTED' version '12'" in done.stderr


def test_ops_to_strings_is_sorted_and_unique():
    ops = [OpCode("MEAN", 2), OpCode("ADD", 1), OpCode("ADD", 1)]
    assert ops_to_strings(ops) == ["ADD v1", "MEAN v2"]
