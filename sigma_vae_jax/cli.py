"""Command-line plumbing shared by the entry points (`main`, `scripts/*.py`).

Imports only absl and the standard library, so `--help` is answered before JAX or
TensorFlow is imported.

* `absl_flags_parser`: the `flags_parser` of `absl.app.run` (the global `FLAGS`);
  `parse_flags`: the same on a `flags.FlagValues` of a script's own. `--help`/`-h`
  print the usage with every flag, then every field of the chosen `--config`
  (`configs/default.py` when none is given) with its value and meaning, and exit 0;
  `--print_config` prints the resolved config (after the overrides) and exits 0; an
  unknown or invalid flag, a misspelt `--config.FIELD` or an unreadable `--config`
  file exit 2 with one line naming it, no traceback. `--config.FIELD=None` sets any
  field to None (ml_collections would parse "None" as the field's type: a float
  field fails, a string field becomes 'None'); `configuration.validate_config`
  refuses None where a field does not take it.
* `fail(message)`: one `ERROR: ...` line on stderr, exit 1 (expected failures; the
  traceback goes to the debug log, `--verbosity=1`).
* `distributed_options(...)`: the keyword arguments of `jax.distributed.initialize`
  from --multihost and its flags, or one usage line for inconsistent values.
* `quiet_third_party_logs()`: drops known, harmless third-party log records (NOISE)
  that a user can do nothing about.

* `set_tensorflow_env_defaults()`: TensorFlow's native start-up logging, set by each
  entry point before TensorFlow is imported (never on import of the package).
"""

from __future__ import annotations

import difflib
import logging as py_logging
import os
import re
import sys
from typing import NoReturn, Optional, Sequence

from absl import flags

HELP_ARGS = ("-h", "--help", "-help", "-?", "--helpshort", "-helpshort", "--helpfull",
             "-helpfull")
USAGE_EXIT_CODE = 2

# (logger name, substring) of harmless records we drop. Each is something our own code
# triggers inside a library and a user cannot act on.
NOISE = (
    # TFDS's PartialDecoding (input_pipeline._TfdsBackend) reads FeatureConnector.dtype.
    ("absl", "`FeatureConnector.dtype` is deprecated"),
)


def wants_help(argv: Sequence[str]) -> bool:
  """Whether the command line (argv[0]: the program) asks for help."""
  for arg in argv[1:]:
    if arg == "--":
      return False
    if arg in HELP_ARGS:
      return True
  return False


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


def require_train_extra() -> None:
  """Exits 1 with one line naming the extra to install if a package of the training
  extra is missing (an entry point calls this after --help, before its imports)."""
  missing = [dist for module, dist in TRAIN_EXTRA_MODULES if not _importable(module)]
  if missing:
    program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "this"
    fail(f"{program} needs the training extra, which is not installed (missing: "
         f"{', '.join(missing)}): pip install \"sigma_vae_jax[{TRAIN_EXTRA}]\" (in a "
         f"clone: pip install -e \".[{TRAIN_EXTRA}]\").")


def usage_error(message: str) -> NoReturn:
  """A command-line mistake: one line on stderr, exit 2. (A config file whose own
  code fails keeps its traceback: ml_collections puts it in the message.)"""
  if "Traceback" not in message:
    message = _one_line(message) + " (see --help)"
  print(f"ERROR: {message}", file=sys.stderr, flush=True)
  sys.exit(USAGE_EXIT_CODE)


def fail(message: str, exit_code: int = 1) -> NoReturn:
  """An expected failure (bad data, config, workdir): one line on stderr, exit 1."""
  print(f"ERROR: {message}", file=sys.stderr, flush=True)
  sys.exit(exit_code)


