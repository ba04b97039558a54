"""SVG-LP on BAIR with the reference's own objective (Denton & Fergus 2018): the
`beta` decoder, a unit-variance Gaussian with a KL weight, which is the baseline of the
sigma-VAE paper's Table 2 BAIR column. Everything else as `configs/bair_svg.py`.

The conversion of the reference's KL weight 1e-4 to this package's beta. The reference
(`train_svg_lp.py`) minimises, per batch of B clips,

    L_ref = sum_i [ MSE_i + 1e-4 * KL_i ],  i = 1..n_past+n_future-1 (11 steps),
    MSE_i = nn.MSELoss()(x_hat_i, x_i) = 1/(B D) sum_b ||x_bi - x_hat_bi||^2,
    KL_i  = kl_criterion(...) = 1/B sum_b sum_j KL_bij,

with D = C H W = 3 * 64 * 64 = 12288 values per frame: the squared error is *averaged*
over the batch and all pixels and channels, the KL is *summed* over the z_dim = 64
latents and averaged over the batch only (`kld.sum() / batch_size`). Multiplying by D/2:

    (D / 2) L_ref = 1/B sum_b sum_i [ 1/2 ||x_bi - x_hat_bi||^2 + (1e-4 D / 2) KL_bi ],

which is this package's `beta` training loss (the batch mean of 0.5 * squared error
summed over all dimensions + beta * KL, objectives.negative_elbo) with

    beta = 1e-4 * D / 2 = 1e-4 * 12288 / 2 = 0.6144,

i.e. a Gaussian decoder with sigma^2 = beta = 0.6144 (sigma ~ 0.78 on [0, 1] pixels),
the model whose true ELBO the `beta` decoder reports at evaluation. The constant factor
D/2 only rescales the gradients, which Adam ignores (up to its epsilon). The ratio is
the same for every step, so it does not depend on how many frames the loss covers; at
another frame size beta scales with D (e.g. 0.1536 at 32x32x3).
"""

import os

from sigma_vae_jax import configuration

# The reference's KL weight on its mean squared error, and its frames.
REFERENCE_KL_WEIGHT = 1e-4
FRAME_VALUES = 64 * 64 * 3


def get_config():
  config = configuration.load_config_file(
      os.path.join(os.path.dirname(os.path.abspath(__file__)), "bair_svg.py"))
  config.decoder.name = "beta"
  config.decoder.beta = REFERENCE_KL_WEIGHT * FRAME_VALUES / 2  # 0.6144
  return config
