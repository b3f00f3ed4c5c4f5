"""``fuselite train``: fit the fused model, calibrate thresholds, write the run directory.

A run directory holds everything the later stages need::

    config.json            the TrainConfig
    tokenizer.json         word vocabulary (fuselite.tokenizer)
    labels.json            training labels, task, per-label thresholds
    splits.json            train/val/test indices (deterministic given the seed)
    image_encoder.weights.h5, text_encoder.weights.h5, scorer.json
    metrics.json           test-split metrics
    history.json           per-epoch losses
    checkpoints/           resumable state (``--resume``), with the weight average (``swa_epochs``)
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from tqdm.contrib.logging import logging_redirect_tqdm

from fuselite.data.dataset import Splits
from fuselite.data.sources import check_label_texts, warn_unreadable_labels
from fuselite.errors import UserError
from fuselite.files import write_atomic
from fuselite.metrics import mean_average_precision, top1_accuracy
from fuselite.train.backend import keras, tf
from fuselite.train.callbacks import CheckpointAndStop, ProgressBar, WeightAverage
from fuselite.train.configs import (
    TrainConfig,
    resolve_backbone,
    resolve_epochs,
    resolve_image_size,
    steps_per_epoch,
)
from fuselite.train.distill import TeacherEnsemble, agreement, teacher_soft_labels
from fuselite.train.distributed import (
    chief_output,
    cluster_from_env,
    multi_worker_strategy,
    quiet_collectives,
    shard_by_data,
    sharded_training_data,
    worker_run_dir,
)
from fuselite.train.evaluate import evaluate
from fuselite.train.features import feature_run_data
from fuselite.train.init_from import (
    load_earlier_run,
    load_earlier_weights,
    merged_labels,
    merged_tokenizer,
)
from fuselite.train.model import FusedModel, unfreeze_top_blocks
from fuselite.train.pipeline import (
    RunData,
    fit_tokenizer,
    label_vocabulary,
    load_run_data,
    make_dataset,
)

log = logging.getLogger(__name__)

# Training batches that re-estimate batch norm for averaged weights (swa_epochs): with
# momentum 0.9 the old statistics weigh 0.9**100 (3e-5) after them.
BATCH_NORM_BATCHES = 100
# Fine-tuning a pretrained backbone's top blocks starts at this share of the peak rate.
FINE_TUNE_RATE = 0.1
# What a worker sees when another worker of its job died: the dead-peer check aborts
# the collectives (Unavailable), or a collective in flight fails or is cancelled.
PEER_FAILURES = (tf.errors.UnavailableError, tf.errors.CancelledError, tf.errors.AbortedError,
                 tf.errors.DeadlineExceededError)


def distribution_strategy() -> tf.distribute.Strategy:
    """MirroredStrategy when several GPUs are visible, else the default strategy."""
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def train(config: TrainConfig, run_dir: Path, resume: bool = False) -> dict:
    """Trains ``config`` into ``run_dir`` and returns the test metrics.

    With ``resume``, the saved config and splits are reused and training continues
    after the last completed epoch.  A fresh run writes nothing until its data has
    loaded and its labels passed :func:`check_label_texts`; if it then fails before
    its first checkpoint, what it wrote is removed (never what the folder held before).

    When ``TF_CONFIG`` describes a multi-worker job, this process is one worker of it
    (:mod:`fuselite.train.distributed`): the chief writes ``run_dir``, the others a
    temporary folder, and a worker that dies stops the job with a :class:`UserError`.
    """
    run_dir = Path(run_dir)
    cluster = cluster_from_env()
    if cluster is None:
        return _train(config, run_dir, resume, distribution_strategy)
    strategy = multi_worker_strategy(cluster)  # first: collectives are set up before other ops
    with worker_run_dir(run_dir, cluster, resume) as own_dir, chief_output(cluster), quiet_collectives():
        try:
            return _train(config, own_dir, resume, lambda: strategy)
        except PEER_FAILURES as error:
            raise UserError(
                f"{cluster.task} of {cluster.workers}: the job stopped, another worker stopped answering "
                f"({_peer_failure(error)}); start every worker again with --resume to continue from the "
                f"last checkpoint in {run_dir}") from None


def _peer_failure(error: Exception) -> str:
    """TensorFlow's reason for a failed collective, without the op name it starts with."""
    text = (error.message if hasattr(error, "message") else str(error)).strip().splitlines()[0]
    return text.rsplit("}} ", 1)[-1][:160]


