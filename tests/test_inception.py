"""Tests for the Flax pytorch-fid InceptionV3 and the weight converter.

No real weights are available offline: the converter is exercised on a fake
state_dict whose names and shapes are written down here independently from the
torchvision / pytorch-fid module definitions (not derived from the Flax model).
"""

import importlib.util
import math
import os

import jax
import numpy as np
import pytest

from sigma_vae_jax.evaluation import inception, metrics

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_converter():
  path = os.path.join(_REPO, "scripts", "convert_inception_weights.py")
  spec = importlib.util.spec_from_file_location("convert_inception_weights", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


converter = _load_converter()


def torch_inception_convs():
  """[(module, in, out, kh, kw)] for every BasicConv2d in pytorch-fid's FIDInceptionV3."""
  spec = []

  def conv(name, cin, cout, k):
    kh, kw = (k, k) if isinstance(k, int) else k
    spec.append((name, cin, cout, kh, kw))

  conv("Conv2d_1a_3x3", 3, 32, 3)
  conv("Conv2d_2a_3x3", 32, 32, 3)
  conv("Conv2d_2b_3x3", 32, 64, 3)
  conv("Conv2d_3b_1x1", 64, 80, 1)
  conv("Conv2d_4a_3x3", 80, 192, 3)

  def block_a(m, cin, pool_features):
    conv(f"{m}.branch1x1", cin, 64, 1)
    conv(f"{m}.branch5x5_1", cin, 48, 1)
    conv(f"{m}.branch5x5_2", 48, 64, 5)
    conv(f"{m}.branch3x3dbl_1", cin, 64, 1)
    conv(f"{m}.branch3x3dbl_2", 64, 96, 3)
    conv(f"{m}.branch3x3dbl_3", 96, 96, 3)
    conv(f"{m}.branch_pool", cin, pool_features, 1)

  def block_b(m, cin):
    conv(f"{m}.branch3x3", cin, 384, 3)
    conv(f"{m}.branch3x3dbl_1", cin, 64, 1)
    conv(f"{m}.branch3x3dbl_2", 64, 96, 3)
    conv(f"{m}.branch3x3dbl_3", 96, 96, 3)

  def block_c(m, cin, c7):
    conv(f"{m}.branch1x1", cin, 192, 1)
    conv(f"{m}.branch7x7_1", cin, c7, 1)
    conv(f"{m}.branch7x7_2", c7, c7, (1, 7))
    conv(f"{m}.branch7x7_3", c7, 192, (7, 1))
    conv(f"{m}.branch7x7dbl_1", cin, c7, 1)
    conv(f"{m}.branch7x7dbl_2", c7, c7, (7, 1))
    conv(f"{m}.branch7x7dbl_3", c7, c7, (1, 7))
    conv(f"{m}.branch7x7dbl_4", c7, c7, (7, 1))
    conv(f"{m}.branch7x7dbl_5", c7, 192, (1, 7))
    conv(f"{m}.branch_pool", cin, 192, 1)

  def block_d(m, cin):
    conv(f"{m}.branch3x3_1", cin, 192, 1)
    conv(f"{m}.branch3x3_2", 192, 320, 3)
    conv(f"{m}.branch7x7x3_1", cin, 192, 1)
    conv(f"{m}.branch7x7x3_2", 192, 192, (1, 7))
    conv(f"{m}.branch7x7x3_3", 192, 192, (7, 1))
    conv(f"{m}.branch7x7x3_4", 192, 192, 3)

  def block_e(m, cin):
    conv(f"{m}.branch1x1", cin, 320, 1)
    conv(f"{m}.branch3x3_1", cin, 384, 1)
    conv(f"{m}.branch3x3_2a", 384, 384, (1, 3))
    conv(f"{m}.branch3x3_2b", 384, 384, (3, 1))
    conv(f"{m}.branch3x3dbl_1", cin, 448, 1)
    conv(f"{m}.branch3x3dbl_2", 448, 384, 3)
    conv(f"{m}.branch3x3dbl_3a", 384, 384, (1, 3))
    conv(f"{m}.branch3x3dbl_3b", 384, 384, (3, 1))
    conv(f"{m}.branch_pool", cin, 192, 1)

  block_a("Mixed_5b", 192, 32)
  block_a("Mixed_5c", 256, 64)
  block_a("Mixed_5d", 288, 64)
  block_b("Mixed_6a", 288)
  block_c("Mixed_6b", 768, 128)
  block_c("Mixed_6c", 768, 160)
  block_c("Mixed_6d", 768, 160)
  block_c("Mixed_6e", 768, 192)
  block_d("Mixed_7a", 768)
  block_e("Mixed_7b", 1280)
  block_e("Mixed_7c", 2048)
  return spec


def fake_torch_state_dict(seed=0):
  """A torch-named state_dict of random numpy arrays (He-scaled convs, sane BN stats)."""
  rng = np.random.default_rng(seed)
  sd = {}
  for name, cin, cout, kh, kw in torch_inception_convs():
    sd[f"{name}.conv.weight"] = (rng.normal(size=(cout, cin, kh, kw)) * math.sqrt(2.0 / (cin * kh * kw))).astype(np.float32)
    sd[f"{name}.bn.weight"] = rng.uniform(0.5, 1.5, cout).astype(np.float32)
    sd[f"{name}.bn.bias"] = rng.normal(0, 0.1, cout).astype(np.float32)
    sd[f"{name}.bn.running_mean"] = rng.normal(0, 0.1, cout).astype(np.float32)
    sd[f"{name}.bn.running_var"] = rng.uniform(0.5, 1.5, cout).astype(np.float32)
    sd[f"{name}.bn.num_batches_tracked"] = np.array(0, np.int64)
  sd["fc.weight"] = np.zeros((1008, 2048), np.float32)
  sd["fc.bias"] = np.zeros((1008,), np.float32)
  return sd


@pytest.fixture(scope="module")
def fake_weights(tmp_path_factory):
  sd = fake_torch_state_dict()
  flat = converter.convert_state_dict(sd)
  path = str(tmp_path_factory.mktemp("inception") / "fake_pt_inception.npz")
  np.savez(path, **flat)
  return sd, flat, path


def test_spec_matches_known_torch_layout():
  spec = torch_inception_convs()
  assert len(spec) == 94  # BasicConv2d count of Inception3 without AuxLogits.
  n_conv = sum(cout * cin * kh * kw for _, cin, cout, kh, kw in spec)
  n_bn = sum(2 * cout for _, _, cout, _, _ in spec)
  # torchvision inception_v3 (1000 classes, aux_logits=True) has 27,161,264 parameters;
  # minus fc (2048*1000+1000) and AuxLogits (3,326,696) leaves the feature trunk.
  assert n_conv + n_bn == 27_161_264 - (2048 * 1000 + 1000) - 3_326_696


def test_converter_round_trip_and_forward(fake_weights):
  sd, flat, path = fake_weights
  expected = inception.variable_shapes()
  assert set(flat) == set(expected)
  for k, shape in expected.items():
    assert flat[k].shape == shape, k
  # OIHW -> HWIO on an asymmetric kernel, and BN statistics in batch_stats.
  w = sd["Mixed_6b.branch7x7_2.conv.weight"]  # [128, 128, 1, 7]
  np.testing.assert_array_equal(flat["params/Mixed_6b/branch7x7_2/conv/kernel"], w.transpose(2, 3, 1, 0))
  assert flat["params/Mixed_6b/branch7x7_2/conv/kernel"].shape == (1, 7, 128, 128)
  np.testing.assert_array_equal(flat["batch_stats/Mixed_7c/branch_pool/bn/var"], sd["Mixed_7c.branch_pool.bn.running_var"])
  np.testing.assert_array_equal(flat["params/Conv2d_1a_3x3/bn/scale"], sd["Conv2d_1a_3x3.bn.weight"])

  variables = inception.load_params(path)
  assert set(variables) == {"params", "batch_stats"}
  np.testing.assert_array_equal(np.asarray(variables["params"]["Mixed_5b"]["branch_pool"]["bn"]["bias"]),
                                sd["Mixed_5b.branch_pool.bn.bias"])
  feature_fn = inception.inception_feature_fn(variables)
  gray = np.random.default_rng(0).uniform(size=(2, 28, 28, 1)).astype(np.float32)
  feats = np.asarray(feature_fn(gray))
  assert feats.shape == (2, inception.FEATURE_DIM)
  assert np.all(np.isfinite(feats)) and np.all(feats >= 0)  # Mean of ReLU outputs.
  assert not np.allclose(feats[0], feats[1])
  # Grayscale is tiled to RGB.
  np.testing.assert_allclose(np.asarray(feature_fn(np.tile(gray, (1, 1, 1, 3)))), feats, rtol=1e-4, atol=1e-6)
  # Also via the metrics glue.
  fn = metrics.make_feature_fn("inception", weights_path=path)
  np.testing.assert_allclose(np.asarray(fn(gray)), feats, rtol=1e-6)


def test_converter_rejects_unknown_keys_and_strips_module_prefix():
  sd = {"module.Conv2d_1a_3x3.conv.weight": np.zeros((32, 3, 3, 3), np.float32),
        "AuxLogits.fc.weight": np.zeros((1000, 768), np.float32)}
  out = converter.convert_state_dict(sd)
  assert list(out) == ["params/Conv2d_1a_3x3/conv/kernel"]
  with pytest.raises(ValueError, match="unexpected"):
    converter.convert_state_dict({"Mixed_5b.branch1x1.conv.bias": np.zeros(3)})
  with pytest.raises(ValueError, match="unexpected"):
    converter.convert_state_dict({"foo.weight": np.zeros(3)})


def test_load_params_validates_shapes(fake_weights, tmp_path):
  _, flat, _ = fake_weights
  bad = dict(flat)
  bad["params/Conv2d_1a_3x3/conv/kernel"] = np.zeros((3, 3, 3, 16), np.float32)
  del bad["batch_stats/Mixed_7c/branch_pool/bn/mean"]
  path = str(tmp_path / "bad.npz")
  np.savez(path, **bad)
  with pytest.raises(ValueError) as e:
    inception.load_params(path)
  assert "Conv2d_1a_3x3/conv/kernel" in str(e.value) and "Mixed_7c/branch_pool/bn/mean" in str(e.value)


def test_random_init_output_shape_rgb():
  variables = inception.init_params(seed=0)
  x = np.random.default_rng(1).uniform(size=(2, 32, 32, 3)).astype(np.float32)
  feats = np.asarray(inception.inception_feature_fn(variables)(x))
  assert feats.shape == (2, 2048)
  assert np.all(np.isfinite(feats))


def test_missing_weights_error(monkeypatch, tmp_path):
  missing = str(tmp_path / "nowhere" / "pt_inception.npz")
  monkeypatch.setenv(inception.WEIGHTS_ENV_VAR, missing)
  assert inception.default_weights_path() == missing
  with pytest.raises(FileNotFoundError) as e:
    inception.load_params()
  msg = str(e.value)
  assert missing in msg
  assert "scripts/convert_inception_weights.py" in msg
  assert inception.WEIGHTS_ENV_VAR in msg
  with pytest.raises(FileNotFoundError):
    metrics.make_feature_fn("inception")
  monkeypatch.delenv(inception.WEIGHTS_ENV_VAR)
  assert inception.default_weights_path() == os.path.expanduser("~/.cache/sigma_vae_jax/pt_inception.npz")


# ----------------------------------------------------------------------------
# Layer semantics against numpy references of the torch ops.
# ----------------------------------------------------------------------------


def _torch_conv_bn_relu(x, w, gamma, beta, mean, var, stride, padding, eps=1e-3):
  """numpy reference of torch BasicConv2d in eval mode; x NHWC, w OIHW."""
  ph, pw = padding
  x = np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
  o, i, kh, kw = w.shape
  n, h, wd, _ = x.shape
  oh, ow = (h - kh) // stride + 1, (wd - kw) // stride + 1
  out = np.zeros((n, oh, ow, o))
  for y in range(oh):
    for xx in range(ow):
      patch = x[:, y * stride:y * stride + kh, xx * stride:xx * stride + kw, :]  # [n, kh, kw, i]
      out[:, y, xx, :] = np.einsum("nhwi,oihw->no", patch, w)
  out = (out - mean) / np.sqrt(var + eps) * gamma + beta
  return np.maximum(out, 0)


@pytest.mark.parametrize("kernel,stride,padding", [((1, 3), 1, (0, 1)), ((3, 3), 2, (0, 0)), ((5, 2), 1, (2, 0))])
def test_basic_conv_matches_torch_semantics(kernel, stride, padding):
  rng = np.random.default_rng(2)
  kh, kw = kernel
  w = rng.normal(size=(5, 4, kh, kw)).astype(np.float32)
  bn = [rng.uniform(0.5, 1.5, 5), rng.normal(size=5), rng.normal(size=5), rng.uniform(0.5, 2, 5)]
  sd = {"blk.conv.weight": w, "blk.bn.weight": bn[0], "blk.bn.bias": bn[1],
        "blk.bn.running_mean": bn[2], "blk.bn.running_var": bn[3]}
  tree = inception.unflatten_variables(converter.convert_state_dict(sd))
  variables = {"params": tree["params"]["blk"], "batch_stats": tree["batch_stats"]["blk"]}
  x = rng.normal(size=(2, 9, 10, 4)).astype(np.float32)
  layer = inception.BasicConv2d(5, kernel, strides=stride, padding=padding,
                                precision=jax.lax.Precision.HIGHEST)
  got = np.asarray(layer.apply(variables, x))
  ref = _torch_conv_bn_relu(x.astype(np.float64), w, *bn, stride=stride, padding=padding)
  np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def _torch_bilinear(img, out_h, out_w):
  """numpy reference of F.interpolate(mode='bilinear', align_corners=False); img [H, W]."""
  def coords(n_in, n_out):
    src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    lam = src - i0
    return i0, i1, lam
  y0, y1, ly = coords(img.shape[0], out_h)
  x0, x1, lx = coords(img.shape[1], out_w)
  top = img[y0][:, x0] * (1 - lx) + img[y0][:, x1] * lx
  bot = img[y1][:, x0] * (1 - lx) + img[y1][:, x1] * lx
  return top * (1 - ly)[:, None] + bot * ly[:, None]


@pytest.mark.parametrize("size", [(28, 28), (7, 11), (400, 350)])
def test_preprocess_matches_torch_bilinear(size):
  img = np.random.default_rng(3).uniform(size=size + (1,)).astype(np.float32)
  got = np.asarray(inception.preprocess(img[None]))
  assert got.shape == (1, 299, 299, 3)
  ref = 2.0 * _torch_bilinear(img[..., 0].astype(np.float64), 299, 299) - 1.0
  for c in range(3):
    # float32 rounding of sample positions gives ~5e-5 on large inputs; a wrong
    # convention (align_corners=True, antialiasing) is off by ~0.1.
    np.testing.assert_allclose(got[0, ..., c], ref, atol=1e-4)


def test_converter_cli_writes_loadable_npz(monkeypatch, tmp_path, capsys):
  sd = fake_torch_state_dict(seed=1)
  monkeypatch.setattr(converter, "load_torch_state_dict", lambda path: sd)  # torch is not needed.
  out = tmp_path / "sub" / "pt_inception.npz"
  assert converter.main(["--input", "fake.pth", "--output", str(out)]) == 0
  assert "validated" in capsys.readouterr().out
  variables = inception.load_params(str(out))
  np.testing.assert_array_equal(np.asarray(variables["params"]["Mixed_7a"]["branch3x3_2"]["conv"]["kernel"]),
                                sd["Mixed_7a.branch3x3_2.conv.weight"].transpose(2, 3, 1, 0))


def test_pools_match_torch_semantics():
  x = np.random.default_rng(4).normal(size=(1, 5, 6, 2)).astype(np.float32)
  # avg_pool2d(3, stride=1, padding=1, count_include_pad=False): mean over in-bounds pixels.
  ref = np.zeros_like(x)
  for i in range(5):
    for j in range(6):
      ref[0, i, j] = x[0, max(i - 1, 0):i + 2, max(j - 1, 0):j + 2].mean(axis=(0, 1))
  np.testing.assert_allclose(np.asarray(inception._avg_pool_3x3_no_pad_count(x)), ref, rtol=1e-5, atol=1e-6)
  # max_pool2d(3, stride=2), no padding.
  ref = np.stack([np.stack([x[0, 2 * i:2 * i + 3, 2 * j:2 * j + 3].max(axis=(0, 1)) for j in range(2)])
                  for i in range(2)])[None]
  np.testing.assert_array_equal(np.asarray(inception._max_pool_3x3_s2(x)), ref)
