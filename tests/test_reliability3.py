"""Reliability, third round: the run's record survives kills, every signal stops cleanly,
changed data is noticed, and no value or name gives a traceback."""

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import REPO, run_module
from megabyte_jax import CheckpointError, ConfigError, DataError, InputError, TrainingError
from megabyte_jax.experiment import base_config
from megabyte_jax.training.checkpoint import Checkpointer
from megabyte_jax.training.metrics import read_metrics
from megabyte_jax.train import train_and_evaluate
from megabyte_jax.training.workdir import load_config, load_trained
from test_reliability import _config, _env, _train_cmd

TINY = os.path.join(REPO, "experiments", "configs", "tiny.py")


def _each_once(records, steps, eval_steps, log_every=1):
  """Every logged step's train record once, every quick evaluation the config asks for
  once, one final evaluation at the last step."""
  train = [r["step"] for r in records if "train_bpb" in r]
  quick = [r["step"] for r in records if "eval_bpb" in r and not r.get("final")]
  final = [r["step"] for r in records if r.get("final")]
  assert train == [s for s in range(1, steps + 1) if s % log_every == 0 or s == steps], train
  assert quick == list(eval_steps), quick
  assert final == [steps], final


def _latest(workdir):
  """The newest complete checkpoint of `workdir` (0: none)."""
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    return 0
  ckpt = Checkpointer(workdir)
  try:
    return ckpt.latest_step() or 0
  finally:
    ckpt.close()