def _train(config: TrainConfig, run_dir: Path, resume: bool, strategy: Callable) -> dict:
    """:func:`train` on this worker's own folder, with ``strategy()`` for the fit."""
    if config.backbone == "auto" and not resume:
        config = resolve_backbone(config)
    config, splits = _prepare_run_dir(config, run_dir, resume)
    config, size_note = resolve_image_size(config) if not resume else (config, "as the run started")
    keras.utils.set_random_seed(config.seed)
    started = time.monotonic()
    data = load_run_data(config, splits)
    config, epochs_note = resolve_epochs(config, len(data.train)) if not resume else (config, "")
    labels = label_vocabulary(data.train)
    log.info("%s", describe_run(config, data, labels, size_note, epochs_note))
    earlier = load_earlier_run(config.init_from) if config.init_from else None
    if earlier is None:
        tokenizer = fit_tokenizer(data, labels, config.max_text_length)
    else:
        labels = merged_labels(earlier.labels, labels)
        tokenizer = merged_tokenizer(earlier.tokenizer, [*labels, *data.train.captions])
    check_label_texts(labels, [*data.val.label_vocabulary(), *data.test.label_vocabulary()])
    warn_unreadable_labels(labels, tokenizer)
    with _run_dir_kept_only_if_it_trains(run_dir, fresh=not resume):
        if not resume:
            config.save(run_dir / "config.json")
        data.splits.save(run_dir / "splits.json")
        tokenizer.save(run_dir / "tokenizer.json")
        model = _fit(config, run_dir, data, labels, tokenizer, resume, earlier, strategy())
        metrics = evaluate(model, tokenizer, labels, data)
        metrics.update(
            train_seconds=round(time.monotonic() - started, 1),
            image_params=int(model.image_encoder.count_params()),
            text_params=int(model.text_encoder.count_params()),
            train_items=len(data.train), val_items=len(data.val), test_items=len(data.test),
            skipped_items=data.skipped,
        )
        if config.init_from:
            metrics["init_from"] = config.init_from
        _save_run(run_dir, model, labels, metrics)
    return metrics


def describe_run(config: TrainConfig, data: RunData, labels: list[str], size_note: str = "",
                 epochs_note: str = "") -> str:
    """The block the log gives before training: what was loaded and what will train.

    Items used and skipped (with the first reasons), the split sizes, the labels, the
    input size (and ``size_note``: why that size) and backbone, the schedule (and
    ``epochs_note``: why that many epochs, when the data decided).  The time per epoch follows after the first
    epoch (:class:`EpochTimer`), then the progress bar's ETA.
    """
    used = len(data.train) + len(data.val) + len(data.test)
    skipped = f", {data.skipped} skipped" if data.skipped else ", none skipped"
    if data.skip_reasons:
        skipped += " (e.g. " + "; ".join(f"{item}: {why}" for item, why in data.skip_reasons) + ")"
    task = ("one per image, scored by top-1" if data.train.task == "single"
            else "several per image, scored by mAP")
    backbone = ("tiny (trained from scratch)" if not config.pretrained
                else f"{config.backbone} (ImageNet-pretrained, frozen)")
    steps = steps_per_epoch(config, len(data.train))
    lines = [
        f"data: {config.data or config.name}",
        f"  items    {used} used{skipped}",
        f"  splits   {len(data.train)} train, {len(data.val)} validation, {len(data.test)} test",
        f"  labels   {len(labels)} ({task}){'; captions too' if data.train.has_captions else ''}",
        f"  input    {config.image_size} px{f' ({size_note})' if size_note else ''}",
        f"  backbone {backbone}",
        (f"  epochs   {config.epochs}{f' ({epochs_note})' if epochs_note else ''} of {steps} steps "
         f"(batch {config.batch_size}); early stop possible after epoch {(3 * config.epochs) // 4} "
         f"(patience {config.patience})"),
        "  ETA      measured on the first epoch, then on the progress bar",
    ]
    return "\n".join(lines)


