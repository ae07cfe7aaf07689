"""Equal-compute studies: several models trained on the same bytes with matched training FLOPs.

    python -m experiments.study --study=experiments/studies/code_equal_compute.py \\
        --results=experiments/results/code_equal_compute
    python -m experiments.study --study=experiments/studies/mnist_scan.py:cpu --results=DIR
    python -m experiments.study --study=... --results=DIR --dry_run     # the plan only

A study file (`experiments/studies/*.py`) defines `get_study(variant)`, a dict: the corpus,
the context length and batch shared by every model, the optimiser settings, the compute
budgets (training FLOPs) and the models. For every budget and model the driver sets

    steps = round(budget / (train FLOPs per byte * batch_size * seq_len))

with FLOPs per byte from `megabyte_jax.flops.model_cost` (forward + backward, attention
included), so every model at one budget gets the same training compute. All models share
`seq_len`, `batch_size` and the data seed, so they read the same stream of bytes: a model
that costs less per byte trains on a longer prefix of it. Each run is a plain
`megabyte_jax.train.train_and_evaluate` run (its own learning-rate schedule over its own
steps), followed by a full evaluation of every held-out byte.

A budget may be "auto": once the earlier budgets are done, it becomes the largest of
`auto_multiples` times the largest finished budget whose runs, estimated from the measured
speed of the finished ones, fit in what is left of `--time_limit_s`. Runs that would not fit
are skipped and recorded as such; finished runs are never redone (run the same command again
to continue a study).

Results, in `--results`:

    runs/<run>.json     one record per run (written as soon as it finishes): eval bits per
                        byte, training FLOPs, steps, bytes trained, parameters, wall-clock
                        (whole run, compilation, training), bytes/s, device, config
    results.json        the study, its corpus manifest and every run record
    results.csv         one row per run
    samples/            image studies: sampled and completed images (PNG and .npy)

`python -m experiments.plot_results --results=DIR` draws the plots.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import io
import json
import math
import os
import re
import shutil
import sys
import time
from typing import Any, Callable, Optional, Sequence

RESULT_FIELDS = (
    "study", "run", "model", "kind", "patch_size", "order", "budget_flops", "train_flops",
    "steps", "batch_size", "seq_len", "bytes_trained", "epochs", "params",
    "non_embedding_params", "train_flops_per_byte", "attention_share", "eval_bpb",
    "eval_bytes", "train_bpb", "wall_s", "compile_s", "train_s", "bytes_per_s",
    "skipped_steps", "device", "status")
"""The columns of results.csv."""

AUTO = "auto"
DEFAULT_AUTO_MULTIPLES = (16, 12, 10, 8, 6, 5, 4, 3, 2)


class StudyError(ValueError):
  """A study file or a command-line option cannot be used."""


# ---------------------------------------------------------------------------------- spec


def load_study(spec: str) -> dict:
  """Loads `path.py[:variant]` and returns its `get_study(variant)` dict (checked).

  Raises:
    StudyError: a missing file, no `get_study`, or a study without the required keys.
  """
  path, _, variant = spec.partition(":")
  if not os.path.isfile(path):
    raise StudyError(f"no study file {path!r}")
  from megabyte_jax.experiment import load_module_file  # pylint: disable=g-import-not-at-top
  module = load_module_file(path)
  if not hasattr(module, "get_study"):
    raise StudyError(f"{path} defines no get_study(variant)")
  study = module.get_study(variant) if variant else module.get_study()
  check_study(study)
  study.setdefault("source", spec)
  return study


def check_study(study: dict) -> None:
  """Checks that a study dict has what the driver needs (see `load_study`).

  Raises:
    StudyError: naming the missing or bad key.
  """
  for key in ("name", "corpus", "seq_len", "batch_size", "budgets", "models"):
    if key not in study:
      raise StudyError(f"the study has no {key!r}")
  if study["corpus"].get("kind") not in ("packages", "mnist"):
    raise StudyError(f"corpus kind must be 'packages' or 'mnist', got "
                     f"{study['corpus'].get('kind')!r}")
  if not study["models"]:
    raise StudyError("the study has no models")
  names = [m.get("name") for m in study["models"]]
  if None in names or len(set(names)) != len(names):
    raise StudyError(f"every model needs a distinct name, got {names}")
  for model in study["models"]:
    if model.get("kind") not in ("megabyte", "transformer"):
      raise StudyError(f"model {model['name']!r}: kind must be 'megabyte' or 'transformer'")
  budgets = study["budgets"]
  if not budgets:
    raise StudyError("the study has no budgets")
  for i, budget in enumerate(budgets):
    if budget == AUTO:
      if i == 0:
        raise StudyError("the first budget cannot be 'auto' (it scales a finished one)")
    elif not isinstance(budget, (int, float)) or budget <= 0:
      raise StudyError(f"budgets must be positive FLOP counts or 'auto', got {budget!r}")


def parse_budgets(text: str) -> list:
  """`"1e15,4e15"` or `"1e15,auto"` -> `[1e15, 4e15]` / `[1e15, "auto"]`."""
  out = []
  for part in text.split(","):
    part = part.strip()
    if not part:
      continue
    if part == AUTO:
      out.append(AUTO)
      continue
    try:
      out.append(float(part))
    except ValueError:
      raise StudyError(f"a budget must be a number of FLOPs or 'auto', got {part!r}") from None
  if not out:
    raise StudyError("no budgets given")
  return out


def budget_tag(budget: float) -> str:
  """A short name for a budget: 1.5e15 -> "1.5e15"."""
  mantissa, exponent = f"{budget:.2e}".split("e")
  mantissa = mantissa.rstrip("0").rstrip(".")
  return f"{mantissa}e{int(exponent)}"


def model_config(study: dict, model: dict, steps: int):
  """The `megabyte_jax` config of `model` trained for `steps` steps with the study's context,
  batch and optimiser (learning-rate schedule, warmup); data, evaluation and logging are the
  defaults (`experiment_config` sets them for a study run)."""
  from megabyte_jax.experiment import base_config  # pylint: disable=g-import-not-at-top
  dropped = ("name", "kind", "order", "learning_rate") + (
      ("patch_size",) if model["kind"] == "transformer" else ())
  fields = {k: v for k, v in model.items() if k not in dropped}
  fields = dict(study.get("model_defaults", {}), **fields)
  config = base_config(model["kind"], seq_len=study["seq_len"], **fields)
  train = dict(study.get("train", {}))
  warmup_fraction = train.pop("warmup_fraction", 0.05)
  for key, value in train.items():
    if key not in config.train:
      raise StudyError(f"unknown train setting {key!r} in the study")
    config.train[key] = value
  if "learning_rate" in model:
    config.train.learning_rate = model["learning_rate"]
  config.train.steps = int(steps)
  config.train.batch_size = int(study["batch_size"])
  # At least one warmup step, and at least one step of decay after it.
  config.train.warmup_steps = max(0, min(int(steps) - 1, max(1, round(warmup_fraction * steps))))
  return config


def experiment_config(study: dict, model: dict, steps: int, data_files: str, eval_files: str):
  """The `megabyte_jax` experiment config of one run of `model` for `steps` steps: the
  `model_config`, trained on `data_files` and evaluated on `eval_files` at the study's
  cadence."""
  config = model_config(study, model, steps)
  quick_evals = int(study.get("quick_evals", 0))
  log_every = max(1, int(steps) // int(study.get("log_windows", 40)))
  config.train.log_every = log_every
  if quick_evals:
    config.train.eval_every = max(1, int(steps) // quick_evals // log_every) * log_every
  else:
    config.train.eval_every = 0
  config.train.eval_batches = int(study.get("eval_batches", 8))
  config.train.checkpoint_every = int(steps)
  config.train.keep_checkpoints = 1
  config.train.tensorboard = False
  config.eval.batch_size = int(study.get("eval_batch_size", study["batch_size"]))
  config.data.name = "local_files"
  config.data.files = data_files
  config.data.eval_files = eval_files
  config.data.separator = study.get("separator", 0)
  config.data.split_seed = 0
  config.seed = int(study.get("seed", 0))
  config.sample.num_bytes = 0
  return config


def model_costs(study: dict) -> dict[str, Any]:
  """`{model name: flops.CostReport}` at the study's context length."""
  from megabyte_jax.flops import model_cost  # pylint: disable=g-import-not-at-top
  from megabyte_jax.models import build_model  # pylint: disable=g-import-not-at-top
  costs = {}
  for model in study["models"]:
    config = model_config(study, model, 1)
    _, cfg = build_model(config.model)
    costs[model["name"]] = model_cost(cfg, study["seq_len"])
  return costs


