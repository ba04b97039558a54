"""Default config: the paper's small conv VAE with the optimal sigma decoder on the
built-in synthetic dataset (no download); a few minutes on a 2-core CPU.

The fields and their meaning: sigma_vae_jax/default_config.py. Override any on the
command line, e.g. `--config.decoder.name=shared_sigma`.
"""

from sigma_vae_jax.default_config import get_config  # noqa: F401
