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
from sigma_vae_jax import process_setup

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and images "
                    "(required).")
flags.DEFINE_bool("multihost", False,
                  "One run over several processes (hosts): calls "
                  "jax.distributed.initialize() first. On TPU pods and SLURM/Open MPI "
                  "clusters JAX detects the processes; elsewhere give the next three "
                  "flags (see README, 'Several hosts').")
flags.DEFINE_string("coordinator_address", None,
                    "With --multihost: HOST:PORT of process 0, which every process "
                    "connects to (default: detected, or $JAX_COORDINATOR_ADDRESS).")
flags.DEFINE_integer("num_processes", None,
                     "With --multihost: number of processes (default: detected).")
flags.DEFINE_integer("process_id", None,
                     "With --multihost: this process's index in [0, num_processes) "
                     "(default: detected).")
flags.DEFINE_integer("heartbeat_timeout_seconds", 100,
                     "With --multihost: a process that sends no heartbeat for this long "
                     "counts as dead and JAX stops the others (instead of waiting on a "
                     "collective forever); JAX's default.")
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
  distributed = cli.distributed_options(
      FLAGS.multihost, FLAGS.coordinator_address, FLAGS.num_processes,
      FLAGS.process_id, FLAGS.heartbeat_timeout_seconds)
  import jax
  if distributed is not None:
    try:
      jax.distributed.initialize(**distributed)
    except (ValueError, TypeError, RuntimeError) as e:
      logging.debug("jax.distributed.initialize failed", exc_info=True)
      cli.fail(f"--multihost: jax.distributed.initialize({_describe(distributed)}) "
               f"failed: {' '.join(str(e).split())} (outside a TPU pod or a SLURM/Open "
               f"MPI cluster, give --coordinator_address, --num_processes and "
               f"--process_id)")
  logging.info("JAX process %d/%d, local devices %s", jax.process_index(),
               jax.process_count(), jax.local_devices())

  from sigma_vae_jax import configuration
  from sigma_vae_jax.training import checkpointing, train
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (configuration.ConfigError, checkpointing.CheckpointError,
          train.NonFiniteError, ValueError, FileNotFoundError, PermissionError) as e:
    # Expected failures (bad config, data or workdir) get one clear line, no traceback;
    # the traceback stays in the debug log (--verbosity=1) for bug reports.
    logging.debug("Stopped by", exc_info=True)
    cli.fail(str(e))


def _describe(options: dict) -> str:
  return ", ".join(f"{k}={v!r}" for k, v in options.items())


if __name__ == "__main__":
  process_setup.set_tensorflow_env_defaults()  # before anything imports TensorFlow
  app.run(main, flags_parser=cli.absl_flags_parser)
