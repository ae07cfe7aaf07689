"""Smoke runs of the command-line tools, as a user types them."""

import json
import os

import pytest

from conftest import REPO, run_commands, run_module

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
             "--config.train.steps=12", "--config.mesh_rules=(('mlp', None),)",
             "--noprogress")
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
  assert saved["mesh_rules"] == [["mlp", None]]  # a sharding-rule override too
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "12"))
  assert "first step (compilation included): " in out.stdout
  with open(os.path.join(workdir, "result.json")) as f:
    result = json.load(f)                        # this invocation's record
  assert result["step"] == 12 and result["eval_bpb"] > 0 and result["sample"].startswith("import")
  assert 0 < result["compile_s"] <= result["train_s"] < result["wall_s"]


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
  """`--workdir` alone continues a run; this one is finished, so it says so and changes
  nothing (a finished run is never trained, evaluated or rewritten again)."""
  import shutil
  workdir, _, _ = trained
  copy = str(tmp_path / "copy")
  shutil.copytree(workdir, copy)
  before = {name: os.path.getmtime(os.path.join(copy, name)) for name in os.listdir(copy)}
  out = run_module("megabyte_jax.train", f"--workdir={copy}", "--noprogress")
  assert out.stdout.startswith(f"{copy} is finished: trained to step 12 of 12; final eval ")
  assert "resuming" not in out.stdout and "final eval:" not in out.stdout
  assert {name: os.path.getmtime(os.path.join(copy, name)) for name in os.listdir(copy)} == before


# Mistakes a user makes on the command line: each command and the message it must give.
USER_ERRORS = (
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
    (["megabyte_jax.sample"], "error: --workdir is required"),
    (["megabyte_jax.sample", "--workdir={tmp}/missing"], "not a training directory"),
    (["megabyte_jax.sample", "--workdir={tmp}"], "no config.json in"),           # empty
    (["megabyte_jax.sample", "--workdir={tmp}", "--prompt_file={tmp}/none.txt"],
     "cannot read --prompt_file {tmp}/none.txt: No such file or directory"),
    (["megabyte_jax.sample", "--workdir={tmp}", "--prompt_file={tmp}"],
     "cannot read --prompt_file {tmp}: Is a directory"),
    (["megabyte_jax.sample", "--workdir={tmp}", "--prompt=a", "--prompt_file={tmp}"],
     "give --prompt or --prompt_file, not both"),
    (["megabyte_jax.sample", "--workdir={tmp}", "--num_bytes=-1"],
     "--num_bytes must be in 0..2,147,483,647, got -1"),
    (["megabyte_jax.sample", "--workdir={tmp}", "--num_bytes=10000000000000000000000",
      "--slide"], "--num_bytes must be in 0..2,147,483,647, got 10000000000000000000000"),
    (["megabyte_jax.sample", "--workdir={tmp}", "--num_bytes=many"],
     "--num_bytes=many: invalid literal"),
    (["megabyte_jax.evaluate"], "error: --workdir is required"),
    (["megabyte_jax.evaluate", "--workdir={tmp}", "--batch_size=0"],
     "--batch_size must be at least 1, got 0"),
)


@pytest.fixture(scope="module")
def user_error_results(tmp_path_factory):
  """Every command of `USER_ERRORS`, run in one process as its console script would; each
  case's `{tmp}` is a directory of its own. Returns `[(result, tmp)]` in order."""
  base = tmp_path_factory.mktemp("user_errors")
  tmps = [base / f"case{i}" for i in range(len(USER_ERRORS))]
  for tmp in tmps:
    tmp.mkdir()
  results = run_commands(*[(args[0], [a.format(tmp=tmp) for a in args[1:]])
                           for (args, _), tmp in zip(USER_ERRORS, tmps)])
  return list(zip(results, tmps))


@pytest.mark.parametrize("args, message", USER_ERRORS)
def test_user_errors_are_one_clear_line(args, message, user_error_results):
  result, tmp = user_error_results[USER_ERRORS.index((args, message))]
  assert result["code"] != 0, result
  assert message.format(tmp=tmp) in result["stderr"], result
  assert "Traceback" not in result["stderr"]


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
  assert ("cannot restore the checkpoint of step 12" in proc.stderr
          or "the checkpoint of step 12 in" in proc.stderr and "is corrupt" in proc.stderr)


def _run_sample(workdir, *args, encoding="utf-8"):
  """The sample CLI with (possibly non-UTF-8) byte arguments and a stdout encoding."""
  import subprocess
  import sys
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
             PYTHONIOENCODING=encoding)
  return subprocess.run([sys.executable, "-m", "megabyte_jax.sample", f"--workdir={workdir}",
                         *args], cwd=REPO, env=env, capture_output=True, timeout=600)


def test_sample_cli_takes_any_prompt_bytes_and_any_terminal(trained, tmp_path):
  """Bytes that are not UTF-8, typed as --prompt or in a --prompt_file, are sampled from as
  they are; an ASCII-only stdout shows `?` where U+FFFD cannot be shown; a workdir without
  checkpoints is one line. (The in-process property tests cover random bytes.)"""
  import shutil
  workdir, _, _ = trained
  raw = b"\xff\xfeab\x80\xc3\xa9"                      # invalid UTF-8, then a valid "é"
  out = tmp_path / "out.bin"
  proc = _run_sample(workdir, b"--prompt=" + raw, "--num_bytes=8", f"--output={out}")
  assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
  assert out.read_bytes()[:len(raw)] == raw and len(out.read_bytes()) == len(raw) + 8
  (tmp_path / "prompt.bin").write_bytes(raw)
  proc = _run_sample(workdir, f"--prompt_file={tmp_path / 'prompt.bin'}", "--num_bytes=0",
                     encoding="ascii")
  assert proc.returncode == 0 and b"Traceback" not in proc.stderr, proc.stderr[-2000:]
  assert proc.stdout == b"??ab??\n"              # U+FFFD x3 and "é": not ASCII, shown as ?
  bare = tmp_path / "no_checkpoints"
  bare.mkdir()
  shutil.copy(os.path.join(workdir, "config.json"), bare)
  proc = _run_sample(str(bare))
  assert proc.returncode == 1 and b"Traceback" not in proc.stderr
  assert proc.stderr.decode().strip().splitlines()[-1] == (
      f"error: no checkpoint in {bare}/checkpoints: has training run?")
