"""Where results go: TensorBoard (clu writers), WORKDIR/metrics.jsonl, console, PNGs.

With several processes (multi-host) only process 0 writes files: every process may
call these functions (the computations behind them are collective), the others only
compute and print.
"""

from __future__ import annotations

import glob
import json
import math
import os
import time
from typing import Mapping, Optional

from clu import metric_writers
import jax
import numpy as np
from PIL import Image

from sigma_vae_jax.training import progress

METRICS_FILE = "metrics.jsonl"


class Reporter:
  """Writes scalar metrics and image grids to TensorBoard and JSON lines; prints
  progress.

  `start_step`: the step training (re)starts from. Rows and TensorBoard events past it
  were written by a run that was killed before its next checkpoint; they are dropped,
  so that the resumed run's rows follow on without repeating steps.
  Only process 0 writes files (multi-host); every process logs to the console.
  """

  def __init__(self, workdir: str, num_train_steps: int, start_step: int = 0):
    self.is_chief = jax.process_index() == 0
    self.jsonl_path = os.path.join(workdir, METRICS_FILE)
    if self.is_chief:
      dropped = drop_rows_after(self.jsonl_path, start_step)
      dropped += drop_events_after(workdir, start_step)
      if dropped:
        print(f"Dropped {dropped} metric rows/events past step {start_step} written "
              f"by the interrupted run.", flush=True)
    self.writer = metric_writers.create_default_writer(
        workdir, just_logging=not self.is_chief)
    self.num_train_steps = num_train_steps
    self._last_time: Optional[float] = None
    self._last_step: Optional[int] = None

  def start_clock(self, step: int) -> None:
    """Marks the time at `step` (e.g. after the first, compiling call) so that the
    first progress line already has a rate and an ETA."""
    self._last_time, self._last_step = time.time(), step

  def write(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
    metrics = {k: float(v) for k, v in metrics.items()}
    self.writer.write_scalars(step, {f"{split}/{k}": v for k, v in metrics.items()})
    if self.is_chief:
      with open(self.jsonl_path, "a") as f:
        f.write(json.dumps({"step": int(step), "split": split, **metrics}) + "\n")

  def progress(self, step: int, metrics: Mapping[str, float]) -> float:
    """Prints steps/s, ETA, loss and sigma; returns steps/s (0 on the first call)."""
    now = time.time()
    rate = 0.0
    if self._last_time is not None and step > self._last_step:
      rate = (step - self._last_step) / max(now - self._last_time, 1e-9)
    self._last_time, self._last_step = now, step
    parts = [f"step {step}/{self.num_train_steps}"]
    if rate > 0:
      eta = (self.num_train_steps - step) / rate
      parts += [f"{rate:.2f} steps/s", f"ETA {progress.format_seconds(eta)}"]
    parts.append(f"loss {metrics['loss']:.2f}")
    parts.append(f"nelbo {metrics['nelbo']:.2f}")
    if "log_sigma" in metrics:
      parts.append(f"sigma {math.exp(metrics['log_sigma']):.4f}")
    print(" | ".join(parts), flush=True)
    return rate

  def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
    """uint8 grids [H, W, 3] (see `image_grid`) as TensorBoard image summaries."""
    self.writer.write_images(step, {k: np.asarray(v)[None] for k, v in images.items()})

  def flush(self) -> None:
    self.writer.flush()

  def close(self) -> None:
    self.writer.close()


def drop_rows_after(path: str, step: int) -> int:
  """Rewrites the metrics.jsonl at `path` without rows past `step` (atomically);
  returns how many were dropped. A torn last line (killed mid-write) is dropped too."""
  if not os.path.exists(path):
    return 0
  kept, dropped = [], 0
  with open(path) as f:
    for line in f:
      try:
        row = json.loads(line)
      except json.JSONDecodeError:
        dropped += 1
        continue
      if row.get("step", 0) > step:
        dropped += 1
      else:
        kept.append(line if line.endswith("\n") else line + "\n")
  if dropped:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      f.writelines(kept)
    os.replace(tmp, path)
  return dropped


def drop_events_after(logdir: str, step: int) -> int:
  """Rewrites the TensorBoard event files in `logdir` without events past `step`;
  returns how many were dropped.

  Event files are TFRecord files of `Event` protos. TensorBoard would otherwise show
  the killed run's points past `step` beside the resumed run's (its "orphaned data"
  purging needs a session-start event that tf.summary no longer writes).
  """
  paths = sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*")))
  if not paths:
    return 0
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (already loaded by clu)
  from tensorboard.compat.proto import event_pb2  # pylint: disable=g-import-not-at-top
  total = 0
  for path in paths:
    kept, dropped = [], 0
    try:
      for record in tf.data.TFRecordDataset(path):
        raw = record.numpy()
        if event_pb2.Event.FromString(raw).step > step:
          dropped += 1
        else:
          kept.append(raw)
    except tf.errors.DataLossError:  # a torn last record of a killed writer
      dropped += 1
    if dropped:
      tmp = path + ".tmp"
      with tf.io.TFRecordWriter(tmp) as writer:
        for raw in kept:
          writer.write(raw)
      os.replace(tmp, path)
      total += dropped
  return total


def image_grid(images: np.ndarray, columns: int = 8, pad: int = 1) -> np.ndarray:
  """[N, H, W, C] floats in [0, 1] -> one uint8 image [rows*(H+pad)+pad, ..., 3]."""
  images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
  if images.shape[-1] == 1:
    images = np.repeat(images, 3, axis=-1)
  n, h, w, c = images.shape
  rows = math.ceil(n / columns)
  grid = np.ones((rows * (h + pad) + pad, columns * (w + pad) + pad, c), np.float32)
  for i in range(n):
    r, col = divmod(i, columns)
    grid[pad + r * (h + pad):pad + r * (h + pad) + h,
         pad + col * (w + pad):pad + col * (w + pad) + w] = images[i]
  return (grid * 255 + 0.5).astype(np.uint8)


def save_image_grid(path: str, images: np.ndarray, columns: int = 8) -> np.ndarray:
  """Writes `image_grid(images, columns)` as a PNG at `path` (process 0 only) and
  returns it."""
  grid = image_grid(images, columns)
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(grid).save(path)
  return grid


def save_video_strips(png_path: str, gif_path: str, truth: np.ndarray,
                      recons: np.ndarray, samples: np.ndarray, num_context: int,
                      frame_ms: int = 200) -> np.ndarray:
  """PNG strips and a GIF of video predictions (floats in [0, 1]).

  truth [N, T, H, W, C]; recons [N, T_r, ...] (the last T_r frames); samples
  [N, T_s, ...] generated after the first `num_context` frames. The PNG has three rows
  per clip: context | ground truth, context | reconstructions, context | samples
  (missing frames blank). The GIF plays the sampled clips (context, then samples)
  side by side with the ground truth. Returns the PNG's uint8 grid. Files are
  written by process 0 only.
  """
  n, t = truth.shape[:2]
  blank = np.ones_like(truth[:, :1])

  def row(frames, start):
    before = [truth[:, :min(start, num_context)]] + [blank] * max(0, start - num_context)
    out = np.concatenate(before + [frames], axis=1)[:, :t]
    if out.shape[1] < t:
      out = np.concatenate([out] + [blank] * (t - out.shape[1]), axis=1)
    return out

  rows = np.stack([truth, row(recons, t - recons.shape[1]), row(samples, num_context)], 1)
  grid = save_image_grid(png_path, rows.reshape((-1,) + truth.shape[2:]), columns=t)
  if jax.process_index() != 0:
    return grid
  generated = np.concatenate([truth[:, :num_context], samples], axis=1)
  length = generated.shape[1]
  frames = []
  for i in range(length):
    gt = truth[:, min(i, t - 1)]
    frames.append(Image.fromarray(image_grid(np.concatenate([gt, generated[:, i]]),
                                             columns=n)))
  frames[0].save(gif_path, save_all=True, append_images=frames[1:], duration=frame_ms,
                 loop=0)
  return grid
