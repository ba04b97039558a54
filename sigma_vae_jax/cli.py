"""Command-line flags of the entry points (`main`, `scripts/*.py`): parsing, --help
and one-line errors.

Imports only absl and the standard library (and `config_cli`, which does too), so
`--help` is answered before JAX or TensorFlow is imported.

* `absl_flags_parser`: the `flags_parser` of `absl.app.run` (the global `FLAGS`);
  `parse_flags`: the same on a `flags.FlagValues` of a script's own. `--help`/`-h`
  print the usage with every flag, then every field of the chosen `--config`
  (`configs/default.py` when none is given) with its value and meaning, and exit 0;
  `--print_config` prints the resolved config (after the overrides) and exits 0; an
  unknown or invalid flag, a misspelt `--config.FIELD` or an unreadable `--config`
  file exit 2 with one line naming it, no traceback (`config_cli` finds what is
  wrong). `--config.FIELD=None` sets any field to None (ml_collections would parse
  "None" as the field's type: a float field fails, a string field becomes 'None');
  `configuration.validate_config` refuses None where a field does not take it.
* `usage_error(message)`: one `ERROR: ...` line on stderr, exit 2 (a command-line
  mistake); `fail(message)`: the same, exit 1 (expected failures; the traceback goes
  to the debug log, `--verbosity=1`).
* `require_train_extra()`: exit 1 with one line if the training extra is missing.
* `distributed_options(...)`: the keyword arguments of `jax.distributed.initialize`
  from --multihost and its flags, or one usage line for inconsistent values.

What an entry point sets up in its process (TensorFlow's logging) is in
`process_setup`.
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn, Optional, Sequence

from absl import flags

from sigma_vae_jax import config_cli

HELP_ARGS = ("-h", "--help", "-help", "-?", "--helpshort", "-helpshort", "--helpfull",
             "-helpfull")
USAGE_EXIT_CODE = 2
_PRINT_CONFIG_HELP = ("Print every field of the resolved config (after the "
                      "--config.FIELD overrides) with its value and meaning, and exit.")


def wants_help(argv: Sequence[str]) -> bool:
  """Whether the command line (argv[0]: the program) asks for help."""
  for arg in argv[1:]:
    if arg == "--":
      return False
    if arg in HELP_ARGS:
      return True
  return False


def usage_error(message: str) -> NoReturn:
  """A command-line mistake: one line on stderr, exit 2. (A config file whose own
  code fails keeps its traceback: ml_collections puts it in the message.)"""
  if "Traceback" not in message:
    message = config_cli.one_line(message) + " (see --help)"
  print(f"ERROR: {message}", file=sys.stderr, flush=True)
  sys.exit(USAGE_EXIT_CODE)


def fail(message: str, exit_code: int = 1) -> NoReturn:
  """An expected failure (bad data, config, workdir): one line on stderr, exit 1."""
  print(f"ERROR: {message}", file=sys.stderr, flush=True)
  sys.exit(exit_code)


# ----------------------------------------------------------------------------------
# The training extra.
# ----------------------------------------------------------------------------------


# What `pip install "sigma_vae_jax[train]"` adds to the core install (setup.cfg), as
# (module, distribution): the training system, data pipelines and scripts need them.
TRAIN_EXTRA = "train"
TRAIN_EXTRA_MODULES = (
    ("tensorflow", "tensorflow-cpu"), ("tensorflow_datasets", "tensorflow-datasets"),
    ("orbax.checkpoint", "orbax-checkpoint"), ("clu", "clu"), ("tensorboard", "tensorboard"),
    ("PIL", "pillow"), ("matplotlib", "matplotlib"))


def _importable(module: str) -> bool:
  import importlib.util  # pylint: disable=g-import-not-at-top
  try:
    return importlib.util.find_spec(module) is not None
  except (ImportError, ValueError):  # a missing parent package, a broken module
    return False


def _program() -> str:
  """How the user started this process: `python -m PACKAGE.MODULE` (a package's
  `__main__` named by its package), else the script's file name."""
  spec = getattr(sys.modules.get("__main__"), "__spec__", None)
  if spec is not None and spec.name:
    name = spec.name[:-len(".__main__")] if spec.name.endswith(".__main__") else spec.name
    return f"python -m {name}"
  return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "this program"


def require_train_extra() -> None:
  """Exits 1 with one line naming the extra to install if a package of the training
  extra is missing (an entry point calls this after --help, before its imports)."""
  missing = [dist for module, dist in TRAIN_EXTRA_MODULES if not _importable(module)]
  if missing:
    fail(f"{_program()} needs the training extra, which is not installed (missing: "
         f"{', '.join(missing)}): pip install \"sigma_vae_jax[{TRAIN_EXTRA}]\" (in a "
         f"clone: pip install -e \".[{TRAIN_EXTRA}]\").")


