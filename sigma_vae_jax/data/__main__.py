"""`python -m sigma_vae_jax.data NAME... [--data_dir DIR]`: prepares datasets ahead of a run.

Downloads and prepares TFDS datasets into --data_dir (e.g. on a machine with network
access); numpy/folder files are checked and their split shown. Prints each dataset's
`DataSource.description()`; a dataset that cannot be read (missing or corrupt file,
failed download) ends with one ERROR line, exit 1.

The command-line layer of the data package: `--help` and usage errors are answered
before TensorFlow is imported (it takes seconds), and TensorFlow's logging defaults are
set before it is (`process_setup.set_tensorflow_env_defaults`). The library below raises errors;
this module turns the expected ones into one line (`cli.fail`).
"""

from __future__ import annotations

import argparse

from sigma_vae_jax import cli
from sigma_vae_jax import process_setup
from sigma_vae_jax.data.dataset_fields import DATASETS

PROGRAM = "python -m sigma_vae_jax.data"


def _argument_parser() -> argparse.ArgumentParser:
  """The command line of `python -m sigma_vae_jax.data` (see `main`)."""
  parser = argparse.ArgumentParser(
      prog=PROGRAM,
      description="Download and prepare datasets ahead of training (TFDS datasets into "
                  "--data_dir; numpy/folder files are checked and their split shown), "
                  "e.g. on a machine with network access.")
  parser.add_argument("names", nargs="+", choices=DATASETS, metavar="NAME",
                      help=f"one or more of: {', '.join(DATASETS)}")
  parser.add_argument("--data_dir", default=None,
                      help="TFDS data_dir (dataset.data_dir; default ~/tensorflow_datasets)")
  parser.add_argument("--manual_dir", default=None,
                      help="folder of manually downloaded files (dataset.manual_dir)")
  parser.add_argument("--path", default="",
                      help="dataset.path (numpy, folder, numpy_videos)")
  return parser


def main(argv=None) -> None:
  """Prepares datasets ahead of a run: `python -m sigma_vae_jax.data NAME...`.

  Prints each dataset's `DataSource.description()`; a dataset that cannot be read
  (missing or corrupt file, failed download) ends with one ERROR line, exit 1.
  """
  args = _argument_parser().parse_args(argv)
  # Imports TensorFlow: after the command line is known to be valid.
  from sigma_vae_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  for name in args.names:
    try:
      source = input_pipeline.get_data_source(
          {"name": name, "data_dir": args.data_dir, "manual_dir": args.manual_dir,
           "path": args.path})
    except (ValueError, FileNotFoundError, PermissionError) as e:
      cli.fail(f"{name}: {e}")
    print(source.description(), flush=True)


if __name__ == "__main__":
  # --help and usage errors before the imports of `main` (TensorFlow takes seconds).
  _argument_parser().parse_args()
  process_setup.set_tensorflow_env_defaults()  # before anything imports TensorFlow
  cli.require_train_extra()
  main()
