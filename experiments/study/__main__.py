"""`python -m experiments.study`: the study driver's command line (see `experiments.study`)."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from typing import Optional, Sequence

import jax

from experiments import images as images_lib
from experiments import plot_results
from experiments.study.records import write_tables
from experiments.study.runner import run_study
from experiments.study.spec import (AUTO, StudyError, check_study, load_study, model_costs,
                                    parse_budgets, plan_lines, select_runs)


def main(argv: Optional[Sequence[str]] = None) -> None:
  """The command line (see the `experiments.study` docstring)."""
  parser = argparse.ArgumentParser(
      prog="python -m experiments.study",
      description="Equal-compute study: models trained with matched FLOPs on the same bytes.")
  parser.add_argument("--study", required=True,
                      help="NAME (experiments/studies/NAME.py), a module (a.b.c) or a study "
                      "file's path, optionally followed by :variant")
  parser.add_argument("--results", required=True, help="results directory")
  parser.add_argument("--work_root", default="/tmp/megabyte_study/runs",
                      help="run directories (checkpoints, metrics)")
  parser.add_argument("--corpus_root", default="/tmp/megabyte_study/corpus",
                      help="where corpora are built (reused when the options match)")
  parser.add_argument("--budgets", default=None,
                      help="override, e.g. 1e15,4e15 or 1e15,auto; a model with its own "
                      "budgets runs at those of them it lists")
  parser.add_argument("--models", default=None,
                      help="only these models (comma-separated), at their budgets")
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
  parser.add_argument("--resume", action="store_true",
                      help="continue a run left unfinished in --work_root (a time limit or a "
                      "kill) from its newest checkpoint instead of starting it again; its "
                      "wall_s is that of the last call, its train_s covers every part")

  parser.add_argument("--dry_run", "--plan", action="store_true",
                      help="print the plan (per budget: each model's context x batch, "
                      "parameters, FLOPs per byte, learning rate, steps, bytes) and stop")
  parser.add_argument("--plot", action=argparse.BooleanOptionalAction, default=True,
                      help="draw the plots at the end (needs matplotlib)")
  args = parser.parse_args(argv)
  try:
    study = select_runs(load_study(args.study),
                        parse_budgets(args.budgets) if args.budgets else None,
                        [m for m in args.models.split(",") if m] if args.models else None)
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
      jax.config.update("jax_compilation_cache_dir", args.compilation_cache)
      jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    images = study["corpus"]["kind"] == "mnist"
    reserve = float(study.get("sample_reserve_s", 90)) if images else 0.0
    started = time.perf_counter()
    records = run_study(study, args.results, args.work_root, args.corpus_root,
                        None if args.time_limit_s is None else args.time_limit_s - reserve,
                        keep_checkpoints=args.keep_checkpoints or images,
                        resume=args.resume)
    if images:   # samples from each model's largest budget, in the time left
      left = None if args.time_limit_s is None else \
          args.time_limit_s - (time.perf_counter() - started)
      records = images_lib.sample_study(args.results, study, records, left)
      images_lib.write_figures(args.results, records)
      write_tables([r for r in records if r.get("status") == "done"], args.results)
      if not args.keep_checkpoints:
        for record in records:
          if record.get("workdir"):
            shutil.rmtree(os.path.join(record["workdir"], "checkpoints"), ignore_errors=True)
  except (StudyError, ValueError) as e:
    sys.exit(f"error: {e}")
  if args.plot:
    try:
      plot_results.plot_directory(args.results)
    except ImportError as e:
      print(f"plots skipped ({e}); run python -m experiments.plot_results --results="
            f"{args.results} where matplotlib is installed", flush=True)


if __name__ == "__main__":
  main()
