"""Run by test_train.py in a subprocess with 8 simulated CPU devices.

Trains the same state for a few steps on a 1-device mesh and on an 8-device mesh
(the batch sharded 8 ways) and prints the largest differences as JSON.
"""

import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh  # noqa: E402

from sigma_vae_jax import train  # noqa: E402
from configs import default as default_config  # noqa: E402


def main(decoder_name):
  assert jax.device_count() == 8, jax.devices()
  config = default_config.get_config()
  config.decoder.name = decoder_name
  config.model.latent_dim, config.model.base_channels = 4, 4
  config.batch_size = 16
  images = np.random.RandomState(0).randint(0, 256, (40, 8, 8, 3)).astype(np.uint8)
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    trainer = train.Trainer(config, (8, 8, 3), Mesh(np.asarray(devices), ("data",)))
    state = trainer.init_state()
    data = trainer.put_replicated(images)
    for _ in range(3):
      state, metrics = trainer.train_on_device(state, data)
    num_devices = len(state.params["vae"]["encoder"]["Conv_0"]["kernel"].sharding.device_set)
    results.append((jax.device_get(state), jax.device_get(metrics),
                    trainer.train_on_device._cache_size(), num_devices))
  (single, m1, _, _), (sharded, m8, cache, num_devices) = results
  diff = max(float(np.max(np.abs(a - b))) for a, b in
             zip(jax.tree.leaves(single.params), jax.tree.leaves(sharded.params)))
  scale = max(float(np.max(np.abs(a))) for a in jax.tree.leaves(single.params))
  print(json.dumps({
      "param_max_abs_diff": diff, "param_max_abs": scale,
      "loss_single": float(m1["loss"]), "loss_sharded": float(m8["loss"]),
      "steps": [int(single.step), int(sharded.step)],
      "decoder_state_single": {k: float(v) for k, v in single.decoder_state.items()},
      "decoder_state_sharded": {k: float(v) for k, v in sharded.decoder_state.items()},
      "num_devices": num_devices,
      "cache_size": cache}))


if __name__ == "__main__":
  main(sys.argv[1])
