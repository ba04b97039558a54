"""Figure 9: sigma over training for a learned shared sigma (gradient descent), the
optimal sigma (closed form over each batch) and a beta-VAE (constant sigma =
sqrt(beta), Eq. 7 convention sigma^2 = beta).

Reads the training log of each run (WORKDIR/metrics.jsonl, `log_sigma` of the train
steps: the learned parameter, or the batch's closed-form sigma*). Writes
OUTPUT_DIR/sigma_convergence.{csv,md,png}; the CSV is long: one row per run and step.

  python scripts/sigma_convergence.py --output_dir=results/convergence --beta=0.01
"""

from __future__ import annotations

import math
import os
import sys
from typing import Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # pylint: disable=g-import-not-at-top

from sigma_vae_jax import process_setup  # pylint: disable=g-import-not-at-top
from sigma_vae_jax import sweep_cli  # pylint: disable=g-import-not-at-top
from sigma_vae_jax.evaluation import sweep_tables  # pylint: disable=g-import-not-at-top
from sigma_vae_jax.evaluation import sweeps  # pylint: disable=g-import-not-at-top


def sigma_curve(workdir: str, constant_log_sigma: Optional[float] = None
                ) -> list[tuple[int, float]]:
  """[(step, sigma)] of the train logs (the last record of a step wins)."""
  by_step = {}
  for r in sweeps.read_metrics(workdir):
    if r["split"] == "train":
      if constant_log_sigma is not None:
        by_step[r["step"]] = math.exp(constant_log_sigma)
      elif "log_sigma" in r:
        by_step[r["step"]] = math.exp(r["log_sigma"])
  return sorted(by_step.items())


def final_eval(workdir: str) -> dict:
  evals = [r for r in sweeps.read_metrics(workdir) if r["split"] == "eval"]
  return max(evals, key=lambda r: r["step"]) if evals else {}


def run(config, output_dir: str, workdir_root: str, seeds: Sequence[int] = (0,),
        beta: float = 0.01, fid_kind: str = "none", fid_weights_path: Optional[str] = None,
        num_fid_samples: int = 1000, num_eval_examples: Optional[int] = None,
        iwae_samples: int = 0, checkpoint: str = "latest") -> list[dict]:
  del fid_kind, fid_weights_path, num_fid_samples, num_eval_examples, iwae_samples
  del checkpoint  # reads the training metrics only
  os.makedirs(output_dir, exist_ok=True)
  config = sweeps.prepare_config(config)
  variants = [
      sweeps.Variant("shared_sigma", {"decoder.name": "shared_sigma"},
                     {"model": "shared sigma-VAE (learned)"}),
      sweeps.Variant("optimal_sigma", {"decoder.name": "optimal_sigma"},
                     {"model": "optimal sigma-VAE"}),
      sweeps.Variant(f"beta_{beta:g}", {"decoder.name": "beta", "decoder.beta": float(beta)},
                     {"model": f"beta-VAE, beta={beta:g} (beta_paper={2 * beta:g}, "
                               f"constant sigma)"}),
  ]

  def extra(variant, workdir, _):
    constant = (0.5 * math.log(beta)) if variant.overrides["decoder.name"] == "beta" else None
    curve = sigma_curve(workdir, constant)
    ev = final_eval(workdir)
    n = len(curve)
    pick = lambda frac: curve[min(n - 1, int(frac * (n - 1)))][1] if n else None
    return {"curve": curve, "sigma_first": pick(0.0), "sigma_10pct": pick(0.1),
            "sigma_50pct": pick(0.5), "sigma_final": pick(1.0),
            "eval_nelbo": ev.get("nelbo"),
            "eval_sigma": math.exp(ev["log_sigma"]) if "log_sigma" in ev else None}

  rows = sweeps.run_sweep(config, variants, workdir_root, seeds, settings=None,
                          extra=extra)
  long_rows = [{"variant": r["variant"], "model": r["model"], "seed": r["seed"],
                "step": step, "sigma": sigma, "log_sigma": math.log(sigma)}
               for r in rows for step, sigma in r["curve"]]
  sweep_tables.write_csv(os.path.join(output_dir, "sigma_convergence.csv"), long_rows)
  summary = [{k: v for k, v in r.items() if k != "curve"} for r in rows]
  table = sweep_tables.aggregate(summary)
  png = os.path.join(output_dir, "sigma_convergence.png")
  _plot(rows, png, config.dataset.name)
  columns = ["model", "sigma_first", "sigma_10pct", "sigma_50pct", "sigma_final",
             "eval_sigma", "eval_nelbo"]
  notes = [sweep_tables.data_note(config),
           "sigma of the training batches at the first log, after 10% and 50% of "
           "training and at the end (train logs: the learned parameter for shared "
           "sigma, the batch's closed-form sigma* for optimal sigma, sqrt(beta) for "
           "the beta-VAE); eval_sigma: the sigma used at evaluation (optimal sigma: "
           "running average); eval_nelbo: final test negative ELBO (nats).",
           sweep_tables.BETA_NOTE,
           f"{config.num_train_steps} training steps per run, logged every "
           f"{config.log_every_steps}; seeds {list(seeds)}."]
  sweep_tables.write_markdown(os.path.join(output_dir, "sigma_convergence.md"),
                              "Figure 9: convergence of sigma", table, columns, notes,
                              images=[png])
  return rows


def _plot(rows, path, dataset_name):
  fig, axes = sweep_tables.new_figure(1, width=6)
  ax = axes[0]
  for i, r in enumerate(rows):
    if not r["curve"]:
      continue
    steps, sigmas = zip(*r["curve"])
    label = r["model"] if r["seed"] == rows[0]["seed"] else None
    ax.plot(steps, sigmas, color=f"C{[v['variant'] for v in rows].index(r['variant'])}",
            label=label, linewidth=1)
  ax.set_yscale("log")
  ax.set_xlabel("training step")
  ax.set_ylabel("sigma")
  ax.legend(fontsize=7)
  ax.set_title(f"sigma during training ({dataset_name})", fontsize=9)
  sweep_tables.save_figure(fig, path)


def _define(fv):
  flags.DEFINE_float("beta", 0.01, "beta of the beta-VAE (constant sigma = sqrt(beta)).",
                     flag_values=fv)


def main(argv):
  fv = sweep_cli.parse_flags(argv, _define, default_fid_kind="none", description=__doc__)
  return run(**sweep_cli.common_kwargs(fv), beta=fv.beta)


if __name__ == "__main__":
  process_setup.set_tensorflow_env_defaults()
  sweep_cli.run_main(main)
