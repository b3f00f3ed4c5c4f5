"""The conversion variants, in one table: what each writes and how close it must stay.

Like Ultralytics' ``export_formats()``, every variant is one row; the CLI validates
``--variants`` against it and the tests parametrize over it, so a new row is
converted, checked and tested without touching anything else.  This module imports
no TensorFlow: ``fuselite convert --help`` lists the table without it.

Tolerances compare a variant's TFLite model with the Keras model it was converted
from (for ``pruned-int8`` that is the pruned, fine-tuned model, for ``qat-int8`` the
quantization-aware trained one), on the test split:
``min_agreement`` is the share of images whose top-scoring label is the same, and
``max_score_error`` is the largest absolute difference of any label probability.
Full-integer variants are given 0.85: on multi-label scenes several labels sit near
probability 1 ("red", "red circle"), and int8 rounding reorders such near-ties in a
few percent of images (93 % agreement measured on scenes-default) while the task
metric moves by 0.01 pt; ``max_score_error`` is the sharper check.  It is the
largest of tens of thousands of differences, so healthy full-integer conversions
spread up to it: 0.12 to 0.21 were measured (the task metric within 0.1 pt each
time), and a 0.2 gate refused two of them.  Full-integer variants are given 0.3; a
broken conversion is off by far more (0.93 when calibrated on flat grey frames).

Example:
    >>> [v.name for v in resolve_variants(["default"])]
    ['fp32', 'fp16', 'dynamic', 'int8', 'pruned-int8']
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from fuselite.errors import UserError

QUANTIZATIONS = ("none", "float16", "dynamic", "int8")
COMPRESSIONS = ("none", "prune", "cluster", "qat")

# Sparsities a pruned variant tries, highest first, when --sparsity does not pin one:
# the first whose bundle stays within --max-loss is written (the budget drives the search).
SPARSITY_CANDIDATES = (0.9, 0.8, 0.7, 0.6, 0.5)
# Shared values per kernel a clustered variant tries, fewest (smallest gzip) first, when
# --clusters does not pin one.  Past 32 an int8 kernel (256 levels) gains little from it.
CLUSTER_CANDIDATES = (8, 16, 32)
# The record each search leaves in the manifest's numerics and convert-report.json.
SEARCH_RECORDS = {"sparsity": "sparsity_search", "clusters": "cluster_search"}


@dataclass(frozen=True)
class Variant:
    """One row of the variant table.

    Attributes:
        name: The variant name, also the bundle's file stem (``int8`` -> ``int8.tflite``).
        description: One line for ``--help`` and the docs.
        quantization: ``"none"`` (float32), ``"float16"`` (float16 weights),
            ``"dynamic"`` (int8 weights, float activations) or ``"int8"`` (full
            integer, calibrated on training images; uint8 input, int8 output).
        per_channel: Per-channel weight scales (TFLite's default); ``False`` uses one
            scale per tensor, which saves the per-channel parameters in small models.
        compression: ``"prune"`` (magnitude pruning to ``--sparsity``), ``"cluster"``
            (weight clustering) or ``"qat"`` (quantization-aware training) of the
            image tower, with fine-tuning, before conversion; ``"none"`` converts
            the trained weights as they are.
        mirror: Each frame is scored together with its left-right mirror, the two
            embeddings averaged inside the model (:func:`fuselite.train.model.mirror_averaged`):
            twice the compute per frame for a steadier score.  Only for runs trained
            with flips.
        sparse_inference: Converted with TFLite's sparsity optimisation
            (``Optimize.EXPERIMENTAL_SPARSITY``): pruned kernels are stored sparse,
            behind DENSIFY ops, which is what tells XNNPACK to try its sparse (NCHW)
            path.  Only for float variants.
        min_sparsity: The lowest sparsity worth writing this variant at; the search
            tries no candidate below it (a sparse-inference variant needs most weights zero
            to be faster).
        default: Converted when ``--variants`` is not given.
        min_agreement: Lowest acceptable top-label agreement with the Keras model.
        max_score_error: Largest acceptable absolute probability difference.
    """

    name: str
    description: str
    quantization: str
    per_channel: bool = True
    compression: str = "none"
    mirror: bool = False
    sparse_inference: bool = False
    min_sparsity: float = 0.0
    default: bool = True
    min_agreement: float = 0.85
    max_score_error: float = 0.3

    def __post_init__(self) -> None:
        if self.quantization not in QUANTIZATIONS:
            raise ValueError(f"{self.name}: quantization must be one of {QUANTIZATIONS}")
        if self.compression not in COMPRESSIONS:
            raise ValueError(f"{self.name}: compression must be one of {COMPRESSIONS}")
        if self.sparse_inference and (self.compression != "prune" or self.quantization != "none"):
            raise ValueError(f"{self.name}: sparse inference is for pruned float32 variants")

    @property
    def filename(self) -> str:
        """The bundle's file name inside ``--out``."""
        return f"{self.name}.tflite"

    def sparsity_candidates(self, pinned: float | None = None) -> tuple[float, ...]:
        """Sparsities to try, highest first: ``(pinned,)`` if ``--sparsity`` pins one, else
        :data:`SPARSITY_CANDIDATES` from ``min_sparsity`` up; ``()`` for unpruned variants."""
        if self.compression != "prune":
            return ()
        if pinned is not None:
            return (pinned,)
        return tuple(s for s in SPARSITY_CANDIDATES if s >= self.min_sparsity)

    def cluster_candidates(self, pinned: int | None = None) -> tuple[int, ...]:
        """Cluster counts to try, fewest first: ``(pinned,)`` if ``--clusters`` pins one, else
        :data:`CLUSTER_CANDIDATES`; ``()`` for unclustered variants."""
        if self.compression != "cluster":
            return ()
        return (pinned,) if pinned is not None else CLUSTER_CANDIDATES

    @property
    def search_knob(self) -> str | None:
        """What the accuracy budget searches for this variant: ``"sparsity"`` (pruned),
        ``"clusters"`` (clustered) or ``None`` (one attempt)."""
        return {"prune": "sparsity", "cluster": "clusters"}.get(self.compression)

    @property
    def calibrated(self) -> bool:
        """Whether conversion needs a representative sample of training images."""
        return self.quantization == "int8"


_TABLE = (
    Variant("fp32", "plain float32 conversion", "none", min_agreement=0.99, max_score_error=1e-4),
    Variant("fp16", "float16 weights, float32 compute", "float16", min_agreement=0.98, max_score_error=0.02),
    Variant("dynamic", "dynamic-range: int8 weights, float activations", "dynamic",
            min_agreement=0.95, max_score_error=0.15),
    Variant("int8", "full integer: uint8 image in, int8 embedding out, calibrated on training images",
            "int8"),
    Variant("pruned-int8", "magnitude-pruned (TFMOT) to the highest sparsity of 0.9..0.5 within --max-loss "
            "(or --sparsity), fine-tuned, stripped, then full int8", "int8", compression="prune"),
    Variant("int8-per-tensor", "full integer with one weight scale per tensor (smaller, less exact)",
            "int8", per_channel=False, default=False, min_agreement=0.8, max_score_error=0.4),
    Variant("clustered-int8", "weights clustered (TFMOT) to the fewest of 8, 16, 32 shared values per kernel "
            "within --max-loss (or --clusters), fine-tuned, stripped, then full int8", "int8", compression="cluster", default=False),
    Variant("int8-mirror", "full integer, each frame scored with its left-right mirror and averaged "
            "(twice the compute; runs trained with flips)", "int8", mirror=True, default=False),
    # Off by default: XNNPACK's sparse path does not engage on the fuselite towers (see
    # docs/convert.md, "Pruning for speed"), so on the board it is fp32 with zeros in it.
    Variant("pruned-fp32", "pruned to 0.9 or 0.8 (within --max-loss), float32, kernels stored sparse "
            "(EXPERIMENTAL_SPARSITY) for XNNPACK's sparse inference", "none", compression="prune",
            sparse_inference=True, min_sparsity=0.8, default=False, min_agreement=0.99, max_score_error=1e-3),
    Variant("qat-int8", "quantization-aware fine-tuning of the conv and dense layers (TFMOT), then full int8",
            "int8", compression="qat", default=False),
)
VARIANTS: dict[str, Variant] = {v.name: v for v in _TABLE}


def list_variants() -> list[str]:
    """Every variant name, in table order."""
    return list(VARIANTS)


def default_variants() -> list[str]:
    """The variants converted when ``--variants`` is not given, in table order."""
    return [v.name for v in _TABLE if v.default]


def get_variant(name: str) -> Variant:
    """The variant called ``name``; an unknown name raises UserError listing the known ones."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise UserError(f"unknown variant {name!r}; known: {', '.join(list_variants())}") from None


def explicit_names(names: Iterable[str] | None) -> set[str]:
    """The variants named one by one in ``--variants`` (not through ``default`` or ``all``).

    Those are the ones the user asked for: one that is not written fails the command.
    """
    parts = (part.strip() for item in names or [] for part in item.split(","))
    return {get_variant(name).name for name in parts if name and name not in ("default", "all")}


def resolve_variants(names: Iterable[str] | None) -> list[Variant]:
    """Variants for ``--variants`` values: names, comma lists, ``default`` or ``all``.

    Duplicates are dropped; the result is in table order.
    """
    wanted: set[str] = set()
    for item in names or ["default"]:
        for name in filter(None, (part.strip() for part in item.split(","))):
            if name == "default":
                wanted.update(default_variants())
            elif name == "all":
                wanted.update(list_variants())
            else:
                wanted.add(get_variant(name).name)
    if not wanted:
        raise UserError("--variants names no variant; known: " + ", ".join(list_variants()))
    return [v for v in _TABLE if v.name in wanted]
