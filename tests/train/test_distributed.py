"""Multi-replica and multi-worker training (issue 35).

The strategies need their devices or cluster configured before TensorFlow starts,
so each test runs its TensorFlow part in a fresh Python process.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

# A dead worker must stop the job within this many seconds: the dead-peer check runs
# every 5 s (fuselite.train.distributed), a refused connection fails at once.
FAILURE_BOUND = 60

# Two logical CPU devices make a 2-replica MirroredStrategy on one CPU.
_GLOBAL_LOSS_SCRIPT = textwrap.dedent('''
    import numpy as np
    from fuselite.train.backend import tf
    from fuselite.train.model import global_pair_loss, sigmoid_pair_loss

    [cpu] = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    rng = np.random.default_rng(0)

    def unit(rows):
        x = rng.normal(size=(rows, 8)).astype("float32")
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    for sizes in ((4, 4), (3, 2)):  # a last, uneven batch too
        images, texts = unit(sum(sizes)), unit(sum(sizes))
        bounds = np.cumsum((0,) + sizes)
        parts = [(images[a:b], texts[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]

        @tf.function
        def step(image_emb, text_emb):
            with tf.GradientTape() as tape:
                tape.watch([image_emb, text_emb])
                # Scaled as FusedModel.train_step scales it: the replicas' gradients are summed.
                loss = global_pair_loss(image_emb, text_emb, 10.0, -5.0)
                scaled = loss / strategy.num_replicas_in_sync
            return loss, tape.gradient(scaled, [image_emb, text_emb])

        value = lambda context: parts[context.replica_id_in_sync_group]
        per_replica = strategy.experimental_distribute_values_from_function(value)
        losses, grads = strategy.run(step, args=per_replica)
        expected_image, expected_text = tf.constant(images), tf.constant(texts)
        with tf.GradientTape() as tape:
            tape.watch([expected_image, expected_text])
            expected = sigmoid_pair_loss(expected_image, expected_text, 10.0, -5.0)
        expected_grads = tape.gradient(expected, [expected_image, expected_text])
        for loss in strategy.experimental_local_results(losses):
            np.testing.assert_allclose(loss.numpy(), expected.numpy(), rtol=1e-5)
        for grad, want in zip(grads, expected_grads):
            got = np.concatenate([g.numpy() for g in strategy.experimental_local_results(grad)])
            np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-6)
        # The loss a replica sees without the gather (its own captions only) differs.
        alone = sigmoid_pair_loss(parts[0][0], parts[0][1], 10.0, -5.0)
        assert abs(float(alone) - float(expected)) > 1e-3, (float(alone), float(expected))
    print("OK")
''')


def _run_python(script: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Runs ``script`` in a fresh interpreter; fails the test with its output if it fails."""
    done = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


def test_caption_loss_over_two_replicas_equals_one_replica_on_the_concatenated_batch():
    """With 2 replicas, each sees the loss (and, summed, the gradients) of the whole batch."""
    assert _run_python(_GLOBAL_LOSS_SCRIPT).stdout.strip().endswith("OK")


def _free_port() -> int:
    """A port on 127.0.0.1 nobody listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start_workers(out: Path, scratch: Path, epochs: int, resume: bool = False, extra: tuple[str, ...] = (),
                   env: dict | None = None) -> list[subprocess.Popen]:
    """Two ``fuselite train`` workers on 127.0.0.1; their temporary folders go under ``scratch``."""
    workers = ",".join(f"127.0.0.1:{_free_port()}" for _ in range(2))
    env = {**os.environ, **(env or {}), "TMPDIR": str(scratch)}
    env.pop("TF_CONFIG", None)
    argv = [sys.executable, "-c", "from fuselite.cli import main; raise SystemExit(main())", "train", "--config", "scenes-tiny", "--epochs", str(epochs),
            "--out", str(out), "--workers", workers, *(["--resume"] if resume else []), *extra]
    return [subprocess.Popen([*argv, "--worker-index", str(i)], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for i in range(2)]


def _wait_for(path: Path, processes: list[subprocess.Popen], timeout: float) -> None:
    """Waits until ``path`` exists (fails early if a worker exits)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"no {path} after {timeout} s"
        assert all(p.poll() is None for p in processes), [p.communicate() for p in processes]
        time.sleep(0.2)


def _chance_map(run_dir: Path) -> float:
    """The test split's mAP of a scorer that knows nothing: the mean share of positives per label."""
    from fuselite.data.dataset import Splits
    from fuselite.data.sources import load_run_data
    from fuselite.train.configs import get_config

    labels = json.loads((run_dir / "labels.json").read_text())["labels"]
    test = load_run_data(get_config("scenes-tiny"), Splits.load(run_dir / "splits.json")).test
    targets = test.multi_hot(labels)
    return float(targets.mean(axis=0)[targets.sum(axis=0) > 0].mean())


