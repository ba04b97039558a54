"""Wiring of SVG-LP (models/svg_lp.py) against a float64 numpy program written from the
reference (edenton/svg: `train_svg_lp.py`'s train(), `generate_svg_lp.py`,
`models/vgg_64.py`, `models/lstm.py`, PyTorch's LSTMCell and BatchNorm2d in train mode).

Unlike the reference loops of test_svg_lp.py (which call the model's own submodules),
every layer here is numpy: the frame encoder and decoder (3x3 convs, batch statistics
per frame, LeakyReLU(0.2), max pool, tanh code, nearest upsampling and the skip
concatenation), the LSTM gates (i, f, g, o), the Gaussian heads and the predictor's
tanh output. Parameters are random (biases and norm affine maps too), so a bug that
drops or swaps one of them changes the numbers.

Per step i (frame i predicted, 0-based) the posterior reads frame i's code, the prior
and the predictor frame i-1's code, and the skips come from frame i-1 while i < n_past,
then stay those of frame n_past - 2 (the reference updates them only while i < n_past).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sigma_vae_jax.models import svg_lp

B, T, HW, C = 3, 4, 8, 3
N_PAST, G, Z, R = 2, 6, 3, 5
EPS = 1e-5  # BatchNorm2d's


def _key(seed):
  return jax.random.key(seed, impl="rbg")


# ---- numpy layers ---------------------------------------------------------------


def _conv3(x, kernel, bias):
  """3x3 cross-correlation, zero padding 1, NHWC / HWIO."""
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  out = np.zeros(x.shape[:3] + (kernel.shape[-1],))
  for i in range(3):
    for j in range(3):
      out += np.einsum("bhwc,cd->bhwd", xp[:, i:i + x.shape[1], j:j + x.shape[2]],
                       kernel[i, j])
  return out + bias


def _batch_norm(x, p):
  """Train-mode BatchNorm: statistics over every axis but the last (channels)."""
  axes = tuple(range(x.ndim - 1))
  mean = x.mean(axes)
  var = x.var(axes)  # biased, as PyTorch normalises
  return (x - mean) / np.sqrt(var + EPS) * p["scale"] + p["bias"]


def _leaky(x):
  return np.where(x > 0, x, 0.2 * x)


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _vgg_layer(p, x):
  return _leaky(_batch_norm(_conv3(x, p["conv"]["kernel"], p["conv"]["bias"]), p["norm"]))


def _encode(p, frame):
  """One frame of the batch [B, H, W, C] -> (code [B, G], skip [B, H, W, c])."""
  h = _vgg_layer(p["stage0_1"], _vgg_layer(p["stage0_0"], frame))
  skip = h
  b, hh, ww, c = h.shape
  h = h.reshape(b, hh // 2, 2, ww // 2, 2, c).max(axis=(2, 4))  # 2x2 max pool
  h = h.reshape(b, -1) @ p["code"]["kernel"] + p["code"]["bias"]
  return np.tanh(_batch_norm(h, p["code_norm"])), skip


def _decode(p, code, skip):
  """code [B, G], skip [B, H, W, c] -> raw outputs [B, H, W, C]."""
  c = p["code_bias"].shape[0]
  h = (code @ p["code"]["kernel"]).reshape(code.shape[0], 4, 4, c) + p["code_bias"]
  h = _leaky(_batch_norm(h, p["code_norm"]))
  h = np.repeat(np.repeat(h, 2, axis=1), 2, axis=2)  # nearest 2x
  h = _vgg_layer(p["stage0_0"], np.concatenate([h, skip], axis=-1))
  return _conv3(h, p["output"]["kernel"], p["output"]["bias"])


def _lstm_stack(p, carry, x):
  """Dense embed, then PyTorch LSTMCells, each fed the previous cell's h."""
  h = x @ p["embed"]["kernel"] + p["embed"]["bias"]
  new = []
  for layer, (c, h_prev) in enumerate(carry):
    q = p[f"lstm{layer}"]
    gates = h @ q["ih"]["kernel"] + q["ih"]["bias"] + h_prev @ q["hh"]["kernel"] + q["hh"]["bias"]
    i, f, g, o = np.split(gates, 4, axis=-1)
    c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
    h = _sigmoid(o) * np.tanh(c)
    new.append((c, h))
  return new, h


def _gaussian(p, carry, x):
  carry, h = _lstm_stack(p["rnn"], carry, x)
  return carry, (h @ p["mean"]["kernel"] + p["mean"]["bias"],
                 h @ p["log_var"]["kernel"] + p["log_var"]["bias"])


def _predict(p, carry, x):
  carry, h = _lstm_stack(p["rnn"], carry, x)
  return carry, np.tanh(h @ p["output"]["kernel"] + p["output"]["bias"])


def _zeros(layers):
  return [(np.zeros((B, R)), np.zeros((B, R))) for _ in range(layers)]


def _numpy_teacher_forced(p, x, eps):
  """The reference's train(): returns outputs [B, T-1, ...] and the per-step heads."""
  post_c, prior_c, pred_c = _zeros(1), _zeros(1), _zeros(2)
  codes, skips = zip(*[_encode(p["encoder"], x[:, t]) for t in range(T)])
  out, heads = [], []
  for i in range(1, T):
    if i < N_PAST:
      skip = skips[i - 1]
    post_c, (mq, lq) = _gaussian(p["posterior"], post_c, codes[i])
    prior_c, (mp, lp) = _gaussian(p["prior"], prior_c, codes[i - 1])
    z = mq + np.exp(0.5 * lq) * eps[:, i - 1]
    pred_c, g = _predict(p["predictor"], pred_c, np.concatenate([codes[i - 1], z], -1))
    out.append(_decode(p["decoder"], g, skip))
    heads.append((mq, lq, mp, lp, z))
  return np.stack(out, 1), [np.stack(h, 1) for h in zip(*heads)]


