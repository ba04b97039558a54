"""Several processes, one run: real multi-process training on CPU (jax.distributed on
127.0.0.1, CPU collectives over gloo), as a GPU cluster or a TPU pod runs it.

* The same run whatever the layout: 2 processes x 2 devices and 1 process x 4 devices
  (same seed, same global batch) end with the same metrics, for device-resident data,
  numpy data streamed per process and a video model (svg_lp on numpy_videos), to the
  tolerance of the 8-simulated-device test (test_model_contract). TFDS streaming
  reads per-process shards (`tfds.even_splits`) shuffled per process: a different
  order of the same examples, so only its statistics are compared. The default run
  covers the two conv VAE modes; the video model and TFDS streaming are `-m slow`.
* Files written once: the workdir of a 2-process run has exactly the files of a
  1-process run (orbax's own per-process files inside each checkpoint aside).
* Faults (slow, `-m slow`): killing one of two processes stops the other within the
  heartbeat timeout, with JAX's message; both restarted resume and end with the
  metrics of an uninterrupted run, and so does a restart as 1 process; a SIGTERM to
  one process makes all checkpoint at one step and exit 0. The launcher stops the
  run when one process fails.

Skipped, with the reason, where processes cannot run collectives together (gloo).
In-process (cheap): the per-process rows of in-memory batches, the flag checks.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import cli_utils
import tiny_models

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = cli_utils.ROOT
RUNNER = os.path.join(HERE, "multihost_run.py")
EXACT_MODES = ("device", "numpy", "video")
MODES = EXACT_MODES + ("tfds",)
# The default run trains the two conv VAE modes (about a minute of CI time); the video
# model and TFDS streaming compile and run much longer and are in `-m slow`.
SLOW_MODES = ("video", "tfds")


def _modes(modes):
  """pytest parameters of `modes`, those of SLOW_MODES marked slow."""
  return [pytest.param(m, marks=pytest.mark.slow) if m in SLOW_MODES else m for m in modes]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start(root, num_processes, devices, modes, data_dir=""):
  port = _free_port()
  return [subprocess.Popen(
      [sys.executable, RUNNER, str(root), str(i), str(num_processes), str(port),
       str(devices), ",".join(modes), data_dir], cwd=ROOT, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True) for i in range(num_processes)]


def _finish(processes, timeout=600):
  """Waits for all; on a failure kills the rest and fails with the outputs."""
  outputs, failed = [], False
  deadline = time.time() + timeout
  for p in processes:
    try:
      out, _ = p.communicate(timeout=max(deadline - time.time(), 1))
    except subprocess.TimeoutExpired:
      for q in processes:
        q.kill()
      out, _ = p.communicate()
      failed = True
    outputs.append(out)
    failed |= p.returncode != 0
  if failed:
    for q in processes:
      q.kill()
    raise AssertionError("\n\n".join(f"process {i} (exit {p.returncode}):\n{o[-4000:]}"
                                     for i, (p, o) in enumerate(zip(processes, outputs))))
  return outputs


@pytest.fixture(scope="module")
def gloo(tmp_path_factory):
  """Skips the module (with the reason) where two processes cannot run a psum."""
  processes = _start(tmp_path_factory.mktemp("probe"), 2, 2, ["probe"])
  try:
    outputs = _finish(processes, timeout=120)
  except AssertionError as e:
    pytest.skip(f"CPU collectives across processes (jax.distributed + gloo) do not work "
                f"here: {str(e).strip().splitlines()[-1]}")
  # Process 0 holds [1, 1], process 1 [2, 2]: the global sum is 6 on both.
  assert all("PSUM=6.0" in out for out in outputs), outputs


def _write_data(root):
  np.save(os.path.join(root, "images.npy"), tiny_models.smooth_data("conv_vae", 200))
  np.save(os.path.join(root, "videos.npy"), tiny_models.smooth_data("svg_lp", 48))


def _train_layouts(modes, data_dir, tmp_path_factory):
  """`modes` trained as 1 process x 4 devices and as 2 processes x 2 devices:
  {"one": root, "two": root}, the runs in ROOT/MODE."""
  roots = {name: tmp_path_factory.mktemp(name) for name in ("one", "two")}
  for root in roots.values():
    _write_data(root)
  started = time.time()
  processes = (_start(roots["one"], 1, 4, modes, data_dir)
               + _start(roots["two"], 2, 2, modes, data_dir))
  _finish(processes)
  print(f"{', '.join(modes)} in both layouts: {time.time() - started:.1f} s")
  return roots


@pytest.fixture(scope="module")
def fast_layouts(gloo, tmp_path_factory):
  return _train_layouts([m for m in MODES if m not in SLOW_MODES], "", tmp_path_factory)


@pytest.fixture(scope="module")
def slow_layouts(gloo, shapes_data_dir, tmp_path_factory):
  return _train_layouts(list(SLOW_MODES), shapes_data_dir, tmp_path_factory)


@pytest.fixture
def layouts(request):
  """The roots of the layout runs of the test's `mode` (tfds: its own test)."""
  mode = request.node.callspec.params.get("mode", "tfds")
  return request.getfixturevalue("slow_layouts" if mode in SLOW_MODES else "fast_layouts")


