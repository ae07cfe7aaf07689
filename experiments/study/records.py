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
    "skipped_steps", "device", "status", "series", "learning_rate")
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
  patch size, context and name."""
  return (record["kind"] != "transformer", record.get("order") or "",
          record.get("patch_size") or 1, record.get("seq_len") or 0, record["model"])


def context_tag(seq_len: int) -> str:
  """A short name for a context length: 8192 -> "8k", 1536 -> "1.5k", 256 -> "256"."""
  tenths = seq_len * 10 / 1024
  if seq_len < 1024 or tenths != int(tenths):
    return str(seq_len)
  return f"{seq_len / 1024:g}k"


def series_of(record: dict) -> tuple[str, int]:
  """What the plots draw as one line: `(series, seq_len)` of a record. `series` is the
  model dict's (e.g. the same architecture sized for each budget, and its learning-rate
  variants), else the model's name (records written before the field)."""
  return (record.get("series") or record["model"], int(record.get("seq_len") or 0))


def series_labels(records: Sequence[dict]) -> dict[tuple[str, int], str]:
  """`{series_of(record): label}`: the series name, with its context ("megabyte-p8 (8k)")
  when the records have more than one context length."""
  keys = {series_of(r) for r in records}
  several = len({seq_len for _, seq_len in keys}) > 1
  return {key: f"{key[0]} ({context_tag(key[1])})" if several else key[0] for key in keys}


def best_runs(records: Sequence[dict]) -> dict[tuple[str, int], list[dict]]:
  """`{series_of: records}`: per series and budget, the run of lowest held-out bits per
  byte (of a learning-rate sweep: the best learning rate), sorted by budget; series in
  `model_order`. Runs without an evaluation are left out."""
  best: dict[tuple, dict[float, dict]] = {}
  for record in sorted(records, key=model_order):
    if record.get("eval_bpb") is None:
      continue
    at = best.setdefault(series_of(record), {})
    budget = record["budget_flops"]
    if budget not in at or record["eval_bpb"] < at[budget]["eval_bpb"]:
      at[budget] = record
  return {key: [at[b] for b in sorted(at)] for key, at in best.items()}


def _by_finish(record: dict) -> tuple:
  return (record.get("finished") or "", record["run"])


def load_runs(results_dir: str) -> list[dict]:
  """Every run record of `results_dir`, oldest first: those of `runs/*.json`, and those
  listed in `results.json` that `runs/` lacks (a copy that kept only the summary files, to
  which later runs were added)."""
  by_run = {}
  summary = os.path.join(results_dir, "results.json")
  if os.path.isfile(summary):
    with open(summary, encoding="utf-8") as f:
      by_run = {r["run"]: r for r in json.load(f).get("runs", [])}
  runs_dir = os.path.join(results_dir, "runs")
  if os.path.isdir(runs_dir):
    for name in sorted(os.listdir(runs_dir)):
      if name.endswith(".json"):
        with open(os.path.join(runs_dir, name), encoding="utf-8") as f:
          record = json.load(f)
        by_run[record["run"]] = record
  return sorted(by_run.values(), key=_by_finish)


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


def _earlier_models(path: str) -> list[dict]:
  """The `models` of an existing results.json at `path` ([] if none or unreadable)."""
  try:
    with open(path, encoding="utf-8") as f:
      models = json.load(f).get("models", [])
  except (OSError, ValueError, AttributeError):
    return []
  return [m for m in models if isinstance(m, dict)] if isinstance(models, list) else []


def write_results(results_dir: str, study: dict, corpora: dict, records: Sequence[dict]) -> None:
  """Writes results.json (study, corpus manifests, runs) and results.csv.

  Its `models` are the study's and those that an earlier results.json of the folder lists
  and the study does not name (a study run one budget or one model per command, into one
  folder, lists all of them)."""
  os.makedirs(results_dir, exist_ok=True)
  path = os.path.join(results_dir, "results.json")
  names = {m["name"] for m in study["models"]}
  models = [m for m in _earlier_models(path) if m.get("name") not in names]
  summary = {"study": {k: v for k, v in study.items() if k != "models"},
             "models": models + list(study["models"]),
             "corpora": {k: v["manifest"] for k, v in corpora.items()},
             "runs": list(records)}
  tmp = os.path.join(results_dir, "results.json.tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=1, default=str)
    f.write("\n")
  os.replace(tmp, path)
  write_csv(os.path.join(results_dir, "results.csv"), records)


def _fmt(value, spec: str, missing: str = "–") -> str:
  return missing if value is None else format(value, spec)


def _varies(records: Sequence[dict], *keys: str) -> bool:
  return len({tuple(r.get(k) for k in keys) for r in records}) > 1


def markdown_table(records: Sequence[dict]) -> str:
  """The results as a Markdown table, one row per run, grouped by budget. A column for the
  context x batch and one for the peak learning rate appear when the runs differ in them;
  where a model has several runs at one budget (a learning-rate sweep), a second table
  gives the best of each (`best_table`)."""
  context, lr = _varies(records, "seq_len", "batch_size"), _varies(records, "learning_rate")
  extra = ["context x batch"] * context + ["peak LR"] * lr
  head = ["budget (FLOPs)", "model"] + extra + [
      "params", "MFLOP/byte", "steps", "MB trained", "eval bpb", "train s", "wall s",
      "bytes/s"]
  lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
  for r in sorted(records, key=lambda r: (r["budget_flops"], model_order(r))):
    cells = ([f"{_fmt(r.get('seq_len'), ',')} x {_fmt(r.get('batch_size'), 'd')}"] * context
             + [_fmt(r.get("learning_rate"), ".3g")] * lr)
    lines.append(
        f"| {budget_tag(r['budget_flops'])} | {r['model']} | "
        + "".join(f"{c} | " for c in cells) +
        f"{r['params'] / 1e6:.2f}M | "
        f"{r['train_flops_per_byte'] / 1e6:.1f} | {r['steps']:,} | "
        f"{r['bytes_trained'] / 1e6:.1f} | **{_fmt(r.get('eval_bpb'), '.4f')}** | "
        f"{_fmt(r.get('train_s'), '.1f')} | {_fmt(r.get('wall_s'), '.1f')} | "
        f"{_fmt(r.get('bytes_per_s'), ',.0f')} |")
  table = "\n".join(lines) + "\n"
  best = best_table(records)
  return table + ("\n" + best if best else "")


def best_table(records: Sequence[dict]) -> str:
  """Per budget and series (`series_of`), the run of lowest held-out bits per byte, with
  its peak learning rate and how many runs it was chosen from; "" when no series has more
  than one run at a budget."""
  counts: dict[tuple, int] = {}
  for r in records:
    if r.get("eval_bpb") is not None:
      key = (series_of(r), r["budget_flops"])
      counts[key] = counts.get(key, 0) + 1
  if not counts or max(counts.values()) < 2:
    return ""
  labels = series_labels(records)
  lines = ["| budget (FLOPs) | series | best run | peak LR | of runs | eval bpb |",
           "| --- | --- | --- | --- | --- | --- |"]
  rows = [(r["budget_flops"], i, key, r) for i, (key, runs) in
          enumerate(best_runs(records).items()) for r in runs]
  for budget, _, key, r in sorted(rows, key=lambda row: row[:2]):
    lines.append(f"| {budget_tag(budget)} | {labels[key]} | {r['model']} | "
                 f"{_fmt(r.get('learning_rate'), '.3g')} | {counts[(key, budget)]} | "
                 f"**{r['eval_bpb']:.4f}** |")
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
