"""Videos and clips: which consecutive frames of a video make the model's examples.

`clip_starts` is the one rule (first frame of each clip of L frames of a video of T
frames); `extract_clips` applies it to host arrays (videos uint8 [N, T, H, W, C] ->
clips [N*K, L, H, W, C]) and `clips_dataset` to a tf.data stream of videos, the same
clips in the same order.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from sigma_vae_jax.data.dataset_fields import CLIP_SELECTIONS


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


def clips_text(selection: str) -> str:
  """How a data source's description names the clips of `selection`."""
  return {"first": "the first clip", "windows": "non-overlapping clips"}[selection]
