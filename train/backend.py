"""The one place the host side imports TensorFlow and Keras.

TensorFlow Model Optimization (pruning, QAT) works only with Keras 2, so
``TF_USE_LEGACY_KERAS=1`` must be set before TensorFlow is first imported and
every model is built with ``tf_keras``.  Import ``tf`` and ``keras`` from here.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# Hide the oneDNN and CUDA banners.  On a host with no NVIDIA device, TensorFlow's C++
# side also prints "failed call to cuInit: ... UNKNOWN ERROR (303)" as an error line,
# which reads like a fault; it only means "no GPU", so there level 3 hides it too
# (Python exceptions are not affected).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2" if os.path.exists("/dev/nvidiactl") else "3")

import tensorflow as tf
import tf_keras as keras
from absl import logging as _absl_logging

_absl_logging.set_verbosity(_absl_logging.WARNING)  # "Sharding callback duration" on every save

__all__ = ["keras", "tf"]