def _read_cleanly(workdir):
  with warnings.catch_warnings():
    warnings.simplefilter("error")        # no damaged line anywhere
    return read_metrics(workdir)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A tiny run of 4 steps (checkpoints at 2 and 4, quick evaluations at 2, a final one)
  on a small corpus, trained once; tests copy it. Returns (workdir, corpus, config)."""
  import sysconfig
  base = tmp_path_factory.mktemp("trained")
  corpus = base / "corpus"
  shutil.copytree(os.path.join(sysconfig.get_paths()["stdlib"], "json"), corpus,
                  ignore=shutil.ignore_patterns("__pycache__"))
  config = _config(str(corpus), steps=4)
  config.train.update(checkpoint_every=2, eval_every=2, eval_batches=1, final_eval=True)
  config.eval.batch_size = 8
  workdir = str(base / "run")
  train_and_evaluate(config, workdir)
  return workdir, str(corpus), config


def _copy(trained, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(trained[0], workdir)
  return workdir, trained[2].copy_and_resolve_references()


# ------------------------------------------------------------------ the run's record


def test_metrics_hold_each_step_once_across_random_kills_and_a_sighup(corpus, tmp_path):
  """A bounded loop of real stops of a real trainer (saving every step, keeping 2): a
  SIGHUP (a closed terminal) and kill -9s at random moments, each resumed; meanwhile the
  newest checkpoint is loaded again and again, as `evaluate` would while retention deletes
  steps. Then the run is finished and run again. `metrics.jsonl` must hold each step's
  records once, every quick evaluation included, and one final evaluation."""
  workdir, steps = str(tmp_path / "run"), 16
  cmd = [a for a in _train_cmd(workdir, corpus) if not a.startswith(
      ("--config.train.steps=", "--config.train.eval_every=", "--config.train.final_eval="))]
  cmd += [f"--config.train.steps={steps}", "--config.train.checkpoint_every=1",
          "--config.train.log_every=1", "--config.train.eval_every=4",
          "--config.train.eval_batches=1", "--config.train.keep_checkpoints=2",
          "--config.train.warmup_steps=1"]
  rng = np.random.default_rng(30)
  loads = 0
  for sig in (signal.SIGHUP, signal.SIGKILL, signal.SIGKILL):
    before = _latest(workdir)
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    target, deadline = before + int(rng.integers(1, 4)), time.time() + 300
    while proc.poll() is None and time.time() < deadline:
      ckpt_dir = os.path.join(workdir, "checkpoints")
      if os.path.isdir(ckpt_dir) and any(n.isdigit() for n in os.listdir(ckpt_dir)):
        step = load_trained(workdir).step           # never fails while steps are deleted
        loads += 1
        if step >= target:
          break
      else:
        time.sleep(0.2)
    time.sleep(rng.uniform(0, 0.3))               # somewhere in the next step, save or log
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    if sig == signal.SIGHUP:
      assert proc.returncode == 128 + signal.SIGHUP, err[-3000:]
      last = err.strip().splitlines()[-1]
      stopped = re.fullmatch(r"stopped by SIGHUP at step (\d+); saved a checkpoint in (.*); "
                             r"run again to resume", last)
      assert stopped and "Traceback" not in err, err[-3000:]
      ckpt = Checkpointer(workdir)
      assert int(stopped.group(1)) == ckpt.latest_step()
      assert ckpt.manifest(ckpt.latest_step()) is not None     # complete, sealed
      assert not [n for n in os.listdir(ckpt.directory) if "tmp" in n]
    else:
      assert proc.returncode == -signal.SIGKILL
  assert loads >= 3
  assert train_and_evaluate(None, workdir).step == steps
  assert train_and_evaluate(None, workdir).step == steps    # a finished run, run again
  _each_once(_read_cleanly(workdir), steps, [4, 8, 12])


def test_a_partial_last_line_is_dropped_and_the_run_files_are_protected(trained, tmp_path):
  from megabyte_jax.sample import run_sample
  workdir, config = _copy(trained, tmp_path)
  path = os.path.join(workdir, "metrics.jsonl")
  size = os.path.getsize(path)
  os.truncate(path, size - 12)                       # the final record, cut mid-line
  with pytest.warns(UserWarning, match=r"skipping line \d+ of .*metrics\.jsonl: not a JSON"):
    before = read_metrics(workdir)
  assert before and not any(r.get("final") for r in before)
  config.train.steps = 6
  train_and_evaluate(config, workdir)
  _each_once(_read_cleanly(workdir), 6, [2, 4], log_every=2)
  with open(path, "rb") as f:
    assert f.read().endswith(b"}\n")
  # `sample --output` may replace none of the files the run wrote
  written = sorted(os.listdir(workdir))
  assert {"config.json", "config_history.jsonl", "data.json", "metrics.jsonl", "result.json",
          "checkpoints"} <= set(written)
  for name in written + ["train.lock", "tb", "checkpoints/4/state"]:
    saved = open(os.path.join(workdir, "result.json"), "rb").read()
    with pytest.raises(InputError, match=r"--output .* (is the run's own|is inside the run's)"):
      run_sample(workdir, prompt="ab", num_bytes=2, output=os.path.join(workdir, name))
    assert open(os.path.join(workdir, "result.json"), "rb").read() == saved


def test_a_lost_or_truncated_config_is_recovered_from_a_checkpoint(trained, tmp_path):
  workdir, _ = _copy(trained, tmp_path)
  path = os.path.join(workdir, "config.json")
  original = load_config(workdir)
  for damage in ("delete", "truncate"):
    if damage == "delete":
      os.remove(path)
    else:
      os.truncate(path, os.path.getsize(path) // 2)
    with pytest.raises(ConfigError) as info:
      train_and_evaluate(None, workdir)
    message = str(info.value)
    assert "\n" not in message and "each checkpoint keeps the run's config" in message
    source, target = re.search(r"recover it with cp (\S+) (\S+)$", message).groups()
    assert target == path and source.startswith(os.path.join(workdir, "checkpoints", "4"))
    shutil.copy(source, target)                     # what the message says to do
    assert load_config(workdir).to_dict() == original.to_dict()
  assert train_and_evaluate(None, workdir).step == 4


# ------------------------------------------------------------------ signals


def test_every_moment_of_the_loop_stops_cleanly_on_a_real_signal(corpus, tmp_path):
  """SIGTERM, SIGINT, SIGHUP, two quick SIGINTs, at compilation, a step, a save, a quick
  evaluation, the final evaluation and the sample (tests/helpers/signal_moments.py sends
  each to itself at that moment): every one ends with `Preempted` and its one line, a
  complete checkpoint, and a run that resumes with each step logged once; a kill -9 after a
  checkpoint and before that step's evaluation has the evaluation redone on resume."""
  root = str(tmp_path / "runs")
  proc = subprocess.run([sys.executable, os.path.join(REPO, "tests", "helpers",
                                                      "signal_moments.py"), corpus, root],
                        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
  reports = {r["scenario"]: r for r in map(json.loads, (
      l for l in proc.stdout.splitlines() if l.startswith("{")))}
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]   # the last scenario
  expected = {"compile": ("SIGTERM", 1), "step": ("SIGHUP", 3), "save": ("SIGTERM", 2),
              "double": ("SIGINT", 2), "eval": ("SIGINT", 2), "final_eval": ("SIGTERM", 6),
              "sample": ("SIGHUP", 6), "double_mid_step": ("SIGINT", 3)}
  assert sorted(reports) == sorted(expected), proc.stderr[-3000:]
  for name, (sig, step) in expected.items():
    r = reports[name]
    assert r["error"] == "Preempted" and r["signum"] == signal.Signals[sig], r
    directory = os.path.join(root, name, "checkpoints")
    if name == "double_mid_step":     # the second Ctrl-C inside step 4: nothing new saved
      assert r["message"] == (f"stopped by SIGINT during step 4; the newest complete "
                              f"checkpoint is step 2 in {directory}; run again to resume")
      assert r["saved"][-1] == 2
    else:
      assert r["message"] == (f"stopped by {sig} at step {step}; saved a checkpoint in "
                              f"{directory}; run again to resume"), r
      assert r["saved"][-1] == step
    assert r["manifests"] == r["saved"] and not r["leftovers"], r
    if "metrics" in r:       # resumed to its end
      assert r["resumed_step"] == 6
      _each_once(r["metrics"], 6, [2, 4])
  assert sum("metrics" in r for r in reports.values()) == 5
  workdir = os.path.join(root, "kill_before_eval")
  assert Checkpointer(workdir).latest_step() == 4
  assert not any("eval_bpb" in r and r["step"] == 4 for r in read_metrics(workdir))
  sys.path.insert(0, os.path.join(REPO, "tests", "helpers"))
  try:
    from signal_moments import config as helper_config
  finally:
    sys.path.pop(0)
  train_and_evaluate(helper_config(corpus), workdir)
  _each_once(_read_cleanly(workdir), 6, [2, 4])


