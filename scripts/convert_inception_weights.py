r"""Converts pytorch-fid's InceptionV3 weights to the .npz that
`sigma_vae_jax.evaluation.inception.load_params` reads.

  python scripts/convert_inception_weights.py \
      --input pt_inception-2015-12-05-6726825d.pth \
      --output ~/.cache/sigma_vae_jax/pt_inception.npz

The input is the state_dict pytorch-fid downloads from
https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth
(torch is needed only here, imported lazily). Mapping (`convert_state_dict`, pure numpy):

  <m>.conv.weight      [O,I,kh,kw] -> params/<m>/conv/kernel [kh,kw,I,O]
  <m>.bn.weight        -> params/<m>/bn/scale
  <m>.bn.bias          -> params/<m>/bn/bias
  <m>.bn.running_mean  -> batch_stats/<m>/bn/mean
  <m>.bn.running_var   -> batch_stats/<m>/bn/var

where <m> is the torch module path with '.' -> '/' (e.g. Mixed_5b.branch1x1 ->
Mixed_5b/branch1x1). BatchNorm is not folded (the Flax model applies it with
eps=1e-3 and the running statistics). `fc.*` (the 1008-way classifier),
`AuxLogits.*` and `*.num_batches_tracked` are dropped; any other key is an error.
Afterwards the file is validated by loading it into the Flax model (unless
--no-validate).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, Mapping

import numpy as np

_BN_MAP = {
    "weight": ("params", "scale"),
    "bias": ("params", "bias"),
    "running_mean": ("batch_stats", "mean"),
    "running_var": ("batch_stats", "var"),
}
_IGNORED_PREFIXES = ("fc.", "AuxLogits.")


def convert_state_dict(state_dict: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
  """torch state_dict-like {name: array} -> flat {'params/...': array} for the .npz.

  Arrays are converted with np.asarray and cast to float32. A leading 'module.'
  (DataParallel) is stripped.
  """
  out: Dict[str, np.ndarray] = {}
  for name, value in state_dict.items():
    if name.startswith("module."):
      name = name[len("module."):]
    if name.startswith(_IGNORED_PREFIXES) or name.endswith("num_batches_tracked"):
      continue
    parts = name.split(".")
    if len(parts) < 3 or parts[-2] not in ("conv", "bn"):
      raise ValueError(f"unexpected state_dict key {name!r}")
    module = "/".join(parts[:-2])
    layer, leaf = parts[-2], parts[-1]
    array = np.asarray(value, dtype=np.float32)
    if layer == "conv":
      if leaf != "weight":
        raise ValueError(f"unexpected conv parameter {name!r} (BasicConv2d convs have no bias)")
      if array.ndim != 4:
        raise ValueError(f"{name!r}: expected a 4-D OIHW conv weight, got shape {array.shape}")
      out[f"params/{module}/conv/kernel"] = np.ascontiguousarray(array.transpose(2, 3, 1, 0))
    else:
      if leaf not in _BN_MAP:
        raise ValueError(f"unexpected batchnorm parameter {name!r}")
      if array.ndim != 1:
        raise ValueError(f"{name!r}: expected a 1-D batchnorm vector, got shape {array.shape}")
      collection, flax_leaf = _BN_MAP[leaf]
      out[f"{collection}/{module}/bn/{flax_leaf}"] = array
  return out


def load_torch_state_dict(path: str) -> Dict[str, np.ndarray]:
  """Reads a .pth state_dict with torch (imported here only) into numpy arrays."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise SystemExit("converting the .pth needs torch: pip install torch (CPU build is enough)") from e
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except TypeError:  # torch < 1.13 has no weights_only.
    obj = torch.load(path, map_location="cpu")
  if isinstance(obj, dict) and "state_dict" in obj and not any(k.endswith(".weight") for k in obj):
    obj = obj["state_dict"]
  if hasattr(obj, "state_dict") and not isinstance(obj, dict):
    obj = obj.state_dict()
  return {k: v.detach().cpu().numpy() for k, v in obj.items()}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--input", required=True, help="pt_inception-2015-12-05-6726825d.pth")
  parser.add_argument("--output", required=True, help="output .npz, e.g. ~/.cache/sigma_vae_jax/pt_inception.npz")
  parser.add_argument("--no-validate", action="store_true",
                      help="skip loading the result into the Flax model")
  args = parser.parse_args(argv)

  flat = convert_state_dict(load_torch_state_dict(os.path.expanduser(args.input)))
  output = os.path.expanduser(args.output)
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  np.savez(output, **flat)
  # np.savez appends .npz when missing.
  written = output if output.endswith(".npz") else output + ".npz"
  print(f"wrote {len(flat)} arrays to {written}")

  if not args.no_validate:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from sigma_vae_jax.evaluation import inception  # pylint: disable=g-import-not-at-top

    inception.load_params(written, validate=True)
    print("validated against sigma_vae_jax.evaluation.inception.InceptionV3FID")
  return 0


if __name__ == "__main__":
  sys.exit(main())
