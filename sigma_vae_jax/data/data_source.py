"""`DataSource`: a dataset as the model sees it, whatever it is read from.

uint8 examples of `image_shape` ((H, W, C) images or frames, (L, H, W, C) clips):
the whole split in host memory (`load_split`, for `dataset.on_device=True`), a
deterministic, resumable, per-process stream of uint8 batches (`batch_iterator`), the
videos' clips (`load_clips`) and one line saying what was read (`description`). The
reading is done by a backend: `in_memory.ArrayBackend` (splits held in host memory)
or `tfds_source.TfdsBackend` (a TFDS builder streamed with tf.data). A backend has
`units(split)` -> (units, examples per unit: 1, or a video's frames or clips),
`load_split`, `batch_iterator`, and the attributes `video`, `video_frames`, `in_memory`
(absent: False) and, for videos, `clip_length`, `clip_selection` and `load_videos`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator

import numpy as np

from sigma_vae_jax.data import splits
from sigma_vae_jax.data.clips import extract_clips
from sigma_vae_jax.data.preprocessing import check_images


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
    pi, pc = splits.process_index_and_count(process_index, process_count)
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
    pi, pc = splits.process_index_and_count(process_index, process_count)
    units, per_unit = self._backend.units(split)
    start, end = splits.shard_bounds(units, pi, pc)
    return (end - start) * per_unit

  def batches_per_epoch(self, split: str, batch_size: int, *,
                        process_count: int | None = None) -> int:
    """Batches per epoch of a repeated `batch_iterator` (the same on every process)."""
    self._check_split(split)
    _, pc = splits.process_index_and_count(0, process_count)
    units, per_unit = self._backend.units(split)
    return splits.batches_per_epoch((units // pc) * per_unit * pc, batch_size, pc, split)

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
    return bool(getattr(self._backend, "in_memory", False))

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

