"""TFDS sources: the TFDS builders behind dataset names, streamed with tf.data.

`TFDS_SPECS` maps a `dataset.name` onto a TFDS builder (its name, image feature and
splits; bair: videos [30, 64, 64, 3] whose frames, or clips, are the examples).
`tfds_data_source` prepares the builder (downloading, or generating this package's own
builders locally) and returns a `DataSource` backed by `TfdsBackend`: shuffle the
encoded examples (seeded per epoch and process), skip to the resume position, then
decode and preprocess to uint8 batches. Frey Face, which has no test split, is read
whole into memory and held out by `in_memory.holdout_source`.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from sigma_vae_jax.data import dataset_fields
from sigma_vae_jax.data import in_memory
from sigma_vae_jax.data import splits
from sigma_vae_jax.data.clips import clip_starts
from sigma_vae_jax.data.clips import clips_dataset
from sigma_vae_jax.data.clips import clips_text
from sigma_vae_jax.data.data_source import DataSource
from sigma_vae_jax.data.dataset_fields import BAIR_VIEWS
from sigma_vae_jax.data.dataset_fields import CLIP_SELECTIONS
from sigma_vae_jax.data.dataset_fields import DEFAULT_CLIP_LENGTH
from sigma_vae_jax.data.dataset_fields import DEFAULT_CLIP_SELECTION
from sigma_vae_jax.data.dataset_fields import DEFAULT_SHUFFLE_BUFFER
from sigma_vae_jax.data.preprocessing import LOAD_BATCH
from sigma_vae_jax.data.preprocessing import Preprocess

# TFDS's PartialDecoding (`TfdsBackend`) reads `FeatureConnector.dtype`, which logs this
# deprecation through absl: our use triggers it and a user can do nothing about it.
_DTYPE_DEPRECATION = "`FeatureConnector.dtype` is deprecated"


def _not_dtype_deprecation(record: logging.LogRecord) -> bool:
  """A logging filter: False (drop) for the record of `_DTYPE_DEPRECATION`."""
  try:
    message = record.getMessage()
  except Exception:  # pylint: disable=broad-except
    return True
  return _DTYPE_DEPRECATION not in message


def drop_dtype_deprecation_logs() -> None:
  """Installs (once) the filter of `_DTYPE_DEPRECATION` on absl's logger; idempotent."""
  logger = logging.getLogger("absl")
  if _not_dtype_deprecation not in logger.filters:
    logger.addFilter(_not_dtype_deprecation)


@dataclasses.dataclass(frozen=True)
class TfdsSpec:
  """How a name in DATASETS maps onto a TFDS builder."""
  tfds_name: str
  image_key: str
  splits: dict[str, str] | None  # Our split -> TFDS split; None: seeded hold-out.
  video: bool = False  # Examples are videos [T, H, W, C]; the model sees frames.
  local: bool = False  # Builder of this package (no GCS look-up).


TFDS_SPECS: dict[str, TfdsSpec] = {
    "synthetic_shapes": TfdsSpec("synthetic_shapes", "image",
                                 {"train": "train", "test": "test"}, local=True),
    "mnist": TfdsSpec("mnist", "image", {"train": "train", "test": "test"}),
    "svhn": TfdsSpec("svhn_cropped", "image", {"train": "train", "test": "test"}),
    "cifar10": TfdsSpec("cifar10", "image", {"train": "train", "test": "test"}),
    "celeba": TfdsSpec("celeb_a", "image", {"train": "train", "test": "test"}),
    "frey_face": TfdsSpec("frey_face", "image", None, local=True),
    # The camera the SVG reference reads (`data/convert_bair.py`: '<t>/image_aux1/encoded');
    # `dataset.bair_view` picks the other one.
    "bair": TfdsSpec("bair_robot_pushing_small", "image_aux1",
                     {"train": "train", "test": "test"}, video=True),
}


def load_in_source_order(builder, image_key: str, index_key: str = "index",
                         split: str = "train") -> np.ndarray:
  """All images of a small TFDS split, sorted by their `index` feature (source order)."""
  ds = builder.as_dataset(split=split, shuffle_files=False)
  images, index = [], []
  for ex in tfds.as_numpy(ds.batch(LOAD_BATCH).prefetch(tf.data.AUTOTUNE)):
    images.append(ex[image_key])
    index.append(ex[index_key])
  if not images:
    raise ValueError(f"{builder.name}[{split}] is empty.")
  order = np.argsort(np.concatenate(index), kind="stable")
  return np.concatenate(images)[order]


