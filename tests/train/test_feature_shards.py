"""Each worker of a multi-worker job computes and caches only its shard of the feature maps (issue 35)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from fuselite.train.distributed import Shard, cluster_from_env


@pytest.mark.parametrize("count", [0, 1, 7, 960, 961])
@pytest.mark.parametrize("workers", [1, 2, 3, 8])
def test_the_shards_of_a_split_are_disjoint_and_cover_it(count, workers):
    shards = [Shard(index, workers).items(count) for index in range(workers)]
    together = np.concatenate(shards)
    assert sorted(together.tolist()) == list(range(count))  # each item once, none left out
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    for index, items in enumerate(shards):
        assert all(item % workers == index for item in items)


def test_one_worker_owns_every_item_in_order():
    assert Shard(0, 1).items(5).tolist() == [0, 1, 2, 3, 4]


def test_a_workers_shard_is_its_rank_in_tf_config():
    cluster = {"chief": ["a:1"], "worker": ["b:1", "c:1"]}
    shards = [cluster_from_env({"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": kind, "index": i}})}).shard
              for kind, i in (("chief", 0), ("worker", 0), ("worker", 1))]
    assert shards == [Shard(0, 3), Shard(1, 3), Shard(2, 3)]
    assert [shard.name for shard in shards] == ["shard0of3", "shard1of3", "shard2of3"]


@pytest.fixture()
def cache_dir(tmp_path, monkeypatch):
    """An empty feature cache of this test's own."""
    monkeypatch.setenv("FUSELITE_CACHE_DIR", str(tmp_path))
    return tmp_path / "features"


def test_the_cache_file_names_the_shard_and_one_worker_keeps_its_name(cache_dir):
    from fuselite.train.features import cache_key, feature_cache_path

    images = np.arange(4 * 8 * 8 * 3, dtype=np.uint8).reshape(4, 8, 8, 3)
    whole = feature_cache_path(images, "lite0|default|160")
    assert whole == cache_dir / f"{cache_key(images, 'lite0|default|160')}.npy"  # as before sharding
    halves = [feature_cache_path(images, "lite0|default|160", Shard(i, 2)) for i in range(2)]
    thirds = [feature_cache_path(images, "lite0|default|160", Shard(i, 3)) for i in range(3)]
    assert halves[1].name.endswith("-shard1of2.npy") and thirds[1].name.endswith("-shard1of3.npy")
    assert len({whole, *halves, *thirds}) == 6


@pytest.fixture(scope="module")
def backbone():
    """A real, weightless Keras backbone: 4x4 average pooling of the scaled pixels."""
    from fuselite.train.backend import keras

    return keras.Sequential([keras.layers.Rescaling(1 / 255), keras.layers.AveragePooling2D(4)])


def test_each_worker_computes_and_caches_only_its_shard(cache_dir, backbone):
    from fuselite.train.features import backbone_features

    images = np.random.default_rng(0).integers(0, 256, (9, 8, 8, 3), dtype=np.uint8)
    whole = backbone_features(backbone, images, "avg|none|8", "train")
    parts = [backbone_features(backbone, images, "avg|none|8", "train", Shard(i, 2)) for i in range(2)]
    assert [len(part) for part in parts] == [5, 4]
    np.testing.assert_array_equal(parts[0], whole[0::2])
    np.testing.assert_array_equal(parts[1], whole[1::2])
    [path0], [path1] = cache_dir.glob("*-shard0of2.npy"), cache_dir.glob("*-shard1of2.npy")
    assert len(list(cache_dir.iterdir())) == 3  # the 1-worker cache, and one per shard
    np.testing.assert_array_equal(np.load(path0), parts[0])
    np.testing.assert_array_equal(np.load(path1), parts[1])
    # A second run of the same worker reads its shard back instead of computing it.
    path = path1
    np.save(path, np.full_like(parts[1], 7))
    again = backbone_features(backbone, images, "avg|none|8", "train", Shard(1, 2))
    assert (again == 7).all()


def test_a_worker_trains_on_its_own_items_and_validates_on_all(cache_dir, backbone):
    from fuselite.data.dataset import ImageTextData, Splits
    from fuselite.data.sources import RunData
    from fuselite.train.features import feature_run_data

    def split(n, name):
        images = np.random.default_rng(n).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
        return ImageTextData(images=images, tags=[[f"t{i}"] for i in range(n)], captions=[f"c{i}" for i in range(n)],
                             ids=[f"{name}{i}" for i in range(n)], task="multi", name=name)

    data = RunData(split(7, "train"), split(3, "val"), split(2, "test"), None, Splits([], [], []))
    config = SimpleNamespace(backbone="avg", backbone_weights="none", image_size=8, seed=0)
    model = SimpleNamespace(image_parts=[backbone])
    mine = feature_run_data(model, data, config, Shard(1, 2))
    assert mine.train.ids == ["train1", "train3", "train5"] and mine.train.tags == [["t1"], ["t3"], ["t5"]]
    whole = feature_run_data(model, data, config)
    np.testing.assert_array_equal(mine.train.images, whole.train.images[1::2])
    assert len(mine.val) == 3 and mine.val.ids == data.val.ids
    np.testing.assert_array_equal(mine.val.images, whole.val.images)
