"""Nothing is lost: exact resume after SIGKILL, checkpoint-and-exit on SIGTERM,
fallback from an unreadable checkpoint, the NaN guard, mismatched workdirs.

These start the real CLI in subprocesses and compare with an uninterrupted run.
"""

import json
import os
import shutil
import signal

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from sigma_vae_jax.evaluation import loading
from sigma_vae_jax.training import checkpointing
from sigma_vae_jax.training import train
from sigma_vae_jax.training import trainer as trainer_lib
import cli_utils

RUN = {"num_train_steps": 40, "eval_every_steps": 20, "checkpoint_every_steps": 4,
       "log_every_steps": 4}


def _final_state(workdir, data_dir, **overrides):
  config = cli_utils.tiny_config(data_dir, **{**RUN, **overrides})
  trainer = trainer_lib.Trainer(config, (32, 32, 3), Mesh(np.asarray(jax.devices()[:1]), ("data",)))
  checkpointer = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), 3)
  state, step = checkpointer.restore_latest(trainer.init_state())
  checkpointer.close()
  return jax.device_get(state), step


def _last_eval(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return [r for r in rows if r["split"] == "eval"][-1]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, shapes_data_dir):
  """An uninterrupted 40-step run: its final state and last eval metrics."""
  workdir = str(tmp_path_factory.mktemp("reference"))
  result = cli_utils.run_cli(workdir, shapes_data_dir, **RUN)
  assert result.returncode == 0, result.stderr[-3000:]
  state, step = _final_state(workdir, shapes_data_dir)
  assert step == 40
  return workdir, state, _last_eval(workdir)


