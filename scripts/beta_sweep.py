r"""Table 1: beta-VAE over a grid of beta vs the sigma-VAE (learned/optimal sigma).

For every model: the test negative ELBO (the bound on -log p, nats and bits/dim),
the discretized-Gaussian bound on the 8-bit data, the effective beta of the decoder's
sigma and FID of prior samples. Writes OUTPUT_DIR/beta_sweep.{csv,md,png}.

  python scripts/beta_sweep.py --output_dir=results/beta_sweep \
      --betas_paper=0.001,0.01,0.1,1,10 --num_train_steps=3000 --fid_kind=random

beta convention: `beta` (and --betas) is ours, Eq. 7 as printed (sigma^2 = beta); the
paper's Table 1 beta is 2x: `beta_paper` (and --betas_paper, its grid in its units).
"""

from __future__ import annotations

import os
import sys
from typing import Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # pylint: disable=g-import-not-at-top

from sigma_vae_jax import process_setup  # pylint: disable=g-import-not-at-top
from sigma_vae_jax import sweep_cli  # pylint: disable=g-import-not-at-top
from sigma_vae_jax.evaluation import sweep_tables  # pylint: disable=g-import-not-at-top
from sigma_vae_jax.evaluation import sweeps  # pylint: disable=g-import-not-at-top

DEFAULT_BETAS = (0.001, 0.01, 0.1, 1.0, 10.0)


def run(config, output_dir: str, workdir_root: str, seeds: Sequence[int] = (0,),
        betas: Sequence[float] = DEFAULT_BETAS,
        sigma_decoders: Sequence[str] = ("optimal_sigma",), fid_kind: str = "random",
        fid_weights_path: Optional[str] = None, num_fid_samples: int = 1000,
        num_eval_examples: Optional[int] = None, iwae_samples: int = 0,
        checkpoint: str = "latest") -> list[dict]:
  """Trains/reuses the runs, writes the outputs, returns the per-run rows."""
  os.makedirs(output_dir, exist_ok=True)
  config = sweeps.prepare_config(config)
  variants = sweeps.beta_grid_variants(betas, sigma_decoders)
  settings = sweeps.EvalSettings(
      fid_kind=fid_kind, fid_weights_path=fid_weights_path,
      num_fid_samples=num_fid_samples, iwae_samples=iwae_samples, checkpoint=checkpoint,
      num_eval_examples=num_eval_examples)
  rows = sweeps.run_sweep(config, variants, workdir_root, seeds, settings)

  columns = ["model", "beta", "beta_paper", "nelbo", "nelbo_calibrated", "bpd",
             "nelbo_discrete", "bpd_discrete", "bpd_discrete_calibrated", "sigma",
             "sigma_calibrated", "effective_beta", "effective_beta_paper"]
  if iwae_samples > 0:
    columns.append("iwae_nll")
  if fid_kind != "none":
    columns.append("fid")
  notes = [sweep_tables.data_note(config), sweep_tables.BETA_NOTE,
           "nelbo: test negative ELBO (nats per image; its -log p bound) with the "
           "decoder's sigma (beta-VAE: sigma^2 = beta; optimal sigma: running average); "
           "nelbo_discrete: the same model as a discretized Gaussian over the 256 "
           "levels of the 8-bit data (Table 4).",
           sweep_tables.CALIBRATED_NOTE,
           f"{config.num_train_steps} training steps per run, seeds {list(seeds)} "
           f"(mean ± std over seeds when more than one).",
           sweep_tables.FID_NOTE[fid_kind]]
  if iwae_samples > 0:
    notes.append(f"iwae_nll: importance-weighted bound on -log p with K={iwae_samples}.")
  sweep_tables.write_outputs(
      output_dir, "beta_sweep", "Table 1: beta-VAE vs sigma-VAE", rows,
      ["variant", "seed"] + columns + ["workdir"], columns, notes,
      lambda table, png: _plot(table, png, fid_kind, config.dataset.name))
  return rows


def _plot(table, path, fid_kind, dataset_name):
  panels = ["nelbo"] + (["fid"] if fid_kind != "none" else [])
  fig, axes = sweep_tables.new_figure(len(panels))
  for ax, key in zip(axes, panels):
    sweep_tables.plot_against_beta(
        ax, table, key, {"nelbo": "-ELBO (nats / image)", "fid": f"FID ({fid_kind})"}[key],
        sigma_levels=True)
    if key == "nelbo":
      ax.set_yscale("symlog")
  fig.suptitle(f"beta-VAE vs sigma-VAE ({dataset_name})", fontsize=9)
  sweep_tables.save_figure(fig, path)


def _define(fv):
  sweep_cli.define_beta_grid_flags(fv, DEFAULT_BETAS)
  flags.DEFINE_list("sigma_decoders", ["optimal_sigma"], "sigma-VAE decoders to "
                    "compare (e.g. optimal_sigma,shared_sigma).", flag_values=fv)


def main(argv):
  fv = sweep_cli.parse_flags(argv, _define, description=__doc__)
  return run(**sweep_cli.common_kwargs(fv), betas=sweep_cli.betas_from_flags(fv),
             sigma_decoders=list(fv.sigma_decoders))


if __name__ == "__main__":
  process_setup.set_tensorflow_env_defaults()
  sweep_cli.run_main(main)
