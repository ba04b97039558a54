"""How the evaluation functions walk over a test set: fixed-size batches, sharded over
the trainer's mesh, the last one padded and masked.

The batch size is rounded up to a multiple of the number of devices, so every
function compiles once per batch size. Rows are examples: uint8 images [N, H, W, C]
or clips [N, T, H, W, C].
"""

from __future__ import annotations

from typing import Iterator

import jax
import numpy as np

from sigma_vae_jax.training import progress
from sigma_vae_jax.training import trainer as trainer_lib


def batch_size_for(trainer: trainer_lib.Trainer, batch_size: int) -> int:
  """Rounds up to a multiple of the number of devices (batches are sharded)."""
  n = trainer.mesh.devices.size
  return max(n, -(-batch_size // n) * n)


def progress_over(label: str, trainer, num_rows: int, batch_size: int
                  ) -> progress.Progress:
  """Progress lines (with a time estimate) over the batches of num_rows rows."""
  return progress.Progress(label, -(-num_rows // batch_size_for(trainer, batch_size)))


def sharded_batches(trainer, data: np.ndarray, batch_size: int
                    ) -> Iterator[tuple[jax.Array, jax.Array, int]]:
  """(sharded uint8 batch, sharded mask, number of valid rows) for each padded batch."""
  batch_size = batch_size_for(trainer, batch_size)
  for batch, mask in trainer_lib.padded_batches(np.asarray(data), batch_size):
    yield trainer.shard_batch(batch), trainer.shard_batch(mask), int(mask.sum())