def test_sigterm_then_sigkill_then_restart_ends_bit_identical(tmp_path, shapes_data_dir,
                                                              reference):
  """One run stopped twice: SIGTERM (checkpoint the current step, exit 0), then a
  restart killed with SIGKILL (no chance to save), then a restart to the end."""
  reference_dir, reference_state, reference_eval = reference
  workdir = str(tmp_path / "stopped")
  process = cli_utils.start_cli(workdir, shapes_data_dir, **RUN)
  cli_utils.wait_for_checkpoint(workdir, 4, process)
  code, out = cli_utils.stop(process, signal.SIGTERM)
  assert code == 0, out[-3000:]
  assert "Received SIGTERM" in out
  stopped = int(out.split("Checkpoint at step ")[1].split()[0])
  assert 4 <= stopped < 40
  assert str(stopped) in os.listdir(os.path.join(workdir, "checkpoints"))

  process = cli_utils.start_cli(workdir, shapes_data_dir, **RUN)
  next_checkpoint = (stopped // 4 + 1) * 4
  cli_utils.wait_for_checkpoint(workdir, next_checkpoint, process)
  code, out = cli_utils.stop(process, signal.SIGKILL)
  assert f"Resuming from step {stopped}" in out
  if next_checkpoint < 40:
    assert code == -signal.SIGKILL  # really killed mid-run, not finished
    assert "40" not in os.listdir(os.path.join(workdir, "checkpoints"))

  result = cli_utils.run_cli(workdir, shapes_data_dir, **RUN)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Resuming from step" in result.stdout
  state, step = _final_state(workdir, shapes_data_dir)
  assert step == 40
  cli_utils.assert_same_state(state, reference_state)  # params, Adam moments, sigma average, rng
  assert _last_eval(workdir) == reference_eval
  # Rows the killed runs wrote past their checkpoints were dropped: the same rows,
  # in order, as the uninterrupted run (wall-clock rates aside).
  assert cli_utils.metrics_rows(workdir) == cli_utils.metrics_rows(reference_dir)


def test_an_unreadable_latest_checkpoint_falls_back_to_the_previous(tmp_path, shapes_data_dir,
                                                                    reference, capsys):
  reference_dir, reference_state, _ = reference
  workdir = str(tmp_path / "corrupt")
  shutil.copytree(reference_dir, workdir)
  newest = os.path.join(workdir, "checkpoints", "40")
  # Truncate every data file of the newest checkpoint, as a crash mid-copy would.
  for root, _, files in os.walk(newest):
    for name in files:
      if "metadata" not in name:
        with open(os.path.join(root, name), "r+b") as f:
          f.truncate(3)
  # In-process (the CLI's resume path is the one above): the same train_and_evaluate.
  train.train_and_evaluate(cli_utils.tiny_config(shapes_data_dir, **RUN), workdir)
  out = capsys.readouterr().out
  assert "checkpoint at step 40 is unreadable" in out
  assert "Restored the checkpoint at step 36" in out
  assert os.listdir(os.path.join(workdir, "checkpoints_unreadable"))  # kept, not deleted
  state, step = _final_state(workdir, shapes_data_dir)
  assert step == 40
  cli_utils.assert_same_state(state, reference_state)  # retrained 36 -> 40 exactly


def test_nonfinite_loss_stops_with_a_message_and_keeps_the_last_checkpoint(
    tmp_path, shapes_data_dir, reference):
  reference_dir, reference_state, _ = reference
  workdir = str(tmp_path / "nan")
  shutil.copytree(reference_dir, workdir)
  # Resume the good run with an absurd learning rate: the first update blows up.
  result = cli_utils.run_cli(workdir, shapes_data_dir,
                             **{**RUN, "num_train_steps": 60, "learning_rate": 1e8})
  assert result.returncode == 1
  message = result.stderr
  assert "Non-finite loss or gradient at step 41" in message
  for term in ("loss=", "rec=", "kl=", "grad_norm=", "learning rate may be too high",
               "last checkpoint (step 40) is intact"):
    assert term in message, message[-2000:]
  assert "Traceback" not in message
  assert max(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints"))) == 40
  state, step = _final_state(workdir, shapes_data_dir)
  assert step == 40
  assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(state.params))
  cli_utils.assert_same_state(state, reference_state)


def test_a_workdir_of_another_decoder_is_refused_naming_the_fields(tmp_path):
  workdir = str(tmp_path)
  saved = cli_utils.tiny_config(None).to_dict()
  checkpointing.check_workdir_config(workdir, saved, has_checkpoints=False)
  changed = cli_utils.tiny_config(None, **{"decoder.name": "shared_sigma",
                                          "model.latent_dim": 8}).to_dict()
  with pytest.raises(checkpointing.CheckpointError,
                     match="decoder.name: saved 'optimal_sigma', now 'shared_sigma'") as e:
    checkpointing.check_workdir_config(workdir, changed, has_checkpoints=True)
  assert "model.latent_dim: saved 4, now 8" in str(e.value)
  # Run-length fields may change on resume (e.g. train longer).
  longer = cli_utils.tiny_config(None, num_train_steps=100).to_dict()
  checkpointing.check_workdir_config(workdir, longer, has_checkpoints=True)
  # So may the way the same networks are computed (same parameters).
  recomputed = cli_utils.tiny_config(None, **{
      "model.dtype": "bfloat16", "model.conv_impl": "xla"}).to_dict()
  checkpointing.check_workdir_config(workdir, recomputed, has_checkpoints=True)


def test_no_readable_checkpoint_is_an_error_not_a_silent_restart(tmp_path):
  checkpointer = checkpointing.Checkpointer(str(tmp_path / "ckpt"), 3)
  state = {"w": np.arange(4.0, dtype=np.float32)}
  checkpointer.save(1, state)
  checkpointer.wait()
  restored, step = checkpointer.restore_latest(state)
  assert step == 1 and np.array_equal(restored["w"], state["w"])
  for root, _, files in os.walk(str(tmp_path / "ckpt" / "1")):
    for name in files:
      os.remove(os.path.join(root, name))
  with pytest.raises(checkpointing.CheckpointError, match="None of the checkpoints"):
    checkpointer.restore_latest(state)


def test_a_second_signal_exits_at_once(monkeypatch):
  exits = []
  monkeypatch.setattr(os, "_exit", exits.append)
  with train._Preemption() as preemption:
    os.kill(os.getpid(), signal.SIGTERM)
    assert preemption.requested == signal.SIGTERM and not exits
    os.kill(os.getpid(), signal.SIGTERM)
    assert exits == [128 + signal.SIGTERM]


LEGACY_WORKDIR = os.path.join(os.path.dirname(__file__), "data", "legacy_workdir_v0_1")


def test_a_workdir_written_before_the_model_contract_resumes_where_it_left_off(tmp_path):
  """A real workdir of sigma_vae_jax 0.1 (params {"vae", "decoder"}, no model.name),
  stopped at step 4, resumes to step 8 with the metrics that version logged when
  it resumed the same workdir (tests/data/legacy_workdir_v0_1)."""
  workdir = str(tmp_path / "run")
  shutil.copytree(LEGACY_WORKDIR, workdir)
  images = os.path.join(workdir, "images.npy")
  with open(os.path.join(workdir, "config.json")) as f:
    saved = json.load(f)
  saved["dataset"]["path"] = images
  # That version had no lower bound on the closed-form sigma (issue 12 added it):
  # without it the math is that version's, so the numbers must be its numbers.
  saved["decoder"]["log_sigma_min"] = None
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(saved, f)
  config = loading.config_from_json(os.path.join(workdir, "config.json"))
  config.num_train_steps = 8
  train.train_and_evaluate(config, workdir)
  with open(os.path.join(LEGACY_WORKDIR, "expected_steps_5_to_8.json")) as f:
    expected = json.load(f)["rows"]
  got = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  got = {(r["step"], r["split"]): r for r in got if r["step"] > 4}
  for row in expected:
    ours = got[(row["step"], row["split"])]
    for key, value in row.items():
      if key not in ("step", "split"):
        np.testing.assert_allclose(ours[key], value, rtol=1e-5, err_msg=key)
