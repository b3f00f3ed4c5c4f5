"""Feature maps of a frozen pretrained backbone, computed once and cached on disk.

A frozen EfficientNet-Lite0 costs about 16 ms per 224 px image on two CPU cores,
while the projection and the text tower on top of it cost almost nothing.  So
training runs the backbone once over the training and validation images (with a
progress bar), keeps the feature maps as float16 on disk, and trains every epoch
on them in seconds.  The cache is keyed by the backbone, its weights, the input
size and the exact image bytes, so a second run on the same data starts at once
and any change to the data or the backbone computes afresh.

In a multi-worker job each worker computes and caches only its own shard of the
training items (:class:`fuselite.train.distributed.Shard`), so the backbone's cost
is split across the workers; the file names the shard (``<key>-shard1of2.npy``), so
runs with other numbers of workers never read each other's caches.

They live in ``features/`` under ``$FUSELITE_CACHE_DIR`` (default ``~/.cache/fuselite``).
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fuselite.files import cache_root, write_atomic

log = logging.getLogger(__name__)

FEATURE_BATCH = 32


@dataclass
class FeatureSplit:
    """A split whose pictures stand as backbone feature maps, for the input pipeline.

    It answers what :func:`fuselite.train.pipeline.make_dataset` and the validation
    score ask of an ``ImageTextData`` (``images``, ``multi_hot``, ``captions``, ...),
    with ``images`` being float16 feature maps ``[N, h, w, C]``.

    Attributes:
        images: The feature maps.
        source: The split they were computed from (tags, captions, task).
    """

    images: np.ndarray
    source: object

    def __len__(self) -> int:
        return len(self.images)

    def __getattr__(self, name: str):
        """Everything but the pictures comes from the source split."""
        if name == "source":  # not set yet (copying): never recurse
            raise AttributeError(name)
        return getattr(self.source, name)


def backbone_id(config) -> str:
    """What decides a backbone's feature maps: its name, weights and input size."""
    weights = config.backbone_weights or "default"
    path = Path(weights)
    if path.is_file():  # a local weights file: its identity, not only its name
        weights = f"{path.resolve()}:{path.stat().st_size}:{path.stat().st_mtime_ns}"
    elif weights.lower() == "none":  # random weights differ with the seed
        weights = f"random:{config.seed}"
    return f"{config.backbone}|{weights}|{config.image_size}"


def feature_run_data(model, data, config, shard=None):
    """``data`` with its training and validation pictures replaced by cached feature maps.

    With a ``shard`` (:class:`fuselite.train.distributed.Shard`), the training split
    keeps only this worker's items, and only their feature maps are computed.  The
    validation split stays whole: every worker scores all of it, so that all take the
    same checkpoint and early-stopping decisions.
    """
    backbone = model.image_parts[0]
    key = backbone_id(config)
    source = data.train if shard is None else data.train.subset(shard.items(len(data.train)))
    train = FeatureSplit(backbone_features(backbone, data.train.images, key, "train", shard), source)
    val = FeatureSplit(backbone_features(backbone, data.val.images, key, "validation"), data.val)
    return replace(data, train=train, val=val)


def features_dir() -> Path:
    """The folder feature maps are cached in (under :func:`fuselite.files.cache_root`)."""
    root = cache_root()
    if root is None:  # no home: a folder that lasts as long as the machine's temp files
        root = Path(tempfile.gettempdir()) / "fuselite"
    return root / "features"


def cache_key(images: np.ndarray, backbone_id: str) -> str:
    """A name for the feature maps of ``images`` under ``backbone_id`` (name, weights, size)."""
    digest = hashlib.sha256(backbone_id.encode())
    digest.update(str(images.shape).encode())
    digest.update(np.ascontiguousarray(images).data)
    return digest.hexdigest()[:32]


def backbone_features(backbone, images: np.ndarray, backbone_id: str, what: str, shard=None) -> np.ndarray:
    """The backbone's feature maps of uint8 ``images`` ``[N, S, S, 3]``, as float16.

    Read from the cache when this backbone has already seen exactly these images;
    otherwise computed in batches with a progress bar and written to the cache.
    With a ``shard``, only the shard's items (``shard.items(N)``, in that order).
    """
    path = feature_cache_path(images, backbone_id, shard)
    if shard is not None:
        images = images[shard.items(len(images))]
        what = f"{what} ({shard.name})"
    cached = _read_cache(path, len(images))
    if cached is not None:
        log.info("%s: %d cached feature maps from %s", what, len(images), path)
        return cached
    features = _compute(backbone, images, what)
    try:
        write_atomic(path, _npy_bytes(features))
    except OSError as exc:  # a full or read-only disk costs the cache, not the run
        log.warning("could not cache feature maps in %s (%s)", path.parent, exc.strerror)
    return features


def feature_cache_path(images: np.ndarray, backbone_id: str, shard=None) -> Path:
    """The cache file of the feature maps of ``images`` (all of them, or ``shard``'s items only)."""
    key = cache_key(images, backbone_id)
    return features_dir() / (f"{key}.npy" if shard is None else f"{key}-{shard.name}.npy")


def _compute(backbone, images: np.ndarray, what: str) -> np.ndarray:
    """Runs the frozen backbone over ``images`` in batches, with a progress bar."""
    out = None
    batches = range(0, len(images), FEATURE_BATCH)
    for start in tqdm(batches, desc=f"{what}: backbone features", unit="batch", leave=False):
        batch = backbone(images[start:start + FEATURE_BATCH], training=False)
        batch = np.asarray(batch, dtype=np.float16)
        if out is None:
            out = np.empty((len(images), *batch.shape[1:]), np.float16)
        out[start:start + len(batch)] = batch
    return out


def _read_cache(path: Path, count: int) -> np.ndarray | None:
    """The cached array if it is there, whole and of the right length; else None."""
    try:
        features = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    if features.dtype != np.float16 or len(features) != count:
        return None
    return features


def _npy_bytes(array: np.ndarray) -> bytes:
    """``array`` in .npy format."""
    import io

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()
