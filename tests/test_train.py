"""Train steps: every decoder learns, sharded == single device, no recompilation,
non-finite updates never reach the parameters."""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from sigma_vae_jax import likelihoods
from sigma_vae_jax.training import train_step
from sigma_vae_jax.training import trainer as trainer_lib
from sigma_vae_jax.training import xla_options
from configs import default as default_config

HERE = os.path.dirname(os.path.abspath(__file__))


def _tiny_config(decoder_name, **overrides):
  config = default_config.get_config()
  config.decoder.name = decoder_name
  if decoder_name == "beta":
    config.decoder.beta = 0.1
  config.model.latent_dim, config.model.base_channels = 4, 8
  config.batch_size = 16
  config.learning_rate = 1e-2
  for key, value in overrides.items():
    config[key] = value
  return config


def _smooth_images(n=16, size=8, seed=0):
  """Structured uint8 images a tiny VAE can fit: blurred colour gradients."""
  rng = np.random.RandomState(seed)
  yy, xx = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing="ij")
  a = rng.uniform(0, 1, (n, 1, 1, 3))
  b = rng.uniform(-1, 1, (n, 1, 1, 3))
  images = np.clip(a + b * (yy[None, ..., None] - 0.5) + b * (xx[None, ..., None] - 0.5)
                   / 2, 0, 1)
  return (images * 255).round().astype(np.uint8)


def _trainer(config, image_shape=(8, 8, 3)):
  return trainer_lib.Trainer(config, image_shape, Mesh(np.asarray(jax.devices()[:1]), ("data",)))


@pytest.mark.parametrize("name", sorted(likelihoods.LIKELIHOODS))
def test_a_few_steps_reduce_the_loss_for_every_decoder(name):
  config = _tiny_config(name)
  trainer = _trainer(config)
  state = trainer.init_state()
  images = trainer.put_replicated(_smooth_images())
  losses = []
  for _ in range(40):
    state, metrics = trainer.train_on_device(state, images)
    losses.append(metrics["loss"])
  losses = np.asarray(jax.device_get(losses))
  first, last = float(losses[:10].mean()), float(losses[-10:].mean())
  assert np.all(np.isfinite(losses))
  # Losses are 10-step averages on one fixed batch. An absolute margin: several
  # decoders carry large constants (entropy, log 2pi), and the unit-variance
  # Gaussian learns slowly by design (the paper's point).
  assert last < first - 0.1, (first, last)
  assert int(state.step) == 40


def test_several_steps_per_call_equal_single_steps():
  images = _smooth_images(24)
  states = []
  for steps_per_call, calls in ((1, 4), (4, 1)):
    trainer = _trainer(_tiny_config("optimal_sigma", steps_per_call=steps_per_call))
    state = trainer.init_state()
    data = trainer.put_replicated(images)
    for _ in range(calls):
      state, _ = trainer.train_on_device(state, data)
    states.append(jax.device_get(state))
  single, scanned = states
  assert int(single.step) == int(scanned.step) == 4
  for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(scanned)):
    # Same math; XLA fuses differently inside the scan (float32 rounding only). Adam
    # divides each gradient entry by its own scale, so an entry whose gradient is
    # nearly 0 can move by up to ~lr on rounding alone: atol is 3% of lr (1e-2).
    np.testing.assert_allclose(b, a, rtol=2e-5, atol=3e-4)


def test_train_step_compiles_once_across_steps_and_evaluation():
  config = _tiny_config("optimal_sigma")
  trainer = _trainer(config)
  state = trainer.init_state()
  images = trainer.put_replicated(_smooth_images())
  for i in range(4):
    state, _ = trainer.train_on_device(state, images)
    if i == 1:
      trainer.evaluate(state, trainer_lib.padded_batches(_smooth_images(20), 16))
  assert trainer.train_on_device._cache_size() == 1
  assert trainer.eval_sums._cache_size() == 1


