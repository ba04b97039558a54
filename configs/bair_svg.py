"""SVG-LP on BAIR robot pushing with the optimal sigma decoder: the sigma-VAE paper's
Table 2, "BAIR SVG" column (optimal sigma: -log p < -14173 nats, FID 34.13, the best of
the column; App. B: "the default hyperparameters" of the SVG-LP implementation).

The reference's BAIR settings (edenton/svg, `train_svg_lp.py --dataset bair --model vgg
--g_dim 128 --z_dim 64 --n_past 2 --n_future 10`): 64x64x3 frames, vgg_64 frame
encoder/decoder with skips, g_dim 128, z_dim 64, LSTMs of 256 (predictor 2 layers,
posterior and prior 1 each), 2 context frames, 10 predicted in training (clips of 12),
30-frame clips (28 generated) at evaluation; Adam (0.9, 0.999), learning rate 2e-3,
batch 100, 300 epochs of 600 steps (180k steps); no KL annealing (the sigma-VAE paper
uses none either). The objective: NLL summed over the 11 predicted frames (frames 2..12:
the reference's loss covers every frame after the first, the second context frame
included) and pixels, plus the KL(q || p) summed over the 11 steps and the 64 latents.
Its original mean-squared-error objective is `configs/bair_svg_original.py`.

Data as the reference's (`data/convert_bair.py`, `data/bair.py`): camera `image_aux1`;
each training example is the first 12 frames (0..11) of a video, so every clip starts
at its episode's start (`dataset.clip_selection="windows"`: every non-overlapping
window, 0-11 and 12-23, instead); the eval ELBO during training scores the first 12
frames of each test video the same way; scripts/evaluate_video.py predicts whole
30-frame test videos. `dataset.clip_length` follows model.n_past + model.n_future
(overriding either updates it). Other decoders: `--config.decoder.name=...`; one sigma per frame:
`--config.decoder.sigma_axes="(0, 2, 3, 4)"`; per clip: `optimal_sigma_per_image`.
"""

from sigma_vae_jax import default_config
from sigma_vae_jax.models import svg_lp


def get_config():
  config = default_config.get_config()
  config.dataset.name = "bair"
  config.dataset.on_device = False
  config.dataset.as_clips = True  # examples are clips [clip_length, 64, 64, 3]
  config.model = svg_lp.default_config()
  # Training clips: 2 context + 10 predicted frames.
  config.dataset.clip_length = (config.model.get_ref("n_past")
                                + config.model.get_ref("n_future"))
  config.decoder.name = "optimal_sigma"
  config.batch_size = 100
  config.learning_rate = 2e-3
  config.num_train_steps = 180_000  # 300 reference epochs of 600 steps
  config.eval_every_steps = 6_000
  config.checkpoint_every_steps = 6_000
  return config
