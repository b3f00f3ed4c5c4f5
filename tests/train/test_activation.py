"""The image tower's ``activation`` option: hard-swish in the deepest stage, one op on the device."""

from __future__ import annotations

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

from fuselite.convert.modelinfo import model_ops, runtime_problems
from fuselite.convert.tflite import convert_image_model
from fuselite.convert.variants import get_variant
from fuselite.errors import UserError
from fuselite.train.configs import get_config
from fuselite.train.model import image_encoder


def _tower(activation: str):
    return image_encoder(get_config("scenes-tiny").with_overrides(activation=activation))


def _hard_swish_layers(model) -> list[str]:
    return [layer.name for layer in model.layers if layer.name.endswith("_hswish")]


def test_hard_swish_replaces_relu6_only_from_the_last_stride_2_block_on():
    # scenes-tiny: blocks (32, 1), (64, 2), (128, 2); the 16x16 stage is block2.
    assert _hard_swish_layers(_tower("hard_swish")) == ["block2_dw_hswish", "block2_pw_hswish"]
    assert _hard_swish_layers(_tower("relu6")) == []


def test_hard_swish_adds_no_weights():
    assert _tower("hard_swish").count_params() == _tower("relu6").count_params()


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_hard_swish_tower_converts_to_one_op_that_every_runtime_loads(variant: str):
    tower = _tower("hard_swish")
    images = np.random.default_rng(0).integers(0, 256, (16, 64, 64, 3), dtype=np.uint8)
    model_bytes = convert_image_model(tower, get_variant(variant), calibration=images)
    ops = {op.name for op in model_ops(model_bytes)}
    assert "HARD_SWISH" in ops and "LOGISTIC" not in ops
    assert runtime_problems(model_ops(model_bytes)) == {key: [] for key in runtime_problems(())}
    if variant == "fp32":
        np.testing.assert_allclose(_tflite_embedding(model_bytes, images[:1]), tower(images[:1]).numpy(), atol=1e-4)


def _tflite_embedding(model_bytes: bytes, image: np.ndarray) -> np.ndarray:
    interpreter = Interpreter(model_content=model_bytes)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], image)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def test_an_unknown_activation_is_refused_naming_the_choices():
    with pytest.raises(UserError, match="relu6, hard_swish"):
        get_config("scenes-tiny").with_overrides(activation="gelu")
