"""Turns a BGR camera frame into the image model's input, from the manifest alone.

The manifest's :class:`~fuselite.bundle.Preprocessing` is the single source of truth
(input size, colour order, resize method, input dtype and quantization, and the
output's quantization); the interpreter's own input and output details are checked
against it, and any disagreement is a :class:`~fuselite.bundle.BundleError`.
"""

from __future__ import annotations

import cv2
import numpy as np

from fuselite.bundle import BundleError, Manifest
from fuselite.runtime.interpreter import TensorSpec

INTERPOLATION = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR}
QUANT_TOLERANCE = 1e-3


def frame_problem(frame: object) -> str | None:
    """Says what is wrong with ``frame`` as a BGR image, or ``None`` when it is usable."""
    if not isinstance(frame, np.ndarray):
        return f"frame is {type(frame).__name__}, not a numpy array"
    if frame.dtype != np.uint8:
        return f"frame dtype is {frame.dtype}, not uint8"
    if frame.ndim not in (2, 3) or (frame.ndim == 3 and frame.shape[2] not in (1, 3, 4)):
        return f"frame shape {frame.shape} is not HxW, HxWx3 (BGR) or HxWx4 (BGRA)"
    if frame.shape[0] < 1 or frame.shape[1] < 1:
        return f"frame shape {frame.shape} is empty"
    return None


def as_bgr(frame: np.ndarray) -> np.ndarray:
    """Returns ``frame`` as a 3-channel BGR image (grey and BGRA frames are converted)."""
    if frame.ndim == 2 or frame.shape[2] == 1:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    if frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    return frame


class Preprocessor:
    """Resizes, reorders and casts frames for one model; safe to call from any thread.

    Example:
        >>> pre = Preprocessor(bundle.manifest, model.input)
        >>> model_input = pre(frame_bgr)   # [1, H, W, 3] in the model's dtype
    """

    def __init__(self, manifest: Manifest, input_spec: TensorSpec) -> None:
        config = manifest.preprocessing
        check_input(manifest, input_spec)
        self.size = (config.input_size[1], config.input_size[0])  # cv2 wants (width, height)
        self.interpolation = INTERPOLATION[config.resize]
        self.to_rgb = config.color_order == "RGB"
        self.dtype = input_spec.dtype
        self.quantization = _input_quantization(manifest, input_spec)
        # An imported classifier's graph takes normalised input: pixels * a + b, then cast.
        self.affine = _board_affine(config, self.quantization) if config.normalize_on_board else None
        # uint8 pixels that the mapping leaves as they are (a trained int8 bundle's input
        # scale 1 and zero point 0; an imported classifier's pixel/127.5 - 1 folded into its
        # own quantization) go in untouched: four passes fewer, 0.2 ms of a 224 px frame.
        self.passthrough = self.dtype == np.uint8 and _maps_to_itself(self.affine or self.quantization)

    def __call__(self, frame_bgr: np.ndarray) -> np.ndarray:
        """Returns the ``[1, H, W, 3]`` model input for one BGR frame."""
        image = as_bgr(frame_bgr)
        if (image.shape[1], image.shape[0]) != self.size:
            image = cv2.resize(image, self.size, interpolation=self.interpolation)
        if self.to_rgb:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        return self._cast(image)[np.newaxis]

    def _cast(self, pixels: np.ndarray) -> np.ndarray:
        if self.passthrough:
            return pixels
        if self.affine is not None:
            mapped = pixels.astype(np.float32) * self.affine[0] + self.affine[1]
            if self.dtype.kind not in "iu":
                return mapped.astype(self.dtype)
            info = np.iinfo(self.dtype)
            return np.clip(np.rint(mapped), info.min, info.max).astype(self.dtype)
        if self.quantization is not None:
            scale, zero_point = self.quantization
            info = np.iinfo(self.dtype)
            quantized = np.rint(pixels.astype(np.float32) / scale + zero_point)
            return np.clip(quantized, info.min, info.max).astype(self.dtype)
        if self.dtype == np.uint8:
            return pixels
        return pixels.astype(self.dtype)


