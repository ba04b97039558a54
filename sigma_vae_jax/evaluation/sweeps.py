"""Shared machinery of the reproduction scripts (scripts/*.py): run a list of config
variants (x seeds), evaluate each finished run, and write CSV + Markdown + PNG plots.

* A run's workdir is `WORKDIR_ROOT/<decoder...>_seed<S>-<hash of its config>`: the same config
  always maps to the same workdir, so a rerun (or another script asking for the same
  model) reuses finished runs and resumes interrupted ones, and a changed config
  (e.g. more steps) gets a fresh run instead of silently mixing results.
* Evaluation results are cached in the workdir (`evaluations.json`), keyed by the
  evaluation settings.

Flags common to all scripts are defined by `define_flags` on a fresh
`flags.FlagValues`, so scripts can also be run in-process (tests) by `main(argv)`.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import hashlib
import importlib
import json
import math
import os
import sys
import time
from typing import Any, Callable, Iterable, Optional, Sequence

from absl import flags
from absl import logging
import ml_collections
import numpy as np

from sigma_vae_jax import cli
from sigma_vae_jax import process_setup
from sigma_vae_jax.training import progress

# Imported on first use (JAX, and TensorFlow through train/evaluate, take seconds):
# a script's --help answers before them. `sweeps.evaluate` etc. still work.
_LAZY_MODULES = {"jax": "jax", "evaluate": "sigma_vae_jax.evaluation.evaluate",
                 "reporting": "sigma_vae_jax.training.reporting", "train": "sigma_vae_jax.training.train"}


def __getattr__(name):
  if name in _LAZY_MODULES:
    return importlib.import_module(_LAZY_MODULES[name])
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


EVALUATIONS_FILE = "evaluations.json"
# Config fields that do not change what is trained (paths), left out of the run hash.
_UNHASHED_FIELDS = (("dataset", "data_dir"), ("dataset", "manual_dir"))

DATA_NOTE = ("Built-in `synthetic_shapes` data (32x32x3 procedurally generated shapes), "
             "NOT the paper's datasets; small models and short runs: compare the rows "
             "with each other, not with the paper's numbers.")


def data_note(config) -> str:
  """What the table was computed on: DATA_NOTE for the built-in data, else the name."""
  if config.dataset.name == "synthetic_shapes":
    return DATA_NOTE
  return (f"Dataset `{config.dataset.name}`, {config.num_train_steps} training steps per "
          f"run: compare with the paper's numbers only at the paper's settings.")
BETA_NOTE = ("beta convention: Eq. 7 as printed, sigma^2 = beta (`beta`, "
             "`effective_beta`); the paper's Table 1 uses sigma^2 = beta/2, i.e. "
             "`beta_paper` = 2 beta.")
CALIBRATED_NOTE = ("*_calibrated: the same trained Gaussian model evaluated at its own "
                   "maximum-likelihood constant sigma, sigma_calibrated^2 = the test MSE "
                   "of its decoder mean (`evaluate.evaluate_calibrated`): the bound it "
                   "would reach with the best constant sigma. It separates how well a "
                   "model was trained (its mean) from how far its sigma is from the "
                   "calibrated one; '-' for non-Gaussian decoders.")
FID_NOTE = {
    "random": "FID with a fixed random conv network (`fid_kind=random`): only for "
              "comparing rows of this table, not comparable to published FIDs.",
    "inception": "FID with pytorch-fid InceptionV3 features.",
    "none": "",
}


# ----------------------------------------------------------------------------------
# Variants and runs.
# ----------------------------------------------------------------------------------


@dataclasses.dataclass
class Variant:
  """One model of a sweep: a name, config overrides (dotted keys) and extra columns."""
  name: str
  overrides: dict[str, Any]
  columns: dict[str, Any] = dataclasses.field(default_factory=dict)


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict[str, Any]
                    ) -> ml_collections.ConfigDict:
  """A copy of config with dotted-key overrides applied."""
  config = copy.deepcopy(config)
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    with node.ignore_type():
      node[leaf] = value
  return config


def config_hash(config: ml_collections.ConfigDict) -> str:
  d = json.loads(config.to_json())
  for section, key in _UNHASHED_FIELDS:
    d.get(section, {}).pop(key, None)
  return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:8]


def run_name(config) -> str:
  """A readable name of the model a config trains: decoder, beta, sigma axes, seed."""
  dec = config.decoder
  name = dec.name
  if dec.get("beta") is not None:
    name += f"_beta{dec.beta:g}"
  if dec.get("sigma_axes") is not None:
    name += "_axes" + "".join(str(a) for a in dec.sigma_axes)
  if dec.name.startswith("discretized_"):
    name += f"_{dec.scale}"
  return f"{name}_seed{config.seed}"


def run_workdir(workdir_root: str, config) -> str:
  """WORKDIR_ROOT/<run_name>-<config hash>: a function of the config only, so any
  script asking for the same model (same config) reuses the same run."""
  slug = "".join(c if c.isalnum() or c in "._-" else "_" for c in run_name(config))
  return os.path.join(workdir_root, f"{slug}-{config_hash(config)}")


def is_finished(workdir: str, num_train_steps: int) -> bool:
  """Whether workdir holds the final eval of a run of num_train_steps steps."""
  from sigma_vae_jax.training import reporting  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, reporting.METRICS_FILE)
  if not os.path.exists(path):
    return False
  return any(r["split"] == "eval" and r["step"] >= num_train_steps
             for r in read_metrics(workdir))


def read_metrics(workdir: str) -> list[dict]:
  """The JSON lines of WORKDIR/metrics.jsonl (a resumed run may repeat steps)."""
  from sigma_vae_jax.training import reporting  # pylint: disable=g-import-not-at-top
  rows = []
  with open(os.path.join(workdir, reporting.METRICS_FILE)) as f:
    for line in f:
      line = line.strip()
      if line:
        rows.append(json.loads(line))
  return rows


def train_or_reuse(config, workdir: str, label: str) -> None:
  if is_finished(workdir, config.num_train_steps):
    print(f"  {label}: reusing the finished run in {workdir}", flush=True)
    return
  print(f"  {label}: training in {workdir}", flush=True)
  from sigma_vae_jax.training import train  # pylint: disable=g-import-not-at-top
  train.train_and_evaluate(config, workdir)


def _cached_evaluation(workdir: str, key: str, compute: Callable[[], dict]) -> dict:
  path = os.path.join(workdir, EVALUATIONS_FILE)
  cache = {}
  if os.path.exists(path):
    with open(path) as f:
      cache = json.load(f)
  if key in cache:
    return cache[key]
  result = compute()
  cache[key] = result
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(cache, f, indent=1, sort_keys=True)
  os.replace(tmp, path)
  return result


# ----------------------------------------------------------------------------------
# Evaluation of one run.
# ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EvalSettings:
  """What to evaluate on the first num_eval_examples test images (None: all)."""
  elbo: bool = True
  rate: bool = False
  fid_kind: str = "random"          # random | inception | none
  fid_weights_path: Optional[str] = None
  num_fid_samples: int = 1000
  iwae_samples: int = 0              # 0: no IWAE bound
  # Gaussian decoders also at their maximum-likelihood sigma (evaluate_calibrated).
  calibrated: bool = True
  num_eval_examples: Optional[int] = None
  batch_size: int = 128
  seed: int = 0
  # "latest" or "best" (the run's checkpoint with the best eval ELBO; evaluate.load_run).
  checkpoint: str = "latest"


def evaluate_run(workdir: str, settings: EvalSettings) -> dict[str, float]:
  """Loads a finished run and evaluates it (cached in the workdir per settings)."""
  import jax  # pylint: disable=g-import-not-at-top
  from sigma_vae_jax.evaluation import evaluate  # pylint: disable=g-import-not-at-top
  fields = dataclasses.asdict(settings)
  if fields["checkpoint"] == "latest":
    del fields["checkpoint"]  # the key of evaluations cached before the field existed
  key = json.dumps(fields, sort_keys=True)

  def compute():
    config, trainer, state = evaluate.load_run(workdir, checkpoint=settings.checkpoint)
    images = evaluate.load_test_images(config, settings.num_eval_examples)
    rng = jax.random.PRNGKey(settings.seed)
    out: dict[str, float] = {"step": float(jax.device_get(state.step))}
    bs = settings.batch_size
    if settings.elbo:
      elbo = evaluate.evaluate_elbo(trainer, state, images, bs)
      out.update({k: v for k, v in elbo.items() if k != "num_examples"})
      if trainer.likelihood.is_discrete:
        out["nelbo_discrete"], out["bpd_discrete"] = out["nelbo"], out["bpd"]
      if settings.calibrated:
        out.update(evaluate.evaluate_calibrated(trainer, state, images, bs) or {})
    beta = evaluate.effective_beta(trainer, state, images, bs)
    if beta is not None:
      out.update(beta)
    if settings.rate:
      out.update(evaluate.rate_decomposition(
          trainer, state, images, jax.random.fold_in(rng, 1), bs))
    if settings.iwae_samples > 0:
      nll = evaluate.iwae_nll(trainer, state, images, settings.iwae_samples, bs,
                              jax.random.fold_in(rng, 2))
      out["iwae_nll"] = float(np.mean(nll))
    if settings.fid_kind != "none":
      out["fid"] = evaluate.fid_score(
          trainer, state, images, settings.num_fid_samples, settings.fid_kind,
          jax.random.fold_in(rng, 3), settings.fid_weights_path, bs)
    return out

  return _cached_evaluation(workdir, key, compute)


def run_sweep(base_config, variants: Sequence[Variant], workdir_root: str,
              seeds: Sequence[int], settings: Optional[EvalSettings] = None,
              extra: Optional[Callable[[Variant, str, ml_collections.ConfigDict], dict]] = None
              ) -> list[dict]:
  """Trains (or reuses) every variant x seed, evaluates it, returns one row per run.

  Each row: variant, seed, workdir, the variant's columns, the evaluation results
  (settings=None: none), and extra(variant, workdir, config) if given.
  """
  from sigma_vae_jax.evaluation import evaluate  # pylint: disable=g-import-not-at-top
  if settings is not None and settings.fid_kind != "none":
    evaluate.fid_feature_fn(settings.fid_kind, settings.fid_weights_path)  # fail fast
  rows = []
  total = len(variants) * len(seeds)
  start = time.time()
  for i, (variant, seed) in enumerate(((v, s) for v in variants for s in seeds)):
    config = apply_overrides(base_config, dict(variant.overrides, seed=seed))
    workdir = run_workdir(workdir_root, config)
    label = f"[{i + 1}/{total}] {variant.name} seed {seed}"
    eta = ""
    if i:  # the runs so far (trained or reused) at their mean pace
      eta = f", ETA {progress.format_seconds((time.time() - start) / i * (total - i))}"
    print(f"{label} ({_elapsed(start)} elapsed{eta})", flush=True)
    train_or_reuse(config, workdir, label)
    row = {"variant": variant.name, "seed": seed, **variant.columns}
    if settings is not None:
      row.update(evaluate_run(workdir, settings))
    if extra is not None:
      row.update(extra(variant, workdir, config))
    row["workdir"] = workdir
    rows.append(row)
  print(f"Sweep of {total} run(s) done in {_elapsed(start)}.", flush=True)
  return rows


def _elapsed(start: float) -> str:
  s = int(time.time() - start)
  return f"{s // 60}m{s % 60:02d}s"


# ----------------------------------------------------------------------------------
# Outputs: CSV, Markdown, plots.
# ----------------------------------------------------------------------------------


def write_csv(path: str, rows: Sequence[dict], columns: Optional[Sequence[str]] = None
              ) -> None:
  columns = list(columns or _all_columns(rows))
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
      writer.writerow({c: _csv_value(row.get(c)) for c in columns})


def read_csv(path: str) -> list[dict]:
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def _csv_value(v):
  if v is None:
    return ""
  if isinstance(v, (tuple, list)):
    return " ".join(str(x) for x in v)
  return v


def _all_columns(rows):
  columns = []
  for row in rows:
    for c in row:
      if c not in columns:
        columns.append(c)
  return columns


def aggregate(rows: Sequence[dict], group: str = "variant") -> list[dict]:
  """One row per group value: numeric columns -> (mean, std over seeds, count)."""
  groups: dict[Any, list[dict]] = {}
  for row in rows:
    groups.setdefault(row[group], []).append(row)
  out = []
  for key, members in groups.items():
    agg = {}
    for c in _all_columns(members):
      values = [m.get(c) for m in members]
      if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        arr = np.asarray(values, np.float64)
        agg[c] = (float(arr.mean()), float(arr.std()) if len(arr) > 1 else None)
      else:
        agg[c] = members[0].get(c)
    agg["num_seeds"] = len(members)
    agg[group] = key
    out.append(agg)
  return out


def _format(v, digits: int = 4) -> str:
  if v is None:
    return "-"
  if isinstance(v, tuple) and len(v) == 2:
    mean, std = v
    return _format(mean, digits) + ("" if std is None else f" ± {_format(std, 2)}")
  if isinstance(v, bool):
    return str(v)
  if isinstance(v, int):
    return str(v)
  if isinstance(v, float):
    if not math.isfinite(v):
      return str(v)
    if v.is_integer() and abs(v) < 1e6:
      return str(int(v))
    if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
      return f"{v:.3g}"
    return f"{v:.{digits}g}" if abs(v) < 10 else f"{v:.2f}"
  if isinstance(v, (list, tuple)):
    return "(" + ",".join(str(x) for x in v) + ")"
  return str(v)


def markdown_table(rows: Sequence[dict], columns: Sequence[str],
                   headers: Optional[dict[str, str]] = None) -> str:
  headers = headers or {}
  lines = ["| " + " | ".join(headers.get(c, c) for c in columns) + " |",
           "|" + "|".join("---" for _ in columns) + "|"]
  for row in rows:
    lines.append("| " + " | ".join(_format(row.get(c)) for c in columns) + " |")
  return "\n".join(lines)


def write_markdown(path: str, title: str, rows: Sequence[dict], columns: Sequence[str],
                   notes: Iterable[str] = (), headers: Optional[dict[str, str]] = None,
                   images: Iterable[str] = ()) -> str:
  """A Markdown file: title, table (per-variant means ± std over seeds), notes, images."""
  text = [f"# {title}", "", markdown_table(rows, columns, headers), ""]
  text += [f"* {n}" for n in notes if n]
  for image in images:
    text += ["", f"![{os.path.basename(image)}]({os.path.basename(image)})"]
  text = "\n".join(text) + "\n"
  with open(path, "w") as f:
    f.write(text)
  return text


def new_figure(ncols: int = 1, width: float = 4.5, height: float = 3.5):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)
  return fig, list(axes[0])


def save_figure(fig, path: str) -> None:
  import matplotlib.pyplot as plt
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def value(v):
  """The mean of an aggregated (mean, std) cell, or the value itself."""
  return v[0] if isinstance(v, tuple) and len(v) == 2 else v


def write_outputs(output_dir: str, name: str, title: str, rows: Sequence[dict],
                  csv_columns: Sequence[str], table_columns: Sequence[str],
                  notes: Iterable[str], plot: Callable[[list[dict], str], None]
                  ) -> list[dict]:
  """OUTPUT_DIR/NAME.{csv,png,md}: the per-run rows, a plot of the per-variant table
  (mean ± std over seeds) and that table with notes. Returns the table."""
  write_csv(os.path.join(output_dir, f"{name}.csv"), rows, csv_columns)
  table = aggregate(rows)
  png = os.path.join(output_dir, f"{name}.png")
  plot(table, png)
  write_markdown(os.path.join(output_dir, f"{name}.md"), title, table, table_columns,
                 notes, images=[png])
  return table


def plot_against_beta(ax, table: Sequence[dict], key: str, ylabel: str, *,
                      sigma_levels: bool = False) -> None:
  """One panel of `key` over the beta-VAE grid (log x), with each sigma-VAE row as a
  star at its effective beta; sigma_levels adds its value as a horizontal line."""
  beta_rows = sorted((r for r in table if r["beta"] is not None), key=lambda r: r["beta"])
  ax.plot([value(r["beta"]) for r in beta_rows], [value(r[key]) for r in beta_rows],
          "o-", label="beta-VAE")
  for r in (r for r in table if r["beta"] is None):
    x, y = value(r.get("effective_beta")), value(r[key])
    if x is not None:
      ax.plot([x], [y], "*", markersize=14, label=f"{r['model']} at its effective beta")
    if sigma_levels:
      ax.axhline(y, linestyle="--", linewidth=0.8, color="gray")
  ax.set_xscale("log")
  ax.set_xlabel("beta (ours: sigma^2 = beta)")
  ax.set_ylabel(ylabel)
  ax.legend(fontsize=7)


# ----------------------------------------------------------------------------------
# Command-line flags shared by the scripts.
# ----------------------------------------------------------------------------------


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
  process_setup.quiet_third_party_logs()
  return fv


def run_main(main: Callable[[list[str]], Any], argv: Optional[Sequence[str]] = None
             ) -> None:
  """`if __name__ == "__main__": sweeps.run_main(main)`: runs main(argv) (default
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
    config = apply_overrides(config, {"num_train_steps": fv.num_train_steps})
  return dict(
      config=config, output_dir=fv.output_dir,
      workdir_root=fv.workdir_root or os.path.join(fv.output_dir, "runs"),
      seeds=[int(s) for s in fv.seeds], fid_kind=fv.fid_kind,
      fid_weights_path=fv.fid_weights_path, num_fid_samples=fv.num_fid_samples,
      num_eval_examples=fv.num_eval_examples, iwae_samples=fv.iwae_samples,
      checkpoint=fv.checkpoint)


def prepare_config(config) -> ml_collections.ConfigDict:
  """The base config of a sweep: eval/checkpoint intervals at most the run (so each
  run ends with an evaluation) and ~50 training logs per run (sigma curves, Fig. 9).

  Every script applies this, so identical models get identical configs and reuse
  each other's runs in a shared --workdir_root.
  """
  n = config.num_train_steps
  k = config.steps_per_call
  log_every = max(k, (n // 50) // k * k)
  return apply_overrides(config, {
      "eval_every_steps": min(config.eval_every_steps, n),
      "checkpoint_every_steps": min(config.checkpoint_every_steps, n),
      "log_every_steps": min(config.log_every_steps, log_every)})


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


def beta_grid_variants(betas: Sequence[float], sigma_decoders: Sequence[str]
                       ) -> list[Variant]:
  """beta-VAEs over a beta grid and sigma-VAEs (Table 1, Fig. 3)."""
  variants = [Variant(f"beta_{b:g}", {"decoder.name": "beta", "decoder.beta": float(b)},
                      {"model": "beta-VAE", "beta": float(b), "beta_paper": 2 * float(b)})
              for b in betas]
  variants += [Variant(name, {"decoder.name": name},
                       {"model": f"sigma-VAE ({name})", "beta": None, "beta_paper": None})
               for name in sigma_decoders]
  return variants
