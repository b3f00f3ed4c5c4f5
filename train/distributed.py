"""Training on several replicas and several machines, on TensorFlow's own engine.

* :func:`gather_replicas` - a tensor from every replica, concatenated, so the
  caption loss sees the global batch (each replica's negatives include every
  other replica's captions).
* :func:`cluster_from_env` - this process's place in a multi-worker job, read from
  ``TF_CONFIG`` (what Kubernetes operators and Ray's TensorflowTrainer set);
  :func:`tf_config_for` writes one from ``--workers`` and ``--worker-index``.
* :func:`multi_worker_strategy` - ``tf.distribute.MultiWorkerMirroredStrategy``
  with a bounded wait for the other workers and a quick dead-peer check.
* :class:`Shard` - the items one worker owns (``index % workers == worker``): the
  frozen-feature phase computes and caches a pretrained backbone's feature maps of
  its own shard only, and :func:`sharded_training_data` trains each worker on them.
* :func:`worker_run_dir` - where this worker writes: the chief writes the run
  directory; the others write to a temporary folder that is removed afterwards,
  as TensorFlow's multi-worker guide prescribes (every worker must save, since
  saving reads variables collectively, but only one copy is kept).

TensorFlow is imported only inside the functions that need it, so the CLI can
check the cluster before TensorFlow loads.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fuselite.errors import UserError

log = logging.getLogger(__name__)

# How long a worker waits for the others to start: Pods of a Kubernetes Job can be
# scheduled minutes apart (image pulls).
WAIT_FOR_WORKERS_SECONDS = 900
# Dead-peer check (TensorFlow's own, normally every 30 s): every HEALTH_INTERVAL
# seconds each worker pings the others, HEALTH_RETRIES times at most HEALTH_TIMEOUT
# seconds each, then aborts the collectives.  A dead worker therefore stops the job
# within about 5 + 3 * 5 = 20 s, not at TensorFlow's 30 + 3 * 10 = 60 s.
HEALTH_INTERVAL = 5
HEALTH_TIMEOUT = 5
HEALTH_RETRIES = 3
# The files a non-chief worker copies from the chief's run directory for --resume.
RESUME_FILES = ("config.json", "splits.json", "checkpoints")


@dataclass(frozen=True)
class Cluster:
    """This process's place in a multi-worker job.

    Attributes:
        workers: Tasks that train (a ``chief`` task, if any, and the ``worker`` tasks).
        index: This task's rank among them; 0 is the chief.
        task: The task as TF_CONFIG names it, e.g. ``"worker 1"``.
    """

    workers: int
    index: int
    task: str

    @property
    def is_chief(self) -> bool:
        """True for the one task that writes the run directory and the logs."""
        return self.index == 0

    @property
    def shard(self) -> Shard:
        """The items this worker owns."""
        return Shard(index=self.index, workers=self.workers)


@dataclass(frozen=True)
class Shard:
    """One worker's share of a split: the items whose position ``% workers == index``.

    Interleaved rather than contiguous, so every shard draws from the whole split
    (a split ordered by source or label still gives each worker a bit of everything),
    and the shards of any split size differ by at most one item.

    Attributes:
        index: This worker's rank, 0 to ``workers - 1``.
        workers: How many workers share the split.
    """

    index: int
    workers: int

    def items(self, count: int) -> np.ndarray:
        """The positions, among ``count`` items, that this worker owns."""
        return np.arange(self.index, count, self.workers, dtype=np.int64)

    @property
    def name(self) -> str:
        """``"shard1of2"``: names this worker's files (feature caches) apart from other shardings."""
        return f"shard{self.index}of{self.workers}"


def cluster_from_env(environ: Mapping[str, str] = os.environ) -> Cluster | None:
    """The multi-worker job ``TF_CONFIG`` describes, or None to train on this machine alone.

    The chief is the ``chief`` task when the cluster has one, else ``worker`` 0
    (TensorFlow's rule).  A TF_CONFIG of a single task is a one-machine run.
    """
    text = environ.get("TF_CONFIG", "").strip()
    if not text:
        return None
    try:
        spec = json.loads(text)
        jobs, task = spec["cluster"], spec["task"]
        kind, index = str(task["type"]), int(task["index"])
        chiefs, workers = list(jobs.get("chief", [])), list(jobs.get("worker", []))
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise UserError(f"TF_CONFIG is not a multi-worker config ({error!r}); expected "
                        '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", '
                        '"index": 0}} (docs/distributed.md)') from None
    tasks = {"chief": chiefs, "worker": workers}
    if kind not in tasks:
        raise UserError(f"TF_CONFIG task type {kind!r}: fuselite train runs as a 'chief' or a 'worker' "
                        "(no parameter servers or evaluators)")
    if not 0 <= index < len(tasks[kind]):
        raise UserError(f"TF_CONFIG task index {index}: the cluster has {len(tasks[kind])} {kind} task(s)")
    if len(chiefs) > 1:
        raise UserError(f"TF_CONFIG lists {len(chiefs)} chief tasks; a job has at most one")
    total = len(chiefs) + len(workers)
    if total == 1:
        return None
    rank = index if kind == "chief" else len(chiefs) + index
    return Cluster(workers=total, index=rank, task=f"{kind} {index}")


