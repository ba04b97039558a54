"""SVG-LP (models/svg_lp.py) on tiny clips: 8x8 frames, 2 context + 3 predicted
frames, one VGG stage of 4 channels, small LSTMs (the full-size model's structure is
checked by shape only).

PRNG keys are "rbg": XLA:CPU compiles threefry's hash slowly (the tiny model's
`init` took ~30 s to compile with threefry keys, ~3 s with rbg ones).
"""

import functools
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sigma_vae_jax import default_config
from sigma_vae_jax import likelihoods
from sigma_vae_jax import losses
from sigma_vae_jax import models
from sigma_vae_jax import objectives
from sigma_vae_jax.models import svg_lp

B, T, HW, C = 2, 5, 8, 3
N_PAST = 2
STEPS = 200


def _key(seed):
  return jax.random.key(seed, impl="rbg")


def _config(**overrides):
  cfg = svg_lp.default_config()
  cfg.update(num_stages=1, width=1 / 16, g_dim=8, z_dim=4, rnn_size=16, n_past=N_PAST,
             n_future=T - N_PAST, n_eval=T + 1)
  cfg.update(overrides)
  return cfg


def _build(num_outputs=C, **overrides):
  cfg = _config(**overrides)
  models.validate(cfg, (T, HW, HW, C))
  return models.build_model(cfg, (T, HW, HW, C), num_outputs)


def _decoder_config(name, **fields):
  cfg = default_config.get_config().decoder
  cfg.name = name
  cfg.update(fields)
  return cfg


def _moving_squares(seed, n):
  """[n, T, 8, 8, 3] clips of a 3x3 square moving one pixel per frame (reflected at
  the borders)."""
  rng = np.random.default_rng(seed)
  x = np.zeros((n, T, HW, HW, C), np.float32)
  span = HW - 3
  pos = rng.integers(0, span + 1, (n, 2))
  vel = rng.choice([-1, 1], (n, 2))
  color = rng.uniform(0.5, 1.0, (n, C))
  for b in range(n):
    for t in range(T):
      py, px = np.abs((pos[b] + t * vel[b] + span) % (2 * span) - span)
      x[b, t, py:py + 3, px:px + 3] = color[b]
  return x


