"""From the image model's output to one probability per label.

``probability = sigmoid(logit_scale * dot(image_embedding, label_embedding) + logit_bias)``,
the fused scorer recorded in the manifest.  A regional model outputs one
embedding per cell (``[1, cells, D]``) and a label scores as its best cell, as in
``fuselite.bundle.label_probabilities``.
"""

from __future__ import annotations

import numpy as np

from fuselite.bundle import BundleError, Manifest
from fuselite.runtime.interpreter import TensorSpec
from fuselite.runtime.preprocess import quant_equal


class Scorer:
    """Dequantizes an embedding and scores it against every label embedding.

    Example:
        >>> scorer = Scorer(bundle.manifest, model.output, label_set.embeddings)
        >>> probabilities = scorer(model.run(model_input))
    """

    def __init__(
        self, manifest: Manifest, output_spec: TensorSpec, label_embeddings: np.ndarray
    ) -> None:
        self.quantization = check_output(manifest, output_spec)
        # Folding logit_scale into the label matrix saves one multiply per frame.
        self.weights = (manifest.logit_scale * label_embeddings.astype(np.float32)).T.copy()
        self.bias = np.float32(manifest.logit_bias)

    def embedding(self, model_output: np.ndarray) -> np.ndarray:
        """The float32 embedding held in one model output: ``[D]``, or ``[cells, D]``."""
        embedding = model_output.reshape(-1, model_output.shape[-1]).astype(np.float32)
        if embedding.shape[0] == 1:
            embedding = embedding[0]
        if self.quantization is not None:
            scale, zero_point = self.quantization
            embedding -= zero_point
            embedding *= scale
        return embedding

    def __call__(self, model_output: np.ndarray) -> np.ndarray:
        """Returns float32 probabilities, one per label."""
        logits = self.embedding(model_output) @ self.weights
        if logits.ndim == 2:  # regional: the best cell per label (logit_scale > 0)
            logits = logits.max(axis=0)
        logits += self.bias
        return 1.0 / (1.0 + np.exp(-logits))


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