def _rows(workdir, split):
  return [r for r in cli_utils.metrics_rows(workdir) if r["split"] == split]


def _assert_close_rows(rows, expected, rtol):
  assert [r["step"] for r in rows] == [r["step"] for r in expected]
  for row, want in zip(rows, expected):
    assert row.keys() == want.keys()
    for key, value in want.items():
      if isinstance(value, str):
        assert row[key] == value
        continue
      np.testing.assert_allclose(row[key], value, rtol=rtol, atol=1e-3,
                                 err_msg=f"step {want['step']} {key}")


@pytest.mark.parametrize("mode", _modes(EXACT_MODES))
def test_two_processes_train_as_one(layouts, mode):
  model = "svg_lp" if mode == "video" else "conv_vae"
  rtol = 10 * tiny_models.sharded_rtol(model)  # as the 8-simulated-device test
  one, two = (os.path.join(layouts[k], mode) for k in ("one", "two"))
  evals = _rows(two, "eval")
  assert [r["step"] for r in evals] == [4 if mode == "video" else 6]
  # Every test example counted once, not once per process.
  assert evals[0]["num_examples"] == _rows(one, "eval")[0]["num_examples"]
  _assert_close_rows(evals, _rows(one, "eval"), rtol)
  # Training saw the same batches: the same losses at every logged step.
  _assert_close_rows([{k: r[k] for k in ("step", "loss", "nelbo")} for r in _rows(two, "train")],
                     [{k: r[k] for k in ("step", "loss", "nelbo")} for r in _rows(one, "train")],
                     rtol)


@pytest.mark.slow
def test_tfds_streaming_reads_the_same_examples_in_a_per_process_order(slow_layouts):
  """TFDS streams per-process shards (tfds.even_splits) in per-process shuffles: the
  2-process run trains on other batches of the same data, so only the statistics
  agree (and the evaluation covers the same test examples)."""
  one, two = (os.path.join(slow_layouts[k], "tfds") for k in ("one", "two"))
  e1, e2 = _rows(one, "eval")[-1], _rows(two, "eval")[-1]
  assert e1["num_examples"] == e2["num_examples"] == 1000
  # Both learnt: the first logged training loss is well above the last...
  for workdir in (one, two):
    train = _rows(workdir, "train")
    assert train[-1]["nelbo"] < train[0]["nelbo"], train
  # ...to about the same test ELBO (batches differ, so not exactly).
  np.testing.assert_allclose(e2["nelbo"], e1["nelbo"], rtol=0.05)


def _files(workdir):
  """Relative paths under workdir; inside a checkpoint step only the step itself
  (orbax writes its own per-process files there), TensorBoard event files by kind."""
  out = set()
  for dirpath, dirnames, filenames in os.walk(workdir):
    rel = os.path.relpath(dirpath, workdir)
    parts = rel.split(os.sep)
    if parts[0] in ("checkpoints", "checkpoints_best") and len(parts) == 2:
      out.add(rel + "/")
      dirnames[:] = []
      continue
    for name in filenames:
      out.add(os.path.join(rel, name.split(".out.tfevents.")[0] + ".out.tfevents"
                           if ".out.tfevents." in name else name))
  return out


@pytest.mark.parametrize("mode", _modes(MODES))
def test_two_processes_write_the_files_of_one(layouts, mode):
  one, two = (os.path.join(layouts[k], mode) for k in ("one", "two"))
  files = _files(two)
  assert files == _files(one)
  last = 4 if mode == "video" else 6
  assert {"./metrics.jsonl", "./config.json", "./events.out.tfevents",
          f"checkpoints/{last}/", f"checkpoints_best/{last}/"} <= files, files
  assert any(f.startswith("images/") for f in files), files
  # One event file (process 0's), as many metric rows as one process writes.
  assert len([f for f in os.listdir(two) if ".tfevents." in f]) == 1
  assert len(cli_utils.metrics_rows(two)) == len(cli_utils.metrics_rows(one))


# --- Faults --------------------------------------------------------------------------

FAULT_STEPS = 40
HEARTBEAT_SECONDS = 5


