"""Every entry point answers --help fast, and command-line mistakes end in one line.

Entry points: `python -m sigma_vae_jax.main`, `python -m sigma_vae_jax.data`
and every scripts/*.py (found by glob, so new scripts are covered).
"""

import glob
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from sigma_vae_jax import cli
import cli_utils

ROOT = cli_utils.ROOT
SCRIPTS = sorted(glob.glob(os.path.join(ROOT, "scripts", "*.py")))
ENTRY_POINTS = ["sigma_vae_jax.main", "sigma_vae_jax.data"] + [
    os.path.relpath(p, ROOT) for p in SCRIPTS]
# A flag each known entry point must list in its help (others: any flag).
FLAGS_IN_HELP = {
    "sigma_vae_jax.main": ("--workdir", "--config", "multihost"),
    "sigma_vae_jax.data": ("--data_dir", "--path", "synthetic_shapes"),
    "scripts/benchmark.py": ("--image_shape", "--config", "--steps"),
    "scripts/benchmark_pytorch.py": ("--batch_size", "--threads"),
    "scripts/convert_inception_weights.py": ("--input", "--output"),
    "scripts/beta_sweep.py": ("--output_dir", "--betas_paper", "--config", "--seeds"),
    "scripts/compare_decoders.py": ("--output_dir", "--decoders", "categorical"),
    "scripts/rate_analysis.py": ("--output_dir", "--betas_paper"),
    "scripts/sigma_convergence.py": ("--output_dir", "--beta"),
    "scripts/sigma_sharing.py": ("--output_dir", "--variants"),
}
# Runs the entry point as `python -m X --help` / `python X --help` would, then reports
# which heavy libraries its --help imported.
_HELP_RUNNER = """
import runpy, sys
target, args = sys.argv[1], sys.argv[2:]
sys.argv = [target] + args
try:
  if target.endswith(".py"):
    sys.path.insert(0, ".")
    runpy.run_path(target, run_name="__main__")
  else:
    runpy.run_module(target, run_name="__main__", alter_sys=True)
  code = 0
except SystemExit as e:
  code = e.code
heavy = [m for m in ("tensorflow", "torch") if m in sys.modules]
print("HEAVY_IMPORTS=" + ",".join(heavy), file=sys.stderr)
sys.exit(code)
"""


def _run(args, timeout=120, **kwargs):
  start = time.perf_counter()
  done = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                        timeout=timeout, **kwargs)
  return done, time.perf_counter() - start


@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
def test_help_lists_the_flags_without_importing_tensorflow(entry_point):
  done, seconds = _run(["-c", _HELP_RUNNER, entry_point, "--help"])
  print(f"{entry_point} --help: {seconds:.2f} s")
  assert done.returncode == 0, done.stderr[-3000:]
  assert "Traceback" not in done.stderr and "ERROR" not in done.stderr, done.stderr
  for flag in FLAGS_IN_HELP.get(entry_point, ("--",)):
    assert flag in done.stdout, (flag, done.stdout)
  # Fast: TensorFlow (and torch) take seconds to import; --help needs neither.
  assert "HEAVY_IMPORTS=\n" in done.stderr, done.stderr[-2000:]


def test_short_help_of_the_cli_and_a_script():
  for args in (["-m", "sigma_vae_jax.main", "-h"], ["scripts/beta_sweep.py", "-h"]):
    done, _ = _run(args)
    assert done.returncode == 0 and "--config" in done.stdout, (args, done.stderr)


def test_cli_misspelt_config_field_is_one_line(tmp_path):
  done, seconds = _run(["-m", "sigma_vae_jax.main", "--config=configs/default.py",
                        f"--workdir={tmp_path / 'run'}", "--config.batchsize=8"])
  assert done.returncode == cli.USAGE_EXIT_CODE, done.stderr
  lines = done.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("ERROR: --config.batchsize"), lines
  assert "did you mean --config.batch_size?" in lines[0]
  assert not os.path.exists(tmp_path / "run")


