"""The README's losses section: its code runs as printed, and its function table
lists every public name of `sigma_vae_jax.losses`."""

import math
import os
import re

import numpy as np

from sigma_vae_jax import losses

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _section():
  with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    text = f.read()
  start = text.index("## Using the losses in your own model")
  return text[start:text.index("\n## ", start + 1)]


def _blocks():
  return re.findall(r"```python\n(.*?)```", _section(), flags=re.S)


def test_readme_losses_code_runs():
  blocks = _blocks()
  # The last block shows the lines of examples/flax_vae that differ (a fragment).
  runnable = [b for b in blocks if not b.startswith("# Bernoulli VAE (Flax's example)")]
  assert len(runnable) == len(blocks) - 1 == 3
  namespaces = []
  for block in runnable:
    namespace = {}
    exec(compile(block, "README.md", "exec"), namespace)  # pylint: disable=exec-used
    namespaces.append(namespace)
  # The running-sigma snippet: one batch with error 0.1 gives sigma* 0.1 (debiased),
  # then the soft floor: -6 + softplus(log 0.1 + 6).
  np.testing.assert_allclose(float(namespaces[1]["log_sigma"]),
                             -6.0 + math.log1p(math.exp(math.log(0.1) + 6.0)), rtol=1e-5)
  # The Bernoulli recipe gives 8-bit bits/dim between 0 and 8 bits.
  bpd = float(losses.nats_to_bits_per_dim(namespaces[2]["bernoulli"].nelbo_discrete.mean(),
                                          784))
  assert 0.0 < bpd < 8.0


def test_readme_losses_table_lists_every_public_name_with_its_signature():
  section = _section()
  import inspect
  for name in losses.__all__:
    obj = getattr(losses, name)
    if inspect.isfunction(obj):
      params = ", ".join(
          p.name if p.default is inspect.Parameter.empty else f"{p.name}={p.default!r}"
          for p in inspect.signature(obj).parameters.values()).replace("'", '"')
      assert f"`{name}({params})`" in section, f"{name}({params})"
    elif name != "RunningSigmaState" and name != "CalibratedNelbo":
      assert f"`{name}" in section, name
  for name in ("RunningSigmaState", "CalibratedNelbo"):
    assert name in section
