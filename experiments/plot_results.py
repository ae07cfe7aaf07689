"""Plots and tables of a study's results (`experiments.study`).

    python -m experiments.plot_results --results=experiments/results/code_equal_compute
    python -m experiments.plot_results --results=DIR_A,DIR_B --out=DIR   # runs of two commands

Reads every run record (`runs/*.json`) and writes, beside them (or into `--out`):

    bpb_vs_flops.png       held-out bits per byte against training FLOPs, one line per model
                           series and context (a marker per budget: the series' best run
                           there, i.e. the best learning rate of a sweep; faint markers: its
                           other runs; thin dotted lines: the quick evaluations during the
                           largest-budget run, on a subset of the held-out bytes). A series
                           is a model dict's `series` (one architecture sized per budget,
                           with its learning-rate variants), else the model; with several
                           contexts in the study, labels name them: "megabyte-p8 (8k)"
    bpb_vs_wallclock.png   the same against training wall-clock (compilation included,
                           evaluation and checkpoint pauses excluded)
    throughput.png         training bytes/s of each model size (mean over its runs)
    results.csv            one row per run (`experiments.study.records.RESULT_FIELDS`)
    results.json           every run record
    table.md               the Markdown table that RESULTS.md shows (and, for learning-rate
                           sweeps, the best run of each series at each budget)
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from experiments.study.records import (best_runs, load_runs, model_order, series_labels,
                                       series_of, write_tables)
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
  `megabyte-p8` as the ablation's `base`, which is the same model and settings): its name
  and, where its series was its name, its series.

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
  out = []
  for r in records:
    if r["model"] in labels:
      series = r.get("series")
      out.append(dict(r, model=labels[r["model"]],
                      series=labels[r["model"]] if series in (None, r["model"]) else series))
  return out


def by_model(records: Sequence[dict]) -> dict[str, list[dict]]:
  """The lines of the plots: `{label: records}`, one line per series and context
  (`records.series_labels`), its best run at each budget (the best learning rate of a
  sweep), sorted by budget; in a stable order (transformer first, then by scan order,
  patch size and context)."""
  labels = series_labels(records)
  return {labels[key]: runs for key, runs in best_runs(records).items()}


def _others(records: Sequence[dict], lines: dict[str, list[dict]]) -> dict[str, list[dict]]:
  """`{label: records}` of the runs that are not on their line (the other learning rates)."""
  labels = series_labels(records)
  shown = {id(r) for runs in lines.values() for r in runs}
  out: dict[str, list[dict]] = {}
  for r in records:
    if id(r) not in shown and r.get("eval_bpb") is not None:
      out.setdefault(labels[series_of(r)], []).append(r)
  return out


def _bpb_plot(plt, records, lines, colors, x_key, x_label, title, path) -> str:
  """One held-out bits per byte plot against `x_key`: a line per series through its best
  runs, faint markers for the other runs of a sweep, the quick evaluations of the largest
  budget dotted (FLOPs only)."""
  fig, ax = plt.subplots(figsize=(7, 4.5))
  others = _others(records, lines)
  for label, group in lines.items():
    points = [(r[x_key], r["eval_bpb"]) for r in group if r.get(x_key) is not None]
    if points:
      xs, ys = zip(*points)
      ax.plot(xs, ys, "o-", color=colors[label], label=label, linewidth=2, markersize=6)
    rest = [(r[x_key], r["eval_bpb"]) for r in others.get(label, ()) if r.get(x_key)]
    if rest:
      ax.plot(*zip(*rest), "o", color=colors[label], alpha=0.35, markersize=4)
    curve = [(c["train_flops"], c["eval_bpb"]) for c in group[-1].get("curve", [])
             if not c.get("final") and c.get("eval_bpb") is not None]
    if x_key == "train_flops" and curve:
      ax.plot(*zip(*curve), ":", color=colors[label], linewidth=1, alpha=0.7)
  ax.set_xscale("log")
  ax.set_xlabel(x_label)
  ax.set_ylabel("held-out bits per byte")
  ax.set_title(title + ("  (faint: other runs of a series, e.g. learning rates)"
                        if others else ""))
  ax.grid(True, which="both", alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def _throughput_plot(plt, records, colors, title, path) -> str:
  """Training bytes/s of each model size (the mean over its runs: a learning-rate sweep's
  runs are one size), coloured by series and named by its first model."""
  labels = series_labels(records)
  rates: dict[tuple, list[float]] = {}
  names: dict[tuple, str] = {}
  for r in sorted(records, key=model_order):
    if r.get("bytes_per_s"):
      key = (labels[series_of(r)], r["params"])
      rates.setdefault(key, []).append(r["bytes_per_s"])
      names.setdefault(key, r["model"])
  first: dict[str, int] = {}           # series in model order, each by size
  for label, _ in rates:
    first.setdefault(label, len(first))
  order = sorted(rates, key=lambda key: (first[key[0]], key[1]))
  means = [sum(rates[key]) / len(rates[key]) for key in order]
  fig, ax = plt.subplots(figsize=(max(7, 0.6 * len(order)), 4))
  ax.bar(range(len(order)), means, color=[colors.get(key[0], "gray") for key in order])
  ax.set_xticks(range(len(order)), [names[key] for key in order], rotation=30, ha="right",
                fontsize=8)
  ax.set_ylabel("training bytes/s")
  ax.set_title(f"{title}: throughput")
  for i, rate in enumerate(means):
    ax.text(i, rate, f"{rate:,.0f}", ha="center", va="bottom", fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def plot(records: Sequence[dict], out_dir: str, title: Optional[str] = None) -> list[str]:
  """Draws bpb_vs_flops.png, bpb_vs_wallclock.png and throughput.png; returns the paths."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  os.makedirs(out_dir, exist_ok=True)
  lines = by_model(records)
  colors = {label: plt.get_cmap("tab10")(i % 10) for i, label in enumerate(lines)}
  title = title or (records[0]["study"] if records else "study")
  paths = [_bpb_plot(plt, records, lines, colors, x_key, x_label, title,
                     os.path.join(out_dir, name))
           for x_key, x_label, name in (
               ("train_flops", "training FLOPs", "bpb_vs_flops.png"),
               ("train_s", "training wall-clock (s)", "bpb_vs_wallclock.png"))]
  paths.append(_throughput_plot(plt, records, colors, title,
                                os.path.join(out_dir, "throughput.png")))
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
