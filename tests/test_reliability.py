"""Reliability: preemption by signal, unreadable checkpoints, non-finite steps."""

import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import REPO
from megabyte_jax import CheckpointError, Megabyte, TrainingError
from megabyte_jax.training import train_state as state_lib
from megabyte_jax.training.checkpoint import Checkpointer
from megabyte_jax.experiment import base_config
from megabyte_jax.training.metrics import read_metrics
from megabyte_jax.train import train_and_evaluate
from megabyte_jax.training.train_step import make_train_step


def _config(corpus, steps=12):
  config = base_config("megabyte", seq_len=32, patch_size=4, global_dim=32, global_layers=1,
                       global_heads=2, local_dim=16, local_layers=1, local_heads=2)
  config.data.update(files=corpus, eval_fraction=0.3, chunk_bytes=2 ** 14)
  config.train.update(steps=steps, batch_size=4, warmup_steps=2, log_every=2, eval_every=0,
                      checkpoint_every=4, final_eval=False, tensorboard=False)
  config.sample.num_bytes = 0
  return config


def _env():
  return dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _train_cmd(workdir, corpus, *overrides):
  """The training CLI on the tiny config, running "forever" until a test stops it."""
  return [sys.executable, "-m", "megabyte_jax.train",
          f"--config={os.path.join(REPO, 'experiments', 'configs', 'tiny.py')}",
          f"--workdir={workdir}", f"--config.data.files={corpus}",
          "--config.data.eval_fraction=0.3", "--config.train.steps=100000",
          "--config.train.eval_every=0", "--config.train.final_eval=False",
          "--config.sample.num_bytes=0", "--noprogress", *overrides]


def test_non_finite_steps_skip_the_update_and_are_counted(megabyte_cfg):
  model, optimizer = Megabyte(megabyte_cfg), optax.adamw(1e-3)
  state = state_lib.create_train_state(model, 32, optimizer, jax.random.key(0))
  step = make_train_step(model, optimizer, 0, False)
  tokens = jnp.zeros((2, 32), jnp.uint8)
  good, metrics = step(state, tokens)
  assert int(metrics["skipped"]) == 0 and int(good.step) == 1
  # Poison one parameter: the loss and gradients become NaN, the update is skipped.
  params = jax.tree_util.tree_map(lambda x: x, good.params)
  params["head"]["bias"] = params["head"]["bias"].at[0].set(jnp.nan)
  poisoned = good.replace(params=params)
  expected = jax.tree_util.tree_map(np.asarray, poisoned)
  after, metrics = step(poisoned, tokens)
  assert int(metrics["skipped"]) == 1 and not np.isfinite(float(metrics["loss"]))
  assert int(after.step) == 2                       # the step (and the data) move on
  for a, b in zip(jax.tree_util.tree_leaves(after.params),
                  jax.tree_util.tree_leaves(expected.params)):
    np.testing.assert_array_equal(np.asarray(a), b)  # NaN == NaN here: nothing changed
  for a, b in zip(jax.tree_util.tree_leaves(after.opt_state),
                  jax.tree_util.tree_leaves(expected.opt_state)):
    np.testing.assert_array_equal(np.asarray(a), b)


def test_the_step_checks_finiteness_once_not_once_per_array(megabyte_cfg):
  """The skip flag (an `&` over every array of parameters and optimizer state) is computed
  once: XLA copying its N-long chain into each of the N kernels that read it made the
  compiled step quadratic in the number of arrays (38,864 `and` ops for this tiny model,
  and three times the compile time)."""
  from megabyte_jax.training.train_step import computed_once
  model, optimizer = Megabyte(megabyte_cfg), optax.adamw(1e-3)
  state = state_lib.create_train_state(model, 32, optimizer, jax.random.key(0))
  arrays = len(jax.tree_util.tree_leaves((state.params, state.opt_state)))
  step = make_train_step(model, optimizer, 0, False)
  program = step.lower(state, jnp.zeros((2, 32), jnp.uint8)).compile().as_text()
  assert arrays > 100 and program.count(" and(") < 4 * arrays, (arrays, program.count(" and("))
  flags = jnp.asarray([True, False])
  assert jax.jit(computed_once)(flags[0]) and not jax.jit(computed_once)(flags[1])


