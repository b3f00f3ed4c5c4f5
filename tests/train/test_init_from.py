"""``fuselite train --init-from RUN``: a new run starts from an earlier run's towers."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from fuselite.cli import main
from fuselite.tokenizer import Tokenizer
from fuselite.train.init_from import merged_labels, merged_tokenizer


def test_the_merged_vocabulary_keeps_every_earlier_word_at_its_id():
    earlier = Tokenizer.fit(["red circle", "blue star"], max_length=8)
    merged = merged_tokenizer(earlier, ["orange blob", "red square"])
    assert merged.vocab[: earlier.vocab_size] == earlier.vocab
    assert set(merged.vocab[earlier.vocab_size:]) == {"orange", "blob", "square"}
    assert merged.encode("red circle") == earlier.encode("red circle")
    assert merged.max_length == earlier.max_length


def test_the_merged_labels_are_the_earlier_ones_then_the_new():
    assert merged_labels(["cat", "dog"], ["bird", "cat"]) == ["cat", "dog", "bird"]


def _colour_folders(root, count=24):
    """Two new classes as a folder per class: purple squares and orange blobs."""
    rng = np.random.default_rng(0)
    for name, colour in (("purple_square", (200, 0, 200)), ("orange_blob", (0, 140, 255))):
        (root / name).mkdir(parents=True)
        for i in range(count):
            image = np.full((64, 64, 3), 120, np.uint8)
            x, y = (int(v) for v in rng.integers(4, 40, 2))
            cv2.rectangle(image, (x, y), (x + 20, y + 20), colour, -1)
            cv2.imwrite(str(root / name / f"{i}.png"), image)
    return root


@pytest.fixture(scope="module")
def continued_run(tiny_run, tmp_path_factory):
    """``tiny_run`` continued for one epoch on two new classes."""
    data = _colour_folders(tmp_path_factory.mktemp("new-data") / "classes")
    out = tmp_path_factory.mktemp("continued") / "run"
    code = main(["train", "--config", "custom", "--data", str(data), "--init-from", str(tiny_run),
                 "--epochs", "1", "--out", str(out)])
    assert code == 0
    return out


def test_a_continued_run_merges_labels_and_records_where_it_started(continued_run, tiny_run):
    labels = json.loads((continued_run / "labels.json").read_text())["labels"]
    earlier = json.loads((tiny_run / "labels.json").read_text())["labels"]
    assert labels[: len(earlier)] == earlier
    assert "orange blob" in labels and labels.count("purple square") == 1
    assert json.loads((continued_run / "metrics.json").read_text())["init_from"] == str(tiny_run.resolve())
    config = json.loads((continued_run / "config.json").read_text())
    assert config["init_from"] == str(tiny_run.resolve())
    assert config["blocks"] == json.loads((tiny_run / "config.json").read_text())["blocks"]


def test_before_any_step_the_continued_towers_are_the_earlier_ones(tiny_run):
    from fuselite.train.init_from import load_earlier_weights
    from fuselite.train.model import FusedModel
    from fuselite.train.pipeline import embed_texts
    from fuselite.train.run import load_run

    earlier = load_run(tiny_run)
    labels = merged_labels(earlier.labels, ["orange blob"])
    tokenizer = merged_tokenizer(earlier.tokenizer, labels)
    model = FusedModel(earlier.config, tokenizer.vocab_size, tokenizer.encode_batch(labels))
    load_earlier_weights(model, earlier)
    before = embed_texts(earlier.text_encoder, earlier.tokenizer, earlier.labels)
    after = embed_texts(model.text_encoder, tokenizer, earlier.labels)
    np.testing.assert_allclose(after, before, atol=1e-6)
    np.testing.assert_allclose(model.logit_scale_value(), earlier.logit_scale, rtol=1e-5)


def test_init_from_refuses_a_flag_that_would_change_the_architecture(tiny_run, tmp_path, capsys):
    code = main(["train", "--config", "custom", "--data", str(tmp_path), "--init-from", str(tiny_run),
                 "--image-size", "96", "--out", str(tmp_path / "run")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "keeps its image_size" in err and "\n" not in err
