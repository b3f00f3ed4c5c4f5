"""The image tower's deepest-stage options (MobileNet v3): hard-swish and squeeze-and-excite.

Both apply from the last stride-2 block on, convert to ops every runtime loads, and
add no LOGISTIC op to the device's model.
"""

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


def _tower(activation: str = "relu6", squeeze_excite: int = 0):
    config = get_config("scenes-tiny").with_overrides(activation=activation, squeeze_excite=squeeze_excite)
    return image_encoder(config)


def _layers_ending(model, suffix: str) -> list[str]:
    return [layer.name for layer in model.layers if layer.name.endswith(suffix)]


def test_hard_swish_replaces_relu6_only_from_the_last_stride_2_block_on():
    # scenes-tiny: blocks (32, 1), (64, 2), (128, 2); the 16x16 stage is block2.
    assert _layers_ending(_tower("hard_swish"), "_hswish") == ["block2_dw_hswish", "block2_pw_hswish"]
    assert _layers_ending(_tower("relu6"), "_hswish") == []


def test_hard_swish_adds_no_weights():
    assert _tower("hard_swish").count_params() == _tower("relu6").count_params()


def test_squeeze_excite_gates_only_the_last_stage_with_the_reduced_weights():
    # scenes-tiny's block2 takes 64 channels: 64 -> 16 -> 64 with biases.
    tower = _tower(squeeze_excite=4)
    assert _layers_ending(tower, "_se_apply") == ["block2_se_apply"]
    assert tower.count_params() - _tower().count_params() == (64 * 16 + 16) + (16 * 64 + 64)


@pytest.mark.parametrize("variant", ["fp32", "int8"])
@pytest.mark.parametrize(
    ("options", "expected_op"),
    [({"activation": "hard_swish"}, "HARD_SWISH"), ({"squeeze_excite": 4}, "MEAN")],
    ids=["hard_swish", "squeeze_excite"],
)
@pytest.mark.slow
def test_deep_stage_options_convert_to_ops_that_every_runtime_loads(variant: str, options: dict, expected_op: str):
    tower = _tower(**options)
    images = np.random.default_rng(0).integers(0, 256, (16, 64, 64, 3), dtype=np.uint8)
    model_bytes = convert_image_model(tower, get_variant(variant), calibration=images)
    ops = {op.name for op in model_ops(model_bytes)}
    assert expected_op in ops and "LOGISTIC" not in ops
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


def test_a_negative_squeeze_excite_reduction_is_refused():
    with pytest.raises(UserError, match="squeeze_excite -1"):
        get_config("scenes-tiny").with_overrides(squeeze_excite=-1)
