"""From the image model's output to one probability per label.

``probability = sigmoid(logit_scale * dot(image_embedding, label_embedding) + logit_bias)``,
the fused scorer recorded in the manifest.
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
        """The float32 embedding ``[D]`` held in one model output."""
        embedding = model_output.reshape(-1).astype(np.float32)
        if self.quantization is not None:
            scale, zero_point = self.quantization
            embedding -= zero_point
            embedding *= scale
        return embedding

    def __call__(self, model_output: np.ndarray) -> np.ndarray:
        """Returns float32 probabilities, one per label."""
        logits = self.embedding(model_output) @ self.weights
        logits += self.bias
        return 1.0 / (1.0 + np.exp(-logits))


def check_output(manifest: Manifest, spec: TensorSpec) -> tuple[float, int] | None:
    """Raises :class:`BundleError` if the model's output disagrees with the manifest.

    Returns the ``(scale, zero_point)`` to dequantize with, or ``None`` for float output.
    """
    dim = manifest.embedding_dim
    if spec.shape != (1, dim):
        raise BundleError(
            f"image model outputs {list(spec.shape)}, but the manifest's labels are "
            f"embedded in {dim} dimensions (needs [1, {dim}]); re-convert the bundle"
        )
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
