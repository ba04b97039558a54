"""Flax linen InceptionV3 matching pytorch-fid's FID network ("pt_inception").

This mirrors `pytorch_fid.inception.fid_inception_v3()` with
`output_blocks=[3]` (2048-d final average-pool features):

* torchvision Inception3 stem and Mixed_6a (InceptionB) / Mixed_7a (InceptionD);
* FIDInceptionA (Mixed_5b-d) and FIDInceptionC (Mixed_6b-e): the pooling branch
  averages with `count_include_pad=False`;
* FIDInceptionE_1 (Mixed_7b): average pool with `count_include_pad=False`;
  FIDInceptionE_2 (Mixed_7c): max pool instead of average pool;
* BasicConv2d = conv (no bias) -> BatchNorm(eps=1e-3, running statistics) -> ReLU;
* inputs: images in [0, 1], NHWC; grayscale is tiled to 3 channels; bilinear
  resize to 299x299 without antialiasing (= torch `F.interpolate(...,
  mode='bilinear', align_corners=False)`); then x * 2 - 1.

Module and parameter names follow the torch module names
(`Mixed_5b/branch1x1/conv/kernel` <-> `Mixed_5b.branch1x1.conv.weight`), so the
conversion (scripts/convert_inception_weights.py) is a pure renaming plus an
OIHW -> HWIO transpose. BatchNorm is kept unfolded: `bn/scale`, `bn/bias` in
'params' and `bn/mean`, `bn/var` in 'batch_stats', always used in inference mode.

Weights: convert the pytorch-fid file `pt_inception-2015-12-05-6726825d.pth`
once with

  python scripts/convert_inception_weights.py \
      --input pt_inception-2015-12-05-6726825d.pth \
      --output ~/.cache/sigma_vae_jax/pt_inception.npz

and load with `load_params()` (default location above, or the path in the
environment variable SIGMA_VAE_INCEPTION_WEIGHTS).
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


WEIGHTS_ENV_VAR = "SIGMA_VAE_INCEPTION_WEIGHTS"
DEFAULT_WEIGHTS_PATH = os.path.join("~", ".cache", "sigma_vae_jax", "pt_inception.npz")
CONVERT_SCRIPT = "scripts/convert_inception_weights.py"
TORCH_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
TORCH_WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
    + TORCH_WEIGHTS_NAME)
INPUT_SIZE = 299
FEATURE_DIM = 2048
BN_EPSILON = 1e-3

Precision = Any


def _pair(v) -> Tuple[int, int]:
  return (v, v) if isinstance(v, int) else tuple(v)


class BasicConv2d(nn.Module):
  """torchvision BasicConv2d: conv (no bias) -> BatchNorm(eps=1e-3) -> ReLU."""
  features: int
  kernel_size: Any
  strides: Any = 1
  padding: Any = 0  # Symmetric zero padding (torch convention): int or (ph, pw).
  precision: Precision = None

  @nn.compact
  def __call__(self, x):
    ph, pw = _pair(self.padding)
    x = nn.Conv(self.features, _pair(self.kernel_size), strides=_pair(self.strides),
                padding=((ph, ph), (pw, pw)), use_bias=False,
                precision=self.precision, name="conv")(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPSILON, name="bn")(x)
    return nn.relu(x)


def _avg_pool_3x3_no_pad_count(x):
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_s2(x):
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class FIDInceptionA(nn.Module):
  pool_features: int
  precision: Precision = None

  @nn.compact
  def __call__(self, x):
    c = lambda *a, **k: BasicConv2d(*a, precision=self.precision, **k)
    b1 = c(64, 1, name="branch1x1")(x)
    b5 = c(48, 1, name="branch5x5_1")(x)
    b5 = c(64, 5, padding=2, name="branch5x5_2")(b5)
    b3 = c(64, 1, name="branch3x3dbl_1")(x)
    b3 = c(96, 3, padding=1, name="branch3x3dbl_2")(b3)
    b3 = c(96, 3, padding=1, name="branch3x3dbl_3")(b3)
    bp = c(self.pool_features, 1, name="branch_pool")(_avg_pool_3x3_no_pad_count(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  precision: Precision = None

  @nn.compact
  def __call__(self, x):
    c = lambda *a, **k: BasicConv2d(*a, precision=self.precision, **k)
    b3 = c(384, 3, strides=2, name="branch3x3")(x)
    bd = c(64, 1, name="branch3x3dbl_1")(x)
    bd = c(96, 3, padding=1, name="branch3x3dbl_2")(bd)
    bd = c(96, 3, strides=2, name="branch3x3dbl_3")(bd)
    bp = _max_pool_3x3_s2(x)
    return jnp.concatenate([b3, bd, bp], axis=-1)


class FIDInceptionC(nn.Module):
  channels_7x7: int
  precision: Precision = None

  @nn.compact
  def __call__(self, x):
    c = lambda *a, **k: BasicConv2d(*a, precision=self.precision, **k)
    c7 = self.channels_7x7
    b1 = c(192, 1, name="branch1x1")(x)
    b7 = c(c7, 1, name="branch7x7_1")(x)
    b7 = c(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
    b7 = c(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
    bd = c(c7, 1, name="branch7x7dbl_1")(x)
    bd = c(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
    bd = c(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
    bd = c(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
    bd = c(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
    bp = c(192, 1, name="branch_pool")(_avg_pool_3x3_no_pad_count(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  precision: Precision = None

  @nn.compact
  def __call__(self, x):
    c = lambda *a, **k: BasicConv2d(*a, precision=self.precision, **k)
    b3 = c(192, 1, name="branch3x3_1")(x)
    b3 = c(320, 3, strides=2, name="branch3x3_2")(b3)
    b7 = c(192, 1, name="branch7x7x3_1")(x)
    b7 = c(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = c(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = c(192, 3, strides=2, name="branch7x7x3_4")(b7)
    bp = _max_pool_3x3_s2(x)
    return jnp.concatenate([b3, b7, bp], axis=-1)


class FIDInceptionE(nn.Module):
  """FIDInceptionE_1 (pool='avg', Mixed_7b) or FIDInceptionE_2 (pool='max', Mixed_7c)."""
  pool: str = "avg"
  precision: Precision = None

  @nn.compact
  def __call__(self, x):
    c = lambda *a, **k: BasicConv2d(*a, precision=self.precision, **k)
    b1 = c(320, 1, name="branch1x1")(x)
    b3 = c(384, 1, name="branch3x3_1")(x)
    b3 = jnp.concatenate([
        c(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
        c(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3),
    ], axis=-1)
    bd = c(448, 1, name="branch3x3dbl_1")(x)
    bd = c(384, 3, padding=1, name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate([
        c(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
        c(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd),
    ], axis=-1)
    if self.pool == "avg":
      pooled = _avg_pool_3x3_no_pad_count(x)
    elif self.pool == "max":
      pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
    else:
      raise ValueError(f"pool must be 'avg' or 'max', got {self.pool!r}")
    bp = c(192, 1, name="branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


def to_rgb(images: jax.Array) -> jax.Array:
  """[N,H,W] or [N,H,W,C] with C in {1,3} -> float32 [N,H,W,3]."""
  x = jnp.asarray(images, dtype=jnp.float32)
  if x.ndim == 3:
    x = x[..., None]
  if x.ndim != 4 or x.shape[-1] not in (1, 3):
    raise ValueError(f"images must be [N,H,W], [N,H,W,1] or [N,H,W,3], got {x.shape}")
  if x.shape[-1] == 1:
    x = jnp.tile(x, (1, 1, 1, 3))
  return x


def preprocess(images) -> jax.Array:
  """Images [N,H,W], [N,H,W,1] or [N,H,W,3] in [0,1] -> [N,299,299,3] in [-1,1].

  Grayscale is tiled to 3 channels; the resize is bilinear with half-pixel
  centres and no antialiasing, i.e. torch `F.interpolate(x, (299, 299),
  mode='bilinear', align_corners=False)` as used by pytorch-fid.
  """
  x = to_rgb(images)
  if x.shape[1:3] != (INPUT_SIZE, INPUT_SIZE):
    x = jax.image.resize(x, (x.shape[0], INPUT_SIZE, INPUT_SIZE, 3), method="bilinear", antialias=False)
  return 2.0 * x - 1.0


class InceptionV3FID(nn.Module):
  """pytorch-fid InceptionV3; __call__(images in [0,1], NHWC) -> [N, 2048] pool features.

  With `preprocess_input=False` the input must already be [N,299,299,3] in [-1,1].
  `precision` is passed to every conv (default HIGHEST: full fp32 on GPU/TPU).
  """
  preprocess_input: bool = True
  precision: Precision = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, images):
    x = preprocess(images) if self.preprocess_input else images
    c = lambda *a, **k: BasicConv2d(*a, precision=self.precision, **k)
    p = self.precision
    # Block 0: 299 -> 147 -> 73.
    x = c(32, 3, strides=2, name="Conv2d_1a_3x3")(x)
    x = c(32, 3, name="Conv2d_2a_3x3")(x)
    x = c(64, 3, padding=1, name="Conv2d_2b_3x3")(x)
    x = _max_pool_3x3_s2(x)
    # Block 1: 73 -> 71 -> 35.
    x = c(80, 1, name="Conv2d_3b_1x1")(x)
    x = c(192, 3, name="Conv2d_4a_3x3")(x)
    x = _max_pool_3x3_s2(x)
    # Block 2: 35 -> 17.
    x = FIDInceptionA(32, precision=p, name="Mixed_5b")(x)
    x = FIDInceptionA(64, precision=p, name="Mixed_5c")(x)
    x = FIDInceptionA(64, precision=p, name="Mixed_5d")(x)
    x = InceptionB(precision=p, name="Mixed_6a")(x)
    x = FIDInceptionC(128, precision=p, name="Mixed_6b")(x)
    x = FIDInceptionC(160, precision=p, name="Mixed_6c")(x)
    x = FIDInceptionC(160, precision=p, name="Mixed_6d")(x)
    x = FIDInceptionC(192, precision=p, name="Mixed_6e")(x)
    # Block 3: 17 -> 8 -> global average pool.
    x = InceptionD(precision=p, name="Mixed_7a")(x)
    x = FIDInceptionE("avg", precision=p, name="Mixed_7b")(x)
    x = FIDInceptionE("max", precision=p, name="Mixed_7c")(x)
    return jnp.mean(x, axis=(1, 2))


# ----------------------------------------------------------------------------
# Parameters.
# ----------------------------------------------------------------------------


def init_params(seed: int = 0) -> Dict[str, Any]:
  """Random variables {'params', 'batch_stats'} for tests and shape checks.

  Same scales as Flax's default initialisers (lecun-normal conv kernels, BN scale
  1, bias 0, running mean 0, var 1), drawn host-side with numpy from `seed`.
  This avoids compiling `model.init` (the whole network; tens of seconds on CPU).
  """
  rng = np.random.default_rng(seed)
  flat = {}
  for key, shape in variable_shapes().items():
    leaf = key.rsplit("/", 1)[-1]
    if leaf == "kernel":
      fan_in = int(np.prod(shape[:-1]))
      value = rng.normal(size=shape) / np.sqrt(fan_in)
    elif leaf in ("scale", "var"):
      value = np.ones(shape)
    else:  # bias, mean
      value = np.zeros(shape)
    flat[key] = jnp.asarray(value, dtype=jnp.float32)
  return unflatten_variables(flat)


def variable_shapes() -> Dict[str, Tuple[int, ...]]:
  """Flat {'params/Mixed_5b/branch1x1/conv/kernel': shape, ...} without running the model."""
  model = InceptionV3FID(preprocess_input=False)
  tree = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                        jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32))
  return {k: tuple(v.shape) for k, v in flatten_variables(tree).items()}


def flatten_variables(tree) -> Dict[str, Any]:
  """Nested dict -> flat dict with '/'-joined keys (the .npz layout)."""
  flat = {}

  def rec(prefix, node):
    if isinstance(node, dict) or hasattr(node, "items"):
      for k, v in node.items():
        rec(f"{prefix}/{k}" if prefix else str(k), v)
    else:
      flat[prefix] = node

  rec("", tree)
  return flat


def unflatten_variables(flat: Dict[str, Any]) -> Dict[str, Any]:
  """Inverse of `flatten_variables`."""
  tree: Dict[str, Any] = {}
  for key, value in flat.items():
    node = tree
    parts = key.split("/")
    for part in parts[:-1]:
      node = node.setdefault(part, {})
    node[parts[-1]] = value
  return tree


def default_weights_path() -> str:
  """$SIGMA_VAE_INCEPTION_WEIGHTS if set, else ~/.cache/sigma_vae_jax/pt_inception.npz."""
  return os.path.expanduser(os.environ.get(WEIGHTS_ENV_VAR) or DEFAULT_WEIGHTS_PATH)


def _missing_weights_message(path: str) -> str:
  return (
      f"InceptionV3 FID weights not found at {path!r}.\n"
      f"Download the pytorch-fid weights {TORCH_WEIGHTS_NAME} (from {TORCH_WEIGHTS_URL}) "
      f"on a machine with network access, convert them once with\n"
      f"  python {CONVERT_SCRIPT} --input {TORCH_WEIGHTS_NAME} --output {path}\n"
      f"(needs torch and numpy), and put the .npz at {path!r}, or point the environment "
      f"variable {WEIGHTS_ENV_VAR} at it (default location: {DEFAULT_WEIGHTS_PATH}). "
      f"Without weights use the weight-free fid_kind='random' (relative comparisons only).")


def load_params(path: Optional[str] = None, validate: bool = True) -> Dict[str, Any]:
  """Loads converted weights (.npz from scripts/convert_inception_weights.py).

  Args:
    path: the .npz file; default `default_weights_path()`.
    validate: check that every variable of `InceptionV3FID` is present with the
      right shape (and nothing else is).

  Returns:
    The variables pytree {'params': ..., 'batch_stats': ...} of jnp float32
    arrays, to pass to `InceptionV3FID().apply` or `inception_feature_fn`.

  Raises:
    FileNotFoundError: with instructions when the file does not exist.
    ValueError: when `validate` and the file does not match the model.
  """
  path = os.path.expanduser(path) if path else default_weights_path()
  if not os.path.isfile(path):
    raise FileNotFoundError(_missing_weights_message(path))
  with np.load(path) as data:
    flat = {k: np.asarray(data[k], dtype=np.float32) for k in data.files
            if k.startswith(("params/", "batch_stats/"))}
  if validate:
    expected = variable_shapes()
    missing = sorted(set(expected) - set(flat))
    unexpected = sorted(set(flat) - set(expected))
    wrong = sorted(k for k in set(expected) & set(flat) if tuple(flat[k].shape) != expected[k])
    if missing or unexpected or wrong:
      lines = [f"{path!r} does not match InceptionV3FID:"]
      lines += [f"  missing {k} {expected[k]}" for k in missing[:20]]
      lines += [f"  unexpected {k} {flat[k].shape}" for k in unexpected[:20]]
      lines += [f"  shape of {k}: file {flat[k].shape}, model {expected[k]}" for k in wrong[:20]]
      raise ValueError("\n".join(lines))
  return unflatten_variables({k: jnp.asarray(v) for k, v in flat.items()})


@functools.lru_cache(maxsize=None)
def _jitted_network(precision: Precision):
  """One jitted InceptionV3FID.apply on [N,299,299,3] per precision, shared by all feature fns."""
  return jax.jit(InceptionV3FID(preprocess_input=False, precision=precision).apply)


_jitted_preprocess = jax.jit(preprocess)


def inception_feature_fn(variables, precision: Precision = jax.lax.Precision.HIGHEST) -> Callable[[jax.Array], jax.Array]:
  """images [N,H,W(,C)] in [0,1] -> [N, 2048] pool features (pytorch-fid dims=2048).

  Preprocessing (tile, resize, x*2-1) and the network are jitted separately, so
  the network compiles once per batch size whatever the input resolution.
  `variables` is an argument of the compiled network, not a baked-in constant.
  """
  network = _jitted_network(precision)

  def features(images):
    return network(variables, _jitted_preprocess(images))

  return features