@pytest.mark.slow
def test_two_workers_learn_a_killed_worker_stops_the_job_and_resume_finishes(tmp_path: Path):
    """2 local workers: kill -9 one after the first checkpoint, the chief fails fast; both resume."""
    out, scratch, epochs = tmp_path / "run", tmp_path / "scratch", 8
    scratch.mkdir()
    chief, other = _start_workers(out, scratch, epochs)
    try:
        _wait_for(out / "checkpoints" / "state.json", [chief, other], timeout=150)
        other.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        _, error = chief.communicate(timeout=FAILURE_BOUND)
    finally:
        for process in (chief, other):
            process.kill()
            process.communicate()
    assert time.monotonic() - killed < FAILURE_BOUND
    assert chief.returncode == 2, error[-3000:]
    last = error.strip().splitlines()[-1]
    assert "the job stopped, another worker stopped answering" in last and "--resume" in last, last
    assert "Traceback" not in error

    resumed = _start_workers(out, scratch, epochs, resume=True)
    (report, error), (worker_report, worker_error) = (p.communicate(timeout=240) for p in resumed)
    assert [p.returncode for p in resumed] == [0, 0], error[-3000:] + worker_error[-3000:]
    # The chief reports; the other worker shows no progress bar, no log block, no metrics.
    assert "run written to" in report and "mAP" in report and "train:" in error
    assert "worker 1 of 2: done" in worker_report and "mAP" not in worker_report
    assert "train:" not in worker_error and "resuming after epoch" not in worker_error
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == list(range(1, epochs + 1))  # every epoch once, across the kill
    # One run directory, written by the chief; the resumed worker removed its temporary folder
    # (the killed one could not: one at most is left).
    assert (out / "metrics.json").exists() and (out / "image_encoder.weights.h5").exists()
    assert len(list(scratch.glob("fuselite-worker1-*"))) <= 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "scratch"]
    chance = _chance_map(out)
    mean_ap = json.loads((out / "metrics.json").read_text())["mAP"]
    assert mean_ap > max(2 * chance, chance + 0.15), (mean_ap, chance)


def _tf_config(cluster: dict, kind: str, index: int) -> dict:
    return {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": kind, "index": index}})}


def test_tf_config_names_the_chief_as_tensorflow_does():
    """The ``chief`` task when there is one, else worker 0; one task alone is a one-machine run."""
    from fuselite.train.distributed import cluster_from_env

    two = {"worker": ["a:1", "b:2"]}
    assert cluster_from_env(_tf_config(two, "worker", 0)).is_chief
    assert not cluster_from_env(_tf_config(two, "worker", 1)).is_chief
    with_chief = {"chief": ["c:0"], "worker": ["a:1", "b:2"]}
    assert cluster_from_env(_tf_config(with_chief, "chief", 0)).is_chief
    assert cluster_from_env(_tf_config(with_chief, "worker", 0)).index == 1
    assert cluster_from_env(_tf_config(with_chief, "worker", 1)).workers == 3
    assert cluster_from_env(_tf_config({"worker": ["a:1"]}, "worker", 0)) is None
    assert cluster_from_env({}) is None


@pytest.mark.parametrize("environ, expected", [
    ({"TF_CONFIG": "{not json"}, "TF_CONFIG is not a multi-worker config"),
    (_tf_config({"worker": ["a:1", "b:2"]}, "ps", 0), "no parameter servers"),
    (_tf_config({"worker": ["a:1", "b:2"]}, "worker", 2), "the cluster has 2 worker task(s)"),
])
def test_a_bad_tf_config_is_one_clear_line(environ, expected):
    """What is wrong with TF_CONFIG, as a UserError (the CLI prints one line, exit 2)."""
    from fuselite.errors import UserError
    from fuselite.train.distributed import cluster_from_env

    with pytest.raises(UserError, match=re.escape(expected)):
        cluster_from_env(environ)


@pytest.mark.parametrize("argv, expected", [
    (["--workers", "127.0.0.1:5000,127.0.0.1:5001"], "--workers needs --worker-index"),
    (["--worker-index", "1"], "--worker-index needs --workers"),
    (["--workers", "127.0.0.1:5000,127.0.0.1:5001", "--worker-index", "2"], "so it is 0 to 1"),
    (["--workers", "127.0.0.1,127.0.0.1:5001", "--worker-index", "0"], "is not host:port"),
    (["--workers", "h:1,h:1", "--worker-index", "0"], "lists an address twice"),
])
def test_worker_flag_mistakes_exit_2_with_one_line(argv, expected, tmp_path: Path, capsys):
    """``--workers`` and ``--worker-index`` are checked before TensorFlow loads."""
    from fuselite.cli import main

    assert main(["train", "--config", "scenes-tiny", "--out", str(tmp_path / "run"), *argv]) == 2
    error = capsys.readouterr().err.strip()
    assert expected in error and len(error.splitlines()) == 1, error
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_two_workers_each_cache_the_backbone_features_of_their_own_shard(tmp_path: Path):
    """A frozen backbone (random weights, no download): each worker computes half the training features."""
    out, scratch, cache = tmp_path / "run", tmp_path / "scratch", tmp_path / "cache"
    scratch.mkdir()
    backbone = ("--backbone", "efficientnet-lite0", "--backbone-weights", "none", "--image-size", "160")
    workers = _start_workers(out, scratch, 2, extra=backbone, env={"FUSELITE_CACHE_DIR": str(cache)})
    try:
        outputs = [p.communicate(timeout=400) for p in workers]
    finally:
        for process in workers:
            process.kill()
    assert [p.returncode for p in workers] == [0, 0], outputs[0][1][-3000:] + outputs[1][1][-3000:]
    train_items = json.loads((out / "metrics.json").read_text())["train_items"]
    shards = [sorted((cache / "features").glob(f"*-shard{i}of2.npy")) for i in range(2)]
    assert [len(files) for files in shards] == [1, 1], sorted(p.name for p in (cache / "features").iterdir())
    sizes = [len(np.load(files[0], mmap_mode="r")) for files in shards]
    assert sizes == [(train_items + 1) // 2, train_items // 2]
    assert len(json.loads((out / "history.json").read_text())) == 2