# ------------------------------------------------------------------ data identity


def _data_run(tmp_path):
  """A corpus with a memory-mapped training file, and a config that trains on it."""
  train, valid = tmp_path / "train", tmp_path / "valid"
  train.mkdir()
  valid.mkdir()
  with open(train / "big.bin", "wb") as f:        # 70 MiB, sparse: mapped, not read
    f.truncate(70 * 2 ** 20)
  for i in range(3):
    (train / f"doc{i}.txt").write_bytes(f"document {i} ".encode() * 200)
  (valid / "v0.txt").write_bytes(b"validation text " * 100)
  config = _config(str(train), steps=2)
  config.data.update(eval_files=str(valid / "*.txt"), eval_fraction=0.0)
  config.train.update(checkpoint_every=2, warmup_steps=1)
  return train, valid, config


def test_changed_data_is_refused_on_resume_unless_allowed(tmp_path):
  from megabyte_jax.data import load_byte_data
  train, valid, config = _data_run(tmp_path)
  workdir = str(tmp_path / "run")
  train_and_evaluate(config, workdir)
  record = os.path.join(workdir, "data.json")
  config.train.steps = 4
  big, doc = str(train / "big.bin"), str(train / "doc1.txt")
  faults = [
      ("truncate a mapped file", lambda: os.truncate(big, 1000),
       f"training file {big} holds 1,000 bytes, was 73,400,320"),
      ("delete a file", lambda: os.remove(doc), f"training file {doc} is gone"),
      ("append to a file", lambda: open(doc, "ab").write(b"more"),
       f"training file {doc} holds 2,204 bytes, was 2,200"),
      ("same size, other bytes", lambda: open(doc, "r+b").write(b"X"),
       f"training file {doc} holds other bytes (same size)"),
      ("a file replaced by a directory", lambda: (os.remove(doc), os.mkdir(doc)),
       f"training file {doc} is gone"),
      ("a new empty file", lambda: open(train / "new.txt", "wb").close(),
       f"new training file {train / 'new.txt'} (0 bytes)"),
      ("a second validation document", lambda: (valid / "v1.txt").write_bytes(b"more"),
       f"new validation file {valid / 'v1.txt'} (4 bytes)"),
  ]
  snapshot = {n: open(os.path.join(workdir, n), "rb").read() for n in os.listdir(workdir)
              if os.path.isfile(os.path.join(workdir, n))}
  for what, damage, change in faults:
    saved = {p: (os.stat(p), open(p, "rb").read() if p == doc else None) for p in (big, doc)}
    damage()
    with pytest.raises(DataError) as info:
      train_and_evaluate(config, workdir)
    message = str(info.value)
    assert "\n" not in message and change in message, (what, message)
    assert "--allow_data_change" in message
    for name, content in snapshot.items():           # nothing written
      assert open(os.path.join(workdir, name), "rb").read() == content, what
    assert Checkpointer(workdir).all_steps() == [2]
    if os.path.isdir(doc):
      os.rmdir(doc)
    for p, (info, content) in saved.items():         # put the data back as it was
      with open(p, "r+b" if os.path.exists(p) else "wb") as f:
        if content is not None:
          f.write(content)
        f.truncate(info.st_size)
      os.utime(p, ns=(info.st_atime_ns, info.st_mtime_ns))
    for extra in (train / "new.txt", valid / "v1.txt"):
      if extra.exists():
        extra.unlink()
  from megabyte_jax.training.workdir import check_data_identity
  now = lambda: load_byte_data(config.data, 32).identity
  os.utime(doc, (1, 1))          # touched only (same bytes): no change
  assert check_data_identity(workdir, now()) is None
  (valid / "v1.txt").write_bytes(b"more validation")
  with pytest.raises(DataError, match="eval_bpb then does not compare across the change"):
    train_and_evaluate(config, workdir)
  train_and_evaluate(config, workdir, allow_data_change=True)   # on the data as it is now
  assert str(valid / "v1.txt") in open(record).read()
  assert check_data_identity(workdir, now()) is None            # recorded again


