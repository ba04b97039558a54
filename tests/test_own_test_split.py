"""Own data with its own test split: `dataset.test_path` (numpy, folder, numpy_videos),
and one-line errors when the two splits disagree."""

import os

import ml_collections
import numpy as np
import pytest
from PIL import Image

from sigma_vae_jax.data import input_pipeline as ip


def _config(**kwargs):
  config = ml_collections.ConfigDict({
      "name": "numpy", "path": "", "test_path": None, "data_dir": None,
      "image_size": None, "clip_length": None, "test_fraction": 0.1, "on_device": True})
  config.update(kwargs)
  return config


def _images(seed, shape, dtype=np.uint8):
  return np.random.default_rng(seed).integers(0, 256, shape).astype(dtype)


def _save_folder(folder, images):
  os.makedirs(folder)
  for i, image in enumerate(images):
    Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(
        os.path.join(folder, f"{i:03d}.png"))


def test_numpy_test_path_is_the_test_split_and_all_of_path_trains(tmp_path):
  train, test = _images(0, (10, 6, 5, 3)), _images(1, (4, 6, 5, 3))
  np.save(tmp_path / "train.npy", train)
  np.savez(tmp_path / "test.npz", images=test)
  source = ip.get_data_source(_config(path=str(tmp_path / "train.npy"),
                                      test_path=str(tmp_path / "test.npz")))
  np.testing.assert_array_equal(source.load_split("train"), train)
  np.testing.assert_array_equal(source.load_split("test"), test)
  assert source.num_examples == {"train": 10, "test": 4}
  text = source.description()
  assert f"test split: dataset.test_path (4 images in {tmp_path / 'test.npz'})" in text
  assert "test_fraction" not in text


def test_folder_test_path_keeps_file_order_and_resizes_both(tmp_path):
  train, test = _images(2, (5, 8, 8, 3)), _images(3, (3, 8, 8, 3))
  _save_folder(tmp_path / "train", train)
  _save_folder(tmp_path / "test", test)
  source = ip.get_data_source(_config(name="folder", path=str(tmp_path / "train"),
                                      test_path=str(tmp_path / "test")))
  np.testing.assert_array_equal(source.load_split("test"), test)
  np.testing.assert_array_equal(source.load_split("train"), train)
  # dataset.image_size resizes both splits alike (PIL's bilinear resize, uint8).
  resized = ip.get_data_source(_config(name="folder", path=str(tmp_path / "train"),
                                       test_path=str(tmp_path / "test"), image_size=(4, 4)))
  assert resized.image_shape == (4, 4, 3)
  assert resized.load_split("test").shape == (3, 4, 4, 3)


def test_numpy_videos_test_path_cuts_both_into_clips(tmp_path):
  train, test = _images(4, (3, 6, 4, 4, 1)), _images(5, (2, 6, 4, 4, 1))
  np.save(tmp_path / "train.npy", train)
  np.save(tmp_path / "test.npy", test)
  source = ip.get_data_source(_config(name="numpy_videos", path=str(tmp_path / "train.npy"),
                                      test_path=str(tmp_path / "test.npy"), clip_length=3,
                                      clip_selection="windows"))
  # Non-overlapping clips of 3 frames: frames [0:3] and [3:6] of every video.
  expected_test = np.stack([test[0, :3], test[0, 3:], test[1, :3], test[1, 3:]])
  np.testing.assert_array_equal(source.load_split("test"), expected_test)
  assert source.num_examples == {"train": 6, "test": 4}
  # The default selection (the SVG reference's): the first clip of each video, in both.
  source = ip.get_data_source(_config(name="numpy_videos", path=str(tmp_path / "train.npy"),
                                      test_path=str(tmp_path / "test.npy"), clip_length=3))
  np.testing.assert_array_equal(source.load_split("test"), test[:, :3])
  assert source.num_examples == {"train": 3, "test": 2}


@pytest.mark.parametrize("train_shape,test_shape,dtype,expected", [
    ((6, 8, 8, 3), (2, 8, 8, 1), np.uint8,
     "`dataset.test_path`: its images are 8x8x1 but those of `dataset.path` are 8x8x3"),
    ((6, 8, 8, 3), (2, 9, 8, 3), np.uint8,
     "`dataset.test_path`: its images are 9x8x3 but those of `dataset.path` are 8x8x3"),
    ((6, 8, 8, 3), (2, 8, 8, 3), np.float32,
     "`dataset.test_path`=.*: expected a uint8 array .*got dtype float32"),
])
def test_numpy_splits_that_disagree_are_one_line_errors(tmp_path, train_shape, test_shape,
                                                        dtype, expected):
  np.save(tmp_path / "train.npy", _images(6, train_shape))
  np.save(tmp_path / "test.npy", _images(7, test_shape, dtype))
  with pytest.raises(ValueError, match=expected):
    ip.get_data_source(_config(path=str(tmp_path / "train.npy"),
                               test_path=str(tmp_path / "test.npy")))


def test_video_splits_of_other_lengths_need_a_clip_length(tmp_path):
  np.save(tmp_path / "train.npy", _images(8, (2, 6, 4, 4, 3)))
  np.save(tmp_path / "test.npy", _images(9, (2, 5, 4, 4, 3)))
  config = _config(name="numpy_videos", path=str(tmp_path / "train.npy"),
                   test_path=str(tmp_path / "test.npy"))
  with pytest.raises(ValueError, match=r"its videos have 5 frames but those of "
                                       r"`dataset.path` have 6; set dataset.clip_length "
                                       r"\(at most 5\)"):
    ip.get_data_source(config)
  config.clip_length = 5
  assert ip.get_data_source(config).num_examples == {"train": 2, "test": 2}


def test_test_path_mistakes_name_the_field(tmp_path):
  np.save(tmp_path / "train.npy", _images(10, (6, 8, 8, 3)))
  with pytest.raises(FileNotFoundError, match="`dataset.test_path`="):
    ip.get_data_source(_config(path=str(tmp_path / "train.npy"),
                               test_path=str(tmp_path / "nope.npy")))
  with pytest.raises(ValueError, match="`dataset.test_path` is for your own data"):
    ip.get_data_source(_config(name="mnist", test_path=str(tmp_path / "train.npy")))


def test_numpy_given_videos_points_to_numpy_videos(tmp_path):
  np.save(tmp_path / "videos.npy", _images(11, (2, 5, 8, 8, 3)))
  with pytest.raises(ValueError, match="videos take dataset.name=numpy_videos"):
    ip.get_data_source(_config(path=str(tmp_path / "videos.npy")))
