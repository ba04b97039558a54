r"""Figure 3: mutual information I_e(x; z) and marginal KL D_KL(m(z) || p(z)) of
beta-VAEs over a beta grid and of the sigma-VAE, placed at its effective beta.

Monte Carlo estimates as in Rosca et al. (2018), paper Sec. 5.2, on the test images.
Reuses the runs of scripts/beta_sweep.py when given the same --workdir_root and
settings. Writes OUTPUT_DIR/rate_analysis.{csv,md,png}.

  python scripts/rate_analysis.py --output_dir=results/rate \
      --betas_paper=0.001,0.01,0.1,1,10

--betas is in our units (sigma^2 = beta), --betas_paper in the paper's (2x ours).
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
        sigma_decoders: Sequence[str] = ("optimal_sigma",), fid_kind: str = "none",
        fid_weights_path: Optional[str] = None, num_fid_samples: int = 1000,
        num_eval_examples: Optional[int] = None, iwae_samples: int = 0,
        checkpoint: str = "latest") -> list[dict]:
  os.makedirs(output_dir, exist_ok=True)
  config = sweeps.prepare_config(config)
  variants = sweeps.beta_grid_variants(betas, sigma_decoders)
  settings = sweeps.EvalSettings(
      rate=True, fid_kind=fid_kind, fid_weights_path=fid_weights_path,
      num_fid_samples=num_fid_samples, iwae_samples=iwae_samples, checkpoint=checkpoint,
      num_eval_examples=num_eval_examples)
  rows = sweeps.run_sweep(config, variants, workdir_root, seeds, settings)
  columns = ["model", "beta", "beta_paper", "effective_beta", "effective_beta_paper",
             "mutual_information", "marginal_kl", "average_kl", "log_n", "nelbo",
             "nelbo_calibrated"]
  if fid_kind != "none":
    columns.append("fid")
  notes = [sweep_tables.data_note(config), sweep_tables.BETA_NOTE,
           "mutual_information I_e(x;z) and marginal_kl KL(m(z)||p(z)) in nats, Monte "
           "Carlo over the test images (one z per image); average_kl is the closed-form "
           "E_x KL(q(z|x)||p(z)) = their sum up to Monte Carlo error (Eq. 9). The MI "
           "estimate is at most log_n = log(number of test images).",
           sweep_tables.CALIBRATED_NOTE,
           f"{config.num_train_steps} training steps per run, seeds {list(seeds)}.",
           sweep_tables.FID_NOTE[fid_kind]]
  sweep_tables.write_outputs(
      output_dir, "rate_analysis", "Figure 3: rate decomposition, beta-VAE vs sigma-VAE",
      rows, ["variant", "seed"] + columns + ["workdir"], columns, notes,
      lambda table, png: _plot(table, png, config.dataset.name))
  return rows


def _plot(table, path, dataset_name):
  fig, axes = sweep_tables.new_figure(2)
  for ax, key, label in zip(axes, ("mutual_information", "marginal_kl"),
                            ("I_e(x; z) (nats)", "KL(m(z) || p(z)) (nats)")):
    sweep_tables.plot_against_beta(ax, table, key, label)
  fig.suptitle(f"Rate decomposition ({dataset_name})", fontsize=9)
  sweep_tables.save_figure(fig, path)


def _define(fv):
  sweep_cli.define_beta_grid_flags(fv, DEFAULT_BETAS)
  flags.DEFINE_list("sigma_decoders", ["optimal_sigma"], "sigma-VAE decoders.",
                    flag_values=fv)


def main(argv):
  fv = sweep_cli.parse_flags(argv, _define, default_fid_kind="none", description=__doc__)
  return run(**sweep_cli.common_kwargs(fv), betas=sweep_cli.betas_from_flags(fv),
             sigma_decoders=list(fv.sigma_decoders))


if __name__ == "__main__":
  process_setup.set_tensorflow_env_defaults()
  sweep_cli.run_main(main)
