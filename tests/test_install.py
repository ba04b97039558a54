"""The core install (setup.cfg's install_requires) and the training extra (`[train]`):
the core modules import none of the extra's packages, every entry point that needs the
extra says so in one line, and (slow) the built wheel without the extra runs the
README's losses example in a fresh virtual environment."""

import configparser
import glob
import os
import re
import subprocess
import sys
import textwrap

import pytest

from sigma_vae_jax import cli
import cli_utils

ROOT = cli_utils.ROOT
# The modules a user of the losses imports (README "Using the losses in your own model").
CORE_MODULES = ("sigma_vae_jax", "sigma_vae_jax.losses", "sigma_vae_jax.likelihoods",
                "sigma_vae_jax.objectives", "sigma_vae_jax.models",
                "sigma_vae_jax.models.conv_vae", "sigma_vae_jax.models.hvae",
                "sigma_vae_jax.models.svg_lp", "sigma_vae_jax.default_config")
# Top-level modules of the training extra's distributions (setup.cfg [train]).
EXTRA_TOP_MODULES = ("tensorflow", "tensorflow_datasets", "orbax", "clu", "tensorboard",
                     "PIL", "matplotlib")


def _setup_cfg():
  parser = configparser.ConfigParser()
  parser.read(os.path.join(ROOT, "setup.cfg"))
  def names(text):
    return {re.split(r"[<>=\[;\s]", line.strip())[0].lower().replace("_", "-")
            for line in text.splitlines() if line.strip() and not line.startswith("#")}
  core = names(parser["options"]["install_requires"])
  extras = {k: names(v) for k, v in parser["options.extras_require"].items()}
  return core, extras, parser["options.extras_require"]["test"]


def test_setup_cfg_core_and_extras():
  core, extras, test_text = _setup_cfg()
  train = {dist for _, dist in cli.TRAIN_EXTRA_MODULES}
  assert train <= extras[cli.TRAIN_EXTRA], train - extras[cli.TRAIN_EXTRA]
  assert not core & extras[cli.TRAIN_EXTRA]
  assert not any(d.startswith("tensorflow") for d in core)
  assert {"jax", "flax", "optax", "chex", "numpy", "ml-collections"} <= core
  # The README's test command (pip install -e ".[test]") installs the training extra.
  assert f"sigma_vae_jax[{cli.TRAIN_EXTRA}]" in test_text.split()


def test_importing_the_core_loads_none_of_the_extras_packages():
  code = textwrap.dedent(f"""
      import sys
      for name in {CORE_MODULES!r}:
        __import__(name)
      from sigma_vae_jax import models
      for name in models.MODELS:
        models.model_module(name)
      print(",".join(sorted(m for m in {EXTRA_TOP_MODULES!r} if m in sys.modules)))
  """)
  done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                        text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stdout.strip() == "", done.stdout


# Runs an entry point as `python -m X ...` / `python X ...` with MODULE made
# unimportable (sys.modules[MODULE] = None: `import MODULE` raises ImportError).
_MISSING_RUNNER = """
import runpy, sys
missing, target, args = sys.argv[1], sys.argv[2], sys.argv[3:]
sys.modules[missing] = None
sys.argv = [target] + args
if target.endswith(".py"):
  sys.path.insert(0, ".")
  runpy.run_path(target, run_name="__main__")
else:
  runpy.run_module(target, run_name="__main__", alter_sys=True)
"""

_NEEDS_EXTRA = {
    "sigma_vae_jax.main": ["--config=configs/default.py", "--workdir={tmp}/run"],
    "sigma_vae_jax.data": ["synthetic_shapes", "--data_dir={tmp}/data"],
    "scripts/evaluate_video.py": ["--workdir={tmp}", "--output_dir={tmp}/out"],
    "scripts/benchmark.py": ["--steps=1"],
}
for _path in glob.glob(os.path.join(ROOT, "scripts", "*.py")):
  with open(_path) as _f:
    if "sweep_cli.parse_flags(" in _f.read():
      _NEEDS_EXTRA[os.path.relpath(_path, ROOT)] = ["--output_dir={tmp}/out"]


@pytest.mark.parametrize("entry_point,missing,dist", [
    *[(e, "tensorflow", "tensorflow-cpu") for e in sorted(_NEEDS_EXTRA)],
    ("sigma_vae_jax.main", "clu", "clu"), ("sigma_vae_jax.main", "PIL", "pillow")])
