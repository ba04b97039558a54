"""XLA compiler options for jitting this package's train and evaluation steps.

XLA:CPU (jaxlib 0.10) hands convolutions to its YNNPACK library by default. For the
conv VAE its own (Eigen) convolutions make a train step ~1.25x faster
(scripts/benchmark.py; README "Performance"), with YNNPACK kept for elementwise and
reduction fusions. Only compilation changes, never the computed function.
"""

from __future__ import annotations

import functools
import os
from typing import Optional

import jax
import jax.numpy as jnp

TUNED_CPU_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type":
        "LIBRARY_FUSION_TYPE_ELTWISE,LIBRARY_FUSION_TYPE_REDUCE",
}


@functools.lru_cache(maxsize=None)
def compiler_options(platform: str, tuned: bool = True) -> Optional[dict]:
  """XLA options for jitting this package's steps on `platform` (None: XLA's own).

  On CPU with `tuned`, `TUNED_CPU_OPTIONS`, unless XLA_FLAGS already sets them
  (the user's choice wins) or this XLA does not know them (its defaults then).
  """
  if platform != "cpu" or not tuned:
    return None
  user_flags = os.environ.get("XLA_FLAGS", "")
  if any(name in user_flags for name in TUNED_CPU_OPTIONS):
    return None
  try:
    jax.jit(lambda x: x + 1, compiler_options=TUNED_CPU_OPTIONS).lower(
        jnp.zeros(2)).compile()
  except Exception:  # pylint: disable=broad-except
    return None
  return dict(TUNED_CPU_OPTIONS)
