"""Input pipeline: image datasets as uint8 arrays / tf.data streams for the VAE.

One entry point, `get_data_source(config.dataset)`, returns a `DataSource` for any of
`DATASETS`:

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
each video, see `clip_starts`), `bair_view` ("image_aux1": BAIR's camera).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import zipfile
from typing import Any, Iterator, Sequence

DATASETS: tuple[str, ...] = (
    "synthetic_shapes", "numpy", "folder", "mnist", "svhn", "cifar10", "celeba",
    "frey_face", "bair", "numpy_videos")


def _argument_parser() -> argparse.ArgumentParser:
  """The command line of `python -m sigma_vae_jax.data.input_pipeline` (see `main`)."""
  parser = argparse.ArgumentParser(
      prog="python -m sigma_vae_jax.data.input_pipeline",
      description="Download and prepare datasets ahead of training (TFDS datasets into "
                  "--data_dir; numpy/folder files are checked and their split shown), "
                  "e.g. on a machine with network access.")
  parser.add_argument("names", nargs="+", choices=DATASETS, metavar="NAME",
                      help=f"one or more of: {', '.join(DATASETS)}")
  parser.add_argument("--data_dir", default=None,
                      help="TFDS data_dir (dataset.data_dir; default ~/tensorflow_datasets)")
  parser.add_argument("--manual_dir", default=None,
                      help="folder of manually downloaded files (dataset.manual_dir)")
  parser.add_argument("--path", default="",
                      help="dataset.path (numpy, folder, numpy_videos)")
  return parser


if __name__ == "__main__":
  # `python -m sigma_vae_jax.data.input_pipeline`: answer --help and usage errors before
  # the imports below (TensorFlow takes seconds).
  _argument_parser().parse_args()
  from sigma_vae_jax import cli as _cli  # pylint: disable=g-import-not-at-top
  _cli.set_tensorflow_env_defaults()  # before anything imports TensorFlow
  _cli.require_train_extra()

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from sigma_vae_jax import cli
# pylint: enable=g-import-not-at-top,wrong-import-position


def prepare_tensorflow() -> None:
  """Done once, when data is first read (never at import):

  * keeps TensorFlow (tf.data, image decoding) off the accelerators JAX owns;
  * registers this package's TFDS builders (`synthetic_shapes`, `frey_face`);
  * drops TFDS's log noise that our own use triggers (`cli.NOISE`).
  """
  try:
    tf.config.experimental.set_visible_devices([], "GPU")
  except (RuntimeError, ValueError):  # TensorFlow already initialised its devices.
    pass
  importlib.import_module("sigma_vae_jax.data.datasets")  # Registers the builders.
  cli.quiet_third_party_logs()


# Seed of the held-out test split of datasets without one (fixed: the test set must not
# change with the training seed).
HOLDOUT_SEED = 0
DEFAULT_SHUFFLE_BUFFER = 10_000
DEFAULT_CLIP_LENGTH = 12
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_LOAD_BATCH = 1024
_SPLITS = ("train", "test")
# Datasets read from dataset.path, which may take their test split from dataset.test_path.
_OWN_DATA = ("numpy", "folder", "numpy_videos")


@dataclasses.dataclass(frozen=True)
class _TfdsSpec:
  """How a name in DATASETS maps onto a TFDS builder."""
  tfds_name: str
  image_key: str
  splits: dict[str, str] | None  # Our split -> TFDS split; None: seeded hold-out.
  video: bool = False  # Examples are videos [T, H, W, C]; the model sees frames.
  local: bool = False  # Builder of this package (no GCS look-up).


_TFDS_SPECS: dict[str, _TfdsSpec] = {
    "synthetic_shapes": _TfdsSpec("synthetic_shapes", "image",
                                  {"train": "train", "test": "test"}, local=True),
    "mnist": _TfdsSpec("mnist", "image", {"train": "train", "test": "test"}),
    "svhn": _TfdsSpec("svhn_cropped", "image", {"train": "train", "test": "test"}),
    "cifar10": _TfdsSpec("cifar10", "image", {"train": "train", "test": "test"}),
    "celeba": _TfdsSpec("celeb_a", "image", {"train": "train", "test": "test"}),
    "frey_face": _TfdsSpec("frey_face", "image", None, local=True),
    # The camera the SVG reference reads (`data/convert_bair.py`: '<t>/image_aux1/encoded');
    # `dataset.bair_view` picks the other one.
    "bair": _TfdsSpec("bair_robot_pushing_small", "image_aux1",
                      {"train": "train", "test": "test"}, video=True),
}
# BAIR's two cameras (TFDS feature names); the first is the SVG reference's.
BAIR_VIEWS: tuple[str, ...] = ("image_aux1", "image_main")
# Which clips of clip_length frames a video gives (`clip_starts`): "first", the first
# clip_length frames only (the SVG reference's `data/bair.py`: every training example
# starts at its episode's start), or "windows", every non-overlapping window.
CLIP_SELECTIONS: tuple[str, ...] = ("first", "windows")
DEFAULT_CLIP_SELECTION = "first"


# ----------------------------------------------------------------------------------
# Host/device helpers.
# ----------------------------------------------------------------------------------


def to_float(images: jax.Array) -> jax.Array:
  """uint8 [..., H, W, C] -> float32 in [0, 1]: the one place of this conversion."""
  return jnp.asarray(images).astype(jnp.float32) / 255.0


def check_images(images: np.ndarray, *, expected_shape=None) -> None:
  """Host-side check: uint8 [N, H, W, C] (and, if given, of `expected_shape`).

  `expected_shape`: (H, W, C) of one image, or (N, H, W, C); None entries match any.
  """
  images = np.asarray(images) if not hasattr(images, "dtype") else images
  clips = expected_shape is not None and len(tuple(expected_shape)) == 4
  form = "uint8 images of shape [N, H, W, C]"
  if clips:
    form = f"uint8 clips of shape [N, {', '.join(map(str, tuple(expected_shape)))}]"
  elif expected_shape is not None:
    form = f"uint8 images of shape [N, {', '.join(map(str, tuple(expected_shape)[-3:]))}]"
  if images.dtype != np.uint8:
    raise ValueError(f"Expected {form}; got dtype {images.dtype}.")
  if images.ndim != (5 if clips else 4):
    raise ValueError(f"Expected {form}; got an array of shape {tuple(images.shape)} "
                     f"(ndim {images.ndim}).")
  if expected_shape is not None:
    expected = tuple(expected_shape)
    actual = tuple(images.shape)[-len(expected):]
    if len(expected) not in (3, 4) or any(
        e is not None and e != a for e, a in zip(expected, actual)):
      raise ValueError(f"Expected {form}; got shape {tuple(images.shape)}.")


def clip_starts(num_frames: int, clip_length: int, selection: str = "windows", *,
                stride: int | None = None) -> np.ndarray:
  """First frame of each clip of `clip_length` consecutive frames of a video of
  `num_frames` frames, int [K] in video order: the one rule every clip path uses.

  selection "first": [0] (the SVG reference trains on frames 0..L-1 of each video; the
  data sources' default, `dataset.clip_selection`); "windows": 0, s, 2s, ... while the
  clip fits, s = `stride` (default L: non-overlapping).
  """
  if selection not in CLIP_SELECTIONS:
    raise ValueError(f"`dataset.clip_selection`={selection!r} must be one of "
                     f"{', '.join(CLIP_SELECTIONS)}.")
  stride = clip_length if stride is None else int(stride)
  if not 1 <= clip_length <= num_frames or stride < 1:
    raise ValueError(f"`dataset.clip_length`={clip_length} (stride {stride}) must be in "
                     f"[1, {num_frames}] (frames per video).")
  if selection == "first":
    return np.zeros(1, np.int64)
  return np.arange(0, num_frames - clip_length + 1, stride)


def extract_clips(videos: np.ndarray, clip_length: int, *, stride: int | None = None,
                  selection: str = "windows") -> np.ndarray:
  """Consecutive-frame clips: [N, T, H, W, C] (or [T, H, W, C]) -> [N*K, L, H, W, C].

  The K clips of each video start at `clip_starts(T, L, selection, stride=stride)`
  (default: every non-overlapping window), videos in order, each video's clips in order.
  """
  videos = np.asarray(videos)
  if videos.ndim == 4:
    videos = videos[None]
  if videos.ndim != 5:
    raise ValueError(f"Expected videos [N, T, H, W, C]; got shape {videos.shape}.")
  starts = clip_starts(videos.shape[1], clip_length, selection, stride=stride)
  idx = starts[:, None] + np.arange(clip_length)[None, :]  # [K, L]
  clips = videos[:, idx]  # [N, K, L, H, W, C]
  return clips.reshape((-1, clip_length) + videos.shape[2:])


def clips_dataset(videos: tf.data.Dataset, clip_length: int, *, stride: int | None = None,
                  selection: str = "windows", num_frames: int) -> tf.data.Dataset:
  """tf.data version of `extract_clips`: a dataset of videos [T, ...] (T = num_frames)
  -> clips [L, ...], the same clips in the same order."""
  starts = clip_starts(num_frames, clip_length, selection, stride=stride)
  idx = tf.constant(starts[:, None] + np.arange(clip_length)[None, :], tf.int32)  # [K, L]
  return videos.flat_map(lambda video: tf.data.Dataset.from_tensor_slices(
      tf.gather(video, idx)))


# ----------------------------------------------------------------------------------
# Config parsing.
# ----------------------------------------------------------------------------------


def _get(cfg: Any, key: str, default=None):
  """cfg.key for ConfigDicts, dicts and plain objects; `default` when absent or None."""
  try:
    value = cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)
  except (AttributeError, KeyError):
    value = default
  return default if value is None else value


def _parse_size(value, field: str) -> tuple[int, int] | None:
  """None, an int (square) or an (H, W) pair -> (H, W) of positive ints."""
  if value is None:
    return None
  if isinstance(value, (int, np.integer)):
    value = (value, value)
  try:
    h, w = (int(v) for v in value)
  except (TypeError, ValueError):
    raise ValueError(f"`dataset.{field}` must be None, an int or an (height, width) pair; "
                     f"got {value!r}.") from None
  if h <= 0 or w <= 0:
    raise ValueError(f"`dataset.{field}` must be positive; got {value!r}.")
  return (h, w)


@dataclasses.dataclass(frozen=True)
class _Preprocess:
  """Host-side preprocessing of uint8 images: centre crop, then resize (uint8 out)."""
  center_crop: tuple[int, int] | None = None
  image_size: tuple[int, int] | None = None

  def output_shape(self, native: Sequence[int]) -> tuple[int, int, int]:
    h, w, c = (int(x) for x in native)
    if self.center_crop is not None:
      ch, cw = self.center_crop
      if ch > h or cw > w:
        raise ValueError(f"`dataset.center_crop`={self.center_crop} is larger than the "
                         f"images ({h}x{w}).")
      h, w = ch, cw
    if self.image_size is not None:
      h, w = self.image_size
    return (h, w, c)

  def simplified(self, native: Sequence[int]) -> "_Preprocess":
    """Drops the resize when the (cropped) images already have `image_size`."""
    h, w, _ = self.output_shape(native)
    crop_hw = self.center_crop or tuple(int(x) for x in tuple(native)[:2])
    if self.image_size is not None and tuple(crop_hw) == (h, w):
      return dataclasses.replace(self, image_size=None)
    return self

  @property
  def is_identity(self) -> bool:
    return self.center_crop is None and self.image_size is None

  def describe(self, native: Sequence[int]) -> str:
    """'' or e.g. 'centre crop 148x148, resized from 218x178 to 32x32'."""
    pre = self.simplified(native)
    parts = []
    if pre.center_crop is not None:
      parts.append(f"centre crop {pre.center_crop[0]}x{pre.center_crop[1]}")
    if pre.image_size is not None:
      h, w = pre.center_crop or (int(native[0]), int(native[1]))
      parts.append(f"resized from {h}x{w} to {pre.image_size[0]}x{pre.image_size[1]}")
    return ", ".join(parts)

  def tf_apply(self, images: tf.Tensor) -> tf.Tensor:
    """uint8 [..., h, w, c] -> uint8 [..., H, W, c] (single image or a batch)."""
    if self.center_crop is not None:
      ch, cw = self.center_crop
      h, w = tf.shape(images)[-3], tf.shape(images)[-2]
      top, left = (h - ch) // 2, (w - cw) // 2
      images = images[..., top:top + ch, left:left + cw, :]
    if self.image_size is not None:
      resized = tf.image.resize(tf.cast(images, tf.float32), self.image_size,
                                method="bilinear", antialias=True)
      images = tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)
    return images

  def np_apply(self, images: np.ndarray) -> np.ndarray:
    """The same on a host array [N, h, w, c], in chunks."""
    if self.is_identity:
      return images
    out = [self.tf_apply(tf.constant(images[i:i + _LOAD_BATCH])).numpy()
           for i in range(0, len(images), _LOAD_BATCH)]
    if not out:
      return np.zeros((0,) + self.output_shape(images.shape[1:]), np.uint8)
    return np.concatenate(out)


# ----------------------------------------------------------------------------------
# Shards, seeds, hold-out.
# ----------------------------------------------------------------------------------


def _process(process_index, process_count) -> tuple[int, int]:
  pi = jax.process_index() if process_index is None else int(process_index)
  pc = jax.process_count() if process_count is None else int(process_count)
  if not 0 <= pi < pc:
    raise ValueError(f"process_index={pi} must be in [0, process_count={pc}).")
  return pi, pc


def _epoch_seed(seed: int, epoch: int, process_index: int) -> int:
  """A 31-bit seed, a deterministic function of (seed, epoch, process)."""
  ss = np.random.SeedSequence([int(seed) % 2**63, int(epoch), int(process_index)])
  return int(ss.generate_state(1, np.uint32)[0] & 0x7FFFFFFF)


def _shard_bounds(n: int, process_index: int, process_count: int) -> tuple[int, int]:
  """[start, end) of this process's contiguous shard: sizes differ by at most 1 (the
  first `n % process_count` shards are one longer), as `tfds.even_splits`."""
  base, rem = divmod(n, process_count)
  start = process_index * base + min(process_index, rem)
  return start, start + base + (process_index < rem)


def holdout_indices(num_examples: int, test_fraction: float,
                    seed: int = HOLDOUT_SEED) -> dict[str, np.ndarray]:
  """Fixed, seeded train/test split of range(num_examples): sorted index arrays."""
  if not 0.0 < float(test_fraction) < 1.0:
    raise ValueError(f"`dataset.test_fraction` must be in (0, 1); got {test_fraction}.")
  num_test = int(round(num_examples * float(test_fraction)))
  num_test = min(max(num_test, 1), num_examples - 1)
  if num_examples < 2:
    raise ValueError(f"Need at least 2 examples to hold out a test split; got "
                     f"{num_examples}.")
  perm = np.random.default_rng(seed).permutation(num_examples)
  return {"train": np.sort(perm[num_test:]), "test": np.sort(perm[:num_test])}


def _batches_per_epoch(n: int, batch_size: int, process_count: int, split: str) -> int:
  """Full batches per epoch of a repeated stream, the same on every process."""
  smallest_shard = n // process_count
  bpe = smallest_shard // batch_size
  if bpe < 1:
    raise ValueError(
        f"The {split!r} split has {n} examples ({smallest_shard} per process over "
        f"{process_count} processes): fewer than one batch of {batch_size}. Use a "
        f"smaller batch size.")
  return bpe


# ----------------------------------------------------------------------------------
# DataSource and its backends.
# ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DataSource:
  """A dataset as the model sees it: uint8 images of `image_shape` (H, W, C)."""
  name: str
  image_shape: tuple[int, int, int]
  num_examples: dict[str, int]
  _backend: Any = dataclasses.field(default=None, repr=False, compare=False)
  # For `description`: where the data is read from, how it was preprocessed and how
  # the test split was made ('' when the dataset has one).
  _origin: str = dataclasses.field(default="", repr=False, compare=False)
  _preprocessing: str = dataclasses.field(default="", repr=False, compare=False)
  _split: str = dataclasses.field(default="", repr=False, compare=False)

  def description(self) -> str:
    """One line for the start of a run: the dataset, where it is read from (or
    written to), its train/test sizes and, for hold-out splits, how they were made.

    E.g. "Data: folder (1,234 image files under /data/faces): 1,111 train / 123 test
    images of 64x64x3; test split: 10% held out at random (dataset.test_fraction=0.1,
    fixed seed 0: the same split in every run)."
    """
    shape = "x".join(str(d) for d in self.image_shape)
    unit = "clips" if len(self.image_shape) == 4 else (
        "frames" if self.is_video else "images")
    text = f"Data: {self.name}"
    if self._origin:
      text += f" ({self._origin})"
    text += (f": {self.num_examples.get('train', 0):,} train / "
             f"{self.num_examples.get('test', 0):,} test {unit} of {shape}")
    if self._preprocessing:
      text += f" ({self._preprocessing})"
    if self._split:
      text += f"; {self._split}"
    return text + "."

  def _check_split(self, split: str) -> None:
    if split not in self.num_examples:
      raise ValueError(f"Unknown split {split!r}; expected one of "
                       f"{tuple(self.num_examples)}.")

  def load_split(self, split: str) -> np.ndarray:
    """The whole split as uint8 [N, H, W, C] in host memory, deterministic order."""
    self._check_split(split)
    images = self._backend.load_split(split)
    check_images(images, expected_shape=self.image_shape)
    return images

  def batch_iterator(self, split: str, batch_size: int, *, seed: int, shuffle: bool,
                     repeat: bool, start_batch: int = 0, process_index: int | None = None,
                     process_count: int | None = None) -> Iterator[np.ndarray]:
    """uint8 [batch_size, H, W, C] numpy batches of this process's shard.

    `batch_size` is per process. Shuffling is a function of (seed, epoch, process).
    repeat=True: endless, `batches_per_epoch` full batches per epoch (batches do not
    cross epochs); repeat=False: one pass, the last partial batch included.
    `start_batch` skips that many batches of the stream (resuming without decoding the
    skipped epochs).
    """
    self._check_split(split)
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1; got {batch_size}.")
    if start_batch < 0:
      raise ValueError(f"start_batch must be >= 0; got {start_batch}.")
    pi, pc = _process(process_index, process_count)
    if repeat:  # Fail now (not at the first batch) if the batch is too large.
      self.batches_per_epoch(split, batch_size, process_count=pc)
    return self._backend.batch_iterator(
        split, int(batch_size), seed=int(seed), shuffle=bool(shuffle),
        repeat=bool(repeat), start_batch=int(start_batch), process_index=pi,
        process_count=pc)

  def shard_size(self, split: str, *, process_index: int | None = None,
                 process_count: int | None = None) -> int:
    """Number of examples of `split` this process reads (shards differ by <= 1)."""
    self._check_split(split)
    pi, pc = _process(process_index, process_count)
    units, per_unit = self._backend.units(split)
    start, end = _shard_bounds(units, pi, pc)
    return (end - start) * per_unit

  def batches_per_epoch(self, split: str, batch_size: int, *,
                        process_count: int | None = None) -> int:
    """Batches per epoch of a repeated `batch_iterator` (the same on every process)."""
    self._check_split(split)
    _, pc = _process(0, process_count)
    units, per_unit = self._backend.units(split)
    return _batches_per_epoch((units // pc) * per_unit * pc, batch_size, pc, split)

  @property
  def is_video(self) -> bool:
    return bool(getattr(self._backend, "video", False))

  @property
  def video_frames(self) -> int | None:
    """Frames per video of video datasets (bair: 30); None for the others."""
    return getattr(self._backend, "video_frames", None)

  @property
  def in_memory(self) -> bool:
    """Whether the splits are held in host memory (numpy, folder, frey_face,
    numpy_videos: `load_split` is free) rather than streamed from TFDS files."""
    return isinstance(self._backend, _ArrayBackend)

  def load_clips(self, split: str, clip_length: int | None = None, *,
                 stride: int | None = None, max_videos: int | None = None,
                 selection: str | None = None) -> np.ndarray:
    """Video datasets (bair): clips uint8 [N*K, L, H, W, C] of consecutive frames of
    the first `max_videos` videos (all: None) in the split's order.

    `clip_length` and `selection` default to `dataset.clip_length` and
    `dataset.clip_selection` (the clips the model trains on); see `clip_starts`.
    `load_clips(split, T, selection="first")` gives whole videos [N, T, H, W, C].
    """
    self._check_split(split)
    if not self.is_video:
      raise ValueError(f"Dataset {self.name!r} has no videos; clips exist for 'bair'.")
    length = self._backend.clip_length if clip_length is None else clip_length
    selection = self._backend.clip_selection if selection is None else selection
    videos = self._backend.load_videos(split, max_videos=max_videos)
    return extract_clips(videos, int(length), stride=stride, selection=selection)


class _ArrayBackend:
  """Splits held in host memory (numpy, folder, frey_face): exact full shuffles."""

  video = False

  def __init__(self, splits: dict[str, np.ndarray]):
    for images in splits.values():
      images.flags.writeable = False  # load_split hands out these arrays, not copies.
    self._splits = splits

  def units(self, split):
    return len(self._splits[split]), 1

  def load_split(self, split):
    return self._splits[split]

  def batch_iterator(self, split, batch_size, *, seed, shuffle, repeat, start_batch,
                     process_index, process_count):
    """Process p's rows of each *global* batch of the one-process stream.

    The order of epoch e is one permutation of the whole split keyed by (seed, e)
    (`_epoch_seed(seed, e, 0)`, the one-process order); global batch g is its rows
    [g*B, (g+1)*B), B = batch_size * process_count, and process p yields rows
    [g*B + p*batch_size, g*B + (p+1)*batch_size). Concatenated in process order (as
    `jax.make_array_from_process_local_data` does over a mesh of `jax.devices()`),
    the processes' batches are exactly the one-process run's batches. A one-pass
    stream's last partial global batch is split as `_shard_bounds` (sizes differ by
    at most 1), so the processes still read disjoint sets that cover the split.
    """
    images = self._splits[split]
    n = len(images)
    global_batch = batch_size * process_count

    def order(epoch):
      if not shuffle:
        return np.arange(n)
      return np.random.default_rng(_epoch_seed(seed, epoch, 0)).permutation(n)

    def rows(idx, g):
      start = g * global_batch + process_index * batch_size
      return idx[start:start + batch_size]

    if not repeat:
      idx = order(0)
      full = n // global_batch
      for g in range(start_batch, full):
        yield images[rows(idx, g)]
      rest = n - full * global_batch
      if rest and start_batch <= full:
        lo, hi = _shard_bounds(rest, process_index, process_count)
        if hi > lo:
          yield images[idx[full * global_batch + lo:full * global_batch + hi]]
      return
    bpe = _batches_per_epoch(n, batch_size, process_count, split)
    epoch, skip = divmod(start_batch, bpe)
    while True:
      idx = order(epoch)
      for g in range(skip, bpe):
        yield images[rows(idx, g)]
      epoch, skip = epoch + 1, 0


class _TfdsBackend:
  """A TFDS builder streamed with tf.data (shuffle encoded, skip, then decode)."""

  def __init__(self, builder, spec: _TfdsSpec, preprocess: _Preprocess,
               shuffle_buffer: int, clip_length: int, as_clips: bool = False,
               clip_selection: str = DEFAULT_CLIP_SELECTION):
    self._builder = builder
    self._spec = spec
    self._buffer = int(shuffle_buffer)
    self.video = spec.video
    self.clip_length = clip_length
    self.clip_selection = clip_selection
    # Examples are clips of clip_length consecutive frames (video models), not frames.
    self.as_clips = bool(as_clips and spec.video)
    self._feature = builder.info.features[spec.image_key]
    self._pre = preprocess.simplified(self.native_shape)
    self.preprocessing = preprocess.describe(self.native_shape)
    self.video_frames = None
    if spec.video:
      video_frames = int(tuple(builder.info.features.shape[spec.image_key])[0])
      self.video_frames = video_frames
      if self.as_clips and not 1 <= clip_length <= video_frames:
        raise ValueError(f"`dataset.clip_length`={clip_length} must be in [1, "
                         f"{video_frames}] (frames per {spec.tfds_name} video).")
      # Examples per video: its frames, or its clips (`clip_starts`).
      self.frames = (len(clip_starts(video_frames, clip_length, clip_selection))
                     if self.as_clips else video_frames)
    else:
      self.frames = 1
    self._units = {s: self._count(t) for s, t in spec.splits.items()}

  def example_shape(self) -> tuple[int, ...]:
    """One example as the model sees it: (H, W, C), or (L, H, W, C) for clips."""
    frame = self._pre.output_shape(self.native_shape)
    return (self.clip_length,) + frame if self.as_clips else frame

  @property
  def native_shape(self):
    return tuple(self._feature.shape)[-3:]

  def units(self, split):
    return self._units[split], self.frames

  def _count(self, tfds_split) -> int:
    try:
      return int(self._builder.info.splits[tfds_split].num_examples)
    except (KeyError, ValueError, TypeError):
      # Not prepared from files (e.g. under tfds.testing.mock_data): ask tf.data.
      n = int(self._encoded(tfds_split, shuffle_seed=None).cardinality().numpy())
      if n < 0:
        raise ValueError(f"Unknown size of split {tfds_split!r} of "
                         f"{self._spec.tfds_name}.") from None
      return n

  def _encoded(self, tfds_split, *, shuffle_seed: int | None) -> tf.data.Dataset:
    """Encoded examples ([T] strings for videos), files shuffled with the seed."""
    key = self._spec.image_key
    decoders = tfds.decode.PartialDecoding(
        {key: True}, decoders={key: tfds.decode.SkipDecoding()})
    read_config = tfds.ReadConfig(
        shuffle_seed=shuffle_seed, try_autocache=False, add_tfds_id=False)
    ds = self._builder.as_dataset(
        split=tfds_split, shuffle_files=shuffle_seed is not None, decoders=decoders,
        read_config=read_config)
    return ds.map(lambda ex: ex[key], num_parallel_calls=tf.data.AUTOTUNE)

  def _decode(self, encoded):
    if self.as_clips:  # [L] encoded frames -> uint8 [L, H, W, C]
      return tf.map_fn(self._decode_frame, encoded, fn_output_signature=tf.uint8)
    return self._decode_frame(encoded)

  def _decode_frame(self, encoded):
    return self._pre.tf_apply(self._feature.decode_example(encoded))

  def _frames(self, tfds_split, *, shuffle_seed: int | None) -> tf.data.Dataset:
    """Encoded images (video frames unbatched) in epoch order, still encoded."""
    ds = self._encoded(tfds_split, shuffle_seed=shuffle_seed)
    if self.video:
      if shuffle_seed is not None:  # Videos first, then frames (they are correlated).
        ds = ds.shuffle(max(1, self._buffer // self.frames), seed=shuffle_seed,
                        reshuffle_each_iteration=False)
      ds = (clips_dataset(ds, self.clip_length, selection=self.clip_selection,
                          num_frames=self.video_frames)
            if self.as_clips else ds.unbatch())
    if shuffle_seed is not None:
      ds = ds.shuffle(self._buffer, seed=shuffle_seed + 1, reshuffle_each_iteration=False)
    return ds

  def _batched(self, ds, batch_size, drop_remainder):
    ds = ds.map(self._decode, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    return ds.prefetch(tf.data.AUTOTUNE)

  def load_split(self, split):
    tfds_split = self._spec.splits[split]
    ds = self._frames(tfds_split, shuffle_seed=None)
    n = self._units[split] * self.frames
    out = np.empty((n,) + self.example_shape(), np.uint8)
    i = 0
    for batch in tfds.as_numpy(self._batched(ds, _LOAD_BATCH, drop_remainder=False)):
      if i + len(batch) > n:
        raise ValueError(f"{self._spec.tfds_name}[{tfds_split}] has more than the "
                         f"{n} examples its metadata lists.")
      out[i:i + len(batch)] = batch
      i += len(batch)
    return out[:i]

  def load_videos(self, split, max_videos=None):
    """Whole videos uint8 [N, T, H, W, C] (preprocessed), deterministic order."""
    ds = self._encoded(self._spec.splits[split], shuffle_seed=None)
    if max_videos is not None:
      ds = ds.take(max_videos)
    ds = ds.map(lambda v: tf.map_fn(self._decode_frame, v, fn_output_signature=tf.uint8),
                num_parallel_calls=tf.data.AUTOTUNE)
    videos = list(tfds.as_numpy(ds.prefetch(tf.data.AUTOTUNE)))
    if not videos:
      shape = self._pre.output_shape(self.native_shape)
      return np.zeros((0, self.frames) + shape, np.uint8)
    return np.stack(videos)

  def batch_iterator(self, split, batch_size, *, seed, shuffle, repeat, start_batch,
                     process_index, process_count):
    tfds_split = self._spec.splits[split]
    units = self._units[split]
    if process_count > 1:
      tfds_split = tfds.even_splits(tfds_split, n=process_count,
                                    drop_remainder=False)[process_index]

    def epoch_ds(epoch):
      s = _epoch_seed(seed, epoch, process_index) if shuffle else None
      return self._frames(tfds_split, shuffle_seed=s)

    if not repeat:
      ds = epoch_ds(0).skip(start_batch * batch_size)
      yield from tfds.as_numpy(self._batched(ds, batch_size, drop_remainder=False))
      return
    # The smallest shard (in examples) fixes the batches per epoch for all processes.
    bpe = _batches_per_epoch((units // process_count) * self.frames * process_count,
                             batch_size, process_count, split)
    epoch, skip = divmod(start_batch, bpe)
    while True:
      ds = epoch_ds(epoch).take(bpe * batch_size).skip(skip * batch_size)
      yield from tfds.as_numpy(self._batched(ds, batch_size, drop_remainder=True))
      epoch, skip = epoch + 1, 0


# ----------------------------------------------------------------------------------
# Loading numpy files and image folders.
# ----------------------------------------------------------------------------------


def _require_path(cfg, kind: str) -> str:
  path = _get(cfg, "path", "")
  if not path:
    what = {"numpy": "a .npy/.npz file with a uint8 array [N, H, W] or [N, H, W, C]",
            "numpy_videos": "a .npy/.npz file of uint8 videos [N, T, H, W, C]",
            }.get(kind, "a folder of image files (png/jpg)")
    raise ValueError(f"dataset.name={kind!r} needs `dataset.path`: {what}; it is empty.")
  return _existing(path, "dataset.path")


def _existing(path, field: str) -> str:
  path = os.path.expanduser(os.fspath(path))
  if not os.path.exists(path):
    raise FileNotFoundError(f"`{field}`={path!r} does not exist.")
  return path


def _load_array(path: str, key: str, form: str, field: str = "dataset.path") -> np.ndarray:
  """The array of a .npy file, or of a .npz file (`key`, else its first array).

  A file numpy cannot read (truncated, not .npy/.npz, a pickled object array) raises
  ValueError naming it and the expected form.
  """
  try:
    with open(path, "rb") as f:
      loaded = np.load(f, allow_pickle=False)
      if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
          if not loaded.files:
            raise ValueError(f"`{field}`={path!r}: the .npz file holds no arrays.")
          return loaded[key if key in loaded.files else loaded.files[0]]
      return loaded
  except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
    if str(e).startswith(f"`{field}`"):
      raise
    raise ValueError(
        f"`{field}`={path!r} is not a readable .npy/.npz file of {form} "
        f"({type(e).__name__}: {_one_line(e)}).") from e


def _one_line(text) -> str:
  return " ".join(str(text).split())


def load_numpy_images(path: str, field: str = "dataset.path") -> np.ndarray:
  """uint8 [N, H, W, C] from a .npy file or a .npz file (key 'images', else the first);
  errors name `field` (the config field the path came from)."""
  if os.path.isdir(path):
    raise ValueError(f"`{field}`={path!r} is a folder; dataset.name='numpy' needs a "
                     f".npy/.npz file (use dataset.name='folder' for image folders).")
  images = _load_array(path, "images", "a uint8 array [N, H, W] or [N, H, W, C]", field)
  if images.dtype != np.uint8:
    raise ValueError(f"`{field}`={path!r}: expected a uint8 array [N, H, W] or "
                     f"[N, H, W, C]; got dtype {images.dtype} (convert with "
                     f"np.clip(np.round(x * 255), 0, 255).astype(np.uint8) for floats in "
                     f"[0, 1]).")
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim == 5:
    raise ValueError(f"`{field}`={path!r}: expected a uint8 array [N, H, W] or "
                     f"[N, H, W, C]; got shape {images.shape}, which looks like videos "
                     f"[N, T, H, W, C]: videos take dataset.name=numpy_videos.")
  if images.ndim != 4:
    raise ValueError(f"`{field}`={path!r}: expected a uint8 array [N, H, W] or "
                     f"[N, H, W, C]; got shape {images.shape}.")
  return np.ascontiguousarray(images)


def load_image_folder(path: str, field: str = "dataset.path") -> np.ndarray:
  """uint8 [N, H, W, C] from the image files under `path` (sorted, recursive); errors
  name `field` (the config field the path came from).

  Grayscale images stay 1-channel; colour (and palette) images become RGB (alpha is
  dropped); if the folder mixes both, grayscale images are converted to RGB. All images
  must have the same size.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top

  if not os.path.isdir(path):
    raise ValueError(f"`{field}`={path!r} is not a folder; dataset.name='folder' "
                     f"needs a folder of image files.")
  files = sorted(
      os.path.join(root, f) for root, _, names in os.walk(path) for f in names
      if f.lower().endswith(IMAGE_EXTENSIONS))
  if not files:
    raise ValueError(f"`{field}`={path!r}: no image files "
                     f"({', '.join(IMAGE_EXTENSIONS)}) found.")
  images, size0 = [], None
  for f in files:
    try:
      with Image.open(f) as im:
        gray = im.mode in ("1", "L", "LA", "I", "I;16", "F")
        image = np.asarray(im.convert("L" if gray else "RGB"), np.uint8)
    except Exception as e:  # pylint: disable=broad-except
      # PIL raises OSError (truncated), UnidentifiedImageError, SyntaxError (broken
      # PNG chunks), DecompressionBombError...: all mean this file cannot be used.
      raise ValueError(
          f"`{field}`: cannot read the image file {f} ({type(e).__name__}: "
          f"{_one_line(e)}); fix or remove it.") from e
    size = image.shape[:2]
    if size0 is None:
      size0 = (size, f)
    elif size != size0[0]:
      raise ValueError(
          f"`{field}`: image {f} is {size[0]}x{size[1]} (HxW) but "
          f"{size0[1]} is {size0[0][0]}x{size0[0][1]}; all images must have the same "
          f"size.")
    images.append(image)
  if any(a.ndim == 3 for a in images):
    images = [np.repeat(a[..., None], 3, axis=-1) if a.ndim == 2 else a for a in images]
  else:
    images = [a[..., None] for a in images]
  return np.stack(images)