# ------------------------------------------------------------------ values


@pytest.mark.parametrize("field,value,match", [
    ("train.learning_rate", 1e300, r"train\.learning_rate must be at most 3\.403e\+38"),
    ("train.weight_decay", 1e300, r"train\.weight_decay must be at most 3\.403e\+38"),
    ("model.init_std", float("inf"), r"model\.init_std must be a finite number"),
    ("model.embed_init_std", float("inf"), r"model\.embed_init_std must be a finite number"),
    ("seed", -1, r"seed must be in 0\.\.4611686018427387904 \(2\*\*62\), got -1"),
    ("data.split_seed", -1, r"data\.split_seed must be in 0\.\."),
    ("seed", 2 ** 64, r"seed must be in 0\.\."),
    ("data.chunk_bytes", 10 ** 12, r"data\.chunk_bytes must be at most 2,147,483,647"),
    ("eval.batch_size", 200_000_000, r"eval\.batch_size=200,000,000 windows of 32 bytes "
                                     r"make a batch of 6,400,000,000 bytes"),
    ("train.batch_size", 2 ** 30, r"train\.batch_size=1,073,741,824 windows"),
    ("sample.num_bytes", 100_000_000, r"sample\.num_bytes must be at most 65,536"),
    ("sample.top_k", 300, r"sample\.top_k must be in 1\.\.256"),
    ("sample.prompt", "caf\udce9", r"sample\.prompt is not UTF-8 text"),
])
def test_absurd_values_are_refused_before_anything_runs(field, value, match, corpus,
                                                        tmp_path):
  from megabyte_jax.training.workdir import config_from_json_values
  values = _config(corpus).to_dict()
  section, _, key = field.rpartition(".")
  (values[section] if section else values)[key] = value    # as a hand-edited config.json
  workdir = tmp_path / "run"
  with pytest.raises(ConfigError, match=match) as info:
    train_and_evaluate(config_from_json_values(values), str(workdir))
  assert "\n" not in str(info.value)
  assert not workdir.exists()


