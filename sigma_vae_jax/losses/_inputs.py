"""Input handling shared by every loss: dtype checks and promotion, shape checks
(chex, at trace time), the 8-bit level of an image value, and `check_images`, the
host-side validation of image data."""

from __future__ import annotations

import chex
import jax.numpy as jnp
import numpy as np


def _dtype_of(x):
  dtype = getattr(x, "dtype", None)
  if dtype is None:
    dtype = np.asarray(x).dtype
  return np.dtype(dtype)


def _check_image_dtype(x, fn_name: str) -> None:
  """Raise TypeError unless `x` is floating point (trace-time check)."""
  dtype = _dtype_of(x)
  if jnp.issubdtype(dtype, jnp.floating):
    return
  if jnp.issubdtype(dtype, jnp.bool_):
    hint = "cast to a floating dtype (e.g. x.astype(jnp.float32))"
  elif jnp.issubdtype(dtype, jnp.integer):
    hint = "divide by 255 (e.g. x.astype(jnp.float32) / 255.0)"
  else:
    hint = "convert to real floating-point values in [0, 1]"
  raise TypeError(
      f"{fn_name}: expected floating-point images in [0, 1]; got {dtype} "
      f"\u2014 {hint}")


def _compute_dtype(*args):
  """float32 by default; float64 only if an input is float64 (x64 mode)."""
  return jnp.promote_types(jnp.result_type(*args), jnp.float32)


def _as_float(dtype, *args):
  return tuple(jnp.asarray(a, dtype) for a in args)


def _check_broadcast_to(target_shape, fn_name: str, **named_shapes) -> None:
  """chex check (trace time) that each parameter shape broadcasts to x's."""
  for name, shape in named_shapes.items():
    try:
      chex.assert_is_broadcastable(tuple(shape), tuple(target_shape))
    except AssertionError:
      raise AssertionError(
          f"{fn_name}: `{name}` with shape {tuple(shape)} does not broadcast "
          f"to the data shape {tuple(target_shape)}") from None


def _levels(x, num_bins: int):
  """Integer level round((num_bins-1) x), clipped to [0, num_bins-1]."""
  return jnp.clip(jnp.round(x * (num_bins - 1)), 0, num_bins - 1)


def check_images(x):
  """Host-side validation of image data (call outside ``jit``).

  Raises:
    TypeError: if ``x`` is not floating point (e.g. uint8: divide by 255).
    ValueError: if any value is NaN/inf or outside [0, 1].

  Returns:
    ``x`` unchanged, so it can be used inline.
  """
  _check_image_dtype(x, "check_images")
  try:
    arr = np.asarray(x)
  except Exception as e:  # e.g. a tracer under jit
    raise TypeError(
        "check_images is a host-side check; call it outside jax.jit / "
        f"jax.vmap on concrete arrays ({type(e).__name__})") from None
  if arr.size == 0:
    return x
  finite = np.isfinite(arr)
  if not finite.all():
    raise ValueError(
        f"check_images: {int((~finite).sum())} non-finite value(s) "
        "(NaN or inf) in the images")
  lo, hi = float(arr.min()), float(arr.max())
  if lo < 0.0 or hi > 1.0:
    raise ValueError(
        f"check_images: expected floating-point images in [0, 1]; values "
        f"range over [{lo:g}, {hi:g}]")
  return x
