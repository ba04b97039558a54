"""The sigma that scores the optimal-sigma decoders at evaluation is fitted to the
evaluated network (EMA parameters, no dropout) on training data, never on test data.

Every expectation is recomputed here from the model's own forward pass with numpy:
sigma*^2 = mean over the fit's training examples and dimensions (or over
decoder.sigma_axes) of (x - sigmoid(decoder output))^2, latents drawn with the keys
the fit documents (`Trainer.evaluation_state`), then the soft lower bound
log_sigma_min + softplus(log sigma - log_sigma_min) of the likelihood.
"""

import json
import math
import os

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from sigma_vae_jax import configuration
from sigma_vae_jax import likelihoods
from sigma_vae_jax import models
from sigma_vae_jax.data import data_source
from sigma_vae_jax.data import dataset_fields
from sigma_vae_jax.data import input_pipeline
from sigma_vae_jax.data import splits
from sigma_vae_jax.evaluation import evaluate
from sigma_vae_jax.training import train
from sigma_vae_jax.training import trainer as trainer_lib
import tiny_models

SHAPE = (8, 8, 3)
NUM_IMAGES = 80
FIT_BATCHES = 3
EMA_DECAY = 0.9


def _softclip_low(log_sigma, low=-6.0):
  """losses.softclip(x, low) in numpy: low + softplus(x - low)."""
  return low + np.logaddexp(0.0, log_sigma - low)


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def _fit_keys(state, num):
  """The keys of the fit's forward passes (Trainer.evaluation_state's docstring)."""
  base = jax.random.fold_in(state.rng, trainer_lib.EVAL_SIGMA_STREAM)
  return [jax.random.fold_in(base, i) for i in range(num)]


def _squared_errors(model, params, batches, keys, *, train):
  """Squared errors (x - sigmoid(out))^2 of each batch, float64 [N, *SHAPE]: this
  test's own forward pass (train=False: dropout off)."""
  errors = []
  for batch, key in zip(batches, keys):
    x = np.asarray(batch, np.float64) / 255.0
    out = model.apply({"params": params}, jax.numpy.asarray(x, jax.numpy.float32), key,
                      train=train)
    mean = _sigmoid(jax.device_get(out.decoder_outputs))[..., :x.shape[-1]]
    errors.append((x - mean) ** 2)
  return np.concatenate(errors)


def _log_sigma_of(errors):
  return float(_softclip_low(0.5 * math.log(errors.mean())))


# ----------------------------------------------------------------------------------
# A tiny HVAE (dropout 0.5) with EMA, trained by the real loop on a numpy dataset
# whose test split is all white: any test image in the fit would move sigma a lot.
# ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hvae_run(tmp_path_factory):
  root = tmp_path_factory.mktemp("eval_sigma")
  images = tiny_models.smooth_data("hvae", NUM_IMAGES, seed=1)
  split = splits.holdout_indices(NUM_IMAGES, 0.1)
  images[split["test"]] = 255
  path = str(root / "images.npy")
  np.save(path, images)
  config = tiny_models.tiny_config(
      "hvae", ema_decay=EMA_DECAY, learning_rate=3e-3, num_train_steps=24,
      log_every_steps=12, eval_every_steps=24, checkpoint_every_steps=24,
      num_image_samples=8, eval_sigma_train_batches=FIT_BATCHES)
  config.dataset.name, config.dataset.path = "numpy", path
  config.dataset.test_fraction = 0.1
  assert config.model.dropout_rate > 0 and config.eval_sigma == "auto"
  workdir = str(root / "run")
  state = train.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    eval_row = [r for r in map(json.loads, f) if r["split"] == "eval"][-1]

  # The fit's data: the first FIT_BATCHES batches of the training split shuffled
  # with the seed (default_config.py), read here straight from the data source.
  source = input_pipeline.get_data_source(config.dataset)
  stream = source.batch_iterator("train", config.batch_size, seed=config.seed,
                                 shuffle=True, repeat=True)
  fit_batches = [next(stream) for _ in range(FIT_BATCHES)]
  model = models.build_model(config.model, SHAPE, SHAPE[-1])
  keys = _fit_keys(state, FIT_BATCHES)
  ema = jax.device_get(state.ema_params["model"])
  raw = jax.device_get(state.params["model"])
  run = {"config": config, "workdir": workdir, "state": state, "eval_row": eval_row,
         "fit_batches": fit_batches, "test_images": images[split["test"]],
         "train_images": images[split["train"]]}
  run["expected"] = _log_sigma_of(_squared_errors(model, ema, fit_batches, keys,
                                                  train=False))
  # What a wrong rule would give: raw parameters, or dropout on, or training's
  # running average.
  run["raw_params"] = _log_sigma_of(_squared_errors(model, raw, fit_batches, keys,
                                                    train=False))
  run["with_dropout"] = _log_sigma_of(_squared_errors(model, ema, fit_batches, keys,
                                                      train=True))
  trainer = trainer_lib.Trainer(config, SHAPE, trainer_lib.make_mesh())
  run["running_average"] = float(trainer.likelihood.running_log_sigma(
      jax.device_get(state.likelihood_state)))
  return run


