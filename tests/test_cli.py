"""Smoke runs of the command-line tools, as a user types them."""

import json
import os

import pytest

from conftest import REPO, run_module

TINY = os.path.join(REPO, "experiments", "configs", "tiny.py")




@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A tiny model trained by the CLI on a small real corpus; returns (workdir, corpus, out)."""
  import shutil
  import sysconfig
  base = tmp_path_factory.mktemp("cli")
  corpus = base / "corpus"
  shutil.copytree(os.path.join(sysconfig.get_paths()["stdlib"], "json"), corpus,
                  ignore=shutil.ignore_patterns("__pycache__"))
  workdir = str(base / "run")
  out = run_module("megabyte_jax.train", f"--config={TINY}", f"--workdir={workdir}",
             f"--config.data.files={corpus}", "--config.data.eval_fraction=0.4",
             "--config.train.steps=12", "--noprogress")
  return workdir, str(corpus), out


def test_train_cli_reports_and_writes_everything(trained):
  workdir, _, out = trained
  assert "final eval:" in out.stdout and "bits/byte" in out.stdout
  assert "sample:\nimport " in out.stdout
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  assert all("step" in r for r in records)
  assert any("train_bpb" in r for r in records) and any("eval_bpb" in r for r in records)
  with open(os.path.join(workdir, "config.json")) as f:
    saved = json.load(f)
  assert saved["train"]["steps"] == 12           # the override was resolved and saved
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "12"))


def test_evaluate_cli_scores_every_byte_of_a_glob(trained):
  workdir, corpus, _ = trained
  out = run_module("megabyte_jax.evaluate", f"--workdir={workdir}",
             f"--files={os.path.join(corpus, '**', '*.py')}")
  result = json.loads(out.stdout.strip().splitlines()[-1])
  total = sum(os.path.getsize(os.path.join(corpus, f)) for f in os.listdir(corpus)
              if f.endswith(".py"))
  assert result["bytes"] == total and 0 < result["bpb"] < 9 and result["step"] == 12


def test_evaluate_cli_defaults_to_validation_split(trained):
  workdir, _, _ = trained
  result = json.loads(run_module("megabyte_jax.evaluate", f"--workdir={workdir}").stdout)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    final = [json.loads(line) for line in f][-1]
  assert result["bytes"] == final["eval_bytes"]
  assert abs(result["bpb"] - final["eval_bpb"]) < 1e-4


def test_training_resumes_from_workdir_alone(trained, tmp_path):
  import shutil
  workdir, _, _ = trained
  copy = str(tmp_path / "copy")
  shutil.copytree(workdir, copy)
  out = run_module("megabyte_jax.train", f"--workdir={copy}", "--noprogress")
  assert "resuming at step 12" in out.stdout and "final eval:" in out.stdout


@pytest.mark.parametrize("args, message", [
    (["megabyte_jax.train", "--config=experiments/configs/missing.py", "--workdir=/tmp/x"],
     "missing.py"),
    (["megabyte_jax.train", f"--config={TINY}", "--workdir={tmp}/run",
      "--config.data.files={tmp}/none/**/*.txt"], "no files match"),
    (["megabyte_jax.train", f"--config={TINY}", "--workdir={tmp}/run",
      "--config.model.seq_len=60"], "seq_len=60 must be a multiple of patch_size=8"),
    (["megabyte_jax.train", "--workdir={tmp}/empty"], "not a training directory"),
    (["megabyte_jax.evaluate", "--workdir={tmp}/empty"], "not a training directory"),
    (["megabyte_jax.train", f"--config={TINY}", "--workdir={tmp}/run",
      "--config.train.stepz=1"], 'bad --config override: \'stepz\' Did you mean "steps"'),
    (["megabyte_jax.train", f"--config={TINY}", "--workdir={tmp}/run",
      "--config.train.steps=abc"], "--config.train.steps=abc: invalid literal"),
    (["megabyte_jax.train", "--nosuchflag"], "Unknown command line flag 'nosuchflag'"),
    (["megabyte_jax.train", f"--config={TINY}", "--workdir={tmp}/run", "--config.mesh.data=3"],
     "has 3 devices, but 1 are available; use -1 for one axis"),
])
def test_user_errors_are_one_clear_line(args, message, tmp_path):
  proc = run_module(*[a.format(tmp=tmp_path) for a in args], check=False)
  assert proc.returncode != 0
  assert message in proc.stderr
  assert "Traceback" not in proc.stderr


def test_corrupt_checkpoint_is_reported(trained, tmp_path):
  import shutil
  workdir, _, _ = trained
  copy = str(tmp_path / "copy")
  shutil.copytree(workdir, copy)
  for root, _, files in os.walk(os.path.join(copy, "checkpoints", "12", "state")):
    for name in files:
      with open(os.path.join(root, name), "wb") as f:
        f.write(b"not a checkpoint")
  proc = run_module("megabyte_jax.evaluate", f"--workdir={copy}", check=False)
  assert proc.returncode != 0 and "Traceback" not in proc.stderr
  assert "cannot restore the checkpoint of step 12" in proc.stderr
