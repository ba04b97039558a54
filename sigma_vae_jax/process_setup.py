"""What each command-line entry point sets up in its own process before it works
(never on import of the package): TensorFlow's start-up logging.

Imports only the standard library, so entry points call it before anything imports
TensorFlow.

* `set_tensorflow_env_defaults()`: TensorFlow's native start-up logging, set by each
  entry point before TensorFlow is imported.
"""

from __future__ import annotations

import os


def set_tensorflow_env_defaults() -> None:
  """TensorFlow's start-up logging for our entry points, unless the user set it first.

  Called by each command-line entry point before TensorFlow is imported (importing
  the package changes no environment variable):
  * `TF_CPP_MIN_LOG_LEVEL=1`: no C++ INFO lines (CPU-feature notice, tf.data buffer
    notes); warnings and errors still show;
  * `TF_ENABLE_ONEDNN_OPTS=0`: TensorFlow's oneDNN kernels off, and with them their
    start-up notice (the data pipeline runs no matmuls or convolutions).
  """
  for name, value in (("TF_CPP_MIN_LOG_LEVEL", "1"), ("TF_ENABLE_ONEDNN_OPTS", "0")):
    os.environ.setdefault(name, value)
