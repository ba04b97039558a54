"""Fast CPU forms of the conv VAE's layers (private to `models.conv_vae`).

Each layer computes the same function with the same parameters as the plain
(XLA-spelled) layer, in a form XLA:CPU runs several times faster:
  * stride-2 encoder convs take their input gradient from a phase convolution plus
    depth-to-space (`fast_strided_conv`, a custom VJP) instead of an lhs-dilated conv;
  * stride-2 transposed convs are a 3x3 conv to 4x the channels plus depth-to-space;
  * the output conv runs on the 2x2 phases of the last upsampling;
  * odd channel counts > 1 (RGB) are zero-padded to a multiple of 4.
tests/test_conv_vae.py checks each against the plain layer or an explicit reference.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# PyTorch's ConvTranspose2d(k=6, s=2, p=2) doubles the size; as an lhs-dilated
# convolution that is a padding of k - 1 - p = 3 on each side.
_UPSAMPLE_KERNEL = 6
_UPSAMPLE_PADDING = ((3, 3), (3, 3))


_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")


def padded_channels(c: int) -> int:
  """Channels a fast convolution computes with: odd counts > 1 rounded up to x4.

  XLA:CPU runs convolutions from or to an odd number (> 1) of channels, e.g. the
  3 of RGB, several times slower than from or to the next multiple of 4. The
  extra channels are zero (inputs) or zero kernel columns (outputs), so the
  function and its gradients are unchanged.
  """
  return c + (-c) % 4 if c > 1 and c % 2 else c


def depth_to_space(x: jax.Array, block: int = 2) -> jax.Array:
  """[B, H, W, block*block*C] -> [B, block*H, block*W, C], phase-major channels."""
  b, h, w, c = x.shape
  c_out = c // (block * block)
  x = x.reshape(b, h, w, block, block, c_out)
  x = x.transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h * block, w * block, c_out)


def upsample_conv_transpose(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """Stride-2, 6x6 transposed convolution as XLA spells it: an lhs-dilated conv.

  Args:
    x: [B, H, W, C_in].
    kernel: [6, 6, C_in, C_out] (HWIO).
  Returns:
    [B, 2H, 2W, C_out].
  """
  return jax.lax.conv_general_dilated(
      x, kernel, window_strides=(1, 1), padding=_UPSAMPLE_PADDING,
      lhs_dilation=(2, 2), dimension_numbers=_DIMENSION_NUMBERS)


def upsample_phases(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """`upsample_conv_transpose` before its last step: [B, H, W, 4*C_out], phase-major.

  Output pixel 2t+a (along each axis) of the dilated convolution only meets the
  taps k = 1-a, 3-a, 5-a of the kernel, applied to inputs t-1, t, t+1. So each of
  the four output phases (a, b) is a 3x3 'SAME' convolution with the sub-kernel
  kernel[1-a::2, 1-b::2]; one convolution to 4*C_out channels computes all four.
  `depth_to_space` of the result is the upsampled image.
  """
  kh, kw, c_in, c_out = kernel.shape
  assert (kh, kw) == (_UPSAMPLE_KERNEL, _UPSAMPLE_KERNEL), kernel.shape
  phases = [kernel[1 - a::2, 1 - b::2] for a in (0, 1) for b in (0, 1)]
  # [3, 3, C_in, 4, C_out] -> [3, 3, C_in, 4*C_out], phase-major as depth_to_space expects.
  stacked = jnp.stack(phases, axis=3).reshape(3, 3, c_in, 4 * c_out)
  return jax.lax.conv_general_dilated(
      x, stacked, window_strides=(1, 1), padding=((1, 1), (1, 1)),
      dimension_numbers=_DIMENSION_NUMBERS)


def upsample_depth_to_space(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """The same function as `upsample_conv_transpose`, computed without dilation:
  `upsample_phases` then depth-to-space. XLA:CPU runs this several times faster
  than the lhs-dilated form (forward and backward), for identical results."""
  return depth_to_space(upsample_phases(x, kernel), 2)


def phase_space_kernel(kernel: jax.Array, padding: int) -> tuple[jax.Array, tuple[int, int]]:
  """A stride-1 conv of a 2x-upsampled image, as a conv of its 2x2 phases.

  conv(depth_to_space(x), kernel, padding p) == depth_to_space(conv(x, K, pads))
  for x [B, H, W, 4*C_in] (phase-major channels), with the returned block kernel
  K [n, n, 4*C_in, 4*C_out] and per-axis padding `pads`. Along an axis, output
  pixel 2m+a reads input pixel 2m+a+i-p = 2(m+d)+s through tap i, so K holds
  kernel tap i = 2d + s - a + p at block offset d, input phase s, output phase a
  (zeros elsewhere).

  Args:
    kernel: [k, k, C_in, C_out] (HWIO).
    padding: the 'SAME'-style zero padding p of the full-resolution conv.
  Returns:
    (K, (low, high)) with the conv padding, in blocks, for both spatial axes.
  """
  k = kernel.shape[0]
  # Block offsets d = floor((a + i - p) / 2) over output phases a and taps i.
  low, high = -padding // 2, (k - padding) // 2
  n = high - low + 1
  select = np.zeros((n, 2, 2, k), np.float32)  # [offset, in phase s, out phase a, tap]
  for d in range(low, high + 1):
    for s in (0, 1):
      for a in (0, 1):
        i = 2 * d + s - a + padding
        if 0 <= i < k:
          select[d - low, s, a, i] = 1.0
  select = jnp.asarray(select, kernel.dtype)
  c_in, c_out = kernel.shape[2], kernel.shape[3]
  block = jnp.einsum("psai,qtbj,ijco->pqstcabo", select, select, kernel)
  return block.reshape(n, n, 4 * c_in, 4 * c_out), (-low, high)


class Upsample2x(nn.Module):
  """ConvTranspose2d(kernel 6, stride 2, padding 2) with a choice of algorithm.

  phase_output: return the output's 2x2 phases [B, H, W, 4*features] (fast only),
  whose depth_to_space is the output, for a following `OutputConv(phase_input)`.
  """
  features: int
  fast: bool = True
  phase_output: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param(
        "kernel", nn.initializers.lecun_normal(),
        (_UPSAMPLE_KERNEL, _UPSAMPLE_KERNEL, x.shape[-1], self.features))
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
    kernel, bias = kernel.astype(x.dtype), bias.astype(x.dtype)
    if self.phase_output:
      assert self.fast, "phase_output needs the fast form"
      return upsample_phases(x, kernel) + jnp.tile(bias, 4)
    fn = upsample_depth_to_space if self.fast else upsample_conv_transpose
    return fn(x, kernel) + bias


class OutputConv(nn.Module):
  """The decoder's last 'SAME' convolution; the same parameters as nn.Conv.

  fast: compute it with the kernel zero-padded to `padded_channels` output
  channels and slice them off (the same function and gradients).
  phase_input: x is given as the 2x2 phases [B, H/2, W/2, 4*C] of the image
  (`Upsample2x(phase_output=True)`); the conv runs on them with
  `phase_space_kernel`, on 4x fewer pixels with 4x the channels, which XLA:CPU
  runs ~2x faster for a few output channels. Same parameters and function.
  """
  features: int
  kernel_size: int = 5
  fast: bool = True
  phase_input: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel_size
    c_in = x.shape[-1] // 4 if self.phase_input else x.shape[-1]
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (k, k, c_in, self.features)).astype(x.dtype)
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
    padded = padded_channels(self.features) if self.fast else self.features
    if padded > self.features:
      kernel = jnp.pad(kernel, ((0, 0), (0, 0), (0, 0), (0, padded - self.features)))
    p = (k - 1) // 2
    if self.phase_input:
      block_kernel, pads = phase_space_kernel(kernel, p)
      y = jax.lax.conv_general_dilated(
          x, block_kernel, window_strides=(1, 1), padding=(pads, pads),
          dimension_numbers=_DIMENSION_NUMBERS)
      y = depth_to_space(y, 2)
    else:
      y = jax.lax.conv_general_dilated(
          x, kernel, window_strides=(1, 1), padding=((p, k - 1 - p), (p, k - 1 - p)),
          dimension_numbers=_DIMENSION_NUMBERS)
    return y[..., :self.features] + bias.astype(x.dtype)


def strided_conv(x: jax.Array, kernel: jax.Array, padding: int) -> jax.Array:
  """Stride-2 convolution, zero padding `padding` on every side (PyTorch Conv2d).

  Args:
    x: [B, H, W, C_in].
    kernel: [K, K, C_in, C_out] (HWIO).
  Returns:
    [B, (H + 2p - K) // 2 + 1, (W + 2p - K) // 2 + 1, C_out].
  """
  return jax.lax.conv_general_dilated(
      x, kernel, window_strides=(2, 2), padding=((padding, padding), (padding, padding)),
      dimension_numbers=_DIMENSION_NUMBERS)


def strided_conv_input_grad(cotangent: jax.Array, kernel: jax.Array,
                            input_hw: tuple[int, int], padding: int) -> jax.Array:
  """The input gradient of `strided_conv`, computed without lhs dilation.

  XLA computes it as an lhs-dilated convolution, which its CPU backend runs 3-6x
  slower than a plain one. Along each axis, input pixel i = 2q + r - p only meets
  the taps k = 2d + r of the kernel, applied to output q - d; so each of the four
  input phases (r_h, r_w) is a stride-1 convolution of the cotangent with the
  flipped sub-kernel kernel[r::2] (in/out swapped). One convolution to 4*C_in
  channels computes all four, depth-to-space interleaves them, and the padding
  is cropped off.

  Args:
    cotangent: [B, H_out, W_out, C_out].
    kernel: [K, K, C_in, C_out].
    input_hw: (H, W) of the input.
    padding: the forward convolution's padding.
  Returns:
    [B, H, W, C_in].
  """
  k = kernel.shape[0]
  k_even = k + k % 2
  taps = k_even // 2
  kernel = jnp.pad(kernel, ((0, k_even - k), (0, k_even - k), (0, 0), (0, 0)))
  c_in, c_out = kernel.shape[2], kernel.shape[3]
  phases = [kernel[r_h::2, r_w::2][::-1, ::-1].transpose(0, 1, 3, 2)
            for r_h in (0, 1) for r_w in (0, 1)]
  stacked = jnp.stack(phases, axis=3).reshape(taps, taps, c_out, 4 * c_in)
  # Enough phase rows q that 2q + r covers every padded input row.
  pads = [(taps - 1, max((n - 1 + padding) // 2 + 1 - o, 0))
          for n, o in zip(input_hw, cotangent.shape[1:3])]
  phased = jax.lax.conv_general_dilated(
      cotangent, stacked, window_strides=(1, 1), padding=pads,
      dimension_numbers=_DIMENSION_NUMBERS)
  h, w = input_hw
  return depth_to_space(phased, 2)[:, padding:padding + h, padding:padding + w]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def fast_strided_conv(x: jax.Array, kernel: jax.Array, padding: int) -> jax.Array:
  """`strided_conv` with its input gradient from `strided_conv_input_grad`.

  Reverse mode (grad, vmap of grad, grad of grad) works; forward mode (jax.jvp,
  jax.jacfwd) does not, as for any custom_vjp: use the plain layers
  (model.conv_impl="xla") for that.
  """
  return strided_conv(x, kernel, padding)


def _fast_strided_conv_fwd(x, kernel, padding):
  return strided_conv(x, kernel, padding), (x, kernel)


def _fast_strided_conv_bwd(padding, residuals, cotangent):
  x, kernel = residuals
  _, kernel_vjp = jax.vjp(lambda k: strided_conv(x, k, padding), kernel)
  (kernel_grad,) = kernel_vjp(cotangent)
  input_grad = strided_conv_input_grad(cotangent, kernel, x.shape[1:3], padding)
  return input_grad, kernel_grad


fast_strided_conv.defvjp(_fast_strided_conv_fwd, _fast_strided_conv_bwd)


class EncoderConv(nn.Module):
  """nn.Conv(features, (k, k), strides, padding p) with the same parameters.

  fast: stride-2 layers take their input gradient from
  `strided_conv_input_grad`; inputs with an odd channel count are zero-padded
  to `padded_channels`.
  """
  features: int
  kernel_size: int
  stride: int
  padding: int
  fast: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k, c_in = self.kernel_size, x.shape[-1]
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (k, k, c_in, self.features))
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    if self.fast and padded_channels(c_in) > c_in:
      extra = padded_channels(c_in) - c_in
      x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, extra)))
      kernel = jnp.pad(kernel, ((0, 0), (0, 0), (0, extra), (0, 0)))
    p = self.padding
    if self.stride == 2:
      y = (fast_strided_conv if self.fast else strided_conv)(x, kernel, p)
    elif self.stride == 1:
      y = jax.lax.conv_general_dilated(
          x, kernel, window_strides=(1, 1), padding=((p, p), (p, p)),
          dimension_numbers=_DIMENSION_NUMBERS)
    else:
      raise ValueError(f"stride must be 1 or 2; got {self.stride}")
    return y + bias.astype(self.dtype)
