"""`synthetic_shapes`: the built-in default dataset, generated locally (no download).

32x32 RGB images of one or two coloured shapes (circle, square, triangle) of varied
position, size, rotation and colour on a solid or smoothly graded background. The
images are drawn with vectorised numpy (anti-aliased signed-distance rendering) from
a fixed seed per split, so every build is identical, and preparing the whole dataset
(10,000 train / 1,000 test) takes a few seconds on one CPU core.

The dataset is simple enough that a small conv VAE visibly learns it within a few
minutes of CPU training, yet varied enough that reconstructions and samples tell a
good decoder from a bad one (sharp edges, colours, smooth gradients).

Use it through `input_pipeline.get_data_source` (prepared on first use), or directly:

  from sigma_vae_jax.data.datasets import synthetic_shapes
  images, labels = synthetic_shapes.generate(100, seed=0)
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

IMAGE_SIZE = 32
SHAPE_NAMES = ("circle", "square", "triangle")
NUM_EXAMPLES = {"train": 10_000, "test": 1_000}
# One fixed seed per split: train and test are different draws of the same distribution.
SPLIT_SEEDS = {"train": 20240601, "test": 20240602}
_CHUNK = 1000


def _hsv_to_rgb(h, s, v):
  """Vectorised HSV -> RGB; all inputs in [0, 1], broadcastable; returns [..., 3]."""
  i = np.floor(h * 6.0)
  f = h * 6.0 - i
  p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
  i = i.astype(np.int64) % 6
  r = np.choose(i, [v, q, p, p, t, v])
  g = np.choose(i, [t, v, v, q, p, p])
  b = np.choose(i, [p, p, t, v, v, q])
  return np.stack([r, g, b], axis=-1)


def _shape_sdf(kind, x, y, radius):
  """Signed distance (pixels) to a shape centred at the origin; negative inside.

  kind: int [N, 1, 1] in {0: circle, 1: square, 2: triangle}; x, y: [N, H, W] in the
  shape's rotated frame; radius: [N, 1, 1].
  """
  circle = np.sqrt(x * x + y * y) - radius
  # Square of half-side ~ radius * 0.85 (similar area to the circle).
  half = radius * 0.85
  qx, qy = np.abs(x) - half, np.abs(y) - half
  outside = np.sqrt(np.maximum(qx, 0) ** 2 + np.maximum(qy, 0) ** 2)
  square = outside + np.minimum(np.maximum(qx, qy), 0)
  # Equilateral triangle with circumradius ~ radius * 1.2 (exact SDF, Quilez).
  r = radius * 1.2 * np.sqrt(3.0) / 2.0
  k = np.sqrt(3.0)
  px = np.abs(x) - r
  py = -y + r / k
  fold = px + k * py > 0
  px, py = (np.where(fold, (px - k * py) / 2, px), np.where(fold, (-k * px - py) / 2, py))
  px = px - np.clip(px, -2 * r, 0)
  triangle = -np.sqrt(px * px + py * py) * np.sign(py)
  return np.where(kind == 0, circle, np.where(kind == 1, square, triangle))


def _draw(rng: np.random.Generator, n: int, size: int):
  """Draws n images; returns (uint8 [n, size, size, 3], int64 labels [n], num_shapes [n])."""
  coords = np.arange(size, dtype=np.float32) + 0.5
  gy, gx = np.meshgrid(coords, coords, indexing="ij")
  gx, gy = gx[None], gy[None]  # [1, H, W]

  def col(a):  # [n] -> [n, 1, 1]
    return a.astype(np.float32)[:, None, None]

  # Background: solid (40%) or a linear gradient between two muted colours.
  bg_h = rng.random(n)
  bg_c1 = _hsv_to_rgb(bg_h, rng.uniform(0.1, 0.5, n), rng.uniform(0.15, 0.9, n))
  bg_c2 = _hsv_to_rgb((bg_h + rng.uniform(-0.25, 0.25, n)) % 1.0,
                      rng.uniform(0.1, 0.5, n), rng.uniform(0.15, 0.9, n))
  solid = rng.random(n) < 0.4
  bg_c2 = np.where(solid[:, None], bg_c1, bg_c2)
  angle = rng.uniform(0, 2 * np.pi, n)
  t = (col(np.cos(angle)) * (gx - size / 2) + col(np.sin(angle)) * (gy - size / 2)) / size + 0.5
  t = np.clip(t, 0, 1)[..., None]  # [n, H, W, 1]
  image = bg_c1[:, None, None, :] * (1 - t) + bg_c2[:, None, None, :] * t

  num_shapes = np.where(rng.random(n) < 0.5, 1, 2)
  labels = None
  for s in range(2):
    kind = rng.integers(0, len(SHAPE_NAMES), n)
    radius = rng.uniform(0.12, 0.28, n) * size
    cx = rng.uniform(0.3, 0.7, n) * size + rng.uniform(-1, 1, n) * (size * 0.5 - radius) * 0.6
    cy = rng.uniform(0.3, 0.7, n) * size + rng.uniform(-1, 1, n) * (size * 0.5 - radius) * 0.6
    theta = rng.uniform(0, 2 * np.pi, n)
    # Saturated, bright shape colours: they stand out from the muted backgrounds.
    colour = _hsv_to_rgb(rng.random(n), rng.uniform(0.6, 1.0, n), rng.uniform(0.75, 1.0, n))
    dx, dy = gx - col(cx), gy - col(cy)
    c, si = col(np.cos(theta)), col(np.sin(theta))
    sdf = _shape_sdf(col(kind), c * dx + si * dy, -si * dx + c * dy, col(radius))
    alpha = np.clip(0.5 - sdf, 0.0, 1.0)  # anti-aliased edge, one pixel wide
    alpha = alpha * (num_shapes > s)[:, None, None]
    alpha = alpha[..., None]
    image = image * (1 - alpha) + colour[:, None, None, :] * alpha
    if labels is None:
      labels = kind
  image = np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)
  return image, labels.astype(np.int64), num_shapes.astype(np.int64)


def _chunks(num_examples: int, seed: int, size: int):
  """Yields (images, labels) chunks of <= 1000 examples, each from its own seed."""
  for start in range(0, num_examples, _CHUNK):
    n = min(_CHUNK, num_examples - start)
    images, labels, _ = _draw(np.random.default_rng([seed, start]), n, size)
    yield images, labels


def generate(num_examples: int, seed: int, *, size: int = IMAGE_SIZE):
  """Deterministic images: (uint8 [N, size, size, 3], labels [N] of the first shape).

  The result depends only on (num_examples, seed, size); generated in chunks of 1000
  so that memory stays small.
  """
  chunks = list(_chunks(num_examples, seed, size))
  if not chunks:
    return np.zeros((0, size, size, 3), np.uint8), np.zeros((0,), np.int64)
  return (np.concatenate([c[0] for c in chunks]),
          np.concatenate([c[1] for c in chunks]))


class SyntheticShapes(tfds.core.GeneratorBasedBuilder):
  """Coloured shapes on graded backgrounds, 32x32x3, generated locally."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            # Raw bytes (no PNG): preparation stays within seconds.
            "image": tfds.features.Tensor(
                shape=(IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8,
                encoding=tfds.features.Encoding.BYTES),
            "label": tfds.features.ClassLabel(names=SHAPE_NAMES),
        }),
        supervised_keys=("image", "label"),
        homepage="https://github.com/",  # Generated locally; no homepage.
    )

  def download_and_prepare(self, *args, **kwargs):
    """TFDS's, quietly: one line of ours instead of its 'Downloading and preparing'
    banner (nothing is downloaded) and progress bars (a few seconds)."""
    from tensorflow_datasets.core.utils import tqdm_utils  # pylint: disable=g-import-not-at-top
    shown = getattr(tqdm_utils, "_active", True)
    tfds.display_progress_bar(False)
    try:
      return super().download_and_prepare(*args, **kwargs)
    finally:
      tfds.display_progress_bar(shown)

  def _log_download_bytes(self) -> None:  # TFDS's banner, printed before preparing.
    total = sum(NUM_EXAMPLES.values())
    print(f"Generating the built-in synthetic_shapes dataset ({total:,} images, a few "
          f"seconds, once; no download) into {self.data_dir}", flush=True)

  def _log_download_done(self) -> None:  # TFDS's 'downloaded and prepared' line.
    pass

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    return {split: self._generate_examples(split) for split in NUM_EXAMPLES}

  def _generate_examples(self, split):
    # Lazily, chunk by chunk (a capped build, `max_examples_per_split`, stops early).
    i = 0
    for images, labels in _chunks(NUM_EXAMPLES[split], SPLIT_SEEDS[split], IMAGE_SIZE):
      for image, label in zip(images, labels):
        yield i, {"image": image, "label": label}
        i += 1