def test_device_batches_follow_a_per_epoch_permutation():
  images = jnp.arange(10, dtype=jnp.int32)
  key = jax.random.PRNGKey(0)
  epoch0 = np.concatenate([train_step.device_batch(images, jnp.int32(s), key, 3) for s in range(3)])
  epoch1 = np.concatenate([train_step.device_batch(images, jnp.int32(s), key, 3)
                           for s in range(3, 6)])
  assert len(set(epoch0.tolist())) == 9 and len(set(epoch1.tolist())) == 9
  assert epoch0.tolist() != epoch1.tolist()


@pytest.mark.parametrize("skip", [False, True])
def test_nonfinite_update_never_reaches_the_parameters(skip):
  config = _tiny_config("shared_sigma", skip_nonfinite_updates=skip, steps_per_call=1)
  trainer = _trainer(config)
  state = trainer.init_state()
  good = trainer.put_replicated(_smooth_images())
  state, _ = trainer.train_on_device(state, good)
  before = jax.device_get(state.params)
  # NaN pixels make the loss non-finite.
  bad = jnp.full((16, 8, 8, 3), jnp.nan, jnp.float32)
  state, metrics = trainer.train_on_batches(state, bad[None])
  after = jax.device_get(state.params)
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
    np.testing.assert_array_equal(a, b)
  assert int(state.num_skipped) == 1
  nonfinite = jax.device_get(state.nonfinite)
  assert int(nonfinite["step"]) == 1 and not np.isfinite(nonfinite["loss"])
  # In stop mode, later (finite) updates stay frozen until the host stops the run.
  state, _ = trainer.train_on_device(state, good)
  changed = any(not np.array_equal(a, b) for a, b in
                zip(jax.tree.leaves(after), jax.tree.leaves(jax.device_get(state.params))))
  assert changed == skip


def test_bfloat16_compute_trains_to_the_same_loss_within_seed_noise():
  """model.dtype=bfloat16 must keep the ELBO within the run-to-run noise of float32."""
  def final_loss(dtype, seed):
    config = _tiny_config("optimal_sigma", seed=seed, learning_rate=3e-3)
    config.model.dtype = dtype
    trainer = _trainer(config)
    state = trainer.init_state()
    images = trainer.put_replicated(_smooth_images(n=64))
    losses = []
    for _ in range(200):
      state, metrics = trainer.train_on_device(state, images)
      losses.append(metrics["loss"])
    losses = np.asarray(jax.device_get(losses))
    assert np.all(np.isfinite(losses))
    return float(losses[:10].mean()), float(losses[-20:].mean())

  start, f32 = final_loss("float32", 0)
  _, bf16 = final_loss("bfloat16", 0)
  _, f32_other_seed = final_loss("float32", 1)
  seed_noise = abs(f32_other_seed - f32)
  assert start - f32 > 20 and start - bf16 > 20, (start, f32, bf16)  # both learn
  assert abs(bf16 - f32) <= seed_noise + 1.0, (f32, bf16, f32_other_seed)


def test_tuned_cpu_compiler_options_apply_only_on_cpu_and_yield_to_xla_flags(monkeypatch):
  options = xla_options.compiler_options.__wrapped__
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  assert options("cpu") == xla_options.TUNED_CPU_OPTIONS  # known to this jaxlib
  assert options("cpu", tuned=False) is None
  assert options("gpu") is None and options("tpu") is None
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=dot")
  assert options("cpu") is None


def test_tuned_and_default_compilation_train_the_same_function():
  images = _smooth_images(n=32)
  runs = []
  for tuned in (True, False):
    trainer = _trainer(_tiny_config("optimal_sigma", tune_xla_cpu=tuned))
    assert (trainer.compiler_options is not None) == tuned
    state = trainer.init_state()
    data = trainer.put_replicated(images)
    metrics = []
    for _ in range(3):
      state, m = trainer.train_on_device(state, data)
      metrics.append(m)
    runs.append(jax.device_get((state.params, metrics)))
  (params_a, metrics_a), (params_b, metrics_b) = runs
  for a, b in zip(metrics_a, metrics_b):
    for key in ("loss", "rec", "kl", "grad_norm"):
      np.testing.assert_allclose(a[key], b[key], rtol=1e-5, err_msg=key)
  # Adam moves each parameter by ~learning_rate (1e-2) per step; float32 rounding
  # of other convolution algorithms moves them by far less.
  for a, b in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b)):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)


