"""Tests of input_pipeline: data sources, determinism, sharding, resume, errors (offline)."""

import importlib.util
import io
import itertools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from sigma_vae_jax import models
from sigma_vae_jax.data import __main__ as data_cli
from sigma_vae_jax.data import clips as clips_lib
from sigma_vae_jax.data import dataset_fields
from sigma_vae_jax.data import input_pipeline as ip
from sigma_vae_jax.data import preprocessing
from sigma_vae_jax.data import splits
from sigma_vae_jax.data.datasets import synthetic_shapes

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "configs")


def _config(**kwargs):
  config = ml_collections.ConfigDict({
      "name": "synthetic_shapes", "path": "", "data_dir": None, "image_size": None,
      "test_fraction": 0.1, "on_device": True})
  config.update(kwargs)
  return config


def _load_config(filename, *args):
  """As ml_collections' config_flags: execute the file by path, call get_config."""
  path = os.path.join(CONFIG_DIR, filename)
  spec = importlib.util.spec_from_file_location(f"cfg_{filename[:-3]}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(*args)


def _keys(images):
  return [im.tobytes() for im in images]


def _take(it, n):
  return list(itertools.islice(it, n))


# --- Configs and TFDS datasets under mock_data ------------------------------------


@pytest.mark.parametrize("filename,args,name,shape,num_mock", [
    ("default.py", (), "synthetic_shapes", (32, 32, 3), 8),
    ("svhn.py", (), "svhn", (32, 32, 3), 8),
    ("svhn.py", ("28",), "svhn", (28, 28, 3), 8),
    ("cifar10.py", (), "cifar10", (32, 32, 3), 8),
    ("mnist.py", (), "mnist", (28, 28, 1), 8),
    ("celeba.py", (), "celeba", (32, 32, 3), 8),
    ("celeba.py", ("64",), "celeba", (64, 64, 3), 8),
    ("frey_face.py", (), "frey_face", (28, 20, 1), 20),
    ("bair.py", (), "bair", (64, 64, 3), 2),
])
def test_config_data_source_under_mock_data(filename, args, name, shape, num_mock):
  config = _load_config(filename, *args)
  assert config.dataset.name == name
  with tfds.testing.mock_data(num_examples=num_mock):
    source = ip.get_data_source(config.dataset)
    assert source.name == name
    assert source.image_shape == shape
    models.validate(config.model, source.image_shape)
    test = source.load_split("test")
    assert test.dtype == np.uint8 and test.shape == (source.num_examples["test"],) + shape
    batches = _take(source.batch_iterator(
        "train", 2, seed=0, shuffle=True, repeat=True, process_index=0,
        process_count=1), 3)
  assert len(batches) == 3
  for batch in batches:
    assert isinstance(batch, np.ndarray)
    assert batch.dtype == np.uint8 and batch.shape == (2,) + shape
  if name == "bair":  # Frames of 30-frame videos.
    assert source.num_examples == {"train": 60, "test": 60}
  if name == "frey_face":  # Seeded hold-out of the single split.
    assert source.num_examples == {"train": 18, "test": 2}
  if name == "celeba":
    assert config.dataset.on_device is False


def test_bair_clips_under_mock_data():
  config = _load_config("bair.py")
  with tfds.testing.mock_data(num_examples=2):
    source = ip.get_data_source(config.dataset)
    assert source.is_video
    # dataset.clip_length = 12, clip_selection "first": one clip per video, its start.
    clips = source.load_clips("test")
    assert clips.shape == (2, 12, 64, 64, 3) and clips.dtype == np.uint8
    frames = source.load_split("test")
    np.testing.assert_array_equal(clips[0], frames[:12])
    np.testing.assert_array_equal(clips[1], frames[30:42])
    windows = source.load_clips("test", selection="windows")
    assert windows.shape == (4, 12, 64, 64, 3)
    np.testing.assert_array_equal(windows[1], frames[12:24])
    np.testing.assert_array_equal(windows[2], frames[30:42])
    assert source.load_clips("test", 5, stride=5, max_videos=1,
                             selection="windows").shape == (6, 5, 64, 64, 3)
    whole = source.load_clips("test", 30, selection="first")
    np.testing.assert_array_equal(whole.reshape(frames.shape), frames)


def test_extract_clips_and_clips_dataset():
  videos = np.arange(2 * 7 * 2 * 2 * 1, dtype=np.uint8).reshape(2, 7, 2, 2, 1)
  clips = clips_lib.extract_clips(videos, 3)
  assert clips.shape == (4, 3, 2, 2, 1)
  np.testing.assert_array_equal(clips[1], videos[0, 3:6])
  np.testing.assert_array_equal(clips[2], videos[1, 0:3])
  overlapping = clips_lib.extract_clips(videos, 3, stride=1)
  assert overlapping.shape == (10, 3, 2, 2, 1)
  np.testing.assert_array_equal(overlapping[4], videos[0, 4:7])
  from_tf = np.stack(list(tfds.as_numpy(clips_lib.clips_dataset(
      tf.data.Dataset.from_tensor_slices(videos), 3, stride=1, num_frames=7))))
  np.testing.assert_array_equal(from_tf, overlapping)
  first = clips_lib.extract_clips(videos, 3, selection="first")
  np.testing.assert_array_equal(first, videos[:, 0:3])
  with pytest.raises(ValueError, match="clip_length"):
    clips_lib.extract_clips(videos, 8)
  with pytest.raises(ValueError, match="dataset.clip_selection"):
    clips_lib.extract_clips(videos, 3, selection="random")


# --- BAIR as the SVG reference reads it: camera and clips ----------------------------

_BAIR_VIDEOS, _BAIR_FRAMES = 3, 30


TEST_OFFSET = 128  # added to the frame values of the test split


def _numbered_bair(self, split, decoders=None, read_config=None, **kwargs):
  """`as_dataset_fn` for tfds.testing.mock_data: 3 BAIR videos per split whose frame t
  of video v is the constant image v * 30 + t (+ TEST_OFFSET in the test split) on
  camera image_aux1 and 255 minus it on image_main (PNG-encoded as TFDS stores them),
  so a frame's value names its split, video, frame and camera."""
  del self, decoders, read_config, kwargs
  offset = TEST_OFFSET if "test" in str(split) else 0
  ids = offset + np.arange(_BAIR_VIDEOS * _BAIR_FRAMES).reshape(_BAIR_VIDEOS, _BAIR_FRAMES)

  def encoded(values):
    return tf.stack([tf.stack([tf.io.encode_png(np.full((64, 64, 3), v, np.uint8))
                               for v in row]) for row in values])
  return tf.data.Dataset.from_tensor_slices(
      {"image_aux1": encoded(ids), "image_main": encoded(255 - ids)})


def _frame_ids(clips):
  """uint8 [N, L, 64, 64, 3] of constant frames -> int [N, L], each frame's value."""
  clips = np.asarray(clips)
  assert (clips == clips[..., :1, :1, :1]).all()  # constant frames
  return clips[..., 0, 0, 0].astype(int)


def _bair_config(**fields):
  config = _load_config("bair_svg.py")
  config.dataset.update(fields)
  return config.dataset


def test_bair_reads_the_reference_camera_image_aux1():
  with tfds.testing.mock_data(as_dataset_fn=_numbered_bair):
    frames = ip.get_data_source(_load_config("bair.py").dataset).load_split("test")
    np.testing.assert_array_equal(_frame_ids(frames[None])[0], TEST_OFFSET + np.arange(90))
    config = _load_config("bair.py")
    config.dataset.bair_view = "image_main"
    other = ip.get_data_source(config.dataset).load_split("train")
    np.testing.assert_array_equal(_frame_ids(other[None])[0], 255 - np.arange(90))
    config.dataset.bair_view = "image_aux2"
    with pytest.raises(ValueError, match="dataset.bair_view"):
      ip.get_data_source(config.dataset)


# Clips by hand: video v's frame t is v * 30 + t; clips of 12 frames.
_FIRST = [[v * 30 + t for t in range(12)] for v in range(3)]
_WINDOWS = [[v * 30 + s + t for t in range(12)] for v in range(3) for s in (0, 12)]


@pytest.mark.parametrize("selection,expected", [("first", _FIRST), ("windows", _WINDOWS)])
def test_clip_selection_is_the_same_on_every_path(selection, expected, tmp_path):
  """The TFDS stream (train and test, shuffled or not), load_clips (numpy on loaded
  videos) and numpy_videos select exactly the clips listed by hand."""
  with tfds.testing.mock_data(as_dataset_fn=_numbered_bair):
    source = ip.get_data_source(_bair_config(clip_selection=selection))
    assert source.image_shape == (12, 64, 64, 3)
    assert source.num_examples == {"train": len(expected), "test": len(expected)}
    expected_test = (np.asarray(expected) + TEST_OFFSET).tolist()
    for split, want in (("train", expected), ("test", expected_test)):
      stream = np.concatenate(list(source.batch_iterator(
          split, 2, seed=0, shuffle=False, repeat=False, process_index=0, process_count=1)))
      assert _frame_ids(stream).tolist() == want, split
    shuffled = np.concatenate(list(source.batch_iterator(
        "train", 2, seed=3, shuffle=True, repeat=False, process_index=0, process_count=1)))
    assert sorted(_frame_ids(shuffled).tolist()) == expected
    repeated = np.concatenate(_take(source.batch_iterator(
        "train", 1, seed=0, shuffle=True, repeat=True, process_index=0, process_count=1),
        len(expected)))
    assert sorted(_frame_ids(repeated).tolist()) == expected  # one epoch: each clip once
    assert _frame_ids(source.load_split("test")).tolist() == expected_test
    assert _frame_ids(source.load_clips("test")).tolist() == expected_test
    videos = source.load_clips("train", 30, selection="first")
  # The in-memory path (numpy_videos) on the same videos: each split's clips are those
  # of its videos, in video order.
  np.save(tmp_path / "v.npy", videos)
  numpy_source = ip.get_data_source(_config(
      name="numpy_videos", path=os.fspath(tmp_path / "v.npy"), clip_length=12,
      clip_selection=selection, test_fraction=0.34))
  idx = splits.holdout_indices(3, 0.34)
  for split in ("train", "test"):
    per_video = len(expected) // 3
    want = [c for i, c in enumerate(expected) if i // per_video in idx[split]]
    assert _frame_ids(numpy_source.load_split(split)).tolist() == want, split


def test_celeba_crop_then_resize_is_centred():
  pre = preprocessing.Preprocess(center_crop=(4, 4), image_size=None)
  image = np.zeros((1, 8, 6, 3), np.uint8)
  image[:, 2:6, 1:5] = 200
  out = pre.np_apply(image)
  assert out.shape == (1, 4, 4, 3) and (out == 200).all()
  resized = preprocessing.Preprocess(center_crop=(4, 4), image_size=(2, 2)).np_apply(image)
  assert resized.shape == (1, 2, 2, 3) and resized.dtype == np.uint8
  assert (resized == 200).all()
  with pytest.raises(ValueError, match="dataset.center_crop"):
    preprocessing.Preprocess(center_crop=(10, 10)).output_shape((8, 6, 3))


# --- Pixel values against independent references -----------------------------------


def _triangle_weights(n_in, n_out):
  """[n_out, n_in] weights of antialiased bilinear resampling along one axis: a
  triangle filter (tent) on half-pixel centres, widened by the scale when shrinking,
  normalised per output pixel (as PIL's BILINEAR and tf.image.resize(antialias=True))."""
  scale = n_in / n_out
  support = max(scale, 1.0)
  centres = (np.arange(n_out) + 0.5) * scale
  w = np.maximum(0.0, 1.0 - np.abs((np.arange(n_in)[None] + 0.5 - centres[:, None]) / support))
  return w / w.sum(axis=1, keepdims=True)


def _reference_resize(images, size):
  """float64 [N, H, W, C] resized to size (h, w), before rounding."""
  a = _triangle_weights(images.shape[1], size[0])
  b = _triangle_weights(images.shape[2], size[1])
  return np.einsum("ih,jw,nhwc->nijc", a, b, images.astype(np.float64))


def _pil_resize(images, size):
  """PIL's BILINEAR resize of each uint8 channel (another implementation)."""
  return np.stack([np.stack([np.asarray(Image.fromarray(im[..., c]).resize(
      (size[1], size[0]), Image.BILINEAR)) for c in range(im.shape[-1])], -1)
                   for im in images])


@pytest.mark.parametrize("size", [(6, 5), (4, 4), (9, 7), (24, 20), (17, 13)])
def test_resize_pixels_match_a_triangle_filter_reference_and_pil(size):
  images = _random_images(2, (12, 10, 3), seed=3)
  got = preprocessing.Preprocess(image_size=size).np_apply(images)
  assert got.dtype == np.uint8 and got.shape == (2,) + size + (3,)
  # Rounded to the nearest level: within half a level of the exact value (+ float32).
  np.testing.assert_array_less(np.abs(got - _reference_resize(images, size)), 0.5 + 1e-3)
  np.testing.assert_array_less(np.abs(got.astype(int) - _pil_resize(images, size)), 2)


def test_centre_crop_then_resize_pixels():
  images = _random_images(3, (11, 8, 3), seed=4)
  got = preprocessing.Preprocess(center_crop=(6, 6), image_size=(4, 4)).np_apply(images)
  crop = images[:, 2:8, 1:7]  # top = (11 - 6) // 2, left = (8 - 6) // 2
  np.testing.assert_array_less(np.abs(got - _reference_resize(crop, (4, 4))), 0.5 + 1e-3)
  np.testing.assert_array_equal(preprocessing.Preprocess(center_crop=(6, 6)).np_apply(images), crop)


def test_numpy_source_resizes_the_pixels_it_loads(tmp_path):
  images = _random_images(20, (8, 8, 3), seed=5)
  np.save(tmp_path / "x.npy", images)
  source = ip.get_data_source(_config(name="numpy", path=os.fspath(tmp_path / "x.npy"),
                                      image_size=(4, 6)))
  idx = splits.holdout_indices(20, 0.1)
  for split in ("train", "test"):
    expected = _reference_resize(images[idx[split]], (4, 6))
    np.testing.assert_array_less(np.abs(source.load_split(split) - expected), 0.5 + 1e-3)


def _mock_images(tfds_name, image_key):
  """The images tfds.testing.mock_data serves for a builder, decoded by PIL from
  the encoded bytes (video examples: all frames, in order)."""
  decoders = tfds.decode.PartialDecoding({image_key: True},
                                         decoders={image_key: tfds.decode.SkipDecoding()})
  ds = tfds.builder(tfds_name).as_dataset(split="test", decoders=decoders,
                                          shuffle_files=False)
  frames = []
  for example in tfds.as_numpy(ds):
    for encoded in np.atleast_1d(example[image_key]):
      frame = np.asarray(Image.open(io.BytesIO(encoded)))
      frames.append(frame[..., None] if frame.ndim == 2 else frame)
  return np.stack(frames)


@pytest.mark.parametrize("name,tfds_name,image_key,image_size", [
    ("svhn", "svhn_cropped", "image", None),
    ("svhn", "svhn_cropped", "image", (28, 24)),
    ("mnist", "mnist", "image", None),
    ("bair", "bair_robot_pushing_small", "image_main", (32, 32)),
])
def test_tfds_sources_serve_the_decoded_pixels_under_mock_data(name, tfds_name, image_key,
                                                               image_size):
  with tfds.testing.mock_data(num_examples=2 if name == "bair" else 6):
    reference = _mock_images(tfds_name, image_key)
    source = ip.get_data_source(_config(name=name, image_size=image_size))
    test = source.load_split("test")
    batch = next(source.batch_iterator("test", 4, seed=0, shuffle=False, repeat=False,
                                       process_index=0, process_count=1))
  assert reference.std() > 20  # random pixels, not a constant image
  if image_size is None:
    np.testing.assert_array_equal(test, reference)
  else:
    np.testing.assert_array_less(np.abs(test - _reference_resize(reference, image_size)),
                                 0.5 + 1e-3)
  np.testing.assert_array_equal(batch, test[:4])


# --- numpy and folder sources ------------------------------------------------------


def _random_images(n, shape, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n,) + shape, dtype=np.uint8)


def test_numpy_npy_without_channel_axis(tmp_path):
  images = _random_images(50, (8, 12))
  np.save(tmp_path / "x.npy", images)
  source = ip.get_data_source(_config(name="numpy", path=os.fspath(tmp_path / "x.npy")))
  assert source.image_shape == (8, 12, 1)
  assert source.num_examples == {"train": 45, "test": 5}
  train, test = source.load_split("train"), source.load_split("test")
  idx = splits.holdout_indices(50, 0.1)
  np.testing.assert_array_equal(train, images[idx["train"], ..., None])
  np.testing.assert_array_equal(test, images[idx["test"], ..., None])
  assert sorted(_keys(train) + _keys(test)) == sorted(_keys(images[..., None]))


def test_numpy_npz_keys_and_resize(tmp_path):
  images = _random_images(20, (8, 8, 3))
  np.savez(tmp_path / "a.npz", labels=np.arange(20), images=images)
  np.savez(tmp_path / "b.npz", images)  # First array: 'arr_0'.
  for f in ("a.npz", "b.npz"):
    source = ip.get_data_source(_config(name="numpy", path=os.fspath(tmp_path / f),
                                        test_fraction=0.25))
    assert source.image_shape == (8, 8, 3)
    assert source.num_examples == {"train": 15, "test": 5}
    np.testing.assert_array_equal(
        source.load_split("test"), images[splits.holdout_indices(20, 0.25)["test"]])
  resized = ip.get_data_source(_config(name="numpy", path=os.fspath(tmp_path / "a.npz"),
                                       image_size=(4, 4)))
  assert resized.image_shape == (4, 4, 3)
  assert resized.load_split("train").shape == (18, 4, 4, 3)


def test_numpy_rejects_non_uint8(tmp_path):
  np.save(tmp_path / "f.npy", np.zeros((4, 8, 8), np.float32))
  with pytest.raises(ValueError, match="uint8"):
    ip.get_data_source(_config(name="numpy", path=os.fspath(tmp_path / "f.npy")))


def test_folder_source_gray_and_rgb(tmp_path):
  gray = _random_images(6, (8, 4))
  rgb = _random_images(6, (8, 4, 3), seed=1)
  (tmp_path / "gray").mkdir()
  (tmp_path / "rgb").mkdir()
  for i in range(6):
    Image.fromarray(gray[i]).save(tmp_path / "gray" / f"{i:02d}.png")
    Image.fromarray(rgb[i]).save(tmp_path / "rgb" / f"{i:02d}.png")
  (tmp_path / "gray" / "notes.txt").write_text("not an image")
  source = ip.get_data_source(_config(name="folder", path=os.fspath(tmp_path / "gray"),
                                      test_fraction=0.5))
  assert source.image_shape == (8, 4, 1)
  idx = splits.holdout_indices(6, 0.5)
  np.testing.assert_array_equal(source.load_split("train"), gray[idx["train"], ..., None])
  source = ip.get_data_source(_config(name="folder", path=os.fspath(tmp_path / "rgb")))
  assert source.image_shape == (8, 4, 3)
  assert sorted(_keys(source.load_split("train")) + _keys(source.load_split("test"))) == (
      sorted(_keys(rgb)))


def test_folder_mixed_sizes_names_the_file(tmp_path):
  Image.fromarray(_random_images(1, (8, 8, 3))[0]).save(tmp_path / "a.png")
  Image.fromarray(_random_images(1, (8, 6, 3))[0]).save(tmp_path / "b.jpg")
  with pytest.raises(ValueError, match="b.jpg"):
    ip.get_data_source(_config(name="folder", path=os.fspath(tmp_path)))


def _one_line_error(excinfo):
  message = str(excinfo.value)
  assert "\n" not in message, message
  return message


@pytest.mark.parametrize("kind", ["truncated", "not_an_image", "empty"])
def test_folder_unreadable_image_names_the_file_in_one_line(tmp_path, kind):
  for i in range(3):
    Image.fromarray(_random_images(1, (8, 8, 3), seed=i)[0]).save(tmp_path / f"{i}.png")
  data = (tmp_path / "0.png").read_bytes()
  bad = {"truncated": data[:len(data) // 2], "not_an_image": b"GIF89a, no image",
         "empty": b""}[kind]
  (tmp_path / "1.png").write_bytes(bad)
  with pytest.raises(ValueError) as e:
    ip.get_data_source(_config(name="folder", path=os.fspath(tmp_path)))
  message = _one_line_error(e)
  assert os.fspath(tmp_path / "1.png") in message and "cannot read" in message, message


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
@pytest.mark.parametrize("name", ["numpy", "numpy_videos"])
def test_truncated_numpy_file_names_the_file_in_one_line(tmp_path, suffix, name):
  path = tmp_path / f"data{suffix}"
  array = _random_images(6, (5, 8, 8, 3) if name == "numpy_videos" else (8, 8, 3))
  (np.save if suffix == ".npy" else np.savez)(path, array)
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])
  with pytest.raises(ValueError) as e:
    ip.get_data_source(_config(name=name, path=os.fspath(path)))
  message = _one_line_error(e)
  assert os.fspath(path) in message and "not a readable .npy/.npz file" in message


