"""Frey Face (1,965 grayscale 28x20x1 faces; a seeded 10% held out as the test split).

The builder (`sigma_vae_jax/data/datasets/frey_face.py`) downloads `frey_rawface.mat` from
https://cs.nyu.edu/~roweis/data/frey_rawface.mat on first use, or takes it from TFDS's
manual directory (`<data_dir>/downloads/manual/frey_rawface.mat`, or
`dataset.manual_dir`) when it is there. Set `dataset.download=False` to never download.
"""

from sigma_vae_jax import default_config


def get_config():
  config = default_config.get_config()
  config.dataset.name = "frey_face"
  config.dataset.test_fraction = 0.1
  # 1,768 training images: ~27 steps per epoch at batch 64.
  config.num_train_steps = 3_000
  config.eval_every_steps = 500
  config.checkpoint_every_steps = 500
  return config