# ---- deep-VAE training options: parameter EMA, free bits, large-gradient skips -----


def test_ema_parameters_follow_the_update_rule_and_are_what_evaluation_uses():
  decay = 0.9
  trainer = _trainer(_tiny_config("optimal_sigma", ema_decay=decay))
  state = trainer.init_state()
  data = trainer.put_replicated(_smooth_images())
  previous_ema = jax.device_get(state.ema_params)
  state, _ = trainer.train_on_device(state, data)
  # One step: ema = decay * ema + (1 - decay) * params, from ema_0 = params_0.
  expected = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, previous_ema,
                          jax.device_get(state.params))
  for a, b in zip(jax.tree.leaves(jax.device_get(state.ema_params)),
                  jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  for _ in range(5):
    state, _ = trainer.train_on_device(state, data)
  raw, ema = jax.device_get(state.params), jax.device_get(state.ema_params)
  assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(raw), jax.tree.leaves(ema)))
  # Evaluation uses the EMA parameters: the same as evaluating them as raw ones.
  batches = lambda: trainer_lib.padded_batches(_smooth_images(20, seed=3), 16)
  with_ema = trainer.evaluate(state, batches())
  as_raw = trainer.evaluate(state.replace(params=state.ema_params, ema_params={}),
                            batches())
  raw_only = trainer.evaluate(state.replace(ema_params={}), batches())
  assert with_ema == as_raw
  assert with_ema["nelbo"] != raw_only["nelbo"]


def test_free_bits_floor_each_groups_kl_in_the_loss_but_not_in_the_reported_elbo():
  trainer = _trainer(_tiny_config("optimal_sigma"))
  state = trainer.init_state()
  images = jnp.asarray(_smooth_images())
  rng = jax.random.PRNGKey(0)
  args = (state.params, state.likelihood_state, images, rng)
  kwargs = dict(model=trainer.model, likelihood=trainer.likelihood)
  loss = jax.jit(functools.partial(train_step.loss_fn, **kwargs),
                 static_argnames="free_bits")
  plain, (m0, _) = loss(*args)
  floored, (m1, _) = loss(*args, free_bits=50.0)
  # At initialisation the KL is far below 50 nats: the loss sees exactly 50.
  assert float(m0["kl"]) < 50.0
  np.testing.assert_allclose(float(floored), float(m0["rec"]) + 50.0, rtol=1e-6)
  np.testing.assert_allclose(float(plain), float(m0["rec"]) + float(m0["kl"]), rtol=1e-6)
  for key in ("nelbo", "rec", "kl"):  # the reported terms are the true ones
    np.testing.assert_allclose(float(m1[key]), float(m0[key]), rtol=1e-6)
  # No gradient reaches the KL below the floor: the encoder's variance head only
  # gets the reconstruction's gradient.
  grad = jax.jit(jax.grad(
      lambda p: train_step.loss_fn(p, *args[1:], free_bits=50.0, **kwargs)[0]))(state.params)
  grad_rec = jax.jit(jax.grad(
      lambda p: train_step.loss_fn(p, *args[1:], **kwargs)[1][0]["rec"]))(state.params)
  for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(grad_rec)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_updates_with_a_gradient_norm_above_the_threshold_are_skipped_and_counted():
  trainer = _trainer(_tiny_config("optimal_sigma", skip_update_grad_norm=1e-6))
  state = trainer.init_state()
  before = jax.device_get(state.params)
  state, metrics = trainer.train_on_device(state, trainer.put_replicated(_smooth_images()))
  assert float(metrics["grad_norm"]) > 1e-6 and int(state.num_skipped) == 1
  for a, b in zip(jax.tree.leaves(jax.device_get(state.params)), jax.tree.leaves(before)):
    np.testing.assert_array_equal(a, b)
  assert int(jax.device_get(state.nonfinite)["step"]) == -1  # skipped, not a failure
