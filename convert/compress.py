"""Pruning, clustering and quantization-aware training of the image tower (TensorFlow Model Optimization).

The pointwise (1x1) convolutions and the projection hold nearly all weights, so
they are the ones compressed; the stem and the depthwise 3x3 kernels are small and
sensitive and stay as they are.  Pruning also leaves the first, narrow pointwise
kernels dense (under ``min_pruned_weights``): a few percent of the weights, through
which every later feature passes.  Batch-norm statistics are frozen.

* ``prune``: magnitude pruning; sparsity ramps up polynomially over the first 70 %
  of the fine-tuning steps, then holds while the network recovers.
* ``cluster``: each compressed kernel shares ``clusters`` values (k-means++ start).
* ``qat``: quantization-aware training.  ``quantize_model`` refuses the tower (its
  default 8-bit registry has no Rescaling or UnitNormalization, and it would put a
  fake-quant on the uint8 input), so only the layers of :func:`quantizable` are
  annotated.  The rest trains in float; the converter calibrates it as for ``int8``.

All three fine-tune with a loss that keeps the task and the geometry: the run's label
loss against the frozen label embeddings and scorer (binary cross-entropy for tags,
softmax for single labels), plus a distillation term pulling each embedding towards
the original tower's embedding of the same augmented image.  Stripping the wrappers
afterwards leaves a plain tf_keras model, ready for the same int8 conversion.  Zeros
and shared values only shrink a file once it is compressed (gzip, zip).  A QAT tower
keeps its wrappers: the converter reads their fake-quant ranges.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from fuselite.train.backend import keras, tf
from fuselite.train.model import image_similarity

log = logging.getLogger(__name__)

METHODS = ("prune", "cluster", "qat")
RAMP_SHARE = 0.7  # share of the steps over which sparsity rises to its target

FINETUNE_EPOCHS = 7  # passes over the training split that pruned variants recover in
MIN_FINETUNE_STEPS = 500
# A sparsity search fine-tunes up to five times: 4,000 steps (about 40 s each for the
# tiny tower on two cores, 7 epochs of 36,000 images at batch 64) bound its cost.
MAX_FINETUNE_STEPS = 4000


def finetune_steps(train_items: int, batch_size: int) -> int:
    """Fine-tuning steps for a training split: about seven epochs, 500 to 4,000.

    The schedule scales with the data: a fixed step count recovered the 4,000 training
    scenes but left a 57,000-image Fashion-MNIST tower 1.45 pt short at 75 % sparsity;
    seven epochs there cost 0.8 pt.  The floor lets small splits reach their sparsity
    (it ramps over the first 70 %), the cap bounds a search of several candidates.
    """
    steps = round(FINETUNE_EPOCHS * train_items / max(1, batch_size))
    return int(min(MAX_FINETUNE_STEPS, max(MIN_FINETUNE_STEPS, steps)))


@dataclass
class CompressionSearch:
    """The outcome of :func:`search_compression`.

    Attributes:
        chosen: The setting (sparsity or cluster count) whose attempt passed, or ``None``
            if none did.
        outcome: What the passing attempt returned (the last attempt's if none passed).
        tried: One record per candidate tried, most compressed first: the setting under
            the name ``knob`` (``sparsity`` or ``clusters``), ``passed``, ``loss_pt``
            (points lost against Keras on the ``judged_on`` split, or ``None``) and
            ``why`` (one line).
        pinned: Whether ``--sparsity`` (``--clusters``) pinned the single candidate.
        judged_on: The split the candidates were judged on: ``"validation"``, so that the
            test split, never used to choose, still gives an unbiased figure for the one
            written (``"test"`` only when the run's validation split has no task metric).
    """

    chosen: float | None
    outcome: object
    tried: list
    pinned: bool
    judged_on: str = "validation"
    knob: str = "sparsity"

    def record(self) -> dict:
        """JSON-ready form for the manifest and ``convert-report.json``."""
        return {"chosen": self.chosen, "pinned": self.pinned, "judged_on": self.judged_on,
                "candidates": self.tried}


def search_compression(candidates, attempt, pinned: bool = False, judged_on: str = "validation",
                       knob: str = "sparsity") -> CompressionSearch:
    """Tries ``candidates`` (most compressed first) until one passes; keeps the first that does.

    ``candidates`` are sparsities, highest first, or cluster counts, fewest first (``knob``
    names which).  ``attempt(setting)`` compresses, fine-tunes, converts and judges one
    candidate on the ``judged_on`` split and returns ``(passed, loss_pt, why, go_on,
    outcome)``: ``go_on`` is False when a milder setting cannot help (the converter failed,
    or the target cannot load the ops).
    """
    tried, outcome = [], None
    for setting in candidates:
        passed, loss_pt, why, go_on, outcome = attempt(setting)
        tried.append({knob: setting, "passed": passed,
                      "loss_pt": None if loss_pt is None else round(loss_pt, 3), "why": why})
        log.info("%s %g (judged on %s): %s", knob, setting, judged_on, why)
        if passed:
            return CompressionSearch(setting, outcome, tried, pinned, judged_on, knob)
        if not go_on:
            break
    return CompressionSearch(None, outcome, tried, pinned, judged_on, knob)


@dataclass(frozen=True)
class CompressSettings:
    """How hard to compress and how long to fine-tune.

    Attributes:
        sparsity: Target share of zeros in each pruned kernel.
        clusters: Shared values per clustered kernel.
        steps: Fine-tuning steps (batches of the run's batch size).
        learning_rate: Adam learning rate, held while sparsity ramps up, then cosine-decayed to 0.
        distill_weight: Weight of the distillation term, relative to the label loss.
        min_pruned_weights: Kernels with fewer weights stay dense when pruning.  On
            the 89k-parameter fashion tower, leaving the 32->32 and 32->64 kernels
            (4 % of the weights) dense cut the accuracy cost of 0.75 sparsity from
            -1.02 pt to -0.53 / -0.70 pt (two conversions) for a gzip size of 0.57x
            int8 instead of 0.553x.
        seed: Seeds the shuffling and augmentation.
        progress: The fine-tuning progress bar: ``None`` on a terminal only, ``False`` never,
            ``True`` always (see :func:`fuselite.convert.report.progress_bar`).
    """

    sparsity: float = 0.75
    clusters: int = 16
    steps: int = 500
    learning_rate: float = 3e-3
    distill_weight: float = 1.0
    min_pruned_weights: int = 4096
    seed: int = 0
    progress: bool | None = None


def compressible(layer) -> bool:
    """Whether ``layer`` is pruned or clustered: 1x1 convolutions and dense layers."""
    if isinstance(layer, keras.layers.Dense):
        return True
    return type(layer) is keras.layers.Conv2D and tuple(layer.kernel_size) == (1, 1)


def quantizable(layer) -> bool:
    """Whether ``layer`` is trained with fake quantization by the ``qat`` method.

    Convolutions and the projection are what TFMOT quantizes.  Batch norm, ReLU and
    Add are annotated too: TFMOT then matches its Conv+BN+ReLU pattern and quantizes
    once after the ReLU, as the fused int8 TFLite kernel does, instead of between
    the convolution and a float batch norm.
    """
    return isinstance(layer, _QUANTIZABLE)


_QUANTIZABLE = (
    keras.layers.Conv2D,
    keras.layers.DepthwiseConv2D,
    keras.layers.Dense,
    keras.layers.BatchNormalization,
    keras.layers.ReLU,
    keras.layers.Add,
)


def compress_image_encoder(
    method: str, run, train_data, label_embeddings: np.ndarray, settings: CompressSettings
) -> tuple[keras.Model, dict]:
    """Prunes, clusters or quantization-aware trains a fine-tuned copy of ``run.image_encoder``.

    Returns the model to convert (stripped of pruning or clustering wrappers; a QAT
    model as it is) and a report for the bundle's provenance.  ``run`` is a
    :class:`fuselite.train.run.TrainedRun`, ``train_data`` its training split and
    ``label_embeddings`` the text tower's embeddings of ``run.labels``.
    """
    import tensorflow_model_optimization as tfmot

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}")
    started = time.perf_counter()
    wrapped = _wrap(run.image_encoder, method, settings)
    callbacks = [tfmot.sparsity.keras.UpdatePruningStep()] if method == "prune" else []
    loss = _fine_tune(wrapped, method, run, train_data, label_embeddings, settings, callbacks)
    if method == "qat":
        return wrapped, _qat_report(run, settings, loss, started)
    if method == "prune":
        stripped = tfmot.sparsity.keras.strip_pruning(wrapped)
    else:
        stripped = tfmot.clustering.keras.strip_clustering(wrapped)
    report = _report(method, run, settings, loss, started)
    report["layers_sparsity"] = layers_sparsity(stripped, _selector(method, settings))
    report["layers_max_unique_values"] = layers_max_unique(stripped)
    report.update({"target_sparsity": settings.sparsity} if method == "prune" else {"clusters": settings.clusters})
    if method == "prune":
        log.info("pruned: %.1f%% zeros in the pruned layers, in %.0f s", 100 * report["layers_sparsity"],
                 report["seconds"])
    else:
        log.info("clustered: at most %d values per kernel, in %.0f s", report["layers_max_unique_values"],
                 report["seconds"])
    return stripped, report


def _qat_report(run, settings: CompressSettings, loss: float, started: float) -> dict:
    """What quantization-aware training did, for the bundle's provenance."""
    report = _report("qat", run, settings, loss, started)
    log.info("quantization-aware trained for %d steps in %.0f s", settings.steps, report["seconds"])
    return report


def _report(method: str, run, settings: CompressSettings, loss: float, started: float) -> dict:
    """What every compression method reports: the layers it changed and the fine-tuning."""
    import tensorflow_model_optimization as tfmot

    selected = _selector(method, settings)
    return {
        "method": method,
        "api": _API[method],
        "layers": [layer.name for layer in run.image_encoder.layers if selected(layer)],
        "steps": settings.steps,
        "learning_rate": settings.learning_rate,
        "distill_weight": settings.distill_weight,
        "final_loss": loss,
        "tfmot": tfmot.__version__,
        "seconds": round(time.perf_counter() - started, 1),
    }


_API = {
    "prune": "tfmot.sparsity.keras.prune_low_magnitude (PolynomialDecay), strip_pruning",
    "cluster": "tfmot.clustering.keras.cluster_weights (k-means++), strip_clustering",
    "qat": "tfmot.quantization.keras.quantize_annotate_layer (supported layers), quantize_apply "
    "(Default8BitQuantizeScheme)",
}


def prunable(layer, settings: CompressSettings) -> bool:
    """Whether ``layer`` is pruned: a compressible layer with at least ``settings.min_pruned_weights``."""
    return compressible(layer) and int(np.prod(layer.kernel.shape)) >= settings.min_pruned_weights


def layers_sparsity(model: keras.Model, selected=compressible) -> float:
    """Share of zeros in the kernels of the ``selected`` layers of ``model`` (default: compressible)."""
    kernels = [layer.kernel.numpy() for layer in model.layers if selected(layer)]
    total = sum(k.size for k in kernels)
    return float(sum(np.count_nonzero(k == 0) for k in kernels) / total) if total else 0.0


def layers_max_unique(model: keras.Model) -> int:
    """The largest number of distinct values in one compressible kernel of ``model``."""
    return max((len(np.unique(layer.kernel.numpy())) for layer in model.layers if compressible(layer)), default=0)


def _wrap(model: keras.Model, method: str, settings: CompressSettings) -> keras.Model:
    """A copy of ``model`` with the layers ``method`` changes wrapped; the original stays untouched."""
    selected = _selector(method, settings)
    wrap_layer = {"qat": _annotator, "prune": _pruner, "cluster": _clusterer}[method](settings)
    # clone_model's clone_function sees the layers of its input; wrapping them would
    # share weights with that input, so the first copy is a throwaway.
    base = keras.models.clone_model(model)
    base.set_weights(model.get_weights())

    def wrap(layer):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False  # keeps the moving statistics of the trained run
        return wrap_layer(layer) if selected(layer) else layer

    wrapped = keras.models.clone_model(base, clone_function=wrap)
    return _quantize_apply(wrapped) if method == "qat" else wrapped


def _selector(method: str, settings: CompressSettings):
    """The predicate choosing the layers that ``method`` changes."""
    if method == "prune":
        return lambda layer: prunable(layer, settings)
    return quantizable if method == "qat" else compressible


def _annotator(settings: CompressSettings):
    """TFMOT's layer annotation (QAT has no settings of its own; same signature as the others)."""
    import tensorflow_model_optimization as tfmot

    return tfmot.quantization.keras.quantize_annotate_layer


def _quantize_apply(annotated: keras.Model) -> keras.Model:
    """Replaces the annotations with fake-quant wrappers (TFMOT's default 8-bit scheme)."""
    import tensorflow_model_optimization as tfmot

    # quantize_apply clones the annotated model, whose wrappers it knows only in this scope.
    with tfmot.quantization.keras.quantize_scope():
        return tfmot.quantization.keras.quantize_apply(annotated)


def _pruner(settings: CompressSettings):
    import tensorflow_model_optimization as tfmot

    schedule = tfmot.sparsity.keras.PolynomialDecay(
        initial_sparsity=0.0,
        final_sparsity=settings.sparsity,
        begin_step=0,
        end_step=max(1, int(settings.steps * RAMP_SHARE)),
        frequency=max(1, settings.steps // 40),
    )
    return lambda layer: tfmot.sparsity.keras.prune_low_magnitude(layer, pruning_schedule=schedule)


def _clusterer(settings: CompressSettings):
    import tensorflow_model_optimization as tfmot

    init = tfmot.clustering.keras.CentroidInitialization.KMEANS_PLUS_PLUS
    return lambda layer: tfmot.clustering.keras.cluster_weights(
        layer, number_of_clusters=settings.clusters, cluster_centroids_init=init
    )


def _fine_tune(model, method: str, run, train_data, label_embeddings, settings: CompressSettings,
               callbacks) -> float:
    """Fine-tunes ``model`` in place; returns the last epoch's loss."""
    tf.random.set_seed(settings.seed)
    trainer = _Distiller(model, run.image_encoder, label_embeddings, run, settings.distill_weight)
    trainer.compile(optimizer=keras.optimizers.Adam(HoldThenCosine(settings.learning_rate, settings.steps)))
    steps_per_epoch = min(50, settings.steps)
    epochs = max(1, round(settings.steps / steps_per_epoch))
    desc = f"{_VERBS[method]} fine-tune" + (f" to {settings.sparsity:.0%} zeros" if method == "prune" else "")
    progress = FineTuneProgress(epochs * steps_per_epoch, desc, settings.progress)
    history = trainer.fit(
        _dataset(run, train_data, settings.seed),
        steps_per_epoch=steps_per_epoch,
        epochs=epochs,
        callbacks=[*callbacks, progress],
        verbose=0,
    )
    return float(history.history["loss"][-1])


_VERBS = {"prune": "pruning", "cluster": "clustering", "qat": "quantization-aware"}


class FineTuneProgress(keras.callbacks.Callback):
    """A progress bar over the fine-tuning steps with the latest loss, as ``train``'s ProgressBar."""

    def __init__(self, steps: int, desc: str, enabled: bool | None):
        super().__init__()
        self.steps, self.desc, self.enabled, self.bar = steps, desc, enabled, None

    def on_train_begin(self, logs=None):
        """Opens the bar (here, not in ``__init__``: a bar is only shown while fitting)."""
        from fuselite.convert.report import progress_bar

        self.bar = progress_bar(self.steps, self.desc, self.enabled)

    def on_train_batch_end(self, batch, logs=None):
        """Advances the bar by one step."""
        self.bar.update(1)

    def on_epoch_end(self, epoch, logs=None):
        """Shows the loss of the epoch just done."""
        self.bar.set_postfix(loss=f"{(logs or {}).get('loss', float('nan')):.4f}")

    def on_train_end(self, logs=None):
        """Closes the bar."""
        self.bar.close()


class HoldThenCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Constant learning rate while sparsity ramps up, then a cosine decay to 0 as it recovers."""

    def __init__(self, learning_rate: float, steps: int, hold_share: float = RAMP_SHARE):
        self.learning_rate, self.steps, self.hold_share = learning_rate, steps, hold_share

    def __call__(self, step):
        hold = float(int(self.steps * self.hold_share))
        progress = tf.clip_by_value((tf.cast(step, tf.float32) - hold) / max(1.0, self.steps - hold), 0.0, 1.0)
        return self.learning_rate * 0.5 * (1.0 + tf.cos(np.pi * progress))

    def get_config(self) -> dict:
        """The constructor arguments."""
        return {"learning_rate": self.learning_rate, "steps": self.steps, "hold_share": self.hold_share}


def _dataset(run, train_data, seed: int):
    """The run's own augmented training pipeline, repeated."""
    from dataclasses import replace

    from fuselite.train.pipeline import make_dataset

    config = replace(run.config, seed=seed)
    return make_dataset(train_data, run.labels, run.tokenizer, config, training=True).repeat()


class _Distiller(keras.Model):
    """Trains ``student`` on the label loss plus distillation to a frozen ``teacher``."""

    def __init__(self, student, teacher, label_embeddings, run, distill_weight: float):
        super().__init__()
        self.student = student
        self.teacher = teacher
        self.labels = tf.constant(label_embeddings, dtype=tf.float32)
        self.scale = float(run.logit_scale)
        self.bias = float(run.logit_bias)
        self.single = run.task == "single"
        self.distill_weight = distill_weight
        self.loss_tracker = keras.metrics.Mean(name="loss")

    @property
    def metrics(self):
        """Reset at every epoch."""
        return [self.loss_tracker]

    def _loss(self, batch):
        images, targets = batch["image"], batch["targets"]
        embedding = self.student(images, training=True)
        logits = self.scale * image_similarity(embedding, self.labels) + self.bias
        if self.single:
            task = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(targets, logits))
        else:
            task = tf.reduce_mean(tf.reduce_sum(tf.nn.sigmoid_cross_entropy_with_logits(targets, logits), 1))
        teacher = tf.stop_gradient(self.teacher(images, training=False))
        # 1 - cosine (per cell for regional models), in logit units like the label loss.
        distill = self.scale * tf.reduce_mean(1.0 - tf.reduce_sum(embedding * teacher, axis=-1))
        return task + self.distill_weight * distill

    def train_step(self, batch):
        """One Adam step on the student's trainable weights."""
        with tf.GradientTape() as tape:
            loss = self._loss(batch)
        variables = self.student.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result()}