def make_builder(name: str, spec: TfdsSpec, cfg):
  """The TFDS builder of `spec`, downloaded and prepared (`dataset.data_dir`,
  `dataset.manual_dir`; frey_face: `dataset.download`)."""
  data_dir = dataset_fields.get(cfg, "data_dir", None)
  manual_dir = dataset_fields.get(cfg, "manual_dir", None)
  kwargs = {}
  if name == "frey_face":
    kwargs["allow_download"] = bool(dataset_fields.get(cfg, "download", True))
  builder = tfds.builder(spec.tfds_name, data_dir=data_dir, **kwargs)
  download_config = tfds.download.DownloadConfig(
      manual_dir=os.path.expanduser(manual_dir) if manual_dir else None,
      # Local builders are generated here: never look them up on GCS.
      try_download_gcs=not spec.local)
  builder.download_and_prepare(download_config=download_config)
  return builder


def tfds_data_source(name: str, dataset_config, pre: Preprocess) -> DataSource:
  """The `DataSource` of a TFDS dataset (a name in `TFDS_SPECS`), prepared on first use;
  `pre`: the host preprocessing of its images."""
  spec = TFDS_SPECS[name]
  if name == "bair":
    view = dataset_fields.get(dataset_config, "bair_view", BAIR_VIEWS[0])
    if view not in BAIR_VIEWS:
      raise ValueError(f"`dataset.bair_view`={view!r} must be one of "
                       f"{', '.join(BAIR_VIEWS)} (the camera; the SVG reference's is "
                       f"{BAIR_VIEWS[0]}).")
    spec = dataclasses.replace(spec, image_key=view)
  builder = make_builder(name, spec, dataset_config)
  shuffle_buffer = int(dataset_fields.get(dataset_config, "shuffle_buffer", DEFAULT_SHUFFLE_BUFFER))
  clip_length = int(dataset_fields.get(dataset_config, "clip_length", DEFAULT_CLIP_LENGTH))
  origin = (f"built in, generated locally, stored in {builder.data_dir}" if spec.local and
            name == "synthetic_shapes" else f"TFDS {spec.tfds_name} in {builder.data_dir}")
  if spec.splits is None:
    # No test split (frey_face): read it all (small), in source order, and hold out a
    # seeded fraction in memory.
    return in_memory.holdout_source(name, load_in_source_order(builder, spec.image_key),
                                    dataset_config, pre, origin=origin)
  selection = dataset_fields.get(dataset_config, "clip_selection", DEFAULT_CLIP_SELECTION)
  if selection not in CLIP_SELECTIONS:
    raise ValueError(f"`dataset.clip_selection`={selection!r} must be one of "
                     f"{', '.join(CLIP_SELECTIONS)}.")
  backend = TfdsBackend(builder, spec, pre, shuffle_buffer, clip_length,
                        as_clips=bool(dataset_fields.get(dataset_config, "as_clips", False)),
                        clip_selection=selection)
  preprocessing = backend.preprocessing
  if backend.video:
    videos = " / ".join(f"{backend.units(s)[0]:,}" for s in splits.SPLITS)
    what = f"from {videos} videos of {backend.video_frames} frames ({spec.image_key})"
    if backend.as_clips:
      what += f", {clips_text(selection)} of {clip_length} frames of each"
    preprocessing = ", ".join(p for p in (what, preprocessing) if p)
  return DataSource(
      name=name, image_shape=backend.example_shape(),
      num_examples={s: backend.units(s)[0] * backend.frames for s in splits.SPLITS},
      _backend=backend, _origin=origin, _preprocessing=preprocessing)


class TfdsBackend:
  """A TFDS builder streamed with tf.data (shuffle encoded, skip, then decode)."""

  def __init__(self, builder, spec: TfdsSpec, preprocess: Preprocess,
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
    for batch in tfds.as_numpy(self._batched(ds, LOAD_BATCH, drop_remainder=False)):
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
      s = splits.epoch_seed(seed, epoch, process_index) if shuffle else None
      return self._frames(tfds_split, shuffle_seed=s)

    if not repeat:
      ds = epoch_ds(0).skip(start_batch * batch_size)
      yield from tfds.as_numpy(self._batched(ds, batch_size, drop_remainder=False))
      return
    # The smallest shard (in examples) fixes the batches per epoch for all processes.
    bpe = splits.batches_per_epoch((units // process_count) * self.frames * process_count,
                             batch_size, process_count, split)
    epoch, skip = divmod(start_batch, bpe)
    while True:
      ds = epoch_ds(epoch).take(bpe * batch_size).skip(skip * batch_size)
      yield from tfds.as_numpy(self._batched(ds, batch_size, drop_remainder=True))
      epoch, skip = epoch + 1, 0

