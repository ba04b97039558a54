"""Trains a VAE: python -m sigma_vae_jax.main --config=configs/default.py --workdir=DIR

Any config field can be overridden: --config.decoder.name=shared_sigma,
--config.num_train_steps=100 (fields: see the config file and the README).
Restarting with the same --workdir resumes from its latest checkpoint.
Mistakes (bad config, data or workdir) stop with one ERROR line; --verbosity=1
adds the traceback.
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from sigma_vae_jax import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and images "
                    "(required).")
flags.DEFINE_bool("multihost", False,
                  "Call jax.distributed.initialize() first (multi-host GPU/TPU runs).")
config_flags.DEFINE_config_file(
    "config", None, "Path to a config file (configs/*.py), required; override its "
    "fields with --config.FIELD=VALUE.", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not FLAGS["verbosity"].present:
    # Orbax and TFDS log every file they touch at INFO; keep the console for progress.
    logging.set_verbosity(logging.WARNING)
  cli.quiet_third_party_logs()
  import jax
  if FLAGS.multihost:
    jax.distributed.initialize()
  logging.info("JAX process %d/%d, local devices %s", jax.process_index(),
               jax.process_count(), jax.local_devices())

  from sigma_vae_jax import checkpointing, configuration, train
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (configuration.ConfigError, checkpointing.CheckpointError,
          train.NonFiniteError, ValueError, FileNotFoundError, PermissionError) as e:
    # Expected failures (bad config, data or workdir) get one clear line, no traceback;
    # the traceback stays in the debug log (--verbosity=1) for bug reports.
    logging.debug("Stopped by", exc_info=True)
    cli.fail(str(e))


if __name__ == "__main__":
  cli.set_tensorflow_env_defaults()  # before anything imports TensorFlow
  app.run(main, flags_parser=cli.absl_flags_parser)