def test_description_says_where_from_how_many_and_how_split(tmp_path):
  folder = tmp_path / "faces"
  (folder / "sub").mkdir(parents=True)
  for i in range(20):
    Image.fromarray(_random_images(1, (8, 12, 3), seed=i)[0]).save(folder / "sub" / f"{i}.png")
  text = ip.get_data_source(_config(name="folder", path=os.fspath(folder),
                                    test_fraction=0.25, image_size=(4, 4))).description()
  assert text == (
      f"Data: folder (20 image files found under {folder}): 15 train / 5 test images of "
      f"4x4x3 (resized from 8x12 to 4x4); test split: 5 of the 20 held out at random "
      f"(dataset.test_fraction=0.25, fixed seed 0: the same split in every run).")
  np.save(tmp_path / "x.npy", _random_images(1000, (4, 4)))
  text = ip.get_data_source(_config(name="numpy", path=os.fspath(tmp_path / "x.npy"))
                            ).description()
  assert text.startswith(f"Data: numpy (file {tmp_path / 'x.npy'}): 900 train / 100 test "
                         f"images of 4x4x1; test split: 100 of the 1,000 held out")
  np.save(tmp_path / "v.npy", _random_images(10, (6, 4, 4, 1)))
  text = ip.get_data_source(_config(name="numpy_videos", path=os.fspath(tmp_path / "v.npy"),
                                    clip_length=3, clip_selection="windows")).description()
  assert "(10 videos of 6 frames in" in text and "18 train / 2 test clips of 3x4x4x1" in text
  assert "test split: 1 of the 10 videos held out at random" in text


