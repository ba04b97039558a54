"""Video prediction evaluation (video.evaluate_elbo_per_frame, video_prediction_scores,
video_fid, scripts/evaluate_video.py) and exact resume of SVG-LP, with the tiny svg_lp
of tests/tiny_models.py at two VGG stages (16x16 frames: SSIM's 11x11 window fits)
trained a few steps on generated `numpy_videos`.

That samples condition on the context (the first predicted frame is closer to the last
context frame than another clip's) is tests/test_svg_lp.py's
test_training_loss_falls_remat_and_samples_condition_on_context.
"""

import importlib.util
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cli_utils
import tiny_models
from sigma_vae_jax.evaluation import evaluate
from sigma_vae_jax.evaluation import metrics
from sigma_vae_jax.evaluation import video
from sigma_vae_jax.evaluation import video_metrics
from sigma_vae_jax.training import checkpointing
from sigma_vae_jax.training import train
from sigma_vae_jax.training import trainer as trainer_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T, HW, C = 4, 16, 3
N_PAST = 2
STEPS = 8


def _videos(n=48, seed=0):
  """uint8 [n, T, 16, 16, 3]: a bright 5x5 square on a colour ramp, moving at most one
  pixel per frame (consecutive frames are similar)."""
  rng = np.random.default_rng(seed)
  yy, xx = np.meshgrid(np.linspace(0, 1, HW), np.linspace(0, 1, HW), indexing="ij")
  x = np.zeros((n, T, HW, HW, C))
  for b in range(n):
    base = rng.uniform(0.1, 0.5, C) + 0.2 * (yy[..., None] - xx[..., None])
    color = rng.uniform(0.8, 1.0, C)
    pos = rng.integers(0, HW - 5 - (T - 1) + 1, 2)
    vel = rng.integers(0, 2, 2)
    for t in range(T):
      py, px = pos + t * vel
      x[b, t] = base
      x[b, t, py:py + 5, px:px + 5] = color
  return (np.clip(x, 0, 1) * 255).round().astype(np.uint8)