def _numpy_generate(p, context, eps_ctx, eps_fut):
  """generate_svg_lp.py: context steps with the posterior, then prior draws with the
  model's frames (sigmoid of the raw outputs) fed back; skips from the context."""
  post_c, prior_c, pred_c = _zeros(1), _zeros(1), _zeros(2)
  x_in, outs = context[:, 0], []
  for i in range(1, N_PAST + eps_fut.shape[1]):
    h, new_skip = _encode(p["encoder"], x_in)
    if i < N_PAST:
      skip = new_skip
      h_target, _ = _encode(p["encoder"], context[:, i])
      post_c, (mq, lq) = _gaussian(p["posterior"], post_c, h_target)
      z = mq + np.exp(0.5 * lq) * eps_ctx[:, i - 1]
      prior_c, _ = _gaussian(p["prior"], prior_c, h)
      pred_c, _ = _predict(p["predictor"], pred_c, np.concatenate([h, z], -1))
      x_in = context[:, i]
    else:
      prior_c, (mp, lp) = _gaussian(p["prior"], prior_c, h)
      z = mp + np.exp(0.5 * lp) * eps_fut[:, i - N_PAST]
      pred_c, g = _predict(p["predictor"], pred_c, np.concatenate([h, z], -1))
      out = _decode(p["decoder"], g, skip)
      outs.append(out)
      x_in = _sigmoid(out)
  return np.stack(outs, 1)


# ---- the model ------------------------------------------------------------------


@pytest.fixture(scope="module")
def setup():
  cfg = svg_lp.default_config()
  cfg.update(num_stages=1, width=1 / 16, g_dim=G, z_dim=Z, rnn_size=R, n_past=N_PAST,
             n_future=T - N_PAST, n_eval=T + 1, predictor_rnn_layers=2)
  model = svg_lp.build(cfg, (T, HW, HW, C), C)
  rng = np.random.default_rng(0)
  x = rng.uniform(0.0, 1.0, (B, T, HW, HW, C)).astype(np.float32)
  shapes = jax.eval_shape(model.init, _key(0), x, _key(1))["params"]

  def draw(path, leaf):
    name = getattr(path[-1], "key", "")
    if name == "scale":
      return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
    return rng.normal(0.0, 0.4, leaf.shape).astype(np.float32)

  params = jax.tree_util.tree_map_with_path(draw, shapes)
  return model, params, x


def _p64(params):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), params)


def test_teacher_forced_pass_is_the_references_train_step(setup):
  model, params, x = setup
  eps = np.random.default_rng(1).normal(size=(B, T - 1, Z)).astype(np.float32)
  got = jax.jit(lambda p, x, e: model.apply({"params": p}, x, e,
                                            method=svg_lp.SVGLP.teacher_forced))(params, x, eps)
  out, (mq, lq, mp, lp, z) = _numpy_teacher_forced(_p64(params), np.float64(x),
                                                   np.float64(eps))
  tol = dict(rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(got["mean_q"], mq, **tol)
  np.testing.assert_allclose(got["log_var_q"], lq, **tol)
  np.testing.assert_allclose(got["mean_p"], mp, **tol)
  np.testing.assert_allclose(got["log_var_p"], lp, **tol)
  np.testing.assert_allclose(got["z"], z, **tol)
  np.testing.assert_allclose(got["decoder_outputs"], out, **tol)


def test_call_scores_the_next_frames_with_the_drawn_z(setup):
  """__call__: target = frames 1..T-1; kl, log_q, log_p of eps = normal(rng) (the
  model contract's draw) in numpy."""
  model, params, x = setup
  out = model.apply({"params": params}, x, _key(5))
  eps = np.asarray(jax.random.normal(_key(5), (B, T - 1, Z)), np.float64)
  _, (mq, lq, mp, lp, z) = _numpy_teacher_forced(_p64(params), np.float64(x), eps)
  np.testing.assert_array_equal(out.target, x[:, 1:])
  logpdf = lambda v, m, lv: -0.5 * (np.log(2 * np.pi) + lv + (v - m) ** 2 / np.exp(lv))
  group = out.latents["z"]
  tol = dict(rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(group.log_q, logpdf(z, mq, lq), **tol)
  np.testing.assert_allclose(group.log_p, logpdf(z, mp, lp), **tol)
  np.testing.assert_allclose(
      group.kl, 0.5 * (lp - lq + (np.exp(lq) + (mq - mp) ** 2) / np.exp(lp) - 1), **tol)


def test_generation_is_the_references_generate(setup):
  model, params, x = setup
  rng = np.random.default_rng(2)
  eps_ctx = rng.normal(size=(B, N_PAST - 1, Z)).astype(np.float32)
  eps_fut = rng.normal(size=(B, 3, Z)).astype(np.float32)
  context = x[:, :N_PAST]
  got = jax.jit(lambda p, c, e1, e2: model.apply({"params": p}, c, e1, e2,
                                                 method=svg_lp.SVGLP.generate))(
                                                     params, context, eps_ctx, eps_fut)
  want = _numpy_generate(_p64(params), np.float64(context), np.float64(eps_ctx),
                         np.float64(eps_fut))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
