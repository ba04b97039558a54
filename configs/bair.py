"""BAIR robot pushing (TFDS `bair_robot_pushing_small`: 43,264 train / 256 test videos
of 30 frames, 64x64x3), camera `image_aux1` as the SVG reference reads it
(`dataset.bair_view="image_main"` for the other one).

For the conv VAE the data source yields the frames of the videos as images (1,297,920
train / 7,680 test). It streams through tf.data (`dataset.on_device=False`; the train
frames are ~16 GB as uint8). The SVG-LP configs (`bair_svg.py`) set `dataset.as_clips`
instead: examples are clips of `dataset.clip_length` frames, by default the first
frames of each video (`dataset.clip_selection`).
"""

from sigma_vae_jax import default_config


def get_config():
  config = default_config.get_config()
  config.dataset.name = "bair"
  config.dataset.on_device = False
  # Frames per clip for the sequential model (SVG on BAIR: 2 context + 10 predicted).
  config.dataset.clip_length = 12
  config.batch_size = 128
  config.num_train_steps = 10_000  # ~1 epoch of the 1.3M frames at batch 128.
  config.eval_every_steps = 2_000
  config.checkpoint_every_steps = 2_000
  return config
