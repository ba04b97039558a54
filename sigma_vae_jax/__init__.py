"""sigma_vae_jax: VAEs with calibrated decoders (the sigma-VAE) in JAX/Flax.

Importing the package is cheap: `sigma_vae_jax.losses` needs only JAX. The
training system (`train`, `input_pipeline`) pulls in TensorFlow lazily, only
when those modules are imported.
"""

__version__ = "0.1.0"
