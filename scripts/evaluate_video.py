r"""Video prediction evaluation of a trained video model (SVG-LP), as the SVG papers do it.

  python scripts/evaluate_video.py --workdir=runs/bair_svg --num_samples=100 \
      --fid_kind=inception --output_dir=results/bair_svg_eval

Loads WORKDIR (config.json and the latest or `--checkpoint=best` checkpoint,
`evaluate.load_run`) and the
test clips of its dataset, then computes on them:

* the negative ELBO per clip and per target frame, in nats
  (`evaluate.evaluate_elbo_per_frame`; the per-frame values sum to the clip's);
* for each clip, --num_samples continuations conditioned on its context frames and the
  best-of-N PSNR (dB) and SSIM (11x11 Gaussian window) of every predicted frame,
  averaged over clips (`evaluate.video_prediction_scores`);
* the FID between predicted frames (one continuation per clip) and the true frames at
  the same positions (`evaluate.video_fid`; --fid_kind=inception needs the converted
  weights, scripts/convert_inception_weights.py).

Writes OUTPUT_DIR/video_eval.json (everything), video_eval.csv (one row per frame:
nelbo, rec, kl, psnr, ssim; psnr/ssim empty for context frames) and video_eval.png
(best-of-N PSNR and SSIM vs frame).

Clips are the run's test clips (dataset.clip_length frames, as in training);
--clip_length=30 cuts longer test clips (BAIR's 30-frame videos, the SVG papers'
n_eval = 30) where the likelihood's state does not depend on the clip length. Frames
past the model's n_eval are not generated and not scored.
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


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      description="Per-frame ELBO, best-of-N PSNR/SSIM and FID of a trained video model "
                  "(SVG-LP) on its test clips; writes JSON, CSV and PNG.")
  parser.add_argument("--workdir", required=True,
                      help="Training workdir (config.json + checkpoints/).")
  parser.add_argument("--output_dir", default=None,
                      help="Where video_eval.{json,csv,png} go (default WORKDIR/video_eval).")
  parser.add_argument("--num_samples", type=int, default=100,
                      help="Samples per test clip for best-of-N PSNR/SSIM (default 100, as "
                           "the SVG papers).")
  parser.add_argument("--num_clips", type=int, default=None,
                      help="Evaluate the first NUM_CLIPS test clips (default: all).")
  parser.add_argument("--fid_kind", choices=("random", "inception", "none"),
                      default="random",
                      help="FID features of predicted vs true frames: inception (pytorch-fid "
                           "InceptionV3, converted weights needed; comparable to the paper), "
                           "random (weight-free conv net; relative comparisons only) or none.")
  parser.add_argument("--fid_weights_path", default=None,
                      help="InceptionV3 weights (default: sigma_vae_jax.inception's path).")
  parser.add_argument("--batch_size", type=int, default=100,
                      help="Clips per batch (default 100, as the reference's evaluation; "
                           "with batch normalisation samples depend on the batch).")
  parser.add_argument("--temperature", type=float, default=1.0,
                      help="Scale of the latent noise of the samples.")
  parser.add_argument("--clip_length", type=int, default=None,
                      help="Frames per test clip (default: the run's dataset.clip_length).")
  parser.add_argument("--seed", type=int, default=0, help="Seed of the samples.")
  parser.add_argument("--checkpoint", choices=("latest", "best"), default="latest",
                      help="Evaluate the latest checkpoint or the one with the best "
                           "eval ELBO (WORKDIR/checkpoints_best/).")
  return parser.parse_args(argv)


def _finite_or_none(v):
  return float(v) if v is not None and math.isfinite(float(v)) else None


def run(workdir: str, output_dir: Optional[str] = None, num_samples: int = 100,
        num_clips: Optional[int] = None, fid_kind: str = "random",
        fid_weights_path: Optional[str] = None, batch_size: int = 100,
        temperature: float = 1.0, clip_length: Optional[int] = None,
        seed: int = 0, checkpoint: str = "latest") -> dict:
  """Evaluates WORKDIR's latest (or best) checkpoint; writes the outputs and returns
  the JSON dict."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from sigma_vae_jax import checkpointing  # pylint: disable=g-import-not-at-top
  from sigma_vae_jax import evaluate  # pylint: disable=g-import-not-at-top
  from sigma_vae_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  from sigma_vae_jax import losses  # pylint: disable=g-import-not-at-top
  from sigma_vae_jax import sweeps  # pylint: disable=g-import-not-at-top

  workdir = os.path.abspath(workdir)
  output_dir = output_dir or os.path.join(workdir, NAME)
  config_path = os.path.join(workdir, checkpointing.CONFIG_FILE)
  if not os.path.exists(config_path):
    raise FileNotFoundError(f"{config_path} does not exist: {workdir} is not a training "
                            f"workdir")
  config = evaluate.config_from_json(config_path)
  if clip_length is not None:
    config.dataset.clip_length = int(clip_length)
  if fid_kind != "none":
    evaluate.fid_feature_fn(fid_kind, fid_weights_path)  # missing weights: fail first
  source = input_pipeline.get_data_source(config.dataset)
  _, trainer, state = evaluate.load_run(workdir, image_shape=source.image_shape,
                                        checkpoint=checkpoint)
  if not trainer.num_context_frames:
    raise ValueError(f"{workdir} trained the image model {config.model.name!r}; this script "
                     f"evaluates video models (e.g. svg_lp)")
  clips = source.load_split("test")
  if num_clips is not None:
    clips = clips[:num_clips]
  if len(clips) == 0:
    raise ValueError(f"no test clips of {clip_length or config.dataset.clip_length} frames "
                     f"in dataset {config.dataset.name!r} (set --clip_length)")

  fid_what = "" if fid_kind == "none" else f", FID ({fid_kind} features)"
  print(f"Evaluating {config.model.name} ({config.decoder.name}) of {workdir}, {checkpoint} "
        f"checkpoint (step {int(jax.device_get(state.step))}), on {len(clips)} test clips "
        f"of {clips.shape[1]} frames: per-frame ELBO, best-of-{num_samples} PSNR/SSIM"
        f"{fid_what}.", flush=True)
  rng = jax.random.PRNGKey(seed)
  elbo = evaluate.evaluate_elbo_per_frame(trainer, state, clips, batch_size)
  scores = evaluate.video_prediction_scores(trainer, state, clips, jax.random.fold_in(rng, 0),
                                            num_samples, batch_size, temperature)
  fid = None
  if fid_kind != "none":
    fid = evaluate.video_fid(trainer, state, clips, fid_kind, jax.random.fold_in(rng, 1),
                             fid_weights_path, batch_size, temperature)

  elbo_keys = [k for k in ("nelbo", "rec", "kl", "nelbo_discrete") if k in elbo]
  rows = {}
  for i, frame in enumerate(elbo["frame"]):
    rows[int(frame)] = {"frame": int(frame), **{k: float(elbo[k][i]) for k in elbo_keys}}
  for i, frame in enumerate(scores["frame"]):
    row = rows.setdefault(int(frame), {"frame": int(frame)})
    row.update(psnr=float(scores["psnr"][i]), ssim=float(scores["ssim"][i]))
  rows = [rows[f] for f in sorted(rows)]

  result = {
      "workdir": workdir, "step": int(jax.device_get(state.step)),
      "model": config.model.name, "decoder": config.decoder.name,
      "dataset": config.dataset.name, "num_clips": int(len(clips)),
      "clip_length": int(clips.shape[1]), "num_context_frames": elbo["num_context_frames"],
      "num_samples": num_samples, "temperature": temperature, "seed": seed,
      "nelbo_clip": elbo["nelbo_clip"],
      "bpd": float(losses.nats_to_bits_per_dim(elbo["nelbo_clip"], trainer.num_target_dims)),
      "psnr_mean": float(np.mean(scores["psnr"])), "ssim_mean": float(np.mean(scores["ssim"])),
      "fid_kind": fid_kind, "fid": fid,
      "per_frame": rows,
      "notes": ("nelbo/rec/kl in nats per clip and per target frame (frames < "
                "num_context_frames are context frames the training loss also scores); "
                "psnr (dB) and ssim are best-of-num_samples per predicted frame, averaged "
                "over clips; fid between predicted and true frames "
                "(random features: relative comparisons only)."),
  }
  os.makedirs(output_dir, exist_ok=True)
  clean = json.loads(json.dumps(result), parse_constant=lambda _: None)  # inf/NaN -> null
  with open(os.path.join(output_dir, f"{NAME}.json"), "w") as f:
    json.dump(clean, f, indent=1)
  sweeps.write_csv(os.path.join(output_dir, f"{NAME}.csv"), rows,
                   ["frame"] + elbo_keys + ["psnr", "ssim"])
  _plot(rows, result, os.path.join(output_dir, f"{NAME}.png"))
  fid_text = "" if fid is None else f", FID ({fid_kind}) {fid:.2f}"
  print(f"{config.model.name} step {result['step']}, {len(clips)} test clips: nelbo "
        f"{result['nelbo_clip']:.1f} nats/clip; best-of-{num_samples} PSNR "
        f"{result['psnr_mean']:.2f} dB, SSIM {result['ssim_mean']:.4f} (mean over "
        f"predicted frames){fid_text}. Wrote {output_dir}/{NAME}.{{json,csv,png}}",
        flush=True)
  return result