# ----------------------------------------------------------------------------------
# Flag parsing.
# ----------------------------------------------------------------------------------


def absl_flags_parser(argv: Sequence[str]) -> list[str]:
  """`absl.app.run(main, flags_parser=cli.absl_flags_parser)`: parses `flags.FLAGS`.

  --help/-h: absl's usage (the main module's docstring and flags) on stdout, exit 0.
  """
  if wants_help(argv):
    from absl import app  # pylint: disable=g-import-not-at-top
    full = any(a in ("--helpfull", "-helpfull") for a in argv[1:])
    app.usage(shorthelp=not full, writeto_stdout=True, exitcode=None)
    print(_print_config_flag_help())
    config_cli.print_config_fields(argv, "config", _default_path(flags.FLAGS, "config"))
    sys.exit(0)
  return parse_flags(flags.FLAGS, argv)


def parse_flags(fv: flags.FlagValues, argv: Sequence[str], *,
                description: Optional[str] = None, config_flag: str = "config",
                require_extra: bool = True) -> list[str]:
  """Parses argv (argv[0]: the program) into fv; returns the remaining arguments.

  With require_extra (every entry point of this package trains or evaluates), a
  missing package of the training extra exits 1 with one line naming the extra
  (`require_train_extra`), after --help.

  --help/-h: `description` (default: the __main__ module's docstring) and fv's flags
  on stdout, exit 0. Mistakes exit 2 with one line: an unknown or invalid flag, a
  missing required flag, a `--config.FIELD` that is not a field of the config (with
  the closest field name), a `--config` file that cannot be loaded.
  """
  argv = list(argv)
  if wants_help(argv):
    print_help(fv, argv[0], description, config_flag=config_flag, argv=argv)
    sys.exit(0)
  if require_extra:
    require_train_extra()
  # (The --config.FIELD=None overrides stay in `full_argv`: a misspelt one is named.)
  full_argv, (argv, none_fields) = argv, config_cli.split_none_overrides(argv, config_flag)
  if config_flag in fv and config_cli.PRINT_CONFIG_FLAG not in fv:
    flags.DEFINE_bool(config_cli.PRINT_CONFIG_FLAG, False, _PRINT_CONFIG_HELP,
                      flag_values=fv)
  try:
    rest = fv(argv)
  except flags.Error as e:
    usage_error(str(e))
  except (AttributeError, KeyError, OSError) as e:
    # ml_collections applies --config.FIELD overrides while parsing: a missing field
    # raises AttributeError/KeyError, an unloadable config file OSError.
    usage_error(config_cli.config_problem(full_argv, config_flag,
                                          _default_path(fv, config_flag))
                or f"--{config_flag}: {e}")
  # ml_collections reports an unloadable config file only when the config is used.
  if config_flag in fv and type(fv[config_flag].value).__name__ == "_ErrorConfig":
    usage_error(config_cli.config_problem(full_argv, config_flag,
                                          _default_path(fv, config_flag))
                or f"--{config_flag}: the config file cannot be loaded")
  if config_flag in fv and fv[config_flag].value is not None:
    set_fields_to_none(fv[config_flag].value, none_fields, config_flag)
    if fv[config_cli.PRINT_CONFIG_FLAG].value:
      config_cli.print_resolved_config(fv[config_flag].value, argv, config_flag,
                                       _default_path(fv, config_flag))
      sys.exit(0)
  return rest


def set_fields_to_none(config, fields: Sequence[str], name: str = "config") -> None:
  """Sets each dotted field of config to None; a field the config lacks exits 2 with
  one line (as a misspelt --NAME.FIELD=VALUE does)."""
  for dotted in fields:
    problem = config_cli.missing_field(config, dotted, name)
    if problem:
      usage_error(problem)
    node = config
    *parents, leaf = dotted.split(".")
    for part in parents:
      node = node[part]
    node[leaf] = None


def define_config_file(name: str, default: Optional[str], help_string: str,
                       argv: Sequence[str], *, flag_values: flags.FlagValues = flags.FLAGS,
                       lock_config: bool = True) -> None:
  """`config_flags.DEFINE_config_file`, for a command line argv (argv[0]: the program).

  With a default path, ml_collections loads the file and applies the --NAME.FIELD
  overrides right here: mistakes exit 2 with one line, as in `parse_flags`. For
  --help the flag is only described (loading a config imports JAX and Flax).
  """
  if wants_help(argv):
    flags.DEFINE_string(name, default, help_string, flag_values=flag_values)
    return
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  # --NAME.FIELD=None is applied by parse_flags, after ml_collections' parsing.
  full_argv, (argv, _) = argv, config_cli.split_none_overrides(argv, name)
  try:
    config_flags.DEFINE_config_file(name, default, help_string, flag_values=flag_values,
                                    lock_config=lock_config, sys_argv=list(argv))
  except flags.Error as e:
    usage_error(str(e))
  except (AttributeError, KeyError, OSError) as e:
    usage_error(config_cli.config_problem(full_argv, name, default) or f"--{name}: {e}")


