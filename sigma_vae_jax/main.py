"""Command line: `python -m sigma_vae_jax.main --config=configs/default.py --workdir=DIR`.

Any config field can be overridden: `--config.decoder.name=shared_sigma`,
`--config.num_train_steps=100`. Restarting with the same --workdir resumes.
"""

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and images.")
flags.DEFINE_bool("multihost", False,
                  "Call jax.distributed.initialize() first (multi-host GPU/TPU runs).")
config_flags.DEFINE_config_file(
    "config", None, "Path to a config file (configs/*.py).", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not FLAGS["verbosity"].present:
    # Orbax and TFDS log every file they touch at INFO; keep the console for progress.
    logging.set_verbosity(logging.WARNING)
  import jax
  if FLAGS.multihost:
    jax.distributed.initialize()
  logging.info("JAX process %d/%d, local devices %s", jax.process_index(),
               jax.process_count(), jax.local_devices())

  from sigma_vae_jax import checkpointing, configuration, train
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (configuration.ConfigError, checkpointing.CheckpointError,
          train.NonFiniteError, ValueError, FileNotFoundError) as e:
    # Expected failures (bad config, data or workdir) get one clear line, no traceback;
    # the traceback stays in the debug log for bug reports.
    logging.debug("Stopped by", exc_info=True)
    print(f"ERROR: {e}", file=sys.stderr, flush=True)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
