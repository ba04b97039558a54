"""The package's layers: every import (module level or inside a function) runs from a
higher layer to a lower one or within one layer, and no two modules import each other
(directly or through others).

Layers, lowest first (README "Where things are"):
maths (losses, likelihoods, models.base, objectives) <- models <- configuration
<- data <- training <- evaluation <- the command line (cli, config_help, main, sweep_cli and
the packages' __main__ modules).
"""

import ast
import os

import pytest

PACKAGE = "sigma_vae_jax"
PACKAGE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), PACKAGE)

# (layer, module-name prefixes), lowest first; the longest matching prefix decides.
LAYERS = [
    ("losses", ["losses"]),
    ("likelihoods", ["likelihoods", "models.base"]),
    ("objectives", ["objectives"]),
    ("models", ["models"]),
    ("configuration", ["configuration", "default_config"]),
    ("data", ["data"]),
    ("training", ["training"]),
    ("evaluation", ["evaluation"]),
    ("command line", ["cli", "config_cli", "config_help", "main", "process_setup",
                      "sweep_cli"]),
]


def _modules():
  """{dotted name relative to the package ('' for the package itself): file path}."""
  found = {}
  for dirpath, dirnames, filenames in os.walk(PACKAGE_DIR):
    dirnames[:] = [d for d in dirnames if d != "__pycache__"]
    rel = os.path.relpath(dirpath, PACKAGE_DIR)
    parts = [] if rel == "." else rel.split(os.sep)
    for f in filenames:
      if f.endswith(".py"):
        stem = f[:-3]
        name = ".".join(parts + ([] if stem == "__init__" else [stem]))
        found[name] = os.path.join(dirpath, f)
  return found


def _layer(name):
  """Index of module `name`'s layer (the package root `__init__` sits above all)."""
  if name == "":
    return len(LAYERS)
  if name.rpartition(".")[2] == "__main__":  # `python -m PACKAGE`: the command line
    return len(LAYERS) - 1
  best = None
  for index, (_, prefixes) in enumerate(LAYERS):
    for prefix in prefixes:
      if name == prefix or name.startswith(prefix + "."):
        if best is None or len(prefix) > best[0]:
          best = (len(prefix), index)
  if best is None:
    raise AssertionError(f"{PACKAGE}.{name} is in no layer: add it to LAYERS in {__file__}")
  return best[1]


def _imports(name, path, modules):
  """The package modules that `name` imports anywhere in its source."""
  tree = ast.parse(open(path).read(), path)
  package_parts = name.split(".") if os.path.basename(path) == "__init__.py" else name.split(".")[:-1]
  targets = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      bases = [alias.name for alias in node.names]
      froms = []
    elif isinstance(node, ast.ImportFrom):
      if node.level:
        base = ".".join([PACKAGE] + package_parts[:len(package_parts) - node.level + 1] +
                        ([node.module] if node.module else []))
      else:
        base = node.module or ""
      # `from P import a`: module P.a where `a` is a module, else P (a name in P).
      bases = []
      froms = [base + "." + alias.name for alias in node.names]
    else:
      continue
    for full in bases + froms:
      if full == PACKAGE or full.startswith(PACKAGE + "."):
        rel = full[len(PACKAGE) + 1:]
        # The longest known module that `full` names or lies in (an imported name that
        # is a function or class counts as its module).
        while rel and rel not in modules:
          rel = rel.rpartition(".")[0]
        if rel and rel != name:
          targets.add(rel)
  return targets


def _graph():
  modules = _modules()
  return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_every_module_is_in_a_layer():
  for name in _modules():
    _layer(name)


def test_imports_never_run_upward():
  upward = []
  for name, targets in _graph().items():
    for target in sorted(targets):
      if _layer(target) > _layer(name):
        upward.append(f"{name} ({LAYERS[_layer(name)][0]}) imports {target} "
                      f"({LAYERS[_layer(target)][0]})")
  assert not upward, "imports that run upward:\n" + "\n".join(upward)


def test_no_import_cycles():
  graph = _graph()
  state = {}  # name -> 1 while on the DFS stack, 2 when done

  def visit(name, stack):
    state[name] = 1
    for target in sorted(graph[name]):
      # A package's __init__ importing its own submodules is how packages re-export.
      if name == "" or name + "." == target[:len(name) + 1]:
        continue
      if state.get(target) == 1:
        cycle = stack[stack.index(target):] + [target]
        raise AssertionError("import cycle: " + " -> ".join(cycle))
      if target not in state:
        visit(target, stack + [target])
    state[name] = 2

  for name in sorted(graph):
    if name not in state:
      visit(name, [name])


@pytest.mark.parametrize("source,expected", [
    ("from sigma_vae_jax.training import train\n", {"training.train"}),
    ("from sigma_vae_jax import cli\n", {"cli"}),
    ("def f():\n  from sigma_vae_jax.evaluation.evaluate import load_run\n", {"evaluation.evaluate"}),
    ("import sigma_vae_jax.data.input_pipeline as ip\n", {"data.input_pipeline"}),
])
def test_the_checker_sees_every_import_form(tmp_path, source, expected):
  """The checks above rely on `_imports` finding each import form (a checker that
  missed lazy imports would pass anything)."""
  path = tmp_path / "m.py"
  path.write_text(source)
  assert _imports("data.m", str(path), _modules()) == expected


def test_the_checker_reports_an_upward_import():
  """A data module importing the command line is reported."""
  assert _layer("cli") > _layer("data.input_pipeline")
  assert _layer("models.base") < _layer("objectives") < _layer("models.conv_vae")


def test_the_old_root_names_still_import_with_a_warning():
  """`from sigma_vae_jax import train` (0.1.0's paths) gives the moved module and a
  DeprecationWarning naming where it is now."""
  import importlib
  import sigma_vae_jax
  moved = {"train": "sigma_vae_jax.training.train",
           "evaluate": "sigma_vae_jax.evaluation.evaluate",
           "input_pipeline": "sigma_vae_jax.data.input_pipeline",
           "reporting": "sigma_vae_jax.training.reporting"}
  for name, target in moved.items():
    with pytest.warns(DeprecationWarning, match=target.replace(".", r"\.")):
      module = getattr(sigma_vae_jax, name)
    assert module is importlib.import_module(target)
  with pytest.raises(AttributeError):
    getattr(sigma_vae_jax, "no_such_module")


def test_the_readme_map_names_paths_that_exist():
  root = os.path.dirname(PACKAGE_DIR)
  with open(os.path.join(root, "README.md"), encoding="utf-8") as f:
    text = f.read()
  section = text.split("## Where things are", 1)[1].split("\n## ", 1)[0]
  rows = [line for line in section.splitlines() if line.startswith("| `")]
  assert len(rows) >= 10, rows
  paths = [cell.strip("`") for row in rows
           for cell in row.split("|")[1].replace(",", " ").split() if cell.startswith("`")]
  directory = ""
  for path in paths:
    if path == "...`":
      continue
    # `a/b.py`, `c.py`: a bare file name lies in the folder of the path before it.
    if "/" in path:
      directory = os.path.dirname(path.rstrip("/"))
      full = path
    else:
      full = os.path.join(directory, path)
    assert os.path.exists(os.path.join(root, full)), full