def steps_for_budget(budget: float, flops_per_byte: float, batch_size: int,
                     seq_len: int) -> int:
  """Steps whose training FLOPs come nearest `budget` (at least 1)."""
  return max(1, round(budget / (flops_per_byte * batch_size * seq_len)))


def run_id(model_name: str, budget: float) -> str:
  """The name of one run: `<model>@<budget>`."""
  return f"{model_name}@{budget_tag(budget)}"


# ------------------------------------------------------------------------------- corpus


def prepare_corpora(study: dict, corpus_root: str) -> dict[str, dict]:
  """Builds (or reuses) every corpus the study needs under `corpus_root`.

  Returns `{corpus key: {"train": dir, "eval": dir, "manifest": dict}}`; the key is
  "main" for a code corpus and the scan order ("raster", "patch") plus patch size for
  images.
  """
  from experiments import corpus as corpus_lib  # pylint: disable=g-import-not-at-top
  spec = study["corpus"]
  out = {}
  if spec["kind"] == "packages":
    directory = os.path.join(corpus_root, study["name"])
    start = time.perf_counter()
    manifest = corpus_lib.build_package_corpus(
        directory, spec.get("roots", corpus_lib.SITE_PACKAGES), spec.get("eval_packages"),
        int(spec.get("eval_target_bytes", 4 << 20)),
        None if spec.get("max_train_bytes") is None else int(spec["max_train_bytes"]),
        spec.get("max_file_bytes", 1 << 20), int(spec.get("shard_bytes", 1 << 20)),
        int(spec.get("seed", 0)))
    train_dir, eval_dir = corpus_lib.corpus_data_paths(directory)
    manifest = dict(manifest, build_seconds=round(time.perf_counter() - start, 1))
    out["main"] = {"train": train_dir, "eval": eval_dir, "manifest": manifest}
    return out
  images, _ = corpus_lib.load_mnist(spec["source"])
  for model in study["models"]:
    key = corpus_key(study, model)
    if key in out:
      continue
    directory = os.path.join(corpus_root, study["name"], key)
    manifest = corpus_lib.build_image_corpus(
        directory, images, model.get("order", "raster"), model["patch_size"],
        eval_count=int(spec.get("eval_count", 500)), canvas=int(spec.get("canvas", 32)),
        train_copies=int(spec.get("train_copies", 1)), seed=int(spec.get("seed", 0)))
    train_dir, eval_dir = corpus_lib.corpus_data_paths(directory)
    out[key] = {"train": train_dir, "eval": eval_dir, "manifest": manifest,
                "dir": directory}
  return out