def _maps_to_itself(mapping: tuple[float, float] | None) -> bool:
    """Whether ``pixels * a + b`` (an affine map) or ``pixels / scale + zero_point`` (a
    quantization) rounds every 0-255 value to itself; ``None`` (no mapping) does."""
    if mapping is None:
        return True
    first, second = float(mapping[0]), float(mapping[1])
    # Within 1e-4 of the identity, 255 moves by less than 0.03: rounding undoes it.
    return abs(first - 1.0) < 1e-4 and abs(second) < 1e-3


def _board_affine(config, quantization: tuple[float, int] | None) -> tuple[np.float32, np.float32]:
    """``(a, b)`` with model input ``pixels * a + b``: the manifest's normalization, then the
    input quantization folded in, so a quantized input costs one pass as before."""
    scale, offset = config.normalization
    if quantization is not None:
        q_scale, zero_point = quantization
        scale, offset = scale / q_scale, offset / q_scale + zero_point
    return np.float32(scale), np.float32(offset)


def check_input(manifest: Manifest, spec: TensorSpec) -> None:
    """Raises :class:`BundleError` if the model's input disagrees with the manifest."""
    height, width = manifest.preprocessing.input_size
    if spec.shape != (1, height, width, 3):
        raise BundleError(
            f"image model input is {list(spec.shape)}, but the manifest's input_size "
            f"{[height, width]} needs [1, {height}, {width}, 3]"
        )
    if spec.dtype.name != manifest.preprocessing.input_dtype:
        raise BundleError(
            f"image model input is {spec.dtype.name}, but the manifest says "
            f"{manifest.preprocessing.input_dtype}"
        )


def check_output(manifest: Manifest, spec: TensorSpec) -> tuple[float, int] | None:
    """Raises :class:`BundleError` if the model's output disagrees with the manifest.

    Returns the ``(scale, zero_point)`` to dequantize with, or ``None`` for float output.
    """
    dim = manifest.embedding_dim
    regional = len(spec.shape) == 3 and spec.shape[0] == 1 and spec.shape[1] >= 1
    if spec.shape != (1, dim) and not (regional and spec.shape[2] == dim):
        raise BundleError(
            f"image model outputs {list(spec.shape)}, but the manifest's labels are "
            f"embedded in {dim} dimensions (needs [1, {dim}] or [1, cells, {dim}]); "
            "re-convert the bundle"
        )
    if manifest.logit_scale <= 0:
        raise BundleError("manifest logit_scale must be positive")
    declared = manifest.preprocessing.output_quant
    if spec.dtype == np.float32:
        if declared is not None:
            raise BundleError("image model outputs float32, but the manifest gives output_quant")
        return None
    if spec.dtype.kind not in "iu":
        raise BundleError(
            f"image model outputs {spec.dtype.name}; the runtime reads float32, uint8 or int8"
        )
    if declared is None:
        raise BundleError(
            f"image model outputs {spec.dtype.name}, but the manifest has no output_quant"
        )
    if spec.quantization is not None and not quant_equal(declared, spec.quantization):
        raise BundleError(
            f"image model output quantization {spec.quantization} disagrees with "
            f"the manifest's {declared}"
        )
    return declared


def _input_quantization(manifest: Manifest, spec: TensorSpec) -> tuple[float, int] | None:
    """``(scale, zero_point)`` to apply to 0-255 pixels, or ``None`` when they go in as they are."""
    if spec.dtype.kind not in "iu":
        return None
    declared = manifest.preprocessing.input_quant
    actual = spec.quantization
    if declared is not None and actual is not None and not quant_equal(declared, actual):
        raise BundleError(
            f"image model input quantization {actual} disagrees with the manifest's {declared}"
        )
    quant = actual or declared
    if quant is None or quant_equal(quant, (1.0, 0)):
        if spec.dtype != np.uint8:
            raise BundleError(
                f"image model input is {spec.dtype.name} without quantization parameters"
            )
        return None
    return quant


def quant_equal(a: tuple[float, int], b: tuple[float, int]) -> bool:
    """Whether two ``(scale, zero_point)`` pairs agree (scales within 0.1 %)."""
    return a[1] == b[1] and abs(a[0] - b[0]) <= QUANT_TOLERANCE * max(abs(a[0]), abs(b[0]))