def _config(path, **overrides):
  config = tiny_models.tiny_config("svg_lp")
  config.model.num_stages = 2  # 16x16 frames
  config.model.update(n_past=N_PAST, n_future=T - N_PAST, n_eval=T)
  config.dataset.name = "numpy_videos"
  config.dataset.path = path
  config.dataset.test_fraction = 0.25
  config.num_train_steps = STEPS
  config.log_every_steps = 2
  config.eval_every_steps = config.checkpoint_every_steps = STEPS // 2
  config.num_image_samples = 4
  for key, value in overrides.items():
    config[key] = value
  return config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A finished 8-step run: (workdir, config, trainer, state, test clips [12, 4, 16, 16, 3])."""
  root = tmp_path_factory.mktemp("svg")
  path = str(root / "videos.npy")
  np.save(path, _videos())
  workdir = str(root / "run")
  config = _config(path)
  train.train_and_evaluate(config, workdir)
  _, trainer, state = evaluate.load_run(workdir)
  clips = evaluate.load_test_images(config)
  assert clips.shape == (12, T, HW, HW, C)
  return workdir, config, trainer, state, clips


def _final_state(workdir, trainer):
  checkpointer = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), 3)
  try:
    state, step = checkpointer.restore_latest(trainer.init_state())
  finally:
    checkpointer.close()
  return jax.device_get(state), step


def test_resume_from_half_way_ends_bit_identical(run, tmp_path):
  workdir, config, trainer, _, _ = run
  resumed = str(tmp_path / "resumed")
  half = _config(config.dataset.path, num_train_steps=STEPS // 2)
  train.train_and_evaluate(half, resumed)
  assert _final_state(resumed, trainer)[1] == STEPS // 2
  train.train_and_evaluate(_config(config.dataset.path), resumed)
  state, step = _final_state(resumed, trainer)
  reference, reference_step = _final_state(workdir, trainer)
  assert step == reference_step == STEPS
  cli_utils.assert_same_state(state, reference)  # params, Adam moments, sigma average, rng
  rows = cli_utils.metrics_rows(resumed)
  assert rows == cli_utils.metrics_rows(workdir)
  assert [r["step"] for r in rows if r["split"] == "eval"] == [STEPS // 2, STEPS]


def test_per_frame_elbo_sums_to_the_clip_elbo(run):
  _, _, trainer, state, clips = run
  # Batches of 5 for 12 clips: the last one padded and masked, as in evaluate_elbo.
  per_frame = video.evaluate_elbo_per_frame(trainer, state, clips, batch_size=5)
  clip = evaluate.evaluate_elbo(trainer, state, clips, batch_size=5)
  np.testing.assert_array_equal(per_frame["frame"], np.arange(1, T))  # SVG-LP's target
  for key in ("nelbo", "rec", "kl", "nelbo_discrete"):
    assert per_frame[key].shape == (T - 1,)
    np.testing.assert_allclose(per_frame[key].sum(), clip[key], rtol=2e-6, err_msg=key)
  np.testing.assert_allclose(per_frame["nelbo"], per_frame["rec"] + per_frame["kl"])
  assert per_frame["nelbo_clip"] == pytest.approx(clip["nelbo"], rel=2e-6)
  assert np.all(per_frame["kl"] >= 0)
  assert per_frame["num_examples"] == 12 and per_frame["num_context_frames"] == N_PAST
  # Not a constant split: frame 1's terms differ from the last frame's.
  assert per_frame["rec"][0] != per_frame["rec"][-1]


def test_padded_batches_fill_with_real_rows_by_hand():
  data = np.arange(10, dtype=np.uint8)[:, None] + 1  # row i holds i + 1 (never 0)
  batches = list(trainer_lib.padded_batches(data, 4))
  assert [b[:, 0].tolist() for b, _ in batches] == [[1, 2, 3, 4], [5, 6, 7, 8],
                                                     [9, 10, 1, 2]]
  assert [m.tolist() for _, m in batches] == [[True] * 4, [True] * 4,
                                              [True, True, False, False]]
  # Fewer rows than a batch: repeated cyclically.
  (b, m), = trainer_lib.padded_batches(data[:3], 8)
  assert b[:, 0].tolist() == [1, 2, 3, 1, 2, 3, 1, 2] and m.sum() == 3


def test_padding_never_reaches_batch_statistics(run):
  """svg_lp normalises with batch statistics (norm="batch"), so a clip's ELBO depends on
  its batch. 10 clips in batches of 4: every evaluation path must give the clips the
  per-clip values they have in exact batches of real clips, [0-3], [4-7], [8, 9, 0, 1],
  each clip scored alone through a one-hot mask (keys as Trainer.evaluate: batch i
  uses fold_in(eval_rng, i))."""
  _, _, trainer, state, all_clips = run
  assert trainer.config.model.norm == "batch"
  clips = all_clips[:10]
  exact = np.concatenate([clips, clips[:2]]).reshape(3, 4, *clips.shape[1:])
  eval_rng = jax.random.fold_in(state.rng, trainer_lib.EVAL_STREAM)
  per_clip = {"nelbo": [], "sq_err": [], "kl": []}
  for i, batch in enumerate(exact):
    key = jax.random.fold_in(eval_rng, i)
    for row in range(4):
      mask = np.arange(4) == row
      sums = trainer.eval_sums(state, batch, mask, key)
      per_clip["nelbo"].append(float(sums["nelbo"]))
      calib = trainer.calibration_sums(state, batch, mask, key, jnp.float32(0.0),
                                       discrete=False)
      per_clip["sq_err"].append(float(jnp.sum(calib["sq_err"])))  # per position -> clip
      per_clip["kl"].append(float(calib["kl"]))
  expected = {k: np.mean(v[:10]) for k, v in per_clip.items()}  # the 10 real clips

  got = evaluate.evaluate_elbo(trainer, state, clips, batch_size=4)
  assert got["num_examples"] == 10
  np.testing.assert_allclose(got["nelbo"], expected["nelbo"], rtol=1e-6)
  per_frame = video.evaluate_elbo_per_frame(trainer, state, clips, batch_size=4)
  np.testing.assert_allclose(per_frame["nelbo_clip"], expected["nelbo"], rtol=1e-6)
  calibrated = evaluate.evaluate_calibrated(trainer, state, clips, batch_size=4)
  d = trainer.num_target_dims
  mse = expected["sq_err"] / d
  np.testing.assert_allclose(calibrated["mse"], mse, rtol=1e-6)
  np.testing.assert_allclose(calibrated["nelbo_calibrated"],
                             0.5 * d * (1 + np.log(2 * np.pi * mse)) + expected["kl"],
                             # The terms nearly cancel: the mse's float32 rounding (the
                             # rtol above) moves the bound by up to d/2 * that.
                             rtol=0, atol=0.5 * d * 2e-6)
  # The eval ELBO during training (streamed test data) pads through the same batches.
  batches = list(train._padded_stream(iter([clips[8:10]]), 4, 1))
  assert len(batches) == 1 and batches[0][1].tolist() == [True, True, False, False]
  assert (batches[0][0][2:] != 0).any()  # real clips, not blank ones


def test_image_models_are_refused():
  config = tiny_models.tiny_config("conv_vae")
  trainer = trainer_lib.Trainer(config, (8, 8, 3), trainer_lib.make_mesh())
  images = np.zeros((4, 8, 8, 3), np.uint8)
  with pytest.raises(ValueError, match="image model"):
    video.evaluate_elbo_per_frame(trainer, None, images)
  with pytest.raises(ValueError, match="image model"):
    video.video_prediction_scores(trainer, None, images, jax.random.PRNGKey(0))


def _draws(trainer, state, clips, rng, num_samples):
  """The draws video_prediction_scores documents (one batch: batch 0, draw k with
  fold_in(fold_in(rng, 0), k)), as float64 numpy [K, N, F, H, W, C]."""
  context = jnp.asarray(clips[:, :N_PAST])
  key = jax.random.fold_in(rng, 0)
  return np.stack([np.asarray(trainer.sample(state, jax.random.fold_in(key, k),
                                             num=len(clips), context=context), np.float64)
                   for k in range(num_samples)])


def _numpy_psnr(target, prediction):
  """Per-channel PSNR (data range 1) averaged over channels: [..., H, W, C] -> [...]."""
  mse = ((target - prediction) ** 2).mean(axis=(-3, -2))
  return (10 * np.log10(1.0 / mse)).mean(axis=-1)


def test_best_of_n_both_readings_from_the_draws(run):
  """The reference's best sample (highest mean SSIM over the predicted frames, its
  per-frame scores) and the per-frame maximum, both recomputed from the draws; the
  maximum grows with N."""
  _, _, trainer, state, all_clips = run
  clips = all_clips[:8]
  rng = jax.random.PRNGKey(3)
  scores = {n: video.video_prediction_scores(trainer, state, clips, rng, num_samples=n,
                                             batch_size=8)
            for n in (1, 2, 4)}
  draws = _draws(trainer, state, clips, rng, 4)
  truth = clips[:, N_PAST:].astype(np.float64) / 255
  psnr = _numpy_psnr(truth[None], draws)  # [K, N, F], independent of video_metrics
  # SSIM as the reference computes it (skimage defaults; video_metrics' own tests check
  # this function against a numpy/scipy implementation).
  ssim = np.asarray(video_metrics.ssim(jnp.asarray(np.broadcast_to(truth, draws.shape),
                                                   jnp.float32),
                                       jnp.asarray(draws, jnp.float32),
                                       **video_metrics.SSIM_KINDS["reference"]))
  clip_index = np.arange(len(clips))
  for n, s in scores.items():
    assert s["ssim_kind"] == "reference"
    for key in ("psnr", "ssim", "psnr_max", "ssim_max"):
      assert s[f"{key}_per_clip"].shape == (8, T - N_PAST)
      np.testing.assert_allclose(s[key], s[f"{key}_per_clip"].mean(0))
    np.testing.assert_array_equal(s["frame"], np.arange(N_PAST, T))
    np.testing.assert_allclose(s["psnr_max_per_clip"], psnr[:n].max(0), rtol=1e-4)
    np.testing.assert_allclose(s["ssim_max_per_clip"], ssim[:n].max(0), rtol=1e-5,
                               atol=1e-6)
    chosen = ssim[:n].mean(-1).argmax(0)  # [N_clips]: sample with the best mean SSIM
    np.testing.assert_allclose(s["psnr_per_clip"], psnr[chosen, clip_index], rtol=1e-4)
    np.testing.assert_allclose(s["ssim_per_clip"], ssim[chosen, clip_index], rtol=1e-5,
                               atol=1e-6)
  for key in ("psnr_max_per_clip", "ssim_max_per_clip"):
    assert np.all(scores[2][key] >= scores[1][key])
    assert np.all(scores[4][key] >= scores[2][key])
  assert np.any(scores[4]["psnr_max_per_clip"] > scores[1]["psnr_max_per_clip"])
  # With 4 draws the two readings differ somewhere (else this test could not tell them apart).
  assert np.any(scores[4]["psnr_max_per_clip"] > scores[4]["psnr_per_clip"] + 1e-6)


class _Oracle:
  """A stand-in for trainer.sample that continues each context with its clip's true
  future frames (found by the context), minus `offset`; padded with zero frames."""

  def __init__(self, clips, offset, num_generated):
    self.clips = clips.astype(np.float32) / 255
    self.offset = offset
    self.num_generated = num_generated

  def __call__(self, state, rng, num, context=None, temperature=1.0):
    del state, rng, temperature
    context = np.asarray(context, np.float32) / 255
    dist = ((context[:, None] - self.clips[None, :, :N_PAST]) ** 2).sum(axis=(2, 3, 4, 5))
    future = self.clips[dist.argmin(1), N_PAST:] - self.offset
    pad = self.num_generated - future.shape[1]
    assert len(future) == num
    return jnp.asarray(np.concatenate([future, np.zeros_like(future[:, :pad])], axis=1))


def test_scores_and_fid_of_perfect_and_offset_predictors(run, monkeypatch):
  """An oracle that predicts the true frames: PSNR ~+inf, SSIM 1, FID ~0 (frames are
  aligned with the clips); minus 0.1 everywhere: MSE 0.01, PSNR exactly 20 dB."""
  _, _, trainer, state, clips = run
  rng = jax.random.PRNGKey(0)
  # 12 clips in batches of 5: the last batch is filled with clips from the start.
  monkeypatch.setattr(trainer, "sample", _Oracle(clips, 0.0, T - N_PAST + 1))
  perfect = video.video_prediction_scores(trainer, state, clips, rng, 2, batch_size=5)
  assert perfect["psnr_per_clip"].shape == (12, T - N_PAST)
  # (+inf up to float32 rounding of the two uint8 -> [0, 1] conversions.)
  assert np.all(perfect["psnr_per_clip"] > 100)
  np.testing.assert_allclose(perfect["ssim_per_clip"], 1.0, atol=1e-5)
  assert abs(video.video_fid(trainer, state, clips, "random", rng, batch_size=5)) < 1e-3
  monkeypatch.setattr(trainer, "sample", _Oracle(clips, 0.1, T - N_PAST))
  offset = video.video_prediction_scores(trainer, state, clips, rng, 1, batch_size=5)
  np.testing.assert_allclose(offset["psnr_per_clip"], 20.0, rtol=1e-4)
  assert np.all(offset["ssim_per_clip"] < 1.0)
  assert video.video_fid(trainer, state, clips, "random", rng, batch_size=5) > 1e-2


def test_fid_of_the_model_with_random_features(run):
  _, _, trainer, state, all_clips = run
  clips = all_clips[:8]  # one batch of 8, as the best-of-N test (one compiled sampler)
  rng = jax.random.PRNGKey(1)
  fid = video.video_fid(trainer, state, clips, "random", rng, batch_size=8)
  assert math.isfinite(fid) and fid > 0
  # The same number from the predicted frames gathered by hand and metrics.fid.
  frames = np.asarray(trainer.sample(state, jax.random.fold_in(rng, 0), num=8,
                                     context=jnp.asarray(clips[:, :N_PAST])))
  by_hand = metrics.fid(frames[:, :T - N_PAST].reshape(-1, HW, HW, C),
                        clips[:, N_PAST:].reshape(-1, HW, HW, C) / 255.0,
                        metrics.make_feature_fn("random"))
  np.testing.assert_allclose(fid, by_hand, rtol=1e-4)


def _load_script():
  spec = importlib.util.spec_from_file_location(
      "evaluate_video", os.path.join(ROOT, "scripts", "evaluate_video.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_script_end_to_end(run, tmp_path, capsys):
  workdir, _, trainer, state, clips = run
  script = _load_script()
  out = str(tmp_path / "eval")
  code = script.main([f"--workdir={workdir}", f"--output_dir={out}", "--num_samples=3",
                      "--num_videos=10", "--fid_kind=random", "--batch_size=5"])
  assert code == 0, capsys.readouterr().err
  with open(os.path.join(out, "video_eval.json")) as f:
    result = json.load(f)
  assert result["step"] == STEPS and result["num_videos"] == 10
  assert result["video_length"] == T and result["num_predicted_frames"] == T - N_PAST
  assert result["num_samples"] == 3 and math.isfinite(result["fid"])
  assert result["ssim_kind"] == "reference" and result["fid_kind"] == "random"
  elbo = evaluate.evaluate_elbo(trainer, state, clips[:10], batch_size=5)
  assert result["nelbo_clip"] == pytest.approx(elbo["nelbo"], rel=2e-6)
  # Per target frame (SVG-LP scores frames 1..T-1) and per dimension.
  assert result["nelbo_frame"] == pytest.approx(elbo["nelbo"] / (T - 1), rel=2e-6)
  assert result["nelbo_dim"] == pytest.approx(elbo["nelbo"] / ((T - 1) * HW * HW * C),
                                              rel=2e-6)
  calibrated = evaluate.evaluate_calibrated(trainer, state, clips[:10], batch_size=5)
  assert result["calibrated"]["nelbo_calibrated"] == pytest.approx(
      calibrated["nelbo_calibrated"], rel=1e-6)
  assert result["psnr_max_mean"] >= result["psnr_mean"]
  import csv
  with open(os.path.join(out, "video_eval.csv"), newline="") as f:
    rows = list(csv.DictReader(f))
  assert [int(r["frame"]) for r in rows] == list(range(1, T))
  assert rows[0]["psnr"] == "" and rows[0]["ssim"] == ""  # frame 1 is context
  for r in rows[N_PAST - 1:]:
    for key in ("nelbo", "rec", "kl", "psnr", "ssim", "psnr_max", "ssim_max"):
      assert math.isfinite(float(r[key])), (key, r)
    assert float(r["ssim_max"]) >= float(r["ssim"]) - 1e-9
  assert sum(float(r["nelbo"]) for r in rows) == pytest.approx(result["nelbo_clip"])
  with open(os.path.join(out, "video_eval.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  # Errors found inside the evaluation are messages too, not tracebacks (missing
  # weights: found before any work; their message carries the instructions).
  capsys.readouterr()
  assert script.main([f"--workdir={workdir}", "--fid_kind=inception",
                      f"--fid_weights_path={tmp_path / 'missing.npz'}"]) == 1
  err = capsys.readouterr().err
  assert err.startswith("ERROR: InceptionV3 FID weights not found"), err


def test_script_reads_the_reference_protocol_on_bair():
  """Defaults: the reference's protocol (256 videos, 100 samples, batches of 100); on
  BAIR (hand-numbered mock videos: frame t of test video v is the value 128 + v * 30 +
  t) whole 30-frame test videos for prediction and, for the ELBO, the training clips:
  the first 12 frames of each test video."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from test_input_pipeline import TEST_OFFSET, _frame_ids, _numbered_bair  # pylint: disable=g-import-not-at-top
  from sigma_vae_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  script = _load_script()
  args = script.parse_args(["--workdir=w"])
  assert (args.num_videos, args.num_samples, args.batch_size) == (256, 100, 100)
  assert args.video_length is None and args.ssim_kind == "reference"
  assert args.fid_kind == "auto"
  spec = importlib.util.spec_from_file_location(
      "bair_svg_cfg", os.path.join(ROOT, "configs", "bair_svg.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  assert config.model.n_past == 2 and config.model.n_eval == 30  # 28 predicted
  with tfds.testing.mock_data(as_dataset_fn=_numbered_bair):
    source = input_pipeline.get_data_source(config.dataset)
    videos, clips = script._test_data(source, config, 2, None)
  # The test split's videos (frame values offset by TEST_OFFSET), never the train split's.
  assert _frame_ids(videos).tolist() == [[TEST_OFFSET + v * 30 + t for t in range(30)]
                                         for v in range(2)]
  assert _frame_ids(clips).tolist() == [[TEST_OFFSET + v * 30 + t for t in range(12)]
                                        for v in range(2)]


def test_script_help_and_one_line_errors(tmp_path):
  script = os.path.join(ROOT, "scripts", "evaluate_video.py")
  result = subprocess.run([sys.executable, script, "--help"], capture_output=True,
                          text=True, timeout=60)
  assert result.returncode == 0
  for flag in ("--workdir", "--num_samples", "--num_videos", "--fid_kind", "--output_dir",
               "--ssim_kind", "--video_length"):
    assert flag in result.stdout
  for argv in ([f"--workdir={tmp_path / 'missing'}"], [f"--workdir={tmp_path}"]):
    result = subprocess.run([sys.executable, script, *argv], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1
    # One line from the script (TensorFlow/XLA may log their own start-up lines first).
    assert result.stderr.strip().splitlines()[-1].startswith("ERROR: "), result.stderr
    assert "Traceback" not in result.stderr and "does not exist" in result.stderr
