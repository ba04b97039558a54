"""Model-level evaluation (sigma_vae_jax.evaluation.evaluate) on cases with known answers, with a
tiny model trained for a few steps on the built-in dataset (prepared once)."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cli_utils
from configs import default as default_config
from sigma_vae_jax import losses
from sigma_vae_jax.data import preprocessing
from sigma_vae_jax.evaluation import evaluate
from sigma_vae_jax.evaluation import loading
from sigma_vae_jax.evaluation import metrics
from sigma_vae_jax.evaluation import rate
from sigma_vae_jax.training import train
from sigma_vae_jax.training import trainer as trainer_lib

NUM_EVAL = 64


def tiny_config(data_dir, decoder_name="optimal_sigma", steps=30, **decoder):
  config = default_config.get_config()
  config.dataset.data_dir = str(data_dir)
  config.decoder.name = decoder_name
  for k, v in decoder.items():
    config.decoder[k] = v
  config.model.latent_dim, config.model.base_channels = 4, 4
  config.batch_size = 16
  config.num_train_steps = steps
  config.eval_every_steps = config.checkpoint_every_steps = steps
  config.log_every_steps = steps
  config.num_image_samples = 8
  return config


@pytest.fixture(scope="module")
def data_dir(shapes_data_dir):
  return shapes_data_dir


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
  """A finished tiny optimal-sigma run: (workdir, config, trainer, state, images)."""
  workdir = str(tmp_path_factory.mktemp("run"))
  config = tiny_config(data_dir)
  train.train_and_evaluate(config, workdir)
  config, trainer, state = evaluate.load_run(workdir)
  images = evaluate.load_test_images(config, NUM_EVAL)
  return workdir, config, trainer, state, images


def test_load_run_round_trip(trained):
  workdir, config, trainer, state, images = trained
  assert int(state.step) == config.num_train_steps
  assert config.decoder.name == "optimal_sigma"
  assert trainer.data_shape == (32, 32, 3)
  # The restored state evaluates to what training logged at its last evaluation.
  rows = [r for r in _read_jsonl(os.path.join(workdir, "metrics.jsonl"))
          if r["split"] == "eval"]
  full = evaluate.load_test_images(config)
  result = evaluate.evaluate_elbo(trainer, state, full, batch_size=16)
  np.testing.assert_allclose(result["nelbo"], rows[-1]["nelbo"], rtol=1e-4)
  np.testing.assert_allclose(result["log_sigma"], rows[-1]["log_sigma"], rtol=1e-5)
  assert result["num_examples"] == len(full)


def test_a_run_saved_before_a_config_field_existed_loads_with_its_default(tmp_path):
  config = cli_utils.tiny_config(None, **{"model.latent_dim": 3}).to_dict()
  del config["model"]["dtype"], config["optimizer"]
  path = os.path.join(str(tmp_path), "config.json")
  with open(path, "w") as f:
    json.dump(config, f)
  loaded = loading.config_from_json(path)
  assert loaded.model.latent_dim == 3
  assert loaded.model.dtype == "float32" and loaded.optimizer == "adam"


@pytest.mark.parametrize("flags, conv_impl", [((True, True, True), "fast"),
                                              ((True, False, True), "xla")])
def test_a_config_of_the_version_before_the_model_contract_loads(tmp_path, flags, conv_impl):
  # Earlier config.json files had no model.name and three fast_* flags.
  config = cli_utils.tiny_config(None, **{"model.latent_dim": 3}).to_dict()
  del config["model"]["name"], config["model"]["conv_impl"]
  for name, value in zip(("fast_encoder", "fast_upsample", "fast_output"), flags):
    config["model"][name] = value
  path = os.path.join(str(tmp_path), "config.json")
  with open(path, "w") as f:
    json.dump(config, f)
  loaded = loading.config_from_json(path)
  assert loaded.model.name == "conv_vae" and loaded.model.conv_impl == conv_impl
  assert "fast_encoder" not in loaded.model


def test_load_run_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="config.json"):
    evaluate.load_run(str(tmp_path))


def test_evaluate_elbo_keys_and_padding(trained):
  _, _, trainer, state, images = trained
  a = evaluate.evaluate_elbo(trainer, state, images[:40], batch_size=16)  # padded
  again = evaluate.evaluate_elbo(trainer, state, images[:40], batch_size=16)
  b = evaluate.evaluate_elbo(trainer, state, images[:40], batch_size=8)
  assert a == again  # deterministic
  for key in ("nelbo", "rec", "kl", "bpd", "nelbo_discrete", "bpd_discrete", "log_sigma"):
    assert math.isfinite(a[key]), key
    # Other batches draw other z (the eval noise is per batch): equal up to MC noise.
    np.testing.assert_allclose(a[key], b[key], rtol=0.02)
  np.testing.assert_allclose(a["log_sigma"], b["log_sigma"], rtol=1e-6)
  assert a["num_examples"] == 40
  np.testing.assert_allclose(a["bpd"], a["nelbo"] / (32 * 32 * 3 * math.log(2)), rtol=1e-6)


def test_iwae_k1_equals_single_sample_elbo(trained):
  """K=1: -log w for the same z (same rng) as a hand-computed single-sample ELBO."""
  _, _, trainer, state, images = trained
  rng = jax.random.PRNGKey(3)
  batch = images[:16]
  got = evaluate.iwae_nll(trainer, state, batch, num_samples=1, batch_size=16, rng=rng)

  x = preprocessing.to_float(batch)
  variables = {"params": state.params["model"]}
  mean, log_var = trainer.model.apply(variables, x, method="encode")
  # Batch 0, chunk 0, draw 0 of the chunk.
  key = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(rng, 0), 0), 0)
  eps = jax.random.normal(key, mean.shape)
  z = mean + jnp.exp(0.5 * log_var) * eps
  out = trainer.model.apply(variables, z, method="decode")
  dec = trainer.likelihood.eval_nll(x, out, state.params["likelihood"], state.likelihood_state)
  rec = losses.sum_over_data_dims(dec.nll)
  kl_mc = (losses.gaussian_log_prob(z, mean, log_var) - losses.gaussian_log_prob(z)).sum(-1)
  np.testing.assert_allclose(got, np.asarray(rec + kl_mc), rtol=1e-4, atol=1e-2)
  # Its average over z is the ELBO with the closed-form KL: same rec, KL in expectation.
  assert got.shape == (16,)


def test_iwae_bound_is_at_most_the_elbo(trained):
  _, _, trainer, state, images = trained
  rng = jax.random.PRNGKey(0)
  elbo = evaluate.evaluate_elbo(trainer, state, images, batch_size=16)["nelbo"]
  one = evaluate.iwae_nll(trainer, state, images, 1, 16, rng)
  many = evaluate.iwae_nll(trainer, state, images, 50, 16, rng, chunk_size=25)
  # Monte Carlo tolerance: 3 standard errors of the single-sample estimate.
  tol = 3 * one.std() / math.sqrt(len(one)) + 1e-3 * abs(elbo)
  assert abs(one.mean() - elbo) <= tol, (one.mean(), elbo, tol)
  assert many.mean() <= elbo + tol, (many.mean(), elbo, tol)
  # Per example, L_K with the first sample included is >= ... not guaranteed; on
  # average more samples tighten the bound.
  assert many.mean() <= one.mean() + tol
  assert np.all(np.isfinite(many))


def test_rate_decomposition_sums_to_average_kl(trained):
  _, _, trainer, state, images = trained
  full = evaluate.load_test_images(trainer.config, 500)
  r = evaluate.rate_decomposition(trainer, state, full, jax.random.PRNGKey(1))
  assert set(r) == {"mutual_information", "marginal_kl", "average_kl", "log_n"}
  np.testing.assert_allclose(r["log_n"], math.log(500), rtol=1e-6)
  total = r["mutual_information"] + r["marginal_kl"]
  # The two terms sum to the single-sample MC estimate of the average KL.
  assert abs(total - r["average_kl"]) <= 0.1 * r["average_kl"] + 0.05, r
  assert r["mutual_information"] <= r["log_n"] + 1e-4
  assert r["marginal_kl"] >= -0.05


def test_rate_decomposition_of_an_ignored_latent_is_zero():
  """An encoder that outputs the prior for every x: MI = marginal KL = 0."""
  n, d = 300, 3
  mean, log_var = jnp.zeros((n, d)), jnp.zeros((n, d))
  z = mean + jnp.exp(0.5 * log_var) * jax.random.normal(jax.random.PRNGKey(0), mean.shape)
  r = rate._rate(z, mean, log_var)
  np.testing.assert_allclose(float(r["mutual_information"]), 0.0, atol=1e-5)
  np.testing.assert_allclose(float(r["marginal_kl"]), 0.0, atol=1e-5)


def test_effective_beta(trained, data_dir):
  _, _, trainer, state, images = trained
  beta = evaluate.effective_beta(trainer, state)
  expected = float(trainer.likelihood.running_log_sigma(state.likelihood_state))
  np.testing.assert_allclose(beta["log_sigma"], expected, rtol=1e-5)
  np.testing.assert_allclose(beta["effective_beta"], math.exp(2 * expected), rtol=1e-5)
  np.testing.assert_allclose(beta["effective_beta_paper"], 2 * beta["effective_beta"])
  # The beta decoder's sigma is sqrt(beta); per-image sigma needs the data.
  mesh = trainer.mesh
  t_beta = trainer_lib.Trainer(tiny_config(data_dir, "beta", beta=0.04), (32, 32, 3), mesh)
  b = evaluate.effective_beta(t_beta, t_beta.init_state())
  np.testing.assert_allclose(b["effective_beta"], 0.04, rtol=1e-5)
  t_img = trainer_lib.Trainer(tiny_config(data_dir, "optimal_sigma_per_image"), (32, 32, 3), mesh)
  s_img = t_img.init_state()
  with pytest.raises(ValueError, match="pass images"):
    evaluate.effective_beta(t_img, s_img)
  per_image = evaluate.effective_beta(t_img, s_img, images[:20], batch_size=16)
  ev = evaluate.evaluate_elbo(t_img, s_img, images[:20], batch_size=16)
  # effective_beta decodes the posterior mean, evaluation a sampled z: close.
  np.testing.assert_allclose(per_image["log_sigma"], ev["log_sigma"], rtol=0.05)
  t_cat = trainer_lib.Trainer(tiny_config(data_dir, "bernoulli"), (32, 32, 3), mesh)
  assert evaluate.effective_beta(t_cat, t_cat.init_state(), images[:16]) is None


def test_fid_of_a_set_with_itself_is_zero(trained):
  _, _, trainer, state, images = trained
  x = images.astype(np.float32) / 255.0
  feature_fn = metrics.make_feature_fn("random")
  assert abs(metrics.fid(x, x, feature_fn)) < 1e-3
  score = evaluate.fid_score(trainer, state, images, 64, "random", jax.random.PRNGKey(0))
  assert math.isfinite(score) and score > 0
  samples = evaluate.prior_samples(trainer, state, 20, jax.random.PRNGKey(0), batch_size=16)
  assert samples.shape == (20, 32, 32, 3)
  assert samples.min() >= 0 and samples.max() <= 1


def test_fid_inception_without_weights_says_how_to_get_them(trained, tmp_path):
  _, _, trainer, state, images = trained
  with pytest.raises(FileNotFoundError):
    evaluate.fid_score(trainer, state, images, 16, "inception", jax.random.PRNGKey(0),
                       weights_path=str(tmp_path / "missing.npz"))


def _read_jsonl(path):
  import json
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