def _one_line(text: str) -> str:
  return " ".join(str(text).split())


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
    print_config_fields(argv, "config", _default_path(flags.FLAGS, "config"))
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
  argv, none_fields = split_none_overrides(argv, config_flag)
  if config_flag in fv and PRINT_CONFIG_FLAG not in fv:
    flags.DEFINE_bool(PRINT_CONFIG_FLAG, False, _PRINT_CONFIG_HELP, flag_values=fv)
  try:
    rest = fv(argv)
  except flags.Error as e:
    usage_error(str(e))
  except (AttributeError, KeyError, OSError) as e:
    # ml_collections applies --config.FIELD overrides while parsing: a missing field
    # raises AttributeError/KeyError, an unloadable config file OSError.
    usage_error(config_problem(argv, config_flag, _default_path(fv, config_flag))
                or f"--{config_flag}: {e}")
  # ml_collections reports an unloadable config file only when the config is used.
  if config_flag in fv and type(fv[config_flag].value).__name__ == "_ErrorConfig":
    usage_error(config_problem(argv, config_flag, _default_path(fv, config_flag))
                or f"--{config_flag}: the config file cannot be loaded")
  if config_flag in fv and fv[config_flag].value is not None:
    set_fields_to_none(fv[config_flag].value, none_fields, config_flag)
    if fv[PRINT_CONFIG_FLAG].value:
      _print_resolved_config(fv[config_flag].value, argv, config_flag,
                             _default_path(fv, config_flag))
      sys.exit(0)
  return rest


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
  argv, _ = split_none_overrides(argv, name)
  try:
    config_flags.DEFINE_config_file(name, default, help_string, flag_values=flag_values,
                                    lock_config=lock_config, sys_argv=list(argv))
  except flags.Error as e:
    usage_error(str(e))
  except (AttributeError, KeyError, OSError) as e:
    usage_error(config_problem(argv, name, default) or f"--{name}: {e}")


def _default_path(fv: flags.FlagValues, name: str) -> Optional[str]:
  if name not in fv:
    return None
  default = fv[name].default
  if isinstance(default, str):
    return default
  text = fv[name].default_as_str or ""
  path = text[1:-1] if len(text) >= 2 and text[0] == text[-1] == "'" else None
  return None if path == "None" else path


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
    print_config_fields(sys.argv if argv is None else argv, config_flag,
                        _default_path(fv, config_flag))
  sys.stdout.flush()


# ----------------------------------------------------------------------------------
# Config fields: listing them, printing the resolved config, --config.FIELD=None.
# ----------------------------------------------------------------------------------

PRINT_CONFIG_FLAG = "print_config"
_PRINT_CONFIG_HELP = ("Print every field of the resolved config (after the "
                      "--config.FIELD overrides) with its value and meaning, and exit.")
NONE_VALUE = "None"
# The config --help lists when no --config is given (configs/default.py is this one).
DEFAULT_CONFIG_NAME = "configs/default.py"


def _print_config_flag_help() -> str:
  import textwrap  # pylint: disable=g-import-not-at-top
  return "\n".join(textwrap.wrap(f"--[no]{PRINT_CONFIG_FLAG}: {_PRINT_CONFIG_HELP}",
                                 width=88, initial_indent="  ",
                                 subsequent_indent="      "))


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


def set_fields_to_none(config, fields: Sequence[str], name: str = "config") -> None:
  """Sets each dotted field of config to None; a field the config lacks exits 2 with
  one line (as a misspelt --NAME.FIELD=VALUE does)."""
  for dotted in fields:
    problem = _missing_field(config, dotted, name)
    if problem:
      usage_error(problem)
    node = config
    *parents, leaf = dotted.split(".")
    for part in parents:
      node = node[part]
    node[leaf] = None


