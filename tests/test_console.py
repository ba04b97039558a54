"""What a user reads on the console: Ctrl-C says the step it stops at, and the
checkpoint written is that step."""

import os
import re
import signal

import cli_utils


def test_ctrl_c_message_names_the_step_whose_checkpoint_is_written(tmp_path,
                                                                   shapes_data_dir):
  workdir = str(tmp_path / "run")
  # Long enough not to finish; checkpoints every 4 steps, so that the one the signal
  # writes is (almost always) off the regular ones.
  process = cli_utils.start_cli(workdir, shapes_data_dir, num_train_steps=2000,
                                eval_every_steps=1000)
  cli_utils.wait_for_checkpoint(workdir, 4, process)
  code, out = cli_utils.stop(process, signal.SIGINT)
  assert code == 0, out[-3000:]
  announced = re.search(r"Received SIGINT: stopping at step (\d+) ", out)
  written = re.search(r"Checkpoint at step (\d+) is written", out)
  assert announced and written, out[-3000:]
  step = int(announced.group(1))
  assert int(written.group(1)) == step
  # The newest checkpoint on disk is that step, and nothing past it was trained.
  steps = [int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit()]
  assert max(steps) == step, (steps, step)
  assert max(r["step"] for r in cli_utils.metrics_rows(workdir)) <= step
