"""Training on several replicas and several machines (TensorFlow's own engine).

* :func:`gather_replicas` - a tensor from every replica, concatenated, so the
  caption loss sees the global batch (each replica's negatives include every
  other replica's captions).
"""

from __future__ import annotations

from fuselite.train.backend import tf


def gather_replicas(x):
    """``x`` from every replica in sync, concatenated on axis 0 (replica order), else ``x``.

    Outside a replica context (a plain eager call) and with one replica there is
    nothing to gather.  The gradient of the gather sums the replicas' gradients
    and hands each replica its own slice, so a loss computed on the gathered batch
    and scaled by ``1 / replicas`` trains exactly as on one replica.
    """
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return x
    return context.all_gather(x, axis=0)
