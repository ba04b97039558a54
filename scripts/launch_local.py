r"""Starts one training run as N processes on this machine (multi-host, simulated).

Each process is `python -m sigma_vae_jax.main ARGS --multihost
--coordinator_address=127.0.0.1:PORT --num_processes=N --process_id=I` with
--devices_per_process CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count);
JAX's CPU collectives (gloo) connect them, as a GPU cluster or a TPU pod would. Every
output line is prefixed with its process id ("[1] ..."). When one process fails, the
others get SIGTERM and, after --grace_seconds, SIGKILL; the exit status is the first
failure's. Ctrl-C / SIGTERM is forwarded to every process (they checkpoint at the same
step and exit).

  python scripts/launch_local.py --num_processes=2 --devices_per_process=2 -- \
      --config=configs/default.py --workdir=runs/two_processes

Everything after `--` goes to sigma_vae_jax.main.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # pylint: disable=g-import-not-at-top

from sigma_vae_jax import cli  # pylint: disable=g-import-not-at-top

FLAGS = flags.FlagValues()
flags.DEFINE_integer("num_processes", 2, "Processes to start.", lower_bound=1,
                     flag_values=FLAGS)
flags.DEFINE_integer("devices_per_process", 1, "CPU devices of each process "
                     "(--xla_force_host_platform_device_count).", lower_bound=1,
                     flag_values=FLAGS)
flags.DEFINE_integer("port", 0, "Coordinator port on 127.0.0.1 (0: a free one).",
                     lower_bound=0, upper_bound=65535, flag_values=FLAGS)
flags.DEFINE_string("module", "sigma_vae_jax.main", "The module each process runs "
                    "(python -m MODULE ARGS --multihost ...).", flag_values=FLAGS)
flags.DEFINE_float("grace_seconds", 30.0, "After a failure: seconds the other processes "
                   "get to stop after SIGTERM before SIGKILL.", lower_bound=0,
                   flag_values=FLAGS)


def free_port() -> int:
  """A TCP port that is free now (bound to port 0 and released)."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def process_command(module: str, args: Sequence[str], address: str, count: int,
                    index: int) -> list[str]:
  return [sys.executable, "-u", "-m", module, *args, "--multihost",
          f"--coordinator_address={address}", f"--num_processes={count}",
          f"--process_id={index}"]


def process_env(devices: int) -> dict[str, str]:
  env = dict(os.environ)
  env["XLA_FLAGS"] = " ".join(
      [f for f in env.get("XLA_FLAGS", "").split()
       if not f.startswith("--xla_force_host_platform_device_count")]
      + [f"--xla_force_host_platform_device_count={devices}"])
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONUNBUFFERED"] = "1"
  return env


def _forward(index: int, stream, lock: threading.Lock) -> None:
  for line in iter(stream.readline, ""):
    with lock:
      sys.stdout.write(f"[{index}] {line}" if line.endswith("\n") else f"[{index}] {line}\n")
      sys.stdout.flush()
  stream.close()


def launch(module: str, args: Sequence[str], num_processes: int, devices: int,
           port: int = 0, grace_seconds: float = 30.0) -> int:
  """Runs the processes to the end; returns 0 or the first failing exit status."""
  address = f"127.0.0.1:{port or free_port()}"
  print(f"Starting {num_processes} processes x {devices} CPU device(s), coordinator "
        f"{address}.", flush=True)
  env = process_env(devices)
  lock = threading.Lock()
  processes, threads = [], []
  for i in range(num_processes):
    p = subprocess.Popen(process_command(module, args, address, num_processes, i),
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, start_new_session=True)
    processes.append(p)
    t = threading.Thread(target=_forward, args=(i, p.stdout, lock), daemon=True)
    t.start()
    threads.append(t)

  def forward_signal(signum, frame):
    del frame
    for p in processes:
      if p.poll() is None:
        p.send_signal(signum)

  previous = {s: signal.signal(s, forward_signal) for s in (signal.SIGINT, signal.SIGTERM)}
  failure: Optional[tuple[int, int]] = None
  try:
    while any(p.poll() is None for p in processes):
      for i, p in enumerate(processes):
        code = p.poll()
        if code not in (None, 0) and failure is None:
          failure = (i, code)
          print(f"Process {i} failed (exit status {code}): stopping the others.",
                flush=True)
          _stop(processes, grace_seconds)
      time.sleep(0.1)
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
    for t in threads:
      t.join(timeout=5)
  if failure is None:
    failure = next(((i, p.returncode) for i, p in enumerate(processes) if p.returncode),
                   None)
  if failure is not None:
    print(f"FAILED: process {failure[0]} exited with status {failure[1]}.", flush=True)
    return failure[1] if failure[1] > 0 else 128 - failure[1]
  print(f"All {num_processes} processes finished.", flush=True)
  return 0


def _stop(processes, grace_seconds: float) -> None:
  """SIGTERM to the running processes, SIGKILL to those alive after grace_seconds."""
  for p in processes:
    if p.poll() is None:
      p.terminate()
  deadline = time.monotonic() + grace_seconds
  while time.monotonic() < deadline and any(p.poll() is None for p in processes):
    time.sleep(0.1)
  for p in processes:
    if p.poll() is None:
      p.kill()
      p.wait()


def main(argv: Sequence[str]) -> int:
  rest = cli.parse_flags(FLAGS, argv)[1:]
  if rest and rest[0] == "--":
    rest = rest[1:]
  return launch(FLAGS.module, rest, FLAGS.num_processes, FLAGS.devices_per_process,
                FLAGS.port, FLAGS.grace_seconds)


if __name__ == "__main__":
  sys.exit(main(sys.argv))