# ----------------------------------------------------------------------------------
# get_data_source.
# ----------------------------------------------------------------------------------


def _split_note(num_test: int, total: int, fraction, what: str = "") -> str:
  return (f"test split: {num_test:,} of the {total:,}{what} held out at random "
          f"(dataset.test_fraction={float(fraction):g}, fixed seed {HOLDOUT_SEED}: the "
          f"same split in every run)")


def _own_test_split(train: np.ndarray, test: np.ndarray, unit: str,
                    example_axes: int) -> None:
  """Raises ValueError naming `dataset.test_path` if its examples (the last
  `example_axes` axes, after preprocessing) differ from `dataset.path`'s."""
  if test.dtype != train.dtype:
    raise ValueError(f"`dataset.test_path`: its {unit} are {test.dtype} but those of "
                     f"`dataset.path` are {train.dtype}; both splits must be uint8.")
  shape_train, shape_test = train.shape[-example_axes:], test.shape[-example_axes:]
  if shape_train != shape_test:
    raise ValueError(
        f"`dataset.test_path`: its {unit} are {'x'.join(map(str, shape_test))} but "
        f"those of `dataset.path` are {'x'.join(map(str, shape_train))}; both splits "
        f"must have the same size and channels (dataset.image_size resizes both).")


def _test_path_note(origin: str) -> str:
  return f"test split: dataset.test_path ({origin})"