def _numeric_fields(config):
  """Dotted names and types of every numeric field of `config` (placeholders included)."""
  out = []
  for section in config.keys():
    node = config[section]
    if hasattr(node, "keys"):
      for key in node.keys():
        kind = node.get_type(key)
        if kind in (int, float) and not isinstance(node[key], bool):
          out.append((f"{section}.{key}", kind))
    elif type(node) in (int, float):
      out.append((section, type(node)))
  return out


# Values a field may take among the bad-looking ones: 0 and -1 where they mean something.
ZERO_OK = {"seed", "data.split_seed", "data.separator", "data.eval_fraction",
           "data.read_threads", "data.prefetch", "data.workers", "train.weight_decay",
           "train.grad_clip", "train.b1", "train.b2", "train.min_lr_ratio",
           "train.eval_every", "train.eval_batches", "train.warmup_steps",
           "sample.num_bytes", "sample.temperature", "model.dropout", "model.embed_dropout",
           "model.cross_patch", "train.z_loss"}
# mesh.data is -1 (fill the devices) by default; a second -1 axis is refused.
NEGATIVE_OK = {"data.separator", "mesh.data"}


def test_every_numeric_field_refuses_negative_zero_huge_nonfinite_and_wrong_values(corpus):
  """Every numeric field of a whole experiment config (model, data, mesh, train, eval,
  sample, seed) gets negative, zero, huge, non-finite and wrong-type values, as a
  hand-edited config.json would hold them: each is one `ConfigError` line naming the field,
  before anything runs, except the few that mean something (`ZERO_OK`, `NEGATIVE_OK`)."""
  from megabyte_jax.training.setup import check_setup
  from megabyte_jax.training.workdir import config_from_json_values
  base = _config(corpus)
  fields = _numeric_fields(base)
  assert len(fields) > 50
  accepted = set()
  for field, kind in fields:
    section, _, key = field.rpartition(".")
    bad = {"negative": -3 if kind is int else -2.5, "zero": 0 if kind is int else 0.0,
           "huge": 2 ** 64 if kind is int else 1e300, "nan": float("nan"),
           "inf": float("inf"), "text": "x", "list": [1]}
    if field in NEGATIVE_OK:
      bad["negative"] = -1
    for what, value in bad.items():
      values = base.to_dict()
      (values[section] if section else values)[key] = value
      try:
        check_setup(config_from_json_values(values))   # every check of TrainSetup.create
      except ConfigError as e:
        assert "\n" not in str(e) and key in str(e), (field, what, str(e))
        continue
      accepted.add((field, what))
  expected = {(f, "zero") for f in ZERO_OK} | {(f, "negative") for f in NEGATIVE_OK}
  assert accepted == expected, sorted(accepted ^ expected)


