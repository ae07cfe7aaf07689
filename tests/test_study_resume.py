"""A study run cut short by a kill continues from its newest checkpoint with `--resume`."""

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time

from experiments.study import runner
from experiments.study.records import budget_tag
from experiments.study import spec as spec_lib
from megabyte_jax.training.checkpoint import Checkpointer
from megabyte_jax.training.metrics import read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 400


def _study(roots: str) -> dict:
  """One tiny byte Transformer, `STEPS` steps, a checkpoint every 10."""
  study = {
      "name": "resume", "seq_len": 32, "batch_size": 4, "eval_batch_size": 16,
      "corpus": {"kind": "packages", "roots": roots, "eval_target_bytes": 20_000,
                 "max_train_bytes": 400_000, "eval_packages": ["beta"]},
      "train": {"learning_rate": 3e-3, "warmup_fraction": 0.1},
      "quick_evals": 0, "eval_batches": 1, "checkpoint_every": 10, "budgets": [1.0],
      "models": [{"name": "transformer", "kind": "transformer", "dim": 16, "layers": 1,
                  "heads": 2}],
  }
  cost = spec_lib.model_costs(study)["transformer"]
  study["budgets"] = [STEPS * cost.train_flops_per_byte * 4 * 32]
  return study


def test_a_killed_study_run_resumes_from_its_newest_checkpoint(tmp_path, capsys):
  roots = tmp_path / "site-packages"
  stdlib = sysconfig.get_paths()["stdlib"]
  for package, source in (("alpha", "json"), ("beta", "email")):
    os.makedirs(roots / package)
    for name in sorted(n for n in os.listdir(os.path.join(stdlib, source))
                       if n.endswith(".py"))[:3]:
      shutil.copy(os.path.join(stdlib, source, name), roots / package / name)
  study = _study(str(roots))
  (tmp_path / "resume_study.py").write_text(
      f"import json\n\ndef get_study():\n  return json.loads({json.dumps(json.dumps(study))})\n")
  results, work, corpora = (str(tmp_path / n) for n in ("results", "work", "corpus"))
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, str(tmp_path)]))
  proc = subprocess.Popen(
      [sys.executable, "-m", "experiments.study", f"--study={tmp_path / 'resume_study.py'}",
       f"--results={results}", f"--work_root={work}", f"--corpus_root={corpora}",
       "--compilation_cache=", "--no-plot"],
      cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  rid = f"transformer@{budget_tag(study['budgets'][0])}"
  workdir = os.path.join(work, "resume", rid.replace("@", "_at_"))
  deadline = time.time() + 240
  while proc.poll() is None and time.time() < deadline and not runner.has_checkpoint(workdir):
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)                 # mid-run, a checkpoint or more on disk
  _, err = proc.communicate(timeout=60)
  assert proc.returncode == -signal.SIGKILL, err[-2000:]
  saved = Checkpointer(workdir).latest_step()
  assert saved and 0 < saved < STEPS, saved
  lines = []
  records = runner.run_study(study, results, work, corpora, log=lines.append, resume=True)
  assert any(l == f"{rid}: resuming the unfinished run in {workdir}" for l in lines), lines
  assert f"resuming at step {saved} of {STEPS}" in capsys.readouterr().out
  (record,) = records
  assert record["status"] == "done" and record["steps"] == STEPS
  steps = [r["step"] for r in read_metrics(workdir) if "train_bpb" in r]
  assert steps == sorted(set(steps)) and steps[-1] == STEPS      # each logged step once


def test_runs_of_a_summary_copy_are_kept_when_new_runs_are_added(tmp_path):
  """A results folder copied back with only results.json (its runs listed there), into which
  a later command saves new runs: every run is loaded, a run saved again replacing its
  listed record."""
  from experiments.study import records as records_lib
  listed = [{"run": "a@1e15", "eval_bpb": 2.0, "finished": "2026-12-07T10:00:00"},
            {"run": "b@1e15", "eval_bpb": 3.0, "finished": "2026-12-07T10:05:00"}]
  (tmp_path / "results.json").write_text(json.dumps({"runs": listed}))
  assert [r["run"] for r in records_lib.load_runs(str(tmp_path))] == ["a@1e15", "b@1e15"]
  records_lib.save_run(str(tmp_path), {"run": "c@1e16", "eval_bpb": 1.5,
                                       "finished": "2026-12-07T11:00:00"})
  records_lib.save_run(str(tmp_path), {"run": "b@1e15", "eval_bpb": 2.5,
                                       "finished": "2026-12-07T11:30:00"})
  loaded = {r["run"]: r["eval_bpb"] for r in records_lib.load_runs(str(tmp_path))}
  assert loaded == {"a@1e15": 2.0, "b@1e15": 2.5, "c@1e16": 1.5}