def corpus_key(study: dict, model: dict) -> str:
  """Which corpus a model reads: "main" (code), "raster" or "patch-p<patch size>" (images)."""
  if study["corpus"]["kind"] == "packages":
    return "main"
  order = model.get("order", "raster")
  return "raster" if order == "raster" else f"{order}-p{model['patch_size']}"


# -------------------------------------------------------------------------------- timing


class _Tee(io.TextIOBase):
  """Writes to a stream and keeps a copy."""

  def __init__(self, stream):
    self._stream, self.lines = stream, io.StringIO()

  def write(self, text):
    self.lines.write(text)
    return self._stream.write(text)

  def flush(self):
    self._stream.flush()


_COMPILE_RE = re.compile(r"first step \(compilation included\): ([0-9.]+) s")
_FINAL_EVAL_RE = re.compile(r"final eval: .* \(step \d+, ([0-9.]+) s\)")


def training_time(metrics: Sequence[dict], batch_size: int, seq_len: int,
                  compile_s: Optional[float]) -> tuple[Optional[float], Optional[float]]:
  """`(bytes/s, training seconds)` from the `metrics.jsonl` records of one run.

  Each logged window's `bytes_per_s` covers the steps since the previous log (the first
  window without its first step, which compiles; the study logs at multiples that
  evaluations and checkpoints also fall on, so no pause is inside a window). Training time is
  the compile step plus the sum of the windows' times.
  """
  prev, timed_bytes, timed_seconds = 0, 0.0, 0.0
  for record in metrics:
    if "train_bpb" not in record and "bytes_per_s" not in record:
      continue
    step = int(record["step"])
    steps = step - prev - (1 if prev == 0 else 0)
    prev = step
    rate = record.get("bytes_per_s")
    if rate and steps > 0:
      window_bytes = steps * batch_size * seq_len
      timed_bytes += window_bytes
      timed_seconds += window_bytes / rate
  if timed_seconds <= 0:
    return None, compile_s
  return timed_bytes / timed_seconds, (compile_s or 0.0) + timed_seconds