# --- Sharding, determinism, resume -------------------------------------------------


@pytest.fixture(scope="module")
def small_shapes_dir(tmp_path_factory):
  """A real (not mocked) synthetic_shapes build capped at 200 examples per split."""
  data_dir = tmp_path_factory.mktemp("tfds")
  builder = synthetic_shapes.SyntheticShapes(data_dir=os.fspath(data_dir))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      try_download_gcs=False, max_examples_per_split=200))
  return os.fspath(data_dir)


@pytest.fixture(scope="module")
def sources(small_shapes_dir, tmp_path_factory):
  """An in-memory (numpy) source and a streamed TFDS source."""
  path = tmp_path_factory.mktemp("np") / "images.npy"
  np.save(path, _random_images(110, (4, 4, 3)))
  return {
      "numpy": ip.get_data_source(_config(name="numpy", path=os.fspath(path))),
      "tfds": ip.get_data_source(_config(data_dir=small_shapes_dir, shuffle_buffer=64)),
  }


@pytest.mark.parametrize("kind", ["numpy", "tfds"])
@pytest.mark.parametrize("shuffle", [False, True])
def test_process_shards_are_disjoint_and_cover(sources, kind, shuffle):
  source = sources[kind]
  split = "train"
  full = _keys(source.load_split(split))
  assert len(set(full)) == len(full)
  shards = []
  for pi in range(2):
    batches = list(source.batch_iterator(split, 16, seed=0, shuffle=shuffle, repeat=False,
                                         process_index=pi, process_count=2))
    assert all(b.shape[0] == 16 for b in batches[:-1])
    shards.append(_keys(np.concatenate(batches)))
    assert len(shards[-1]) == source.shard_size(split, process_index=pi, process_count=2)
  assert not set(shards[0]) & set(shards[1])
  assert sorted(shards[0] + shards[1]) == sorted(full)
  assert abs(len(shards[0]) - len(shards[1])) <= 1


