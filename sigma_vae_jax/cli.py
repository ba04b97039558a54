"""Command-line plumbing shared by the entry points (`main`, `scripts/*.py`).

Imports only absl and the standard library, so `--help` is answered before JAX or
TensorFlow is imported.

* `absl_flags_parser`: the `flags_parser` of `absl.app.run` (the global `FLAGS`);
  `parse_flags`: the same on a `flags.FlagValues` of a script's own. `--help`/`-h`
  print the usage with every flag and exit 0; an unknown or invalid flag, a misspelt
  `--config.FIELD` or an unreadable `--config` file exit 2 with one line naming it,
  no traceback.
* `fail(message)`: one `ERROR: ...` line on stderr, exit 1 (expected failures; the
  traceback goes to the debug log, `--verbosity=1`).
* `distributed_options(...)`: the keyword arguments of `jax.distributed.initialize`
  from --multihost and its flags, or one usage line for inconsistent values.
* `quiet_third_party_logs()`: drops known, harmless third-party log records (NOISE)
  that a user can do nothing about.

TensorFlow's native start-up lines are silenced by environment defaults set in
`sigma_vae_jax/__init__.py` (they must be set before TensorFlow is imported).
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
    app.usage(shorthelp=not full, writeto_stdout=True, exitcode=0)
  return parse_flags(flags.FLAGS, argv)


def parse_flags(fv: flags.FlagValues, argv: Sequence[str], *,
                description: Optional[str] = None, config_flag: str = "config"
                ) -> list[str]:
  """Parses argv (argv[0]: the program) into fv; returns the remaining arguments.

  --help/-h: `description` (default: the __main__ module's docstring) and fv's flags
  on stdout, exit 0. Mistakes exit 2 with one line: an unknown or invalid flag, a
  missing required flag, a `--config.FIELD` that is not a field of the config (with
  the closest field name), a `--config` file that cannot be loaded.
  """
  argv = list(argv)
  if wants_help(argv):
    print_help(fv, argv[0], description)
    sys.exit(0)
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
  return text[1:-1] if len(text) >= 2 and text[0] == text[-1] == "'" else None


def print_help(fv: flags.FlagValues, program: str, description: Optional[str] = None
               ) -> None:
  if description is None:
    description = getattr(sys.modules.get("__main__"), "__doc__", None)
  text = (description or "").strip("\n")
  print(text if text else f"USAGE: {os.path.basename(program)} [flags]")
  print("\nflags:")
  for line in _flags_help(fv).splitlines():
    print(line)
  sys.stdout.flush()


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