def _init_params(model, x, seed=0):
  """Parameters of the shapes `model.init` gives (traced, not compiled: compiling the
  initialisers costs more than all the tests), drawn as the model's initialisers do:
  kernels N(0, 0.02), LSTM weights and biases U(-1/sqrt(H), 1/sqrt(H)), other biases 0,
  norm scales 1."""
  shapes = jax.eval_shape(model.init, _key(0), x, _key(1))["params"]
  rng = np.random.default_rng(seed)
  bound = 1.0 / np.sqrt(model.rnn_size)

  def draw(path, leaf):
    names = [getattr(k, "key", "") for k in path]
    if any(n.startswith("lstm") for n in names):
      value = rng.uniform(-bound, bound, leaf.shape)
    elif names[-1] == "kernel":
      value = 0.02 * rng.normal(size=leaf.shape)
    elif names[-1] == "scale":
      value = np.ones(leaf.shape)
    else:
      value = np.zeros(leaf.shape)
    return jnp.asarray(value, leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.fixture(scope="module")
def tiny():
  model = _build()
  x = jnp.asarray(_moving_squares(0, B))
  return model, _init_params(model, x), x


# --------------------------------------------------------------------------
# Reference loops over frames (the reference's train() and generate_svg_lp.py),
# written with the model's own submodules: a different program from the scans.
# --------------------------------------------------------------------------


def _reference_teacher_forced(mdl, x, eps, n_past, last_frame_skip):
  b, t = x.shape[:2]
  post_c = svg_lp.zero_carry(b, mdl.rnn_size, mdl.posterior_rnn_layers)
  prior_c = svg_lp.zero_carry(b, mdl.rnn_size, mdl.prior_rnn_layers)
  pred_c = svg_lp.zero_carry(b, mdl.rnn_size, mdl.predictor_rnn_layers)
  outs, kls = [], []
  for i in range(1, t):
    h, skips = mdl.encoder(x[:, i - 1])
    h_target, _ = mdl.encoder(x[:, i])
    if last_frame_skip or i < n_past:
      skip = skips
    post_c, (mu, logvar) = mdl.posterior(post_c, h_target)
    prior_c, (mu_p, logvar_p) = mdl.prior(prior_c, h)
    z = mu + jnp.exp(0.5 * logvar) * eps[:, i - 1]
    pred_c, h_pred = mdl.predictor(pred_c, jnp.concatenate([h, z], -1))
    outs.append(mdl.decoder(h_pred, skip))
    # The reference's kl_criterion, elementwise.
    s1, s2 = jnp.exp(0.5 * logvar), jnp.exp(0.5 * logvar_p)
    kls.append(jnp.log(s2 / s1) + (jnp.exp(logvar) + (mu - mu_p) ** 2) / (2 * jnp.exp(logvar_p))
               - 0.5)
  return jnp.stack(outs, 1), jnp.stack(kls, 1)


def _reference_generate(mdl, context, eps_ctx, eps_fut, n_past, last_frame_skip, to_frame):
  b = context.shape[0]
  post_c = svg_lp.zero_carry(b, mdl.rnn_size, mdl.posterior_rnn_layers)
  prior_c = svg_lp.zero_carry(b, mdl.rnn_size, mdl.prior_rnn_layers)
  pred_c = svg_lp.zero_carry(b, mdl.rnn_size, mdl.predictor_rnn_layers)
  x_in = context[:, 0]
  outs = []
  for i in range(1, n_past + eps_fut.shape[1]):
    h, skips = mdl.encoder(x_in)
    if last_frame_skip or i < n_past:
      skip = skips
    if i < n_past:
      h_target, _ = mdl.encoder(context[:, i])
      post_c, (mu, logvar) = mdl.posterior(post_c, h_target)
      z = mu + jnp.exp(0.5 * logvar) * eps_ctx[:, i - 1]
      prior_c, _ = mdl.prior(prior_c, h)
      pred_c, _ = mdl.predictor(pred_c, jnp.concatenate([h, z], -1))
      x_in = context[:, i]
    else:
      prior_c, (mu_p, logvar_p) = mdl.prior(prior_c, h)
      z = mu_p + jnp.exp(0.5 * logvar_p) * eps_fut[:, i - n_past]
      pred_c, h_pred = mdl.predictor(pred_c, jnp.concatenate([h, z], -1))
      out = mdl.decoder(h_pred, skip)
      outs.append(out)
      x_in = to_frame(out)
  return jnp.stack(outs, 1)


# --------------------------------------------------------------------------


def test_registry_default_config_and_validate():
  assert models.MODELS["svg_lp"] == "sigma_vae_jax.models.svg_lp"
  cfg = svg_lp.default_config()
  assert (cfg.name, cfg.g_dim, cfg.z_dim, cfg.rnn_size) == ("svg_lp", 128, 64, 256)
  assert (cfg.predictor_rnn_layers, cfg.posterior_rnn_layers, cfg.prior_rnn_layers) == (2, 1, 1)
  assert (cfg.n_past, cfg.n_future, cfg.n_eval, cfg.last_frame_skip) == (2, 10, 30, False)
  assert svg_lp.stage_sizes(cfg.num_stages, cfg.width) == svg_lp.VGG64_STAGES
  models.validate(cfg, (12, 64, 64, 3))
  bad = [((12, 32, 32, 3), {}, "dataset.image_size"),
         ((12, 64, 64), {}, "dataset"),
         ((2, 64, 64, 3), {}, "dataset.clip_length"),
         ((12, 64, 64, 3), {"num_stages": 5}, "model.num_stages"),
         ((12, 64, 64, 3), {"n_eval": 2}, "model.n_eval"),
         ((12, 64, 64, 3), {"z_dim": 0}, "model.z_dim"),
         ((12, 64, 64, 3), {"norm": "instance"}, "model.norm"),
         ((12, 64, 64, 3), {"dtype": "float16"}, "model.dtype"),
         ((12, 64, 64, 3), {"width": 0.0}, "model.width")]
  for shape, overrides, field in bad:
    c = svg_lp.default_config()
    c.update(overrides)
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
      models.validate(c, shape)
  # The reference's skip rule: frame i-1 while i < n_past, then frame n_past-2.
  assert [svg_lp.skip_frame(i, 2, False) for i in range(1, 6)] == [0, 0, 0, 0, 0]
  assert [svg_lp.skip_frame(i, 4, False) for i in range(1, 7)] == [0, 1, 2, 2, 2, 2]
  assert [svg_lp.skip_frame(i, 2, True) for i in range(1, 5)] == [0, 1, 2, 3]


def test_full_size_structure():
  """The reference's vgg_64 / lstm layer shapes, by tracing only (no compilation)."""
  cfg = svg_lp.default_config()
  model = models.build_model(cfg, (12, 64, 64, 3), 3)
  x = jax.ShapeDtypeStruct((2, 12, 64, 64, 3), jnp.float32)
  p = jax.eval_shape(model.init, _key(0), x, _key(1))["params"]
  shape = lambda *path: functools.reduce(lambda d, k: d[k], path, p).shape
  # The reference's parameter count (vgg_64 encoder 8,689,600 + decoder 11,822,659, lstm
  # 1,134,976, two gaussian_lstm 592,256 each; BatchNorm's weight and bias = our norm's
  # scale and bias; the 4x4 (transposed) convs as dense layers with the same counts).
  assert sum(a.size for a in jax.tree.leaves(p)) == 22_831_747
  enc_convs = [(k, j) for k, (_, n) in enumerate(svg_lp.VGG64_STAGES) for j in range(n)]
  assert [shape("encoder", f"stage{k}_{j}", "conv", "kernel")[-1] for k, j in enc_convs] == [
      64, 64, 128, 128, 256, 256, 256, 512, 512, 512]
  assert shape("encoder", "code", "kernel") == (4 * 4 * 512, 128)  # the 4x4 conv
  assert shape("decoder", "code", "kernel") == (128, 4 * 4 * 512)  # the 4x4 transposed conv
  # Decoder stages: input concat(upsampled, skip), output channels as upc2..upc5.
  dec = {"stage3_0": (1024, 512), "stage3_1": (512, 512), "stage3_2": (512, 256),
         "stage2_0": (512, 256), "stage2_1": (256, 256), "stage2_2": (256, 128),
         "stage1_0": (256, 128), "stage1_1": (128, 64), "stage0_0": (128, 64)}
  for name, (cin, cout) in dec.items():
    assert shape("decoder", name, "conv", "kernel") == (3, 3, cin, cout), name
  assert shape("decoder", "output", "kernel") == (3, 3, 64, 3)
  assert shape("predictor", "rnn", "embed", "kernel") == (128 + 64, 256)
  assert set(p["predictor"]["rnn"]) == {"embed", "lstm0", "lstm1"}
  assert shape("predictor", "output", "kernel") == (256, 128)
  for name in ("posterior", "prior"):
    assert set(p[name]["rnn"]) == {"embed", "lstm0"}
    assert shape(name, "rnn", "embed", "kernel") == (128, 256)
    assert shape(name, "mean", "kernel") == shape(name, "log_var", "kernel") == (256, 64)


def _load_config(name):
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                      f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"_config_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def test_bair_svg_configs():
  config = _load_config("bair_svg")
  assert config.model.name == "svg_lp" and config.dataset.name == "bair"
  assert config.decoder.name == "optimal_sigma"
  assert (config.batch_size, config.learning_rate) == (100, 2e-3)
  assert (config.model.n_past, config.model.n_future, config.model.n_eval) == (2, 10, 30)
  assert config.dataset.clip_length == 12
  config.model.n_future = 5  # the clip length follows
  assert config.dataset.clip_length == 7
  models.validate(config.model, (config.dataset.clip_length, 64, 64, 3))
  original = _load_config("bair_svg_original")
  assert original.decoder.name == "beta"
  # KL weight 1e-4 on a squared error averaged over 64*64*3 values = beta 1e-4 * D / 2.
  np.testing.assert_allclose(original.decoder.beta, 1e-4 * 64 * 64 * 3 / 2)
  np.testing.assert_allclose(original.decoder.beta, 0.6144)
  assert original.model.to_dict() == _load_config("bair_svg").model.to_dict()


def test_gaussian_likelihoods_shapes_finite_loss_and_kl(tiny):
  model, params, x = tiny
  target_shape = (T - 1, HW, HW, C)
  liks = {
      "optimal_sigma": likelihoods.get_likelihood(_decoder_config("optimal_sigma")),
      "per_frame": likelihoods.get_likelihood(
          _decoder_config("optimal_sigma", sigma_axes=(0, 2, 3, 4))),
      "per_image": likelihoods.get_likelihood(_decoder_config("optimal_sigma_per_image")),
      "beta": likelihoods.get_likelihood(_decoder_config("beta", beta=0.6144)),
  }
  states = {k: lik.init_state(target_shape) for k, lik in liks.items()}

  @jax.jit
  def run(params, x, rng, states):
    out = model.apply({"params": params}, x, rng, train=True)
    terms = {}
    for k, lik in liks.items():
      train = objectives.negative_elbo(out, lik, {}, states[k], train=True)
      new_state = lik.update_state(states[k], train.likelihood_output)
      evals = objectives.negative_elbo(out, lik, {}, new_state, train=False)
      terms[k] = (train, evals)
    bf16 = model.clone(dtype=jnp.bfloat16).apply({"params": params}, x, rng)
    return out, terms, bf16

  out, terms, bf16 = run(params, x, _key(2), states)
  assert bf16.decoder_outputs.dtype == bf16.latents["z"].kl.dtype == jnp.float32
  assert np.all(np.isfinite(np.asarray(bf16.decoder_outputs)))
  np.testing.assert_allclose(bf16.decoder_outputs, out.decoder_outputs, atol=0.1)
  assert out.decoder_outputs.shape == (B, T - 1, HW, HW, C)
  assert out.decoder_outputs.dtype == jnp.float32
  np.testing.assert_array_equal(out.target, x[:, 1:])  # all T-1 predicted frames
  z = out.latents["z"]
  assert list(out.latents) == ["z"]
  assert z.kl.shape == z.log_q.shape == z.log_p.shape == (B, T - 1, 4)
  assert np.all(np.asarray(z.kl) >= 0)
  for k, (train, evals) in terms.items():
    for t in (train, evals):
      assert t.loss.shape == (B,) and np.all(np.isfinite(np.asarray(t.loss))), k
    # KL per step (summed over z dims) sums to the total, for every group and example.
    np.testing.assert_allclose(train.kl, z.kl.sum(-1).sum(-1), rtol=1e-6)
    np.testing.assert_allclose(train.kl_per_group["z"], train.kl, rtol=1e-6)
  # One sigma per predicted frame: log sigma [1, T-1, 1, 1, 1].
  assert terms["per_frame"][0].likelihood_output.log_sigma.shape == (1, T - 1, 1, 1, 1)
  # beta: the training loss weights the KL by beta, evaluation reports the true bound.
  train, evals = terms["beta"]
  np.testing.assert_allclose(train.loss, train.rec + 0.6144 * train.kl, rtol=1e-5)
  np.testing.assert_allclose(evals.loss, evals.nelbo, rtol=1e-6)


def test_scan_equals_explicit_loop_and_kl_closed_form(tiny):
  model, params, x = tiny
  eps = jax.random.normal(_key(3), (B, T - 1, 4))
  lfs_model = model.clone(last_frame_skip=True)

  @jax.jit
  def run(params, x, eps):
    v = {"params": params}
    scan = model.apply(v, x, eps, method=svg_lp.SVGLP.teacher_forced)
    loop = model.apply(v, x, eps, method=functools.partial(
        _reference_teacher_forced, n_past=N_PAST, last_frame_skip=False))
    scan_lfs = lfs_model.apply(v, x, eps, method=svg_lp.SVGLP.teacher_forced)
    loop_lfs = lfs_model.apply(v, x, eps, method=functools.partial(
        _reference_teacher_forced, n_past=N_PAST, last_frame_skip=True))
    call = model.apply(v, x, _key(4))
    call_eps = jax.random.normal(_key(4), (B, T - 1, 4))
    call_ref = model.apply(v, x, call_eps, method=svg_lp.SVGLP.teacher_forced)
    rec = model.apply(v, x, method=svg_lp.SVGLP.reconstruct)
    rec_ref = model.apply(v, x, jnp.zeros_like(eps), method=svg_lp.SVGLP.teacher_forced)
    return scan, loop, scan_lfs, loop_lfs, call, call_ref, rec, rec_ref

  scan, loop, scan_lfs, loop_lfs, call, call_ref, rec, rec_ref = run(params, x, eps)
  np.testing.assert_allclose(scan["decoder_outputs"], loop[0], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(scan_lfs["decoder_outputs"], loop_lfs[0], rtol=1e-4, atol=1e-5)
  # last_frame_skip changes the skips from frame 2 on, so the outputs differ there only.
  np.testing.assert_allclose(scan["decoder_outputs"][:, 0], scan_lfs["decoder_outputs"][:, 0])
  assert not np.allclose(scan["decoder_outputs"][:, 1:], scan_lfs["decoder_outputs"][:, 1:])
  # The model's closed-form KL (losses.gaussian_kl) is the reference's kl_criterion.
  kl = losses.gaussian_kl(scan["mean_q"], scan["log_var_q"], scan["mean_p"], scan["log_var_p"])
  np.testing.assert_allclose(kl, loop[1], rtol=1e-4, atol=1e-6)
  # __call__ = teacher_forced with eps = normal(rng, [B, T-1, z_dim]); reconstruct = means.
  np.testing.assert_allclose(call.decoder_outputs, call_ref["decoder_outputs"], rtol=1e-6)
  np.testing.assert_allclose(
      call.latents["z"].kl, losses.gaussian_kl(call_ref["mean_q"], call_ref["log_var_q"],
                                               call_ref["mean_p"], call_ref["log_var_p"]),
      rtol=1e-6)
  np.testing.assert_allclose(rec, rec_ref["decoder_outputs"], rtol=1e-6)
  assert rec.shape == (B, T - 1, HW, HW, C)


def test_generation_scan_equals_explicit_loop_and_sample_api(tiny):
  model, params, x = tiny
  lfs_model = model.clone(last_frame_skip=True)
  context = x[:, :N_PAST]
  eps_ctx = jax.random.normal(_key(5), (B, N_PAST - 1, 4))
  eps_fut = jax.random.normal(_key(6), (B, 4, 4))
  to_frame = lambda out: jax.nn.sigmoid(out[..., :C])

  @jax.jit
  def run(params, context, eps_ctx, eps_fut):
    v = {"params": params}
    results = []
    for m, lfs in ((model, False), (lfs_model, True)):
      results.append(m.apply(v, context, eps_ctx, eps_fut, method=svg_lp.SVGLP.generate))
      results.append(m.apply(v, context, eps_ctx, eps_fut, method=functools.partial(
          _reference_generate, n_past=N_PAST, last_frame_skip=lfs, to_frame=to_frame)))
    return results

  gen, loop, gen_lfs, loop_lfs = run(params, context, eps_ctx, eps_fut)
  assert gen.shape == (B, 4, HW, HW, C)
  np.testing.assert_allclose(gen, loop, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(gen_lfs, loop_lfs, rtol=1e-4, atol=1e-5)

  @jax.jit
  def sample(params, rng, temperature):
    return model.apply({"params": params}, rng, B, context, temperature,
                       method=svg_lp.SVGLP.sample)

  s1 = sample(params, _key(7), 1.0)
  assert s1.shape == (B, model.n_eval - N_PAST, HW, HW, C)  # n_eval - n_past frames
  assert not np.allclose(s1, sample(params, _key(8), 1.0))
  # Temperature 0: no latent noise, so the rng does not matter.
  np.testing.assert_allclose(sample(params, _key(7), 0.0), sample(params, _key(8), 0.0),
                             rtol=1e-6)
  with pytest.raises(ValueError, match="context"):
    model.apply({"params": params}, _key(0), B, None, method=svg_lp.SVGLP.sample)
  with pytest.raises(ValueError, match="num"):
    model.apply({"params": params}, _key(0), B + 1, context, method=svg_lp.SVGLP.sample)


def _torch_max_pool2(x, g):
  """PyTorch's MaxPool2d(2, 2) rule, written as loops: the value of each 2x2 window
  and its gradient, all of `g` to the window's first maximum in row-major order
  (`if val > maxval or isnan(val)`). x: [N, H, W, C]; g: [N, H/2, W/2, C]."""
  n, h, w, c = x.shape
  out, grad = np.zeros(g.shape, x.dtype), np.zeros_like(x)
  for b, i, j, k in np.ndindex(n, h // 2, w // 2, c):
    best, where = -np.inf, None
    for di, dj in ((0, 0), (0, 1), (1, 0), (1, 1)):
      v = x[b, 2 * i + di, 2 * j + dj, k]
      if v > best or np.isnan(v):
        best, where = v, (b, 2 * i + di, 2 * j + dj, k)
    out[b, i, j, k] = best
    grad[where] += g[b, i, j, k]
  return out, grad


def test_max_pool_gives_each_windows_gradient_to_its_first_maximum_as_pytorch():
  """Values in {0, 1, 2} tie often (as the flat backgrounds of frames do): the pool's
  value is the max and its gradient goes to the first maximum, as the reference's
  nn.MaxPool2d, not split among the tied ones."""
  from sigma_vae_jax.models import svg_lp_vgg64  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  x = rng.integers(0, 3, (2, 6, 8, 3)).astype(np.float32)
  g = rng.normal(size=(2, 3, 4, 3)).astype(np.float32)
  expected_out, expected_grad = _torch_max_pool2(x, g)
  out, vjp = jax.vjp(svg_lp_vgg64._max_pool2, jnp.asarray(x))
  np.testing.assert_array_equal(np.asarray(out), expected_out)
  np.testing.assert_array_equal(np.asarray(vjp(jnp.asarray(g))[0]), expected_grad)
  # Leading axes (time) pool alike.
  out5 = svg_lp_vgg64._max_pool2(jnp.asarray(x).reshape(1, 2, 6, 8, 3))
  np.testing.assert_array_equal(np.asarray(out5)[0], expected_out)


def test_categorical_group_norm_and_output_to_frame():
  lik = likelihoods.get_likelihood(_decoder_config("categorical"))
  model = _build(num_outputs=lik.num_outputs(C), norm="group")
  x = jnp.asarray(_moving_squares(1, 2))
  params = _init_params(model, x)
  to_frame = lambda out: lik.mean(out, {}, {})

  @jax.jit
  def run(params, x):
    v = {"params": params}
    out = model.apply(v, x, _key(2), train=True)
    terms = objectives.negative_elbo(out, lik, {}, {}, train=True)
    # Clips longer than n_past are fine as context: the first n_past frames are used.
    samples = model.apply(v, _key(3), 2, x, output_to_frame=to_frame,
                          num_frames=2, method=svg_lp.SVGLP.sample)
    rec = model.apply(v, x, method=svg_lp.SVGLP.reconstruct)
    rec_alone = model.apply(v, x[:1], method=svg_lp.SVGLP.reconstruct)
    return out, terms, samples, rec, rec_alone

  out, terms, samples, rec, rec_alone = run(params, x)
  assert out.decoder_outputs.shape == (2, T - 1, HW, HW, 256 * C)
  assert np.all(np.isfinite(np.asarray(terms.loss)))
  assert samples.shape == (2, 2, HW, HW, 256 * C)
  # Group norm is per example: a clip's outputs do not depend on the rest of the batch.
  np.testing.assert_allclose(rec[:1], rec_alone, rtol=1e-4, atol=1e-5)
  # 256 * C outputs are not a sigmoid mean: sample() needs output_to_frame.
  with pytest.raises(ValueError, match="output_to_frame"):
    model.apply({"params": params}, _key(3), 2, x[:, :N_PAST], method=svg_lp.SVGLP.sample)


def test_training_loss_falls_remat_and_samples_condition_on_context(tiny):
  """A tiny jitted Adam loop (the reference's lr 2e-3) on moving squares, with remat on:
  its gradients equal the plain model's, the loss falls, and the first generated frame
  resembles the clip's last context frame more than another clip's."""
  model, params, _ = tiny
  remat_model = model.clone(remat=True)
  data = jnp.asarray(_moving_squares(10, 64))
  lik = likelihoods.get_likelihood(_decoder_config("optimal_sigma"))
  tx = optax.adam(2e-3)
  steps, batch = STEPS, 8

  def loss_fn(m, params, x, rng):
    out = m.apply({"params": params}, x, rng, train=True)
    return objectives.negative_elbo(out, lik, {}, lik.init_state(), train=True).loss.mean()

  def batch_and_rng(data, rng):
    idx_rng, rng = jax.random.split(rng)
    return data[jax.random.choice(idx_rng, data.shape[0], (batch,), replace=False)], rng

  @jax.jit
  def train(init_params, data, rng):  # (arguments, not closed-over constants)
    rngs = jax.random.split(rng, steps)

    def step(carry, rng):
      params, opt_state = carry
      x, rng = batch_and_rng(data, rng)
      loss, grads = jax.value_and_grad(functools.partial(loss_fn, remat_model))(params, x, rng)
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), (loss, grads)

    (params, _), (losses_, grads) = jax.lax.scan(
        step, (init_params, tx.init(init_params)), rngs)
    # The plain model's gradient at the first step, for the remat comparison.
    first = jax.value_and_grad(functools.partial(loss_fn, model))(
        init_params, *batch_and_rng(data, rngs[0]))
    return params, losses_, first, jax.tree.map(lambda a: a[0], grads)

  trained, losses_, (l, g), g_remat = train(params, data, _key(11))
  remat_shapes = jax.eval_shape(remat_model.init, _key(0), data[:batch], _key(1))["params"]
  assert jax.tree.structure(remat_shapes) == jax.tree.structure(params)
  np.testing.assert_allclose(losses_[0], l, rtol=1e-6)
  # (Biases of convs followed by batch norm have zero gradient up to rounding noise.)
  scale = max(float(jnp.abs(a).max()) for a in jax.tree.leaves(g))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5 * scale),
               g_remat, g)

  losses_ = np.asarray(losses_)
  assert np.all(np.isfinite(losses_))
  assert losses_[-10:].mean() < losses_[:10].mean() - 100  # nats per clip

  test = jnp.asarray(_moving_squares(20, 16))
  out = jax.jit(lambda p, r, c: model.apply({"params": p}, r, 16, c, num_frames=1,
                                            method=svg_lp.SVGLP.sample))(trained, _key(12),
                                                                         test[:, :N_PAST])
  first = np.asarray(jax.nn.sigmoid(out[:, 0]))  # the likelihood's mean
  last_context = np.asarray(test[:, N_PAST - 1])
  same = np.mean((first - last_context) ** 2)
  other = np.mean((first - np.roll(last_context, 1, axis=0)) ** 2)  # another clip's frame
  assert same < 0.85 * other, (same, other)
