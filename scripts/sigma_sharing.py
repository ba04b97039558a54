"""Figure 4: the optimal sigma shared over more or fewer axes, and per image; marginal
KL and mutual information against the number of variance parameters (log x).

Variants (names for --variants):
  shared        optimal_sigma, sigma_axes=None: one sigma                    (1)
  per_channel   optimal_sigma, sigma_axes=(0,1,2): one per colour channel    (C)
  per_location  optimal_sigma, sigma_axes=(0,3): one per pixel location      (H*W)
  per_subpixel  optimal_sigma, sigma_axes=(0,): one per subpixel             (H*W*C)
  per_image     optimal_sigma_per_image: one sigma per image, solved on it   (1 per image)
  per_pixel     per_pixel_sigma: predicted by the network per subpixel      (H*W*C per image)
Writes OUTPUT_DIR/sigma_sharing.{csv,md,png}.

  python scripts/sigma_sharing.py --output_dir=results/sharing --num_train_steps=3000
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

VARIANTS = {
    "shared": ({"decoder.name": "optimal_sigma", "decoder.sigma_axes": None}, "optimal"),
    "per_channel": ({"decoder.name": "optimal_sigma", "decoder.sigma_axes": (0, 1, 2)},
                    "optimal"),
    "per_location": ({"decoder.name": "optimal_sigma", "decoder.sigma_axes": (0, 3)},
                     "optimal"),
    "per_subpixel": ({"decoder.name": "optimal_sigma", "decoder.sigma_axes": (0,)},
                     "optimal"),
    "per_image": ({"decoder.name": "optimal_sigma_per_image"}, "optimal, per image"),
    "per_pixel": ({"decoder.name": "per_pixel_sigma"}, "predicted"),
}


def num_variance_parameters(config, overrides, image_shape) -> int:
  """Variance parameters per image: the closed-form sigma's shape, 1 for per-image,
  H*W*C for the network-predicted per-pixel sigma."""
  from sigma_vae_jax import likelihoods  # pylint: disable=g-import-not-at-top
  likelihood = likelihoods.get_likelihood(sweeps.apply_overrides(config, overrides).decoder)
  if isinstance(likelihood, likelihoods.OptimalSigma):
    return likelihood.num_variance_parameters(image_shape)
  if isinstance(likelihood, likelihoods.PerPixelSigma):
    return math.prod(image_shape)
  return 1


def run(config, output_dir: str, workdir_root: str, seeds: Sequence[int] = (0,),
        variant_names: Sequence[str] = tuple(VARIANTS), fid_kind: str = "random",
        fid_weights_path: Optional[str] = None, num_fid_samples: int = 1000,
        num_eval_examples: Optional[int] = None, iwae_samples: int = 0,
        checkpoint: str = "latest") -> list[dict]:
  unknown = [n for n in variant_names if n not in VARIANTS]
  if unknown:
    raise ValueError(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
  os.makedirs(output_dir, exist_ok=True)
  config = sweeps.prepare_config(config)
  from sigma_vae_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  image_shape = input_pipeline.get_data_source(config.dataset).image_shape
  variants = []
  for name in variant_names:
    overrides, sigma_kind = VARIANTS[name]
    axes = overrides.get("decoder.sigma_axes")
    variants.append(sweeps.Variant(name, overrides, {
        "sigma_kind": sigma_kind,
        "sigma_axes": "-" if "decoder.sigma_axes" not in overrides else
                      ("all" if axes is None else str(tuple(axes))),
        "num_variance_parameters": num_variance_parameters(config, overrides,
                                                           image_shape)}))
  settings = sweeps.EvalSettings(
      rate=True, fid_kind=fid_kind, fid_weights_path=fid_weights_path,
      num_fid_samples=num_fid_samples, iwae_samples=iwae_samples, checkpoint=checkpoint,
      num_eval_examples=num_eval_examples)
  rows = sweeps.run_sweep(config, variants, workdir_root, seeds, settings)
  columns = ["variant", "sigma_kind", "sigma_axes", "num_variance_parameters",
             "mutual_information", "marginal_kl", "average_kl", "nelbo",
             "nelbo_calibrated", "nelbo_discrete", "log_sigma"]
  if fid_kind != "none":
    columns.append("fid")
  notes = [sweep_tables.data_note(config),
           "num_variance_parameters: variance parameters per image (sigma_axes: the "
           "axes of [batch, H, W, C] the closed-form sigma*^2 averages over). per_image "
           "computes one sigma per image from that image; per_pixel predicts H*W*C "
           "sigmas with the network.",
           "mutual_information I_e(x;z), marginal_kl KL(m(z)||p(z)) in nats (Monte "
           "Carlo over the test images, Sec. 5.2); log_sigma: mean log sigma.",
           sweep_tables.CALIBRATED_NOTE,
           f"{config.num_train_steps} training steps per run, seeds {list(seeds)}.",
           sweep_tables.FID_NOTE[fid_kind]]
  sweep_tables.write_outputs(
      output_dir, "sigma_sharing", "Figure 4: sharing the variance over fewer or more axes",
      rows, ["seed"] + columns + ["workdir"], columns, notes,
      lambda table, png: _plot(table, png, config.dataset.name))
  return rows


def _plot(table, path, dataset_name):
  fig, axes = sweep_tables.new_figure(2)
  for ax, key, label in zip(axes, ("marginal_kl", "mutual_information"),
                            ("KL(m(z) || p(z)) (nats)", "I_e(x; z) (nats)")):
    for r in table:
      x, y = sweep_tables.value(r["num_variance_parameters"]), sweep_tables.value(r[key])
      marker = {"optimal": "o", "optimal, per image": "s", "predicted": "^"}[r["sigma_kind"]]
      ax.plot([x], [y], marker, markersize=8, label=r["variant"])
    ax.set_xscale("log")
    ax.set_xlabel("variance parameters per image")
    ax.set_ylabel(label)
    ax.legend(fontsize=7)
  fig.suptitle(f"Sharing sigma ({dataset_name})", fontsize=9)
  sweep_tables.save_figure(fig, path)


def _define(fv):
  flags.DEFINE_list("variants", list(VARIANTS), f"Any of {list(VARIANTS)}.",
                    flag_values=fv)


def main(argv):
  fv = sweep_cli.parse_flags(argv, _define, description=__doc__)
  return run(**sweep_cli.common_kwargs(fv), variant_names=list(fv.variants))


if __name__ == "__main__":
  process_setup.set_tensorflow_env_defaults()
  sweep_cli.run_main(main)