def test_the_fit_reads_training_images_only(hvae_run):
  train_rows = {r.tobytes() for r in hvae_run["train_images"]}
  for batch in hvae_run["fit_batches"]:
    assert all(row.tobytes() in train_rows for row in batch)
  assert not (hvae_run["test_images"] < 255).any()  # the white test split


def test_training_evaluates_with_sigma_fitted_to_the_ema_network_without_dropout(hvae_run):
  expected = hvae_run["expected"]
  # The check can tell the rules apart: each wrong one is far from the right one.
  for wrong in ("raw_params", "with_dropout", "running_average"):
    assert abs(hvae_run[wrong] - expected) > 5e-3, wrong
  # The eval row's log sigma is the fitted one (constant over the test images).
  assert hvae_run["eval_row"]["log_sigma"] == pytest.approx(expected, abs=2e-5)


def test_load_run_fits_the_same_sigma_without_reading_the_test_split(hvae_run,
                                                                   monkeypatch):
  real_load, real_batches = (data_source.DataSource.load_split,
                             data_source.DataSource.batch_iterator)

  def refuse_test(real):
    def read(self, split, *args, **kwargs):
      if split == "test":
        raise AssertionError("the evaluation sigma read the test split")
      return real(self, split, *args, **kwargs)
    return read

  monkeypatch.setattr(data_source.DataSource, "load_split", refuse_test(real_load))
  monkeypatch.setattr(data_source.DataSource, "batch_iterator",
                      refuse_test(real_batches))
  _, trainer, state = evaluate.load_run(hvae_run["workdir"])
  monkeypatch.undo()
  fitted = float(trainer.likelihood.running_log_sigma(jax.device_get(state.likelihood_state)))
  assert fitted == pytest.approx(hvae_run["expected"], abs=2e-5)
  # evaluate_elbo scores with it: the same eval row as training's last evaluation.
  elbo = evaluate.evaluate_elbo(trainer, state, hvae_run["test_images"],
                                batch_size=hvae_run["config"].batch_size)
  row = hvae_run["eval_row"]
  assert elbo["log_sigma"] == pytest.approx(row["log_sigma"], abs=1e-6)
  assert elbo["nelbo"] == pytest.approx(row["nelbo"], rel=1e-6)
  # fit_eval_sigma=False: the checkpoint as saved (training's running average).
  _, _, saved = evaluate.load_run(hvae_run["workdir"], fit_eval_sigma=False)
  assert float(trainer.likelihood.running_log_sigma(
      jax.device_get(saved.likelihood_state))) == pytest.approx(
          hvae_run["running_average"], abs=1e-6)


# ----------------------------------------------------------------------------------
# The fit for other sigma shapes, and which configs fit.
# ----------------------------------------------------------------------------------


def _trained_conv_vae(decoder, **decoder_fields):
  config = tiny_models.tiny_config("conv_vae", decoder, ema_decay=EMA_DECAY,
                                   learning_rate=1e-2)
  for key, value in decoder_fields.items():
    config.decoder[key] = value
  trainer = trainer_lib.Trainer(config, SHAPE, Mesh(np.asarray(jax.devices()[:1]),
                                                    ("data",)))
  state = trainer.init_state()
  data = trainer.put_replicated(tiny_models.smooth_data("conv_vae", 32))
  for _ in range(4):
    state, _ = trainer.train_on_device(state, data)
  return config, trainer, state


