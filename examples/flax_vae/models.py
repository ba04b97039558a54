"""The VAE of Flax's `examples/vae`: MLP encoder and decoder on flattened images.

Nothing here is specific to the sigma-VAE: the decoder outputs one number per pixel
(logits), whose sigmoid is the Bernoulli probability in Flax's example and the
Gaussian mean here.
"""

from flax import linen as nn
import jax
import jax.numpy as jnp


class Encoder(nn.Module):
  """x [B, D] -> posterior mean and log-variance, each [B, latents]."""
  latents: int
  hidden: int = 500

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(self.hidden, name="fc1")(x))
    mean_x = nn.Dense(self.latents, name="fc2_mean")(x)
    logvar_x = nn.Dense(self.latents, name="fc2_logvar")(x)
    return mean_x, logvar_x


class Decoder(nn.Module):
  """z [B, latents] -> one logit per data dimension, [B, features]."""
  features: int = 784
  hidden: int = 500

  @nn.compact
  def __call__(self, z):
    z = nn.relu(nn.Dense(self.hidden, name="fc1")(z))
    return nn.Dense(self.features, name="fc2")(z)


class VAE(nn.Module):
  """Encoder, one reparameterised sample, decoder."""
  latents: int = 20
  features: int = 784
  hidden: int = 500

  def setup(self):
    self.encoder = Encoder(self.latents, self.hidden)
    self.decoder = Decoder(self.features, self.hidden)

  def __call__(self, x, z_rng):
    mean, logvar = self.encoder(x)
    z = reparameterize(z_rng, mean, logvar)
    return self.decoder(z), mean, logvar

  def generate(self, z):
    """Decoder means of latents z, in [0, 1]."""
    return nn.sigmoid(self.decoder(z))


def reparameterize(rng, mean, logvar):
  """One sample z ~ N(mean, exp(logvar)) with a gradient through mean and logvar."""
  return mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, logvar.shape)


def model(latents: int, features: int = 784, hidden: int = 500) -> VAE:
  return VAE(latents=latents, features=features, hidden=hidden)
