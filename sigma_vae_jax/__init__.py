"""sigma_vae_jax: VAEs with calibrated decoders (the sigma-VAE) in JAX/Flax.

Importing the package is cheap and has no side effects: `sigma_vae_jax.losses` needs
only JAX, and nothing changes the process's environment. The training system (`train`,
`input_pipeline`) pulls in TensorFlow lazily, only when those modules are imported;
the command-line entry points set TensorFlow's logging defaults themselves
(`cli.set_tensorflow_env_defaults`).
"""

__version__ = "0.1.0"
