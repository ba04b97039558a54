"""The CLI end to end on tiny settings, and config validation at start-up."""

import glob
import json
import math
import os
import time

import pytest

from sigma_vae_jax import configuration
from sigma_vae_jax.data import dataset_fields
import cli_utils


def _read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


# Third-party start-up noise a user must not see (issue 13): TensorFlow's C++ lines, TFDS
# deprecation and preparation banners, JAX's TPU probe.
NOISE = ("oneDNN custom operations", "cpu_feature_guard", "absl::InitializeLog",
         "FeatureConnector.dtype", "Downloading and preparing", "Generating splits",
         "tf_record_dataset_op", "Unable to initialize backend", "Traceback")


def _tensorboard_series(logdir):
  """What TensorBoard's dashboards show: scalar series and image tags, read through
  its own data provider (the scalars dashboard lists only scalar-plugin series)."""
  from tensorboard import context
  from tensorboard.backend.event_processing import data_provider
  from tensorboard.backend.event_processing import plugin_event_multiplexer
  multiplexer = plugin_event_multiplexer.EventMultiplexer()
  multiplexer.AddRunsFromDirectory(logdir)
  multiplexer.Reload()
  provider = data_provider.MultiplexerDataProvider(multiplexer, logdir)
  ctx = context.RequestContext()
  scalar_tags = provider.list_scalars(ctx, experiment_id="", plugin_name="scalars")["."]
  scalars = provider.read_scalars(ctx, experiment_id="", plugin_name="scalars",
                                  downsample=1000)["."]
  assert set(scalars) == set(scalar_tags)
  images = provider.list_blob_sequences(ctx, experiment_id="", plugin_name="images")
  return scalars, set(images.get(".", {}))


def test_cli_trains_writes_everything_and_resumes(tmp_path, shapes_data_dir, monkeypatch):
  workdir = str(tmp_path / "run")
  # The run gets the package's own defaults for TensorFlow's logging, not the test
  # set-up's (conftest.py) or this process's.
  monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
  monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
  result = cli_utils.run_cli(workdir, shapes_data_dir)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "steps/s" in result.stdout and "eval step 12" in result.stdout
  assert "starting fresh at step 0" in result.stdout
  assert "Data: synthetic_shapes (built in" in result.stdout
  # The first progress line already has a rate and an ETA.
  first_progress = next(l for l in result.stdout.splitlines() if l.startswith("step "))
  assert "steps/s" in first_progress and "ETA" in first_progress, first_progress
  # The eval line's first figure is the one the best checkpoint is chosen by (eval
  # `nelbo` of metrics.jsonl), said once at the start; the 8-bit figure follows '|'.
  assert result.stdout.count("the best checkpoint is chosen by it") == 1, result.stdout
  eval_line = next(l for l in result.stdout.splitlines() if l.startswith("eval step 6"))
  eval_row = next(r for r in _read_metrics(workdir) if r["split"] == "eval" and r["step"] == 6)
  assert eval_line.startswith(f"eval step 6: -ELBO {eval_row['nelbo']:.2f} nats/example, "
                              f"{eval_row['bpd']:.4f} bits/dim (density"), eval_line
  assert (f"| 8-bit data: {eval_row['nelbo_discrete']:.2f} nats, "
          f"{eval_row['bpd_discrete']:.4f} bits/dim") in eval_line, eval_line
  for noise in NOISE:
    assert noise not in result.stdout + result.stderr, (noise, result.stderr[-3000:])

  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["12", "4", "8"]
  rows = _read_metrics(workdir)
  train_rows = [r for r in rows if r["split"] == "train"]
  eval_rows = [r for r in rows if r["split"] == "eval"]
  assert [r["step"] for r in train_rows] == [2, 4, 6, 8, 10, 12]
  assert [r["step"] for r in eval_rows] == [6, 12]
  for row in eval_rows:
    for key in ("nelbo", "rec", "kl", "bpd", "log_sigma", "nelbo_discrete"):
      assert key in row and math.isfinite(row[key]), (key, row)
    # The negative ELBO is the sum of its parts, in nats per example.
    assert row["nelbo"] == pytest.approx(row["rec"] + row["kl"], rel=1e-5, abs=1e-3)
    assert row["bpd"] == pytest.approx(row["nelbo"] / (32 * 32 * 3 * 0.6931471805599453),
                                       rel=1e-5)
    assert row["num_examples"] == 1000
  assert glob.glob(os.path.join(workdir, "events.out.tfevents.*"))
  scalars, images = _tensorboard_series(workdir)
  assert {"train/loss", "train/nelbo", "eval/nelbo", "eval/bpd_discrete"} <= set(scalars)
  assert [d.step for d in scalars["eval/nelbo"]] == [6, 12]
  assert scalars["eval/nelbo"][-1].value == pytest.approx(eval_rows[-1]["nelbo"], rel=1e-6)
  assert {"samples", "recons"} <= set(images)
  for step in (6, 12):
    for kind in ("samples", "recons"):
      assert os.path.getsize(os.path.join(workdir, "images", f"step_{step}_{kind}.png")) > 0
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["decoder"]["name"] == "optimal_sigma"

  # The best eval ELBO's checkpoint is kept beside the latest ones.
  best = min(eval_rows, key=lambda r: r["nelbo"])
  assert os.listdir(os.path.join(workdir, "checkpoints_best")) == [str(best["step"])]
  assert f"Best evaluation at step {best['step']} " in result.stdout

  # Resuming through the CLI: tests/test_reliability.py.


