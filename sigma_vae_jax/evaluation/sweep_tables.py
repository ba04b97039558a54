"""The outputs of the reproduction scripts' sweeps: per-run rows to CSV, per-variant
tables (mean ± std over seeds) to Markdown with their notes, and PNG plots.

A row is a dict of column -> value (the evaluation results of `sweeps.evaluate_run`
are nats per example, bits/dim, sigma in data units); `aggregate` turns the rows of
one variant into one row of (mean, std) cells.
"""

from __future__ import annotations

import csv
import math
import os
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np

DATA_NOTE = ("Built-in `synthetic_shapes` data (32x32x3 procedurally generated shapes), "
             "NOT the paper's datasets; small models and short runs: compare the rows "
             "with each other, not with the paper's numbers.")


def data_note(config) -> str:
  """What the table was computed on: DATA_NOTE for the built-in data, else the name."""
  if config.dataset.name == "synthetic_shapes":
    return DATA_NOTE
  return (f"Dataset `{config.dataset.name}`, {config.num_train_steps} training steps per "
          f"run: compare with the paper's numbers only at the paper's settings.")


BETA_NOTE = ("beta convention: Eq. 7 as printed, sigma^2 = beta (`beta`, "
             "`effective_beta`); the paper's Table 1 uses sigma^2 = beta/2, i.e. "
             "`beta_paper` = 2 beta.")
CALIBRATED_NOTE = ("*_calibrated: the same trained Gaussian model evaluated at its own "
                   "maximum-likelihood constant sigma, sigma_calibrated^2 = the test MSE "
                   "of its decoder mean (`evaluate.evaluate_calibrated`): the bound it "
                   "would reach with the best constant sigma. It separates how well a "
                   "model was trained (its mean) from how far its sigma is from the "
                   "calibrated one; '-' for non-Gaussian decoders.")
FID_NOTE = {
    "random": "FID with a fixed random conv network (`fid_kind=random`): only for "
              "comparing rows of this table, not comparable to published FIDs.",
    "inception": "FID with pytorch-fid InceptionV3 features.",
    "none": "",
}


def write_csv(path: str, rows: Sequence[dict], columns: Optional[Sequence[str]] = None
              ) -> None:
  columns = list(columns or _all_columns(rows))
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
      writer.writerow({c: _csv_value(row.get(c)) for c in columns})


def read_csv(path: str) -> list[dict]:
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def _csv_value(v):
  if v is None:
    return ""
  if isinstance(v, (tuple, list)):
    return " ".join(str(x) for x in v)
  return v


def _all_columns(rows):
  columns = []
  for row in rows:
    for c in row:
      if c not in columns:
        columns.append(c)
  return columns


def aggregate(rows: Sequence[dict], group: str = "variant") -> list[dict]:
  """One row per group value: numeric columns -> (mean, std over seeds, count)."""
  groups: dict[Any, list[dict]] = {}
  for row in rows:
    groups.setdefault(row[group], []).append(row)
  out = []
  for key, members in groups.items():
    agg = {}
    for c in _all_columns(members):
      values = [m.get(c) for m in members]
      if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        arr = np.asarray(values, np.float64)
        agg[c] = (float(arr.mean()), float(arr.std()) if len(arr) > 1 else None)
      else:
        agg[c] = members[0].get(c)
    agg["num_seeds"] = len(members)
    agg[group] = key
    out.append(agg)
  return out


def _format(v, digits: int = 4) -> str:
  if v is None:
    return "-"
  if isinstance(v, tuple) and len(v) == 2:
    mean, std = v
    return _format(mean, digits) + ("" if std is None else f" ± {_format(std, 2)}")
  if isinstance(v, bool):
    return str(v)
  if isinstance(v, int):
    return str(v)
  if isinstance(v, float):
    if not math.isfinite(v):
      return str(v)
    if v.is_integer() and abs(v) < 1e6:
      return str(int(v))
    if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
      return f"{v:.3g}"
    return f"{v:.{digits}g}" if abs(v) < 10 else f"{v:.2f}"
  if isinstance(v, (list, tuple)):
    return "(" + ",".join(str(x) for x in v) + ")"
  return str(v)


def markdown_table(rows: Sequence[dict], columns: Sequence[str],
                   headers: Optional[dict[str, str]] = None) -> str:
  headers = headers or {}
  lines = ["| " + " | ".join(headers.get(c, c) for c in columns) + " |",
           "|" + "|".join("---" for _ in columns) + "|"]
  for row in rows:
    lines.append("| " + " | ".join(_format(row.get(c)) for c in columns) + " |")
  return "\n".join(lines)


def write_markdown(path: str, title: str, rows: Sequence[dict], columns: Sequence[str],
                   notes: Iterable[str] = (), headers: Optional[dict[str, str]] = None,
                   images: Iterable[str] = ()) -> str:
  """A Markdown file: title, table (per-variant means ± std over seeds), notes, images."""
  text = [f"# {title}", "", markdown_table(rows, columns, headers), ""]
  text += [f"* {n}" for n in notes if n]
  for image in images:
    text += ["", f"![{os.path.basename(image)}]({os.path.basename(image)})"]
  text = "\n".join(text) + "\n"
  with open(path, "w") as f:
    f.write(text)
  return text


def new_figure(ncols: int = 1, width: float = 4.5, height: float = 3.5):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)
  return fig, list(axes[0])


def save_figure(fig, path: str) -> None:
  import matplotlib.pyplot as plt
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def value(v):
  """The mean of an aggregated (mean, std) cell, or the value itself."""
  return v[0] if isinstance(v, tuple) and len(v) == 2 else v


def write_outputs(output_dir: str, name: str, title: str, rows: Sequence[dict],
                  csv_columns: Sequence[str], table_columns: Sequence[str],
                  notes: Iterable[str], plot: Callable[[list[dict], str], None]
                  ) -> list[dict]:
  """OUTPUT_DIR/NAME.{csv,png,md}: the per-run rows, a plot of the per-variant table
  (mean ± std over seeds) and that table with notes. Returns the table."""
  write_csv(os.path.join(output_dir, f"{name}.csv"), rows, csv_columns)
  table = aggregate(rows)
  png = os.path.join(output_dir, f"{name}.png")
  plot(table, png)
  write_markdown(os.path.join(output_dir, f"{name}.md"), title, table, table_columns,
                 notes, images=[png])
  return table


def plot_against_beta(ax, table: Sequence[dict], key: str, ylabel: str, *,
                      sigma_levels: bool = False) -> None:
  """One panel of `key` over the beta-VAE grid (log x), with each sigma-VAE row as a
  star at its effective beta; sigma_levels adds its value as a horizontal line."""
  beta_rows = sorted((r for r in table if r["beta"] is not None), key=lambda r: r["beta"])
  ax.plot([value(r["beta"]) for r in beta_rows], [value(r[key]) for r in beta_rows],
          "o-", label="beta-VAE")
  for r in (r for r in table if r["beta"] is None):
    x, y = value(r.get("effective_beta")), value(r[key])
    if x is not None:
      ax.plot([x], [y], "*", markersize=14, label=f"{r['model']} at its effective beta")
    if sigma_levels:
      ax.axhline(y, linestyle="--", linewidth=0.8, color="gray")
  ax.set_xscale("log")
  ax.set_xlabel("beta (ours: sigma^2 = beta)")
  ax.set_ylabel(ylabel)
  ax.legend(fontsize=7)
