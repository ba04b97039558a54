"""`frey_face`: Brendan Frey's face images (Roweis' `frey_rawface.mat`), 1965 x 28x20x1.

The source file holds one uint8 array `ff` of shape [560, 1965]: one column per image,
each column a 28x20 grayscale image in row-major order (`ff.T.reshape(-1, 28, 20)`).

On first use the builder takes the file from TFDS's manual directory when it is there
(`<data_dir>/downloads/manual/frey_rawface.mat` by default), and otherwise downloads it
from `URL`. The dataset has no standard test split: the builder writes one `train`
split with all 1965 images in source order (plus each image's `index`), and
`input_pipeline` holds out a fixed, seeded fraction (`dataset.test_fraction`).
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds

URL = "https://cs.nyu.edu/~roweis/data/frey_rawface.mat"
FILENAME = "frey_rawface.mat"
IMAGE_SHAPE = (28, 20, 1)
NUM_IMAGES = 1965

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Download {URL} and put it, named `{FILENAME}`, in TFDS's manual directory:
`<data_dir>/downloads/manual/{FILENAME}` (data_dir: `dataset.data_dir`, by default
~/tensorflow_datasets), or in the folder given by `dataset.manual_dir`.
"""


def load_mat(path) -> np.ndarray:
  """Reads `frey_rawface.mat`: uint8 [1965, 28, 20, 1] images in source order."""
  import scipy.io  # pylint: disable=g-import-not-at-top

  with open(path, "rb") as f:
    mat = scipy.io.loadmat(f)
  if "ff" not in mat:
    raise ValueError(f"{path} has no array `ff`; is it Roweis' {FILENAME}?")
  ff = np.asarray(mat["ff"])
  h, w, _ = IMAGE_SHAPE
  if ff.ndim != 2 or ff.shape[0] != h * w:
    raise ValueError(
        f"{path}: expected `ff` of shape [{h * w}, num_images] (one {h}x{w} image per "
        f"column), got {ff.shape}.")
  return np.ascontiguousarray(ff.T.reshape(-1, h, w, 1)).astype(np.uint8)


class FreyFace(tfds.core.GeneratorBasedBuilder):
  """Frey Face: 1965 grayscale 28x20 face images (one `train` split)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS

  def __init__(self, *, allow_download: bool = True, **kwargs):
    """allow_download=False: only take the file from the manual directory."""
    self._allow_download = allow_download
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=IMAGE_SHAPE),
            # Column of the image in the source array.
            "index": tfds.features.Scalar(dtype=np.int64),
        }),
        homepage="https://cs.nyu.edu/~roweis/data.html",
    )

  def _split_generators(self, dl_manager):
    path = find_or_download(dl_manager, allow_download=self._allow_download)
    return {"train": self._generate_examples(path)}

  def _generate_examples(self, path):
    images = load_mat(path)
    for i, image in enumerate(images):
      yield i, {"image": image, "index": i}


def manual_path(dl_manager) -> str:
  # `dl_manager.manual_dir` raises when the folder is missing or empty.
  return os.path.join(os.fspath(dl_manager._manual_dir), FILENAME)  # pylint: disable=protected-access


def find_or_download(dl_manager, *, allow_download: bool = True):
  """The manual file when present, else a download; a clear error if both fail."""
  path = manual_path(dl_manager)
  if os.path.exists(path):
    return path
  if not allow_download:
    raise FileNotFoundError(
        f"frey_face: {path} is missing and downloading is disabled "
        f"(`dataset.download=False`).\nPut the file at {path}\n"
        f"{MANUAL_DOWNLOAD_INSTRUCTIONS}")
  try:
    return dl_manager.download(URL)
  except Exception as e:  # pylint: disable=broad-except
    raise FileNotFoundError(
        f"frey_face: could not download {URL} ({type(e).__name__}: {e}).\n"
        f"Put the file at {path}\n{MANUAL_DOWNLOAD_INSTRUCTIONS}") from e
