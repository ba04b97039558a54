r"""PyTorch CPU baseline: train-step throughput of the paper's small conv sigma-VAE.

  pip install torch          # torch is NOT a dependency of sigma_vae_jax
  python scripts/benchmark_pytorch.py [--batch_size=128] [--steps=20] [--warmup=5]

Same architecture as the authors' PyTorch release (orybkin/sigma-vae-pytorch) for
28x28x3 inputs, latent 20, Adam(lr=1e-3), optimal-sigma Gaussian loss (one scalar
sigma per batch, sigma^2 = MSE over the whole batch). Times full train steps
(zero_grad, forward, backward, Adam step) on a fixed random uniform batch:
`--warmup` untimed steps, then the median of `--steps` timed steps, with
torch.set_num_threads(os.cpu_count()). Prints ONE JSON line on stdout:
{"framework": "pytorch", "torch_version", "threads", "images_per_sec", "step_ms",
"step_ms_min"}. Compare with scripts/benchmark.py (JAX) run at the same shape and
batch size, close in time, on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time


def _import_torch():
  """torch and torch.nn, imported only when benchmarking (so --help works without)."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
    from torch import nn  # pylint: disable=g-import-not-at-top
  except ImportError:
    sys.exit("ERROR: benchmark_pytorch.py needs PyTorch, which is not a dependency of "
             "sigma_vae_jax. Install a CPU build, e.g.: pip install torch "
             "(or: pip install torch --index-url https://download.pytorch.org/whl/cpu)")
  return torch, nn


def conv_sigma_vae(channels: int = 3, z_dim: int = 20, filters: int = 32):
  """The small conv VAE of the sigma-VAE paper (28x28 inputs), a torch nn.Module."""
  torch, nn = _import_torch()

  class ConvSigmaVAE(nn.Module):
    """Small conv VAE of the sigma-VAE paper (28x28 inputs)."""

    def __init__(self, channels: int = 3, z_dim: int = 20, filters: int = 32):
      super().__init__()
      f = filters
      self.encoder = nn.Sequential(
          nn.Conv2d(channels, f, 3, 1, 1), nn.ReLU(),
          nn.Conv2d(f, 2 * f, 4, 2, 1), nn.ReLU(),
          nn.Conv2d(2 * f, 4 * f, 5, 2, 2), nn.ReLU(),
          nn.Flatten())
      self.fc_mu = nn.Linear(4 * f * 7 * 7, z_dim)
      self.fc_logvar = nn.Linear(4 * f * 7 * 7, z_dim)
      self.fc_dec = nn.Linear(z_dim, 4 * f * 7 * 7)
      self.decoder = nn.Sequential(
          nn.ConvTranspose2d(4 * f, 2 * f, 6, 2, 2), nn.ReLU(),
          nn.ConvTranspose2d(2 * f, f, 6, 2, 2), nn.ReLU(),
          nn.Conv2d(f, channels, 5, 1, 2), nn.Sigmoid())
      self.f = f

    def decode(self, z):
      h = torch.relu(self.fc_dec(z)).view(-1, 4 * self.f, 7, 7)
      return self.decoder(h)

    def loss(self, x):
      h = self.encoder(x)
      mu, logvar = self.fc_mu(h), self.fc_logvar(h)
      z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
      x_hat = self.decode(z)
      b = x.shape[0]
      log_sigma = 0.5 * torch.log(((x - x_hat) ** 2).mean())
      rec = torch.sum(0.5 * ((x - x_hat) / torch.exp(log_sigma)) ** 2 + log_sigma
                      + 0.5 * math.log(2 * math.pi)) / b
      kl = torch.sum(-0.5 * (1 + logvar - mu ** 2 - torch.exp(logvar))) / b
      return rec + kl

  return ConvSigmaVAE(channels=channels, z_dim=z_dim, filters=filters)


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--batch_size", type=int, default=128, help="images per step")
  p.add_argument("--image_shape", default="28,28,3", help="H,W,C (H=W=28 only)")
  p.add_argument("--steps", type=int, default=20, help="timed train steps (median)")
  p.add_argument("--warmup", type=int, default=5, help="untimed steps first")
  p.add_argument("--threads", type=int, default=os.cpu_count(),
                 help="torch.set_num_threads (default: all cores)")
  p.add_argument("--seed", type=int, default=0, help="torch.manual_seed")
  a = p.parse_args()
  h, w, c = (int(v) for v in a.image_shape.split(","))
  if (h, w) != (28, 28):
    p.error("only 28x28 images are supported (the encoder flattens 7x7 maps)")

  torch, _ = _import_torch()
  torch.set_num_threads(a.threads)
  torch.manual_seed(a.seed)
  model = conv_sigma_vae(channels=c)
  opt = torch.optim.Adam(model.parameters(), lr=1e-3)
  x = torch.rand(a.batch_size, c, h, w, dtype=torch.float32)

  def step():
    opt.zero_grad()
    loss = model.loss(x)
    loss.backward()
    opt.step()
    return loss

  for _ in range(a.warmup):
    step()
  times = []
  for _ in range(a.steps):
    t0 = time.perf_counter()
    loss = step()
    times.append(time.perf_counter() - t0)
  if not math.isfinite(loss.item()):
    sys.exit(f"non-finite loss {loss.item()}")
  med = statistics.median(times)
  print(json.dumps({
      "framework": "pytorch",
      "torch_version": torch.__version__,
      "threads": torch.get_num_threads(),
      "batch_size": a.batch_size,
      "images_per_sec": round(a.batch_size / med, 1),
      "step_ms": round(1e3 * med, 3),
      "step_ms_min": round(1e3 * min(times), 3),
  }))


if __name__ == "__main__":
  main()