class EpochTimer(keras.callbacks.Callback):
    """Logs the first epoch's duration and the estimated time for the epochs left.

    The first step builds the graph (11 s of a 15 s epoch on a 22-item run), so the
    estimate scales the epoch's other steps, and its validation, to a whole epoch.
    """

    def __init__(self, epochs: int, steps_per_epoch: int, initial_epoch: int = 0):
        super().__init__()
        self.epochs, self.steps, self.initial_epoch = epochs, steps_per_epoch, initial_epoch
        self.started = self.first_step_done = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        """Starts the clock on the run's first epoch."""
        if epoch == self.initial_epoch:
            self.started = time.monotonic()

    def on_train_batch_end(self, batch, logs=None):
        """Notes when the first step (graph building included) ended."""
        if not self.first_step_done:
            self.first_step_done = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        """After the first epoch: its seconds and the ETA of the rest."""
        if epoch != self.initial_epoch:
            return
        now = time.monotonic()
        took, left = now - self.started, self.epochs - epoch - 1
        steady = took
        if self.steps > 1 and self.first_step_done:
            steady = (now - self.first_step_done) * self.steps / (self.steps - 1)
        log.info("ETA: epoch %d took %s (its first step builds the graph); about %s more for the %d "
                 "epoch(s) left (less if it stops early)", epoch + 1, _duration(took),
                 _duration(steady * left), left)


