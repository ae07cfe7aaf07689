"""Running a study: its corpora, one training per (budget, model), "auto" budgets, the records.

Each run is a plain `megabyte_jax.train.train_and_evaluate` run (its own learning-rate
schedule over its own steps) followed by a full evaluation of every held-out byte; its record
(`run_record`) is read from what `train_and_evaluate` returns (the final metrics and, where it
gives them, its timings) and from the run's `metrics.jsonl`.
"""

from __future__ import annotations

import datetime
import os
import shutil
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import jax

from experiments import corpus as corpus_lib
from experiments.study.records import budget_tag, load_runs, run_id, save_run, write_results
from experiments.study.spec import (AUTO, DEFAULT_AUTO_MULTIPLES, StudyError, bytes_per_step,
                                    corpus_key, experiment_config, model_batch_size,
                                    model_costs, model_seq_len, model_steps, runs_at)
from megabyte_jax.train import train_and_evaluate
from megabyte_jax.training.metrics import read_metrics


def prepare_corpora(study: dict, corpus_root: str) -> dict[str, dict]:
  """Builds (or reuses) every corpus the study needs under `corpus_root`.

  Returns `{corpus key: {"train": dir, "eval": dir, "manifest": dict}}`; the key is
  "main" for a code corpus and the scan order ("raster", "patch") plus patch size for
  images (`spec.corpus_key`).
  """
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
    contexts = sorted({model_seq_len(study, m) for m in study["models"]})
    manifest = dict(manifest, build_seconds=round(time.perf_counter() - start, 1),
                    eval=dict(manifest["eval"], share_past=share_past(eval_dir, contexts)))
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


def share_past(eval_dir: str, contexts: Sequence[int]) -> dict[str, float]:
  """`{str(L): share}`: for each context L, the share of the held-out bytes under `eval_dir`
  (one document per file) that lie past the first L bytes of their file.

  The final evaluation scores each file from an empty context in consecutive windows of the
  model's context, so these are the bytes that a model of context L sees without the start
  of their file: between two contexts L1 < L2, the bytes whose context differs are
  `share[L1]` of the held-out bytes, and all other bytes are scored with the same context.
  """
  sizes = [os.path.getsize(os.path.join(d, name))
           for d, _, names in os.walk(eval_dir) for name in names]
  total = sum(sizes)
  return {str(c): round(sum(max(0, n - c) for n in sizes) / total, 4) if total else 0.0
          for c in contexts}


def _context_note(manifest: dict) -> str:
  """"; of them past the first 2,048 bytes of their file: 41%, past 8,192: 18%" (or "")."""
  shares = manifest.get("eval", {}).get("share_past")
  if not shares:
    return ""
  (first, share), *rest = shares.items()
  return (f"; of them past the first {int(first):,} bytes of their file: {share:.0%}"
          + "".join(f", past {int(c):,}: {s:.0%}" for c, s in rest))


# -------------------------------------------------------------------------------- timing