@pytest.mark.parametrize("decoder,fields,log_scale_per_sigma", [
    ("optimal_sigma", {"sigma_axes": (0,)}, 0.0),
    ("discretized_logistic", {"scale": "optimal"}, 0.5 * math.log(3.0) - math.log(math.pi)),
])
def test_the_fit_follows_the_likelihoods_sigma_shape(decoder, fields, log_scale_per_sigma):
  """sigma_axes=(0,): one sigma*^2 per subpixel (MSE over the fit's examples); the
  discretized logistic: the scale whose std is sigma* (s* = sqrt(3 MSE) / pi)."""
  config, trainer, state = _trained_conv_vae(decoder, **fields)
  assert trainer.fits_eval_sigma
  batches = [tiny_models.smooth_data("conv_vae", 8, seed=s) for s in (5, 6)]
  fitted = trainer.evaluation_state(state, [trainer.shard_batch(b) for b in batches])
  model = models.build_model(config.model, SHAPE, trainer.likelihood.num_outputs(3))
  errors = _squared_errors(model, jax.device_get(state.ema_params["model"]), batches,
                           _fit_keys(state, 2), train=False)
  mse = errors.mean(axis=0) if decoder == "optimal_sigma" else errors.mean()
  expected = _softclip_low(0.5 * np.log(mse) + log_scale_per_sigma)
  got = np.asarray(trainer.likelihood.running_log_sigma(fitted.likelihood_state))
  assert got.size == np.size(expected)  # one sigma per subpixel, or one in all
  np.testing.assert_allclose(got.reshape(-1), np.reshape(expected, -1), atol=2e-5)
  # The training state keeps its running average (another value).
  running = np.asarray(trainer.likelihood.running_log_sigma(state.likelihood_state))
  assert np.abs(running - got).max() > 1e-3


@pytest.mark.parametrize("overrides,fits", [
    ({}, False),                                        # the conv VAE: same network
    ({"ema_decay": 0.999}, True),
    ({"eval_sigma": "fit"}, True),
    ({"ema_decay": 0.999, "eval_sigma": "running_average"}, False),
])
def test_which_configs_refit_the_evaluation_sigma(overrides, fits):
  trainer = trainer_lib.Trainer(tiny_models.tiny_config("conv_vae", **overrides), SHAPE,
                                trainer_lib.make_mesh())
  assert trainer.fits_eval_sigma == fits
  state = trainer.init_state()
  if not fits:
    assert trainer.evaluation_state(state, []) is state


def test_only_estimated_sigmas_are_refitted_and_dropout_counts_as_another_network():
  likelihood_of = lambda config: likelihoods.get_likelihood(config.decoder)
  hvae = tiny_models.tiny_config("hvae")  # dropout 0.5, no EMA
  assert trainer_lib.fits_eval_sigma(hvae, likelihood_of(hvae))
  hvae.model.dropout_rate = 0.0
  assert not trainer_lib.fits_eval_sigma(hvae, likelihood_of(hvae))
  for decoder, fields in [("shared_sigma", {}), ("discretized_gaussian", {"scale": "learned"}),
                          ("discretized_gaussian", {"scale": "optimal"})]:
    config = tiny_models.tiny_config("conv_vae", decoder, ema_decay=0.999)
    config.decoder.update(fields)
    assert trainer_lib.fits_eval_sigma(config, likelihood_of(config)) == (
        fields.get("scale") == "optimal")


@pytest.mark.parametrize("field,value", [("eval_sigma", "test_mse"),
                                         ("eval_sigma_train_batches", 0)])
def test_bad_eval_sigma_fields_are_one_line_errors(field, value):
  config = tiny_models.tiny_config("conv_vae", **{field: value})
  with pytest.raises(configuration.ConfigError, match=f"^{field}: "):
    configuration.validate_config(config, num_devices=1,
                                  dataset_names=dataset_fields.DATASETS)