def _holdout_source(name: str, images: np.ndarray, cfg, pre: _Preprocess,
                    origin: str = "", test: np.ndarray | None = None,
                    test_origin: str = "") -> DataSource:
  """Images [N, H, W, C]: a seeded `dataset.test_fraction` held out as the test split,
  or, given `test` (read from `dataset.test_path`), all of `images` for training and
  `test` for testing."""
  preprocessing = pre.describe(images.shape[1:])
  images = pre.simplified(images.shape[1:]).np_apply(images)
  if test is not None:
    test = pre.simplified(test.shape[1:]).np_apply(test)
    _own_test_split(images, test, "images", 3)
    splits = {"train": images, "test": test}
    split_note = _test_path_note(test_origin)
  else:
    fraction = _get(cfg, "test_fraction", 0.1)
    idx = holdout_indices(len(images), fraction)
    splits = {s: images[idx[s]] for s in _SPLITS}
    split_note = _split_note(len(idx["test"]), len(images), fraction)
  return DataSource(name=name, image_shape=tuple(int(x) for x in images.shape[1:]),
                    num_examples={s: len(v) for s, v in splits.items()},
                    _backend=_ArrayBackend(splits), _origin=origin,
                    _preprocessing=preprocessing, _split=split_note)


def _video_holdout_source(name: str, videos: np.ndarray, cfg, pre: _Preprocess,
                          origin: str = "", test: np.ndarray | None = None,
                          test_origin: str = "") -> DataSource:
  """Videos [N, T, H, W, C]: a seeded fraction of the *videos* held out (no clip of a
  test video is trained on), or, given `test` videos (from `dataset.test_path`), all
  of `videos` for training; each split cut into non-overlapping clips of
  `dataset.clip_length` frames (default: whole videos) chosen by
  `dataset.clip_selection` (`clip_starts`)."""
  def preprocessed(v):
    frames = pre.simplified(v.shape[2:]).np_apply(v.reshape((-1,) + v.shape[2:]))
    return frames.reshape(v.shape[:2] + frames.shape[1:])

  n, t = videos.shape[:2]
  preprocessing = pre.describe(videos.shape[2:])
  videos = preprocessed(videos)
  length = _get(cfg, "clip_length", None)
  selection = _get(cfg, "clip_selection", DEFAULT_CLIP_SELECTION)
  if test is not None:
    test = preprocessed(test)
    _own_test_split(videos, test, "video frames", 3)
    if length is None and test.shape[1] != t:
      raise ValueError(
          f"`dataset.test_path`: its videos have {test.shape[1]} frames but those of "
          f"`dataset.path` have {t}; set dataset.clip_length (at most "
          f"{min(t, test.shape[1])}) to cut both into clips of one length.")
    length = int(t if length is None else length)
    splits = {"train": extract_clips(videos, length, selection=selection),
              "test": extract_clips(test, length, selection=selection)}
    split_note = _test_path_note(test_origin)
  else:
    length = int(t if length is None else length)
    fraction = _get(cfg, "test_fraction", 0.1)
    idx = holdout_indices(n, fraction)
    splits = {s: extract_clips(videos[idx[s]], length, selection=selection) for s in _SPLITS}
    split_note = _split_note(len(idx["test"]), n, fraction, " videos")
  clips = (f"{_clips_text(selection)} of dataset.clip_length={length} of the {t} frames "
           f"of each video")
  return DataSource(name=name, image_shape=tuple(int(x) for x in splits["train"].shape[1:]),
                    num_examples={s: len(v) for s, v in splits.items()},
                    _backend=_ArrayBackend(splits), _origin=origin,
                    _preprocessing=", ".join(p for p in (clips, preprocessing) if p),
                    _split=split_note)


