"""Tests of the TFDS builders of this package: synthetic_shapes and frey_face (offline)."""

import os
import time
from unittest import mock

import ml_collections
import numpy as np
import pytest
import scipy.io
import tensorflow_datasets as tfds

from sigma_vae_jax.data import input_pipeline
from sigma_vae_jax.data import splits
from sigma_vae_jax.data.datasets import frey_face
from sigma_vae_jax.data.datasets import synthetic_shapes

def _build_shapes(data_dir, max_examples_per_split=None):
  builder = synthetic_shapes.SyntheticShapes(data_dir=os.fspath(data_dir))
  start = time.perf_counter()
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      try_download_gcs=False, max_examples_per_split=max_examples_per_split))
  seconds = time.perf_counter() - start
  arrays = {s: tfds.as_numpy(builder.as_dataset(split=s, batch_size=-1))
            for s in ("train", "test")}
  return builder, arrays, seconds


@pytest.fixture(scope="module")
def shapes_build(tmp_path_factory):
  return _build_shapes(tmp_path_factory.mktemp("tfds_a"))


def test_synthetic_shapes_prepares_with_right_shapes(shapes_build):
  builder, arrays, seconds = shapes_build
  print(f"\nsynthetic_shapes: prepared {sum(synthetic_shapes.NUM_EXAMPLES.values())} "
        f"examples in {seconds:.2f} s")
  for split, n in synthetic_shapes.NUM_EXAMPLES.items():
    assert builder.info.splits[split].num_examples == n
    images = arrays[split]["image"]
    assert images.shape == (n, 32, 32, 3) and images.dtype == np.uint8
    assert set(np.unique(arrays[split]["label"])) == {0, 1, 2}
  # Varied images: no two alike, and a real spread of pixel values.
  train = arrays["train"]["image"]
  assert len({im.tobytes() for im in train[:500]}) == 500
  assert train.std() > 30


def test_synthetic_shapes_deterministic_and_splits_differ(shapes_build, tmp_path, capsys):
  # Two independent builds (capped at 1000 examples per split, to stay fast) are equal.
  capsys.readouterr()
  _, first, _ = _build_shapes(tmp_path / "a", max_examples_per_split=1000)
  # Prepared quietly: one line of ours saying where (no TFDS banner, progress bars).
  out, err = capsys.readouterr()
  assert out == ("Generating the built-in synthetic_shapes dataset (11,000 images, a few "
                 "seconds, once; no download) into "
                 f"{tmp_path / 'a' / 'synthetic_shapes' / '1.0.0'}\n"), out
  assert err == "", err
  _, second, _ = _build_shapes(tmp_path / "b", max_examples_per_split=1000)
  for split in ("train", "test"):
    assert len(first[split]["image"]) == 1000
    np.testing.assert_array_equal(first[split]["image"], second[split]["image"])
    np.testing.assert_array_equal(first[split]["label"], second[split]["label"])
  # ... and hold the examples of the full build (the first 1000 of each split).
  _, full, _ = shapes_build
  for split in ("train", "test"):
    assert {im.tobytes() for im in first[split]["image"]} <= {
        im.tobytes() for im in full[split]["image"]}
  train = {im.tobytes() for im in full["train"]["image"]}
  assert not train & {im.tobytes() for im in full["test"]["image"]}


def test_synthetic_shapes_generate_is_deterministic():
  a, la = synthetic_shapes.generate(50, seed=3)
  b, lb = synthetic_shapes.generate(50, seed=3)
  c, _ = synthetic_shapes.generate(50, seed=4)
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(la, lb)
  assert not np.array_equal(a, c)


def test_synthetic_shapes_data_source(shapes_build):
  builder, arrays, _ = shapes_build
  config = ml_collections.ConfigDict({"name": "synthetic_shapes",
                                      "data_dir": os.fspath(builder.data_dir_root)})
  source = input_pipeline.get_data_source(config)
  assert source.image_shape == (32, 32, 3)
  assert source.num_examples == {"train": 10_000, "test": 1_000}
  test = source.load_split("test")
  np.testing.assert_array_equal(test, arrays["test"]["image"])


# --- frey_face -------------------------------------------------------------------


