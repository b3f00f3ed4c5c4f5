"""The annotation task: a frame in, the labels it shows out (MediaPipe Tasks style).

Example:
    >>> from fuselite.runtime import Annotator, AnnotatorOptions
    >>> options = AnnotatorOptions("model.tflite", labels=("red circle", "cup"))
    >>> with Annotator.create(options) as annotator:
    ...     result = annotator.annotate(frame_bgr, timestamp_ms=0)
    ...     print([(c.label, round(c.score, 2)) for c in result.categories])

Each reported label also says *where* it fired (``Category.heatmap``, ``peak`` and
``box``, from :mod:`fuselite.maps`) when the bundle has label maps: a regional
bundle's output already holds one embedding per cell, and a pooled bundle's second
output its class activation map, so this scores only the reported labels once more
per cell.  ``AnnotatorOptions(explain=False)`` skips it.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from fuselite.bundle import Bundle, BundleError, Manifest, embedding_problem, read_bundle
from fuselite.maps import cam_cells, grid_shape, locate_many, logit
from fuselite.runtime.interpreter import TensorSpec, TfliteModel
from fuselite.runtime.labels import LabelSet, bundle_labels, typed_labels
from fuselite.runtime.options import AnnotatorOptions
from fuselite.runtime.preprocess import Preprocessor, check_output, frame_problem, quant_equal
from fuselite.runtime.results import AnnotationResult, Category, Latency
from fuselite.runtime.smoothing import ScoreSmoother
from fuselite.scoring import FrameScorer, sigmoid

if TYPE_CHECKING:
    from typing_extensions import Self

log = logging.getLogger(__name__)
FRAME_ERROR_LOG_EVERY = 100  # after the first, every this many frame errors get a log line


class MappedOutput(NamedTuple):
    """What :meth:`Annotator.infer` returns for a pooled model with a label map output.

    Attributes:
        embedding: The embedding output, as a single-output model's :meth:`infer` gives it.
        label_map: The class activation map output ``[1, cells, D]``, raw.
    """

    embedding: np.ndarray
    label_map: np.ndarray


class FrameError(ValueError):
    """One frame could not be annotated although the bundle loaded (e.g. the model output
    NaN): the run counts it, logs it now and then, and goes on with the next frame."""


class Annotator:
    """Scores frames against a bundle's labels (or labels typed at run time).

    Create it with :meth:`create`; call :meth:`close` (or use ``with``) when done.
    One annotator serves one stream from one thread; :meth:`preprocess` alone may run
    on another thread, and a pipeline may call :meth:`infer` and :meth:`postprocess`
    from two threads (each from one, in frame order).
    """

    def __init__(
        self, options: AnnotatorOptions, bundle: Bundle, model: TfliteModel, label_set: LabelSet
    ):
        """Use :meth:`create`; this takes parts that are already loaded and checked."""
        self._options = options
        self._manifest = bundle.manifest
        self._model = model
        self._labels = label_set.labels
        self._preprocessor = Preprocessor(bundle.manifest, model.input)
        manifest = bundle.manifest
        problem = embedding_problem(label_set.embeddings, label_set.labels)
        if problem:  # typed labels: the text encoder's outputs, which read_bundle never saw
            raise BundleError(f"{bundle.path}: {problem}; re-run `fuselite convert`")
        self._scorer = FrameScorer(label_set.embeddings, manifest.logit_scale, manifest.logit_bias,
                                   check_output(manifest, model.output), manifest.output_activation)
        thresholds = label_set.thresholds
        if options.score_threshold is not None:
            thresholds = np.full(len(self._labels), options.score_threshold, np.float32)
        self._thresholds = thresholds
        # Labels are located on logits (see _build); their thresholds' logits never change.
        self._threshold_logits = logit(thresholds).astype(np.float32)
        self._smoother = ScoreSmoother(thresholds, options.smoothing, options.hysteresis)
        self._allowed = _allowed_indices(self._labels, options)
        self._allowed_labels = [self._labels[i] for i in self._allowed]
        self._last_timestamp_ms = -np.inf
        self._grid = map_grid(manifest, model.output, model.map_output) if options.explain else None
        # A pooled model's map is its second output, read after each invoke.
        self._cam = self._grid is not None and model.map_output is not None

    @classmethod
    def create(cls, options: AnnotatorOptions) -> Annotator:
        """Reads and verifies the bundle, loads the model and embeds typed labels.

        Raises:
            fuselite.bundle.BundleError: the bundle is unusable (the message says why).
            ValueError: an option does not fit this bundle (e.g. an unknown allowlist label).
            InterpreterNotFoundError: no TFLite interpreter is installed.
        """
        bundle = read_bundle(options.bundle_path)
        if options.labels is None:
            label_set = bundle_labels(bundle)
        else:
            label_set = typed_labels(bundle, options.labels, num_threads=1)
        model = TfliteModel(bundle.model_bytes, options.num_threads, name="image model")
        try:
            return cls(options, bundle, model, label_set)
        except BaseException:
            model.close()
            raise

    create_from_options = create

    @classmethod
    def create_from_bundle_path(cls, bundle_path, **options) -> Annotator:
        """Shortcut for ``Annotator.create(AnnotatorOptions(bundle_path, **options))``."""
        return cls.create(AnnotatorOptions(bundle_path, **options))

    @property
    def labels(self) -> tuple[str, ...]:
        """Every label scored, in order (before the allow/deny lists)."""
        return self._labels

    @property
    def allowed_labels(self) -> tuple[str, ...]:
        """The labels that may be reported (after the allow/deny lists), in order."""
        return tuple(self._allowed_labels)

    @property
    def thresholds(self) -> tuple[float, ...]:
        """The threshold of each label in :attr:`labels`."""
        return tuple(float(t) for t in self._thresholds)

    @property
    def model(self) -> TfliteModel | None:
        """The loaded image model (``None`` once closed); a watchdog reads its invoke clock."""
        return self._model

    @property
    def map_grid(self) -> tuple[int, int] | None:
        """``(rows, cols)`` of the label heatmaps, or ``None`` when results carry none."""
        return self._grid

    @property
    def manifest(self) -> Manifest:
        """The bundle's manifest."""
        return self._manifest

    @property
    def options(self) -> AnnotatorOptions:
        """The options this annotator was created with."""
        return self._options

    def preprocess(self, frame_bgr: np.ndarray) -> np.ndarray:
        """The model input for one frame; thread-safe, so a capture thread can call it.

        Raises:
            ValueError: the frame is not a usable image (the message says why).
        """
        problem = frame_problem(frame_bgr)
        if problem:
            raise ValueError(problem)
        return self._preprocessor(frame_bgr)

    def annotate(self, frame_bgr: np.ndarray, timestamp_ms: float) -> AnnotationResult:
        """Annotates one BGR frame (uint8 ``HxWx3``, as OpenCV reads it).

        ``timestamp_ms`` should grow from frame to frame; an earlier timestamp than the
        previous one starts a new stream and restarts smoothing.

        Raises:
            FrameError: the model's output for this frame cannot be scored (e.g. NaN).
            ValueError: the frame is not a usable image, or the annotator is closed.
        """
        start = time.perf_counter()
        model_input = self.preprocess(frame_bgr)
        return self.annotate_preprocessed(model_input, timestamp_ms, _ms_since(start))

    def annotate_preprocessed(
        self, model_input: np.ndarray, timestamp_ms: float, preprocess_ms: float = 0.0
    ) -> AnnotationResult:
        """Annotates a model input made by :meth:`preprocess` (possibly on another thread)."""
        output, inference_ms = self.infer(model_input)
        return self.postprocess(output, timestamp_ms, preprocess_ms, inference_ms)

    def infer(self, model_input: np.ndarray) -> tuple[np.ndarray, float]:
        """Runs the image model alone: ``(its output, a copy; milliseconds taken)``.

        With :meth:`postprocess` this splits :meth:`annotate_preprocessed` in two, so a
        pipeline can run the model for one frame while another thread scores the last
        one.  Call each of the two from one thread, and postprocess in frame order.

        Raises:
            FrameError: the output cannot be scored (NaN, infinity, or overflowing values).
            ValueError: the annotator is closed.
        """
        model = self._model
        if model is None:
            raise ValueError("the annotator is closed; create a new one")
        start = time.perf_counter()
        embedding = model.run(model_input)
        output = MappedOutput(embedding, model.label_map()) if self._cam else embedding
        inference_ms = _ms_since(start)
        problem = self._scorer.problem(embedding)  # checked here, so no NaN score reaches a sink
        if problem:
            raise FrameError(problem)
        return output, inference_ms

    def postprocess(
        self,
        output: np.ndarray,
        timestamp_ms: float,
        preprocess_ms: float = 0.0,
        inference_ms: float = 0.0,
    ) -> AnnotationResult:
        """Scores, smooths and selects the labels of one :meth:`infer` output."""
        if timestamp_ms < self._last_timestamp_ms:
            self._smoother.reset()
        self._last_timestamp_ms = timestamp_ms
        start = time.perf_counter()
        probabilities, cell_logits = self._score(output)
        scores, present = self._smoother.update(probabilities)
        categories = self._categories(scores, present, probabilities, output, cell_logits)
        all_scores = dict(zip(self._allowed_labels, scores[self._allowed].tolist()))
        latency = Latency(preprocess_ms, inference_ms, _ms_since(start))
        return AnnotationResult(timestamp_ms, categories, all_scores, latency)

    def explain(self, frame_bgr: np.ndarray) -> tuple[Category, ...]:
        """Every allowed label of one frame, present or not, with its score and, when the
        bundle has label maps, where it fired (heatmap, peak, box); in label order.

        For pictures of what the model looks at (``fuselite explain``), not for streams:
        it neither smooths nor applies thresholds, ``max_results`` or the task.

        Raises:
            FrameError: the model's output for this frame cannot be scored (e.g. NaN).
            ValueError: the frame is not a usable image, or the annotator is closed.
        """
        output, _ = self.infer(self.preprocess(frame_bgr))
        probabilities, cell_logits = self._score(output)
        return self._build(self._allowed, probabilities, probabilities, output, cell_logits)

    def reset(self) -> None:
        """Forgets the smoothing state, e.g. before an unrelated stream."""
        self._smoother.reset()
        self._last_timestamp_ms = -np.inf

    def close(self) -> None:
        """Releases the interpreter. Safe to call twice."""
        if self._model is not None:
            self._model.close()
            self._model = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _score(self, output) -> tuple[np.ndarray, np.ndarray | None]:
        """``(probabilities, every cell's logits or None)`` of one :meth:`infer` output.

        The cells' logits come with the scores when a regional bundle is explained, so
        locating its labels costs no second product (a pooled bundle's map is located
        from its own output in :meth:`_build`).
        """
        if self._cam:
            return self._scorer(output.embedding), None
        if self._grid is None:
            return self._scorer(output), None
        return self._scorer.scores_and_cells(output)

    def _categories(
        self, scores: np.ndarray, present: np.ndarray, raw: np.ndarray, output: np.ndarray,
        cell_logits: np.ndarray | None = None,
    ) -> tuple[Category, ...]:
        allowed = self._allowed
        if self._manifest.task == "single":
            top = allowed[int(np.argmax(scores[allowed]))]
            chosen = np.array([top] if present[top] else [], dtype=np.intp)
        else:
            chosen = allowed[present[allowed]]
            chosen = chosen[np.argsort(-scores[chosen], kind="stable")]
        if self._options.max_results is not None:
            chosen = chosen[: self._options.max_results]
        return self._build(chosen, scores, raw, output, cell_logits)

    def _build(self, chosen: np.ndarray, scores: np.ndarray, raw: np.ndarray,
               output: np.ndarray, cell_logits: np.ndarray | None = None) -> tuple[Category, ...]:
        """The categories of the label indices ``chosen``, located when the bundle has maps."""
        thresholds = self._thresholds
        if self._grid is None or not len(chosen):
            return tuple(Category(int(i), self._labels[i], float(scores[i]), float(raw[i]), float(thresholds[i]))
                         for i in chosen)
        # One product, one peak search and one region growth for all of them (fuselite.maps).
        if self._cam:
            cells = cam_cells(_dequantized(output.label_map, self._manifest.label_maps.output_quant))
            logits = self._scorer.cells_logits(cells, chosen)
        elif cell_logits is not None:
            logits = cell_logits[chosen]
        else:
            logits = self._scorer.cell_logits(output, chosen)
        logits = logits.reshape(len(chosen), *self._grid)
        # Peaks and regions on logits: strong cells' float32 probabilities all round to 1.0.
        peaks, boxes = locate_many(logits, self._threshold_logits[chosen])
        heatmaps = sigmoid(logits)
        # To 4 decimals, a tenth of a pixel on a 1080p frame, in one call for every label:
        # events print them, and a round() per number cost as much as locating.
        located = np.round(np.concatenate([peaks, boxes], axis=1), 4).tolist()
        return tuple(
            Category(int(i), self._labels[i], float(scores[i]), float(raw[i]), float(thresholds[i]),
                     heatmap, tuple(where[:2]), tuple(where[2:]))
            for i, heatmap, where in zip(chosen.tolist(), heatmaps, located)
        )