def test_a_run_of_non_finite_steps_stops_training_with_the_checkpoint_intact(corpus,
                                                                             tmp_path):
  config = _config(corpus, steps=8)
  workdir = str(tmp_path / "run")
  train_and_evaluate(config, workdir)                 # a good run up to step 8
  config.train.steps = 40
  config.train.learning_rate = 1e38                   # diverges at once
  config.train.max_bad_steps = 4
  with pytest.raises(TrainingError, match=r"in a row had a non-finite loss"):
    train_and_evaluate(config, workdir)
  records = [r for r in read_metrics(workdir) if r.get("skipped_steps")]
  assert records and all(r["train_bpb"] is None or r["train_bpb"] > 0 for r in records)
  assert Checkpointer(workdir).latest_step() >= 8
  config.train.learning_rate = 1e-3                   # a sane setting resumes from there
  config.train.steps = Checkpointer(workdir).latest_step() + 2
  assert train_and_evaluate(config, workdir)["step"] == config.train.steps


def _non_finite_at(bad_steps):
  """A `make_train_step` whose steps from a state at a step in `bad_steps` get a non-finite
  loss: the real step runs on NaN parameters (so it skips the update) and the parameters it
  was given come back, as from a skipped step of a real divergence."""
  def factory(*args, **kwargs):
    real = make_train_step(*args, **kwargs)

    def step(state, tokens):
      if int(state.step) not in bad_steps:
        return real(state, tokens)
      poisoned = jax.tree_util.tree_map(lambda p: p * jnp.nan, state.params)
      new, metrics = real(state.replace(params=poisoned), tokens)
      assert int(metrics["skipped"]) == 1
      return new.replace(params=state.params), metrics
    return step
  return factory


def test_only_consecutive_non_finite_steps_stop_a_run(corpus, tmp_path, monkeypatch):
  """With train.max_bad_steps=2: non-finite steps alternating with good ones (across log
  windows) let the run finish, each counted; two in a row stop it, even when a good step
  follows them in the same log window."""
  from megabyte_jax.training import setup as setup_lib
  config = _config(corpus, steps=8)
  config.train.update(max_bad_steps=2, log_every=3, checkpoint_every=100)
  monkeypatch.setattr(setup_lib, "make_train_step", _non_finite_at({0, 2, 4, 6}))
  result = train_and_evaluate(config, str(tmp_path / "alternating"))
  assert result["step"] == 8 and result["skipped_steps"] == 4
  assert [r["skipped_steps"] for r in read_metrics(str(tmp_path / "alternating"))
          if "skipped_steps" in r] == [2, 1, 1]          # steps 1-3, 4-6, 7-8
  config.train.log_every = 4
  monkeypatch.setattr(setup_lib, "make_train_step", _non_finite_at({1, 2}))
  with pytest.raises(TrainingError, match=r"^2 training steps in a row had a non-finite "):
    train_and_evaluate(config, str(tmp_path / "two_in_a_row"))   # steps 2, 3; 4 is good


def test_unreadable_newest_checkpoint_falls_back_to_the_previous_one(corpus, tmp_path):
  workdir = str(tmp_path / "run")
  train_and_evaluate(_config(corpus, steps=8), workdir)
  state_dir = os.path.join(workdir, "checkpoints", "8", "state")
  for root, _, files in os.walk(state_dir):
    for name in files:
      with open(os.path.join(root, name), "wb") as f:
        f.write(b"garbage")
  warnings = []
  from megabyte_jax.models import build_model
  config = _config(corpus, steps=8)
  model, cfg = build_model(config.model)
  optimizer = state_lib.make_optimizer(config.train)
  step, state, _ = Checkpointer(workdir).restore_latest_good(
      state_lib.abstract_train_state(model, cfg.seq_len, optimizer), warn=warnings.append)
  assert step == 4 and int(state.step) == 4
  assert len(warnings) == 1 and "step 8" in warnings[0]
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "8.unreadable"))  # kept aside
  final = train_and_evaluate(_config(corpus, steps=8), workdir)   # resumes from 4, saves 8
  assert final["step"] == 8
  assert Checkpointer(workdir).latest_step() == 8


def test_no_readable_checkpoint_names_the_directory_and_the_problems(corpus, tmp_path):
  workdir = str(tmp_path / "run")
  train_and_evaluate(_config(corpus, steps=4), workdir)
  for step in ("4",):
    for root, _, files in os.walk(os.path.join(workdir, "checkpoints", step, "state")):
      for name in files:
        with open(os.path.join(root, name), "wb") as f:
          f.write(b"")
  with pytest.raises(CheckpointError, match=r"no readable checkpoint in .*checkpoints: "
                                            r"step 4: "):
    train_and_evaluate(_config(corpus, steps=6), workdir)