def training_time(metrics: Sequence[dict], batch_size: int, seq_len: int,
                  compile_s: Optional[float]) -> tuple[Optional[float], Optional[float]]:
  """`(bytes/s, training seconds)` from the `metrics.jsonl` records of one run.

  Each logged window's `bytes_per_s` covers the steps since the previous log (the first
  window without its first step, which compiles; the study logs at multiples that
  evaluations and checkpoints also fall on, so no pause is inside a window). Training time is
  the compile step (when known) plus the sum of the windows' times.
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


def run_timings(outcome: Mapping[str, Any], batch_size: int, seq_len: int) -> dict:
  """`compile_s`, `train_s`, `bytes_per_s`, `final_eval_s` and `wall_s` of one run (None
  where unknown).

  Read from `train_and_evaluate`'s result record (`run_training`'s `outcome`) where it has
  them; `train_s` and `bytes_per_s` that it lacks come from the run's metric windows
  (`training_time` over `outcome["metrics"]`).
  """
  timings = {key: outcome.get(key) for key in
             ("compile_s", "train_s", "bytes_per_s", "final_eval_s", "wall_s")}
  if timings["train_s"] is None or timings["bytes_per_s"] is None:
    bytes_per_s, train_s = training_time(outcome.get("metrics", ()), batch_size, seq_len,
                                         timings["compile_s"])
    if timings["bytes_per_s"] is None:
      timings["bytes_per_s"] = bytes_per_s
    if timings["train_s"] is None:
      timings["train_s"] = train_s
  return {key: None if value is None else float(value) for key, value in timings.items()}


def device_description() -> str:
  """`"<device kind> x<count> (<backend>), jax <version>"`."""
  devices = jax.devices()
  return (f"{devices[0].device_kind} x{len(devices)} ({jax.default_backend()}), "
          f"jax {jax.__version__}")


# ---------------------------------------------------------------------------------- runs


def has_checkpoint(workdir: str) -> bool:
  """Whether `workdir` holds a saved step (a numbered directory under `checkpoints/`)."""
  directory = os.path.join(workdir, "checkpoints")
  return os.path.isdir(directory) and any(n.isdigit() for n in os.listdir(directory))


def run_training(config, workdir: str, resume: bool = False) -> dict:
  """Runs `train_and_evaluate(config, workdir)`: from scratch (an existing `workdir` is
  deleted first), or with `resume`, from the newest checkpoint of an unfinished run in
  `workdir` where it has one. Returns the result record (a mapping) as a dict plus
  `metrics`, the run's metric records (all of them, across resumes), and `wall_s`, the
  seconds this call took, where the record has none."""
  if os.path.exists(workdir) and not (resume and has_checkpoint(workdir)):
    shutil.rmtree(workdir)
  start = time.perf_counter()
  result = train_and_evaluate(config, workdir, progress=False)
  wall_s = time.perf_counter() - start
  outcome = dict(result, metrics=read_metrics(workdir))
  if outcome.get("wall_s") is None:
    outcome["wall_s"] = wall_s
  return outcome


def run_record(study: dict, model: dict, budget: float, steps: int, cost, outcome: dict,
               corpus_info: dict, device: str) -> dict:
  """The result record of one finished run (a row of results.csv plus details), with the
  model's own context and batch (`seq_len`, `batch_size`), its `series` (what the plots
  draw as one line: the model dict's `series`, else its name) and its peak
  `learning_rate`."""
  batch, seq_len = model_batch_size(study, model), model_seq_len(study, model)
  bytes_trained = steps * batch * seq_len
  timings = run_timings(outcome, batch, seq_len)
  train_bytes = corpus_info["manifest"]["train"]["bytes"]
  curve = []
  for record in outcome["metrics"]:
    if "eval_bpb" in record:
      curve.append({"step": record["step"], "eval_bpb": record["eval_bpb"],
                    "train_flops": record["step"] * batch * seq_len *
                    cost.train_flops_per_byte, "final": bool(record.get("final"))})

  def rounded(key, digits):
    return None if timings[key] is None else round(timings[key], digits)

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
      "train_bpb": outcome.get("train_bpb"), "wall_s": rounded("wall_s", 2),
      "compile_s": rounded("compile_s", 2), "train_s": rounded("train_s", 2),
      "bytes_per_s": rounded("bytes_per_s", 1), "final_eval_s": rounded("final_eval_s", 2),
      "skipped_steps": outcome.get("skipped_steps", 0), "device": device,
      "status": "done", "series": model.get("series", model["name"]),
      "learning_rate": model.get("learning_rate",
                                 study.get("train", {}).get("learning_rate")),
      "curve": curve,
      "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
  }


def estimate_seconds(model_name: str, steps: int, study: dict, cost, done: Sequence[dict],
                     step_bytes: Optional[int] = None) -> Optional[float]:
  """Expected wall-clock of a run of `steps` steps of `step_bytes` bytes (default: the
  study's batch x context), from the finished runs (None when there are none).

  A finished run of the same model gives its bytes/s and fixed cost (loading, compiling,
  evaluating); otherwise the finished runs' mean training FLOP/s and fixed cost are used.
  """
  finished = [r for r in done if r.get("status") == "done" and r.get("bytes_per_s")]
  if not finished:
    return None
  if step_bytes is None:
    step_bytes = int(study["batch_size"]) * int(study["seq_len"])
  bytes_needed = steps * step_bytes

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
      estimate = estimate_seconds(model["name"], model_steps(study, model, cost, budget),
                                  study, cost, done, bytes_per_step(study, model))
      if estimate is None:
        return None
      total += estimate
    if total <= safety * remaining_s:
      return budget
  return None


# ----------------------------------------------------------------------------- the study


def run_study(study: dict, results_dir: str, work_root: str, corpus_root: str,
              time_limit_s: Optional[float] = None, keep_checkpoints: bool = False,
              log: Callable[[str], None] = print, resume: bool = False) -> list[dict]:
  """Runs every (budget, model) of `study` not already in `results_dir` (at each budget,
  the models of `spec.runs_at`); returns all records.

  Each record names its run directory (`workdir`) and, for images, its corpus directory
  (`corpus_dir`); checkpoints are deleted after each run unless `keep_checkpoints`. With
  `resume`, a run left unfinished in `work_root` (a time limit or a kill) continues from its
  newest checkpoint instead of starting again.
  """
  start = time.perf_counter()
  costs = model_costs(study)
  corpora = prepare_corpora(study, corpus_root)
  for key, info in corpora.items():
    m = info["manifest"]
    log(f"corpus {key}: {m['train']['bytes']:,} training bytes, {m['eval']['bytes']:,} "
        f"held-out bytes" + _context_note(m))
  records = load_runs(results_dir)
  device = device_description()
  log(f"device: {device}")
  for budget in list(study["budgets"]):
    models = runs_at(study, budget)
    if budget == AUTO:
      if time_limit_s is None:
        raise StudyError("an 'auto' budget needs --time_limit_s")
      budget = resolve_auto_budget(study, costs, records,
                                   time_limit_s - (time.perf_counter() - start), models)
      if budget is None:
        log("budget auto: no multiple of the finished budgets fits the time left; skipped")
        continue
      log(f"budget auto -> {budget_tag(budget)} FLOPs")
    for model in models:
      deadline = None if time_limit_s is None else start + time_limit_s
      record = _run_one(study, model, budget, costs[model["name"]], records, deadline,
                        corpora, work_root, device, log, resume)
      if record is None:
        continue
      save_run(results_dir, record)
      records = [r for r in records if r["run"] != record["run"]] + [record]
      write_results(results_dir, study, corpora, records)
      if not keep_checkpoints:
        shutil.rmtree(os.path.join(record["workdir"], "checkpoints"), ignore_errors=True)
  write_results(results_dir, study, corpora, records)
  return records


def _run_one(study: dict, model: dict, budget: float, cost, records: Sequence[dict],
             deadline: Optional[float], corpora: dict, work_root: str, device: str,
             log: Callable[[str], None], resume: bool = False) -> Optional[dict]:
  """Trains `model` at `budget` and returns its record; None when it is done already or
  would end after `deadline` (a `time.perf_counter()` time, None: no limit)."""
  rid = run_id(model["name"], budget)
  if any(r["run"] == rid and r.get("status") == "done" for r in records):
    log(f"{rid}: already done, kept")
    return None
  steps = model_steps(study, model, cost, budget)
  step_bytes = bytes_per_step(study, model)
  estimate = estimate_seconds(model["name"], steps, study, cost, records, step_bytes)
  if deadline is not None and estimate is not None \
      and time.perf_counter() + estimate > deadline:
    log(f"{rid}: skipped, expected {estimate:.0f} s but "
        f"{deadline - time.perf_counter():.0f} s left")
    return None
  info = corpora[corpus_key(study, model)]
  config = experiment_config(study, model, steps, info["train"], info["eval"])
  workdir = os.path.join(work_root, study["name"], rid.replace("@", "_at_"))
  log(f"{rid}: {steps} steps of {model_batch_size(study, model)} x "
      f"{model_seq_len(study, model):,} bytes, {steps * step_bytes:,} bytes, "
      f"{steps * step_bytes * cost.train_flops_per_byte:.3e} FLOPs"
      + (f" (expected {estimate:.0f} s)" if estimate else ""))
  if resume and has_checkpoint(workdir):
    log(f"{rid}: resuming the unfinished run in {workdir}")
  outcome = run_training(config, workdir, resume)
  record = run_record(study, model, budget, steps, cost, outcome, info, device)
  record["workdir"] = workdir
  if "dir" in info:
    record["corpus_dir"] = info["dir"]
  log(f"{rid}: eval {record['eval_bpb']:.4f} bits/byte, {record['wall_s']:.0f} s "
      f"({record['bytes_per_s'] or 0:,.0f} bytes/s)")
  return record