def _cli_args(workdir, data):
  flags = {"model.latent_dim": 4, "model.base_channels": 4, "batch_size": 16,
           "dataset.name": "numpy", "dataset.path": data, "num_train_steps": FAULT_STEPS,
           "log_every_steps": 2, "eval_every_steps": FAULT_STEPS,
           "checkpoint_every_steps": 4, "num_image_samples": 8,
           "checkpoint_every_seconds": 1e6}
  return (["--config=configs/default.py", f"--workdir={workdir}"]
          + [f"--config.{k}={v}" for k, v in flags.items()])


def _env(devices):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
  env["XLA_FLAGS"] = cli_utils.xla_flags_with_devices(devices, env.get("XLA_FLAGS", ""))
  return env


@pytest.mark.slow  # seven process start-ups: 2-4 minutes on a loaded 2-core CPU
def test_a_killed_process_stops_the_other_and_both_resume(gloo, tmp_path):
  data = str(tmp_path / "images.npy")
  np.save(data, tiny_models.smooth_data("conv_vae", 200))
  killed, reference = str(tmp_path / "killed"), str(tmp_path / "reference")
  port = _free_port()
  main = [sys.executable, "-m", "sigma_vae_jax.main"]
  processes = [subprocess.Popen(
      main + _cli_args(killed, data) + [
          "--multihost", f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
          f"--process_id={i}", f"--heartbeat_timeout_seconds={HEARTBEAT_SECONDS}"],
      cwd=ROOT, env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)]
  uninterrupted = subprocess.Popen(main + _cli_args(reference, data), cwd=ROOT,
                                   env=_env(4), stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
  cli_utils.wait_for_checkpoint(killed, 4, processes[0])
  processes[1].kill()
  killed_at = time.time()
  out, _ = processes[0].communicate(timeout=HEARTBEAT_SECONDS + 60)
  stopped_after = time.time() - killed_at
  processes[1].communicate()
  print(f"process 0 stopped {stopped_after:.1f} s after process 1 was killed")
  assert processes[0].returncode != 0, out[-3000:]
  assert "Best evaluation" not in out  # stopped mid-run, not at the end
  assert "another task died" in out, out[-3000:]
  steps = sorted(int(s) for s in os.listdir(os.path.join(killed, "checkpoints"))
                 if s.isdigit())
  assert steps and steps[-1] < FAULT_STEPS, steps
  assert _finish([uninterrupted])

  # 2 -> 1: the checkpoint does not depend on the process layout.
  single = str(tmp_path / "single")
  shutil.copytree(killed, single)
  done = subprocess.run(main + _cli_args(single, data), cwd=ROOT, env=_env(4),
                        capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  assert f"Resuming from step {steps[-1]}" in done.stdout

  # Both processes restarted, through the local launcher.
  done = subprocess.run(
      [sys.executable, "scripts/launch_local.py", "--num_processes=2",
       "--devices_per_process=2", "--"] + _cli_args(killed, data),
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stdout[-5000:]
  assert f"[1] Resuming from step {steps[-1]}" in done.stdout

  expected = cli_utils.metrics_rows(reference)
  for workdir in (killed, single):
    rows = cli_utils.metrics_rows(workdir)
    _assert_close_rows(rows, expected, 10 * tiny_models.sharded_rtol("conv_vae"))


@pytest.mark.slow  # two process start-ups and a long run: 1-2 minutes
def test_sigterm_to_one_process_checkpoints_all_at_one_step(gloo, tmp_path):
  """Preemption reaches the processes one by one: a SIGTERM to process 1 alone makes
  both write one checkpoint at the same step and exit 0 (no collective left hanging)."""
  data = str(tmp_path / "images.npy")
  np.save(data, tiny_models.smooth_data("conv_vae", 200))
  workdir = str(tmp_path / "run")
  args = _cli_args(workdir, data) + ["--config.num_train_steps=100000"]
  port = _free_port()
  processes = [subprocess.Popen(
      [sys.executable, "-m", "sigma_vae_jax.main"] + args + [
          "--multihost", f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
          f"--process_id={i}", f"--heartbeat_timeout_seconds={HEARTBEAT_SECONDS}"],
      cwd=ROOT, env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)]
  cli_utils.wait_for_checkpoint(workdir, 4, processes[0])
  processes[1].send_signal(signal.SIGTERM)
  outputs = _finish(processes, timeout=300)
  written = [[line for line in out.splitlines() if line.startswith("Checkpoint at step")]
             for out in outputs]
  assert all(len(lines) == 1 for lines in written), outputs
  steps = {int(lines[0].split()[3]) for lines in written}
  assert len(steps) == 1, written
  assert "after SIGTERM" in written[1][0] and "another process" in written[0][0]
  assert os.path.isdir(os.path.join(workdir, "checkpoints", str(steps.pop())))


def test_launcher_stops_all_when_one_fails(tmp_path):
  """A process that fails at start-up (here: a missing data file) stops the run: exit
  status 1, its one-line error forwarded with its prefix."""
  missing = str(tmp_path / "missing.npy")
  done = subprocess.run(
      [sys.executable, "scripts/launch_local.py", "--num_processes=2",
       "--grace_seconds=5", "--"] + _cli_args(str(tmp_path / "run"), missing),
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert done.returncode == 1, done.stdout[-3000:]
  assert "FAILED: process" in done.stdout
  assert any(line.startswith(("[0] ERROR: ", "[1] ERROR: ")) and missing in line
             for line in done.stdout.splitlines()), done.stdout[-3000:]


# --- In-process pieces (no second process) -------------------------------------------


@pytest.mark.parametrize("n,shuffle", [(110, True), (110, False), (96, True)])
def test_in_memory_process_batches_concatenate_to_the_one_process_batch(tmp_path, n,
                                                                        shuffle):
  """Process p's batch of step k is rows [p*b, (p+1)*b) of the one-process global
  batch k (b = B/P), so make_array_from_process_local_data (processes in device order)
  rebuilds exactly the one-process batch; a one-pass stream still covers the split."""
  from sigma_vae_jax.data import input_pipeline
  path = tmp_path / "images.npy"
  # Every image distinct: its first pixel holds its index.
  images = np.zeros((n, 4, 4, 3), np.uint8)
  images[:, 0, 0, 0], images[:, 0, 0, 1] = np.arange(n) % 256, np.arange(n) // 256
  np.save(path, images)
  source = input_pipeline.get_data_source(
      {"name": "numpy", "path": str(path), "test_fraction": 0.1})
  kwargs = dict(seed=3, shuffle=shuffle, repeat=True, start_batch=2)
  one = source.batch_iterator("train", 12, process_index=0, process_count=1, **kwargs)
  per_process = [source.batch_iterator("train", 4, process_index=p, process_count=3,
                                       **kwargs) for p in range(3)]
  for _ in range(20):  # several epochs (the train split has 8 global batches of 12)
    np.testing.assert_array_equal(np.concatenate([next(it) for it in per_process]),
                                  next(one))
  # One pass (evaluation-style): disjoint, covering, sizes differing by at most 1.
  seen = [np.concatenate(list(source.batch_iterator(
      "train", 4, seed=3, shuffle=shuffle, repeat=False, process_index=p,
      process_count=3))) for p in range(3)]
  keys = [set(map(tuple, s[:, 0, 0, :2].tolist())) for s in seen]
  assert sum(map(len, keys)) == len(set().union(*keys)) == source.num_examples["train"]
  assert max(map(len, keys)) - min(map(len, keys)) <= 1


@pytest.mark.parametrize("args,expected", [
    ((False, None, 2, 0), "--num_processes, --process_id need --multihost"),
    ((False, "h:1", None, None), "--coordinator_address needs --multihost"),
    ((True, None, 2, None), "give both --num_processes and --process_id"),
    ((True, None, None, 0), "give both --num_processes and --process_id"),
    ((True, None, 2, 2), "--process_id=2 must be in [0, --num_processes=2)"),
    ((True, None, 2, -1), "--process_id=-1 must be in [0, --num_processes=2)"),
    ((True, None, 0, 0), "--num_processes=0 must be >= 1"),
    ((True, "localhost", 2, 0), "--coordinator_address='localhost' must be HOST:PORT"),
    ((True, "h:99999", 2, 0), "must be HOST:PORT"),
    ((True, ":80", 2, 0), "must be HOST:PORT"),
])
def test_inconsistent_distributed_flags_are_one_line(args, expected, capsys):
  from sigma_vae_jax import cli
  with pytest.raises(SystemExit) as e:
    cli.distributed_options(*args, heartbeat_timeout_seconds=100)
  assert e.value.code == cli.USAGE_EXIT_CODE
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith("ERROR: ") and expected in err, err


def test_distributed_options():
  from sigma_vae_jax import cli
  assert cli.distributed_options(False, None, None, None, 100) is None
  # Nothing given: JAX auto-detects (TPU pod, SLURM, Open MPI).
  assert cli.distributed_options(True, None, None, None, 100) == {
      "heartbeat_timeout_seconds": 100}
  assert cli.distributed_options(True, "10.0.0.1:1234", 4, 3, 7) == {
      "coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 3,
      "heartbeat_timeout_seconds": 7}
