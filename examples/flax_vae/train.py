r"""Flax's `examples/vae`, trained as an optimal sigma-VAE with `sigma_vae_jax.losses`.

The model (models.py) and the loop are Flax's; only the likelihood differs. Flax's
example scores the decoder logits with a Bernoulli cross-entropy, which is not a
density of grey-level images; here the decoder mean sigmoid(logits) gets a Gaussian
likelihood whose sigma is the closed-form optimum sigma*^2 = MSE of the batch
(floored at log sigma = -6). Evaluation uses the running average of the training
batches' sigma*^2 (a test image has no sigma* of its own) and reports bits/dim of the
8-bit data with the discretized Gaussian. Every line that differs from the Bernoulli
VAE is marked `# sigma-VAE`.

  pip install -e .   # from the repository root: sigma_vae_jax
  python examples/flax_vae/train.py --num_steps=3000            # synthetic images
  python examples/flax_vae/train.py --dataset=mnist --num_steps=3000   # TFDS MNIST

`--dataset=synthetic` (default) generates grey-level blobs on the 8-bit grid with
numpy (no download); `mnist` reads TFDS MNIST (downloaded once).
"""

import functools
from typing import Any

from absl import app
from absl import flags
from flax.training import train_state
import jax
import jax.numpy as jnp
import numpy as np
import optax

import models
from sigma_vae_jax import losses  # sigma-VAE

FLAGS = flags.FLAGS
flags.DEFINE_float("learning_rate", 1e-3, "The learning rate for the Adam optimizer.")
flags.DEFINE_integer("batch_size", 128, "Batch size for training.")
flags.DEFINE_integer("num_steps", 3000, "Number of training steps.")
flags.DEFINE_integer("eval_every", 1000, "Evaluate every this many steps.")
flags.DEFINE_integer("latents", 20, "Number of latent variables.")
flags.DEFINE_integer("hidden", 500, "Width of the encoder's and decoder's hidden layer.")
flags.DEFINE_enum("dataset", "synthetic", ["synthetic", "mnist"], "Training data.")
flags.DEFINE_integer("num_train", 10000, "Synthetic data: number of training images.")

# sigma-VAE: one sigma shared by the batch; its running average for evaluation.
RUNNING_SIGMA = losses.RunningSigma(axis="shared", decay=0.99)


def synthetic_images(num: int, seed: int, size: int = 28) -> np.ndarray:
  """[num, size * size] grey-level blobs in [0, 1] on the 8-bit grid k/255."""
  rng = np.random.default_rng(seed)
  grid = np.stack(np.meshgrid(np.arange(size), np.arange(size), indexing="ij"), -1)
  images = np.zeros((num, size, size))
  for _ in range(3):
    centre = rng.uniform(4, size - 4, (num, 1, 1, 2))
    width = rng.uniform(2, 5, (num, 1, 1))
    height = rng.uniform(0.2, 0.8, (num, 1, 1))
    images += height * np.exp(-np.sum((grid - centre) ** 2, -1) / (2 * width ** 2))
  images = np.round(np.clip(images, 0, 1) * 255) / 255
  return images.reshape(num, -1).astype(np.float32)


def load_data(dataset: str, num_train: int = 10000, num_test: int = 1000):
  """(train [N, 784], test [M, 784]) float32 images in [0, 1] (sizes: synthetic only)."""
  if dataset == "synthetic":
    return synthetic_images(num_train, seed=0), synthetic_images(num_test, seed=1)
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  splits = [tfds.as_numpy(tfds.load("mnist", split=s, batch_size=-1))["image"]
            for s in ("train", "test")]
  return tuple(s.reshape(len(s), -1).astype(np.float32) / 255.0 for s in splits)


def compute_metrics(images, mean, mu, logvar, log_sigma):
  """Batch means in nats per image, and bits/dim of the 8-bit data."""
  kl_per_latent = losses.gaussian_kl(mean=mu, log_var=logvar)
  # sigma-VAE: the Gaussian density of the data in [0, 1] (was: BCE of the logits).
  nll = losses.gaussian_nll(x=images, mean=mean, log_sigma=log_sigma)
  nelbo, rec, kl = losses.negative_elbo(nll, kl_per_latent)
  # sigma-VAE: the same decoder over the 256 levels, comparable with any decoder.
  nll_discrete = losses.discretized_gaussian_nll(x=images, mean=mean, log_sigma=log_sigma)
  nelbo_discrete, _, _ = losses.negative_elbo(nll_discrete, kl_per_latent)
  return {"loss": nelbo.mean(), "rec": rec.mean(), "kld": kl.mean(),
          "bpd": losses.nats_to_bits_per_dim(nelbo_discrete.mean(), images.shape[-1]),
          "sigma": jnp.exp(log_sigma).mean()}


