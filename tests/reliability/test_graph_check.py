"""The static graph check refuses impossible graphs before any interpreter sees them.

``runtime/graphcheck.py`` reads every subgraph by hand and refuses indices that point
nowhere, an operator writing its own input, a graph input or a constant, two
producers of one tensor, operators out of order, and tensors declared larger than
1 GiB.  Hand-built two-operator chains (``flatbuffer_defects.chain_model``) hold one
defect each; the colour bundle's real models, edited by ``flatbuffer_defects.defects``,
show that the check refuses every index defect and absurd shape of a real graph and
nothing else.  One test shows why the child-process probe is the backstop: the
self-aliasing chain really segfaults the interpreter, and the probe turns that into a
BundleError.
"""

from __future__ import annotations

import numpy as np
import pytest
from flatbuffer_defects import AXIS0, AXIS1, FLOAT32, H, X, Y, chain_model, defects, mutated

from fuselite.bundle import BundleError, read_bundle
from fuselite.flatbuffer import ModelFormatError, Reader
from fuselite.runtime import childprobe
from fuselite.runtime.graphcheck import check_graph, graph_problems, read_graph
from fuselite.runtime.interpreter import TfliteModel


def refusal(model: bytes, name: str = "text encoder") -> str:
    with pytest.raises(BundleError) as caught:
        check_graph(model, name)
    message = str(caught.value)
    assert message.startswith(f"{name}: ") and message.endswith("; re-convert the bundle")
    return message


def test_the_hand_built_chain_passes_and_really_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("FUSELITE_CACHE_DIR", str(tmp_path))
    check_graph(chain_model(), "model")
    model = TfliteModel(chain_model(), num_threads=1, name="model")
    assert model.output.shape == (1, 1, 1, 4)
    model.close()


@pytest.mark.parametrize(
    ("operators", "expected"),
    [
        ([(0, [X, AXIS0], [H]), (0, [H, AXIS1], [H])],
         "operator 1 (EXPAND_DIMS) writes tensor 2 ('h'), which is also its input"),
        ([(0, [X, AXIS0], [Y]), (0, [H, AXIS1], [Y])],
         "operator 1 (EXPAND_DIMS) writes tensor 3 ('y'), which operator 0 writes too"),
        ([(0, [X, AXIS0], [H, H]), (0, [H, AXIS1], [Y])],
         "operator 0 (EXPAND_DIMS) writes tensor 2 ('h'), which operator 0 writes too"),
        ([(0, [X, AXIS0], [H]), (0, [H, AXIS1], [X])],
         "operator 1 (EXPAND_DIMS) writes tensor 0 ('x'), which is an input of the graph"),
        ([(0, [X, AXIS0], [AXIS1]), (0, [H, AXIS1], [Y])],
         "operator 0 (EXPAND_DIMS) writes tensor 4 ('axis1'), which is a constant"),
        ([(0, [H, AXIS1], [Y]), (0, [X, AXIS0], [H])],
         ("operator 0 (EXPAND_DIMS) reads tensor 2 ('h') before operator 1 writes it "
         "(operators out of order)")),
        ([(0, [X, AXIS0], [H]), (0, [H, 9], [Y])],
         "operator 1 (EXPAND_DIMS) uses tensor 9, but the tensors are numbered 0 to 4"),
        ([(0, [X, AXIS0], [H]), (0, [H, -5], [Y])],
         "operator 1 (EXPAND_DIMS) uses tensor -5, but the tensors are numbered 0 to 4"),
        ([(0, [X, AXIS0], [H]), (0, [H, AXIS1], [-1])],
         "operator 1 (EXPAND_DIMS) uses tensor -1, but the tensors are numbered 0 to 4"),
        ([(0, [X, AXIS0], [H]), (3, [H, AXIS1], [Y])],
         "operator 1 has opcode index 3, but the model's opcodes are numbered 0 to 0"),
    ],
    ids=["output-is-its-input", "two-producers", "written-twice-by-one", "writes-graph-input",
         "writes-constant", "out-of-order", "input-out-of-range", "input-negative",
         "output-minus-one", "opcode-out-of-range"],
)
def test_each_operator_defect_is_refused_with_what_and_where(operators, expected):
    assert refusal(chain_model(operators=operators)) == (
        f"text encoder: {expected}; re-convert the bundle")


def test_minus_one_is_allowed_for_an_optional_operator_input():
    check_graph(chain_model(operators=[(0, [X, AXIS0], [H]), (0, [H, AXIS1, -1], [Y])]), "m")


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"inputs": [7]}, "the graph's input is tensor 7, but its tensors are numbered 0 to 4"),
        ({"outputs": [-3]}, "the graph's output is tensor -3, but its tensors are numbered 0 to 4"),
        ({"edit": lambda p: p["tensors"].__setitem__(H, ("h", [1, 1, 4], 0, 12))},
         "tensor 2 ('h') points at buffer 12, but the model's buffers are numbered 0 to 2"),
        ({"buffers": []}, "tensor 0 ('x') points at buffer 0, but the model's buffers are missing"),
    ],
    ids=["graph-input", "graph-output", "buffer", "no-buffers"],
)
def test_graph_and_buffer_indices_out_of_range_are_refused(changes, expected):
    assert expected in refusal(chain_model(**changes))