def _default_path(fv: flags.FlagValues, name: str) -> Optional[str]:
  if name not in fv:
    return None
  default = fv[name].default
  if isinstance(default, str):
    return default
  text = fv[name].default_as_str or ""
  path = text[1:-1] if len(text) >= 2 and text[0] == text[-1] == "'" else None
  return None if path == "None" else path


# ----------------------------------------------------------------------------------
# --help.
# ----------------------------------------------------------------------------------


def print_help(fv: flags.FlagValues, program: str, description: Optional[str] = None,
               *, config_flag: str = "config", argv: Optional[Sequence[str]] = None
               ) -> None:
  """The description, every flag and (if fv has a config flag) the config's fields."""
  if description is None:
    description = getattr(sys.modules.get("__main__"), "__doc__", None)
  text = (description or "").strip("\n")
  print(text if text else f"USAGE: {os.path.basename(program)} [flags]")
  print("\nflags:")
  for line in _flags_help(fv).splitlines():
    print(line)
  if config_flag in fv:
    print(_print_config_flag_help())
    config_cli.print_config_fields(sys.argv if argv is None else argv, config_flag,
                                   _default_path(fv, config_flag))
  sys.stdout.flush()


def _print_config_flag_help() -> str:
  import textwrap  # pylint: disable=g-import-not-at-top
  text = f"--[no]{config_cli.PRINT_CONFIG_FLAG}: {_PRINT_CONFIG_HELP}"
  return "\n".join(textwrap.wrap(text, width=88, initial_indent="  ",
                                 subsequent_indent="      "))


def _flags_help(fv: flags.FlagValues) -> str:
  """Every flag of fv (absl's own --help/--verbosity... left out), sorted by name."""
  lines = []
  seen = set()
  for name in sorted(fv):
    flag = fv[name]
    if flag.name != name or name in seen:  # short names
      continue
    seen.add(name)
    module = fv.find_module_defining_flag(name, default="")
    if "absl" in module.replace(os.sep, "."):
      continue
    lines.append(_render_flag(flag))
  return "\n".join(lines)


def _render_flag(flag) -> str:
  import textwrap  # pylint: disable=g-import-not-at-top
  name = f"--[no]{flag.name}" if flag.boolean else f"--{flag.name}"
  text = flag.help or ""
  if flag.default_as_str not in (None, "None", "''", "'None'"):
    text += f" (default: {flag.default_as_str})"
  return "\n".join(textwrap.wrap(f"{name}: {text}", width=88, initial_indent="  ",
                                 subsequent_indent="      "))


# ----------------------------------------------------------------------------------
# Several processes (jax.distributed).
# ----------------------------------------------------------------------------------


def distributed_options(multihost: bool, coordinator_address: Optional[str],
                        num_processes: Optional[int], process_id: Optional[int],
                        heartbeat_timeout_seconds: int) -> Optional[dict]:
  """Keyword arguments for `jax.distributed.initialize`, or None without --multihost.

  Values left out are auto-detected by JAX (TPU pods, SLURM, Open MPI; the
  coordinator also from $JAX_COORDINATOR_ADDRESS). Inconsistent values exit 2 with
  one line: explicit values without --multihost, only one of --num_processes and
  --process_id, --process_id outside [0, num_processes), an address not HOST:PORT.
  """
  explicit = {"coordinator_address": coordinator_address, "num_processes": num_processes,
              "process_id": process_id}
  given = [f"--{k}" for k, v in explicit.items() if v is not None]
  if not multihost:
    if given:
      usage_error(f"{', '.join(given)} need{'s' if len(given) == 1 else ''} --multihost")
    return None
  if (num_processes is None) != (process_id is None):
    usage_error("give both --num_processes and --process_id (or neither, to let JAX "
                "detect them on a TPU pod or a SLURM/Open MPI cluster)")
  if num_processes is not None:
    if num_processes < 1:
      usage_error(f"--num_processes={num_processes} must be >= 1")
    if not 0 <= process_id < num_processes:
      usage_error(f"--process_id={process_id} must be in [0, --num_processes="
                  f"{num_processes})")
  if coordinator_address is not None:
    host, _, port = coordinator_address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
      usage_error(f"--coordinator_address={coordinator_address!r} must be HOST:PORT "
                  f"(e.g. 10.0.0.1:1234), the address of process 0")
  if heartbeat_timeout_seconds < 1:
    usage_error(f"--heartbeat_timeout_seconds={heartbeat_timeout_seconds} must be >= 1")
  options = {k: v for k, v in explicit.items() if v is not None}
  options["heartbeat_timeout_seconds"] = heartbeat_timeout_seconds
  return options
