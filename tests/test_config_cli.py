"""The config on the command line: `--config.FIELD=None`, the fields listed by
`--help`, and `--print_config`."""

import os
import re
import subprocess
import sys

from absl import flags
import pytest

from sigma_vae_jax import cli
from sigma_vae_jax import config_help
from sigma_vae_jax import configuration
import cli_utils

ROOT = cli_utils.ROOT
DEFAULT_CONFIG = os.path.join(ROOT, "sigma_vae_jax", "default_config.py")


def _parse(argv):
  """The config after parsing argv as an entry point does (cli.define_config_file +
  cli.parse_flags on a fresh FlagValues)."""
  argv = ["prog", *argv]
  fv = flags.FlagValues()
  cli.define_config_file("config", os.path.join(ROOT, "configs", "default.py"), "cfg",
                         argv, flag_values=fv)
  cli.parse_flags(fv, argv)
  return fv.config


def _get(config, dotted):
  for part in dotted.split("."):
    config = config[part]
  return config


def _run(args, timeout=120):
  return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=timeout)


# --- --config.FIELD=None ----------------------------------------------------------


@pytest.mark.parametrize("field", configuration.NULLABLE_FIELDS)
def test_every_field_that_takes_none_is_settable_to_none(field, monkeypatch):
  monkeypatch.chdir(ROOT)
  for argv in ([f"--config.{field}=None"], [f"--config.{field}", "None"]):
    config = _parse(argv)
    assert _get(config, field) is None, (argv, _get(config, field))
    # ...and such a config passes validation (None is a documented value).
    configuration.validate_config(config, num_devices=1,
                                  dataset_names=("synthetic_shapes",))


def test_none_overrides_leave_other_overrides_alone(monkeypatch):
  monkeypatch.chdir(ROOT)
  config = _parse(["--config.decoder.log_sigma_min=None", "--config.batch_size=8",
                   "--config.dataset.data_dir=/tmp/d"])
  assert config.decoder.log_sigma_min is None
  assert config.batch_size == 8 and config.dataset.data_dir == "/tmp/d"
  assert config.decoder.log_sigma_max == 2.0


def _documented_fields():
  """{field: comment} of default_config.py, read from its source (not config_help)."""
  docs, comment = {}, []
  with open(DEFAULT_CONFIG) as f:
    for line in f:
      line = line.strip()
      if line.startswith("#"):
        comment.append(line)
        continue
      match = re.match(r"config\.([\w.]+) = ", line)
      if match:
        docs[match.group(1)] = " ".join(comment)
      comment = []
  return docs


def test_the_fields_that_take_none_are_those_documented_so():
  from sigma_vae_jax import default_config
  defaults = default_config.get_config()
  docs = _documented_fields()
  documented = {name for name, text in docs.items() if re.search(r"\bNone\b", text)}
  none_by_default = {name for name in docs if not name.startswith("model")
                     and not hasattr(_get(defaults, name), "items")
                     and _get(defaults, name) is None}
  assert documented | none_by_default == set(configuration.NULLABLE_FIELDS)


def test_every_none_of_the_configs_is_a_field_that_takes_none():
  import glob
  for path in glob.glob(os.path.join(ROOT, "configs", "*.py")):
    if path.endswith("__init__.py"):
      continue
    values = config_help.flatten(configuration.load_config_file(path).to_dict())
    nones = {name for name, value in values.items() if value is None}
    config = configuration.load_config_file(path)
    assert nones <= set(configuration.nullable_fields(config)), (path, nones)


def test_none_where_a_field_needs_a_value_is_a_config_error(monkeypatch):
  monkeypatch.chdir(ROOT)
  config = _parse(["--config.learning_rate=None"])
  with pytest.raises(configuration.ConfigError, match=r"^learning_rate: needs a value"):
    configuration.validate_config(config, num_devices=1,
                                  dataset_names=("synthetic_shapes",))


def test_none_for_a_misspelt_field_is_one_line(capsys, monkeypatch):
  monkeypatch.chdir(ROOT)
  with pytest.raises(SystemExit) as e:
    _parse(["--config.decoder.log_sigma_mni=None"])
  assert e.value.code == cli.USAGE_EXIT_CODE
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "did you mean --config.decoder.log_sigma_min?" in err


