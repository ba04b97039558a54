"""The conv VAE: output shapes for every decoder and image size; each fast layer
computing exactly the plain layer (same parameters, outputs and gradients); the
bfloat16 compute option."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flax.linen as nn

from sigma_vae_jax import likelihoods
from sigma_vae_jax.models import _conv_kernels as kernels
from sigma_vae_jax.models import conv_vae
from configs import default as default_config

IMAGE_SHAPES = [(28, 28, 1), (32, 32, 3), (28, 20, 1), (64, 64, 3)]


def _decoder_config(name):
  config = default_config.get_config().decoder
  config.name = name
  if name == "beta":
    config.beta = 0.5
  return config


@pytest.mark.parametrize("name", sorted(likelihoods.LIKELIHOODS))
@pytest.mark.parametrize("image_shape", IMAGE_SHAPES)
def test_output_shapes_for_every_decoder_and_size(name, image_shape):
  decoder = likelihoods.get_likelihood(_decoder_config(name))
  model = conv_vae.ConvVAE(image_shape, decoder.num_outputs(image_shape[-1]), latent_dim=20)
  x = jnp.zeros((2,) + image_shape)
  rng = jax.random.PRNGKey(0)
  variables = jax.eval_shape(model.init, rng, x, rng)
  output = jax.eval_shape(model.apply, variables, x, rng)
  out = output.decoder_outputs
  assert out.shape == (2,) + image_shape[:2] + (decoder.num_outputs(image_shape[-1]),)
  assert output.target.shape == (2,) + image_shape
  assert set(output.latents) == {"z"}
  for term in (output.latents["z"].kl, output.latents["z"].log_q, output.latents["z"].log_p):
    assert term.shape == (2, 20)

  nll = jax.eval_shape(
      lambda o: decoder.nll(x, o, decoder.init_params(), decoder.init_state(),
                            train=True).nll, out)
  expected = (2,) + image_shape[:2] if name == "logistic_mixture" else (2,) + image_shape
  assert nll.shape == expected
  mean_image = jax.eval_shape(
      lambda o: decoder.mean(o, decoder.init_params(), decoder.init_state()), out)
  assert mean_image.shape == (2,) + image_shape


def test_encoder_matches_paper_architecture():
  model = conv_vae.ConvVAE((28, 28, 3), 3, latent_dim=20)
  rng = jax.random.PRNGKey(0)
  params = jax.eval_shape(model.init, rng, jnp.zeros((1, 28, 28, 3)), rng)["params"]
  enc, dec = params["encoder"], params["decoder"]
  assert enc["Conv_0"]["kernel"].shape == (3, 3, 3, 32)
  assert enc["Conv_1"]["kernel"].shape == (4, 4, 32, 64)
  assert enc["Conv_2"]["kernel"].shape == (5, 5, 64, 128)
  assert enc["mean"]["kernel"].shape == (7 * 7 * 128, 20)
  assert dec["Dense_0"]["kernel"].shape == (20, 7 * 7 * 128)
  assert dec["Upsample2x_0"]["kernel"].shape == (6, 6, 128, 64)
  assert dec["Upsample2x_1"]["kernel"].shape == (6, 6, 64, 32)
  assert dec["Conv_0"]["kernel"].shape == (5, 5, 32, 3)


def _reference_transposed_conv(x, kernel):
  """PyTorch-style ConvTranspose2d(stride 2, padding 2) by explicit scatter, float64.

  Our kernel is applied unflipped in the lhs-dilated form, which is a transposed
  convolution with the flipped kernel: out[2i + k - 2] += x[i] * kernel[5 - k].
  """
  x = np.asarray(x, np.float64)
  w = np.asarray(kernel, np.float64)[::-1, ::-1]
  b, h, wd, _ = x.shape
  out = np.zeros((b, 2 * h + 4, 2 * wd + 4, w.shape[-1]))
  for ki in range(6):
    for kj in range(6):
      out[:, ki:ki + 2 * h:2, kj:kj + 2 * wd:2] += np.einsum("bhwc,cd->bhwd", x, w[ki, kj])
  return out[:, 2:2 + 2 * h, 2:2 + 2 * wd]


@pytest.mark.parametrize("shape", [(2, 7, 7, 5), (1, 7, 5, 3), (2, 4, 4, 2)])
def test_both_upsample_forms_equal_an_explicit_transposed_conv(shape):
  rng_x, rng_k = jax.random.split(jax.random.PRNGKey(shape[1]))
  x = jax.random.normal(rng_x, shape)
  kernel = jax.random.normal(rng_k, (6, 6, shape[-1], 4))
  reference = _reference_transposed_conv(x, kernel)
  np.testing.assert_allclose(kernels.upsample_conv_transpose(x, kernel), reference,
                             rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(kernels.upsample_depth_to_space(x, kernel), reference,
                             rtol=1e-4, atol=1e-4)


def test_fast_and_plain_models_are_the_same_function_with_same_gradients():
  image_shape = (28, 20, 3)
  plain = conv_vae.ConvVAE(image_shape, 3, latent_dim=8, base_channels=8, fast_upsample=False)
  fast = conv_vae.ConvVAE(image_shape, 3, latent_dim=8, base_channels=8, fast_upsample=True)
  rng = jax.random.PRNGKey(1)
  x = jax.random.uniform(rng, (3,) + image_shape)
  params = plain.init(rng, x, rng)
  assert jax.tree.structure(params) == jax.tree.structure(fast.init(rng, x, rng))

  def loss(model, p):
    output = model.apply(p, x, rng)
    return jnp.sum(output.decoder_outputs ** 2) + jnp.sum(output.latents["z"].kl)

  out_plain = plain.apply(params, x, rng).decoder_outputs
  out_fast = fast.apply(params, x, rng).decoder_outputs
  np.testing.assert_allclose(out_fast, out_plain, rtol=1e-5, atol=1e-5)
  grads_plain = jax.grad(lambda p: loss(plain, p))(params)
  grads_fast = jax.grad(lambda p: loss(fast, p))(params)
  for gp, gf in zip(jax.tree.leaves(grads_plain), jax.tree.leaves(grads_fast)):
    np.testing.assert_allclose(gf, gp, rtol=1e-4, atol=1e-4 * float(jnp.abs(gp).max()))


@pytest.mark.parametrize("shape", [(30, 32, 3), (32, 6, 1), (2, 2, 1), (32, 18, 3)])
def test_image_shapes_the_model_cannot_take_are_refused(shape):
  with pytest.raises(ValueError, match="dataset.image_size"):
    conv_vae.validate(conv_vae.default_config(), shape)


def test_image_shapes_the_model_takes_are_accepted():
  for shape in [(28, 20, 1), (64, 64, 3), (28, 28, 3)]:
    conv_vae.validate(conv_vae.default_config(), shape)


# ---- fast output convolution (odd channel counts padded to a multiple of 4) ------


@pytest.mark.parametrize("c_out", [1, 2, 3, 5, 6, 100])
def test_fast_output_conv_is_nn_conv_with_the_same_parameters_and_gradients(c_out):
  x = jax.random.normal(jax.random.PRNGKey(c_out), (2, 12, 8, 6))
  reference = nn.Conv(c_out, (5, 5), strides=1, padding=((2, 2), (2, 2)))
  params = reference.init(jax.random.PRNGKey(0), x)
  assert kernels.padded_channels(c_out) % (4 if c_out % 2 and c_out > 1 else 1) == 0
  g = jax.random.normal(jax.random.PRNGKey(1), (2, 12, 8, c_out))
  loss = lambda module: lambda p, x: jnp.sum(module.apply(p, x) * g)
  ref_grads = jax.grad(loss(reference), argnums=(0, 1))(params, x)
  for fast in (False, True):
    conv = kernels.OutputConv(c_out, 5, fast=fast)
    ours = conv.init(jax.random.PRNGKey(0), x)
    assert jax.tree.structure(ours) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(params)):
      np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(conv.apply(params, x), reference.apply(params, x),
                               rtol=1e-5, atol=1e-5)
    grads = jax.grad(loss(conv), argnums=(0, 1))(params, x)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


def test_all_fast_paths_off_and_on_give_the_same_model():
  image_shape = (32, 32, 3)
  kwargs = dict(latent_dim=8, base_channels=4)
  plain = conv_vae.ConvVAE(image_shape, 3, fast_encoder=False, fast_upsample=False,
                     fast_output=False, **kwargs)
  fast = conv_vae.ConvVAE(image_shape, 3, **kwargs)
  assert fast.fast_encoder and fast.fast_upsample and fast.fast_output
  rng = jax.random.PRNGKey(4)
  x = jax.random.uniform(rng, (2,) + image_shape)
  params = plain.init(rng, x, rng)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(fast.init(rng, x, rng))):
    np.testing.assert_array_equal(a, b)
  loss = lambda model: lambda p: jnp.sum(model.apply(p, x, rng).decoder_outputs ** 2)
  np.testing.assert_allclose(fast.apply(params, x, rng).decoder_outputs, plain.apply(params, x, rng).decoder_outputs,
                             rtol=1e-5, atol=1e-5)
  grads_plain, grads_fast = jax.grad(loss(plain))(params), jax.grad(loss(fast))(params)
  for gp, gf in zip(jax.tree.leaves(grads_plain), jax.tree.leaves(grads_fast)):
    np.testing.assert_allclose(gf, gp, rtol=1e-4, atol=1e-4 * float(jnp.abs(gp).max()))


# ---- fast encoder (stride-2 input gradients without lhs dilation; RGB padded to 4) --


def _reference_strided_conv_input_grad(cotangent, kernel, input_hw, padding):
  """d/dx of sum(conv(x, kernel, stride 2, padding) * cotangent), by explicit scatter."""
  ct = np.asarray(cotangent, np.float64)
  w = np.asarray(kernel, np.float64)
  k = w.shape[0]
  b, ho, wo, _ = ct.shape
  h, wd = input_hw
  grad = np.zeros((b, h + 2 * padding + k, wd + 2 * padding + k, w.shape[2]))
  for i in range(k):
    for j in range(k):
      grad[:, i:i + 2 * ho:2, j:j + 2 * wo:2] += np.einsum("bhwo,co->bhwc", ct, w[i, j])
  return grad[:, padding:padding + h, padding:padding + wd]


@pytest.mark.parametrize("input_hw,k,padding", [
    ((28, 28), 4, 1), ((14, 14), 5, 2), ((28, 20), 4, 1), ((14, 10), 5, 2),
    ((16, 16), 5, 2), ((7, 9), 4, 1), ((6, 6), 3, 1), ((9, 8), 5, 0)])
def test_strided_conv_input_grad_is_the_transposed_convolution(input_hw, k, padding):
  rng_x, rng_k, rng_c = jax.random.split(jax.random.PRNGKey(k + padding), 3)
  x = jax.random.normal(rng_x, (2,) + input_hw + (3,))
  kernel = jax.random.normal(rng_k, (k, k, 3, 5))
  y, vjp = jax.vjp(lambda x: kernels.strided_conv(x, kernel, padding), x)
  cotangent = jax.random.normal(rng_c, y.shape)
  ours = kernels.strided_conv_input_grad(cotangent, kernel, input_hw, padding)
  reference = _reference_strided_conv_input_grad(cotangent, kernel, input_hw, padding)
  assert ours.shape == x.shape
  np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(vjp(cotangent)[0], reference, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("c_in,stride,k,padding", [
    (3, 1, 3, 1), (1, 1, 3, 1), (4, 2, 4, 1), (6, 2, 5, 2), (3, 2, 4, 1)])
def test_fast_encoder_conv_is_nn_conv_with_the_same_parameters_and_gradients(
    c_in, stride, k, padding):
  x = jax.random.normal(jax.random.PRNGKey(c_in), (2, 12, 8, c_in))
  reference = nn.Conv(7, (k, k), strides=stride, padding=((padding, padding),) * 2)
  params = reference.init(jax.random.PRNGKey(0), x)
  g = jax.random.normal(jax.random.PRNGKey(1), reference.apply(params, x).shape)
  loss = lambda module: lambda p, x: jnp.sum(jnp.sin(module.apply(p, x)) * g)
  ref_grads = jax.grad(loss(reference), argnums=(0, 1))(params, x)
  for fast in (False, True):
    conv = kernels.EncoderConv(7, k, stride, padding, fast=fast)
    ours = conv.init(jax.random.PRNGKey(0), x)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(params)):
      np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(conv.apply(params, x), reference.apply(params, x),
                               rtol=1e-5, atol=1e-5)
    grads = jax.jit(jax.grad(loss(conv), argnums=(0, 1)))(params, x)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


def test_fast_encoder_supports_per_example_gradients_and_gradients_of_gradients():
  image_shape = (16, 12, 3)
  plain = conv_vae.ConvEncoder(4, base_channels=4, fast=False)
  fast = conv_vae.ConvEncoder(4, base_channels=4, fast=True)
  x = jax.random.uniform(jax.random.PRNGKey(0), (3,) + image_shape)
  params = plain.init(jax.random.PRNGKey(1), x)

  def loss(model):
    return lambda p, x: jnp.sum(jnp.tanh(model.apply(p, x[None])[0]) ** 2)

  per_example = lambda model: jax.jit(jax.vmap(jax.grad(loss(model)), (None, 0)))(params, x)
  for a, b in zip(jax.tree.leaves(per_example(fast)), jax.tree.leaves(per_example(plain))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  # Gradient of a gradient norm (e.g. a gradient penalty) goes through the custom VJP.
  penalty = lambda model: jax.jit(jax.grad(
      lambda p: jnp.sum(jax.grad(loss(model), argnums=1)(p, x[0]) ** 2)))(params)
  for a, b in zip(jax.tree.leaves(penalty(fast)), jax.tree.leaves(penalty(plain))):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-6)


def test_forward_mode_needs_the_plain_encoder():
  x = jnp.ones((1, 8, 8, 3))
  plain = conv_vae.ConvEncoder(2, base_channels=2, fast=False)
  params = plain.init(jax.random.PRNGKey(0), x)
  f = lambda model: lambda x: model.apply(params, x)[0]
  jax.jvp(f(plain), (x,), (x,))  # plain layers: forward mode works
  with pytest.raises(TypeError, match="custom_vjp"):
    jax.jvp(f(conv_vae.ConvEncoder(2, base_channels=2, fast=True)), (x,), (x,))


# ---- bfloat16 compute ----------------------------------------------------------------


def test_bfloat16_model_keeps_float32_parameters_and_outputs_and_stays_close():
  image_shape = (16, 16, 3)
  kwargs = dict(latent_dim=8, base_channels=8)
  f32 = conv_vae.ConvVAE(image_shape, 3, **kwargs)
  bf16 = conv_vae.ConvVAE(image_shape, 3, dtype=jnp.bfloat16, **kwargs)
  rng = jax.random.PRNGKey(0)
  x = jax.random.uniform(rng, (4,) + image_shape)
  params = f32.init(rng, x, rng)
  assert all(p.dtype == jnp.float32
             for p in jax.tree.leaves(bf16.init(rng, x, rng)))
  encode = lambda model: jax.jit(lambda p: model.apply(p, x, method="encode"))
  mean32, log_var32 = encode(f32)(params)
  mean16, log_var16 = encode(bf16)(params)
  out32 = jax.jit(f32.apply)(params, x, rng).decoder_outputs
  out16 = jax.jit(bf16.apply)(params, x, rng).decoder_outputs
  for a, b in ((out16, out32), (mean16, mean32), (log_var16, log_var32)):
    assert a.dtype == jnp.float32
    # bfloat16 keeps 8 bits of mantissa: a relative error of ~2^-8 per op.
    np.testing.assert_allclose(a, b, rtol=0.05, atol=0.05 * float(jnp.abs(b).max()))
  grads = jax.jit(jax.grad(lambda p: jnp.sum(bf16.apply(p, x, rng).decoder_outputs ** 2)))(params)
  assert all(g.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(g)))
             for g in jax.tree.leaves(grads))


# ---- output conv on the 2x2 phases of the last upsampling ----------------------------


@pytest.mark.parametrize("k,padding", [(5, 2), (3, 1), (4, 1), (5, 1), (1, 0), (6, 3)])
def test_phase_space_kernel_convolves_the_upsampled_image(k, padding):
  kernel = jax.random.normal(jax.random.PRNGKey(k), (k, k, 3, 2))
  phases = jax.random.normal(jax.random.PRNGKey(padding), (2, 5, 4, 4 * 3))
  image = np.asarray(kernels.depth_to_space(phases), np.float64)  # [2, 10, 8, 3]
  # Reference: the 'SAME'-style conv of the full-resolution image, by explicit sums.
  padded = np.pad(image, ((0, 0), (padding, k - 1 - padding), (padding, k - 1 - padding),
                          (0, 0)))
  w = np.asarray(kernel, np.float64)
  reference = sum(np.einsum("bhwc,co->bhwo", padded[:, i:i + 10, j:j + 8], w[i, j])
                  for i in range(k) for j in range(k))
  block, pads = kernels.phase_space_kernel(kernel, padding)
  out = jax.lax.conv_general_dilated(phases, block, (1, 1), (pads, pads),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(kernels.depth_to_space(out), reference, rtol=1e-4, atol=1e-4)


def test_phase_output_conv_is_nn_conv_of_the_upsampled_image_with_the_same_gradients():
  phases = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 4, 4 * 5))
  image = kernels.depth_to_space(phases)
  reference = nn.Conv(3, (5, 5), strides=1, padding=((2, 2), (2, 2)))
  params = reference.init(jax.random.PRNGKey(1), image)
  ours = kernels.OutputConv(3, 5, fast=True, phase_input=True)
  for a, b in zip(jax.tree.leaves(ours.init(jax.random.PRNGKey(1), phases)),
                  jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)
  g = jax.random.normal(jax.random.PRNGKey(2), (2, 12, 8, 3))
  ref_loss = lambda p, x: jnp.sum(reference.apply(p, kernels.depth_to_space(x)) * g)
  our_loss = lambda p, x: jnp.sum(ours.apply(p, x) * g)
  np.testing.assert_allclose(our_loss(params, phases), ref_loss(params, phases), rtol=1e-5)
  ref_grads = jax.grad(ref_loss, argnums=(0, 1))(params, phases)
  our_grads = jax.grad(our_loss, argnums=(0, 1))(params, phases)
  for a, b in zip(jax.tree.leaves(our_grads), jax.tree.leaves(ref_grads)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


def test_upsample_phase_output_is_the_output_before_depth_to_space():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 3, 6))
  plain = kernels.Upsample2x(4, fast=True)
  params = plain.init(jax.random.PRNGKey(1), x)
  params = jax.tree.map(lambda p: p + 0.1, params)  # a non-zero bias too
  phased = kernels.Upsample2x(4, fast=True, phase_output=True).apply(params, x)
  assert phased.shape == (2, 5, 3, 16)
  np.testing.assert_allclose(kernels.depth_to_space(phased), plain.apply(params, x),
                             rtol=1e-6, atol=1e-6)


# ---- model.conv_impl ----------------------------------------------------------------


def test_conv_impl_picks_the_kernels_and_auto_means_fast_only_on_cpu():
  assert conv_vae.resolve_conv_impl("auto", "cpu") == "fast"
  assert conv_vae.resolve_conv_impl("auto", "gpu") == "xla"
  assert conv_vae.resolve_conv_impl("auto", "tpu") == "xla"
  assert conv_vae.resolve_conv_impl("xla", "cpu") == "xla"
  config = conv_vae.default_config()
  for impl, fast in (("xla", False), ("fast", True)):
    config.conv_impl = impl
    model = conv_vae.build(config, (8, 8, 3), 3)
    assert (model.fast_encoder, model.fast_upsample, model.fast_output) == (fast,) * 3
  config.conv_impl = "cudnn"
  with pytest.raises(ValueError, match="model.conv_impl"):
    conv_vae.validate(config, (8, 8, 3))