def _plot(rows, result, path):
  from sigma_vae_jax import sweeps  # pylint: disable=g-import-not-at-top
  scored = [r for r in rows if "psnr" in r]
  fig, axes = sweeps.new_figure(2)
  for ax, key, label in zip(axes, ("psnr", "ssim"), ("PSNR (dB)", "SSIM")):
    ax.plot([r["frame"] for r in scored], [r[key] for r in scored], "o-",
            label=f"best of {result['num_samples']}")
    ax.axvline(result["num_context_frames"] - 0.5, color="gray", linestyle="--",
               linewidth=0.8, label="end of context")
    ax.set_xlabel("frame (0-based)")
    ax.set_ylabel(label)
    ax.legend(fontsize=7)
  fig.suptitle(f"{result['model']} ({result['decoder']}) on {result['dataset']}, step "
               f"{result['step']}, {result['num_clips']} clips", fontsize=9)
  sweeps.save_figure(fig, path)


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
  for name in ("num_samples", "batch_size", "num_clips", "clip_length"):
    value = getattr(args, name)
    if value is not None and value < 1:
      print(f"ERROR: --{name} must be >= 1; got {value}", file=sys.stderr)
      return 1
  from sigma_vae_jax import checkpointing  # pylint: disable=g-import-not-at-top
  from sigma_vae_jax import configuration  # pylint: disable=g-import-not-at-top
  try:
    run(args.workdir, args.output_dir, args.num_samples, args.num_clips, args.fid_kind,
        args.fid_weights_path, args.batch_size, args.temperature, args.clip_length, args.seed,
        args.checkpoint)
  except (FileNotFoundError, ValueError, checkpointing.CheckpointError,
          configuration.ConfigError) as e:
    # User mistakes (wrong workdir, image model, missing weights): one line.
    print(f"ERROR: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