@pytest.mark.parametrize("none_args", [["--config.decoder.nmae=None"],
                                       ["--config.decoder.nmae", "None"]])
def test_none_for_a_misspelt_field_is_one_line_as_main_defines_config(
    none_args, capsys, monkeypatch):
  """As sigma_vae_jax.main defines --config (no default path: ml_collections reads the
  overrides from sys.argv and raises its own KeyError): the line names the field."""
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  monkeypatch.chdir(ROOT)
  argv = ["prog", "--config=configs/default.py", *none_args]
  monkeypatch.setattr(sys, "argv", argv)
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "cfg", flag_values=fv, lock_config=True)
  with pytest.raises(SystemExit) as e:
    cli.parse_flags(fv, argv)
  assert e.value.code == cli.USAGE_EXIT_CODE
  assert capsys.readouterr().err == (
      "ERROR: --config.decoder.nmae: the config has no field 'decoder.nmae'; "
      "did you mean --config.decoder.name? (see --help)\n")


# --- --help lists the config's fields; --print_config ------------------------------


def _field_lines(text):
  """{field: value text} of the `  NAME = VALUE  meaning` lines of a listing."""
  out = {}
  for line in text.splitlines():
    match = re.match(r"^\s*([a-z_][\w.]*) = (.+?)(?:\s{2,}\S.*)?$", line)
    if match:
      out[match.group(1)] = match.group(2)
  return out


def _expected_fields(config_path):
  """{field: repr(value)} of a config file, loaded on its own."""
  config = configuration.load_config_file(os.path.join(ROOT, config_path))
  return {k: repr(v) for k, v in config_help.flatten(config.to_dict()).items()}


@pytest.mark.parametrize("args,config_path", [
    (["-m", "sigma_vae_jax.main", "--help"], "configs/default.py"),
    (["-m", "sigma_vae_jax.main", "--config=configs/cifar10_hvae.py", "--help"],
     "configs/cifar10_hvae.py"),
    (["scripts/beta_sweep.py", "-h"], "configs/default.py"),
    (["scripts/benchmark.py", "--config=configs/bair_svg.py", "--help"],
     "configs/bair_svg.py"),
])
def test_help_lists_every_field_of_the_chosen_config(args, config_path):
  done = _run(args)
  assert done.returncode == 0, done.stderr[-2000:]
  assert f"config fields of {config_path}" in done.stdout, done.stdout[-3000:]
  assert "--[no]print_config" in done.stdout
  listed = _field_lines(done.stdout.split("config fields of", 1)[1])
  assert listed == _expected_fields(config_path)
  # A few words of meaning, from the comments in default_config.py.
  line = next(l for l in done.stdout.splitlines() if l.strip().startswith("ema_decay ="))
  assert "exponential moving average" in line, line
  if config_path == "configs/cifar10_hvae.py":
    # The paper's hierarchical VAE (App. B): batch 48, Adamax, 15 stochastic layers.
    assert listed["batch_size"] == "48" and listed["optimizer"] == "'adamax'"
    assert listed["model.num_stages"] == "15"


def test_print_config_shows_the_overrides_and_exits(tmp_path):
  workdir = tmp_path / "run"
  done = _run(["-m", "sigma_vae_jax.main", "--config=configs/default.py",
               f"--workdir={workdir}", "--config.batch_size=8",
               "--config.decoder.name=shared_sigma", "--config.ema_decay=0.5",
               "--config.decoder.log_sigma_min=None", "--print_config"])
  assert done.returncode == 0, done.stderr[-2000:]
  listed = _field_lines(done.stdout)
  expected = _expected_fields("configs/default.py")
  expected.update({"batch_size": "8", "decoder.name": "'shared_sigma'",
                   "ema_decay": "0.5", "decoder.log_sigma_min": "None"})
  assert listed == expected
  assert not workdir.exists()  # nothing was run


def test_print_config_without_config_uses_the_default(tmp_path):
  done = _run(["scripts/beta_sweep.py", f"--output_dir={tmp_path}",
               "--config.seed=3", "--print_config"])
  assert done.returncode == 0, done.stderr[-2000:]
  expected = _expected_fields("configs/default.py")
  expected["seed"] = "3"
  assert _field_lines(done.stdout) == expected
  assert not os.listdir(tmp_path)
