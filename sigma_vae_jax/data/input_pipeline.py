"""Input pipeline: image datasets as uint8 arrays / tf.data streams for the VAE.

One entry point, `get_data_source(config.dataset)`, returns a `DataSource` for any of
`DATASETS` (`dataset_fields`):

* `synthetic_shapes` (the default; generated locally in seconds), `frey_face`: TFDS
  builders defined in `sigma_vae_jax.data.datasets`;
* `mnist`, `svhn` (`svhn_cropped`), `cifar10`, `celeba` (`celeb_a`), `bair`
  (`bair_robot_pushing_small`, frames of the 30-frame videos as images): TFDS;
* `numpy` (a `.npy`/`.npz` uint8 array) and `folder` (a folder of image files).

`DataSource.description()` is one line for the start of a run: the dataset, where it
is read from (or generated into), the train/test sizes and how a held-out test split
was made. A `DataSource` gives the whole split as uint8 [N, H, W, C] in host memory
(`load_split`, for `dataset.on_device=True`) or a deterministic, resumable, per-process
stream of uint8 batches (`batch_iterator`, tf.data). All host-side preprocessing (centre
crop, resize to `dataset.image_size`) happens here and keeps uint8; the one conversion
to float in [0, 1] is `to_float`, on device inside the jitted step.

Determinism: the shuffle order of epoch e is a function of (seed, e, process) only
(in-memory splits: of (seed, e), each process taking its rows of every global batch),
so `batch_iterator(..., start_batch=k)` yields exactly the batches k, k+1, ... of a
fresh iterator (a resumed run sees the batches an uninterrupted run would have seen).
In a repeated stream every epoch has `batches_per_epoch` full batches (the same on
every process); the examples left over are a different random few in each epoch.
Held-out test splits (numpy, folder, frey_face) are a fixed, seeded fraction
`dataset.test_fraction` of the examples, independent of the training seed.

Optional `config.dataset` fields read here (with their defaults when absent):
`center_crop` (None: square centre crop in pixels before resizing), `shuffle_buffer`
(10_000), `manual_dir` (None: TFDS's `<data_dir>/downloads/manual`), `download`
(True: frey_face may download its file), `clip_length` (12: frames per clip for
`DataSource.load_clips`, video datasets), `clip_selection` ("first": which clips of
each video, see `clips.clip_starts`), `bair_view` ("image_aux1": BAIR's camera).

This module picks the source; the others of `sigma_vae_jax.data` do the work:
`data_source` (the `DataSource` interface), `tfds_source` (TFDS builders streamed with
tf.data), `files` and `in_memory` (your own arrays and image folders, held in host
memory), `clips` (videos and clips), `preprocessing` (crop/resize, `to_float`),
`splits` (hold-out, shards, epoch seeds) and `dataset_fields` (names and defaults).
"""

from __future__ import annotations

if __name__ == "__main__":  # The command's old home: say where it is (before TensorFlow).
  raise SystemExit("ERROR: prepare datasets with `python -m sigma_vae_jax.data NAME...` "
                   "(see --help).")

# pylint: disable=g-import-not-at-top,wrong-import-position
import importlib

import tensorflow as tf

from sigma_vae_jax.data import dataset_fields
from sigma_vae_jax.data import files
from sigma_vae_jax.data import in_memory
from sigma_vae_jax.data import preprocessing
from sigma_vae_jax.data import tfds_source
from sigma_vae_jax.data.data_source import DataSource
from sigma_vae_jax.data.dataset_fields import DATASETS
# pylint: enable=g-import-not-at-top,wrong-import-position


def prepare_tensorflow() -> None:
  """Done once, when data is first read (never at import):

  * keeps TensorFlow (tf.data, image decoding) off the accelerators JAX owns;
  * registers this package's TFDS builders (`synthetic_shapes`, `frey_face`);
  * drops the TFDS log noise that our own use triggers
    (`tfds_source.drop_dtype_deprecation_logs`).
  """
  try:
    tf.config.experimental.set_visible_devices([], "GPU")
  except (RuntimeError, ValueError):  # TensorFlow already initialised its devices.
    pass
  importlib.import_module("sigma_vae_jax.data.datasets")  # Registers the builders.
  tfds_source.drop_dtype_deprecation_logs()


def get_data_source(dataset_config) -> DataSource:
  """The `DataSource` of `config.dataset`, preparing TFDS datasets on first use."""
  prepare_tensorflow()
  name = dataset_fields.get(dataset_config, "name", None)
  if name not in DATASETS:
    raise ValueError(f"Unknown `dataset.name`={name!r}; known datasets: "
                     f"{', '.join(DATASETS)}.")
  pre = preprocessing.Preprocess(
      center_crop=preprocessing.parse_size(
          dataset_fields.get(dataset_config, "center_crop", None), "center_crop"),
      image_size=preprocessing.parse_size(
          dataset_fields.get(dataset_config, "image_size", None), "image_size"))

  test_path = dataset_fields.get(dataset_config, "test_path", None)
  if test_path and name not in dataset_fields.OWN_DATA:
    raise ValueError(f"`dataset.test_path` is for your own data "
                     f"({', '.join(dataset_fields.OWN_DATA)}); "
                     f"dataset.name={name!r} has its own test split. Unset it.")
  if test_path:
    test_path = files.existing_path(test_path, "dataset.test_path")
  if name == "numpy":
    path = files.require_path(dataset_config, name)
    test = files.load_numpy_images(test_path, "dataset.test_path") if test_path else None
    return in_memory.holdout_source(name, files.load_numpy_images(path), dataset_config,
                                    pre, origin=f"file {path}", test=test,
                                    test_origin=f"{len(test):,} images in {test_path}"
                                    if test_path else "")
  if name == "numpy_videos":
    path = files.require_path(dataset_config, name)
    videos = files.load_numpy_videos(path)
    test = files.load_numpy_videos(test_path, "dataset.test_path") if test_path else None
    return in_memory.video_holdout_source(
        name, videos, dataset_config, pre,
        origin=f"{len(videos):,} videos of {videos.shape[1]} frames in {path}", test=test,
        test_origin=(f"{len(test):,} videos of {test.shape[1]} frames in {test_path}"
                     if test_path else ""))
  if name == "folder":
    path = files.require_path(dataset_config, name)
    images = files.load_image_folder(path)
    test = files.load_image_folder(test_path, "dataset.test_path") if test_path else None
    return in_memory.holdout_source(name, images, dataset_config, pre,
                                    origin=f"{len(images):,} image files found under "
                                    f"{path}", test=test,
                                    test_origin=(f"{len(test):,} image files found under "
                                                 f"{test_path}" if test_path else ""))

  return tfds_source.tfds_data_source(name, dataset_config, pre)