def device_description() -> str:
  """`"<device kind> x<count> (<backend>), jax <version>"`."""
  import jax  # pylint: disable=g-import-not-at-top
  devices = jax.devices()
  return (f"{devices[0].device_kind} x{len(devices)} ({jax.default_backend()}), "
          f"jax {jax.__version__}")


# ---------------------------------------------------------------------------------- runs


def run_training(config, workdir: str) -> dict:
  """Runs `train_and_evaluate(config, workdir)` from scratch; returns what it returned plus
  `wall_s`, `compile_s`, `final_eval_s` and the run's metric records."""
  from megabyte_jax.training.metrics import read_metrics  # pylint: disable=g-import-not-at-top
  from megabyte_jax.train import train_and_evaluate  # pylint: disable=g-import-not-at-top
  if os.path.exists(workdir):
    shutil.rmtree(workdir)
  tee = _Tee(sys.stdout)
  start = time.perf_counter()
  with contextlib.redirect_stdout(tee):
    final = train_and_evaluate(config, workdir, progress=False)
  wall = time.perf_counter() - start
  text = tee.lines.getvalue()
  compile_match = _COMPILE_RE.search(text)
  eval_match = _FINAL_EVAL_RE.search(text)
  return dict(final, wall_s=wall,
              compile_s=float(compile_match.group(1)) if compile_match else None,
              final_eval_s=float(eval_match.group(1)) if eval_match else None,
              metrics=read_metrics(workdir))


def run_record(study: dict, model: dict, budget: float, steps: int, cost, outcome: dict,
               corpus_info: dict, device: str) -> dict:
  """The result record of one finished run (a row of results.csv plus details)."""
  batch, seq_len = int(study["batch_size"]), int(study["seq_len"])
  bytes_trained = steps * batch * seq_len
  bytes_per_s, train_s = training_time(outcome["metrics"], batch, seq_len,
                                       outcome.get("compile_s"))
  train_bytes = corpus_info["manifest"]["train"]["bytes"]
  curve = []
  for record in outcome["metrics"]:
    if "eval_bpb" in record:
      curve.append({"step": record["step"], "eval_bpb": record["eval_bpb"],
                    "train_flops": record["step"] * batch * seq_len *
                    cost.train_flops_per_byte, "final": bool(record.get("final"))})
  return {
      "study": study["name"], "run": run_id(model["name"], budget), "model": model["name"],
      "kind": model["kind"], "patch_size": model.get("patch_size", 1),
      "order": model.get("order"), "budget_flops": float(budget),
      "train_flops": bytes_trained * cost.train_flops_per_byte, "steps": steps,
      "batch_size": batch, "seq_len": seq_len, "bytes_trained": bytes_trained,
      "epochs": bytes_trained / train_bytes if train_bytes else None,
      "params": outcome.get("params", cost.params),
      "non_embedding_params": cost.non_embedding_params,
      "train_flops_per_byte": cost.train_flops_per_byte,
      "attention_share": cost.attention_flops_per_byte / cost.forward_flops_per_byte,
      "eval_bpb": outcome.get("eval_bpb"), "eval_bytes": outcome.get("eval_bytes"),
      "train_bpb": outcome.get("train_bpb"), "wall_s": round(outcome["wall_s"], 2),
      "compile_s": outcome.get("compile_s"),
      "train_s": None if train_s is None else round(train_s, 2),
      "bytes_per_s": None if bytes_per_s is None else round(bytes_per_s, 1),
      "final_eval_s": outcome.get("final_eval_s"),
      "skipped_steps": outcome.get("skipped_steps", 0), "device": device,
      "status": "done", "curve": curve,
      "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
  }


