"""Multi-replica and multi-worker training (issue 35).

The strategies need their devices or cluster configured before TensorFlow starts,
so each test runs its TensorFlow part in a fresh Python process.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

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
