"""sigma_vae_jax: VAEs with calibrated decoders (the sigma-VAE) in JAX/Flax.

The package, by layer (a module imports only from its own layer or those above it
in this list):

* `losses`, `likelihoods`, `objectives`: the maths (pure JAX).
* `models`: the model registry, the contract (`models.base`) and the three families.
* `configuration`, `default_config`: the config and its validation.
* `data`: datasets, preprocessing and batches (TFDS, arrays, folders, videos).
* `training`: the step, its jit/sharding wiring, the loop, checkpoints, reporting.
* `evaluation`: ELBO, IWAE, rate, FID, video scores, and the sweeps of the scripts.
* `cli`, `config_cli`, `config_help`, `process_setup`, `main`, `sweep_cli`: the
  command line (`sweep_cli`: the flags and error handling of the reproduction scripts).

Importing the package is cheap and has no side effects: `sigma_vae_jax.losses` needs
only JAX, and nothing changes the process's environment. The training system (`data`,
`training`, `evaluation`) pulls in TensorFlow lazily, only when those modules are
imported; the command-line entry points set TensorFlow's logging defaults themselves
(`process_setup.set_tensorflow_env_defaults`).
"""

import importlib
import warnings

__version__ = "0.2.0"

# Modules that lived at the package root before version 0.2.0: `from sigma_vae_jax import
# train` still works (with a DeprecationWarning); `import sigma_vae_jax.train` does not.
_MOVED_MODULES = {
    "input_pipeline": "sigma_vae_jax.data.input_pipeline",
    "datasets": "sigma_vae_jax.data.datasets",
    "train_step": "sigma_vae_jax.training.train_step",
    "trainer": "sigma_vae_jax.training.trainer",
    "train": "sigma_vae_jax.training.train",
    "checkpointing": "sigma_vae_jax.training.checkpointing",
    "reporting": "sigma_vae_jax.training.reporting",
    "progress": "sigma_vae_jax.training.progress",
    "evaluate": "sigma_vae_jax.evaluation.evaluate",
    "metrics": "sigma_vae_jax.evaluation.metrics",
    "inception": "sigma_vae_jax.evaluation.inception",
    "video_metrics": "sigma_vae_jax.evaluation.video_metrics",
    "sweeps": "sigma_vae_jax.evaluation.sweeps",
}


def __getattr__(name):
  if name in _MOVED_MODULES:
    warnings.warn(f"sigma_vae_jax.{name} moved to {_MOVED_MODULES[name]}; import it "
                  "from there", DeprecationWarning, stacklevel=2)
    return importlib.import_module(_MOVED_MODULES[name])
  raise AttributeError(f"module 'sigma_vae_jax' has no attribute {name!r}")