def _duration(seconds: float) -> str:
    """``"42 s"``, ``"7 min"`` or ``"2 h 05 min"``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def _prepare_run_dir(config: TrainConfig, run_dir: Path, resume: bool):
    """The config and splits to train with; checks ``run_dir`` but creates nothing."""
    if resume:
        if not (run_dir / "config.json").exists() or not (run_dir / "splits.json").exists():
            raise UserError(f"{run_dir}: nothing to resume (no config.json and splits.json: it never "
                            "started training); drop --resume to start")
        try:
            return TrainConfig.load(run_dir / "config.json"), Splits.load(run_dir / "splits.json")
        except (ValueError, KeyError, TypeError) as error:
            raise UserError(f"{run_dir}: cannot resume, its config.json or splits.json is damaged "
                            f"({error}); start again with a new --out") from error
    if (run_dir / "checkpoints").exists():
        raise UserError(f"{run_dir} already holds a run; pass --resume to continue it or pick a new --out")
    return config, None


@contextmanager
def _run_dir_kept_only_if_it_trains(run_dir: Path, fresh: bool):
    """Creates ``run_dir``; a fresh run that fails before its first checkpoint removes what it wrote.

    After a checkpoint the folder is a resumable run and stays.  A folder the user
    already had keeps everything it held before.
    """
    existed = run_dir.exists()
    before = set(run_dir.iterdir()) if existed else set()
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        if fresh and not (run_dir / "checkpoints" / "state.json").exists():
            leftovers = [run_dir] if not existed else [p for p in run_dir.iterdir() if p not in before]
            for path in leftovers:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
        raise


def _fit(config: TrainConfig, run_dir: Path, data: RunData, labels, tokenizer, resume: bool, earlier=None,
         strategy=None):
    strategy = strategy or distribution_strategy()
    soft_train, soft_val = _teacher_soft_labels(config, data, labels)
    steps = steps_per_epoch(config, len(data.train))
    with strategy.scope():
        model, optimizer = _build_model(config, data, labels, tokenizer, steps)
    if earlier is not None and not resume:  # a resumed run restores its own checkpoint
        load_earlier_weights(model, earlier)
    fit_data, fit_train, fit_steps, train_ds, val_ds = _fit_inputs(
        model, config, data, labels, tokenizer, strategy, soft_train, soft_val)
    model(fit_data.train.images[:1])  # build the weights before restoring into them
    checkpoints = CheckpointAndStop(
        run_dir, config.patience, lambda: validation_score(model, fit_data.val, labels),
        # The cosine learning rate is down to 15 % of its peak by then; at half the
        # epochs (50 %) a 68-epoch Fashion-MNIST run stopped at epoch 38 (docs/training.md).
        min_epochs=(3 * config.epochs) // 4,
    )
    checkpoints.attach(model, optimizer)
    averaging = WeightAverage(run_dir, config.epochs - config.swa_epochs) if config.swa_epochs else None
    initial_epoch = checkpoints.restore() if resume else 0
    if averaging and resume:
        averaging.restore()
    if initial_epoch < config.epochs and not (resume and checkpoints.stopped_early):
        steps = fit_steps or steps  # a worker's shard (feature phase) may give one step fewer
        progress = ProgressBar(config.epochs, steps, initial_epoch, shown=strategy.extended.should_save_summary)
        # The average is taken before the checkpoint, so an epoch is never averaged twice.
        callbacks = [averaging, checkpoints, progress] if averaging else [checkpoints, progress]
        callbacks.append(EpochTimer(config.epochs, steps, initial_epoch))
        # Log lines (the ETA) go above the bar instead of being overwritten by its next redraw.
        with logging_redirect_tqdm():
            try:
                model.fit(fit_train, validation_data=val_ds, epochs=config.epochs, initial_epoch=initial_epoch,
                          steps_per_epoch=fit_steps, callbacks=callbacks, verbose=0)
            finally:  # a failed fit leaves the bar open, to be redrawn below the error at exit
                progress.bar.close()
    _keep_final_weights(model, checkpoints, averaging, train_ds, fit_data.val, labels)
    (run_dir / "history.json").write_text(json.dumps(checkpoints.state["history"], indent=1))
    if config.pretrained:
        model.use_features(False)
        if config.unfreeze and config.unfreeze_epochs:
            _fine_tune(model, config, data, labels, tokenizer, soft_train)
    return model


def _fit_inputs(model: FusedModel, config: TrainConfig, data: RunData, labels, tokenizer, strategy, soft_train,
                soft_val):
    """What the fit reads: ``(fit_data, train input, steps per epoch or None, train dataset, val dataset)``.

    A pretrained backbone is frozen: its feature maps are computed once, and the epochs
    train the head and the text tower on them (no pixel augmentation).  In a
    multi-worker job each worker then computes the feature maps of its own shard only
    and trains on it (:func:`sharded_training_data`); pixels are shared out by tf.data
    instead, batch by batch (:func:`shard_by_data`).  The train dataset is this
    worker's, for what reads batches outside the fit.
    """
    fit_data, fit_config = data, config
    multi_worker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
    shard = cluster_from_env().shard if multi_worker and config.pretrained else None
    if config.pretrained:
        fit_data, fit_config = feature_run_data(model, data, config, shard), replace(config, augment=False)
    if shard is not None and soft_train is not None:
        soft_train = soft_train[shard.items(len(soft_train))]
    val_ds = make_dataset(fit_data.val, labels, tokenizer, fit_config, training=False, soft_labels=soft_val)
    val_ds = shard_by_data(val_ds) if multi_worker else val_ds
    if shard is not None:  # this worker's own items, at its share of the global batch
        fit_train, fit_steps, train_ds = sharded_training_data(
            strategy, lambda batch: make_dataset(fit_data.train, labels, tokenizer, replace(fit_config, batch_size=batch),
                                                 training=True, soft_labels=soft_train),
            shard, len(data.train), config.batch_size)
        return fit_data, fit_train, fit_steps, train_ds, val_ds
    train_ds = make_dataset(fit_data.train, labels, tokenizer, fit_config, training=True, soft_labels=soft_train)
    return fit_data, (shard_by_data(train_ds) if multi_worker else train_ds), None, train_ds, val_ds


def _fine_tune(model: FusedModel, config: TrainConfig, data: RunData, labels, tokenizer, soft_train) -> None:
    """Fine-tunes the backbone's top ``config.unfreeze`` blocks on augmented pixels.

    A tenth of the learning rate, ``unfreeze_epochs`` epochs; the weights are kept
    only if validation improves, so fine-tuning never makes a run worse.
    """
    before = validation_score(model, data.val, labels)
    kept = model.get_weights()
    unfrozen = unfreeze_top_blocks(model.image_encoder, config.unfreeze)
    steps = steps_per_epoch(config, len(data.train))
    train_ds = make_dataset(data.train, labels, tokenizer, config, training=True, soft_labels=soft_train)
    schedule = keras.optimizers.schedules.CosineDecay(
        config.learning_rate * FINE_TUNE_RATE, config.unfreeze_epochs * steps)
    model.compile(optimizer=keras.optimizers.AdamW(schedule, weight_decay=config.weight_decay))
    log.info("fine-tuning the top %d backbone blocks (%d layers, batch norm frozen) for %d epochs",
             config.unfreeze, unfrozen, config.unfreeze_epochs)
    model.fit(train_ds, epochs=config.unfreeze_epochs, verbose=0,
              callbacks=[ProgressBar(config.unfreeze_epochs, steps, 0)])
    after = validation_score(model, data.val, labels)
    log.info("fine-tuning: validation score %.4f -> %.4f", before, after)
    if after < before:
        log.warning("fine-tuning lowered the validation score; keeping the frozen-backbone weights")
        model.set_weights(kept)


def _build_model(config: TrainConfig, data: RunData, labels: list[str], tokenizer, steps_per_epoch: int):
    """The compiled model and its optimizer, with on-the-fly teachers when the config asks."""
    model = FusedModel(
        config, tokenizer.vocab_size, tokenizer.encode_batch(labels),
        task=data.train.task, use_captions=data.train.has_captions, pretrained_weights=True,
    )
    if config.pretrained:
        model.use_features(True)  # before compiling: the frozen layers' variables are left out
    optimizer = keras.optimizers.AdamW(_schedule(config, steps_per_epoch), weight_decay=config.weight_decay)
    model.compile(optimizer=optimizer)
    if config.teachers and config.teacher_views == "augmented":
        model.augmented_view_teacher = TeacherEnsemble(config, data.train.task, labels)
    return model, optimizer


def _keep_final_weights(model: FusedModel, checkpoints: CheckpointAndStop, averaging, train_ds, val,
                        labels: list[str]) -> None:
    """Loads the weights the run keeps: the average with ``swa_epochs``, else the best epoch's."""
    if averaging and averaging.average is not None:
        averaging.apply(model, (batch["image"] for batch in train_ds.take(BATCH_NORM_BATCHES)))
        log.info("averaged weights: validation score %.4f", validation_score(model, val, labels))
    elif checkpoints.best_weights.exists():
        model.load_weights(str(checkpoints.best_weights))


