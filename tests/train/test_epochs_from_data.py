"""The tiny tower trains long enough on a small split (issue 32: sensible defaults).

On 1,663 clip-art training pictures the custom config's 40 epochs stopped the tiny tower while its
validation score was still rising; the custom config now trains it at least 1,500 steps.
"""

from __future__ import annotations

from fuselite.train.configs import (
    MAX_DATA_EPOCHS,
    MIN_TINY_STEPS,
    get_config,
    resolve_backbone,
    resolve_epochs,
)


def _custom(backbone: str = "tiny", **overrides):
    return resolve_backbone(get_config("custom").with_overrides(**overrides), backbone)


def test_a_small_split_gets_enough_epochs_for_the_minimum_steps_and_the_log_says_why():
    config, why = resolve_epochs(_custom(), train_items=1164)  # 18 steps of 64 per epoch
    assert config.epochs == -(-MIN_TINY_STEPS // 18) == 84
    assert "raised from 40" in why and "--epochs N sets it" in why
    assert not config.epochs_from_data  # settled once: a resumed run keeps it


def test_a_large_split_keeps_the_configs_epochs():
    config, why = resolve_epochs(_custom(), train_items=10_000)  # 156 steps per epoch: 40 epochs suffice
    assert config.epochs == 40 and why == ""


def test_a_tiny_split_is_capped():
    config, _ = resolve_epochs(_custom(), train_items=30)
    assert config.epochs == MAX_DATA_EPOCHS


def test_explicit_epochs_and_pretrained_backbones_are_left_alone():
    assert resolve_epochs(_custom(epochs=5), train_items=100)[0].epochs == 5  # --epochs wins
    assert resolve_epochs(_custom("efficientnet-lite0"), train_items=100)[0].epochs == 40
    assert resolve_epochs(get_config("scenes-default"), train_items=100)[0] == get_config("scenes-default")