def test_non_finite_parameters_after_a_step_are_a_bad_step(megabyte_cfg):
  """A finite loss and gradient whose update overflows float32 (a real overflow inside the
  optimizer): the update is skipped as a bad step, parameters and optimizer state
  unchanged."""
  from megabyte_jax import Megabyte
  from megabyte_jax.training import train_state as state_lib
  from megabyte_jax.training.train_step import make_train_step
  # Two finite scales whose product (1e60) no float32 holds: every update overflows.
  model, optimizer = Megabyte(megabyte_cfg), optax.chain(optax.scale(-1e30),
                                                         optax.scale(1e30))
  state = state_lib.create_train_state(model, 32, optimizer, jax.random.key(0))
  before = jax.tree_util.tree_map(np.asarray, state.params)
  after, metrics = make_train_step(model, optimizer, 0, False)(
      state, jnp.asarray(np.arange(64).reshape(2, 32) % 256, jnp.uint8))
  assert np.isfinite(float(metrics["loss"])) and np.isfinite(float(metrics["grad_norm"]))
  assert int(metrics["skipped"]) == 1 and int(after.step) == 1
  for a, b in zip(jax.tree_util.tree_leaves(after.params), jax.tree_util.tree_leaves(before)):
    np.testing.assert_array_equal(np.asarray(a), b)


def test_a_final_evaluation_of_nan_never_succeeds(trained, tmp_path):
  """Finite but absurd parameters (the trained ones times 1e30) pass every checkpoint
  check; the final evaluation's NaN must stop the run with an error, not exit 0 with
  `eval_bpb: null`."""
  from megabyte_jax import data as data_lib
  from megabyte_jax.training import train_state as state_lib
  from megabyte_jax.models import build_model
  workdir, config = _copy(trained, tmp_path)
  model, cfg = build_model(config.model)
  ckpt = Checkpointer(workdir)
  state = ckpt.restore(state_lib.abstract_train_state(model, cfg.seq_len,
                                                      state_lib.make_optimizer(config.train)))
  huge = state.replace(params=jax.tree_util.tree_map(lambda x: x * 1e30, state.params),
                       step=state.step + 1)
  data = data_lib.load_byte_data(config.data, cfg.seq_len)
  position = iter(data_lib.training_batches(data.train, cfg.seq_len, 4, seed=0,
                                            chunk_bytes=2 ** 14))
  ckpt.save(5, huge, position, force=True)        # a whole checkpoint: state and data
  ckpt.close()
  before = open(os.path.join(workdir, "result.json")).read()
  config.train.steps = 5
  with pytest.raises(TrainingError, match=r"the final evaluation of step 5 gave a non-finite "
                                          r"bits per byte \(nan\)") as info:
    train_and_evaluate(config, workdir)
  assert "\n" not in str(info.value)
  assert open(os.path.join(workdir, "result.json")).read() == before
  assert not any(r.get("final") and r["step"] == 5 for r in read_metrics(workdir))


def test_a_workdir_name_that_is_not_utf8_is_refused_in_one_line(corpus, tmp_path):
  workdir = os.fsdecode(os.fsencode(str(tmp_path)) + b"/run-\xff\xfe")
  with pytest.raises(ConfigError, match=r"--workdir .*/run-\\xff\\xfe is not UTF-8") as info:
    train_and_evaluate(_config(corpus, steps=4), workdir)
  assert "\n" not in str(info.value)
  assert not os.path.exists(workdir)
  cwd = os.getcwd()                                 # a relative name in such a directory
  os.mkdir(workdir)
  try:
    os.chdir(workdir)
    with pytest.raises(ConfigError, match="is not UTF-8"):
      train_and_evaluate(_config(corpus, steps=4), "run")
  finally:
    os.chdir(cwd)
  assert os.listdir(workdir) == []