def map_grid(manifest: Manifest, output: TensorSpec, map_output: TensorSpec | None = None) -> tuple[int, int] | None:
    """``(rows, cols)`` of a bundle's label heatmaps, or ``None`` when it has none.

    The manifest's ``label_maps`` grid must match the cells of the output it names (the
    embedding output's, or the label map output's for ``"cam"``).  A bundle written
    before ``label_maps`` existed gets the grid of its output when that output is a
    regional one (``[1, cells, D]`` with a square number of cells, not a classifier's
    probabilities), so older regional bundles explain too.

    Raises:
        BundleError: the manifest's grid or quantization does not match the model.
    """
    maps = manifest.label_maps
    if maps is not None and maps.source == "cam":
        return _cam_grid(maps, map_output)
    if map_output is not None:
        raise BundleError("the image model has a label map output, but the manifest's label_maps does not "
                          "name it; re-run `fuselite convert`")
    cells = output.shape[1] if len(output.shape) == 3 else None
    if maps is not None:
        if cells != maps.grid[0] * maps.grid[1]:
            raise BundleError(f"manifest label_maps grid {list(maps.grid)} does not match the image model's "
                              f"output {list(output.shape)}; re-run `fuselite convert`")
        return maps.grid
    if cells is None or cells < 2 or manifest.label_source == "concepts" or manifest.output_activation != "none":
        return None
    return grid_shape(cells)


