"""Specification of the synthetic scene generator."""

from __future__ import annotations

import numpy as np
import pytest

from fuselite.data.scenes import (
    COLOR_RGB,
    SceneObject,
    SceneSpec,
    generate_scenes,
    object_box,
    random_objects,
    render_scene,
    scene_caption,
    scene_tags,
)

SPEC = SceneSpec()
HELDOUT_TAGS = {f"{color} {shape}" for color, shape in SPEC.heldout_combos}


def _obj(color: str, shape: str, size: str = "large", center=(32.0, 32.0), radius: float = 14.0):
    return SceneObject(color, shape, size, center, radius, angle=10.0)


def test_same_seed_gives_identical_bytes():
    first = generate_scenes(20, seed=5)
    second = generate_scenes(20, seed=5)
    assert first.images.tobytes() == second.images.tobytes()
    assert first.tags == second.tags and first.captions == second.captions


def test_different_seed_or_pool_gives_different_scenes():
    base = generate_scenes(20, seed=5)
    assert base.images.tobytes() != generate_scenes(20, seed=6).images.tobytes()
    assert base.images.tobytes() != generate_scenes(20, seed=5, heldout=True).images.tobytes()


@pytest.mark.parametrize("image_size", [64, 96, 128])
def test_images_are_uint8_rgb_of_the_requested_size(image_size):
    data = generate_scenes(6, SceneSpec(image_size=image_size), seed=1)
    assert data.images.shape == (6, image_size, image_size, 3)
    assert data.images.dtype == np.uint8
    assert data.task == "multi" and data.name == "scenes"


def test_ids_name_the_pool_and_seed():
    assert generate_scenes(3, seed=7).ids == ["scene-7-0", "scene-7-1", "scene-7-2"]
    assert generate_scenes(2, seed=7, heldout=True).ids == ["heldout-7-0", "heldout-7-1"]


def test_tags_list_colour_shape_size_and_their_combos():
    objects = [_obj("red", "circle", "large"), _obj("blue", "star", "small")]
    assert scene_tags(objects) == sorted(
        [
            "red",
            "circle",
            "red circle",
            "large",
            "large circle",
            "blue",
            "star",
            "blue star",
            "small",
            "small star",
        ]
    )


def test_caption_joins_objects_with_commas_and_a_final_and():
    one = [_obj("red", "circle")]
    two = one + [_obj("blue", "star", "small")]
    three = two + [_obj("green", "cross", "small")]
    assert scene_caption(one) == "a large red circle"
    assert scene_caption(two) == "a large red circle and a small blue star"
    assert scene_caption(three) == "a large red circle, a small blue star and a small green cross"


def test_random_objects_respect_counts_sizes_and_bounds():
    rng = np.random.default_rng(0)
    for _ in range(300):
        objects = random_objects(rng, SPEC, allow_heldout=False)
        assert 1 <= len(objects) <= SPEC.max_objects
        for obj in objects:
            fraction = obj.radius / SPEC.image_size
            assert 0.10 <= fraction <= 0.14 if obj.size == "small" else 0.20 <= fraction <= 0.26
            assert obj.radius <= obj.center[0] <= SPEC.image_size - obj.radius
            assert obj.radius <= obj.center[1] <= SPEC.image_size - obj.radius
        for i, a in enumerate(objects):
            for b in objects[i + 1 :]:
                assert (
                    np.hypot(a.center[0] - b.center[0], a.center[1] - b.center[1])
                    > a.radius + b.radius
                )


def test_generated_tags_and_captions_agree():
    data = generate_scenes(200, seed=2)
    for tags, caption in zip(data.tags, data.captions):
        for phrase in caption.replace(" and ", ", ").split(", "):
            _, size, color, shape = phrase.split(" ")
            assert {color, shape, size, f"{color} {shape}", f"{size} {shape}"} <= set(tags)


def test_training_pool_never_contains_a_heldout_combo():
    data = generate_scenes(500, seed=3)
    assert not any(HELDOUT_TAGS & set(tags) for tags in data.tags)


def test_heldout_pool_always_contains_a_heldout_combo():
    data = generate_scenes(300, seed=3, heldout=True)
    assert all(HELDOUT_TAGS & set(tags) for tags in data.tags)
    # Every held-out combo is represented, not just the first one.
    assert HELDOUT_TAGS <= {t for tags in data.tags for t in tags}


@pytest.mark.parametrize("shape", SPEC.shapes)
@pytest.mark.parametrize("color", SPEC.colors)
def test_object_centre_has_its_nominal_colour(color, shape):
    rng = np.random.default_rng(4)
    obj = _obj(color, shape, "small", center=(30.3, 33.6), radius=0.11 * 64)
    image = render_scene([obj], 64, rng, SPEC)
    x, y = round(obj.center[0]), round(obj.center[1])
    centre = image[y - 1 : y + 2, x - 1 : x + 2].reshape(-1, 3).mean(axis=0)
    assert np.abs(centre - np.array(COLOR_RGB[color])).max() < 30


@pytest.mark.parametrize("shape", SPEC.shapes)
def test_each_objects_box_holds_exactly_its_drawn_pixels(shape):
    """The recorded box (the pointing game's ground truth) bounds the object's pixels tightly."""
    spec = SceneSpec(noise=0.0, clutter=0)
    obj = SceneObject("red", shape, "large", (27.4, 35.2), 0.22 * 64, angle=17.0)
    image = render_scene([obj], 64, np.random.default_rng(0), spec)
    ys, xs = np.nonzero(image[..., 0].astype(int) - image[..., 2] > 100)  # red where the object is
    x0, y0, x1, y1 = (v * 64 for v in object_box(obj, 64).box)  # pixel i spans [i, i + 1]
    drawn = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    # Equal within the anti-aliased pixel that the outline partly covers on each side.
    assert np.abs(np.subtract(drawn, (x0, y0, x1, y1))).max() <= 1.1
    assert object_box(obj, 64).tags == ("red", shape, f"red {shape}", "large", f"large {shape}")


def test_generated_scenes_record_one_box_per_object_with_its_tags():
    data = generate_scenes(20, SPEC, seed=3)
    for tags, objects in zip(data.tags, data.objects):
        assert {t for o in objects for t in o.tags} == set(tags)
        assert all(0.0 <= o.box[0] < o.box[2] <= 1.0 and 0.0 <= o.box[1] < o.box[3] <= 1.0 for o in objects)
    assert data.subset([4, 2]).objects == [data.objects[4], data.objects[2]]


def test_spec_rejects_unknown_colour_and_heldout_outside_the_spec():
    with pytest.raises(ValueError, match="unknown colours"):
        SceneSpec(colors=("red", "mauve"))
    with pytest.raises(ValueError, match="held-out combo"):
        SceneSpec(colors=("red", "blue"))