def tf_config_for(workers: str, index: int) -> str:
    """The TF_CONFIG of worker ``index`` of ``workers`` (``"host:port,host:port"``); worker 0 is the chief."""
    addresses = [address.strip() for address in workers.split(",") if address.strip()]
    for address in addresses:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise UserError(f"--workers: {address!r} is not host:port (e.g. 10.0.0.5:2222)")
    if len(set(addresses)) != len(addresses):
        raise UserError("--workers lists an address twice; each worker needs its own host:port")
    if not 0 <= index < len(addresses):
        raise UserError(f"--worker-index {index}: --workers lists {len(addresses)} worker(s), "
                        f"so it is 0 to {len(addresses) - 1}")
    return json.dumps({"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}})


def multi_worker_strategy(cluster: Cluster):
    """``MultiWorkerMirroredStrategy`` for this process; waits until every worker has joined.

    Must run before any other TensorFlow op (collectives are configured at startup).
    """
    from tensorflow.python.distribute import collective_all_reduce_strategy as collective

    from fuselite.train.backend import tf

    # TensorFlow's dead-peer check has no public setting; these class attributes are
    # read when the strategy starts and on every check.
    extended = collective.CollectiveAllReduceExtended
    extended._check_health_initial_timeout = WAIT_FOR_WORKERS_SECONDS
    extended._check_health_interval = HEALTH_INTERVAL
    extended._check_health_timeout = HEALTH_TIMEOUT
    extended._check_health_retry_limit = HEALTH_RETRIES
    log.info("%s of %d workers: waiting for the others (up to %d s)", cluster.task, cluster.workers,
             WAIT_FOR_WORKERS_SECONDS)
    try:
        return tf.distribute.MultiWorkerMirroredStrategy()
    except RuntimeError as error:
        if "Timeout waiting for the cluster" not in str(error):
            raise
        raise UserError(f"{cluster.task}: not every worker joined within {WAIT_FOR_WORKERS_SECONDS} s; "
                        "start fuselite train on every address of the cluster") from None


@contextmanager
def worker_run_dir(run_dir: Path, cluster: Cluster, resume: bool) -> Iterator[Path]:
    """The folder this worker writes: ``run_dir`` for the chief, else a temporary folder.

    On ``resume``, a non-chief worker first copies the chief's config, splits and
    checkpoints, so every worker restores the same state; ``run_dir`` must then be
    readable on every machine (shared storage).  The temporary folder is removed
    when training ends, however it ends.
    """
    if cluster.is_chief:
        yield run_dir
        return
    scratch = Path(tempfile.mkdtemp(prefix=f"fuselite-worker{cluster.index}-"))
    try:
        if resume:
            _copy_for_resume(run_dir, scratch, cluster)
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _copy_for_resume(run_dir: Path, scratch: Path, cluster: Cluster) -> None:
    """Copies what a resume reads from the chief's ``run_dir`` into ``scratch``."""
    missing = [name for name in RESUME_FILES if not (run_dir / name).exists()]
    if missing:
        raise UserError(f"{cluster.task}: --resume reads the chief's run directory, and {run_dir} has no "
                        f"{', '.join(missing)} here; put --out on storage every worker mounts")
    for name in RESUME_FILES:
        source = run_dir / name
        if source.is_dir():
            shutil.copytree(source, scratch / name)
        else:
            shutil.copy2(source, scratch / name)


@contextmanager
def chief_output(cluster: Cluster) -> Iterator[None]:
    """On a non-chief worker: only warnings in the log (the chief reports).

    The progress bar follows ``strategy.extended.should_save_summary`` (see the trainer).
    """
    if cluster.is_chief:
        yield
        return
    logger = logging.getLogger("fuselite")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextmanager
def quiet_collectives() -> Iterator[None]:
    """Hides TensorFlow's INFO line for every collective it builds ("Collective all_reduce tensors")."""
    logger = logging.getLogger("tensorflow")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


def shard_by_data(dataset):
    """``dataset`` split across workers element by element (in-memory arrays have no files to split)."""
    from fuselite.train.backend import tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def gather_replicas(x):
    """``x`` from every replica in sync, concatenated on axis 0 (replica order), else ``x``.

    Outside a replica context (a plain eager call) and with one replica there is
    nothing to gather.  The gradient of the gather sums the replicas' gradients
    and hands each replica its own slice, so a loss computed on the gathered batch
    and scaled by ``1 / replicas`` trains exactly as on one replica.
    """
    from fuselite.train.backend import tf

    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return x
    return context.all_gather(x, axis=0)


def sharded_training_data(strategy, make_shard_dataset, shard: Shard, items: int, batch_size: int):
    """The training input of the frozen-feature phase when each worker holds only its shard.

    ``make_shard_dataset(replica_batch)`` builds this worker's tf.data pipeline over its
    own items, in batches of one replica.  Each step every replica takes
    ``batch_size // replicas`` items (the global batch, as with tf.data's ``DATA``
    sharding), and every worker runs the same number of steps, which the smallest
    shard allows: a worker that ran one step more than the others would wait for
    them for ever.

    Returns:
        ``(distributed dataset, steps per epoch, per-worker dataset)``; the last one
        for what reads training batches outside the fit (batch-norm re-estimation).
    """
    replicas = strategy.num_replicas_in_sync
    per_replica = max(1, batch_size // replicas)
    per_worker = per_replica * max(1, replicas // shard.workers)  # several GPUs on a worker
    steps = max(1, (items // shard.workers) // per_worker)
    local = make_shard_dataset(per_replica)
    # Built by this worker from its own items: no auto-sharding on top.  Repeated, so
    # the epochs are cut at ``steps`` and never run dry.
    distributed = strategy.distribute_datasets_from_function(lambda _context: local.repeat())
    return distributed, steps, local