def _cam_grid(maps, map_output: TensorSpec | None) -> tuple[int, int]:
    """The grid of a ``"cam"`` bundle, checked against the model's label map output."""
    if map_output is None or map_output.shape[1] != maps.grid[0] * maps.grid[1]:
        shape = "no label map output" if map_output is None else f"a label map output {list(map_output.shape)}"
        raise BundleError(f"manifest label_maps grid {list(maps.grid)} does not match the image model's "
                          f"{shape}; re-run `fuselite convert`")
    declared, actual = maps.output_quant, map_output.quantization
    if (map_output.dtype.kind in "iu") != (declared is not None) or (
            declared is not None and actual is not None and not quant_equal(declared, actual)):
        raise BundleError(f"manifest label_maps.output_quant {declared} does not match the image model's label "
                          f"map output ({map_output.dtype.name}, {actual}); re-run `fuselite convert`")
    return maps.grid


def _dequantized(values: np.ndarray, quant: tuple[float, int] | None) -> np.ndarray:
    """``values`` as float32, dequantized with ``(scale, zero_point)`` when given."""
    values = values.astype(np.float32)
    if quant is not None:
        values -= quant[1]
        values *= quant[0]
    return values


def _allowed_indices(labels: tuple[str, ...], options: AnnotatorOptions) -> np.ndarray:
    """Indices of the labels that may be reported; unknown names are a ValueError."""
    for name, names in (
        ("category_allowlist", options.category_allowlist),
        ("category_denylist", options.category_denylist),
    ):
        unknown = [n for n in names if n not in labels]
        if unknown:
            raise ValueError(
                f"{name} names {', '.join(map(repr, unknown))}, which this annotator does not "
                f"score; its labels are: {', '.join(labels)}"
            )
    if options.category_allowlist:
        keep = [i for i, label in enumerate(labels) if label in options.category_allowlist]
    else:
        keep = [i for i, label in enumerate(labels) if label not in options.category_denylist]
    if not keep:
        raise ValueError("the category_denylist removes every label; nothing would be reported")
    return np.asarray(keep, dtype=np.intp)


def _ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0
