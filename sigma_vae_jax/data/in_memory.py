"""In-memory data sources: splits held in host memory as uint8 arrays.

For datasets small enough to hold (numpy, folder, numpy_videos, frey_face):
`holdout_source` (images [N, H, W, C]) and `video_holdout_source` (videos
[N, T, H, W, C], cut into clips [L, H, W, C]) preprocess the arrays once and make the
test split (a seeded `dataset.test_fraction`, or `dataset.test_path`'s examples);
`ArrayBackend` serves them: `load_split` for free, and exact full shuffles in
`batch_iterator`, each process taking its rows of every global batch.
"""

from __future__ import annotations

import numpy as np

from sigma_vae_jax.data import dataset_fields
from sigma_vae_jax.data import splits as splits_lib
from sigma_vae_jax.data.clips import clips_text
from sigma_vae_jax.data.clips import extract_clips
from sigma_vae_jax.data.data_source import DataSource
from sigma_vae_jax.data.preprocessing import Preprocess


class ArrayBackend:
  """Splits held in host memory (numpy, folder, frey_face): exact full shuffles."""

  video = False
  in_memory = True  # `DataSource.in_memory`: load_split hands out these arrays.

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
    (`splits.epoch_seed(seed, e, 0)`, the one-process order); global batch g is its rows
    [g*B, (g+1)*B), B = batch_size * process_count, and process p yields rows
    [g*B + p*batch_size, g*B + (p+1)*batch_size). Concatenated in process order (as
    `jax.make_array_from_process_local_data` does over a mesh of `jax.devices()`),
    the processes' batches are exactly the one-process run's batches. A one-pass
    stream's last partial global batch is split as `splits.shard_bounds` (sizes differ by
    at most 1), so the processes still read disjoint sets that cover the split.
    """
    images = self._splits[split]
    n = len(images)
    global_batch = batch_size * process_count

    def order(epoch):
      if not shuffle:
        return np.arange(n)
      return np.random.default_rng(splits_lib.epoch_seed(seed, epoch, 0)).permutation(n)

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
        lo, hi = splits_lib.shard_bounds(rest, process_index, process_count)
        if hi > lo:
          yield images[idx[full * global_batch + lo:full * global_batch + hi]]
      return
    bpe = splits_lib.batches_per_epoch(n, batch_size, process_count, split)
    epoch, skip = divmod(start_batch, bpe)
    while True:
      idx = order(epoch)
      for g in range(skip, bpe):
        yield images[rows(idx, g)]
      epoch, skip = epoch + 1, 0



def _split_note(num_test: int, total: int, fraction, what: str = "") -> str:
  return (f"test split: {num_test:,} of the {total:,}{what} held out at random "
          f"(dataset.test_fraction={float(fraction):g}, fixed seed "
          f"{splits_lib.HOLDOUT_SEED}: the same split in every run)")


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


def holdout_source(name: str, images: np.ndarray, cfg, pre: Preprocess,
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
    fraction = dataset_fields.get(cfg, "test_fraction", 0.1)
    idx = splits_lib.holdout_indices(len(images), fraction)
    splits = {s: images[idx[s]] for s in splits_lib.SPLITS}
    split_note = _split_note(len(idx["test"]), len(images), fraction)
  return DataSource(name=name, image_shape=tuple(int(x) for x in images.shape[1:]),
                    num_examples={s: len(v) for s, v in splits.items()},
                    _backend=ArrayBackend(splits), _origin=origin,
                    _preprocessing=preprocessing, _split=split_note)


def video_holdout_source(name: str, videos: np.ndarray, cfg, pre: Preprocess,
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
  length = dataset_fields.get(cfg, "clip_length", None)
  selection = dataset_fields.get(cfg, "clip_selection", dataset_fields.DEFAULT_CLIP_SELECTION)
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
    fraction = dataset_fields.get(cfg, "test_fraction", 0.1)
    idx = splits_lib.holdout_indices(n, fraction)
    splits = {s: extract_clips(videos[idx[s]], length, selection=selection)
              for s in splits_lib.SPLITS}
    split_note = _split_note(len(idx["test"]), n, fraction, " videos")
  clips = (f"{clips_text(selection)} of dataset.clip_length={length} of the {t} frames "
           f"of each video")
  return DataSource(name=name, image_shape=tuple(int(x) for x in splits["train"].shape[1:]),
                    num_examples={s: len(v) for s, v in splits.items()},
                    _backend=ArrayBackend(splits), _origin=origin,
                    _preprocessing=", ".join(p for p in (clips, preprocessing) if p),
                    _split=split_note)
