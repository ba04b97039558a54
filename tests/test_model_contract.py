"""The model contract (`sigma_vae_jax.models.base`), checked for every registered
model at its tiny size (tests/tiny_models.py): output shapes, the one objective
(finite, falls in a few steps, KL per group sums to the total), IWAE's importance
weights, samples and reconstructions, and 8 simulated devices against one."""

import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tiny_models
from sigma_vae_jax import models
from sigma_vae_jax import objectives
from sigma_vae_jax.data import preprocessing
from sigma_vae_jax.evaluation import evaluate
from sigma_vae_jax.training import trainer as trainer_lib

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL_NAMES = sorted(models.MODELS)


def test_every_registered_model_has_a_tiny_test_configuration():
  assert set(tiny_models.TINY) == set(models.MODELS)


def _trainer(config, model_name):
  return trainer_lib.Trainer(config, tiny_models.data_shape(model_name),
                             trainer_lib.make_mesh(jax.devices()[:1]))


def _forward(trainer, state, data, rng):
  x = preprocessing.to_float(jnp.asarray(data))
  return trainer.model.apply({"params": state.params["model"]}, x, rng)


@pytest.mark.parametrize("model_name", MODEL_NAMES)
@pytest.mark.parametrize("decoder_name", ["optimal_sigma", "categorical"])
def test_forward_pass_shapes(model_name, decoder_name):
  trainer = _trainer(tiny_models.tiny_config(model_name, decoder_name), model_name)
  state = trainer.init_state()
  data = tiny_models.smooth_data(model_name, 4)
  output = _forward(trainer, state, data, jax.random.PRNGKey(0))
  target = output.target
  assert target.dtype == jnp.float32 and target.shape[0] == 4
  assert tuple(target.shape[1:]) == trainer.target_shape
  assert float(target.min()) >= 0 and float(target.max()) <= 1
  channels = target.shape[-1]
  assert output.decoder_outputs.shape == (
      target.shape[:-1] + (trainer.likelihood.num_outputs(channels),))
  assert output.decoder_outputs.dtype == jnp.float32
  assert output.latents, "a latent-variable model has at least one latent group"
  for name, group in output.latents.items():
    assert group.kl.shape == group.log_q.shape == group.log_p.shape, name
    assert group.kl.shape[0] == 4, name
    assert bool(jnp.all(jnp.isfinite(group.kl))), name  # one-sample estimates may be < 0
  recon = trainer.reconstruct(state, jnp.asarray(data))
  assert recon.shape == target.shape
  context = tiny_models.context(model_name, data[:3])
  samples = trainer.sample(state, jax.random.PRNGKey(1), 3, context)
  assert samples.shape[0] == 3 and samples.shape[-3:] == target.shape[-3:]
  assert float(samples.min()) >= 0 and float(samples.max()) <= 1