@pytest.mark.parametrize("kind", ["numpy", "tfds"])
def test_resume_equals_uninterrupted_stream(sources, kind):
  source = sources[kind]
  batch_size = 32
  bpe = source.batches_per_epoch("train", batch_size, process_count=1)
  n = source.num_examples["train"]
  assert bpe == n // batch_size
  kwargs = dict(seed=7, shuffle=True, repeat=True, process_index=0, process_count=1)
  fresh = _take(source.batch_iterator("train", batch_size, **kwargs), 2 * bpe + 1)
  # Each epoch is bpe full batches of distinct examples, reshuffled between epochs.
  epoch0 = _keys(np.concatenate(fresh[:bpe]))
  epoch1 = _keys(np.concatenate(fresh[bpe:2 * bpe]))
  assert len(set(epoch0)) == bpe * batch_size and len(set(epoch1)) == bpe * batch_size
  assert epoch0 != epoch1
  for k in (1, bpe - 1, bpe, bpe + 1):
    resumed = _take(source.batch_iterator("train", batch_size, start_batch=k, **kwargs),
                    len(fresh) - k)
    for a, b in zip(fresh[k:], resumed, strict=True):
      np.testing.assert_array_equal(a, b)
  again = _take(source.batch_iterator("train", batch_size, **kwargs), len(fresh))
  for a, b in zip(fresh, again):
    np.testing.assert_array_equal(a, b)
  other = _take(source.batch_iterator("train", batch_size, **{**kwargs, "seed": 8}),
                bpe)
  assert _keys(np.concatenate(other)) != epoch0


