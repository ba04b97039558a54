"""Default config: the paper's small conv VAE with the optimal sigma decoder on the
built-in synthetic dataset (no download). Finishes in a few minutes on a 2-core CPU.

It lives in the package so that every config file (configs/*.py) can import it from
anywhere; `configs/default.py` is this config. Other configs override fields.
Override anything on the command line: `--config.decoder.name=shared_sigma`.
"""

import ml_collections
from ml_collections import config_dict

from sigma_vae_jax.models import conv_vae


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # Seed of the parameters' initialisation, the training noise and the data order.
  config.seed = 0

  config.dataset = ml_collections.ConfigDict()
  # One of data.dataset_fields.DATASETS; `synthetic_shapes` is generated locally.
  config.dataset.name = "synthetic_shapes"
  # File or folder for `numpy` (.npy/.npz uint8 [N,H,W(,C)]) and `folder` (images).
  config.dataset.path = ""
  # TFDS data_dir (None: TFDS's default, ~/tensorflow_datasets).
  config.dataset.data_dir = config_dict.placeholder(str)
  # Output image size (H, W); None keeps the dataset's native size.
  config.dataset.image_size = config_dict.placeholder(tuple)
  # Held-out fraction for datasets without a test split (numpy, folder, numpy_videos,
  # frey_face) when dataset.test_path is unset.
  config.dataset.test_fraction = 0.1
  # numpy, folder, numpy_videos: your own test split (a file or folder of the same
  # format as dataset.path); None holds out dataset.test_fraction of dataset.path.
  config.dataset.test_path = config_dict.placeholder(str)
  # Keep the whole dataset in device memory as uint8 and gather batches inside the
  # jitted step (fast for small datasets); False streams through tf.data.
  config.dataset.on_device = True
  # Square centre crop (pixels) before resizing; configs/celeba.py sets 148.
  config.dataset.center_crop = config_dict.placeholder(int)
  # tf.data shuffle buffer (streaming mode).
  config.dataset.shuffle_buffer = 10_000
  # Where manually downloaded files go (None: <data_dir>/downloads/manual).
  config.dataset.manual_dir = config_dict.placeholder(str)
  # False: never download (frey_face then needs its file in manual_dir).
  config.dataset.download = True
  # Frames per clip for video datasets (bair, numpy_videos); None: 12 (bair), whole
  # videos (numpy_videos).
  config.dataset.clip_length = config_dict.placeholder(int)
  # bair: True makes each example a clip [clip_length, H, W, C] (video models such as
  # svg_lp); False, single frames (image models).
  config.dataset.as_clips = False
  # Which clips of clip_length frames each video gives (bair with as_clips,
  # numpy_videos): "first", its first clip_length frames only (the SVG reference's
  # BAIR training examples), or "windows", every non-overlapping window.
  config.dataset.clip_selection = "first"
  # bair: the camera, "image_aux1" (the SVG reference's) or "image_main".
  config.dataset.bair_view = "image_aux1"

  # The model family (model.name, one of models.MODELS) and its fields. Default: the
  # paper's small conv VAE; configs/*_hvae.py and configs/bair_svg*.py replace it.
  config.model = conv_vae.default_config()

  config.decoder = ml_collections.ConfigDict()
  # The likelihood p(x|z), the paper's "decoder": one of likelihoods.LIKELIHOODS.
  config.decoder.name = "optimal_sigma"
  # KL weight, only for the `beta` decoder (the beta-VAE baseline); None for the others.
  config.decoder.beta = config_dict.placeholder(float)
  # Decay of the running average of sigma used at evaluation (optimal sigma decoders).
  config.decoder.sigma_ema_decay = 0.99
  # optimal_sigma only: axes of [B, H, W, C] the closed-form variance averages over
  # (must include 0); None shares one sigma. (0,) is one sigma per subpixel (paper Fig. 4).
  config.decoder.sigma_axes = config_dict.placeholder(tuple)
  # Soft lower bound on log sigma (losses.softclip, paper Sec. 3.1) for every closed-form
  # and learned sigma or scale: optimal_sigma (any sigma_axes, and its running average),
  # optimal_sigma_per_image, shared_sigma, per_pixel_sigma, student_t, logistic_mixture,
  # discretized_gaussian / discretized_logistic (log of their own scale). The fixed sigma
  # of `gaussian` and `beta` is not clipped. None: no bound.
  config.decoder.log_sigma_min = -6.0
  # Soft upper bound, only for the network-predicted scales of `per_pixel_sigma` and
  # `student_t`; None: no bound.
  config.decoder.log_sigma_max = 2.0
  # Degrees of freedom of the `student_t` decoder.
  config.decoder.student_t_df = 3.0
  # Mixture components of `logistic_mixture`.
  config.decoder.num_mixtures = 10
  # Scale of `discretized_gaussian` / `discretized_logistic`: "optimal" (closed form
  # sigma*, as the optimal sigma-VAE) or "learned" (one scalar, gradient descent).
  config.decoder.scale = "optimal"

  # Global batch (examples per step), split over all devices.
  config.batch_size = 64
  # "adam", "adamax" (the hierarchical VAE's default) or "sgd", at learning_rate.
  config.optimizer = "adam"
  # Step size of the optimizer (constant).
  config.learning_rate = 1e-3
  # Multiply the learning rate by this after every update, never below
  # learning_rate_floor (None: constant; the HVAE's reference: 0.999999, 1e-4).
  config.learning_rate_decay = config_dict.placeholder(float)
  config.learning_rate_floor = config_dict.placeholder(float)
  # Clip the global gradient norm to this before the update (None: no clipping).
  config.grad_clip_norm = config_dict.placeholder(float)
  # Skip (and count) updates whose gradient norm is above this (None: never), as
  # deep-VAE codebases do against rare huge gradients.
  config.skip_update_grad_norm = config_dict.placeholder(float)
  # Evaluate an exponential moving average of the parameters with this decay
  # (None: evaluate the raw parameters).
  config.ema_decay = config_dict.placeholder(float)
  # Free bits: nats per latent group below which its KL is not penalised, in
  # training only (0: off); reported ELBOs never include it.
  config.free_bits = 0.0
  # Where the floor applies: "per_example" (each example's KL of each group, as the
  # HVAE's reference) or "batch_mean" (each group's batch-mean KL).
  config.free_bits_rule = "per_example"
  # Optimizer steps of the whole run (a resumed run continues to this step).
  config.num_train_steps = 1500
  # Steps between progress lines and train rows of metrics.jsonl (averaged).
  config.log_every_steps = 50
  # Steps between test-set evaluations (ELBO, images); also at the last step.
  config.eval_every_steps = 500
  # The sigma*^2 that scores the decoders whose evaluation sigma is estimated
  # (optimal_sigma, discretized_* with scale=optimal): "fit" refits it before each
  # evaluation as the MSE of the evaluated network (EMA parameters if on, no dropout)
  # on eval_sigma_train_batches training batches; "running_average" uses the running
  # average of the training passes' sigma*^2 (decoder.sigma_ema_decay); "auto" fits
  # when the two networks differ (ema_decay set, or model.dropout_rate > 0).
  config.eval_sigma = "auto"
  # Training batches (of batch_size, at most one epoch) of that fit; always the same
  # ones (the first of the training stream shuffled with `seed`), never test data.
  config.eval_sigma_train_batches = 16
  # Steps between checkpoints in WORKDIR/checkpoints/; also at the last step.
  config.checkpoint_every_steps = 500
  # Also checkpoint when this many seconds have passed since the last checkpoint
  # (checked at the logging steps, so a resumed run stays exact), so that a killed
  # run loses at most this much work whatever the step interval; None: steps only.
  config.checkpoint_every_seconds = config_dict.FieldReference(120.0, field_type=float)
  # Latest checkpoints kept in WORKDIR/checkpoints/ (older ones are deleted).
  config.max_checkpoints_to_keep = 3
  # Keep the checkpoint with the best eval ELBO in WORKDIR/checkpoints_best/ beside
  # the latest ones (small datasets overfit); evaluate.load_run(..., checkpoint="best").
  config.keep_best_checkpoint = True
  # Optimizer steps per compiled call (lax.scan); >1 removes per-step dispatch.
  config.steps_per_call = 1
  # On CPU, compile with the XLA options measured faster for this model
  # (xla_options.compiler_options); no effect on GPU/TPU or on the computed values.
  config.tune_xla_cpu = True
  # On a non-finite loss or gradient: False stops the run with a message; True skips
  # the update and counts it in the metrics.
  config.skip_nonfinite_updates = False
  # Number of sample / reconstruction images written at each evaluation.
  config.num_image_samples = 64
  return config