def _teacher_soft_labels(config: TrainConfig, data: RunData, labels: list[str]):
    """The teachers' soft labels for the train and validation splits, or ``(None, None)``.

    With augmented views only validation is scored here; training batches are
    scored in the training step.
    """
    if not config.teachers:
        return None, None
    if config.teacher_views == "augmented":  # training batches are scored as they come
        soft_train, [soft_val] = None, teacher_soft_labels(
            config, data.train.task, labels, [data.val.images],
            lambda size: [_split_at(config, data, size).val.images])
    else:
        soft_train, soft_val = teacher_soft_labels(
            config, data.train.task, labels, [data.train.images, data.val.images],
            lambda size: [(split := _split_at(config, data, size)).train.images, split.val.images])
    log.info("distilling from %d teacher(s) on %s views; their top label is right on %.2f%% of validation",
             len(config.teachers), config.teacher_views, 100 * agreement(soft_val, data.val.multi_hot(labels)))
    return soft_train, soft_val


def _split_at(config: TrainConfig, data: RunData, size: int) -> RunData:
    """The run's items with the same splits, read at another input size (for a teacher)."""
    log.info("reading the data again at %d px for a teacher of that input size", size)
    return load_run_data(replace(config, image_size=size, backbone="tiny"), data.splits)


def validation_score(model: FusedModel, val, labels: list[str]) -> float:
    """The task metric on validation: top-1 for single-label data, else mAP."""
    scores = model.predict(val.images, batch_size=256, verbose=0)
    targets = val.multi_hot(labels)
    if val.task == "single":
        return top1_accuracy(scores, targets)
    return mean_average_precision(scores, targets)


def _schedule(config: TrainConfig, steps_per_epoch: int):
    """One warm-up epoch, then cosine decay to zero at the last epoch.

    With ``swa_epochs``, the decay ends at a tenth of the peak where averaging
    starts and stays there: the averaged epochs must still move the weights.
    """
    decay_epochs = config.epochs - config.swa_epochs
    return keras.optimizers.schedules.CosineDecay(
        0.0, max(1, (decay_epochs - 1) * steps_per_epoch), alpha=0.1 if config.swa_epochs else 0.0,
        warmup_target=config.learning_rate, warmup_steps=steps_per_epoch,
    )


def _save_run(run_dir: Path, model: FusedModel, labels: list[str], metrics: dict) -> None:
    model.image_encoder.save_weights(str(run_dir / "image_encoder.weights.h5"))
    model.text_encoder.save_weights(str(run_dir / "text_encoder.weights.h5"))
    scorer = {"logit_scale": model.logit_scale_value(), "logit_bias": float(model.logit_bias.numpy())}
    (run_dir / "scorer.json").write_text(json.dumps(scorer, indent=1))
    thresholds = [float(t) for t in metrics.pop("thresholds")]
    labels_doc = {"task": metrics["task"], "labels": labels, "thresholds": thresholds}
    (run_dir / "labels.json").write_text(json.dumps(labels_doc, indent=1))
    # metrics.json last: its presence marks a finished run.
    write_atomic(run_dir / "metrics.json", json.dumps(metrics, indent=1).encode())