def test_a_defect_in_a_later_subgraph_names_the_subgraph():
    def alias(model):
        model.subgraphs[1].operators[1].outputs = np.array([H], np.int32)

    message = refusal(mutated(chain_model(extra_subgraphs=1), alias))
    assert message.startswith("text encoder: subgraph 1: operator 1 (EXPAND_DIMS) writes tensor 2")


def test_a_tensor_declared_larger_than_a_board_holds_is_refused():
    """The fuzz's shape 2**31 - 1 on an activation made the interpreter take 16 s and 6 GB."""
    def huge(parts):
        parts["tensors"][H] = ("h", [2**31 - 1, 1, 4], FLOAT32, 0)

    assert refusal(chain_model(edit=huge)) == (
        "text encoder: tensor 2 ('h') is declared 32.0 GiB, more than any board holds "
        "(at most 1 GiB a tensor); re-convert the bundle")


def test_a_shape_of_thousands_of_huge_dimensions_is_refused_quickly():
    def many(parts):
        parts["tensors"][H] = ("h", [2**31 - 1] * 5000, FLOAT32, 0)

    assert "GiB, more than any board holds" in refusal(chain_model(edit=many))


def test_a_table_whose_vtable_is_zeroed_reads_as_all_fields_absent():
    """As the flatbuffers library reads it: the fuzz zeroed such vtables in models that
    the interpreter loaded and ran correctly, so the reader must not refuse them."""
    data = b"\x00\x00\x00\x00" + b"\x04\x00\x00\x00"  # a vtable of size 0, a table using it
    assert Reader(data).field(4, 0) is None
    with pytest.raises(ModelFormatError, match="broken vtable"):
        Reader(b"\x03\x00\x00\x00" + b"\x04\x00\x00\x00").field(4, 0)


def test_every_problem_is_listed_without_following_broken_indices():
    model = chain_model(operators=[(0, [X, 40], [H]), (5, [H, AXIS1], [H])])
    problems = list(graph_problems(read_graph(model)))
    assert problems == [
        "operator 0 (EXPAND_DIMS) uses tensor 40, but the tensors are numbered 0 to 4",
        "operator 1 has opcode index 5, but the model's opcodes are numbered 0 to 0",
    ]


@pytest.mark.parametrize("cut", [9, 16, 40, 100])
def test_a_flatbuffer_the_reader_cannot_follow_is_one_clear_error(cut):
    message = refusal(chain_model()[:cut], "image model")
    assert "the interpreter cannot load it (its flatbuffer is broken: " in message


@pytest.fixture(scope="module")
def colour_models(colour_bundles) -> dict[str, bytes]:
    bundle = read_bundle(colour_bundles["int8"])
    return {"image model": bundle.model_bytes, "text encoder": bundle.text_encoder_bytes}


# The fuzz's defects the graph check sees: indices, and shapes of 2**31 - 1 elements.
GRAPH_DEFECTS = ("input-out-of-range", "input-negative", "output-out-of-range",
                 "output-is-its-input", "opcode-out-of-range", "buffer-out-of-range",
                 "graph-input-out-of-range", "graph-output-out-of-range", "graph-output-negative",
                 "shape-huge")


def test_real_models_pass_and_every_graph_defect_of_theirs_is_refused(colour_models):
    refused, passed = [], []
    for part, model in colour_models.items():
        check_graph(model, part)
        for name, damaged in defects(model):
            try:
                check_graph(damaged, part)
            except BundleError:
                refused.append(name)
            else:
                passed.append(name)
    assert {n.split(":")[-1] for n in refused} == set(GRAPH_DEFECTS)
    assert not [n for n in passed if n.split(":")[-1] in GRAPH_DEFECTS]
    assert "roundtrip" in passed


def test_the_probe_turns_the_real_segfault_of_a_self_aliasing_operator_into_a_bundle_error(
    tmp_path, monkeypatch
):
    """Without the static check this graph reaches the interpreter: it dies of SIGSEGV
    in the first invoke (ai-edge-litert 2.3), in the probe's child, not in this process."""
    monkeypatch.setenv("FUSELITE_CACHE_DIR", str(tmp_path))
    model = chain_model(operators=[(0, [X, AXIS0], [H]), (0, [H, AXIS1], [H])])
    with pytest.raises(BundleError, match=r"^text encoder crashed the interpreter \(SIGSEGV"):
        childprobe.probe_load(model, "ai_edge_litert.interpreter", 1, "text encoder")
    assert list(tmp_path.iterdir()) == []  # a crash is never remembered


def test_tflite_model_refuses_a_bad_graph_before_any_interpreter_exists(monkeypatch):
    monkeypatch.setattr("fuselite.runtime.interpreter.interpreter_class",
                        lambda: pytest.fail("an interpreter was asked for"))
    model = chain_model(operators=[(0, [X, AXIS0], [H]), (0, [H, AXIS1], [H])])
    with pytest.raises(BundleError, match="^text encoder: operator 1 .* also its input"):
        TfliteModel(model, num_threads=1, name="text encoder")
