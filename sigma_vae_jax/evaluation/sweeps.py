"""Running the reproduction scripts' sweeps (scripts/*.py): config variants x seeds,
each trained (or reused) in its own workdir and evaluated, one row of results per run.

* A run's workdir is `WORKDIR_ROOT/<decoder...>_seed<S>-<hash of its config>`: the same config
  always maps to the same workdir, so a rerun (or another script asking for the same
  model) reuses finished runs and resumes interrupted ones, and a changed config
  (e.g. more steps) gets a fresh run instead of silently mixing results.
* Evaluation results are cached in the workdir (`evaluations.json`), keyed by the
  evaluation settings.

The scripts' flags are `sigma_vae_jax.sweep_cli`'s; their CSV, Markdown and PNG
outputs `sweep_tables`'.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import time
from typing import Any, Callable, Optional, Sequence

import ml_collections
import numpy as np

from sigma_vae_jax.training import progress

EVALUATIONS_FILE = "evaluations.json"
# Config fields that do not change what is trained (paths), left out of the run hash.
_UNHASHED_FIELDS = (("dataset", "data_dir"), ("dataset", "manual_dir"))


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
  # "latest" or "best" (the run's checkpoint with the best eval ELBO; loading.load_run).
  checkpoint: str = "latest"


def evaluate_run(workdir: str, settings: EvalSettings) -> dict[str, float]:
  """Loads a finished run and evaluates it (cached in the workdir per settings)."""
  # pylint: disable=g-import-not-at-top
  import jax
  from sigma_vae_jax.evaluation import effective_beta
  from sigma_vae_jax.evaluation import elbo
  from sigma_vae_jax.evaluation import fid
  from sigma_vae_jax.evaluation import iwae
  from sigma_vae_jax.evaluation import loading
  from sigma_vae_jax.evaluation import rate
  # pylint: enable=g-import-not-at-top
  fields = dataclasses.asdict(settings)
  if fields["checkpoint"] == "latest":
    del fields["checkpoint"]  # the key of evaluations cached before the field existed
  key = json.dumps(fields, sort_keys=True)

  def compute():
    config, trainer, state = loading.load_run(workdir, checkpoint=settings.checkpoint)
    images = loading.load_test_images(config, settings.num_eval_examples)
    rng = jax.random.PRNGKey(settings.seed)
    out: dict[str, float] = {"step": float(jax.device_get(state.step))}
    bs = settings.batch_size
    if settings.elbo:
      result = elbo.evaluate_elbo(trainer, state, images, bs)
      out.update({k: v for k, v in result.items() if k != "num_examples"})
      if trainer.likelihood.is_discrete:
        out["nelbo_discrete"], out["bpd_discrete"] = out["nelbo"], out["bpd"]
      if settings.calibrated:
        out.update(elbo.evaluate_calibrated(trainer, state, images, bs) or {})
    beta = effective_beta.effective_beta(trainer, state, images, bs)
    if beta is not None:
      out.update(beta)
    if settings.rate:
      out.update(rate.rate_decomposition(
          trainer, state, images, jax.random.fold_in(rng, 1), bs))
    if settings.iwae_samples > 0:
      nll = iwae.iwae_nll(trainer, state, images, settings.iwae_samples, bs,
                          jax.random.fold_in(rng, 2))
      out["iwae_nll"] = float(np.mean(nll))
    if settings.fid_kind != "none":
      out["fid"] = fid.fid_score(
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
  from sigma_vae_jax.evaluation import fid  # pylint: disable=g-import-not-at-top
  if settings is not None and settings.fid_kind != "none":
    fid.fid_feature_fn(settings.fid_kind, settings.fid_weights_path)  # fail fast
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
# The scripts' base config and the beta grid.
# ----------------------------------------------------------------------------------


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