def test_cli_corrupt_image_is_one_line_naming_the_file(tmp_path):
  folder = tmp_path / "images"
  folder.mkdir()
  rng = np.random.default_rng(0)
  for i in range(4):
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), np.uint8)).save(folder / f"{i}.png")
  data = (folder / "0.png").read_bytes()
  (folder / "2.png").write_bytes(data[:len(data) // 2])  # truncated
  done, _ = _run(["-m", "sigma_vae_jax.main", "--config=configs/default.py",
                  f"--workdir={tmp_path / 'run'}", "--config.dataset.name=folder",
                  f"--config.dataset.path={folder}"], timeout=300)
  assert done.returncode == 1, done.stderr[-3000:]
  lines = done.stderr.strip().splitlines()
  assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
  assert lines[0].startswith("ERROR: ") and str(folder / "2.png") in lines[0], lines


# --- The parsing helpers in-process (cheap) ------------------------------------------


def _script_parse(argv):
  from sigma_vae_jax import sweep_cli
  return sweep_cli.parse_flags(["prog.py", "--output_dir=out", *argv], lambda fv: None,
                               description="A test script.")


@pytest.mark.parametrize("argv,expected", [
    (["--config.batchsize=8"], "--config.batchsize: the config has no field 'batchsize'; "
                               "did you mean --config.batch_size?"),
    (["--config=configs/default.py", "--config.decoder.nme=x"],
     "did you mean --config.decoder.name?"),
    (["--config=configs/default.py", "--config.decoder.nmae=None"],
     "--config.decoder.nmae: the config has no field 'decoder.nmae'; "
     "did you mean --config.decoder.name?"),
    (["--config.decoder.nmae", "None"], "did you mean --config.decoder.name?"),
    (["--config.decoder.zzzzzz=1"], "the fields of decoder are: beta,"),
    (["--config.batch_size.x=1"], "batch_size is a value (int), not a group of fields"),
    (["--config=configs/nope.py"], "--config=configs/nope.py: no such config file"),
    (["--config=configs/nope.py", "--config.seed=1"], "no such config file"),
    (["--config.batch_size=abc"], "--config.batch_size=abc: invalid literal"),
    (["--nope=1"], "Unknown command line flag 'nope'"),
])
def test_script_flag_mistakes_are_one_line(argv, expected, capsys, monkeypatch):
  monkeypatch.chdir(ROOT)
  with pytest.raises(SystemExit) as e:
    _script_parse(argv)
  assert e.value.code == cli.USAGE_EXIT_CODE
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith("ERROR: ") and expected in err, err


def test_script_help_in_process(capsys):
  with pytest.raises(SystemExit) as e:
    _script_parse(["--help"])
  assert e.value.code == 0
  out = capsys.readouterr().out
  assert out.startswith("A test script.") and "--output_dir: " in out
  assert "--num_train_steps: " in out and "--config: " in out


def test_script_default_config_is_the_repositorys_from_any_folder(tmp_path, monkeypatch):
  # Without --config a script reads ROOT/configs/default.py, wherever it runs from.
  from configs import default as default_config
  monkeypatch.chdir(tmp_path)
  fv = _script_parse([])
  assert fv.config.to_dict() == default_config.get_config().to_dict()


def test_run_main_turns_expected_errors_into_one_line(capsys):
  from sigma_vae_jax import sweep_cli

  def bad_value(argv):
    raise ValueError(f"unknown decoders ['nope'] in {argv[1:]}")

  with pytest.raises(SystemExit) as e:
    sweep_cli.run_main(bad_value, ["prog.py", "--x"])
  assert e.value.code == 1
  assert capsys.readouterr().err == "ERROR: unknown decoders ['nope'] in ['--x']\n"

  def bug(argv):
    raise KeyError("a bug keeps its traceback")

  with pytest.raises(KeyError):
    sweep_cli.run_main(bug, ["prog.py"])
