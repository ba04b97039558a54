"""The reproduction scripts (scripts/*.py), each run in-process at a tiny scale on the
built-in dataset: the CSV / Markdown / PNG outputs exist with the expected rows,
columns and finite numbers. The tests share one dataset and one workdir root, so
later scripts reuse the runs of earlier ones (as a user's sweeps would)."""

import csv
import importlib.util
import math
import os

import pytest

from configs import default as default_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 20


def _load_script(name):
  spec = importlib.util.spec_from_file_location(
      f"script_{name}", os.path.join(ROOT, "scripts", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def dirs(tmp_path_factory, shapes_data_dir):
  """(data_dir, workdir_root) shared by all the scripts of this module."""
  return shapes_data_dir, str(tmp_path_factory.mktemp("runs"))


def _config(data_dir):
  config = default_config.get_config()
  config.dataset.data_dir = data_dir
  config.model.latent_dim, config.model.base_channels = 4, 4
  config.batch_size = 16
  config.num_train_steps = STEPS
  config.num_image_samples = 8
  return config


def _kwargs(dirs, output_dir, **extra):
  data_dir, root = dirs
  return dict(config=_config(data_dir), output_dir=str(output_dir), workdir_root=root,
              seeds=[0], num_fid_samples=32, num_eval_examples=64, **extra)


def _read_csv(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def _finite(row, columns):
  for c in columns:
    assert row[c] != "" and math.isfinite(float(row[c])), (c, row)


def _check_files(output_dir, name, md_rows):
  for ext in ("csv", "md", "png"):
    path = os.path.join(output_dir, f"{name}.{ext}")
    assert os.path.getsize(path) > 0, path
  with open(os.path.join(output_dir, f"{name}.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  text = open(os.path.join(output_dir, f"{name}.md")).read()
  table = [line for line in text.splitlines() if line.startswith("| ")]
  assert len(table) == 1 + md_rows, text  # header + rows
  assert "synthetic_shapes" in text and "NOT the paper's datasets" in text
  return text


def test_beta_sweep_from_the_command_line(dirs, tmp_path):
  """Through main(argv): flag parsing, --config.KEY overrides, then the sweep."""
  beta_sweep = _load_script("beta_sweep")
  data_dir, root = dirs
  rows = beta_sweep.main([
      "beta_sweep.py", f"--output_dir={tmp_path}", f"--workdir_root={root}",
      f"--config.dataset.data_dir={data_dir}", "--config.model.latent_dim=4",
      "--config.model.base_channels=4", "--config.batch_size=16",
      "--config.num_image_samples=8", f"--num_train_steps={STEPS}",
      "--betas_paper=0.02",  # the paper's units: trained as our beta = 0.01
      "--num_fid_samples=32", "--num_eval_examples=64", "--iwae_samples=2"])
  assert [r["variant"] for r in rows] == ["beta_0.01", "optimal_sigma"]
  table = _read_csv(tmp_path / "beta_sweep.csv")
  assert len(table) == 2
  for row in table:
    _finite(row, ["nelbo", "bpd", "nelbo_discrete", "effective_beta", "fid", "iwae_nll",
                  "nelbo_calibrated", "bpd_discrete_calibrated", "sigma_calibrated"])
    # The best constant sigma is at least as good as the model's own.
    assert float(row["nelbo_calibrated"]) <= float(row["nelbo"]) + 1e-3
  beta_row, sigma_row = table
  assert float(beta_row["beta"]) == 0.01 and float(beta_row["beta_paper"]) == 0.02
  assert math.isclose(float(beta_row["effective_beta"]), 0.01, rel_tol=1e-4)
  assert sigma_row["beta"] == ""
  assert float(sigma_row["effective_beta_paper"]) == pytest.approx(
      2 * float(sigma_row["effective_beta"]))
  text = _check_files(tmp_path, "beta_sweep", 2)
  assert "sigma^2 = beta/2" in text and "nelbo_calibrated" in text


def test_beta_grid_in_the_papers_units():
  from sigma_vae_jax import sweep_cli
  beta_sweep = _load_script("beta_sweep")
  parse = lambda *args: sweep_cli.parse_flags(["beta_sweep.py", "--output_dir=x", *args],
                                              beta_sweep._define)
  assert sweep_cli.betas_from_flags(parse("--betas_paper=0.001,0.01,0.1,1,10")) == [
      0.0005, 0.005, 0.05, 0.5, 5.0]
  assert sweep_cli.betas_from_flags(parse("--betas=0.1,1")) == [0.1, 1.0]
  assert sweep_cli.betas_from_flags(parse()) == list(beta_sweep.DEFAULT_BETAS)
  with pytest.raises(Exception, match="not both"):
    sweep_cli.betas_from_flags(parse("--betas=0.1", "--betas_paper=0.2"))


@pytest.mark.parametrize("name", ["beta_sweep", "compare_decoders", "rate_analysis",
                                  "sigma_convergence", "sigma_sharing"])
def test_script_help_and_a_misspelt_config_field(name, capsys):
  script = _load_script(name)
  with pytest.raises(SystemExit) as e:
    script.main([f"{name}.py", "--help"])
  assert e.value.code == 0
  out = capsys.readouterr().out
  assert out.startswith(script.__doc__.strip().splitlines()[0]), out[:300]
  assert "--output_dir: " in out and "--config: " in out
  with pytest.raises(SystemExit) as e:
    script.main([f"{name}.py", "--output_dir=x", "--config.model.latentdim=4"])
  assert e.value.code == 2
  assert capsys.readouterr().err == (
      "ERROR: --config.model.latentdim: the config has no field 'model.latentdim'; did "
      "you mean --config.model.latent_dim? (see --help)\n")


def test_rate_analysis_reuses_the_beta_sweep_runs(dirs, tmp_path, capsys):
  rate_analysis = _load_script("rate_analysis")
  kwargs = _kwargs(dirs, tmp_path, betas=[0.01], fid_kind="none")
  # The beta sweep's runs, when this worker ran that test first; else trained here.
  rate_analysis.run(**kwargs)
  capsys.readouterr()
  rows = rate_analysis.run(**kwargs)
  out = capsys.readouterr().out
  assert out.count("reusing the finished run") == 2 and "training in" not in out
  table = _read_csv(tmp_path / "rate_analysis.csv")
  assert [r["variant"] for r in table] == ["beta_0.01", "optimal_sigma"]
  for row in table:
    _finite(row, ["mutual_information", "marginal_kl", "average_kl", "log_n", "nelbo"])
    assert float(row["mutual_information"]) <= float(row["log_n"]) + 1e-4
  assert len(rows) == 2
  _check_files(tmp_path, "rate_analysis", 2)


def test_sigma_convergence(dirs, tmp_path):
  sigma_convergence = _load_script("sigma_convergence")
  rows = sigma_convergence.run(**_kwargs(dirs, tmp_path, beta=0.01))
  assert [r["variant"] for r in rows] == ["shared_sigma", "optimal_sigma", "beta_0.01"]
  long = _read_csv(tmp_path / "sigma_convergence.csv")
  by_variant = {}
  for row in long:
    _finite(row, ["step", "sigma", "log_sigma"])
    by_variant.setdefault(row["variant"], []).append(float(row["sigma"]))
  # Logged every step of the tiny run; the beta-VAE's sigma is sqrt(beta).
  assert all(len(v) == STEPS for v in by_variant.values()), by_variant.keys()
  assert all(s == pytest.approx(0.1) for s in by_variant["beta_0.01"])
  # Shared sigma starts at 1 and moves by gradient descent; the optimal one starts
  # at the closed-form value, far below 1.
  assert by_variant["shared_sigma"][0] == pytest.approx(1.0, abs=0.05)
  assert by_variant["optimal_sigma"][0] < 0.6
  _check_files(tmp_path, "sigma_convergence", 3)


def test_compare_decoders(dirs, tmp_path):
  compare_decoders = _load_script("compare_decoders")
  compare_decoders.run(**_kwargs(
      dirs, tmp_path, decoder_names=["shared_sigma", "bernoulli", "discretized_logistic"]))
  table = {r["variant"]: r for r in _read_csv(tmp_path / "compare_decoders.csv")}
  assert list(table) == ["shared_sigma", "bernoulli", "discretized_logistic"]
  for row in table.values():
    _finite(row, ["nelbo", "bpd", "fid"])
  _finite(table["shared_sigma"], ["nelbo_discrete", "bpd_discrete", "log_sigma",
                                  "nelbo_calibrated", "bpd_discrete_calibrated"])
  assert table["bernoulli"]["nelbo_discrete"] == ""  # not a model of 8-bit data
  assert table["bernoulli"]["nelbo_calibrated"] == ""  # not a Gaussian
  assert table["discretized_logistic"]["nelbo_calibrated"] == ""
  assert table["discretized_logistic"]["nelbo_discrete"] == table["discretized_logistic"]["nelbo"]
  assert table["discretized_logistic"]["discrete_likelihood"] == "True"
  _check_files(tmp_path, "compare_decoders", 3)
  with pytest.raises(ValueError, match="unknown decoders"):
    compare_decoders.run(**_kwargs(dirs, tmp_path, decoder_names=["nope"]))


def test_sigma_sharing(dirs, tmp_path):
  sigma_sharing = _load_script("sigma_sharing")
  sigma_sharing.run(**_kwargs(dirs, tmp_path, fid_kind="none",
                              variant_names=["shared", "per_subpixel", "per_image"]))
  table = {r["variant"]: r for r in _read_csv(tmp_path / "sigma_sharing.csv")}
  assert list(table) == ["shared", "per_subpixel", "per_image"]
  assert [int(table[v]["num_variance_parameters"]) for v in table] == [1, 32 * 32 * 3, 1]
  for row in table.values():
    _finite(row, ["mutual_information", "marginal_kl", "average_kl", "nelbo",
                  "log_sigma"])
  _check_files(tmp_path, "sigma_sharing", 3)


def test_missing_inception_weights_fail_before_any_training(dirs, tmp_path):
  beta_sweep = _load_script("beta_sweep")
  kwargs = _kwargs(dirs, tmp_path, betas=[0.5], fid_kind="inception",
                   fid_weights_path=str(tmp_path / "missing.npz"))
  kwargs["workdir_root"] = str(tmp_path / "runs")
  with pytest.raises(FileNotFoundError):
    beta_sweep.run(**kwargs)
  assert not os.path.exists(tmp_path / "runs")


def test_run_workdir_is_a_function_of_what_is_trained(tmp_path):
  from sigma_vae_jax.evaluation import sweeps
  config = _config(str(tmp_path / "a"))
  a = sweeps.run_workdir("root", sweeps.apply_overrides(config, {"decoder.name": "beta",
                                                                   "decoder.beta": 0.1}))
  b = sweeps.run_workdir("root", sweeps.apply_overrides(
      _config(str(tmp_path / "b")), {"decoder.name": "beta", "decoder.beta": 0.1}))
  assert a == b and os.path.basename(a).startswith("beta_beta0.1_seed0-")
  c = sweeps.run_workdir("root", sweeps.apply_overrides(
      config, {"decoder.name": "beta", "decoder.beta": 0.1, "seed": 1}))
  d = sweeps.run_workdir("root", sweeps.apply_overrides(
      config, {"decoder.name": "beta", "decoder.beta": 0.1, "num_train_steps": 7}))
  assert len({a, c, d}) == 3


def test_aggregate_over_seeds():
  from sigma_vae_jax.evaluation import sweep_tables
  rows = [{"variant": "x", "seed": 0, "nelbo": 1.0, "model": "m"},
          {"variant": "x", "seed": 1, "nelbo": 3.0, "model": "m"},
          {"variant": "y", "seed": 0, "nelbo": 5.0, "model": "n"}]
  table = sweep_tables.aggregate(rows)
  assert table[0]["nelbo"] == (2.0, 1.0) and table[0]["num_seeds"] == 2
  assert table[1]["nelbo"] == (5.0, None)
  text = sweep_tables.markdown_table(table, ["model", "nelbo"])
  assert "| m | 2 ± 1 |" in text and "| n | 5 |" in text