@functools.partial(jax.jit, static_argnames="vae")
def train_step(vae, state, sigma_state, batch, z_rng):
  def loss_fn(params):
    logits, mu, logvar = vae.apply({"params": params}, batch, z_rng)
    mean = jax.nn.sigmoid(logits)
    log_sigma = losses.optimal_log_sigma(x=batch, mean=mean)          # sigma-VAE
    nll = losses.gaussian_nll(x=batch, mean=mean, log_sigma=log_sigma)  # sigma-VAE
    nelbo, _, _ = losses.negative_elbo(nll, losses.gaussian_kl(mu, logvar))
    return nelbo.mean(), mean
  (loss, mean), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  sigma_state = RUNNING_SIGMA.update(sigma_state, x=batch, mean=mean)  # sigma-VAE
  return state.apply_gradients(grads=grads), sigma_state, loss


@functools.partial(jax.jit, static_argnames="vae")
def eval_f(vae, params, sigma_state, images, z, z_rng):
  logits, mu, logvar = vae.apply({"params": params}, images, z_rng)
  log_sigma = RUNNING_SIGMA.log_sigma(sigma_state)  # sigma-VAE: sigma from training
  metrics = compute_metrics(images, jax.nn.sigmoid(logits), mu, logvar, log_sigma)
  generated = vae.apply({"params": params}, z, method=vae.generate)
  return metrics, generated


def train_and_evaluate(learning_rate: float = 1e-3, batch_size: int = 128,
                       num_steps: int = 3000, eval_every: int = 1000, latents: int = 20,
                       hidden: int = 500, dataset: Any = "synthetic", seed: int = 0,
                       num_train: int = 10000):
  """Trains and returns (state, sigma_state, the last evaluation's metrics as floats).

  `dataset`: "synthetic", "mnist" or a (train, test) pair of [N, D] arrays in [0, 1];
  `num_train`: the number of synthetic training images.
  """
  train_ds, test_ds = (load_data(dataset, num_train) if isinstance(dataset, str)
                       else dataset)
  vae = models.model(latents, features=train_ds.shape[-1], hidden=hidden)
  rng = jax.random.PRNGKey(seed)
  rng, key = jax.random.split(rng)
  init_data = jnp.ones((batch_size, train_ds.shape[-1]), jnp.float32)
  state = train_state.TrainState.create(
      apply_fn=vae.apply, params=vae.init(key, init_data, rng)["params"],
      tx=optax.adam(learning_rate))
  sigma_state = RUNNING_SIGMA.init(init_data.shape)  # sigma-VAE
  rng, z_key, eval_rng = jax.random.split(rng, 3)
  z = jax.random.normal(z_key, (64, latents))
  order = np.random.default_rng(seed)
  metrics = {}
  for step in range(1, num_steps + 1):
    batch = train_ds[order.integers(0, len(train_ds), batch_size)]
    rng, key = jax.random.split(rng)
    state, sigma_state, _ = train_step(vae, state, sigma_state, batch, key)
    if step % eval_every == 0 or step == num_steps:
      metrics, _ = eval_f(vae, state.params, sigma_state, test_ds, z, eval_rng)
      metrics = {k: float(v) for k, v in metrics.items()}
      print("eval step: {}, loss: {:.2f}, rec: {:.2f}, KLD: {:.2f}, bits/dim (8-bit): "
            "{:.3f}, sigma: {:.4f}".format(step, metrics["loss"], metrics["rec"],
                                           metrics["kld"], metrics["bpd"],
                                           metrics["sigma"]), flush=True)
  return state, sigma_state, metrics


def main(argv):
  del argv
  train_and_evaluate(FLAGS.learning_rate, FLAGS.batch_size, FLAGS.num_steps,
                     FLAGS.eval_every, FLAGS.latents, FLAGS.hidden, FLAGS.dataset,
                     num_train=FLAGS.num_train)


if __name__ == "__main__":
  app.run(main)
