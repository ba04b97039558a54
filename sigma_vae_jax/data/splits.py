"""Which examples go where: held-out test splits, process shards, epoch seeds.

The rules that make a run deterministic and resumable: `holdout_indices` (a fixed,
seeded test split of datasets without one, independent of the training seed),
`epoch_seed` (the shuffle seed of an epoch: a function of (seed, epoch, process)
only), `shard_bounds` (each process's contiguous shard), `batches_per_epoch` (full
batches per epoch of a repeated stream, the same on every process).
"""

from __future__ import annotations

import jax
import numpy as np

# Seed of the held-out test split of datasets without one (fixed: the test set must not
# change with the training seed).
HOLDOUT_SEED = 0
SPLITS = ("train", "test")


def process_index_and_count(process_index, process_count) -> tuple[int, int]:
  """(process index, process count): the given values, JAX's where None; checked."""
  pi = jax.process_index() if process_index is None else int(process_index)
  pc = jax.process_count() if process_count is None else int(process_count)
  if not 0 <= pi < pc:
    raise ValueError(f"process_index={pi} must be in [0, process_count={pc}).")
  return pi, pc


def epoch_seed(seed: int, epoch: int, process_index: int) -> int:
  """A 31-bit seed, a deterministic function of (seed, epoch, process)."""
  ss = np.random.SeedSequence([int(seed) % 2**63, int(epoch), int(process_index)])
  return int(ss.generate_state(1, np.uint32)[0] & 0x7FFFFFFF)


def shard_bounds(n: int, process_index: int, process_count: int) -> tuple[int, int]:
  """[start, end) of this process's contiguous shard: sizes differ by at most 1 (the
  first `n % process_count` shards are one longer), as `tfds.even_splits`."""
  base, rem = divmod(n, process_count)
  start = process_index * base + min(process_index, rem)
  return start, start + base + (process_index < rem)


def holdout_indices(num_examples: int, test_fraction: float,
                    seed: int = HOLDOUT_SEED) -> dict[str, np.ndarray]:
  """Fixed, seeded train/test split of range(num_examples): sorted index arrays."""
  if not 0.0 < float(test_fraction) < 1.0:
    raise ValueError(f"`dataset.test_fraction` must be in (0, 1); got {test_fraction}.")
  num_test = int(round(num_examples * float(test_fraction)))
  num_test = min(max(num_test, 1), num_examples - 1)
  if num_examples < 2:
    raise ValueError(f"Need at least 2 examples to hold out a test split; got "
                     f"{num_examples}.")
  perm = np.random.default_rng(seed).permutation(num_examples)
  return {"train": np.sort(perm[num_test:]), "test": np.sort(perm[:num_test])}


def batches_per_epoch(n: int, batch_size: int, process_count: int, split: str) -> int:
  """Full batches per epoch of a repeated stream, the same on every process."""
  smallest_shard = n // process_count
  bpe = smallest_shard // batch_size
  if bpe < 1:
    raise ValueError(
        f"The {split!r} split has {n} examples ({smallest_shard} per process over "
        f"{process_count} processes): fewer than one batch of {batch_size}. Use a "
        f"smaller batch size.")
  return bpe