@pytest.mark.parametrize("kind", ["numpy", "tfds"])
def test_eval_stream_in_order_with_partial_batch(sources, kind):
  source = sources[kind]
  batches = list(source.batch_iterator("test", 8, seed=0, shuffle=False, repeat=False,
                                       process_index=0, process_count=1))
  n = source.num_examples["test"]
  assert [len(b) for b in batches] == [8] * (n // 8) + ([n % 8] if n % 8 else [])
  np.testing.assert_array_equal(np.concatenate(batches), source.load_split("test"))
  skipped = list(source.batch_iterator("test", 8, seed=0, shuffle=False, repeat=False,
                                       start_batch=1, process_index=0, process_count=1))
  assert len(skipped) == len(batches) - 1
  np.testing.assert_array_equal(np.concatenate(skipped), np.concatenate(batches[1:]))


def test_synthetic_shapes_source_real_data(sources, small_shapes_dir):
  source = sources["tfds"]
  assert source.image_shape == (32, 32, 3)
  assert source.num_examples == {"train": 200, "test": 200}
  assert source.description() == (
      f"Data: synthetic_shapes (built in, generated locally, stored in "
      f"{os.path.join(small_shapes_dir, 'synthetic_shapes', '1.0.0')}): 200 train / 200 "
      f"test images of 32x32x3.")
  train, test = source.load_split("train"), source.load_split("test")
  assert train.dtype == np.uint8 and train.shape == (200, 32, 32, 3)
  assert not set(_keys(train)) & set(_keys(test))


# --- Errors and helpers ---------------------------------------------------------------


def test_unknown_dataset_name_lists_known_ones():
  with pytest.raises(ValueError) as e:
    ip.get_data_source(_config(name="imagenet"))
  assert "dataset.name" in str(e.value)
  for name in dataset_fields.DATASETS:
    assert name in str(e.value)


@pytest.mark.parametrize("name", ["numpy", "folder"])
def test_missing_path(name, tmp_path):
  with pytest.raises(ValueError, match="dataset.path"):
    ip.get_data_source(_config(name=name, path=""))
  with pytest.raises(FileNotFoundError, match="dataset.path"):
    ip.get_data_source(_config(name=name, path=os.fspath(tmp_path / "nothing")))


def test_empty_folder(tmp_path):
  with pytest.raises(ValueError, match="no image files"):
    ip.get_data_source(_config(name="folder", path=os.fspath(tmp_path)))


def test_bad_sizes_and_fractions(tmp_path):
  np.save(tmp_path / "x.npy", _random_images(10, (4, 4)))
  path = os.fspath(tmp_path / "x.npy")
  with pytest.raises(ValueError, match="dataset.image_size"):
    ip.get_data_source(_config(name="numpy", path=path, image_size=(0, 4)))
  with pytest.raises(ValueError, match="dataset.test_fraction"):
    ip.get_data_source(_config(name="numpy", path=path, test_fraction=1.0))
  source = ip.get_data_source(_config(name="numpy", path=path))
  with pytest.raises(ValueError, match="batch"):
    next(source.batch_iterator("train", 64, seed=0, shuffle=True, repeat=True,
                               process_index=0, process_count=1))
  with pytest.raises(ValueError, match="split"):
    source.load_split("validation")


def test_check_images():
  preprocessing.check_images(np.zeros((2, 4, 4, 3), np.uint8), expected_shape=(4, 4, 3))
  with pytest.raises(ValueError, match="uint8"):
    preprocessing.check_images(np.zeros((2, 4, 4, 3), np.float32))
  with pytest.raises(ValueError, match=r"\[N, H, W, C\]"):
    preprocessing.check_images(np.zeros((4, 4, 3), np.uint8))
  with pytest.raises(ValueError, match=r"\[N, 4, 4, 1\]"):
    preprocessing.check_images(np.zeros((2, 4, 4, 3), np.uint8), expected_shape=(4, 4, 1))


def test_to_float():
  images = np.array([[[[0], [128]], [[255], [1]]]], np.uint8)
  out = jax.jit(preprocessing.to_float)(images)
  assert out.dtype == jnp.float32 and out.shape == images.shape
  np.testing.assert_allclose(out, images / 255.0, rtol=1e-6)


def test_tensorflow_sees_no_gpu():
  assert tf.config.get_visible_devices("GPU") == []


def test_plain_dict_config_and_prepare_cli(tmp_path, capsys):
  np.save(tmp_path / "x.npy", _random_images(10, (4, 4)))
  source = ip.get_data_source({"name": "numpy", "path": os.fspath(tmp_path / "x.npy")})
  assert source.num_examples == {"train": 9, "test": 1}
  with pytest.raises(ValueError, match="read-only"):
    source.load_split("train")[0] = 0
  data_cli.main(["numpy", "--path", os.fspath(tmp_path / "x.npy")])
  assert capsys.readouterr().out == source.description() + "\n"
  with pytest.raises(SystemExit) as e:
    data_cli.main(["numpy", "--path", os.fspath(tmp_path / "missing.npy")])
  assert e.value.code == 1
  err = capsys.readouterr().err
  assert err.startswith("ERROR: numpy: `dataset.path`=") and err.count("\n") == 1


def test_runs_saved_before_the_bair_fields_keep_their_data():
  """A config.json without dataset.bair_view (written when BAIR read image_main and
  every window) is evaluated on that data, not on today's defaults."""
  from sigma_vae_jax import configuration  # pylint: disable=g-import-not-at-top
  old = configuration.upgrade_config_dict({"dataset": {"name": "bair"}, "model": {}})
  assert old["dataset"]["bair_view"] == "image_main"
  assert old["dataset"]["clip_selection"] == "windows"
  new = configuration.upgrade_config_dict(
      {"dataset": {"name": "bair", "bair_view": "image_aux1", "clip_selection": "first"},
       "model": {}})
  assert new["dataset"]["bair_view"] == "image_aux1"
  assert new["dataset"]["clip_selection"] == "first"
