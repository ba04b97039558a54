"""Run by tests/test_multihost.py as one of N processes of one multi-process run:

  python multihost_run.py ROOT PROCESS_ID NUM_PROCESSES PORT DEVICES MODE[,MODE...] [DATA_DIR]

Each process has DEVICES CPU devices; with NUM_PROCESSES > 1 they join through
`jax.distributed.initialize` on 127.0.0.1:PORT (CPU collectives over gloo). For each
MODE it trains the tiny model of that mode (`mode_config`) with
`train.train_and_evaluate` into ROOT/MODE (data: ROOT/images.npy, ROOT/videos.npy,
the TFDS DATA_DIR): the same function `python -m
sigma_vae_jax.main` runs, several modes per process start-up to save CI time.
With MODE "probe" it only checks that a cross-process psum works (gloo available).
"""

import os
import sys

ROOT_OF_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def mode_config(mode: str, root: str, data_dir: str):
  """The config of one data mode (the same for every process layout)."""
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import tiny_models  # pylint: disable=g-import-not-at-top
  if mode == "video":
    config = tiny_models.tiny_config("svg_lp", batch_size=8,
                                     **tiny_models.sharded_overrides("svg_lp"))
    config.dataset.name = "numpy_videos"
    config.dataset.path = os.path.join(root, "videos.npy")
  else:
    config = tiny_models.tiny_config("conv_vae", batch_size=16)
    if mode == "tfds":
      config.dataset.name = "synthetic_shapes"
      config.dataset.data_dir = data_dir
    else:
      config.dataset.name = "numpy"
      config.dataset.path = os.path.join(root, "images.npy")
  config.dataset.on_device = mode == "device"
  # svg_lp: 4 steps, as its float reduction-order differences (batch norm statistics
  # summed in another order) grow past the 8-device test's tolerance by step 6.
  steps = 4 if mode == "video" else 6
  config.num_train_steps = steps
  config.log_every_steps = 2
  config.eval_every_steps = steps
  config.checkpoint_every_steps = steps // 2
  config.num_image_samples = 8
  config.checkpoint_every_seconds = None
  return config


def main(root, process_id, num_processes, port, devices, modes, data_dir=""):
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import cli_utils  # pylint: disable=g-import-not-at-top  (standard library only)
  os.environ["XLA_FLAGS"] = cli_utils.xla_flags_with_devices(
      devices, os.environ.get("XLA_FLAGS", ""))
  os.environ["JAX_PLATFORMS"] = "cpu"
  sys.path.insert(0, ROOT_OF_REPO)
  import jax  # pylint: disable=g-import-not-at-top
  if num_processes > 1:
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}",
                               num_processes=num_processes, process_id=process_id,
                               heartbeat_timeout_seconds=10)
  assert jax.process_count() == num_processes and jax.device_count() == (
      num_processes * devices), jax.devices()
  if modes == ["probe"]:
    import numpy as np  # pylint: disable=g-import-not-at-top
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
    mesh = Mesh(np.array(jax.devices()), ("d",))
    x = jax.make_array_from_process_local_data(
        NamedSharding(mesh, P("d")), np.full(devices, process_id + 1, np.float32))
    total = jax.jit(lambda a: a.sum(), out_shardings=NamedSharding(mesh, P()))(x)
    print(f"PSUM={float(total)}", flush=True)
    return
  from sigma_vae_jax.training import train  # pylint: disable=g-import-not-at-top
  for mode in modes:
    train.train_and_evaluate(mode_config(mode, root, data_dir), os.path.join(root, mode))


if __name__ == "__main__":
  args = sys.argv[1:]
  main(args[0], int(args[1]), int(args[2]), int(args[3]), int(args[4]),
       args[5].split(","), args[6] if len(args) > 6 else "")