def _write_mat(path, seed=0):
  """A file in the original layout: `ff`, uint8 [560, 1965], one image per column."""
  ff = np.random.default_rng(seed).integers(0, 256, (560, 1965), dtype=np.uint8)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  scipy.io.savemat(path, {"ff": ff})
  return ff


def _frey_config(data_dir, **kwargs):
  config = ml_collections.ConfigDict({"name": "frey_face", "data_dir": os.fspath(data_dir),
                                      "test_fraction": 0.1})
  config.update(kwargs)
  return config


def test_frey_face_from_manual_dir(tmp_path):
  ff = _write_mat(tmp_path / "downloads" / "manual" / frey_face.FILENAME)
  expected = ff.T.reshape(-1, 28, 20)[..., None]
  np.testing.assert_array_equal(
      frey_face.load_mat(tmp_path / "downloads" / "manual" / frey_face.FILENAME), expected)
  # Never download here: the file is in the manual directory.
  with mock.patch.object(tfds.download.DownloadManager, "download",
                         side_effect=AssertionError("must not download")):
    source = input_pipeline.get_data_source(_frey_config(tmp_path, download=False))
  assert source.image_shape == (28, 20, 1)
  assert source.num_examples == {"train": 1769, "test": 196}
  train, test = source.load_split("train"), source.load_split("test")
  assert train.shape == (1769, 28, 20, 1) and test.shape == (196, 28, 20, 1)
  assert train.dtype == np.uint8
  idx = splits.holdout_indices(1965, 0.1)
  assert not set(idx["train"]) & set(idx["test"])
  assert sorted(np.concatenate([idx["train"], idx["test"]])) == list(range(1965))
  np.testing.assert_array_equal(train, expected[idx["train"]])
  np.testing.assert_array_equal(test, expected[idx["test"]])
  # The hold-out is fixed: it does not depend on any training seed.
  again = input_pipeline.get_data_source(_frey_config(tmp_path))
  np.testing.assert_array_equal(again.load_split("test"), test)


def test_frey_face_missing_file_download_disabled(tmp_path):
  with mock.patch.object(tfds.download.DownloadManager, "download",
                         side_effect=AssertionError("must not download")):
    with pytest.raises(FileNotFoundError) as e:
      input_pipeline.get_data_source(_frey_config(tmp_path, download=False))
  msg = str(e.value)
  assert os.path.join(os.fspath(tmp_path), "downloads", "manual", "frey_rawface.mat") in msg
  assert frey_face.URL in msg


def test_frey_face_failed_download_says_where_to_put_file(tmp_path):
  manual = tmp_path / "my_manual"
  with mock.patch.object(tfds.download.DownloadManager, "download",
                         side_effect=OSError("offline")) as download:
    with pytest.raises(FileNotFoundError) as e:
      input_pipeline.get_data_source(_frey_config(tmp_path, manual_dir=os.fspath(manual)))
  download.assert_called_once()
  assert download.call_args.args[-1] == frey_face.URL
  assert os.path.join(os.fspath(manual), "frey_rawface.mat") in str(e.value)
  assert "offline" in str(e.value)


def test_frey_face_downloads_on_first_use(tmp_path):
  # The download (mocked: no network) hands back a local copy of the file.
  ff = _write_mat(tmp_path / "elsewhere" / "frey_rawface.mat", seed=1)
  with mock.patch.object(tfds.download.DownloadManager, "download",
                         return_value=tmp_path / "elsewhere" / "frey_rawface.mat"):
    source = input_pipeline.get_data_source(_frey_config(tmp_path / "data"))
  images = np.concatenate([source.load_split("train"), source.load_split("test")])
  assert images.shape == (1965, 28, 20, 1)
  assert ({im.tobytes() for im in images} ==
          {im.tobytes() for im in ff.T.reshape(-1, 28, 20, 1)})


def test_frey_face_rejects_wrong_mat(tmp_path):
  path = tmp_path / "bad.mat"
  scipy.io.savemat(path, {"ff": np.zeros((10, 3), np.uint8)})
  with pytest.raises(ValueError, match=r"\[560, num_images\]"):
    frey_face.load_mat(path)
