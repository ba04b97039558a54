"""Wiring of the conv VAE (models/conv_vae.py) against a float64 numpy forward pass
written from the paper's App. B / the authors' PyTorch layers: which tensor each layer
sees (input mapping, ReLUs, paddings, the sampled z), not only shapes.

The numpy pass uses the model's parameters (random, not the initialisers') and its
own convolutions (loops over kernel offsets), so a one-line change in the model's
wiring changes the numbers compared here.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sigma_vae_jax.models import conv_vae

H, W, C, LATENT, BASE, B = 8, 8, 3, 4, 4, 3


def _conv(x, kernel, bias, stride, pad):
  """PyTorch Conv2d (cross-correlation, zero padding `pad`) on NHWC, HWIO kernel."""
  x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  k = kernel.shape[0]
  ho = (x.shape[1] - k) // stride + 1
  wo = (x.shape[2] - k) // stride + 1
  out = np.zeros((x.shape[0], ho, wo, kernel.shape[-1]))
  for i in range(k):
    for j in range(k):
      patch = x[:, i:i + stride * ho:stride, j:j + stride * wo:stride]
      out += np.einsum("bhwc,cd->bhwd", patch, kernel[i, j])
  return out + bias


def _conv_transpose(x, kernel, bias):
  """ConvTranspose2d(6x6, stride 2, padding 2) by scatter; the model's kernel is the
  PyTorch kernel flipped in both spatial axes (the lhs-dilated form)."""
  w = kernel[::-1, ::-1]
  b, h, wd, _ = x.shape
  out = np.zeros((b, 2 * h + 4, 2 * wd + 4, w.shape[-1]))
  for i in range(6):
    for j in range(6):
      out[:, i:i + 2 * h:2, j:j + 2 * wd:2] += np.einsum("bhwc,cd->bhwd", x, w[i, j])
  return out[:, 2:2 + 2 * h, 2:2 + 2 * wd] + bias


def _relu(a):
  return np.maximum(a, 0.0)


def _encoder(p, x):
  """x in [0, 1] goes in as it is (the reference feeds ToTensor() images)."""
  h = _relu(_conv(x, p["Conv_0"]["kernel"], p["Conv_0"]["bias"], 1, 1))
  h = _relu(_conv(h, p["Conv_1"]["kernel"], p["Conv_1"]["bias"], 2, 1))
  h = _relu(_conv(h, p["Conv_2"]["kernel"], p["Conv_2"]["bias"], 2, 2))
  h = h.reshape(h.shape[0], -1)
  return (h @ p["mean"]["kernel"] + p["mean"]["bias"],
          h @ p["log_var"]["kernel"] + p["log_var"]["bias"])


def _decoder(p, z):
  h = _relu(z @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"])
  h = h.reshape(z.shape[0], H // 4, W // 4, 4 * BASE)
  h = _relu(_conv_transpose(h, p["Upsample2x_0"]["kernel"], p["Upsample2x_0"]["bias"]))
  h = _relu(_conv_transpose(h, p["Upsample2x_1"]["kernel"], p["Upsample2x_1"]["bias"]))
  return _conv(h, p["Conv_0"]["kernel"], p["Conv_0"]["bias"], 1, 2)


def _normal_logpdf(z, mean, log_var):
  return -0.5 * (np.log(2 * np.pi) + log_var + (z - mean) ** 2 / np.exp(log_var))


def _setup(fast):
  model = conv_vae.ConvVAE((H, W, C), C, latent_dim=LATENT, base_channels=BASE,
                           fast_encoder=fast, fast_upsample=fast, fast_output=fast)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, H, W, C)),
                          jax.random.PRNGKey(0))["params"]
  rng = np.random.default_rng(0)
  # Every weight and bias random (biases too, so a dropped bias shows); scaled so that
  # about half the ReLU inputs are negative.
  params = jax.tree.map(lambda s: rng.normal(0.0, 0.3, s.shape).astype(np.float32), shapes)
  x = rng.uniform(0.0, 1.0, (B, H, W, C)).astype(np.float32)
  return model, params, x


@pytest.fixture(scope="module")
def setup():
  return _setup(fast=True)


def _p64(params):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), params)


@pytest.mark.parametrize("fast", [True, False])
def test_encoder_and_decoder_are_the_papers_layers(fast):
  model, params, x = _setup(fast)
  v = {"params": params}
  mean, log_var = model.apply(v, x, method=conv_vae.ConvVAE.encode)
  ref_mean, ref_log_var = _encoder(_p64(params)["encoder"], np.float64(x))
  np.testing.assert_allclose(mean, ref_mean, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(log_var, ref_log_var, rtol=1e-4, atol=1e-4)
  z = np.random.default_rng(1).normal(size=(B, LATENT)).astype(np.float32)
  out = model.apply(v, z, method=conv_vae.ConvVAE.decode)
  np.testing.assert_allclose(out, _decoder(_p64(params)["decoder"], np.float64(z)),
                             rtol=1e-4, atol=1e-4)


def test_call_decodes_a_posterior_sample_and_scores_it(setup):
  """__call__: z ~ N(mean, exp(log_var)) (a sample, checked by its moments over many
  keys), the decoder reads that z, and kl / log_q / log_p are those of that z."""
  model, params, x = setup
  v = {"params": params}
  keys = jax.random.split(jax.random.PRNGKey(3), 1000)

  def one(key):
    out, inter = model.apply(v, x, key, mutable=["intermediates"])
    return out, inter["intermediates"]["z"][0]

  outs, zs = jax.jit(jax.vmap(one))(keys)
  zs = np.asarray(zs, np.float64)  # [K, B, L]
  p64 = _p64(params)
  mean, log_var = _encoder(p64["encoder"], np.float64(x))
  std = np.exp(0.5 * log_var)
  # Moments of 1000 draws: the standard error of the mean is std / 32, of the std std / 45.
  np.testing.assert_allclose(zs.mean(0), mean, atol=float(5 * std.max() / 32))
  np.testing.assert_allclose(zs.std(0), std, rtol=0.15)
  # Different keys give different z (a sample, not the mean).
  assert np.abs(zs[0] - zs[1]).min() > 0
  # The decoder reads the drawn z (first few draws, float64 numpy decoder).
  for k in range(3):
    np.testing.assert_allclose(outs.decoder_outputs[k], _decoder(p64["decoder"], zs[k]),
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(outs.target[k], x)
    group = jax.tree.map(lambda a: a[k], outs.latents["z"])
    np.testing.assert_allclose(group.log_q, _normal_logpdf(zs[k], mean, log_var),
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(group.log_p, _normal_logpdf(zs[k], 0.0, 0.0),
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(group.kl, 0.5 * (np.exp(log_var) + mean ** 2 - 1 - log_var),
                               rtol=1e-4, atol=1e-4)


def test_reconstruct_and_sample_decode_the_means_and_scaled_prior_draws(setup):
  model, params, x = setup
  v = {"params": params}
  p64 = _p64(params)
  mean, _ = _encoder(p64["encoder"], np.float64(x))
  np.testing.assert_allclose(model.apply(v, x, method=conv_vae.ConvVAE.reconstruct),
                             _decoder(p64["decoder"], mean), rtol=1e-4, atol=1e-4)
  sample = jax.jit(lambda key, t: model.apply(v, key, 5, temperature=t,
                                              method=conv_vae.ConvVAE.sample))
  # Temperature 0: z = 0 whatever the key.
  zero = _decoder(p64["decoder"], np.zeros((5, LATENT)))
  for seed in (0, 1):
    np.testing.assert_allclose(sample(jax.random.PRNGKey(seed), 0.0), zero,
                               rtol=1e-4, atol=1e-4)
  # Temperature scales the prior draw: the samples differ from z = 0 and between keys,
  # and temperature 0.5 lies between them in the decoder's first layer (the dense
  # layer is affine in z, so its pre-ReLU output at t is a + t * b).
  s1 = np.asarray(sample(jax.random.PRNGKey(0), 1.0))
  assert not np.allclose(s1, zero, atol=1e-3)
  assert not np.allclose(s1, sample(jax.random.PRNGKey(1), 1.0), atol=1e-3)
  dense = lambda t: model.apply(v, jax.random.PRNGKey(0), 5, temperature=t,
                                method=conv_vae.ConvVAE.sample, capture_intermediates=True
                                )[1]["intermediates"]["decoder"]["Dense_0"]["__call__"][0]
  d0, d05, d1 = (np.asarray(dense(t), np.float64) for t in (0.0, 0.5, 1.0))
  np.testing.assert_allclose(d05, 0.5 * (d0 + d1), rtol=1e-4, atol=1e-5)
  assert np.abs(d1 - d0).max() > 1e-2
