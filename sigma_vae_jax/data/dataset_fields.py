"""The `config.dataset` fields the data package reads: allowed values and defaults.

`DATASETS` (the values of `dataset.name`), `BAIR_VIEWS` (`dataset.bair_view`),
`CLIP_SELECTIONS` (`dataset.clip_selection`), the defaults of the optional fields, and
`get(cfg, key, default)`, which reads one field from a ConfigDict, a dict or an object.

Imports only the standard library: `python -m sigma_vae_jax.data` lists `DATASETS` in
its --help before TensorFlow is imported.
"""

from __future__ import annotations

from typing import Any

DATASETS: tuple[str, ...] = (
    "synthetic_shapes", "numpy", "folder", "mnist", "svhn", "cifar10", "celeba",
    "frey_face", "bair", "numpy_videos")
# Datasets read from dataset.path, which may take their test split from dataset.test_path.
OWN_DATA = ("numpy", "folder", "numpy_videos")

DEFAULT_SHUFFLE_BUFFER = 10_000
DEFAULT_CLIP_LENGTH = 12
# BAIR's two cameras (TFDS feature names); the first is the SVG reference's.
BAIR_VIEWS: tuple[str, ...] = ("image_aux1", "image_main")
# Which clips of clip_length frames a video gives (`clips.clip_starts`): "first", the
# first clip_length frames only (the SVG reference's `data/bair.py`: every training
# example starts at its episode's start), or "windows", every non-overlapping window.
CLIP_SELECTIONS: tuple[str, ...] = ("first", "windows")
DEFAULT_CLIP_SELECTION = "first"


def get(cfg: Any, key: str, default=None):
  """cfg.key for ConfigDicts, dicts and plain objects; `default` when absent or None."""
  try:
    value = cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)
  except (AttributeError, KeyError):
    value = default
  return default if value is None else value
