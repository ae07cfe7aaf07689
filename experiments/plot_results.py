"""Plots and tables of a study's results (`experiments.study`).

    python -m experiments.plot_results --results=experiments/results/code_equal_compute
    python -m experiments.plot_results --results=DIR_A,DIR_B --out=DIR   # runs of two commands

Reads every run record (`runs/*.json`) and writes, beside them (or into `--out`):

    bpb_vs_flops.png       held-out bits per byte against training FLOPs, one line per model
                           (a marker per budget; thin dotted lines: the quick evaluations
                           during the largest-budget run, on a subset of the held-out bytes)
    bpb_vs_wallclock.png   the same against training wall-clock (compilation included,
                           evaluation and checkpoint pauses excluded)
    throughput.png         training bytes/s of each model (mean over its runs)
    results.csv            one row per run (`experiments.study.records.RESULT_FIELDS`)
    results.json           every run record
    table.md               the Markdown table that RESULTS.md shows
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from experiments.study.records import load_runs, model_order, write_tables
from experiments.study.records import markdown_table  # pylint: disable=unused-import  # re-exported


def collect(results_dirs: Sequence[str]) -> list[dict]:
  """The finished run records of one or more results directories (a later directory's record
  of the same run replaces an earlier one)."""
  runs: dict[str, dict] = {}
  for directory in results_dirs:
    if not os.path.isdir(directory):
      raise FileNotFoundError(f"no results directory {directory!r}")
    for record in load_runs(directory):
      if record.get("status") == "done":
        runs[f"{record['study']}/{record['run']}"] = record
  return sorted(runs.values(), key=lambda r: (r["budget_flops"], model_order(r)))


def select_models(records: Sequence[dict], spec: Optional[str]) -> list[dict]:
  """The records of the models named in `spec` ("a,b=label,..."; None or "": all), in the
  same order; `name=label` shows model `name` as `label` (e.g. the code study's
  `megabyte-p8` as the ablation's `base`, which is the same model and settings).

  Raises:
    ValueError: a named model with no finished run.
  """
  if not spec:
    return list(records)
  labels = dict(part.split("=", 1) if "=" in part else (part, part)
                for part in spec.split(",") if part)
  missing = sorted(set(labels) - {r["model"] for r in records})
  if missing:
    raise ValueError(f"no finished runs of model(s) {missing}")
  return [dict(r, model=labels[r["model"]]) for r in records if r["model"] in labels]


def by_model(records: Sequence[dict]) -> dict[str, list[dict]]:
  """Records grouped by model, each group sorted by budget; models in a stable order
  (transformer first, then by scan order and patch size)."""
  groups: dict[str, list[dict]] = {}
  for record in sorted(records, key=model_order):
    groups.setdefault(record["model"], []).append(record)
  return {name: sorted(group, key=lambda r: r["budget_flops"]) for name, group in groups.items()}


def plot(records: Sequence[dict], out_dir: str, title: Optional[str] = None) -> list[str]:
  """Draws bpb_vs_flops.png, bpb_vs_wallclock.png and throughput.png; returns the paths."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  os.makedirs(out_dir, exist_ok=True)
  groups = by_model(records)
  colors = {name: plt.get_cmap("tab10")(i % 10) for i, name in enumerate(groups)}
  title = title or (records[0]["study"] if records else "study")
  paths = []

  for x_key, x_label, name in (("train_flops", "training FLOPs", "bpb_vs_flops.png"),
                               ("train_s", "training wall-clock (s)", "bpb_vs_wallclock.png")):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for model, group in groups.items():
      points = [(r[x_key], r["eval_bpb"]) for r in group
                if r.get(x_key) is not None and r.get("eval_bpb") is not None]
      if not points:
        continue
      xs, ys = zip(*points)
      ax.plot(xs, ys, "o-", color=colors[model], label=model, linewidth=2, markersize=6)
      if x_key == "train_flops":
        largest = group[-1]
        curve = [(c["train_flops"], c["eval_bpb"]) for c in largest.get("curve", [])
                 if not c.get("final") and c.get("eval_bpb") is not None]
        if curve:
          cx, cy = zip(*curve)
          ax.plot(cx, cy, ":", color=colors[model], linewidth=1, alpha=0.7)
    ax.set_xscale("log")
    ax.set_xlabel(x_label)
    ax.set_ylabel("held-out bits per byte")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = os.path.join(out_dir, name)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    paths.append(path)

  fig, ax = plt.subplots(figsize=(7, 3.5))
  names = list(groups)
  rates = []
  for model in names:
    values = [r["bytes_per_s"] for r in groups[model] if r.get("bytes_per_s")]
    rates.append(sum(values) / len(values) if values else 0.0)
  ax.bar(names, rates, color=[colors[n] for n in names])
  ax.set_ylabel("training bytes/s")
  ax.set_title(f"{title}: throughput")
  for i, rate in enumerate(rates):
    ax.text(i, rate, f"{rate:,.0f}", ha="center", va="bottom", fontsize=8)
  fig.tight_layout()
  path = os.path.join(out_dir, "throughput.png")
  fig.savefig(path, dpi=120)
  plt.close(fig)
  paths.append(path)
  return paths


def plot_directory(results_dir: str, out_dir: Optional[str] = None,
                   models: Optional[str] = None) -> list[str]:
  """Tables and plots of every finished run under `results_dir` (comma-separated for
  several; only `models`, see `select_models`), written into `out_dir` (default: the first
  results directory)."""
  dirs = [d for d in results_dir.split(",") if d]
  records = select_models(collect(dirs), models)
  if not records:
    raise ValueError(f"no finished runs in {results_dir!r}")
  out_dir = out_dir or dirs[0]
  return write_tables(records, out_dir) + plot(records, out_dir)


def main(argv: Optional[Sequence[str]] = None) -> None:
  """The command line (see the module docstring)."""
  parser = argparse.ArgumentParser(description="Plots and tables of study results.")
  parser.add_argument("--results", required=True,
                      help="results directory (comma-separated to merge several)")
  parser.add_argument("--out", default=None, help="output directory (default: the first)")
  parser.add_argument("--models", default=None,
                      help="only these models, comma-separated; NAME=LABEL shows NAME as LABEL")
  args = parser.parse_args(argv)
  try:
    for path in plot_directory(args.results, args.out, args.models):
      print(path)
  except (FileNotFoundError, ValueError) as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  main()
