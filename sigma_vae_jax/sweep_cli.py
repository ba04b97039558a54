"""The command line of the reproduction scripts (scripts/*.py): the flags they share
(config file and overrides, output and workdir folders, seeds, FID, IWAE, checkpoint;
the beta grid), parsing them with one-line errors, and running a script's main so that
expected failures end in one ERROR line instead of a traceback.

Flags are defined on a fresh `flags.FlagValues` per parse, so scripts can also be run
in-process (tests) by `main(argv)`. The sweeps themselves are
`sigma_vae_jax.evaluation.sweeps`'.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, Optional, Sequence

from absl import flags
from absl import logging

from sigma_vae_jax import cli
from sigma_vae_jax.evaluation import sweeps

# The repository root (holding configs/) of a source checkout.
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _default_config_path() -> str:
  path = os.path.join(_REPO_ROOT, "configs", "default.py")
  return path if os.path.exists(path) else "configs/default.py"


def define_flags(fv: flags.FlagValues, argv: Sequence[str], *,
                 default_steps: Optional[int] = None,
                 default_fid_kind: str = "random") -> None:
  """The flags of every script, on fv; argv: the command line the config overrides
  (--config.KEY=VALUE) are read from."""
  cli.define_config_file(
      "config", _default_config_path(), "Path to a config file (configs/*.py); override "
      "fields with --config.KEY=VALUE.", argv, flag_values=fv, lock_config=False)
  flags.DEFINE_string("output_dir", None, "Where the CSV, Markdown and PNG files go "
                      "(required).", flag_values=fv, required=True)
  flags.DEFINE_string("workdir_root", None, "Where the runs' workdirs go (default "
                      "OUTPUT_DIR/runs). Finished runs there are reused.", flag_values=fv)
  flags.DEFINE_integer("num_train_steps", default_steps, "Training steps per run "
                       "(default: the config's).", flag_values=fv)
  flags.DEFINE_list("seeds", ["0"], "Seeds; every model is trained once per seed.",
                    flag_values=fv)
  flags.DEFINE_enum("fid_kind", default_fid_kind, ["random", "inception", "none"],
                    "FID features: random conv net (no weights), InceptionV3 "
                    "(converted weights needed), or none.", flag_values=fv)
  flags.DEFINE_string("fid_weights_path", None, "InceptionV3 weights (fid_kind="
                      "inception); default: sigma_vae_jax.evaluation.inception's path.",
                      flag_values=fv)
  flags.DEFINE_integer("num_fid_samples", 1000, "Prior samples (and test images) for "
                       "FID.", flag_values=fv)
  flags.DEFINE_integer("num_eval_examples", None, "Test images to evaluate on "
                       "(default: all).", flag_values=fv)
  flags.DEFINE_integer("iwae_samples", 0, "K of the importance-weighted bound "
                       "(0: not computed).", flag_values=fv)
  flags.DEFINE_enum("checkpoint", "latest", ["latest", "best"], "Evaluate each run's "
                    "latest checkpoint or the one with its best eval ELBO "
                    "(WORKDIR/checkpoints_best/).", flag_values=fv)


def parse_flags(argv: Sequence[str], define_extra: Callable[[flags.FlagValues], None],
                default_steps: Optional[int] = None,
                default_fid_kind: str = "random",
                description: Optional[str] = None) -> flags.FlagValues:
  """Parses argv (argv[0]: the program) with the common flags plus define_extra's.

  --help/-h print `description` (default: the __main__ module's docstring) and the
  flags, and exit 0; a bad flag, a misspelt --config.FIELD or a missing --config file
  exit 2 with one line naming it (`cli.parse_flags`).
  """
  fv = flags.FlagValues()
  define_flags(fv, argv, default_steps=default_steps, default_fid_kind=default_fid_kind)
  define_extra(fv)
  cli.parse_flags(fv, argv, description=description)
  return fv


def run_main(main: Callable[[list[str]], Any], argv: Optional[Sequence[str]] = None
             ) -> None:
  """`if __name__ == "__main__": sweep_cli.run_main(main)`: runs main(argv) (default
  sys.argv); expected failures (bad flags or config, data, non-finite training) end
  with one ERROR line and exit 1 (2 for a flag) instead of a traceback."""
  try:
    main(list(sys.argv if argv is None else argv))
  except flags.Error as e:
    cli.usage_error(str(e))
  except Exception as e:  # pylint: disable=broad-except
    if not isinstance(e, _expected_errors()):
      raise
    logging.debug("Stopped by", exc_info=True)
    cli.fail(str(e))


def _expected_errors() -> tuple[type, ...]:
  """ValueError (ConfigError is one), missing files, and the training system's own
  errors (of the modules loaded: an error cannot come from a module not imported)."""
  errors = [ValueError, FileNotFoundError, PermissionError]
  for module, name in (("sigma_vae_jax.training.checkpointing", "CheckpointError"),
                       ("sigma_vae_jax.training.train", "NonFiniteError")):
    if module in sys.modules:
      errors.append(getattr(sys.modules[module], name))
  return tuple(errors)


def common_kwargs(fv: flags.FlagValues) -> dict:
  """The keyword arguments every script's `run` takes, from the parsed flags."""
  config = fv.config
  if fv.num_train_steps is not None:
    config = sweeps.apply_overrides(config, {"num_train_steps": fv.num_train_steps})
  return dict(
      config=config, output_dir=fv.output_dir,
      workdir_root=fv.workdir_root or os.path.join(fv.output_dir, "runs"),
      seeds=[int(s) for s in fv.seeds], fid_kind=fv.fid_kind,
      fid_weights_path=fv.fid_weights_path, num_fid_samples=fv.num_fid_samples,
      num_eval_examples=fv.num_eval_examples, iwae_samples=fv.iwae_samples,
      checkpoint=fv.checkpoint)


def define_beta_grid_flags(fv: flags.FlagValues, default_betas: Sequence[float]) -> None:
  """--betas (ours, sigma^2 = beta) and --betas_paper (the paper's Table 1 units,
  sigma^2 = beta_paper / 2); give one of them."""
  flags.DEFINE_list("betas", [f"{b:g}" for b in default_betas], "beta grid in OUR "
                    "units (Eq. 7 as printed: sigma^2 = beta = beta_paper / 2).",
                    flag_values=fv)
  flags.DEFINE_list("betas_paper", None, "beta grid in the PAPER's units (its Table 1: "
                    "sigma^2 = beta_paper / 2), e.g. 0.001,0.01,0.1,1,10; replaces "
                    "--betas (trained as beta = beta_paper / 2).", flag_values=fv)


def betas_from_flags(fv: flags.FlagValues) -> list[float]:
  """The beta grid in our units from --betas or --betas_paper (halved)."""
  if fv.betas_paper is not None:
    if fv["betas"].present:
      raise flags.IllegalFlagValueError("give --betas (our units) or --betas_paper "
                                        "(the paper's units), not both")
    return [float(b) / 2 for b in fv.betas_paper]
  return [float(b) for b in fv.betas]