def estimate_seconds(model_name: str, steps: int, study: dict, cost, done: Sequence[dict]
                     ) -> Optional[float]:
  """Expected wall-clock of a run, from the finished runs (None when there are none).

  A finished run of the same model gives its bytes/s and fixed cost (loading, compiling,
  evaluating); otherwise the finished runs' mean training FLOP/s and fixed cost are used.
  """
  finished = [r for r in done if r.get("status") == "done" and r.get("bytes_per_s")]
  if not finished:
    return None
  bytes_needed = steps * study["batch_size"] * study["seq_len"]

  def fixed(r):   # what a run costs besides its timed steps: loading, compiling, evaluating
    timed_bytes = max(r["steps"] - 1, 0) * r["batch_size"] * r["seq_len"]
    return max(0.0, r["wall_s"] - timed_bytes / r["bytes_per_s"])

  same = [r for r in finished if r["model"] == model_name]
  if same:
    r = max(same, key=lambda r: r["steps"])
    return fixed(r) + bytes_needed / r["bytes_per_s"]
  flops_per_s = sum(r["bytes_per_s"] * r["train_flops_per_byte"] for r in finished) \
      / len(finished)
  overhead = sum(fixed(r) for r in finished) / len(finished)
  return overhead + bytes_needed * cost.train_flops_per_byte / flops_per_s


def resolve_auto_budget(study: dict, costs: dict, done: Sequence[dict], remaining_s: float,
                        models: Sequence[dict], safety: float = 0.85) -> Optional[float]:
  """The largest multiple (of `study["auto_multiples"]`) of the largest finished budget
  whose runs are expected to fit in `remaining_s`; None when not even the smallest fits."""
  finished = [r["budget_flops"] for r in done if r.get("status") == "done"]
  if not finished:
    return None
  base = max(finished)
  multiples = sorted(study.get("auto_multiples", DEFAULT_AUTO_MULTIPLES), reverse=True)
  for m in multiples:
    budget = base * m
    total = 0.0
    for model in models:
      cost = costs[model["name"]]
      steps = steps_for_budget(budget, cost.train_flops_per_byte, study["batch_size"],
                               study["seq_len"])
      estimate = estimate_seconds(model["name"], steps, study, cost, done)
      if estimate is None:
        return None
      total += estimate
    if total <= safety * remaining_s:
      return budget
  return None