def _clips_text(selection: str) -> str:
  return {"first": "the first clip", "windows": "non-overlapping clips"}[selection]


def load_numpy_videos(path: str, field: str = "dataset.path") -> np.ndarray:
  """uint8 videos [N, T, H, W, C] (or [N, T, H, W]) from a .npy / .npz file; errors
  name `field` (the config field the path came from)."""
  if os.path.isdir(path):
    raise ValueError(f"`{field}`={path!r} is a folder; dataset.name='numpy_videos' "
                     f"needs a .npy/.npz file of uint8 videos [N, T, H, W, C].")
  videos = _load_array(path, "videos", "uint8 videos [N, T, H, W, C]", field)
  if videos.dtype != np.uint8 or videos.ndim not in (4, 5):
    raise ValueError(f"`{field}`={path!r}: expected uint8 videos [N, T, H, W, C] "
                     f"or [N, T, H, W]; got {videos.dtype} of shape {videos.shape}.")
  if videos.ndim == 4:
    videos = videos[..., None]
  return np.ascontiguousarray(videos)


def _load_in_source_order(builder, image_key: str, index_key: str = "index",
                          split: str = "train") -> np.ndarray:
  """All images of a small TFDS split, sorted by their `index` feature (source order)."""
  ds = builder.as_dataset(split=split, shuffle_files=False)
  images, index = [], []
  for ex in tfds.as_numpy(ds.batch(_LOAD_BATCH).prefetch(tf.data.AUTOTUNE)):
    images.append(ex[image_key])
    index.append(ex[index_key])
  if not images:
    raise ValueError(f"{builder.name}[{split}] is empty.")
  order = np.argsort(np.concatenate(index), kind="stable")
  return np.concatenate(images)[order]


