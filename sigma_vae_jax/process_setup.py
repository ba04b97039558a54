"""What each command-line entry point sets up in its own process before it works
(never on import of the package): TensorFlow's start-up logging and filters for known,
harmless third-party log records.

Imports only the standard library, so entry points call it before anything imports
TensorFlow.

* `set_tensorflow_env_defaults()`: TensorFlow's native start-up logging, set by each
  entry point before TensorFlow is imported.
* `quiet_third_party_logs()`: drops known, harmless third-party log records (NOISE)
  that a user can do nothing about.
"""

from __future__ import annotations

import logging as py_logging
import os

# (logger name, substring) of harmless records we drop. Each is something our own code
# triggers inside a library and a user cannot act on.
NOISE = (
    # TFDS's PartialDecoding (input_pipeline._TfdsBackend) reads FeatureConnector.dtype.
    ("absl", "`FeatureConnector.dtype` is deprecated"),
)


class _DropNoise(py_logging.Filter):
  """Drops records whose message contains one of the given substrings."""

  def __init__(self, substrings):
    super().__init__()
    self.substrings = tuple(substrings)

  def filter(self, record):
    try:
      message = record.getMessage()
    except Exception:  # pylint: disable=broad-except
      return True
    return not any(s in message for s in self.substrings)


def quiet_third_party_logs() -> None:
  """Installs (once) the filters of NOISE on their loggers; idempotent."""
  by_logger = {}
  for logger_name, substring in NOISE:
    by_logger.setdefault(logger_name, []).append(substring)
  for logger_name, substrings in by_logger.items():
    logger = py_logging.getLogger(logger_name)
    if not any(isinstance(f, _DropNoise) for f in logger.filters):
      logger.addFilter(_DropNoise(substrings))


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