def _train_until_stopped(cmd, workdir, signum):
  """Runs the training CLI `cmd` until it has logged a new record, then sends `signum`;
  checks that the run saved a checkpoint and stopped with that signal's code and message;
  returns the run's output and the newest checkpoint's step."""
  metrics = os.path.join(workdir, "metrics.jsonl")
  size = os.path.getsize(metrics) if os.path.exists(metrics) else 0
  proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 300
  while not (os.path.exists(metrics) and os.path.getsize(metrics) > size) and \
      time.time() < deadline:
    time.sleep(0.5)
  proc.send_signal(signum)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 128 + signum, err[-2000:]
  assert f"stopped by {signal.Signals(signum).name} at step" in err
  return out + err, Checkpointer(workdir).latest_step()


def test_a_signal_saves_at_the_next_step_and_the_run_resumes(corpus, tmp_path):
  """A SIGTERM, then a SIGINT to the resumed run: each saves at the next step and stops; the
  next run resumes from that step (and the last one finishes)."""
  workdir = str(tmp_path / "run")
  cmd = _train_cmd(workdir, corpus, "--config.train.checkpoint_every=100000",
                   "--config.train.log_every=5")
  _, saved = _train_until_stopped(cmd, workdir, signal.SIGTERM)
  assert saved is not None and saved >= 5
  output, again = _train_until_stopped(cmd, workdir, signal.SIGINT)
  assert f"resuming at step {saved}" in output
  assert again > saved
  resume = [f"--config.train.steps={again + 2}" if a.startswith("--config.train.steps=")
            else a for a in cmd]
  resumed = subprocess.run(resume, cwd=REPO, env=_env(), capture_output=True, text=True,
                           timeout=300)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert f"resuming at step {again}" in resumed.stdout + resumed.stderr


def test_resume_is_bit_identical_with_dropout(corpus, tmp_path):
  """2N steps straight == N steps, a stop, N more: same parameters bit for bit, same
  metrics (same data order, same dropout masks). The stopped run is a copy of the straight
  one without its last checkpoint, as if stopped after step 4."""
  config = _config(corpus, steps=8)
  config.model.dropout = 0.1
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  train_and_evaluate(config, straight)
  import shutil
  shutil.copytree(straight, resumed)
  shutil.rmtree(os.path.join(resumed, "checkpoints", "8"))     # as if stopped after step 4
  assert train_and_evaluate(None, resumed)["step"] == 8
  from megabyte_jax.training.workdir import load_trained
  a = load_trained(straight).params
  b = load_trained(resumed).params
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  first = {r["step"]: r["train_bpb"] for r in read_metrics(straight) if "train_bpb" in r}
  # The resumed run cut the records logged after step 4 and logged steps 6 and 8 again.
  again = [r for r in read_metrics(resumed) if "train_bpb" in r]
  assert [r["step"] for r in again] == [2, 4, 6, 8]
  assert all(r["train_bpb"] == first[r["step"]] for r in again)


def test_a_full_disk_during_a_save_is_reported_and_loses_nothing(corpus, tmp_path,
                                                                  monkeypatch):
  import errno
  import orbax.checkpoint as ocp
  workdir = str(tmp_path / "run")
  train_and_evaluate(_config(corpus, steps=4), workdir)

  def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(ocp.CheckpointManager, "save", no_space)
  with pytest.raises(CheckpointError, match=r"cannot write the checkpoint of step 8 in "
                                            r".*: No space left on device; the newest "
                                            r"complete checkpoint, step 4, is untouched"):
    train_and_evaluate(_config(corpus, steps=8), workdir)
  monkeypatch.undo()
  assert Checkpointer(workdir).all_steps() == [4]
  assert train_and_evaluate(_config(corpus, steps=8), workdir)["step"] == 8


def test_kill_9_during_checkpoint_saves_never_damages_the_last_good_one(corpus, tmp_path):
  """A run that saves every step is killed (SIGKILL, no cleanup) at a random moment, twice
  (the fresh run, then the resumed one); each time the newest complete checkpoint restores
  and training resumes from it. (test_reliability3's random kills stop such a run three
  more times and check its metrics.)"""
  workdir = str(tmp_path / "run")
  env = _env()
  cmd = _train_cmd(workdir, corpus, "--config.train.checkpoint_every=1",
                   "--config.train.keep_checkpoints=2")
  rng = np.random.default_rng(0)

  def latest_while_running():
    try:
      return Checkpointer(workdir).latest_step() or 0
    except FileNotFoundError:   # the run deleted an old step while Orbax listed it
      return 0

  for _ in range(2):
    before = Checkpointer(workdir).latest_step() or 0
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while latest_while_running() < before + 2 and time.time() < deadline:
      time.sleep(0.2)
    time.sleep(rng.uniform(0, 0.5))            # somewhere inside the next saves
    proc.kill()
    proc.wait()
    from megabyte_jax.models import build_model
    from megabyte_jax.training.workdir import load_config
    config = load_config(workdir)
    model, cfg = build_model(config.model)
    warnings = []
    step, state, _ = Checkpointer(workdir).restore_latest_good(
        state_lib.abstract_train_state(model, cfg.seq_len,
                                       state_lib.make_optimizer(config.train)),
        warn=warnings.append)
    assert step >= before + 2 and int(state.step) == step and not warnings


