"""The API reference (docs/build_api.py, pdoc) builds without warnings and lists every
public name of the losses."""

import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# pdoc comes with the test extra (pip install -e ".[test]"); nothing is installed here.


def test_api_reference_builds_without_warnings(tmp_path):
  out = tmp_path / "api"
  result = subprocess.run([sys.executable, os.path.join(ROOT, "docs", "build_api.py"),
                           f"--output_dir={out}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "ERROR" not in result.stderr and "Warn" not in result.stderr, result.stderr[-3000:]
  html = (out / "sigma_vae_jax" / "losses.html").read_text()
  from sigma_vae_jax import losses
  for name in losses.__all__:
    assert f'id="{name}"' in html, name
  assert (out / "sigma_vae_jax" / "likelihoods.html").exists()


def test_a_warning_fails_the_build(tmp_path):
  # An annotation pdoc cannot resolve: the build must say so and fail.
  (tmp_path / "bad_module.py").write_text(textwrap.dedent('''
      """A module with an unresolvable annotation."""
      from __future__ import annotations
      from typing import NamedTuple

      class Terms(NamedTuple):
        """Terms."""
        loss: NotDefinedAnywhere
      '''))
  code = ("import pathlib, sys\n"
          f"sys.path.insert(0, {str(tmp_path)!r})\n"
          f"sys.path.insert(0, {os.path.join(ROOT, 'docs')!r})\n"
          "import build_api\n"
          f"problems = build_api.build(pathlib.Path({str(tmp_path / 'out')!r}), ['bad_module'])\n"
          "print(len(problems))\n")
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert int(result.stdout.strip().splitlines()[-1]) > 0
