"""Run by the tests in a subprocess with 8 simulated CPU devices:
`python sharded_vs_single.py DECODER MODEL [MODEL ...]`.

For each MODEL: trains the same state for a few steps on a 1-device mesh and on an
8-device mesh (the batch sharded 8 ways), evaluates both, and prints the differences
as one JSON line (with "model": MODEL). All models in one process start-up (python,
JAX and TensorFlow imports are paid once, not once per model).
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cli_utils  # noqa: E402  (standard library only: before JAX is imported)

os.environ["XLA_FLAGS"] = cli_utils.xla_flags_with_devices(8, os.environ.get("XLA_FLAGS", ""))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import tiny_models  # noqa: E402
from sigma_vae_jax.training import trainer as trainer_lib  # noqa: E402


def compare(model_name, decoder_name):
  """The differences between 1 and 8 devices for one model, as a JSON-able dict."""
  config = tiny_models.tiny_config(model_name, decoder_name, batch_size=16,
                                    **tiny_models.sharded_overrides(model_name))
  data = tiny_models.smooth_data(model_name, 40)
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    trainer = trainer_lib.Trainer(config, tiny_models.data_shape(model_name),
                                  trainer_lib.make_mesh(devices))
    state = trainer.init_state()
    on_device = trainer.put_replicated(data)
    for _ in range(3):
      state, metrics = trainer.train_on_device(state, on_device)
    num_devices = len(jax.tree.leaves(state.params)[0].sharding.device_set)
    eval_metrics = trainer.evaluate(state, trainer_lib.padded_batches(data[:24], 16))
    results.append((jax.device_get(state), jax.device_get(metrics), eval_metrics,
                    trainer.train_on_device._cache_size(), num_devices))
  (single, m1, e1, _, _), (sharded, m8, e8, cache, num_devices) = results
  diff = max(float(np.max(np.abs(a - b))) for a, b in
             zip(jax.tree.leaves(single.params), jax.tree.leaves(sharded.params)))
  scale = max(float(np.max(np.abs(a))) for a in jax.tree.leaves(single.params))
  return {
      "model": model_name,
      "param_max_abs_diff": diff, "param_max_abs": scale,
      "loss_single": float(m1["loss"]), "loss_sharded": float(m8["loss"]),
      "eval_single": e1, "eval_sharded": e8,
      "steps": [int(single.step), int(sharded.step)],
      "likelihood_state_single": {k: float(v) for k, v in single.likelihood_state.items()},
      "likelihood_state_sharded": {k: float(v) for k, v in sharded.likelihood_state.items()},
      "num_devices": num_devices,
      "cache_size": cache}


def main(decoder_name, model_names):
  assert jax.device_count() == 8, jax.devices()
  for model_name in model_names:
    print(json.dumps(compare(model_name, decoder_name)), flush=True)


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2:])
