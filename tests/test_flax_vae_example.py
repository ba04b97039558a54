"""examples/flax_vae (an importer's Flax VAE on the public losses API) runs a few
steps, learns, and uses nothing of the package but `sigma_vae_jax.losses`."""

import ast
import math
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "flax_vae")


def test_example_imports_only_the_public_losses():
  for name in ("train.py", "models.py"):
    with open(os.path.join(EXAMPLE, name)) as f:
      tree = ast.parse(f.read())
    ours = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.ImportFrom) and node.module.startswith("sigma_vae_jax"):
        ours.update(f"{node.module}.{a.name}" for a in node.names)
      elif isinstance(node, ast.Import):
        ours.update(a.name for a in node.names if a.name.startswith("sigma_vae_jax"))
    assert ours <= {"sigma_vae_jax.losses"}, (name, ours)


def test_example_trains_a_few_steps_and_evaluates_with_the_running_sigma():
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
             JAX_PLATFORMS="cpu")
  result = subprocess.run(
      [sys.executable, os.path.join(EXAMPLE, "train.py"), "--num_steps=40",
       "--eval_every=20", "--batch_size=32", "--hidden=64", "--latents=4",
       "--num_train=1000"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = [l for l in result.stdout.splitlines() if l.startswith("eval step")]
  assert [l.split(",")[0] for l in lines] == ["eval step: 20", "eval step: 40"], result.stdout
  values = [dict(re.findall(r"([\w/ ()-]+): (-?[\d.]+)", l.replace("eval step", "step")))
            for l in lines]
  for v in values:
    # -ELBO = rec + KL (nats per image); bits/dim of 8-bit data between 0 and 8.
    assert math.isclose(float(v[" loss"]), float(v[" rec"]) + float(v[" KLD"]), abs_tol=0.02)
    assert 0.0 < float(v[" bits/dim (8-bit)"]) < 8.0
    # The running sigma is that of a decoder far from the data early on, but above
    # the floor e^-6 and below the unit Gaussian's.
    assert math.exp(-6) < float(v[" sigma"]) < 1.0
  # It learns: the evaluation bound improves between the two evaluations.
  assert float(values[1][" loss"]) < float(values[0][" loss"])
