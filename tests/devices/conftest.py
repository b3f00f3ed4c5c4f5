"""Fixtures of the devices tests: a hand-made bundle (no TensorFlow).

The real op bundles (fp32, dynamic, int8, converted by TensorFlow) are ``op_bundles``, a
session fixture of ``tests/conftest.py``.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from devices_opcodes import code, opcode_model

from fuselite.bundle import Manifest, Preprocessing, write_bundle
from fuselite.tokenizer import Tokenizer


@pytest.fixture
def handmade_bundle(tmp_path: Path) -> Path:
    """A valid bundle whose models are hand-made flatbuffers using FULLY_CONNECTED v1 (no TF)."""
    model = opcode_model([(code("FULLY_CONNECTED"), code("FULLY_CONNECTED"), 1, None)])
    tokenizer = Tokenizer.fit(["a cup"], max_length=4)
    manifest = Manifest(
        variant="fp32", task="single", labels=("a cup",), thresholds=(0.5,), default_threshold=0.5,
        embedding_dim=4, logit_scale=1.0, logit_bias=0.0, preprocessing=Preprocessing(input_size=(16, 16)),
    )
    return write_bundle(
        tmp_path / "handmade.fuselite", model_bytes=model, manifest=manifest, tokenizer=tokenizer,
        label_embeddings=np.ones((1, 4), np.float32) / 2, text_encoder_bytes=model,
    )


def u32(value: int) -> bytes:
    """Little-endian uint32, for hand-corrupting flatbuffers."""
    return struct.pack("<I", value)
