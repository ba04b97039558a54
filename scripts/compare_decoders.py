r"""Tables 2-4: every decoder (or --decoders) on one dataset and model.

Per decoder: test negative ELBO (nats, bits/dim), the bound on the 8-bit data
(discrete decoders: their ELBO; Gaussian decoders: the discretized Gaussian
probability, Table 4), the same for the Gaussian decoders at their maximum-likelihood
constant sigma ("calibrated after training"), mean log sigma where the decoder has a
scale, and FID.
Writes OUTPUT_DIR/compare_decoders.{csv,md,png}.

  python scripts/compare_decoders.py --output_dir=results/decoders \
      --decoders=gaussian,shared_sigma,optimal_sigma,categorical --num_train_steps=3000
"""

from __future__ import annotations

import os
import sys
from typing import Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # pylint: disable=g-import-not-at-top

from sigma_vae_jax import process_setup  # pylint: disable=g-import-not-at-top
from sigma_vae_jax import likelihoods  # pylint: disable=g-import-not-at-top
from sigma_vae_jax import sweep_cli  # pylint: disable=g-import-not-at-top
from sigma_vae_jax.evaluation import sweep_tables  # pylint: disable=g-import-not-at-top
from sigma_vae_jax.evaluation import sweeps  # pylint: disable=g-import-not-at-top

DEFAULT_DECODERS = tuple(name for name in likelihoods.LIKELIHOODS if name != "beta")


def decoder_variant(config, name: str, beta: float) -> sweeps.Variant:
  overrides = {"decoder.name": name}
  if name in likelihoods.LIKELIHOODS_WITH_BETA:
    overrides["decoder.beta"] = float(beta)
  decoder = likelihoods.get_likelihood(sweeps.apply_overrides(config, overrides).decoder)
  return sweeps.Variant(name, overrides, {
      "decoder": name if name != "beta" else f"beta (beta={beta:g}, beta_paper={2 * beta:g})",
      "discrete_likelihood": bool(decoder.is_discrete)})


def run(config, output_dir: str, workdir_root: str, seeds: Sequence[int] = (0,),
        decoder_names: Sequence[str] = DEFAULT_DECODERS, beta: float = 0.01,
        fid_kind: str = "random", fid_weights_path: Optional[str] = None,
        num_fid_samples: int = 1000, num_eval_examples: Optional[int] = None,
        iwae_samples: int = 0,
        checkpoint: str = "latest") -> list[dict]:
  unknown = [n for n in decoder_names if n not in likelihoods.LIKELIHOODS]
  if unknown:
    raise ValueError(f"unknown decoders {unknown}; choose from {sorted(likelihoods.LIKELIHOODS)}")
  os.makedirs(output_dir, exist_ok=True)
  config = sweeps.prepare_config(config)
  variants = [decoder_variant(config, n, beta) for n in decoder_names]
  settings = sweeps.EvalSettings(
      fid_kind=fid_kind, fid_weights_path=fid_weights_path,
      num_fid_samples=num_fid_samples, iwae_samples=iwae_samples, checkpoint=checkpoint,
      num_eval_examples=num_eval_examples)
  rows = sweeps.run_sweep(config, variants, workdir_root, seeds, settings)
  columns = ["decoder", "nelbo", "nelbo_calibrated", "bpd", "nelbo_discrete",
             "bpd_discrete", "bpd_discrete_calibrated", "log_sigma", "sigma_calibrated"]
  if iwae_samples > 0:
    columns.append("iwae_nll")
  if fid_kind != "none":
    columns.append("fid")
  notes = [sweep_tables.data_note(config),
           "nelbo / bpd: test negative ELBO of each decoder's own likelihood (nats per "
           "image / bits per dim). Continuous densities on [0,1] (Gaussian, Student-t) "
           "and discrete probabilities are not comparable; compare bpd_discrete: the "
           "ELBO on the 8-bit data, i.e. the decoder's own ELBO for the discrete "
           "decoders and the same decoder discretized over the 256 levels for the "
           "Gaussian and Student-t decoders (Table 4). '-' where not defined "
           "(Bernoulli is not a distribution over the 8-bit values).",
           sweep_tables.CALIBRATED_NOTE,
           "log_sigma: mean log of the decoder's scale at evaluation (the logistic's "
           "scale s for discretized_logistic, whose std is s pi / sqrt(3)).",
           "beta decoder: evaluated as the Gaussian with sigma^2 = beta. "
           + sweep_tables.BETA_NOTE,
           f"{config.num_train_steps} training steps per run, seeds {list(seeds)}.",
           sweep_tables.FID_NOTE[fid_kind]]
  sweep_tables.write_outputs(
      output_dir, "compare_decoders", "Tables 2-4: decoders compared", rows,
      ["variant", "seed", "discrete_likelihood"] + columns + ["workdir"], columns, notes,
      lambda table, png: _plot(table, png, fid_kind, config.dataset.name))
  return rows


def _plot(table, path, fid_kind, dataset_name):
  panels = ["bpd_discrete"] + (["fid"] if fid_kind != "none" else [])
  fig, axes = sweep_tables.new_figure(len(panels), width=6)
  names = [r["decoder"] for r in table]
  for ax, key in zip(axes, panels):
    values = [sweep_tables.value(r.get(key)) for r in table]
    heights = [v if v is not None else 0.0 for v in values]
    ax.bar(range(len(names)), heights,
           color=["C0" if v is not None else "lightgray" for v in values])
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel({"bpd_discrete": "bits/dim on 8-bit data (lower is better)",
                   "fid": f"FID ({fid_kind})"}[key], fontsize=8)
  fig.suptitle(f"Decoders on {dataset_name}", fontsize=9)
  sweep_tables.save_figure(fig, path)


def _define(fv):
  flags.DEFINE_list("decoders", list(DEFAULT_DECODERS), "Decoders to compare "
                    f"(any of {sorted(likelihoods.LIKELIHOODS)}).", flag_values=fv)
  flags.DEFINE_float("beta", 0.01, "KL weight of the `beta` decoder when listed, in "
                     "OUR units (sigma^2 = beta; the paper's beta is 2x).", flag_values=fv)


def main(argv):
  fv = sweep_cli.parse_flags(argv, _define, description=__doc__)
  return run(**sweep_cli.common_kwargs(fv), decoder_names=list(fv.decoders), beta=fv.beta)


if __name__ == "__main__":
  process_setup.set_tensorflow_env_defaults()
  sweep_cli.run_main(main)
