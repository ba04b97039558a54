"""Reading the user's own files: .npy/.npz arrays and folders of image files.

`load_numpy_images` (uint8 [N, H, W, C]), `load_numpy_videos` (uint8 [N, T, H, W, C])
and `load_image_folder` (uint8 [N, H, W, C]) read `dataset.path` (or
`dataset.test_path`); every file that cannot be used raises ValueError (a missing one
FileNotFoundError) naming the config field, the file and the expected form.
"""

from __future__ import annotations

import os
import zipfile

import numpy as np

from sigma_vae_jax.data import dataset_fields

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def require_path(cfg, kind: str) -> str:
  """`dataset.path` of dataset.name=`kind`, user-expanded; raises if empty or missing."""
  path = dataset_fields.get(cfg, "path", "")
  if not path:
    what = {"numpy": "a .npy/.npz file with a uint8 array [N, H, W] or [N, H, W, C]",
            "numpy_videos": "a .npy/.npz file of uint8 videos [N, T, H, W, C]",
            }.get(kind, "a folder of image files (png/jpg)")
    raise ValueError(f"dataset.name={kind!r} needs `dataset.path`: {what}; it is empty.")
  return existing_path(path, "dataset.path")


def existing_path(path, field: str) -> str:
  """`path` user-expanded; FileNotFoundError naming `field` if it does not exist."""
  path = os.path.expanduser(os.fspath(path))
  if not os.path.exists(path):
    raise FileNotFoundError(f"`{field}`={path!r} does not exist.")
  return path


def _load_array(path: str, key: str, form: str, field: str = "dataset.path") -> np.ndarray:
  """The array of a .npy file, or of a .npz file (`key`, else its first array).

  A file numpy cannot read (truncated, not .npy/.npz, a pickled object array) raises
  ValueError naming it and the expected form.
  """
  try:
    with open(path, "rb") as f:
      loaded = np.load(f, allow_pickle=False)
      if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
          if not loaded.files:
            raise ValueError(f"`{field}`={path!r}: the .npz file holds no arrays.")
          return loaded[key if key in loaded.files else loaded.files[0]]
      return loaded
  except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
    if str(e).startswith(f"`{field}`"):
      raise
    raise ValueError(
        f"`{field}`={path!r} is not a readable .npy/.npz file of {form} "
        f"({type(e).__name__}: {_one_line(e)}).") from e


def _one_line(text) -> str:
  return " ".join(str(text).split())


def load_numpy_images(path: str, field: str = "dataset.path") -> np.ndarray:
  """uint8 [N, H, W, C] from a .npy file or a .npz file (key 'images', else the first);
  errors name `field` (the config field the path came from)."""
  if os.path.isdir(path):
    raise ValueError(f"`{field}`={path!r} is a folder; dataset.name='numpy' needs a "
                     f".npy/.npz file (use dataset.name='folder' for image folders).")
  images = _load_array(path, "images", "a uint8 array [N, H, W] or [N, H, W, C]", field)
  if images.dtype != np.uint8:
    raise ValueError(f"`{field}`={path!r}: expected a uint8 array [N, H, W] or "
                     f"[N, H, W, C]; got dtype {images.dtype} (convert with "
                     f"np.clip(np.round(x * 255), 0, 255).astype(np.uint8) for floats in "
                     f"[0, 1]).")
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim == 5:
    raise ValueError(f"`{field}`={path!r}: expected a uint8 array [N, H, W] or "
                     f"[N, H, W, C]; got shape {images.shape}, which looks like videos "
                     f"[N, T, H, W, C]: videos take dataset.name=numpy_videos.")
  if images.ndim != 4:
    raise ValueError(f"`{field}`={path!r}: expected a uint8 array [N, H, W] or "
                     f"[N, H, W, C]; got shape {images.shape}.")
  return np.ascontiguousarray(images)


def load_image_folder(path: str, field: str = "dataset.path") -> np.ndarray:
  """uint8 [N, H, W, C] from the image files under `path` (sorted, recursive); errors
  name `field` (the config field the path came from).

  Grayscale images stay 1-channel; colour (and palette) images become RGB (alpha is
  dropped); if the folder mixes both, grayscale images are converted to RGB. All images
  must have the same size.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top

  if not os.path.isdir(path):
    raise ValueError(f"`{field}`={path!r} is not a folder; dataset.name='folder' "
                     f"needs a folder of image files.")
  files = sorted(
      os.path.join(root, f) for root, _, names in os.walk(path) for f in names
      if f.lower().endswith(IMAGE_EXTENSIONS))
  if not files:
    raise ValueError(f"`{field}`={path!r}: no image files "
                     f"({', '.join(IMAGE_EXTENSIONS)}) found.")
  images, size0 = [], None
  for f in files:
    try:
      with Image.open(f) as im:
        gray = im.mode in ("1", "L", "LA", "I", "I;16", "F")
        image = np.asarray(im.convert("L" if gray else "RGB"), np.uint8)
    except Exception as e:  # pylint: disable=broad-except
      # PIL raises OSError (truncated), UnidentifiedImageError, SyntaxError (broken
      # PNG chunks), DecompressionBombError...: all mean this file cannot be used.
      raise ValueError(
          f"`{field}`: cannot read the image file {f} ({type(e).__name__}: "
          f"{_one_line(e)}); fix or remove it.") from e
    size = image.shape[:2]
    if size0 is None:
      size0 = (size, f)
    elif size != size0[0]:
      raise ValueError(
          f"`{field}`: image {f} is {size[0]}x{size[1]} (HxW) but "
          f"{size0[1]} is {size0[0][0]}x{size0[0][1]}; all images must have the same "
          f"size.")
    images.append(image)
  if any(a.ndim == 3 for a in images):
    images = [np.repeat(a[..., None], 3, axis=-1) if a.ndim == 2 else a for a in images]
  else:
    images = [a[..., None] for a in images]
  return np.stack(images)



def load_numpy_videos(path: str, field: str = "dataset.path") -> np.ndarray:
  """uint8 videos [N, T, H, W, C] (or [N, T, H, W]) from a .npy / .npz file; errors
  name `field` (the config field the path came from)."""
  if os.path.isdir(path):
    raise ValueError(f"`{field}`={path!r} is a folder; dataset.name='numpy_videos' "
                     f"needs a .npy/.npz file of uint8 videos [N, T, H, W, C].")
  videos = _load_array(path, "videos", "uint8 videos [N, T, H, W, C]", field)
  if videos.dtype != np.uint8 or videos.ndim not in (4, 5):
    raise ValueError(f"`{field}`={path!r}: expected uint8 videos [N, T, H, W, C] "
                     f"or [N, T, H, W]; got {videos.dtype} of shape {videos.shape}.")
  if videos.ndim == 4:
    videos = videos[..., None]
  return np.ascontiguousarray(videos)
