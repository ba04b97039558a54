"""The data-parallel layout of training and evaluation: one 1-D device mesh and the
placement of host arrays on it (the Trainer's shardings are built from these).

The mesh has one axis, `DATA_AXIS`, over all devices. The train state is replicated
(`PartitionSpec()`), every batch is sharded on its leading (example) axis
(`PartitionSpec(DATA_AXIS)`), and XLA inserts the cross-device reductions, so a
`jnp.mean` over the batch is over the *global* batch. In multi-host runs every
process holds only its own rows of each batch (`global_array`).
"""

from __future__ import annotations

import jax
from jax.sharding import Mesh, NamedSharding
import numpy as np

DATA_AXIS = "data"


def make_mesh(devices=None) -> Mesh:
  """A 1-D data-parallel mesh over `devices` (default: all)."""
  return Mesh(np.asarray(jax.devices() if devices is None else devices), (DATA_AXIS,))


def global_array(local: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """Process-local rows -> a global array sharded over all processes' devices."""
  if jax.process_count() == 1:
    return jax.device_put(local, sharding)
  return jax.make_array_from_process_local_data(sharding, local)


def put_replicated(array: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """A host array every process holds in full -> replicated on all devices of
  `sharding` (a `PartitionSpec()` sharding)."""
  return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])