def test_sample_and_evaluate_refuse_huge_seeds_batches_and_prompt_files(trained, tmp_path):
  from megabyte_jax.sample import run_sample
  workdir = trained[0]
  with pytest.raises(InputError, match=r"--seed must be an integer in -2\*\*62\.\.2\*\*62, "
                                       r"got 18446744073709551616"):
    run_sample(workdir, prompt="a", num_bytes=2, seed=2 ** 64)
  huge = tmp_path / "prompt.bin"                  # 3 GiB, sparse: refused before reading
  with open(huge, "wb") as f:
    f.truncate(3 * 2 ** 30)
  started = time.perf_counter()
  with pytest.raises(InputError, match=r"--prompt_file .*prompt\.bin holds 3,221,225,472 "
                                       r"bytes, more than the [\d,]+ a prompt may hold"):
    run_sample(workdir, prompt_file=str(huge), num_bytes=2)
  assert time.perf_counter() - started < 5
  proc = run_module("megabyte_jax.evaluate", f"--workdir={workdir}",
                    "--batch_size=200000000", check=False)
  assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
  assert proc.stderr.strip().splitlines()[-1] == (
      "error: --batch_size=200,000,000 windows of 32 bytes make a batch of 6,400,000,000 "
      "bytes, more than 2,147,483,647 (arrays are indexed with int32)")


# ------------------------------------------------------------------ evaluate while training


def test_evaluate_reads_the_newest_step_when_a_trainer_deletes_one(trained, tmp_path,
                                                                   monkeypatch):
  """A trainer's retention deletes the newest listed step (really: `rmtree`) between the
  listing and the read: the then newest step is read instead, and a step asked for by
  number is one line."""
  latest = Checkpointer.latest_step
  deleted = []

  def listed_then_deleted(self):
    step = latest(self)
    if not deleted and step == 4:
      shutil.rmtree(os.path.join(self.directory, "4"))   # as the trainer's retention would
      deleted.append(step)
    return step

  monkeypatch.setattr(Checkpointer, "latest_step", listed_then_deleted)
  workdir, _ = _copy(trained, tmp_path / "a")
  loaded = load_trained(workdir)
  params, step = loaded.params, loaded.step
  assert deleted == [4] and step == 2
  assert all(np.isfinite(np.asarray(p)).all() for p in jax.tree_util.tree_leaves(params))
  deleted.clear()
  workdir, _ = _copy(trained, tmp_path / "b")
  with pytest.raises(CheckpointError, match=r"the checkpoint of step 4 in .* was deleted "
                                            r"while it was being read") as info:
    load_trained(workdir, step=4)
  assert deleted == [4] and "\n" not in str(info.value)


# ------------------------------------------------------------------ config names


def test_packaged_config_names_win_over_the_working_directory(corpus, tmp_path, monkeypatch):
  from megabyte_jax import configs
  marker = tmp_path / "executed"
  (tmp_path / "default").write_text(f"open({str(marker)!r}, 'w').close()\n")
  (tmp_path / "tiny").mkdir()                        # e.g. an earlier --workdir=tiny
  monkeypatch.chdir(tmp_path)
  for name in ("tiny", "default", "transformer", "tiny:arg"):
    resolved = configs.resolve(name)
    assert resolved.startswith(os.path.join(os.path.dirname(configs.__file__), "")), name
  for path in ("./tiny", "./default"):                # paths stay paths
    assert configs.resolve(path) == path
  # The command that failed the second time: --config=tiny --workdir=tiny, from here.
  env = dict(_env(), PYTHONIOENCODING="utf-8")
  proc = subprocess.run([sys.executable, "-m", "megabyte_jax.train", "--config=tiny",
                         "--workdir=tiny", f"--config.data.files={corpus}",
                         "--config.data.eval_fraction=0.3", "--config.train.steps=2",
                         "--config.train.warmup_steps=1", "--config.train.final_eval=False",
                         "--config.sample.num_bytes=0", "--noprogress"],
                        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert Checkpointer(str(tmp_path / "tiny")).latest_step() == 2
  assert not marker.exists()
