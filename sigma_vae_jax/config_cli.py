"""The --config flag of the entry points: its config file, its --config.FIELD overrides,
and the listings of its fields.

Imports only the standard library (the config file itself, and `config_help` for the
listings, are loaded when needed), so `--help` is answered before JAX or TensorFlow
is imported. Nothing here exits: problems come back as one-line messages that `cli`
turns into usage errors.

* `config_problem`: what is wrong with the --NAME config file of a command line, or a
  misspelt --NAME.FIELD override (with the closest field name), as one line.
* `split_none_overrides`: the --NAME.FIELD=None arguments (ml_collections would parse
  "None" as the field's type; `cli.set_fields_to_none` applies them).
* `print_config_fields` (--help) and `print_resolved_config` (--print_config): every
  field of the config with its value and meaning.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from typing import Optional, Sequence

PRINT_CONFIG_FLAG = "print_config"
NONE_VALUE = "None"
# The config --help lists when no --config is given (configs/default.py is this one).
DEFAULT_CONFIG_NAME = "configs/default.py"


def one_line(text: str) -> str:
  """`text` (e.g. an exception's message) on one line: whitespace runs collapsed."""
  return " ".join(str(text).split())


def split_none_overrides(argv: Sequence[str], name: str = "config"
                         ) -> tuple[list[str], list[str]]:
  """(argv without its --NAME.FIELD=None / --NAME.FIELD None arguments, those FIELDs)."""
  argv = list(argv)
  rest, fields = argv[:1], []
  i = 1
  while i < len(argv):
    arg = argv[i]
    if arg == "--":
      rest.extend(argv[i:])
      break
    match = re.match(rf"^--?{re.escape(name)}\.([^=]+)(?:=(.*))?$", arg)
    if match and match.group(2) == NONE_VALUE:
      fields.append(match.group(1))
      i += 1
      continue
    if (match and match.group(2) is None and i + 1 < len(argv)
        and argv[i + 1] == NONE_VALUE):
      fields.append(match.group(1))
      i += 2
      continue
    rest.append(arg)
    i += 1
  return rest, fields


def _load_config(path: Optional[str]):
  """(config, its name, its file or None) of a config file PATH[:ARGS], or of
  configs/default.py (the package's default config) when path is None. Raises on
  failure."""
  if not path:
    from sigma_vae_jax import default_config  # pylint: disable=g-import-not-at-top
    return default_config.get_config(), DEFAULT_CONFIG_NAME, None
  return _run_config_file(path, "_config_for_help"), _shown_path(path), _file_of(path)


def _file_of(path: str) -> str:
  """The file of a --config value PATH[:ARGS]."""
  return os.path.expanduser(str(path).split(":", 1)[0])


def _run_config_file(path: str, module_name: str):
  """`get_config(ARGS)` of the config file PATH[:ARGS], loaded as ml_collections loads
  it (the file run as module `module_name`). Raises what the file raises."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  args = str(path).split(":", 1)[1:]
  spec = importlib.util.spec_from_file_location(module_name, _file_of(path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(*args)


def _shown_path(path: str) -> str:
  """A config path as a user would type it: relative to the working directory when
  it lies below it."""
  if os.path.isabs(path):
    relative = os.path.relpath(path)
    if not relative.startswith(".."):
      return relative
  return path


def print_config_fields(argv: Sequence[str], name: str, default_path: Optional[str]
                        ) -> None:
  """For --help: every field of the --NAME config of argv (its default, else
  configs/default.py) with its value and meaning, one per line."""
  from sigma_vae_jax import config_help  # pylint: disable=g-import-not-at-top
  path = _config_path(argv, name, default_path)
  sys.stdout.flush()  # the flags show at once; loading a config imports JAX and Flax
  try:
    config, shown, file_path = _load_config(path)
  except Exception as e:  # pylint: disable=broad-except
    print(f"\nconfig fields: cannot list those of --{name}={path} ({one_line(e)})")
    return
  print(f"\nconfig fields of {shown} (set with --{name}.FIELD=VALUE or "
        f"--{name}.FIELD=None; --{PRINT_CONFIG_FLAG} shows them after the overrides):")
  docs = config_help.default_docs(config_help.model_name_of(config), file_path)
  print(config_help.fields_listing(config, docs))


def print_resolved_config(config, argv: Sequence[str], name: str,
                          default_path: Optional[str]) -> None:
  """For --print_config: every field of `config` (the --NAME config of argv after
  its overrides) with its value and meaning, one per line."""
  from sigma_vae_jax import config_help  # pylint: disable=g-import-not-at-top
  path = _config_path(argv, name, default_path)
  file_path = _file_of(path) if path else None
  print(f"# the config of --{name}={_shown_path(path) if path else path} after the "
        f"command line's overrides")
  docs = config_help.default_docs(config_help.model_name_of(config), file_path)
  print(config_help.fields_listing(config, docs, indent=""), flush=True)


def config_problem(argv: Sequence[str], name: str, default_path: Optional[str]
                   ) -> Optional[str]:
  """One line on what is wrong with the --NAME config file or a --NAME.FIELD override
  of argv, or None (default_path: the flag's default)."""
  path = _config_path(argv, name, default_path)
  if not path:
    return None
  if not os.path.isfile(_file_of(path)):
    return f"--{name}={path}: no such config file"
  try:
    config = _run_config_file(path, f"_{name}_cli_check")
  except Exception as e:  # pylint: disable=broad-except
    return f"--{name}={path}: the config file cannot be loaded ({one_line(e)})"
  for override in _overrides(argv, name):
    problem = missing_field(config, override, name)
    if problem:
      return problem
  return None


def _config_path(argv: Sequence[str], name: str, default) -> Optional[str]:
  path = default if isinstance(default, str) else None
  for i, arg in enumerate(argv):
    for prefix in (f"--{name}=", f"-{name}="):
      if arg.startswith(prefix):
        path = arg[len(prefix):]
    if arg in (f"--{name}", f"-{name}") and i + 1 < len(argv):
      path = argv[i + 1]
  return path


def _overrides(argv: Sequence[str], name: str) -> list[str]:
  """The dotted FIELD of every --NAME.FIELD[=VALUE] / --noNAME.FIELD argument."""
  out = []
  for arg in argv[1:]:
    m = re.match(rf"^--?(?:no)?{re.escape(name)}\.([^=]+)", arg)
    if m:
      out.append(m.group(1))
  return out


def missing_field(config, dotted: str, name: str) -> Optional[str]:
  """A message if `dotted` is not a field path of config, else None."""
  node, done = config, []
  for part in dotted.split("."):
    keys = list(node.keys()) if hasattr(node, "keys") else None
    if keys is None:
      return (f"--{name}.{dotted}: {'.'.join(done)} is a value "
              f"({type(node).__name__}), not a group of fields")
    if part not in keys:
      where = f" {'.'.join(done)}" if done else ""
      close = difflib.get_close_matches(part, [str(k) for k in keys], n=1, cutoff=0.6)
      if close:
        hint = f"did you mean --{name}.{'.'.join(done + close)}?"
      else:
        hint = f"the fields of{where or ' the config'} are: {', '.join(sorted(map(str, keys)))}"
      return f"--{name}.{dotted}: the config has no field '{'.'.join(done + [part])}'; {hint}"
    node = node[part]
    done.append(part)
  return None