@pytest.mark.parametrize("model_name", MODEL_NAMES)
def test_kl_per_group_sums_to_the_total_and_the_elbo_adds_up(model_name):
  trainer = _trainer(tiny_models.tiny_config(model_name), model_name)
  state = trainer.init_state()
  output = _forward(trainer, state, tiny_models.smooth_data(model_name, 4),
                    jax.random.PRNGKey(0))
  terms = objectives.negative_elbo(output, trainer.likelihood, state.params["likelihood"],
                                   state.likelihood_state, train=False)
  total = sum(np.asarray(kl, np.float64) for kl in terms.kl_per_group.values())
  np.testing.assert_allclose(np.asarray(terms.kl), total, rtol=1e-5, atol=1e-4)
  # Each group's KL is its elementwise KL summed over the group's dimensions.
  for name, group in output.latents.items():
    np.testing.assert_allclose(np.asarray(terms.kl_per_group[name]),
                               np.asarray(group.kl, np.float64).reshape(4, -1).sum(1),
                               rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(np.asarray(terms.nelbo), np.asarray(terms.rec + terms.kl),
                             rtol=1e-6)
  assert np.all(np.isfinite(np.asarray(terms.nelbo)))


@pytest.mark.parametrize("model_name", MODEL_NAMES)
def test_a_few_steps_reduce_the_loss(model_name):
  trainer = _trainer(tiny_models.tiny_config(model_name, learning_rate=3e-3), model_name)
  state = trainer.init_state()
  data = trainer.put_replicated(tiny_models.smooth_data(model_name, 32))
  losses = []
  for _ in range(30):
    state, metrics = trainer.train_on_device(state, data)
    losses.append(metrics["loss"])
  losses = np.asarray(jax.device_get(losses))
  assert np.all(np.isfinite(losses))
  assert losses[-10:].mean() < losses[:10].mean() - 1.0, losses


@pytest.mark.parametrize("model_name", MODEL_NAMES)
def test_importance_weights_k1_and_their_mean_is_the_elbo(model_name):
  trainer = _trainer(tiny_models.tiny_config(model_name), model_name)
  state = trainer.init_state()
  data = jnp.asarray(tiny_models.smooth_data(model_name, 4))
  rng = jax.random.PRNGKey(5)
  # K=1: the log weight of draw 0 (key fold_in(rng, 0)) is log p(x|z) + log p(z)
  # - log q(z|x) of that one forward pass.
  log_w = trainer.log_importance_weights(state, data, rng, num_samples=1)
  output = _forward(trainer, state, data, jax.random.fold_in(rng, 0))
  terms = objectives.negative_elbo(output, trainer.likelihood, state.params["likelihood"],
                                   state.likelihood_state, train=False)
  log_ratio = sum(np.asarray(g.log_p - g.log_q, np.float64).reshape(4, -1).sum(1)
                  for g in output.latents.values())
  np.testing.assert_allclose(np.asarray(log_w[0]), -np.asarray(terms.rec) + log_ratio,
                             rtol=1e-5, atol=1e-2)
  # E_q[log w] = -nelbo (closed-form KL): the mean of many draws, within MC error.
  many = np.asarray(trainer.log_importance_weights(state, data, rng, num_samples=256),
                    np.float64)
  nelbo = np.asarray(evaluate_nelbo(trainer, state, data))
  stderr = many.std(0) / math.sqrt(many.shape[0])
  assert np.all(np.abs(many.mean(0) + nelbo) < 5 * stderr + 0.05), (many.mean(0), nelbo)
  # The IWAE bound is tighter than the ELBO.
  iwae = np.logaddexp.reduce(many, axis=0) - math.log(many.shape[0])
  assert np.all(iwae >= many.mean(0) - 1e-6)


def evaluate_nelbo(trainer, state, data):
  """Per-example negative ELBO (closed-form KL), averaged over 64 decoder draws so
  the reconstruction term's own MC noise is small."""
  x = preprocessing.to_float(data)

  def one(key):
    output = trainer.model.apply({"params": state.params["model"]}, x, key)
    return objectives.negative_elbo(output, trainer.likelihood, state.params["likelihood"],
                                    state.likelihood_state, train=False).nelbo
  keys = jax.random.split(jax.random.PRNGKey(11), 64)
  return jax.lax.map(one, keys).mean(0)


@pytest.mark.parametrize("model_name", MODEL_NAMES)
def test_evaluation_api_runs_through_the_contract(model_name):
  trainer = _trainer(tiny_models.tiny_config(model_name), model_name)
  state = trainer.init_state()
  data = tiny_models.smooth_data(model_name, 10)
  result = evaluate.evaluate_elbo(trainer, state, data, batch_size=8)
  assert result["num_examples"] == 10 and math.isfinite(result["nelbo"])
  np.testing.assert_allclose(result["bpd"], result["nelbo"] / (
      trainer.num_target_dims * math.log(2)), rtol=1e-6)
  nll = evaluate.iwae_nll(trainer, state, data, num_samples=3, batch_size=8,
                          rng=jax.random.PRNGKey(0))
  assert nll.shape == (10,) and np.all(np.isfinite(nll))
  if tiny_models.context(model_name, data) is None:
    samples = evaluate.prior_samples(trainer, state, 5, jax.random.PRNGKey(0), batch_size=4)
    assert samples.shape == (5,) + trainer.target_shape


@pytest.fixture(scope="module")
def eight_device_results():
  """{model: differences between 1 and 8 devices}: all models in one subprocess
  (tests/sharded_vs_single.py), so python, JAX and TensorFlow start up once."""
  result = subprocess.run(
      [sys.executable, os.path.join(HERE, "sharded_vs_single.py"), "optimal_sigma"]
      + MODEL_NAMES, capture_output=True, text=True, timeout=1800)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
  return {row["model"]: row for row in rows}


@pytest.mark.parametrize("model_name", MODEL_NAMES)
def test_eight_simulated_devices_give_the_same_step_and_metrics_as_one(
    eight_device_results, model_name):
  r = eight_device_results[model_name]
  assert r["num_devices"] == 8
  assert r["steps"] == [3, 3]
  rtol = tiny_models.sharded_rtol(model_name)
  assert r["param_max_abs_diff"] <= rtol * r["param_max_abs"], r
  np.testing.assert_allclose(r["loss_sharded"], r["loss_single"], rtol=rtol)
  # The closed-form sigma is over the *global* batch: its running average agrees.
  for key, value in r["likelihood_state_single"].items():
    np.testing.assert_allclose(r["likelihood_state_sharded"][key], value, rtol=rtol)
  for key, value in r["eval_single"].items():
    np.testing.assert_allclose(r["eval_sharded"][key], value, rtol=10 * rtol, atol=1e-3,
                               err_msg=key)
  assert r["cache_size"] == 1


def _moved_params(params, seed=3, scale=0.5):
  """The parameters with every value w moved to w (1 + scale e) + 0.1 scale e',
  e, e' ~ N(0, 1): away from the initialisation (where, e.g., the HVAE's posteriors
  and priors nearly agree), at each weight's own scale (an absolute move would
  blow up the conv VAE's dense layers)."""
  leaves, treedef = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))

  def move(leaf, key):
    a, b = jax.random.split(key)
    return (leaf * (1 + scale * jax.random.normal(a, leaf.shape, leaf.dtype))
            + 0.1 * scale * jax.random.normal(b, leaf.shape, leaf.dtype))
  return jax.tree_util.tree_unflatten(treedef, [move(l, k) for l, k in zip(leaves, keys)])


