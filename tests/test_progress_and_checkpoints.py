"""What a resumed or long run leaves behind: metrics rows and TensorBoard events
past the restored step are dropped, checkpoints are also written on wall-clock time
(and the run still resumes exactly), the best eval ELBO's checkpoint is kept."""

import glob
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sigma_vae_jax.evaluation import evaluate
from sigma_vae_jax.training import checkpointing
from sigma_vae_jax.training import reporting
from sigma_vae_jax.training import train
import cli_utils


def _event_steps(logdir):
  """(tag, step) of every scalar/image event, read with TensorBoard's own loader."""
  from tensorboard.backend.event_processing import event_accumulator
  acc = event_accumulator.EventAccumulator(logdir, size_guidance={"tensors": 0})
  acc.Reload()
  return sorted((tag, e.step) for tag in acc.Tags()["tensors"] for e in acc.Tensors(tag))


def test_drop_rows_after_keeps_earlier_rows_and_removes_a_torn_line(tmp_path):
  path = str(tmp_path / "metrics.jsonl")
  rows = [{"step": s, "split": "train", "loss": float(s)} for s in (2, 4, 6, 8)]
  with open(path, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
    f.write('{"step": 10, "spl')  # killed mid-write
  assert reporting.drop_rows_after(path, 4) == 3
  with open(path) as f:
    assert [json.loads(line) for line in f] == rows[:2]
  assert reporting.drop_rows_after(path, 4) == 0
  assert reporting.drop_rows_after(str(tmp_path / "missing.jsonl"), 4) == 0


def test_a_resumed_reporter_drops_tensorboard_events_past_the_restored_step(tmp_path):
  logdir = str(tmp_path)
  reporter = reporting.Reporter(logdir, 10)
  for step in (2, 4, 6, 8):
    reporter.write(step, "train", {"loss": float(step)})
  reporter.write_images(4, {"samples": np.zeros((4, 4, 3), np.uint8)})
  reporter.write_images(8, {"samples": np.zeros((4, 4, 3), np.uint8)})
  reporter.close()
  assert _event_steps(logdir) == [("samples", 4), ("samples", 8)] + [
      ("train/loss", s) for s in (2, 4, 6, 8)]

  resumed = reporting.Reporter(logdir, 10, start_step=4)  # the checkpoint was at 4
  resumed.write(6, "train", {"loss": 60.0})
  resumed.close()
  assert _event_steps(logdir) == [("samples", 4), ("train/loss", 2), ("train/loss", 4),
                                  ("train/loss", 6)]
  assert [r["step"] for r in cli_utils.metrics_rows(logdir)] == [2, 4, 6]


def test_time_based_checkpoints_resume_exactly_and_drop_the_lost_rows(tmp_path,
                                                                      shapes_data_dir):
  # Step checkpoints never fall due; every logging step is past the (tiny) time limit.
  config = cli_utils.tiny_config(shapes_data_dir, checkpoint_every_steps=1000,
                                 checkpoint_every_seconds=1e-6, eval_every_steps=6,
                                 max_checkpoints_to_keep=5)
  workdir = str(tmp_path / "run")
  final = jax.device_get(train.train_and_evaluate(config, workdir))
  checkpoints = os.path.join(workdir, "checkpoints")
  assert sorted(map(int, os.listdir(checkpoints))) == [4, 6, 8, 10, 12]
  uninterrupted = cli_utils.metrics_rows(workdir)

  # As if killed after step 11's rows were written but before its next checkpoint.
  for step in ("10", "12"):
    shutil.rmtree(os.path.join(checkpoints, step))
  resumed = jax.device_get(train.train_and_evaluate(config, workdir))
  cli_utils.assert_same_state(final, resumed)
  assert cli_utils.metrics_rows(workdir) == uninterrupted


def test_the_best_checkpoint_keeps_the_lowest_finite_nelbo(tmp_path):
  best = checkpointing.BestCheckpointer(str(tmp_path / "best"))
  assert best.best() == (None, None)
  state = lambda v: {"w": jnp.full((3,), v)}
  assert best.update(10, state(1.0), 5.0)
  assert best.update(20, state(2.0), 3.0)
  assert not best.update(30, state(3.0), 4.0)
  assert not best.update(40, state(4.0), float("nan"))
  assert not best.update(50, state(5.0), 3.0)  # ties keep the earlier step
  best.close()

  reopened = checkpointing.BestCheckpointer(str(tmp_path / "best"))
  assert reopened.best() == (20, 3.0)
  restored, step = reopened.restore(state(0.0))
  assert step == 20
  np.testing.assert_array_equal(restored["w"], np.full((3,), 2.0))
  assert reopened.update(60, state(6.0), 2.5)
  reopened.close()
  assert os.listdir(str(tmp_path / "best")) == ["60"]


def test_load_run_restores_the_best_or_the_latest_checkpoint(tmp_path, shapes_data_dir):
  config = cli_utils.tiny_config(shapes_data_dir, num_train_steps=4, eval_every_steps=2,
                                 checkpoint_every_steps=2, log_every_steps=2)
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(config, workdir)
  rows = [r for r in cli_utils.metrics_rows(workdir) if r["split"] == "eval"]
  best_step = min(rows, key=lambda r: r["nelbo"])["step"]
  # Train on without tracking the best, so the latest and the best differ.
  config.num_train_steps, config.keep_best_checkpoint = 6, False
  train.train_and_evaluate(config, workdir)

  _, _, latest = evaluate.load_run(workdir, image_shape=(32, 32, 3))
  _, _, best = evaluate.load_run(workdir, image_shape=(32, 32, 3), checkpoint="best")
  assert int(latest.step) == 6 and int(best.step) == best_step
  with pytest.raises(ValueError, match="checkpoint must be one of"):
    evaluate.load_run(workdir, image_shape=(32, 32, 3), checkpoint="newest")
  assert glob.glob(os.path.join(workdir, "checkpoints_best", "*"))