def _make_builder(name: str, spec: _TfdsSpec, cfg):
  data_dir = _get(cfg, "data_dir", None)
  manual_dir = _get(cfg, "manual_dir", None)
  kwargs = {}
  if name == "frey_face":
    kwargs["allow_download"] = bool(_get(cfg, "download", True))
  builder = tfds.builder(spec.tfds_name, data_dir=data_dir, **kwargs)
  download_config = tfds.download.DownloadConfig(
      manual_dir=os.path.expanduser(manual_dir) if manual_dir else None,
      # Local builders are generated here: never look them up on GCS.
      try_download_gcs=not spec.local)
  builder.download_and_prepare(download_config=download_config)
  return builder


def get_data_source(dataset_config) -> DataSource:
  """The `DataSource` of `config.dataset`, preparing TFDS datasets on first use."""
  prepare_tensorflow()
  name = _get(dataset_config, "name", None)
  if name not in DATASETS:
    raise ValueError(f"Unknown `dataset.name`={name!r}; known datasets: "
                     f"{', '.join(DATASETS)}.")
  pre = _Preprocess(
      center_crop=_parse_size(_get(dataset_config, "center_crop", None), "center_crop"),
      image_size=_parse_size(_get(dataset_config, "image_size", None), "image_size"))

  test_path = _get(dataset_config, "test_path", None)
  if test_path and name not in _OWN_DATA:
    raise ValueError(f"`dataset.test_path` is for your own data ({', '.join(_OWN_DATA)}); "
                     f"dataset.name={name!r} has its own test split. Unset it.")
  if test_path:
    test_path = _existing(test_path, "dataset.test_path")
  if name == "numpy":
    path = _require_path(dataset_config, name)
    test = load_numpy_images(test_path, "dataset.test_path") if test_path else None
    return _holdout_source(name, load_numpy_images(path), dataset_config, pre,
                           origin=f"file {path}", test=test,
                           test_origin=f"{len(test):,} images in {test_path}"
                           if test_path else "")
  if name == "numpy_videos":
    path = _require_path(dataset_config, name)
    videos = load_numpy_videos(path)
    test = load_numpy_videos(test_path, "dataset.test_path") if test_path else None
    return _video_holdout_source(
        name, videos, dataset_config, pre,
        origin=f"{len(videos):,} videos of {videos.shape[1]} frames in {path}", test=test,
        test_origin=(f"{len(test):,} videos of {test.shape[1]} frames in {test_path}"
                     if test_path else ""))
  if name == "folder":
    path = _require_path(dataset_config, name)
    images = load_image_folder(path)
    test = load_image_folder(test_path, "dataset.test_path") if test_path else None
    return _holdout_source(name, images, dataset_config, pre,
                           origin=f"{len(images):,} image files found under {path}",
                           test=test,
                           test_origin=(f"{len(test):,} image files found under "
                                        f"{test_path}" if test_path else ""))

  spec = _TFDS_SPECS[name]
  if name == "bair":
    view = _get(dataset_config, "bair_view", BAIR_VIEWS[0])
    if view not in BAIR_VIEWS:
      raise ValueError(f"`dataset.bair_view`={view!r} must be one of "
                       f"{', '.join(BAIR_VIEWS)} (the camera; the SVG reference's is "
                       f"{BAIR_VIEWS[0]}).")
    spec = dataclasses.replace(spec, image_key=view)
  builder = _make_builder(name, spec, dataset_config)
  shuffle_buffer = int(_get(dataset_config, "shuffle_buffer", DEFAULT_SHUFFLE_BUFFER))
  clip_length = int(_get(dataset_config, "clip_length", DEFAULT_CLIP_LENGTH))
  origin = (f"built in, generated locally, stored in {builder.data_dir}" if spec.local and
            name == "synthetic_shapes" else f"TFDS {spec.tfds_name} in {builder.data_dir}")
  if spec.splits is None:
    # No test split (frey_face): read it all (small), in source order, and hold out a
    # seeded fraction in memory.
    return _holdout_source(name, _load_in_source_order(builder, spec.image_key),
                           dataset_config, pre, origin=origin)
  selection = _get(dataset_config, "clip_selection", DEFAULT_CLIP_SELECTION)
  if selection not in CLIP_SELECTIONS:
    raise ValueError(f"`dataset.clip_selection`={selection!r} must be one of "
                     f"{', '.join(CLIP_SELECTIONS)}.")
  backend = _TfdsBackend(builder, spec, pre, shuffle_buffer, clip_length,
                         as_clips=bool(_get(dataset_config, "as_clips", False)),
                         clip_selection=selection)
  preprocessing = backend.preprocessing
  if backend.video:
    videos = " / ".join(f"{backend.units(s)[0]:,}" for s in _SPLITS)
    what = f"from {videos} videos of {backend.video_frames} frames ({spec.image_key})"
    if backend.as_clips:
      what += f", {_clips_text(selection)} of {clip_length} frames of each"
    preprocessing = ", ".join(p for p in (what, preprocessing) if p)
  return DataSource(
      name=name, image_shape=backend.example_shape(),
      num_examples={s: backend.units(s)[0] * backend.frames for s in _SPLITS},
      _backend=backend, _origin=origin, _preprocessing=preprocessing)


def main(argv=None) -> None:
  """Prepares datasets ahead of a run: `python -m sigma_vae_jax.data.input_pipeline NAME...`.

  Prints each dataset's `DataSource.description()`; a dataset that cannot be read
  (missing or corrupt file, failed download) ends with one ERROR line, exit 1.
  """
  args = _argument_parser().parse_args(argv)
  for name in args.names:
    try:
      source = get_data_source({"name": name, "data_dir": args.data_dir,
                                "manual_dir": args.manual_dir, "path": args.path})
    except (ValueError, FileNotFoundError, PermissionError) as e:
      cli.fail(f"{name}: {e}")
    print(source.description(), flush=True)


if __name__ == "__main__":
  main()