def _load_config(path: Optional[str]):
  """(config, its name) of a config file PATH[:ARGS], or of configs/default.py
  (the package's default config) when path is None. Raises on failure."""
  if not path:
    from sigma_vae_jax import default_config  # pylint: disable=g-import-not-at-top
    return default_config.get_config(), DEFAULT_CONFIG_NAME, None
  file_path, *args = str(path).split(":", 1)
  file_path = os.path.expanduser(file_path)
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location("_config_for_help", file_path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(*args), _shown_path(path), file_path


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
    print(f"\nconfig fields: cannot list those of --{name}={path} ({_one_line(e)})")
    return
  print(f"\nconfig fields of {shown} (set with --{name}.FIELD=VALUE or "
        f"--{name}.FIELD=None; --{PRINT_CONFIG_FLAG} shows them after the overrides):")
  docs = config_help.default_docs(config_help.model_name_of(config), file_path)
  print(config_help.fields_listing(config, docs))


def _print_resolved_config(config, argv: Sequence[str], name: str,
                           default_path: Optional[str]) -> None:
  from sigma_vae_jax import config_help  # pylint: disable=g-import-not-at-top
  path = _config_path(argv, name, default_path)
  file_path = os.path.expanduser(str(path).split(":", 1)[0]) if path else None
  print(f"# the config of --{name}={_shown_path(path) if path else path} after the "
        f"command line's overrides")
  docs = config_help.default_docs(config_help.model_name_of(config), file_path)
  print(config_help.fields_listing(config, docs, indent=""), flush=True)


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


def config_problem(argv: Sequence[str], name: str, default_path: Optional[str]
                   ) -> Optional[str]:
  """One line on what is wrong with the --NAME config file or a --NAME.FIELD override
  of argv, or None (default_path: the flag's default)."""
  path = _config_path(argv, name, default_path)
  if not path:
    return None
  file_path, *args = str(path).split(":", 1)
  file_path = os.path.expanduser(file_path)
  if not os.path.isfile(file_path):
    return f"--{name}={path}: no such config file"
  try:  # As ml_collections: run the file, call get_config(ARGS) for PATH:ARGS.
    import importlib.util  # pylint: disable=g-import-not-at-top
    spec = importlib.util.spec_from_file_location(f"_{name}_cli_check", file_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(*args)
  except Exception as e:  # pylint: disable=broad-except
    return f"--{name}={path}: the config file cannot be loaded ({_one_line(e)})"
  for override in _overrides(argv, name):
    problem = _missing_field(config, override, name)
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


def _missing_field(config, dotted: str, name: str) -> Optional[str]:
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


# ----------------------------------------------------------------------------------
# Logs.
# ----------------------------------------------------------------------------------


class _DropNoise(py_logging.Filter):
  """Drops records whose message contains one of the given substrings."""

  def __init__(self, substrings):
    super().__init__()
    self.substrings = tuple(substrings)

  def filter(self, record):
    try:
      message = record.getMessage()
    except Exception:  # pylint: disable=broad-except
      return True
    return not any(s in message for s in self.substrings)


def quiet_third_party_logs() -> None:
  """Installs (once) the filters of NOISE on their loggers; idempotent."""
  by_logger = {}
  for logger_name, substring in NOISE:
    by_logger.setdefault(logger_name, []).append(substring)
  for logger_name, substrings in by_logger.items():
    logger = py_logging.getLogger(logger_name)
    if not any(isinstance(f, _DropNoise) for f in logger.filters):
      logger.addFilter(_DropNoise(substrings))


def set_tensorflow_env_defaults() -> None:
  """TensorFlow's start-up logging for our entry points, unless the user set it first.

  Called by each command-line entry point before TensorFlow is imported (importing
  the package changes no environment variable):
  * `TF_CPP_MIN_LOG_LEVEL=1`: no C++ INFO lines (CPU-feature notice, tf.data buffer
    notes); warnings and errors still show;
  * `TF_ENABLE_ONEDNN_OPTS=0`: TensorFlow's oneDNN kernels off, and with them their
    start-up notice (the data pipeline runs no matmuls or convolutions).
  """
  for name, value in (("TF_CPP_MIN_LOG_LEVEL", "1"), ("TF_ENABLE_ONEDNN_OPTS", "0")):
    os.environ.setdefault(name, value)
