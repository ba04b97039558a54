r"""Builds the API reference of the importable library from its docstrings (pdoc).

  pip install -e ".[docs]"
  python docs/build_api.py                 # -> docs/api/index.html (not committed)
  python docs/build_api.py --output_dir=DIR

Documents the modules meant for use in other JAX projects (`MODULES`): the losses
(pure JAX; one page, the names in `losses.__all__`) and the observation models (the
registry's page, and one page per public submodule: `base`, `continuous`, `discrete`).
Any warning pdoc raises (an annotation it cannot resolve, a docstring it cannot
convert, an import that fails) stops the build with exit code 1, so the reference
never silently loses an entry.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import warnings

ROOT = pathlib.Path(__file__).resolve().parent.parent
MODULES = ("sigma_vae_jax.losses", "sigma_vae_jax.likelihoods")


def build(output_dir: pathlib.Path, modules=MODULES) -> list[str]:
  """Writes the HTML reference to output_dir; returns pdoc's warnings (empty: clean)."""
  if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
  import pdoc  # pylint: disable=g-import-not-at-top
  import pdoc.render  # pylint: disable=g-import-not-at-top
  pdoc.render.configure(docformat="google", show_source=True)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    pdoc.pdoc(*modules, output_directory=output_dir)
  return [f"{w.category.__name__}: {w.message}" for w in caught]


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--output_dir", default=str(ROOT / "docs" / "api"),
                      help="where to write the HTML (default docs/api)")
  args = parser.parse_args(argv)
  problems = build(pathlib.Path(args.output_dir))
  for problem in problems:
    print(f"ERROR: {problem}", file=sys.stderr)
  if problems:
    return 1
  print(f"API reference: {os.path.join(args.output_dir, 'index.html')}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
