"""A trained run -> one checked, self-describing ``<variant>.tflite`` bundle per variant.

For each variant: convert the image tower (pruning, clustering or quantization-aware
training it first for ``pruned-int8``, ``clustered-int8`` and ``qat-int8``), run
the flatbuffer in ai-edge-litert on the validation and test splits and compare it with
the Keras model it came from, read its op list and the runtimes that load it, then pack
the bundle (:mod:`fuselite.bundle`) and write it atomically.  The accuracy budget
(``--max-loss``, :func:`judge`) and the sparsity search are judged on the validation
split, so the test figures reported beside them stay an unbiased estimate (issue 31).
A variant over the budget, or that ``--target`` cannot load, is reported and not written.

Small end to end: an int8 bundle carries an int8 text tower too (or a float16 one,
when int8 moves a label's embedding below :data:`TEXT_INT8_MIN_COSINE` of the float
one; :meth:`Converter.text_encoder_for`), and ``--fixed-labels`` writes bundles with
the label embeddings only, no text tower and no tokenizer.

Example:
    >>> converter = Converter.load(Path("runs/scenes"), Path("bundles"), ConvertOptions())
    >>> results = [converter.convert(v) for v in resolve_variants(["int8"])]
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from fuselite import __version__
from fuselite.bundle import LabelMaps, Manifest, Preprocessing, pack_bundle, read_bundle
from fuselite.convert import modelinfo, numerics
from fuselite.convert.compress import CompressSettings, finetune_steps, search_compression
from fuselite.convert.reference import reference_embeddings, reference_image_count
from fuselite.convert.report import VariantResult, gzip_size, progress_bar
from fuselite.convert.variants import SEARCH_RECORDS, Variant
from fuselite.errors import UserError
from fuselite.files import write_atomic
from fuselite.interpreter import interpreter_version
from fuselite.maps import grid_shape
from fuselite.scoring import Scorer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConvertOptions:
    """Settings shared by every variant of one conversion.

    Attributes:
        sparsity: ``--sparsity``: pins the sparsity of pruned variants; ``None`` searches
            their candidates (:meth:`Variant.sparsity_candidates`) from the highest down
            and writes the first within ``max_loss``.
        clusters: ``--clusters``: pins the shared values per kernel of clustered variants;
            ``None`` searches :meth:`Variant.cluster_candidates`, fewest first.
        target: ``--target``: a runtime key or board profile name, or ``None``.
        num_threads: Interpreter threads for the numeric checks.
        calibration_samples: Training images that calibrate full-integer variants.
        eval_samples: Images of each split (validation, test) for the numeric checks
            (0: the whole split).
        finetune_steps: Fine-tuning steps of pruned, clustered and QAT variants; ``None``
            means :func:`auto_finetune_steps` of the run's training split.
        seed: Seeds sampling and fine-tuning.
        max_loss: Accuracy budget in points of the run's task metric on its validation
            split (the test split only when validation gives no metric): a variant is
            written when it loses no more than this against Keras, even when its per-image
            numbers drift past their tolerance (then with a warning); one that loses more
            is not (see :func:`judge`).
        progress: Progress bars on stderr for the steps that take seconds (fine-tuning,
            calibration, the checks): ``None`` when stderr is a terminal, ``False`` never
            (``--quiet``), ``True`` always.
        fixed_labels: ``--fixed-labels``: bundles hold the default labels' embeddings and
            no text encoder or tokenizer (``label_source`` "fixed"), for boards that never
            take new label texts.
    """

    sparsity: float | None = None
    clusters: int | None = None
    target: str | None = None
    num_threads: int = 2
    calibration_samples: int = 200
    eval_samples: int = 0
    finetune_steps: int | None = None
    seed: int = 0
    max_loss: float = 1.0
    progress: bool | None = None
    fixed_labels: bool = False

    def __post_init__(self) -> None:
        if self.sparsity is not None and not 0.0 < self.sparsity < 1.0:
            raise UserError(f"--sparsity {self.sparsity} must be between 0 and 1 (e.g. 0.75)")
        if self.clusters is not None and not 2 <= self.clusters <= 256:
            raise UserError(f"--clusters {self.clusters} must be 2 to 256 (e.g. 16)")
        if self.num_threads < 1 or self.calibration_samples < 1 or self.eval_samples < 0:
            raise UserError("--threads and --calibration-samples must be >= 1, --eval-samples >= 0")
        if self.finetune_steps is not None and self.finetune_steps < 1:
            raise UserError("--finetune-steps must be >= 1")
        if not 0.0 <= self.max_loss <= 100.0:
            raise UserError(f"--max-loss {self.max_loss} must be 0 to 100 points")


# The text tower of an int8 bundle is int8 when every default label and probe phrase keeps
# at least this cosine with its float embedding, else float16.  A typed label scores
# sigmoid(logit_scale * cos + logit_bias): at 0.995 its embedding has moved by at most 0.1
# (|a - b| = sqrt(2 - 2 cos)), spread over all D dimensions, so against a unit image
# embedding its cosine moves by about 0.1 / sqrt(D) (0.0125 at D = 64; a logit change of
# 0.25 at scale 20), the size of the int8 image tower's own error (output steps of 1/128).
# On the demo int8 keeps 0.9995.
TEXT_INT8_MIN_COSINE = 0.995
TEXT_CALIBRATION_TEXTS = 300  # training captions the int8 text tower calibrates on (plus labels and words)
TEXT_PROBE_PHRASES = 200  # validation captions its agreement is measured on (plus held-out phrases)
TEXT_PROBE_WORDS = 500  # vocabulary words, each alone, in both (a large vocabulary's first 500)


# A variant past its numeric tolerance is written on the accuracy budget only if its top
# label still agrees with Keras on at least this share of the judged split's images.
BUDGET_MIN_AGREEMENT = 0.75

VALIDATION, TEST = "validation", "test"


def auto_finetune_steps(train_items: int, batch_size: int) -> int:
    """Default fine-tuning steps: :func:`fuselite.convert.compress.finetune_steps` (7 epochs, 500 to 4,000)."""
    return finetune_steps(train_items, batch_size)


@dataclass
class Reference:
    """What every variant is checked against, computed once from the Keras run.

    Attributes:
        images: Test images the checks run on (then the held-out scenes, if any).
        n_test: How many of ``images`` are test images.
        targets: Multi-hot test targets for the run's labels.
        phrases: Held-out phrases (never training labels) and their text embeddings.
        phrase_tags: Per image in ``images``, its tags (for phrase AP).
        keras_embeddings: The original tower's embeddings of ``images``.
        keras_metrics: Task metrics of the original Keras model.
    """

    images: np.ndarray
    n_test: int
    targets: np.ndarray
    phrases: list[str]
    phrase_embeddings: np.ndarray
    phrase_tags: list[list[str]]
    keras_embeddings: np.ndarray
    keras_metrics: dict = field(default_factory=dict)


@dataclass
class JudgedSplit:
    """The split the accuracy budget and the sparsity search judge variants on.

    The validation split: choosing on the test split (which variant to write, which
    sparsity) would fit the choice to it, and the test figures reported afterwards would
    no longer be an unbiased estimate.  The test split only when validation gives no
    task metric (no images, or none carrying a label).

    Attributes:
        name: :data:`VALIDATION` or :data:`TEST`.
        images: Its images (capped by ``--eval-samples``).
        targets: Multi-hot targets for the run's labels.
        keras_embeddings: The original tower's embeddings of ``images``.
        keras_metric: The original Keras model's task metric on it, or ``None``.
        fallback: Why the test split judges (one line), or ``None`` when validation does.
    """

    name: str
    images: np.ndarray
    targets: np.ndarray
    keras_embeddings: np.ndarray
    keras_metric: float | None
    fallback: str | None = None


class Converter:
    """Converts the variants of one run into one output folder.

    Build it with :meth:`load`; it loads the run, converts the text tower and computes
    the Keras reference once, then :meth:`convert` handles one variant at a time.
    """

    def __init__(self, run, data, out_dir: Path, options: ConvertOptions):
        from fuselite.convert.tflite import convert_text_model
        from fuselite.train.pipeline import embed_texts

        self.run, self.data, self.out_dir, self.options = run, data, Path(out_dir), options
        self.target = modelinfo.resolve_target(options.target) if options.target else None
        self.scorer = Scorer(run.logit_scale, run.logit_bias)
        self.label_embeddings = embed_texts(run.text_encoder, run.tokenizer, run.labels).astype(np.float32)
        self.text_encoder_bytes = convert_text_model(run.text_encoder)
        self.text_encoder_error = self._text_encoder_error()
        self.calibration = _sample(data.train.images, options.calibration_samples, options.seed)
        self.reference = self._reference(run.image_encoder)
        self.judged_split = self._judged_split()
        self.default_threshold = self._default_threshold()
        self._compressed: dict[str, tuple] = {}
        self._small_text_encoder: tuple[bytes, dict] | None = None

    @classmethod
    def load(cls, run_dir: Path, out_dir: Path, options: ConvertOptions) -> Converter:
        """Loads ``run_dir`` (UserError naming any missing piece) and prepares the checks."""
        from fuselite.train.run import check_run_dir, load_run

        check_run_dir(run_dir)
        if options.target:
            modelinfo.resolve_target(options.target)  # fail before the slow part
        started = time.perf_counter()
        run = load_run(run_dir)
        log.info("loading the data of %s (%s)", run_dir, run.config.name)
        converter = cls(run, run.load_data(), out_dir, options)
        log.info("run, text encoder and Keras reference ready in %.1f s", _since(started))
        return converter

    # --- one variant -------------------------------------------------------------

    def convert(self, variant: Variant) -> VariantResult:
        """Converts, checks and (if good) writes one variant; never raises for a bad variant.

        A pruned (clustered) variant is tried at each of its sparsities, highest first (cluster
        counts, fewest first), until one is within the budget (:meth:`_search`).
        """
        started = time.perf_counter()
        remove_stale_parts(self.out_dir, variant)
        problem = self._unsuitable(variant)
        if problem:
            log.error("%s: %s", variant.name, problem)
            return VariantResult(variant.name, "refused", problem, seconds=_since(started))
        if variant.search_knob:
            result, model_bytes, extra = self._search(variant)
        else:
            result, model_bytes, extra = self._attempt(variant)
        if result.status == "ok":
            self._write(variant, model_bytes, result, extra)
        else:
            log.error("%s: %s", variant.name, result.message)
        result.seconds = _since(started)
        log.info("%s: %s in %.1f s", variant.name, result.status, result.seconds)
        return result

    def _attempt(self, variant: Variant, setting: float | None = None) -> tuple[VariantResult, bytes | None, dict]:
        """Converts and checks ``variant`` (pruned to sparsity ``setting``, or clustered to
        ``setting`` values per kernel): its result, flatbuffer and manifest extras."""
        from fuselite.convert.tflite import ConversionError
        from fuselite.train.model import mirror_averaged

        try:
            keras_model, extra = self._keras_model(variant, setting)
            model_bytes = self._convert_image_model(variant, keras_model)
            if variant.mirror:  # the Keras model the flatbuffer is checked against, and its thresholds
                keras_model = mirror_averaged(keras_model)
                extra = {**extra, "thresholds": self._thresholds(keras_model)}
            return self._check(variant, keras_model, model_bytes, extra), model_bytes, extra
        except (ConversionError, numerics.InterpreterError) as exc:
            return VariantResult(variant.name, "failed", str(exc)), None, {}

    def _search(self, variant: Variant) -> tuple[VariantResult, bytes | None, dict]:
        """:meth:`_attempt` at each candidate, most compressed first; the first within the budget wins.

        The search (chosen sparsity or cluster count, and each candidate's loss) goes into
        the result's numerics and the manifest's compression provenance.
        """
        def attempt(setting: float):
            result, model_bytes, extra = self._attempt(variant, setting)
            checks = result.numerics
            judged = checks.get("judged", {})  # the budget's split, not the test split reported
            loss = None if judged.get("delta_pt") is None else -judged["delta_pt"]
            over_budget = bool(checks) and not checks["passed"]  # a milder setting may pass
            why = (f"within the {self.options.max_loss:g} pt budget ({_loss_text(loss)})" if result.status == "ok"
                   else result.message)
            return result.status == "ok", loss, why, over_budget, (result, model_bytes, extra)

        knob = variant.search_knob
        pin = self.options.sparsity if knob == "sparsity" else self.options.clusters
        candidates = variant.sparsity_candidates(pin) if knob == "sparsity" else variant.cluster_candidates(pin)
        search = search_compression(candidates, attempt, pin is not None, judged_on=self.judged_split.name,
                                    knob=knob)
        result, model_bytes, extra = search.outcome
        record = search.record()
        result.numerics = {**result.numerics, SEARCH_RECORDS[knob]: record}
        if "compression" in extra:  # a copy: the fine-tuned tower's report is shared between variants
            extra = {**extra, "compression": {**extra["compression"], "search": record}}
        if search.chosen is None and len(search.tried) > 1:
            tried = ", ".join(f"{t[knob]:g} ({_loss_text(t['loss_pt'])})" for t in search.tried)
            result.message = f"no {knob} within the budget on the {self.judged_split.name} split " \
                             f"(tried {tried}); at {search.tried[-1][knob]:g}: " \
                             f"{result.message}"
        return result, model_bytes, extra

    def _convert_image_model(self, variant: Variant, keras_model) -> bytes:
        """The flatbuffer of ``keras_model``, with a bar over the calibration images of int8 variants.

        A pooled tower gets its class activation map as a second output, in every variant
        (mirror-averaged in a mirror variant, from the fake-quantized head in a QAT one), so
        the bundle can say where labels fired; see :func:`fuselite.train.model.with_label_map`.
        """
        from fuselite.convert.tflite import convert_image_model

        if not variant.calibrated:
            return convert_image_model(keras_model, variant, label_map=True)
        with progress_bar(len(self.calibration), f"{variant.name}: calibration", self.options.progress,
                          unit="image") as bar:
            return convert_image_model(keras_model, variant, self.calibration, progress=bar.update, label_map=True)

    def default_variants(self, variants: list[Variant]) -> list[Variant]:
        """``variants`` less those that are too slow to make by default for this run.

        Pruned, clustered and QAT variants fine-tune the whole image tower on pixels:
        seconds for the tiny tower, but tens of minutes for a pretrained backbone's
        millions of weights on a CPU.  Asked for by name, they are still made.
        """
        if not self.run.config.pretrained:
            return variants
        slow = [v.name for v in variants if v.compression != "none"]
        if slow:
            log.warning("not making %s by default: fine-tuning a %s backbone takes tens of minutes on a "
                        "CPU; ask for it with --variants", ", ".join(slow), self.run.config.backbone)
        return [v for v in variants if v.compression == "none"]

    def _unsuitable(self, variant: Variant) -> str | None:
        """Why this run cannot make ``variant`` (one line), or None."""
        config = self.run.config
        if variant.mirror and not (config.augment and config.flip):
            return (f"run {config.name!r} was trained without flips (flip=False), so a mirrored frame "
                    f"is a different picture to it; convert int8 instead of {variant.name}")
        return None

    def _keras_model(self, variant: Variant, setting: float | None = None):
        """The Keras image tower to convert for ``variant`` and what it adds to the manifest.

        A pruned (to sparsity ``setting``), clustered (to ``setting`` values per kernel) or
        QAT tower is fine-tuned once and shared by the variants that use it.
        """
        method = variant.compression
        if method == "none":
            return self.run.image_encoder, {}
        key = (method, setting)
        if key not in self._compressed:
            from fuselite.convert.compress import compress_image_encoder

            steps = self.options.finetune_steps or auto_finetune_steps(
                len(self.data.train), self.run.config.batch_size
            )
            settings = CompressSettings(sparsity=setting if method == "prune" else CompressSettings.sparsity,
                                        clusters=int(setting) if method == "cluster" else CompressSettings.clusters,
                                        steps=steps,
                                        seed=self.options.seed, progress=self.options.progress)
            model, report = compress_image_encoder(method, self.run, self.data.train, self.label_embeddings, settings)
            self._compressed[key] = (model, {"compression": report, "thresholds": self._thresholds(model)})
        return self._compressed[key]

    def _check(self, variant: Variant, keras_model, model_bytes: bytes, extra: dict) -> VariantResult:
        """Numbers against Keras, op list and runtimes; the status says whether to write."""
        checks = self._numerics(variant, keras_model, model_bytes, extra.get("thresholds", self.run.thresholds))
        ops = modelinfo.model_ops(model_bytes, *filter(None, [self.text_encoder_for(variant)[0]]))
        problems = modelinfo.runtime_problems(ops)
        result = VariantResult(
            variant.name, "ok", model_size=len(model_bytes), model_gzip_size=gzip_size(model_bytes),
            sparsity=modelinfo.kernel_sparsity(model_bytes), numerics=checks,
            runtimes={key: not found for key, found in problems.items()},
            ops=modelinfo.op_strings(ops), runtime_problems={k: v for k, v in problems.items() if v},
        )
        if not checks["passed"]:
            result.status, result.message = "failed", refusal_message(variant, checks, self.options)
        elif self.target and problems[self.target.runtime]:
            result.status = "refused"
            result.message = f"--target {self.target.name} cannot load it: {problems[self.target.runtime][0]}"
        elif not checks["within_tolerance"]:
            result.warnings.append(score_warning(variant, checks))
            log.warning("%s: %s", variant.name, result.warnings[-1])
        log.info("%s: %s", variant.name, budget_summary(checks))
        return result

    def _numerics(self, variant: Variant, keras_model, model_bytes: bytes, thresholds) -> dict:
        """The manifest's ``numerics``: the test figures reported, the judged split's, the verdict."""
        ref, split = self.reference, self.judged_split
        keras_emb = ref.keras_embeddings if keras_model is self.run.image_encoder else _embed(keras_model, ref.images)
        on_validation = split.fallback is None
        total = len(ref.images) + (len(split.images) if on_validation else 0)
        with progress_bar(total, f"{variant.name}: accuracy check", self.options.progress, unit="image") as bar:
            tflite_emb = numerics.tflite_embeddings(model_bytes, ref.images, self.options.num_threads,
                                                    progress=bar.update)
            judged_tflite = (numerics.tflite_embeddings(model_bytes, split.images, self.options.num_threads,
                                                        progress=bar.update)
                             if on_validation else tflite_emb[: ref.n_test])
        n = ref.n_test
        expected, actual = (self.scorer(e[:n], self.label_embeddings) for e in (keras_emb, tflite_emb))
        checks = numerics.compare(expected, actual, np.asarray(thresholds))
        # Probabilities of a run whose bias keeps them tiny hide errors; logits do not.
        logit_error = self.scorer.logits(keras_emb[:n], self.label_embeddings) - self.scorer.logits(
            tflite_emb[:n], self.label_embeddings)
        checks["max_logit_error"] = float(np.abs(logit_error).max())
        metrics = self._metrics(ref, tflite_emb)
        name = next(iter(ref.keras_metrics))
        checks.update(
            reference=_REFERENCES[variant.compression] + (", mirror-averaged" if variant.mirror else ""),
            split=TEST, samples=n, interpreter=interpreter_version(),
            num_threads=self.options.num_threads,
            tolerance={"min_agreement": variant.min_agreement, "max_score_error": variant.max_score_error},
            text_encoder_max_error=self.text_encoder_for(variant)[1].get("max_error"),
            text_encoder=self.text_encoder_for(variant)[1],
            task_metric_name=name, task_metric=metrics[name], keras_task_metric=ref.keras_metrics[name],
            delta_pt=_delta_pt(metrics[name], ref.keras_metrics[name]),
            metrics=metrics, keras_metrics=ref.keras_metrics,
            judged=self._judged_figures(keras_model, keras_emb[:n], judged_tflite, name),
        )
        checks.update(judge(variant, checks, self.options.max_loss))
        return checks

    def _judged_figures(self, keras_model, keras_test_emb: np.ndarray, tflite_emb: np.ndarray, name: str) -> dict:
        """The figures the budget judges (``numerics.judged``): the task metric of ``tflite_emb``
        (the variant's embeddings of the judged split) against the original Keras model's, and
        its top-label agreement with ``keras_model`` (the model it was converted from)."""
        split = self.judged_split
        if split.fallback is not None:
            keras_emb = keras_test_emb
        elif keras_model is self.run.image_encoder:
            keras_emb = split.keras_embeddings
        else:
            keras_emb = _embed(keras_model, split.images)
        expected, actual = (self.scorer(e, self.label_embeddings) for e in (keras_emb, tflite_emb))
        metric = self._task_metric(actual, split.targets)
        return {
            "split": split.name, "samples": len(split.images), "task_metric_name": name,
            "task_metric": metric, "keras_task_metric": split.keras_metric,
            "delta_pt": _delta_pt(metric, split.keras_metric),
            "top1_agreement": numerics.top1_agreement(expected, actual),
            "fallback": split.fallback,
        }

    def _task_metric(self, probabilities: np.ndarray, targets: np.ndarray) -> float | None:
        """The run's task metric (``mAP`` or ``top1``) of ``probabilities``; ``None`` when undefined."""
        return _json_float(next(iter(numerics.task_metrics(probabilities, targets, self.run.task).values())))

    def _metrics(self, ref: Reference, embeddings: np.ndarray) -> dict:
        """Task metrics of image embeddings of ``ref.images`` (as in metrics.json)."""
        probs = self.scorer(embeddings[: ref.n_test], self.label_embeddings)
        metrics = numerics.task_metrics(probs, ref.targets, self.run.task)
        if ref.phrases:
            phrase_probs = self.scorer(embeddings, ref.phrase_embeddings)
            metrics["heldout_combo_ap"] = numerics.phrase_ap(phrase_probs, ref.phrases, ref.phrase_tags)
        return {k: _json_float(v) for k, v in metrics.items()}

    # --- writing -----------------------------------------------------------------

    def _write(self, variant: Variant, model_bytes: bytes, result: VariantResult, extra: dict) -> None:
        io = numerics.io_details(model_bytes)
        manifest = Manifest(
            variant=variant.name,
            task=self.run.task,
            labels=tuple(self.run.labels),
            thresholds=tuple(extra.get("thresholds", self.run.thresholds)),
            default_threshold=self.default_threshold,
            embedding_dim=int(self.label_embeddings.shape[1]),
            logit_scale=float(self.run.logit_scale),
            logit_bias=float(self.run.logit_bias),
            preprocessing=self._preprocessing(io),
            sparsity=result.sparsity,
            provenance=self._provenance(variant, model_bytes, result, extra),
            numerics=result.numerics,
            label_maps=self._label_maps(io),
        )
        if self.options.fixed_labels:
            data = pack_bundle(model_bytes=model_bytes, manifest=manifest, label_embeddings=self.label_embeddings,
                               fixed_labels=True)
        else:
            data = pack_bundle(
                model_bytes=model_bytes, manifest=manifest, tokenizer=self.run.tokenizer,
                label_embeddings=self.label_embeddings, text_encoder_bytes=self.text_encoder_for(variant)[0],
                reference_embeddings=self._reference_embeddings(variant, model_bytes),
            )
        path = self.out_dir / variant.filename
        write_atomic(path, data)
        os.chmod(path, 0o644)  # write_atomic's temp file is private (0600); a bundle is meant to be copied
        read_bundle(path)  # what the board will do first; fails loudly if anything is off
        result.path, result.file_size, result.gzip_size = path, len(data), gzip_size(data)

    def _reference_embeddings(self, variant: Variant, model_bytes: bytes) -> np.ndarray | None:
        """This variant's embeddings of the first validation images, for labels typed on the
        board (:mod:`fuselite.convert.reference`); None when the run has no validation images."""
        count = reference_image_count(len(self.data.val), int(self.label_embeddings.shape[1]))
        if count == 0:
            log.warning("%s: no validation images, so the bundle carries no reference images; labels "
                        "typed on the board keep the default threshold", variant.name)
            return None
        outputs = numerics.tflite_embeddings(model_bytes, self.data.val.images[:count], self.options.num_threads)
        reference = reference_embeddings(outputs, self.label_embeddings)
        cells = outputs.shape[1] if outputs.ndim == 3 else 1
        log.info("%s: %d validation images (%d of %d cells each) as reference for typed labels, %d bytes",
                 variant.name, len(reference), reference.shape[1], cells, reference.size)
        return reference

    def _label_maps(self, io: dict) -> LabelMaps | None:
        """Where the bundle's heatmaps come from: a regional tower's cells, a pooled tower's
        class activation map (its second output), or nowhere (None)."""
        from fuselite.train.model import label_map_grid

        shape = self.run.image_encoder.output_shape
        if len(shape) == 3:
            grid = grid_shape(int(shape[1]))
            return None if grid is None else LabelMaps(grid=grid)
        grid = label_map_grid(self.run.image_encoder) if io["has_map"] else None
        return None if grid is None else LabelMaps(grid=grid, source="cam", output_quant=io["map_quant"])

    def _preprocessing(self, io: dict) -> Preprocessing:
        from fuselite.train.backbones import get_backbone

        size = self.run.config.image_size
        return Preprocessing(
            input_size=(size, size), color_order="RGB", resize="area",
            input_dtype=io["input_dtype"],
            normalization=get_backbone(self.run.config.backbone).pixel_scale_offset,
            input_quant=io["input_quant"], output_quant=io["output_quant"],
        )

    def _provenance(self, variant: Variant, model_bytes: bytes, result: VariantResult, extra: dict) -> dict:
        from fuselite.train.backend import tf

        text_bytes = self.text_encoder_for(variant)[0]
        provenance = {
            "source_run": str(self.run.run_dir.resolve()),
            "run_config": self.run.config.name,
            "backbone": self.run.config.backbone,
            "init_from": self.run.config.init_from or None,
            "run_metrics": {k: v for k, v in self.run.metrics.items() if isinstance(v, (int, float))},
            "fuselite": __version__,
            "tensorflow": tf.__version__,
            "converter": f"tf.lite.TFLiteConverter.from_keras_model (TensorFlow {tf.__version__})",
            "quantization": {"mode": variant.quantization, "per_channel": variant.per_channel},
            "views": "the frame and its left-right mirror, embeddings (and label maps, flipped back) averaged"
            if variant.mirror else "the frame",
            "calibration_samples": len(self.calibration) if variant.calibrated else 0,
            "ops": modelinfo.op_strings(modelinfo.model_ops(model_bytes)),
            "text_encoder_ops": modelinfo.op_strings(modelinfo.model_ops(*filter(None, [text_bytes]))),
            "text_encoder": self.text_encoder_for(variant)[1]["precision"],
            "runtimes": result.runtimes,
            "runtime_problems": result.runtime_problems,
            "thresholds": "recalibrated on validation" if "thresholds" in extra else "from the run",
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        if "compression" in extra:
            provenance["compression"] = extra["compression"]
        return provenance

    # --- reference ---------------------------------------------------------------

    def _reference(self, encoder) -> Reference:
        from fuselite.train.pipeline import embed_texts

        test = self.data.test
        if self.options.eval_samples:
            test = test.subset(range(min(self.options.eval_samples, len(test))))
        images, tags, phrases = test.images, list(test.tags), []
        heldout = self.data.heldout
        if heldout is not None:
            phrases = sorted(set(heldout.label_vocabulary()) - set(self.run.labels))
            images, tags = np.concatenate([images, heldout.images]), tags + list(heldout.tags)
        phrase_emb = embed_texts(self.run.text_encoder, self.run.tokenizer, phrases) if phrases else None
        ref = Reference(
            images=images, n_test=len(test), targets=test.multi_hot(self.run.labels), phrases=phrases,
            phrase_embeddings=phrase_emb, phrase_tags=tags, keras_embeddings=_embed(encoder, images),
        )
        ref.keras_metrics = self._metrics(ref, ref.keras_embeddings)
        return ref

    def _judged_split(self) -> JudgedSplit:
        """The validation split with the Keras model's metric on it, or the test split (with a
        warning saying why) when validation gives no task metric."""
        ref, val = self.reference, self.data.val
        name = next(iter(ref.keras_metrics))
        if self.options.eval_samples:
            val = val.subset(range(min(self.options.eval_samples, len(val))))
        if len(val):
            targets = val.multi_hot(self.run.labels)
            keras_emb = _embed(self.run.image_encoder, val.images)
            metric = self._task_metric(self.scorer(keras_emb, self.label_embeddings), targets)
            if metric is not None:
                return JudgedSplit(VALIDATION, val.images, targets, keras_emb, metric)
            why = f"its {len(val)} validation images give no {name} (none carries a label)"
        else:
            why = "the run has no validation images (splits.json)"
        why = f"accuracy budget judged on the test split: {why}; the test figures then also chose the variants"
        log.warning(why)
        return JudgedSplit(TEST, ref.images[: ref.n_test], ref.targets, ref.keras_embeddings[: ref.n_test],
                           ref.keras_metrics[name], fallback=why)

    def _thresholds(self, encoder) -> list[float]:
        """Per-label thresholds of ``encoder`` calibrated on validation, as training does."""
        from fuselite import metrics as m

        val = self.data.val
        probs = self.scorer(_embed(encoder, val.images), self.label_embeddings)
        return [float(t) for t in np.clip(m.calibrate_thresholds(probs, val.multi_hot(self.run.labels)), 0, 1)]

    def _default_threshold(self) -> float:
        val = self.data.val
        probs = self.scorer(_embed(self.run.image_encoder, val.images), self.label_embeddings)
        return numerics.global_threshold(probs, val.multi_hot(self.run.labels))

    # --- the text encoder of each bundle ----------------------------------------

    def text_encoder_for(self, variant: Variant) -> tuple[bytes, dict]:
        """The text encoder flatbuffer of ``variant``'s bundle and what the manifest says of it.

        None with ``--fixed-labels`` (empty bytes); int8 (or float16) in int8 bundles,
        made once and shared; float32 otherwise.
        """
        if self.options.fixed_labels:
            return b"", {"precision": "none", "why": "--fixed-labels: label embeddings only"}
        if variant.quantization != "int8":
            return self.text_encoder_bytes, {"precision": "float32", "max_error": self.text_encoder_error}
        if self._small_text_encoder is None:
            self._small_text_encoder = self._small_text()
        return self._small_text_encoder

    def _small_text(self) -> tuple[bytes, dict]:
        """The int8 text tower, or float16 when int8 moves a label below :data:`TEXT_INT8_MIN_COSINE`."""
        from fuselite.convert.tflite import ConversionError, convert_text_model

        texts, probes = text_calibration_texts(self.run, self.data, self.options.seed), self._text_probes()
        tried = {}
        for precision in ("int8", "float16"):
            try:
                model = convert_text_model(self.run.text_encoder, precision, self.run.tokenizer.encode_batch(texts))
            except ConversionError as exc:
                tried[precision] = {"error": str(exc)}
                continue
            tried[precision] = self._text_agreement(model, probes)
            if tried[precision]["min_cosine"] >= TEXT_INT8_MIN_COSINE or precision == "float16":
                break
            log.warning("int8 text encoder keeps cosine %.4f with float on %r, below %g: float16 instead",
                        tried[precision]["min_cosine"], tried[precision]["worst"], TEXT_INT8_MIN_COSINE)
        else:  # neither converted: the float tower, which did
            model, precision = self.text_encoder_bytes, "float32"
            tried[precision] = self._text_agreement(model, probes)
        info = {"precision": precision, "min_cosine_required": TEXT_INT8_MIN_COSINE,
                "calibration_texts": len(texts), **tried[precision],
                # why each more compact precision was passed over: its figure or its error
                "rejected": {p: {"error": t["error"]} if "error" in t else {"min_cosine": t["min_cosine"]}
                             for p, t in tried.items() if p != precision}}
        log.info("text encoder of int8 bundles: %s, %d bytes, min cosine %.4f with float over %d labels "
                 "and %d phrases", precision, len(model), info["min_cosine"], info["labels"], info["phrases"])
        return model, info

    def _text_probes(self) -> dict[str, list[str]]:
        """The texts whose embeddings must survive quantization: the default labels, and
        phrases typed at run time (held-out phrases, validation captions, single words)."""
        captions = sorted({c for c in self.data.val.captions if c})
        captions = [captions[i] for i in _sample(np.arange(len(captions)), TEXT_PROBE_PHRASES, self.options.seed)]
        phrases = list(dict.fromkeys([*self.reference.phrases, *captions, *self.run.tokenizer.vocab[2:2 + TEXT_PROBE_WORDS]]))
        return {"labels": list(self.run.labels), "phrases": [p for p in phrases if p not in self.run.labels]}

    def _text_agreement(self, model_bytes: bytes, probes: dict[str, list[str]]) -> dict:
        """Cosine of ``model_bytes``' embeddings with the Keras text tower's, per probe set."""
        from fuselite.train.pipeline import embed_texts

        result, worst = {}, (2.0, "")
        for name, texts in probes.items():
            if not texts:
                result[name] = 0
                continue
            ids = self.run.tokenizer.encode_batch(texts)
            ref = self.label_embeddings if name == "labels" else embed_texts(self.run.text_encoder,
                                                                            self.run.tokenizer, texts)
            out = numerics.tflite_embeddings(model_bytes, ids, self.options.num_threads)
            cos = np.sum(ref * out, 1) / np.maximum(np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1), 1e-12)
            result.update({name: len(texts), f"{name}_min_cosine": float(cos.min()),
                           f"{name}_mean_cosine": float(cos.mean())})
            if name == "labels":
                result["max_error"] = float(np.abs(out - ref).max())
            worst = min(worst, (float(cos.min()), texts[int(np.argmin(cos))]))
        return {**result, "min_cosine": worst[0], "worst": worst[1]}

    def _text_encoder_error(self) -> float:
        ids = self.run.tokenizer.encode_batch(self.run.labels)
        tflite = numerics.tflite_embeddings(self.text_encoder_bytes, ids, self.options.num_threads)
        return float(np.abs(tflite - self.label_embeddings).max())


def convert_run(run_dir: Path, out_dir: Path, variants: list[Variant], options: ConvertOptions) -> list[VariantResult]:
    """Converts ``variants`` of ``run_dir`` into ``out_dir``; see :class:`Converter`."""
    converter = Converter.load(run_dir, out_dir, options)
    return [converter.convert(v) for v in variants]


def text_calibration_texts(run, data, seed: int) -> list[str]:
    """Texts the int8 text tower calibrates on: the run's labels, each vocabulary word
    alone (a typed one-word label), and up to :data:`TEXT_CALIBRATION_TEXTS` training captions."""
    captions = sorted({c for c in data.train.captions if c})
    captions = [captions[i] for i in _sample(np.arange(len(captions)), TEXT_CALIBRATION_TEXTS, seed)]
    return list(dict.fromkeys([*run.labels, *run.tokenizer.vocab[2:2 + TEXT_PROBE_WORDS], *captions]))


def remove_stale_parts(out_dir: Path, variant: Variant) -> None:
    """Deletes temp files an interrupted earlier write of ``variant`` left behind."""
    for path in Path(out_dir).glob(f".{variant.filename}.*.part"):
        log.debug("removing %s, left by an interrupted conversion", path)
        path.unlink(missing_ok=True)


_REFERENCES = {
    "none": "Keras image tower",
    "prune": "pruned, fine-tuned Keras image tower",
    "cluster": "clustered, fine-tuned Keras image tower",
    "qat": "quantization-aware trained Keras image tower (fake-quant)",
}


# Scores this close to the Keras model's cannot have lost accuracy: when the metric moves
# anyway it moves on ties between near-equal scores (a weak model's near-constant
# outputs: the runtime suite's one-epoch board model "lost" 1.68 pt mAP on validation at
# a max score error of 3.8e-5 and 100% top-label agreement).
SAME_SCORES_ERROR = 1e-3


def judge(variant: Variant, checks: dict, max_loss: float) -> dict:
    """The verdict on a variant's checks: the accuracy budget decides, the score check only warns.

    A variant is written when its task metric on the judged split (``checks["judged"]``:
    validation, see :class:`JudgedSplit`) loses at most ``max_loss`` points against Keras,
    whatever its per-score figures; its top label must still agree with Keras on
    :data:`BUDGET_MIN_AGREEMENT` of that split's images (a broken conversion of a model too
    weak for its metric to fall).  The score check (on the test split) only warns.  Without
    a task metric (no images, or none with a label) the per-score tolerance is the gate, as
    it was before the budget.  Returns the keys merged into the manifest's ``numerics``.
    """
    within_tolerance = (checks["top1_agreement"] >= variant.min_agreement
                        and checks["max_score_error"] <= variant.max_score_error)
    judged = checks["judged"]
    verdict = {"within_tolerance": within_tolerance, "max_loss_pt": max_loss, "judged_on": judged["split"]}
    delta = judged["delta_pt"]
    if delta is None:
        return {**verdict, "gate": f"tolerance (no task metric on the {judged['split']} split)",
                "passed": within_tolerance, "passed_by": "tolerance" if within_tolerance else None}
    # 1e-9: a float variant whose metric equals Keras' up to rounding loses nothing.
    within_budget = -delta <= max_loss + 1e-9
    passed = (within_budget or _same_scores(variant, checks)) and judged["top1_agreement"] >= BUDGET_MIN_AGREEMENT
    passed_by = ("accuracy budget" if within_budget else "same scores as Keras") if passed else None
    return {**verdict, "gate": "accuracy budget", "passed": passed, "passed_by": passed_by}


def _same_scores(variant: Variant, checks: dict) -> bool:
    """Whether ``variant`` scores like the original Keras model (:data:`SAME_SCORES_ERROR`);
    a fine-tuned or mirror-averaged variant is compared with its own reference instead,
    so its closeness says nothing of the original's accuracy."""
    return (variant.compression == "none" and not variant.mirror
            and checks["max_score_error"] <= SAME_SCORES_ERROR and checks["top1_agreement"] >= 0.99)


def refusal_message(variant: Variant, checks: dict, options: ConvertOptions) -> str:
    """Why ``variant`` is not written, with its figures and the next step to take (one line)."""
    figures = (f"top-label agreement {checks['top1_agreement']:.3f}, "
               f"max score error {checks['max_score_error']:.3g}")
    judged, metric = checks["judged"], checks["task_metric_name"]
    delta, split = judged["delta_pt"], judged["split"]
    if delta is None:
        return (f"{_tolerance_message(variant, checks)}; the {split} split gives no task metric, so the score "
                f"check decides and --max-loss cannot accept it: {next_step(variant, options)}")
    if judged["top1_agreement"] < BUDGET_MIN_AGREEMENT:
        remedy = ("check the calibration images (--calibration-samples) or " if variant.calibrated else "")
        return (f"broken conversion: its top label agrees with Keras on {judged['top1_agreement']:.1%} of the "
                f"{split} images, below the {BUDGET_MIN_AGREEMENT:.0%} any written variant needs "
                f"({metric} {delta:+.2f} pt, max score error {checks['max_score_error']:.3g}); not written: "
                f"{remedy}{next_step(variant, options)}")
    loss = -delta
    accept = math.ceil(round(loss * 10, 6)) / 10  # the smallest budget (0.1 pt steps) that accepts it
    reported = "" if split == checks["split"] else f"{_test_text(checks)}; "  # the unbiased figure, for the user
    return (f"lost {loss:.2f} pt {metric} on the {split} split (budget {options.max_loss:.1f}; "
            f"{reported}{figures}); not written: "
            f"{next_step(variant, options)}, or --max-loss {accept:g} to accept it")


def budget_summary(checks: dict) -> str:
    """``budget judged on validation: mAP -0.40 pt; test: -0.60 pt`` (one line for the log)."""
    judged = checks["judged"]
    if judged["delta_pt"] is None:
        return f"no task metric on the {judged['split']} split: the score check judged"
    text = f"budget judged on {judged['split']}: {checks['task_metric_name']} {judged['delta_pt']:+.2f} pt"
    return text if judged["split"] == checks["split"] else f"{text}; {_test_text(checks)}"


def _test_text(checks: dict) -> str:
    """``test -0.60 pt``: the reported (not judged) figure, or why there is none."""
    return "test: no task metric" if checks["delta_pt"] is None else f"test: {checks['delta_pt']:+.2f} pt"


def next_step(variant: Variant, options: ConvertOptions) -> str:
    """What to try when ``variant`` costs too much accuracy: the variant that loses less."""
    if variant.compression == "prune" and options.sparsity is None:
        lowest = variant.sparsity_candidates()[-1]
        if variant.sparse_inference:  # sparse inference needs most weights zero: lower is no use
            return f"the search went down to {lowest:g}; try more --finetune-steps, or --variants pruned-int8"
        return (f"the search went down to {lowest:g}; try --sparsity {max(0.1, round(lowest - 0.2, 2)):g} "
                f"or more --finetune-steps")
    if variant.compression == "prune":
        lower = max(0.1, round(options.sparsity - 0.25, 2))
        return f"try --sparsity {lower:g} (now {options.sparsity:g}) or more --finetune-steps"
    if variant.compression == "cluster" and options.clusters is None:
        most = variant.cluster_candidates()[-1]
        return f"the search went up to {most} clusters; try --clusters {2 * most} or more --finetune-steps, " \
               "or --variants qat-int8"
    if variant.compression == "cluster":
        return f"try --clusters {min(256, 2 * options.clusters)} (now {options.clusters}) or more --finetune-steps"
    if variant.compression == "qat":
        return "try more --finetune-steps, or --variants fp16"
    if variant.quantization == "int8" and not variant.per_channel:
        return "try --variants int8 (per-channel scales) or qat-int8"
    if variant.quantization == "int8":
        return "try --variants qat-int8"
    if variant.quantization == "dynamic":
        return "try --variants fp16 or qat-int8"
    if variant.quantization == "float16":
        return "try --variants fp32"
    return "fp32 should score as Keras does: report it with convert-report.json"


def score_warning(variant: Variant, checks: dict) -> str:
    """The warning of a variant written on the budget although its scores drift past the tolerance.

    A calibrated variant whose top label disagrees with Keras more often than its
    tolerance allows is told to check its calibration images: a weak model's metric can
    hold while a calibration unlike the camera's pictures (flat frames, another scene)
    clips its activations, and a better model will not be so forgiving.
    """
    text = (f"score check exceeded: max score error {checks['max_score_error']:.3g} (tolerance "
            f"{variant.max_score_error:g}), top-label agreement {checks['top1_agreement']:.3f} (min "
            f"{variant.min_agreement:g}); written because {checks['task_metric_name']} "
            f"{checks['judged']['delta_pt']:+.2f} pt on the {checks['judged']['split']} split is within the "
            f"{checks['max_loss_pt']:.1f} pt budget")
    if variant.calibrated and checks["top1_agreement"] < variant.min_agreement:
        text += "; check the calibration images (--calibration-samples)"
    return text


def _tolerance_message(variant: Variant, checks: dict) -> str:
    return (
        f"numbers differ from Keras beyond tolerance: top-label agreement "
        f"{checks['top1_agreement']:.3f} (min {variant.min_agreement}), max score error "
        f"{checks['max_score_error']:.3g} (max {variant.max_score_error}); not written"
    )


def _loss_text(loss_pt: float | None) -> str:
    """``lost 0.42 pt`` (negative: gained), or why there is no figure."""
    if loss_pt is None:
        return "no task metric"
    return f"lost {loss_pt:.2f} pt" if loss_pt >= 0 else f"gained {-loss_pt:.2f} pt"


def _embed(encoder, images: np.ndarray) -> np.ndarray:
    from fuselite.train.pipeline import embed_images

    return embed_images(encoder, images)


def _sample(images: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` images drawn without replacement (all of them when there are fewer)."""
    if n >= len(images):
        return images
    return images[np.sort(np.random.default_rng(seed).choice(len(images), n, replace=False))]


def _delta_pt(value: float | None, reference: float | None) -> float | None:
    """``value - reference`` in percentage points, or None when either is undefined."""
    return None if value is None or reference is None else 100 * (value - reference)


def _json_float(value: float) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None


def _since(started: float) -> float:
    return round(time.perf_counter() - started, 1)

