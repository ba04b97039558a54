"""Checkpoints of the whole train state with orbax, and the workdir's config.json.

* `Checkpointer.restore_latest` falls back to older checkpoints when the newest is
  unreadable (truncated or deleted files), and says so.
* `BestCheckpointer` keeps the one checkpoint with the best eval ELBO (orbax ranks
  checkpoints by their metrics) beside the latest ones.
* `check_workdir_config` refuses to resume a workdir written by a different model or
  decoder, naming the differing fields, instead of failing deep inside orbax.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Optional

from absl import logging
import jax
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp

from sigma_vae_jax import configuration

CONFIG_FILE = "config.json"


class CheckpointError(RuntimeError):
  """No usable checkpoint, or a workdir that belongs to another config."""


class Checkpointer:
  """Keeps the last `max_to_keep` checkpoints of a pytree under `directory`."""

  def __init__(self, directory: str, max_to_keep: int):
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))

  def all_steps(self) -> list[int]:
    self._manager.reload()
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any) -> None:
    """Starts an asynchronous save; `wait()` makes it durable.

    The save reads a device-side copy: training goes on at once and donates the
    state's buffers to the next step, which must not change what is being written.
    """
    snapshot = jax.tree.map(lambda x: x.copy(), state)
    self._manager.save(step, args=ocp.args.StandardSave(snapshot), force=True)

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def restore_latest(self, template: Any) -> tuple[Optional[Any], Optional[int]]:
    """Restores the newest readable checkpoint into the structure of `template`.

    Returns (state, step), or (None, None) when there is no checkpoint at all.
    Raises CheckpointError if checkpoints exist but none can be read.
    """
    steps = self.all_steps()
    if not steps:
      return None, None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    failures = []
    for step in reversed(steps):
      try:
        state = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
      except Exception as e:  # orbax raises many types for damaged files
        failures.append(f"step {step}: {type(e).__name__}: {str(e)[:300]}")
        logging.warning("Checkpoint at step %d in %s is unreadable (%s); trying the "
                        "previous one.", step, self.directory, failures[-1])
        print(f"WARNING: checkpoint at step {step} is unreadable; falling back to an "
              f"older one. ({failures[-1]})", flush=True)
        continue
      if failures:
        moved = self._quarantine([s for s in steps if s > step])
        print(f"Restored the checkpoint at step {step} after skipping "
              f"{len(failures)} unreadable newer one(s), moved to {moved}.", flush=True)
      return state, step
    raise CheckpointError(
        f"None of the checkpoints in {self.directory} can be read:\n  " +
        "\n  ".join(failures) +
        "\nMove the directory away to start over.")

  def _quarantine(self, steps: list[int]) -> str:
    """Moves unreadable checkpoints out of the managed directory (kept for
    inspection, and so that training can write those steps again)."""
    target = self.directory + "_unreadable"
    if jax.process_index() == 0:
      os.makedirs(target, exist_ok=True)
      for step in steps:
        destination = os.path.join(target, f"{step}_{int(time.time())}")
        os.replace(os.path.join(self.directory, str(step)), destination)
    if jax.process_count() > 1:  # the others list the directory after process 0 moved
      multihost_utils.sync_global_devices("checkpointing.quarantine")
    self._manager.reload()
    return target

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


BEST_DIRECTORY = "checkpoints_best"
# The metric the best checkpoint is ranked by: the eval negative ELBO (nats per
# example; lower is better).
BEST_METRIC = "nelbo"


class BestCheckpointer:
  """The checkpoint with the lowest eval negative ELBO so far, in its own directory.

  A separate orbax manager (max_to_keep=1, ranked by `best_fn` on the metrics saved
  with it) so that rotating the latest checkpoints never deletes it. `update` writes
  only when the ELBO improved, so an evaluation that does not improve costs nothing;
  non-finite values never count as improvements.
  """

  def __init__(self, directory: str):
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=1, best_fn=lambda metrics: metrics[BEST_METRIC],
            best_mode="min", keep_checkpoints_without_metrics=False, create=True))
    self._best = self._read_best()

  def _read_best(self) -> tuple[Optional[int], Optional[float]]:
    self._manager.reload()
    step = self._manager.best_step()
    if step is None:
      return None, None
    value = (self._manager.metrics(step) or {}).get(BEST_METRIC)
    return step, (None if value is None else float(value))

  def best(self) -> tuple[Optional[int], Optional[float]]:
    """(step, eval nelbo) of the kept checkpoint, or (None, None)."""
    return self._best

  def update(self, step: int, state: Any, nelbo: float) -> bool:
    """Saves `state` as the best checkpoint if `nelbo` beats the kept one; returns
    whether it did. Asynchronous like `Checkpointer.save`."""
    best_step, best_value = self._best
    if not math.isfinite(nelbo) or (best_value is not None and not nelbo < best_value):
      return False
    self._manager.wait_until_finished()
    if best_step == step:  # the same step written by an earlier, resumed run
      self._manager.delete(step)
    snapshot = jax.tree.map(lambda x: x.copy(), state)
    self._manager.save(step, args=ocp.args.StandardSave(snapshot),
                       metrics={BEST_METRIC: float(nelbo)}, force=True)
    self._best = (step, float(nelbo))
    return True

  def restore(self, template: Any) -> tuple[Optional[Any], Optional[int]]:
    """The best checkpoint in `template`'s structure: (state, step) or (None, None)."""
    step, _ = self.best()
    if step is None:
      return None, None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    return self._manager.restore(step, args=ocp.args.StandardRestore(abstract)), step

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def check_workdir_config(workdir: str, config_dict: dict, *, has_checkpoints: bool) -> None:
  """Writes WORKDIR/config.json, or checks a resumed run against the saved one.

  Raises CheckpointError naming the differing structural fields (model, decoder,
  dataset name and image size) when `workdir` holds checkpoints of another config.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  if has_checkpoints and os.path.exists(path):
    with open(path) as f:
      saved = configuration.upgrade_config_dict(json.load(f))
    differing = configuration.structural_differences(saved, config_dict)
    if differing:
      details = "; ".join(
          f"{name}: saved {_lookup(saved, name)!r}, now {_lookup(config_dict, name)!r}"
          for name in differing)
      raise CheckpointError(
          f"The workdir {workdir} holds checkpoints of a different model/decoder "
          f"config and cannot be resumed with this one. Differing fields: {details}. "
          f"Use a new --workdir, or the saved config.")
  if jax.process_index() == 0:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      json.dump(config_dict, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def is_legacy_workdir(workdir: str) -> bool:
  """Whether WORKDIR/config.json was written before the model contract (no
  `model.name`): its checkpoints use `train_step.LegacyTrainState`'s layout."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return False
  with open(path) as f:
    saved = json.load(f)
  return "name" not in saved.get("model", {})


def _lookup(d: dict, dotted: str) -> Any:
  for key in dotted.split("."):
    if not isinstance(d, dict) or key not in d:
      return None
    d = d[key]
  return d