# ------------------------------------------------------------------ data: odd and huge files


def _data_cfg(files, **changes):
  import ml_collections
  cfg = ml_collections.ConfigDict(dict(name="local_files", files=files, eval_files=None,
                                       eval_fraction=0.3, split_seed=0, separator=0))
  cfg.update(changes)
  return cfg


def _rss_bytes():
  with open("/proc/self/status") as f:
    return int(next(l for l in f if l.startswith("VmRSS:")).split()[1]) * 1024


def test_an_unreadable_file_stops_loading_with_an_error_naming_it(corpus, monkeypatch):
  """Tests run as root, where permissions do not stop reads: `os.open` is made to refuse
  one file as it would for another user (EACCES), then to fail with an I/O error."""
  import errno
  from megabyte_jax import DataError
  from megabyte_jax.data import load_byte_data
  from megabyte_jax.data.local_files import resolve_files
  victim = resolve_files(corpus)[1][3]
  real_open = os.open
  for code in (errno.EACCES, errno.EIO):
    def refusing_open(path, flags, *args, code=code, **kwargs):
      if os.fspath(path) == victim:
        raise OSError(code, os.strerror(code), path)
      return real_open(path, flags, *args, **kwargs)
    monkeypatch.setattr(os, "open", refusing_open)
    with pytest.raises(DataError) as info:
      load_byte_data(_data_cfg(corpus), seq_len=32)
    assert str(info.value) == f"cannot read {victim}: {os.strerror(code)}"
  monkeypatch.undo()
  assert load_byte_data(_data_cfg(corpus), seq_len=32).train_files > 0


def test_matches_that_are_not_regular_files_are_skipped_with_a_warning(corpus, tmp_path,
                                                                      caplog):
  import socket
  from megabyte_jax import DataError
  from megabyte_jax.data.local_files import read_document, resolve_files
  _, before = resolve_files(corpus)
  fifo, broken, sock = (os.path.join(corpus, n) for n in ("a.fifo", "gone.txt", "s.sock"))
  os.mkfifo(fifo)
  os.symlink(str(tmp_path / "nowhere"), broken)
  server = socket.socket(socket.AF_UNIX)
  server.bind(sock)
  try:
    with caplog.at_level("WARNING"):
      _, after = resolve_files(corpus)
    assert after == before                                   # same documents as before
    assert "skipping 3 match(es)" in caplog.text
    for path, kind in ((fifo, "a FIFO"), (broken, "a broken symbolic link"),
                       (sock, "a socket")):
      assert f"{path} ({kind})" in caplog.text
      with pytest.raises(DataError, match=f"no regular files match .*{kind}"):
        resolve_files(path)
    # Reading one directly (e.g. a file replaced meanwhile) fails at once, never waits for
    # a writer to open the FIFO.
    with pytest.raises(DataError, match="a.fifo: it is a FIFO, not a regular file"):
      read_document(fifo)
    with pytest.raises(DataError, match="gone.txt: No such file or directory"):
      read_document(broken)
  finally:
    server.close()


