"""Which split each reader reads: training evaluates on the test split (both the
device-resident and the streaming path), `evaluate.load_test_images` and
scripts/evaluate_video.py read the test split, never the training one.

The data are files with their own test split (`dataset.test_path`), each image a
constant whose value names it (train: 0..15, test: 200..207), so the expectation is
the test file itself, read here with numpy.
"""

import importlib.util
import os

import numpy as np
import pytest

import tiny_models
from sigma_vae_jax.data import input_pipeline
from sigma_vae_jax.evaluation import evaluate
from sigma_vae_jax.training import train
from sigma_vae_jax.training import trainer as trainer_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_IDS = np.arange(16)
TEST_IDS = 200 + np.arange(8)


def _constant_images(ids, shape):
  return np.broadcast_to(np.asarray(ids, np.uint8).reshape((-1,) + (1,) * len(shape)),
                         (len(ids),) + tuple(shape)).copy()


def _ids(images):
  """The value of each image (asserting it is constant)."""
  flat = np.asarray(images).reshape(len(images), -1)
  assert (flat == flat[:, :1]).all()
  return flat[:, 0].astype(int)


@pytest.fixture()
def image_files(tmp_path):
  shape = tiny_models.data_shape("conv_vae")
  np.save(tmp_path / "train.npy", _constant_images(TRAIN_IDS, shape))
  np.save(tmp_path / "test.npy", _constant_images(TEST_IDS, shape))
  return str(tmp_path / "train.npy"), str(tmp_path / "test.npy")


def _config(path, test_path, **dataset):
  config = tiny_models.tiny_config(
      "conv_vae", num_train_steps=1, log_every_steps=1, eval_every_steps=1,
      checkpoint_every_steps=1, num_image_samples=4)
  config.dataset.name, config.dataset.path, config.dataset.test_path = "numpy", path, test_path
  config.dataset.update(dataset)
  return config


@pytest.mark.parametrize("on_device", [True, False])
def test_training_evaluates_on_the_test_split(image_files, tmp_path, monkeypatch, on_device):
  """Every evaluation batch of a run (`trainer.padded_batches`, which both paths of
  train.py pad with) holds test images only, and all of them."""
  seen = []
  real = trainer_lib.padded_batches

  def record(data, batch_size):
    seen.append(np.array(data))
    return real(data, batch_size)

  monkeypatch.setattr(trainer_lib, "padded_batches", record)
  config = _config(*image_files, on_device=on_device)
  train.train_and_evaluate(config, str(tmp_path / "run"))
  assert seen
  ids = np.concatenate([_ids(d) for d in seen])
  assert sorted(ids.tolist()) == TEST_IDS.tolist()


def test_load_test_images_reads_the_test_split(image_files):
  config = _config(*image_files)
  np.testing.assert_array_equal(_ids(evaluate.load_test_images(config)), TEST_IDS)
  np.testing.assert_array_equal(_ids(evaluate.load_test_images(config, 3)), TEST_IDS[:3])


def test_evaluate_video_script_reads_the_test_clips(tmp_path):
  """numpy_videos (a dataset of clips): the script predicts the first test clips."""
  frame = (4, 4, 1)
  train_videos = np.stack([_constant_images(np.full(6, v), frame) for v in TRAIN_IDS[:3]])
  test_videos = np.stack([_constant_images(np.full(6, v), frame) for v in TEST_IDS[:2]])
  np.save(tmp_path / "train.npy", train_videos)
  np.save(tmp_path / "test.npy", test_videos)
  config = _config(str(tmp_path / "train.npy"), str(tmp_path / "test.npy"),
                   name="numpy_videos", clip_length=3)
  spec = importlib.util.spec_from_file_location(
      "evaluate_video", os.path.join(ROOT, "scripts", "evaluate_video.py"))
  script = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(script)
  source = input_pipeline.get_data_source(config.dataset)
  videos, clips = script._test_data(source, config, 3, None)
  # The first clip of 3 frames of each test video (dataset.clip_selection "first").
  assert videos.shape == (2, 3) + frame
  assert [_ids(v).tolist() for v in videos] == [[200] * 3, [201] * 3]
  np.testing.assert_array_equal(clips, videos)
