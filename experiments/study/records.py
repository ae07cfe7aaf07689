"""A study's result records on disk: one JSON record per run, results.json, results.csv and
the Markdown table.

This module is the leaf of `experiments.study`: it imports nothing else from `experiments`
(and nothing outside the standard library), so `experiments.plot_results` and
`experiments.images` read and write results without the study driver, JAX or the models.

    runs/<run>.json     one record per run (`save_run`, `load_runs`)
    results.json        the study, its corpus manifests and every run record (`write_results`)
    results.csv         one row per run, the columns of `RESULT_FIELDS`
    table.md            the Markdown table that RESULTS.md shows (`markdown_table`)
"""

from __future__ import annotations

import csv
import json
import os
from typing import Sequence

RESULT_FIELDS = (
    "study", "run", "model", "kind", "patch_size", "order", "budget_flops", "train_flops",
    "steps", "batch_size", "seq_len", "bytes_trained", "epochs", "params",
    "non_embedding_params", "train_flops_per_byte", "attention_share", "eval_bpb",
    "eval_bytes", "train_bpb", "wall_s", "compile_s", "train_s", "bytes_per_s",
    "skipped_steps", "device", "status")
"""The columns of results.csv."""


def budget_tag(budget: float) -> str:
  """A short name for a budget: 1.5e15 -> "1.5e15"."""
  mantissa, exponent = f"{budget:.2e}".split("e")
  mantissa = mantissa.rstrip("0").rstrip(".")
  return f"{mantissa}e{int(exponent)}"


def run_id(model_name: str, budget: float) -> str:
  """The name of one run: `<model>@<budget>`."""
  return f"{model_name}@{budget_tag(budget)}"


def model_order(record: dict) -> tuple:
  """A sort key that orders records by model: the transformer first, then by scan order,
  patch size and name."""
  return (record["kind"] != "transformer", record.get("order") or "",
          record.get("patch_size") or 1, record["model"])


def _by_finish(record: dict) -> tuple:
  return (record.get("finished") or "", record["run"])


def load_runs(results_dir: str) -> list[dict]:
  """Every run record in `results_dir/runs/*.json`, oldest first; without a `runs/` folder,
  those listed in `results_dir/results.json` (a copy that kept only the summary files)."""
  runs_dir = os.path.join(results_dir, "runs")
  if not os.path.isdir(runs_dir):
    summary = os.path.join(results_dir, "results.json")
    if not os.path.isfile(summary):
      return []
    with open(summary, encoding="utf-8") as f:
      records = json.load(f).get("runs", [])
    return sorted(records, key=_by_finish)
  records = []
  for name in sorted(os.listdir(runs_dir)):
    if name.endswith(".json"):
      with open(os.path.join(runs_dir, name), encoding="utf-8") as f:
        records.append(json.load(f))
  return sorted(records, key=_by_finish)


def save_run(results_dir: str, record: dict) -> str:
  """Writes one run record to `results_dir/runs/<run>.json`; returns the path."""
  runs_dir = os.path.join(results_dir, "runs")
  os.makedirs(runs_dir, exist_ok=True)
  path = os.path.join(runs_dir, record["run"].replace("/", "_") + ".json")
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    json.dump(record, f, indent=1, default=str)
    f.write("\n")
  os.replace(path + ".tmp", path)
  return path


def write_csv(path: str, records: Sequence[dict]) -> str:
  """Writes `records` as results.csv (the columns of `RESULT_FIELDS`) to `path`; returns it."""
  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=RESULT_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(records)
  return path


def write_results(results_dir: str, study: dict, corpora: dict, records: Sequence[dict]) -> None:
  """Writes results.json (study, corpus manifests, runs) and results.csv."""
  os.makedirs(results_dir, exist_ok=True)
  summary = {"study": {k: v for k, v in study.items() if k != "models"},
             "models": study["models"],
             "corpora": {k: v["manifest"] for k, v in corpora.items()},
             "runs": list(records)}
  tmp = os.path.join(results_dir, "results.json.tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=1, default=str)
    f.write("\n")
  os.replace(tmp, os.path.join(results_dir, "results.json"))
  write_csv(os.path.join(results_dir, "results.csv"), records)


def _fmt(value, spec: str, missing: str = "–") -> str:
  return missing if value is None else format(value, spec)


def markdown_table(records: Sequence[dict]) -> str:
  """The results as a Markdown table, one row per run, grouped by budget."""
  lines = ["| budget (FLOPs) | model | params | MFLOP/byte | steps | MB trained | "
           "eval bpb | train s | wall s | bytes/s |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
  for r in sorted(records, key=lambda r: (r["budget_flops"], model_order(r))):
    lines.append(
        f"| {budget_tag(r['budget_flops'])} | {r['model']} | {r['params'] / 1e6:.2f}M | "
        f"{r['train_flops_per_byte'] / 1e6:.1f} | {r['steps']:,} | "
        f"{r['bytes_trained'] / 1e6:.1f} | **{_fmt(r.get('eval_bpb'), '.4f')}** | "
        f"{_fmt(r.get('train_s'), '.1f')} | {_fmt(r.get('wall_s'), '.1f')} | "
        f"{_fmt(r.get('bytes_per_s'), ',.0f')} |")
  return "\n".join(lines) + "\n"


def write_tables(records: Sequence[dict], out_dir: str) -> list[str]:
  """Writes results.csv, results.json (its `runs` replaced, anything else kept) and table.md
  into `out_dir`; returns the paths."""
  os.makedirs(out_dir, exist_ok=True)
  paths = [os.path.join(out_dir, name) for name in ("results.csv", "results.json", "table.md")]
  write_csv(paths[0], records)
  existing = {}
  if os.path.exists(paths[1]):
    with open(paths[1], encoding="utf-8") as f:
      try:
        existing = json.load(f)
      except ValueError:
        existing = {}
  existing = existing if isinstance(existing, dict) else {}
  existing["runs"] = list(records)
  with open(paths[1], "w", encoding="utf-8") as f:
    json.dump(existing, f, indent=1, default=str)
    f.write("\n")
  with open(paths[2], "w", encoding="utf-8") as f:
    f.write(markdown_table(records))
  return paths