def test_empty_files_are_empty_documents(tmp_path):
  from megabyte_jax import DataError
  from megabyte_jax.data import load_byte_data, load_eval_files, training_batches
  root = tmp_path / "docs"
  root.mkdir()
  for i in range(6):
    (root / f"empty{i}.txt").write_bytes(b"")
  (root / "one.txt").write_bytes(b"x" * 100)
  (root / "two.txt").write_bytes(b"y" * 50)
  data = load_byte_data(_data_cfg(str(root), eval_files=str(root / "two.txt")), seq_len=32)
  # counted, no bytes; two.txt is the validation file, so never a training one
  assert data.train_files == 7 and data.train_bytes == 100
  assert data.eval.num_bytes == 50 and len(data.eval.tokens) == 2
  batch = next(iter(training_batches(data.train, 32, 2, seed=0, chunk_bytes=64)))
  assert set(np.unique(batch)) <= {0, ord("x")}
  with pytest.raises(DataError, match="no bytes to evaluate: every matching file is empty"):
    load_eval_files(str(root / "empty*.txt"), 32)
  # Only empty training files: refused at once (with a separator byte after each document,
  # the packer would otherwise fill batches with separators alone).
  with pytest.raises(DataError, match=r"no bytes to train on: every training file of "
                                      r"'.*empty\*\.txt' is empty \(6 file\(s\)\)"):
    load_byte_data(_data_cfg(str(root / "empty*.txt"), eval_files=str(root / "one.txt")),
                   seq_len=32)


def test_a_file_larger_than_memory_is_memory_mapped_not_read(tmp_path):
  """A 5 GiB sparse file (no disk used) trains: it is mapped, a batch of it reads a few
  pages, and the process does not grow by the file's size."""
  import pickle
  from megabyte_jax.data import load_byte_data, training_batches
  from megabyte_jax.data.local_files import MAP_BYTES, MappedFile
  root = tmp_path / "docs"
  root.mkdir()
  size = 5 * 2 ** 30
  with open(root / "huge.bin", "wb") as f:
    f.truncate(size)
  (root / "small.txt").write_bytes(b"hello world\n" * 10)
  before = _rss_bytes()
  data = load_byte_data(_data_cfg(str(root), eval_files=str(root / "small.txt")), seq_len=32)
  docs = [data.train[i] for i in range(len(data.train))]
  huge = next(d for d in docs if len(d) == size)
  assert isinstance(huge, MappedFile) and not huge.flags.writeable
  assert not any(isinstance(d, MappedFile) for d in docs if len(d) < MAP_BYTES)
  assert data.train_bytes == size          # small.txt validates, so it does not train
  batches = iter(training_batches(data.train, 32, 4, seed=0, chunk_bytes=2 ** 12))
  for _ in range(20):
    assert next(batches).shape == (4, 32)
  assert _rss_bytes() - before < 256 * 2 ** 20
  pickled = pickle.dumps(huge)                  # worker processes map the file again
  assert len(pickled) < 1000 and len(pickle.loads(pickled)) == size
  assert bytes(pickle.loads(pickle.dumps(huge[-3:]))) == b"\0\0\0"


def test_evaluation_windows_that_would_not_fit_in_memory_are_refused(tmp_path, monkeypatch):
  from megabyte_jax import DataError
  from megabyte_jax.data import load_eval_files
  from megabyte_jax.data import local_files
  from megabyte_jax.inference.scoring import strided_spans
  big = tmp_path / "big.bin"
  with open(big, "wb") as f:
    f.truncate(5 * 2 ** 30)                     # 40 GiB as windows
  monkeypatch.setattr(local_files, "eval_memory_limit", lambda: 2 ** 30)
  with pytest.raises(DataError, match=r"evaluating 5,368,709,120 bytes needs 40\.0 GiB of "
                                      r"windows, more than the 1\.0 GiB allowed .* largest "
                                      r"file is .*big\.bin"):
    load_eval_files(str(tmp_path / "*.bin"), 64)
  # The count is exact (plain and strided windows) and the default limit is real memory.
  lengths = [0, 1, 63, 64, 65, 1000, 4097]
  for stride in (8, 32, 64):
    assert local_files.check_eval_memory(lengths, 64, stride, limit=2 ** 40) == sum(
        len(strided_spans(n, 64, stride)) for n in lengths)
  monkeypatch.undo()
  with open("/proc/meminfo") as f:
    total = int(f.readline().split()[1]) * 1024
  assert 2 ** 26 < local_files.eval_memory_limit() <= total // 2


def test_prepared_sources_refuse_a_file_over_the_record_limit(tmp_path):
  from megabyte_jax import DataError
  from megabyte_jax.data import builders
  root = tmp_path / "docs"
  root.mkdir()
  (root / "small.txt").write_bytes(b"hello")
  with open(root / "huge.bin", "wb") as f:
    f.truncate(3 * 2 ** 30)
  data_dir = tmp_path / "tfds"
  with pytest.raises(DataError, match=r"huge\.bin holds 3,221,225,472 bytes, more than the "
                                      r"2,146,435,072 that one record"):
    builders.build_source("byte_files", {"files": str(root)}, str(data_dir), "train")
  assert not any(files for _, _, files in os.walk(data_dir))   # nothing was written
