r"""Video prediction evaluation of a trained video model (SVG-LP), as the SVG reference does it.

  python scripts/evaluate_video.py --workdir=runs/bair_svg --output_dir=results/bair_svg_eval

Loads WORKDIR (config.json and the latest or `--checkpoint=best` checkpoint,
`loading.load_run`) and, by default, the SVG reference's protocol
(`generate_svg_lp.py`): the first --num_videos=256 test videos whole (BAIR: 30 frames),
the model's n_past (2) context frames, the n_future = 28 frames after them predicted,
--num_samples=100 samples per video, batches of 100 different videos. It reports:

* per predicted frame, PSNR (dB) and SSIM of the best sample chosen as the reference
  chooses it, the one with the highest SSIM averaged over the predicted frames
  ("psnr", "ssim"), and separately the per-frame maximum over the samples
  ("psnr_max", "ssim_max": each frame's best sample, a higher number); SSIM as the
  reference computes it (skimage's defaults, --ssim_kind=reference) or with the 11x11
  Gaussian window (--ssim_kind=gaussian) (`video.video_prediction_scores`);
* the FID between predicted frames (one continuation per video) and the true frames at
  the same positions, with the Inception weights when present (--fid_kind=auto; else
  random features, relative comparisons only) (`video.video_fid`);
* the negative ELBO over the training horizon: the test clips as the model trained on
  them (dataset.clip_length frames, dataset.clip_selection: for BAIR the first 12 frames
  of each test video), per clip, per target frame (the frames the training loss scores:
  SVG-LP's frames 1..11) and per dimension (`video.evaluate_elbo_per_frame`);
* for Gaussian decoders (`gaussian`, `beta`, the sigma decoders), the calibrated bound:
  the same model at its maximum-likelihood shared sigma (`elbo.evaluate_calibrated`),
  the number of a fixed-sigma model (e.g. `beta`) that compares with calibrated ones.

Writes OUTPUT_DIR/video_eval.json (everything), video_eval.csv (one row per frame:
nelbo, rec, kl for the training horizon's target frames; psnr, ssim, psnr_max,
ssim_max for predicted frames) and video_eval.png (PSNR and SSIM vs frame, both
readings).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

NAME = "video_eval"
# The SVG reference's protocol (generate_svg_lp.py: --N 256 --nsample 100
# --batch_size 100; n_past 2 and n_future 28 are the model's n_past and n_eval).
REFERENCE_NUM_VIDEOS = 256
REFERENCE_NUM_SAMPLES = 100
REFERENCE_BATCH_SIZE = 100
FID_KINDS = ("auto", "inception", "random", "none")
SSIM_KINDS = ("reference", "gaussian")  # video_metrics.SSIM_KINDS (checked at run time)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      description="Best-of-N PSNR/SSIM per predicted frame, FID of predicted frames and "
                  "the per-clip/per-frame/per-dimension ELBO of a trained video model "
                  "(SVG-LP) on its test videos, as the SVG reference evaluates; writes "
                  "JSON, CSV and PNG.")
  parser.add_argument("--workdir", required=True,
                      help="Training workdir (config.json + checkpoints/).")
  parser.add_argument("--output_dir", default=None,
                      help="Where video_eval.{json,csv,png} go (default WORKDIR/video_eval).")
  parser.add_argument("--num_videos", "--num_clips", dest="num_videos", type=int,
                      default=REFERENCE_NUM_VIDEOS,
                      help="Evaluate the first NUM_VIDEOS test videos (default 256, the "
                           "reference's N; fewer if the split has fewer).")
  parser.add_argument("--video_length", "--clip_length", dest="video_length", type=int,
                      default=None,
                      help="Frames per test video: n_past context + predicted frames "
                           "(default the model's n_eval, 30: n_past 2 + n_future 28).")
  parser.add_argument("--num_samples", type=int, default=REFERENCE_NUM_SAMPLES,
                      help="Samples per test video for best-of-N PSNR/SSIM (default 100, "
                           "as the reference).")
  parser.add_argument("--ssim_kind", choices=SSIM_KINDS, default="reference",
                      help="SSIM as the reference's utils.eval_seq (skimage defaults: 7x7 "
                           "uniform window, data range 2) or the 11x11 Gaussian window.")
  parser.add_argument("--fid_kind", choices=FID_KINDS, default="auto",
                      help="FID features of predicted vs true frames: inception (pytorch-fid "
                           "InceptionV3, converted weights needed; comparable to the paper), "
                           "random (weight-free conv net; relative comparisons only), auto "
                           "(inception when its weights are present, else random) or none.")
  parser.add_argument("--fid_weights_path", default=None,
                      help="InceptionV3 weights (default: sigma_vae_jax.evaluation.inception's path).")
  parser.add_argument("--batch_size", type=int, default=REFERENCE_BATCH_SIZE,
                      help="Videos per batch (default 100, as the reference's evaluation; "
                           "with batch normalisation samples depend on the batch).")
  parser.add_argument("--temperature", type=float, default=1.0,
                      help="Scale of the latent noise of the samples.")
  parser.add_argument("--seed", type=int, default=0, help="Seed of the samples.")
  parser.add_argument("--checkpoint", choices=("latest", "best"), default="latest",
                      help="Evaluate the latest checkpoint or the one with the best "
                           "eval ELBO (WORKDIR/checkpoints_best/).")
  return parser.parse_args(argv)


def _resolve_fid_kind(fid_kind: str, weights_path: Optional[str]) -> str:
  """'auto' -> 'inception' when its weights load, else 'random'; others unchanged
  (a missing Inception file for 'inception' raises FileNotFoundError first)."""
  from sigma_vae_jax.evaluation import fid  # pylint: disable=g-import-not-at-top
  if fid_kind == "auto":
    try:
      fid.fid_feature_fn("inception", weights_path)
      return "inception"
    except FileNotFoundError:
      return "random"
  if fid_kind != "none":
    fid.fid_feature_fn(fid_kind, weights_path)  # missing weights: fail first
  return fid_kind


def _test_data(source, config, num_videos: int, video_length: Optional[int]):
  """(videos [N, L, H, W, C] for prediction, clips [M, clip_length, ...] as trained).

  Datasets of videos (bair): the first num_videos test videos, their first L frames
  (default the model's n_eval, capped at the video), and their training clips
  (dataset.clip_length / clip_selection). Datasets of clips (numpy_videos): the first
  num_videos test clips serve as both.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  # pylint: disable=g-import-not-at-top
  from sigma_vae_jax.data.clips import extract_clips
  from sigma_vae_jax.data.dataset_fields import DEFAULT_CLIP_SELECTION
  # pylint: enable=g-import-not-at-top
  if not source.is_video:
    clips = source.load_split("test")[:num_videos]
    if video_length is not None:
      clips = clips[:, :video_length]
    return clips, clips
  frames = source.load_clips("test", source.video_frames, selection="first",
                             max_videos=num_videos)
  length = min(video_length or config.model.get("n_eval", frames.shape[1]), frames.shape[1])
  clips = extract_clips(
      frames, int(config.dataset.clip_length),
      selection=config.dataset.get("clip_selection") or DEFAULT_CLIP_SELECTION)
  return np.ascontiguousarray(frames[:, :length]), clips


def run(workdir: str, output_dir: Optional[str] = None,
        num_samples: int = REFERENCE_NUM_SAMPLES, num_videos: int = REFERENCE_NUM_VIDEOS,
        fid_kind: str = "auto", fid_weights_path: Optional[str] = None,
        batch_size: int = REFERENCE_BATCH_SIZE, temperature: float = 1.0,
        video_length: Optional[int] = None, seed: int = 0, checkpoint: str = "latest",
        ssim_kind: str = "reference") -> dict:
  """Evaluates WORKDIR's latest (or best) checkpoint; writes the outputs and returns
  the JSON dict."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from sigma_vae_jax import losses  # pylint: disable=g-import-not-at-top
  from sigma_vae_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  from sigma_vae_jax.evaluation import elbo as elbo_lib  # pylint: disable=g-import-not-at-top
  from sigma_vae_jax.evaluation import loading  # pylint: disable=g-import-not-at-top
  from sigma_vae_jax.evaluation import sweep_tables  # pylint: disable=g-import-not-at-top
  from sigma_vae_jax.evaluation import video  # pylint: disable=g-import-not-at-top
  from sigma_vae_jax.training import checkpointing  # pylint: disable=g-import-not-at-top

  workdir = os.path.abspath(workdir)
  output_dir = output_dir or os.path.join(workdir, NAME)
  config_path = os.path.join(workdir, checkpointing.CONFIG_FILE)
  if not os.path.exists(config_path):
    raise FileNotFoundError(f"{config_path} does not exist: {workdir} is not a training "
                            f"workdir")
  config = loading.config_from_json(config_path)
  fid_kind = _resolve_fid_kind(fid_kind, fid_weights_path)
  source = input_pipeline.get_data_source(config.dataset)
  _, trainer, state = loading.load_run(workdir, image_shape=source.image_shape,
                                       checkpoint=checkpoint)
  if not trainer.num_context_frames:
    raise ValueError(f"{workdir} trained the image model {config.model.name!r}; this script "
                     f"evaluates video models (e.g. svg_lp)")
  videos, clips = _test_data(source, config, num_videos, video_length)
  if len(videos) == 0:
    raise ValueError(f"no test videos in dataset {config.dataset.name!r}")

  fid_what = "" if fid_kind == "none" else f", FID ({fid_kind} features)"
  print(f"Evaluating {config.model.name} ({config.decoder.name}) of {workdir}, {checkpoint} "
        f"checkpoint (step {int(jax.device_get(state.step))}), on {len(clips)} test clips "
        f"of {clips.shape[1]} frames: per-frame ELBO, best-of-{num_samples} PSNR/SSIM"
        f"{fid_what}.", flush=True)
  rng = jax.random.PRNGKey(seed)
  elbo = video.evaluate_elbo_per_frame(trainer, state, clips, batch_size)
  calibrated = elbo_lib.evaluate_calibrated(trainer, state, clips, batch_size)
  scores = video.video_prediction_scores(trainer, state, videos, jax.random.fold_in(rng, 0),
                                         num_samples, batch_size, temperature, ssim_kind)
  fid = None
  if fid_kind != "none":
    fid = video.video_fid(trainer, state, videos, fid_kind, jax.random.fold_in(rng, 1),
                          fid_weights_path, batch_size, temperature)

  elbo_keys = [k for k in ("nelbo", "rec", "kl", "nelbo_discrete") if k in elbo]
  score_keys = ["psnr", "ssim", "psnr_max", "ssim_max"]
  rows = {}
  for i, frame in enumerate(elbo["frame"]):
    rows[int(frame)] = {"frame": int(frame), **{k: float(elbo[k][i]) for k in elbo_keys}}
  for i, frame in enumerate(scores["frame"]):
    row = rows.setdefault(int(frame), {"frame": int(frame)})
    row.update({k: float(scores[k][i]) for k in score_keys})
  rows = [rows[f] for f in sorted(rows)]

  num_dims = trainer.num_target_dims
  num_target_frames = len(elbo["frame"])
  nelbo = elbo["nelbo_clip"]
  result = {
      "workdir": workdir, "step": int(jax.device_get(state.step)),
      "model": config.model.name, "decoder": config.decoder.name,
      "dataset": config.dataset.name, "num_clips": int(len(videos)),
      "num_videos": int(len(videos)), "video_length": int(videos.shape[1]),
      "num_context_frames": elbo["num_context_frames"],
      "num_predicted_frames": int(len(scores["frame"])),
      "num_samples": num_samples, "batch_size": batch_size, "temperature": temperature,
      "seed": seed, "ssim_kind": ssim_kind,
      # The ELBO over the training horizon (nats; per target frame = per clip / frames).
      "elbo_num_clips": int(elbo["num_examples"]), "elbo_clip_length": int(clips.shape[1]),
      "elbo_num_target_frames": num_target_frames,
      "nelbo_clip": nelbo, "nelbo_frame": nelbo / num_target_frames,
      "nelbo_dim": nelbo / num_dims,
      "bpd": float(losses.nats_to_bits_per_dim(nelbo, num_dims)),
      "calibrated": None,
      "psnr_mean": float(np.mean(scores["psnr"])), "ssim_mean": float(np.mean(scores["ssim"])),
      "psnr_max_mean": float(np.mean(scores["psnr_max"])),
      "ssim_max_mean": float(np.mean(scores["ssim_max"])),
      "fid_kind": fid_kind, "fid": fid,
      "per_frame": rows,
      "notes": ("nelbo/rec/kl: nats per clip of the training horizon (elbo_clip_length "
                "frames, as trained) and per target frame (frames < num_context_frames are "
                "context frames the training loss also scores); nelbo_frame = nelbo_clip / "
                "elbo_num_target_frames, nelbo_dim = nelbo_clip / dimensions. psnr (dB) / "
                "ssim: the sample with the highest mean SSIM over the predicted frames (the "
                "SVG reference's choice), averaged over videos; psnr_max / ssim_max: the "
                "per-frame maximum over samples. fid: predicted vs true frames (random "
                "features: relative comparisons only)."),
  }
  if calibrated is not None:
    result["calibrated"] = {**calibrated,
                            "nelbo_frame_calibrated": calibrated["nelbo_calibrated"]
                            / num_target_frames}
  os.makedirs(output_dir, exist_ok=True)
  clean = json.loads(json.dumps(result), parse_constant=lambda _: None)  # inf/NaN -> null
  with open(os.path.join(output_dir, f"{NAME}.json"), "w") as f:
    json.dump(clean, f, indent=1)
  sweep_tables.write_csv(os.path.join(output_dir, f"{NAME}.csv"), rows,
                         ["frame"] + elbo_keys + score_keys)
  _plot(rows, result, os.path.join(output_dir, f"{NAME}.png"))
  fid_text = "" if fid is None else f", FID ({fid_kind}) {fid:.2f}"
  calib_text = ("" if calibrated is None else
                f", calibrated {calibrated['nelbo_calibrated']:.1f}")
  print(f"{config.model.name} step {result['step']}, {len(videos)} test videos of "
        f"{result['video_length']} frames ({result['num_context_frames']} context): "
        f"best-of-{num_samples} (mean SSIM) PSNR {result['psnr_mean']:.2f} dB, SSIM "
        f"{result['ssim_mean']:.4f}; per-frame max PSNR {result['psnr_max_mean']:.2f} dB, "
        f"SSIM {result['ssim_max_mean']:.4f} (means over predicted frames){fid_text}; "
        f"-ELBO {nelbo:.1f} nats/clip of {clips.shape[1]} frames = "
        f"{result['nelbo_frame']:.1f} nats/frame{calib_text}. Wrote "
        f"{output_dir}/{NAME}.{{json,csv,png}}", flush=True)
  return result


def _plot(rows, result, path):
  from sigma_vae_jax.evaluation import sweep_tables  # pylint: disable=g-import-not-at-top
  scored = [r for r in rows if "psnr" in r]
  frames = [r["frame"] for r in scored]
  fig, axes = sweep_tables.new_figure(2)
  for ax, key, label in zip(axes, ("psnr", "ssim"), ("PSNR (dB)", "SSIM")):
    ax.plot(frames, [r[key] for r in scored], "o-",
            label=f"best of {result['num_samples']} by mean SSIM (reference)")
    ax.plot(frames, [r[f"{key}_max"] for r in scored], "s--", markersize=3,
            label="per-frame max over samples")
    ax.axvline(result["num_context_frames"] - 0.5, color="gray", linestyle="--",
               linewidth=0.8, label="end of context")
    ax.set_xlabel("frame (0-based)")
    ax.set_ylabel(label)
    ax.legend(fontsize=7)
  fig.suptitle(f"{result['model']} ({result['decoder']}) on {result['dataset']}, step "
               f"{result['step']}, {result['num_videos']} videos, SSIM "
               f"{result['ssim_kind']}", fontsize=9)
  sweep_tables.save_figure(fig, path)


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = parse_args(argv)
  from sigma_vae_jax import cli  # pylint: disable=g-import-not-at-top
  cli.require_train_extra()
  if not os.path.isdir(args.workdir):
    print(f"ERROR: --workdir={args.workdir} does not exist (train with "
          f"`python -m sigma_vae_jax.main --workdir=...` first).", file=sys.stderr)
    return 1
  # (checkpointing.CONFIG_FILE; checked before the slow imports.)
  if not os.path.exists(os.path.join(args.workdir, "config.json")):
    print(f"ERROR: {os.path.join(args.workdir, 'config.json')} does not exist: "
          f"{args.workdir} is not a training workdir.", file=sys.stderr)
    return 1
  for name in ("num_samples", "batch_size", "num_videos", "video_length"):
    value = getattr(args, name)
    if value is not None and value < 1:
      print(f"ERROR: --{name} must be >= 1; got {value}", file=sys.stderr)
      return 1
  from sigma_vae_jax import configuration  # pylint: disable=g-import-not-at-top
  from sigma_vae_jax.training import checkpointing  # pylint: disable=g-import-not-at-top
  try:
    run(args.workdir, args.output_dir, args.num_samples, args.num_videos, args.fid_kind,
        args.fid_weights_path, args.batch_size, args.temperature, args.video_length,
        args.seed, args.checkpoint, args.ssim_kind)
  except (FileNotFoundError, ValueError, checkpointing.CheckpointError,
          configuration.ConfigError) as e:
    # User mistakes (wrong workdir, image model, missing weights): one line.
    print(f"ERROR: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  from sigma_vae_jax import process_setup  # pylint: disable=g-import-not-at-top
  process_setup.set_tensorflow_env_defaults()
  sys.exit(main())