def test_an_entry_point_without_the_extra_names_it_in_one_line(entry_point, missing, dist,
                                                               tmp_path):
  args = [a.format(tmp=tmp_path) for a in _NEEDS_EXTRA[entry_point]]
  done = subprocess.run([sys.executable, "-c", _MISSING_RUNNER, missing, entry_point,
                         *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert done.returncode == 1, (done.stdout[-2000:], done.stderr[-3000:])
  lines = done.stderr.strip().splitlines()
  program = (os.path.basename(entry_point) if entry_point.endswith(".py")
             else f"python -m {entry_point}")
  assert len(lines) == 1 and lines[0].startswith(f"ERROR: {program} needs the training extra"), (
      done.stderr[-3000:])
  assert f"(missing: {dist})" in lines[0] and 'pip install "sigma_vae_jax[train]"' in lines[0]
  assert not os.path.exists(tmp_path / "run") and not os.path.exists(tmp_path / "out")


# --- The wheel without the extra, in a fresh virtual environment (slow) --------------


def _closure(requirements):
  """The installed distributions that `requirements` (Requires-Dist lines) need,
  recursively (with the extras they ask of each other, not the package's own):
  {normalised name: importlib.metadata.Distribution}."""
  from importlib import metadata
  from packaging.requirements import Requirement
  found, done = {}, set()
  todo = [(r, ("",)) for r in requirements]
  while todo:
    text, parent_extras = todo.pop()
    req = Requirement(text)
    if req.marker is not None and not any(req.marker.evaluate({"extra": e})
                                          for e in parent_extras):
      continue
    name = re.sub(r"[-_.]+", "-", req.name).lower()
    key = (name, tuple(sorted(req.extras)))
    if key in done:
      continue
    done.add(key)
    found.setdefault(name, metadata.distribution(req.name))
    todo.extend((r, ("",) + tuple(sorted(req.extras)))
                for r in found[name].requires or [])
  return found


def _readme_losses_example():
  with open(os.path.join(ROOT, "README.md")) as f:
    text = f.read()
  section = text.split("## Using the losses in your own model", 1)[1]
  return section.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.mark.slow
def test_the_wheel_without_the_extra_runs_the_readme_losses_example(tmp_path):
  """Builds the wheel, installs it into an empty venv that holds only the core's
  dependencies (the installed distributions install_requires needs, recursively,
  linked in; pip resolves the wheel's requirements against them offline, so a core
  dependency missing from setup.cfg fails here), and runs the README's example."""
  dist_dir, venv = tmp_path / "dist", tmp_path / "venv"
  subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-index",
                  "--no-build-isolation", "-w", str(dist_dir), ROOT], check=True,
                 capture_output=True, timeout=600)
  wheel = glob.glob(str(dist_dir / "sigma_vae_jax-*.whl"))[0]
  subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=600)
  python = str(venv / "bin" / "python")
  site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()"
                         "['purelib'])"], check=True, capture_output=True, text=True
                        ).stdout.strip()
  import zipfile
  with zipfile.ZipFile(wheel) as z:
    meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA")))
  requires = [line.split(":", 1)[1].strip() for line in meta.decode().splitlines()
              if line.startswith("Requires-Dist:")]
  core = _closure(requires)
  assert not any(name.startswith("tensorflow") or name in ("clu", "matplotlib")
                 for name in core), sorted(core)
  for dist in core.values():
    base = str(dist.locate_file(""))
    tops = {str(f).split("/")[0] for f in (dist.files or []) if not str(f).startswith("..")}
    for top in tops:
      target = os.path.join(site, top)
      if top and not os.path.lexists(target) and os.path.exists(os.path.join(base, top)):
        os.symlink(os.path.join(base, top), target)
  done = subprocess.run([python, "-m", "pip", "install", "--no-index",
                         "--no-build-isolation", wheel], capture_output=True, text=True,
                        timeout=600)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  # The venv's Python sees the installed wheel, and no TensorFlow.
  work = tmp_path / "elsewhere"
  work.mkdir()
  check = subprocess.run(
      [python, "-c", "import importlib.util, sigma_vae_jax; print(sigma_vae_jax.__file__);"
       "print(importlib.util.find_spec('tensorflow'), importlib.util.find_spec('clu'))"],
      cwd=work, capture_output=True, text=True, timeout=300)
  assert check.returncode == 0, check.stderr[-3000:]
  path, specs = check.stdout.splitlines()
  assert path.startswith(site) and specs == "None None", check.stdout
  example = subprocess.run([python, "-c", _readme_losses_example()], cwd=work,
                           capture_output=True, text=True, timeout=600)
  assert example.returncode == 0, example.stderr[-3000:]
  assert "negative ELBO per image (nats):" in example.stdout
  assert "bits/dim (discretized, 8-bit):" in example.stdout
  # The training entry point says which extra it needs.
  main = subprocess.run([python, "-m", "sigma_vae_jax.main", "--config=x.py",
                         "--workdir=run"], cwd=work, capture_output=True, text=True,
                        timeout=300)
  assert main.returncode == 1 and main.stderr.count("\n") == 1, main.stderr[-3000:]
  assert 'pip install "sigma_vae_jax[train]"' in main.stderr
