"""Every experiment config trains a few steps end to end, offline, under
`tfds.testing.mock_data` (random examples with each dataset's real features)."""

import glob
import importlib.util
import json
import math
import os

import pytest
import tensorflow_datasets as tfds

import tiny_models
from sigma_vae_jax.training import train

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "configs")
CONFIGS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(CONFIG_DIR, "*.py"))
                 if not p.endswith("__init__.py"))


def _load(name):
  spec = importlib.util.spec_from_file_location(f"config_{name}",
                                                os.path.join(CONFIG_DIR, f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


# Configs whose model and data pipeline another trained config already covers: they
# differ only in a dataset another config trains (celeba_hvae: cifar10_hvae's model on
# celeba's crop) or in the decoder (bair_svg_original: bair_svg with `beta`). They are
# checked to build their model on their data shape below, without a training run.
COVERED_BY = {"celeba_hvae": ("cifar10_hvae", "celeba"),
              "bair_svg_original": ("bair_svg",)}


def test_there_is_a_config_per_experiment():
  assert set(CONFIGS) >= {"default", "svhn", "cifar10", "celeba", "mnist", "frey_face",
                          "bair", "cifar10_hvae", "celeba_hvae", "bair_svg",
                          "bair_svg_original"}
  for covering in COVERED_BY.values():
    assert set(covering) <= set(CONFIGS)


@pytest.mark.parametrize("name", sorted(COVERED_BY))
def test_covered_configs_build_their_model_for_their_data(name):
  from sigma_vae_jax import models
  config = _load(name)
  reference = _load(COVERED_BY[name][0])
  assert config.model.to_dict() == reference.model.to_dict()
  shape = tuple(config.dataset.image_size or (64, 64)) + (3,)  # BAIR frames are 64x64
  if config.dataset.get("as_clips"):
    shape = (config.dataset.clip_length,) + shape
  models.validate(config.model, shape)


@pytest.mark.parametrize("name", [c for c in CONFIGS if c not in COVERED_BY])
def test_every_config_trains_a_few_steps_offline(name, tmp_path):
  config = _load(name)
  config.dataset.data_dir = str(tmp_path / "tfds")
  # The config's model at its tiny test size (tests/tiny_models.py), on data resized
  # to the tiny model's example shape.
  for key, value in tiny_models.TINY[config.model.name]["fields"].items():
    config.model[key] = value
  tiny_shape = tiny_models.data_shape(config.model.name)
  if config.model.name != "conv_vae":
    config.dataset.image_size = tiny_shape[-3:-1]
  config.batch_size = 8
  config.num_train_steps = 2
  config.log_every_steps = config.eval_every_steps = config.checkpoint_every_steps = 2
  config.num_image_samples = 4
  workdir = str(tmp_path / "run")
  with tfds.testing.mock_data(num_examples=24):
    train.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  evals = [r for r in rows if r["split"] == "eval"]
  assert evals and evals[-1]["step"] == 2
  assert math.isfinite(evals[-1]["nelbo"]), evals[-1]
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "2"))