# ------------------------------------------------------------------------------ results


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
  with open(os.path.join(results_dir, "results.csv"), "w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=RESULT_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for record in records:
      writer.writerow(record)


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
    return sorted(records, key=lambda r: (r.get("finished") or "", r["run"]))
  records = []
  for name in sorted(os.listdir(runs_dir)):
    if name.endswith(".json"):
      with open(os.path.join(runs_dir, name), encoding="utf-8") as f:
        records.append(json.load(f))
  return sorted(records, key=lambda r: (r.get("finished") or "", r["run"]))


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


# ----------------------------------------------------------------------------- the study


def plan_lines(study: dict, costs: dict, budgets: Sequence) -> list[str]:
  """A human-readable plan: per budget and model, steps, bytes and FLOPs per byte."""
  lines = [f"study {study['name']}: seq_len {study['seq_len']}, batch {study['batch_size']} "
           f"({study['seq_len'] * study['batch_size']:,} bytes per step)"]
  for model in study["models"]:
    c = costs[model["name"]]
    lines.append(f"  {model['name']:>14}: {c.params / 1e6:7.2f}M params, "
                 f"{c.train_flops_per_byte / 1e6:8.2f} MFLOP per trained byte "
                 f"(attention {c.attention_flops_per_byte / c.forward_flops_per_byte:.0%})")
  for budget in budgets:
    if budget == AUTO:
      lines.append("  budget auto: chosen after the earlier budgets, from their measured speed")
      continue
    for model in study["models"]:
      c = costs[model["name"]]
      steps = steps_for_budget(budget, c.train_flops_per_byte, study["batch_size"],
                               study["seq_len"])
      lines.append(f"  budget {budget_tag(budget):>7} {model['name']:>14}: {steps:6d} steps, "
                   f"{steps * study['batch_size'] * study['seq_len'] / 1e6:9.2f} MB")
  return lines


def run_study(study: dict, results_dir: str, work_root: str, corpus_root: str,
              time_limit_s: Optional[float] = None, keep_checkpoints: bool = False,
              log: Callable[[str], None] = print) -> list[dict]:
  """Runs every (budget, model) of `study` not already in `results_dir`; returns all records.

  Each record names its run directory (`workdir`) and, for images, its corpus directory
  (`corpus_dir`); checkpoints are deleted after each run unless `keep_checkpoints`.
  """
  start = time.perf_counter()
  costs = model_costs(study)
  corpora = prepare_corpora(study, corpus_root)
  for key, info in corpora.items():
    m = info["manifest"]
    log(f"corpus {key}: {m['train']['bytes']:,} training bytes, {m['eval']['bytes']:,} "
        f"held-out bytes")
  records = load_runs(results_dir)
  done_ids = {r["run"] for r in records if r.get("status") == "done"}
  device = device_description()
  log(f"device: {device}")
  budgets = list(study["budgets"])
  for budget in budgets:
    elapsed = time.perf_counter() - start
    remaining = None if time_limit_s is None else time_limit_s - elapsed
    if budget == AUTO:
      if remaining is None:
        raise StudyError("an 'auto' budget needs --time_limit_s")
      budget = resolve_auto_budget(study, costs, records, remaining, study["models"])
      if budget is None:
        log("budget auto: no multiple of the finished budgets fits the time left; skipped")
        continue
      log(f"budget auto -> {budget_tag(budget)} FLOPs")
    for model in study["models"]:
      rid = run_id(model["name"], budget)
      if rid in done_ids:
        log(f"{rid}: already done, kept")
        continue
      cost = costs[model["name"]]
      steps = steps_for_budget(budget, cost.train_flops_per_byte, study["batch_size"],
                               study["seq_len"])
      elapsed = time.perf_counter() - start
      estimate = estimate_seconds(model["name"], steps, study, cost, records)
      if time_limit_s is not None and estimate is not None \
          and elapsed + estimate > time_limit_s:
        log(f"{rid}: skipped, expected {estimate:.0f} s but {time_limit_s - elapsed:.0f} s left")
        continue
      info = corpora[corpus_key(study, model)]
      config = experiment_config(study, model, steps, info["train"], info["eval"])
      workdir = os.path.join(work_root, study["name"], rid.replace("@", "_at_"))
      log(f"{rid}: {steps} steps, {steps * study['batch_size'] * study['seq_len']:,} bytes, "
          f"{steps * study['batch_size'] * study['seq_len'] * cost.train_flops_per_byte:.3e} "
          f"FLOPs" + (f" (expected {estimate:.0f} s)" if estimate else ""))
      outcome = run_training(config, workdir)
      record = run_record(study, model, budget, steps, cost, outcome, info, device)
      record["workdir"] = workdir
      if "dir" in info:
        record["corpus_dir"] = info["dir"]
      save_run(results_dir, record)
      records = [r for r in records if r["run"] != rid] + [record]
      done_ids.add(rid)
      write_results(results_dir, study, corpora, records)
      log(f"{rid}: eval {record['eval_bpb']:.4f} bits/byte, {record['wall_s']:.0f} s "
          f"({record['bytes_per_s'] or 0:,.0f} bytes/s)")
      if not keep_checkpoints:
        shutil.rmtree(os.path.join(workdir, "checkpoints"), ignore_errors=True)
  write_results(results_dir, study, corpora, records)
  return records


def main(argv: Optional[Sequence[str]] = None) -> None:
  """The command line (see the module docstring)."""
  parser = argparse.ArgumentParser(
      description="Equal-compute study: models trained with matched FLOPs on the same bytes.")
  parser.add_argument("--study", required=True, help="experiments/studies/NAME.py[:variant]")
  parser.add_argument("--results", required=True, help="results directory")
  parser.add_argument("--work_root", default="/tmp/megabyte_study/runs",
                      help="run directories (checkpoints, metrics)")
  parser.add_argument("--corpus_root", default="/tmp/megabyte_study/corpus",
                      help="where corpora are built (reused when the options match)")
  parser.add_argument("--budgets", default=None, help="override, e.g. 1e15,4e15 or 1e15,auto")
  parser.add_argument("--models", default=None, help="only these models (comma-separated)")
  parser.add_argument("--time_limit_s", type=float, default=None,
                      help="skip runs expected to end after this many seconds (default: the "
                      "study's time_limit_s, if any)")
  parser.add_argument("--corpus_roots", default=None,
                      help="code corpus: directories to read instead of the study's")
  parser.add_argument("--mnist", default=None, help="image corpus: the MNIST .npz or source")
  parser.add_argument("--compilation_cache", default="/tmp/megabyte_study/jax_cache",
                      help="JAX's persistent compilation cache (runs of one model at several "
                      "budgets then compile their initialisation and evaluation once); '' "
                      "turns it off")
  parser.add_argument("--keep_checkpoints", action="store_true")
  parser.add_argument("--dry_run", action="store_true", help="print the plan and stop")
  parser.add_argument("--plot", action=argparse.BooleanOptionalAction, default=True,
                      help="draw the plots at the end (needs matplotlib)")
  args = parser.parse_args(argv)
  try:
    study = load_study(args.study)
    if args.budgets:
      study["budgets"] = parse_budgets(args.budgets)
    if args.models:
      wanted = [m for m in args.models.split(",") if m]
      unknown = sorted(set(wanted) - {m["name"] for m in study["models"]})
      if unknown:
        raise StudyError(f"unknown model(s) {unknown}")
      study["models"] = [m for m in study["models"] if m["name"] in wanted]
    if args.corpus_roots:
      study["corpus"]["roots"] = args.corpus_roots
    if args.mnist:
      study["corpus"]["source"] = args.mnist
    check_study(study)
    if args.time_limit_s is None:
      args.time_limit_s = study.get("time_limit_s")
    if AUTO in study["budgets"] and args.time_limit_s is None:
      raise StudyError("an 'auto' budget needs a time limit: pass --time_limit_s (or set "
                       "time_limit_s in the study)")
    costs = model_costs(study)
    for line in plan_lines(study, costs, study["budgets"]):
      print(line, flush=True)
    if args.dry_run:
      return
    if args.compilation_cache:
      import jax  # pylint: disable=g-import-not-at-top
      jax.config.update("jax_compilation_cache_dir", args.compilation_cache)
      jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    images = study["corpus"]["kind"] == "mnist"
    reserve = float(study.get("sample_reserve_s", 90)) if images else 0.0
    started = time.perf_counter()
    records = run_study(study, args.results, args.work_root, args.corpus_root,
                        None if args.time_limit_s is None else args.time_limit_s - reserve,
                        keep_checkpoints=args.keep_checkpoints or images)
    if images:   # samples from each model's largest budget, in the time left
      from experiments import images as images_lib  # pylint: disable=g-import-not-at-top
      from experiments import plot_results  # pylint: disable=g-import-not-at-top
      left = None if args.time_limit_s is None else \
          args.time_limit_s - (time.perf_counter() - started)
      records = images_lib.sample_study(args.results, study, records, left)
      images_lib.write_figures(args.results, records)
      plot_results.write_tables([r for r in records if r.get("status") == "done"],
                                args.results)
      if not args.keep_checkpoints:
        for record in records:
          if record.get("workdir"):
            shutil.rmtree(os.path.join(record["workdir"], "checkpoints"), ignore_errors=True)
  except (StudyError, ValueError) as e:
    sys.exit(f"error: {e}")
  if args.plot:
    try:
      from experiments import plot_results  # pylint: disable=g-import-not-at-top
      plot_results.plot_directory(args.results)
    except ImportError as e:
      print(f"plots skipped ({e}); run python -m experiments.plot_results --results="
            f"{args.results} where matplotlib is installed", flush=True)


if __name__ == "__main__":
  main()