def test_cli_rejects_an_invalid_config_at_start_up(tmp_path, shapes_data_dir):
  workdir = str(tmp_path / "bad")
  start = time.time()
  result = cli_utils.run_cli(workdir, shapes_data_dir, **{"decoder.beta": 0.5})
  elapsed = time.time() - start
  assert result.returncode == 1
  assert "decoder.beta" in result.stderr and "ignores it" in result.stderr
  assert "Traceback" not in result.stderr
  assert not os.path.exists(workdir)  # nothing was created or compiled
  assert elapsed < 60, elapsed  # imports only; no data loading or compilation


def _config(**overrides):
  return cli_utils.tiny_config(None, **overrides)


@pytest.mark.parametrize("overrides,field", [
    ({"decoder.name": "gausian"}, "decoder.name"),
    ({"dataset.name": "imagenet"}, "dataset.name"),
    ({"batch_size": 0}, "batch_size"),
    ({"batch_size": -4}, "batch_size"),
    ({"num_train_steps": 0}, "num_train_steps"),
    ({"learning_rate": 0.0}, "learning_rate"),
    ({"decoder.beta": 2.0}, "decoder.beta"),
    ({"decoder.name": "beta"}, "decoder.beta"),
    ({"decoder.name": "beta", "decoder.beta": -1.0}, "decoder.beta"),
    ({"model.latent_dim": 0}, "model.latent_dim"),
    ({"model.dtype": "float16"}, "model.dtype"),
    ({"dataset.image_size": (30, 32)}, "dataset.image_size"),
    ({"decoder.scale": "fixed"}, "decoder.scale"),
    ({"decoder.sigma_axes": (1, 2)}, "decoder.sigma_axes"),
    ({"decoder.name": "shared_sigma", "decoder.sigma_axes": (0,)}, "decoder.sigma_axes"),
    ({"decoder.log_sigma_min": 3.0, "decoder.log_sigma_max": 2.0}, "decoder.log_sigma_min"),
    ({"steps_per_call": 4, "log_every_steps": 6}, "log_every_steps"),
    ({"dataset.test_fraction": 1.5}, "dataset.test_fraction"),
])
def test_each_invalid_config_names_its_field(overrides, field):
  with pytest.raises(configuration.ConfigError, match=f"^{field}: "):
    configuration.validate_config(_config(**overrides), num_devices=1,
                                  dataset_names=dataset_fields.DATASETS)


def test_global_batch_must_divide_over_devices():
  with pytest.raises(configuration.ConfigError, match="^batch_size: .*divisible.*8"):
    configuration.validate_config(_config(batch_size=12), num_devices=8,
                                  dataset_names=dataset_fields.DATASETS)
  configuration.validate_config(_config(batch_size=16), num_devices=8,
                                dataset_names=dataset_fields.DATASETS)


def test_the_default_and_every_experiment_config_is_valid():
  import ml_collections
  for path in sorted(glob.glob(os.path.join(cli_utils.ROOT, "configs", "*.py"))):
    if path.endswith("__init__.py"):
      continue
    import importlib.util
    spec = importlib.util.spec_from_file_location("cfg", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    assert isinstance(config, ml_collections.ConfigDict)
    configuration.validate_config(config, num_devices=1,
                                  dataset_names=dataset_fields.DATASETS)