@pytest.mark.parametrize("model_name", MODEL_NAMES)
def test_the_reported_bound_is_the_elbo_and_iwae_is_tighter(model_name):
  """models.base: `LatentGroup.kl` is an unbiased estimate of E_q[log q - log p], so
  that E_q[log w] = E_q[-nelbo] (log w = log p(x|z) + log p(z) - log q(z|x)). Checked
  on parameters moved away from their initial values: for each example, the mean
  over 256 draws of log w + nelbo (both of the same draw, so the reconstruction
  term cancels and only the KL estimator's bias is left) is zero within 4 standard
  errors; and IWAE with K=16 (over 16 groups of 16 of the same draws) is no worse
  than the ELBO beyond that noise."""
  trainer = _trainer(tiny_models.tiny_config(model_name), model_name)
  state = trainer.init_state()
  params = _moved_params(state.params["model"])
  lik_params, lik_state = state.params["likelihood"], state.likelihood_state
  x = preprocessing.to_float(jnp.asarray(tiny_models.smooth_data(model_name, 4)))
  num_draws, k = 256, 16

  @jax.jit
  def draws(keys):
    def one(key):
      output = trainer.model.apply({"params": params}, x, key)
      nelbo = objectives.negative_elbo(output, trainer.likelihood, lik_params, lik_state,
                                       train=False).nelbo
      return objectives.log_importance_weight(output, trainer.likelihood, lik_params,
                                              lik_state), nelbo
    return jax.lax.map(one, keys)

  log_w, nelbo = jax.device_get(draws(jax.random.split(jax.random.PRNGKey(7), num_draws)))
  log_w, nelbo = np.asarray(log_w, np.float64), np.asarray(nelbo, np.float64)  # [draws, B]
  gap = log_w + nelbo
  stderr = gap.std(0) / math.sqrt(num_draws)
  print(f"\n{model_name}: mean log w + nelbo per example {gap.mean(0)}, stderr {stderr}")
  assert np.all(np.abs(gap.mean(0)) <= 4 * stderr + 1e-3), (gap.mean(0), stderr)
  elbo = -nelbo.mean(0)
  chunks = log_w.reshape(num_draws // k, k, -1)
  iwae_chunks = np.logaddexp.reduce(chunks, axis=1) - math.log(k)  # [groups, B]
  iwae = iwae_chunks.mean(0)
  noise = np.sqrt(nelbo.var(0) / num_draws + iwae_chunks.var(0) / chunks.shape[0])
  assert np.all(iwae >= elbo - 4 * noise), (iwae, elbo, noise)
