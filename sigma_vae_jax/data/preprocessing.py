"""Preprocessing: uint8 images on the host, float32 on device.

Host side (uint8 in, uint8 out): `Preprocess`, a centre crop (`dataset.center_crop`,
pixels) then a bilinear, antialiased resize (`dataset.image_size`), on tf.data
elements (`tf_apply`) or host arrays (`np_apply`); `parse_size` reads those two
fields; `check_images` checks uint8 [N, H, W, C] (or clips [N, L, H, W, C]).
Device side: `to_float`, uint8 -> float32 in [0, 1], the one conversion, inside the
jitted step.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf

# Images per chunk when host arrays go through TensorFlow (preprocessing, loading).
LOAD_BATCH = 1024


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


def parse_size(value, field: str) -> tuple[int, int] | None:
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
class Preprocess:
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

  def simplified(self, native: Sequence[int]) -> "Preprocess":
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
    out = [self.tf_apply(tf.constant(images[i:i + LOAD_BATCH])).numpy()
           for i in range(0, len(images), LOAD_BATCH)]
    if not out:
      return np.zeros((0,) + self.output_shape(images.shape[1:]), np.uint8)
    return np.concatenate(out)
