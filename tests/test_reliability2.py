"""Reliability, second round (issue 23): corrupt checkpoints, wrong data, concurrent runs,
real full disks, config values that used to be accepted, sampling limits."""

import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO, make_corpus, run_commands, run_module
from megabyte_jax import CheckpointError, ConfigError, DataError, TrainingError
from megabyte_jax.training.checkpoint import MANIFEST, CheckpointAccessError, Checkpointer
from megabyte_jax.training.metrics import read_metrics
from megabyte_jax.train import train_and_evaluate
from test_reliability import _config, _data_cfg, _env, _train_cmd

TINY = os.path.join(REPO, "experiments", "configs", "tiny.py")


def _largest_file(directory):
  paths = [os.path.join(r, f) for r, _, fs in os.walk(directory) for f in fs]
  return max(paths, key=os.path.getsize)


def _flip_bytes(path, count=2000, seed=0):
  """Overwrites `count` bytes in the middle of `path` with other values; same length."""
  with open(path, "r+b") as f:
    data = bytearray(f.read())
    start = max(0, len(data) // 2 - count // 2)
    rng = np.random.default_rng(seed)
    for i in range(start, min(len(data), start + count)):
      data[i] = (data[i] + int(rng.integers(1, 256))) % 256
    f.seek(0)
    f.write(data)
  return len(data)


def _abstract(config):
  from megabyte_jax.training import train_state as state_lib
  from megabyte_jax.models import build_model
  model, cfg = build_model(config.model)
  return state_lib.abstract_train_state(model, cfg.seq_len,
                                        state_lib.make_optimizer(config.train))


# ------------------------------------------------------------------ checkpoint integrity


def test_same_length_corruption_is_caught_by_the_checksum_and_falls_back(corpus, tmp_path):
  workdir = str(tmp_path / "run")
  train_and_evaluate(_config(corpus, steps=8), workdir)
  victim = _largest_file(os.path.join(workdir, "checkpoints", "8", "state"))
  size = os.path.getsize(victim)
  assert _flip_bytes(victim) == size == os.path.getsize(victim)
  warnings = []
  step, state, _ = Checkpointer(workdir).restore_latest_good(_abstract(_config(corpus)),
                                                             warn=warnings.append)
  assert step == 4 and int(state.step) == 4
  assert len(warnings) == 1 and "\n" not in warnings[0]
  assert "step 8" in warnings[0] and "does not match its checksum" in warnings[0]
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "8.unreadable"))
  # evaluate and sample name the corrupt step and exit non-zero (they never fall back)
  os.rename(os.path.join(workdir, "checkpoints", "8.unreadable"),
            os.path.join(workdir, "checkpoints", "8"))
  for result in run_commands(("megabyte_jax.evaluate", [f"--workdir={workdir}"]),
                             ("megabyte_jax.sample", [f"--workdir={workdir}"])):
    assert result["code"] == 1, result["stderr"][-2000:]
    lines = result["stderr"].strip().splitlines()
    assert lines[-1].startswith("error: ") and "step 8" in lines[-1], result["stderr"][-2000:]
    assert "corrupt" in lines[-1] and "Traceback" not in result["stderr"]


def _small_state(value):
  return {"params": {"w": jnp.full((4, 4), value, jnp.float32)},
          "step": jnp.asarray(1, jnp.int32)}


def _abstract_small():
  return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                                _small_state(0.0))


def test_non_finite_checkpoints_are_refused_and_never_evict_the_last_good_one(tmp_path):
  workdir = str(tmp_path / "run")
  ckpt = Checkpointer(workdir, save_every=1, keep=2)
  ckpt.save(1, _small_state(1.0))
  for step in (2, 3, 4, 5):                       # a run gone bad: NaN from step 2 on
    ckpt.save(step, _small_state(np.nan))
  ckpt.close()
  ckpt = Checkpointer(workdir, save_every=1, keep=2)
  # keep-2 keeps 4 and 5, and step 1 beyond them: the newest verified-good checkpoint
  assert ckpt.all_steps() == [1, 4, 5] and ckpt.last_good_step() == 1
  assert ckpt.manifest(5)["finite"] is False and ckpt.manifest(1)["finite"] is True
  with pytest.raises(CheckpointError, match=r"step 5 .* holds 16 non-finite value\(s\)"):
    ckpt.restore(_abstract_small(), 5)
  warnings = []
  step, state, _ = ckpt.restore_latest_good(_abstract_small(), warn=warnings.append)
  assert step == 1 and float(state["params"]["w"][0, 0]) == 1.0
  assert len(warnings) == 2 and "step 5" in warnings[0] and "step 4" in warnings[1]
  ckpt.save(6, _small_state(2.0))                  # a newer good one: step 1 may go now
  ckpt.save(7, _small_state(3.0))
  ckpt.wait()
  assert ckpt.all_steps() == [6, 7] and ckpt.last_good_step() == 7
  ckpt.close()


def test_a_deleted_data_file_is_reported_missing_and_the_previous_step_restored(tmp_path):
  """One data file of the newest step deleted, its manifest kept: restoring that step names
  the missing file, and the latest-good restore falls back to the step before."""
  workdir = str(tmp_path / "run")
  ckpt = Checkpointer(workdir, save_every=1, keep=3)
  ckpt.save(1, _small_state(1.0))
  ckpt.save(2, _small_state(2.0))
  ckpt.close()
  step_dir = os.path.join(workdir, "checkpoints", "2")
  victim = _largest_file(os.path.join(step_dir, "state", "ocdbt.process_0", "d"))
  rel = os.path.relpath(victim, step_dir)
  ckpt = Checkpointer(workdir, save_every=1, keep=3)
  assert rel in ckpt.manifest(2)["files"]
  os.remove(victim)
  with pytest.raises(CheckpointError, match=f"step 2 .* is corrupt: {rel} is missing$"):
    ckpt.restore(_abstract_small(), 2)
  warnings = []
  step, state, _ = ckpt.restore_latest_good(_abstract_small(), warn=warnings.append)
  assert step == 1 and float(state["params"]["w"][0, 0]) == 1.0
  assert len(warnings) == 1 and f"{rel} is missing" in warnings[0], warnings
  ckpt.close()


# ------------------------------------------------------------------ config validation


@pytest.mark.parametrize("section,key,value,match", [
    ("train", "learning_rate", float("nan"), r"train\.learning_rate must be a finite number"),
    ("train", "b2", 1.5, r"train\.b2 must be in \[0, 1\), got 1\.5"),
    ("train", "max_bad_steps", 0, r"train\.max_bad_steps must be positive, got 0"),
    ("train", "grad_accum_steps", 0, r"train\.grad_accum_steps must be positive, got 0"),
    ("train", "warmup_steps", 12, r"train\.warmup_steps must be less than train\.steps"),
    ("data", "prefetch", -1, r"data\.prefetch must be >= 0, got -1"),
    ("data", "workers", -2, r"data\.workers must be >= 0, got -2"),
    ("data", "read_threads", -1, r"data\.read_threads must be >= 0, got -1"),
    ("train", "weight_decay_mask", "all",
     r"train\.weight_decay_mask must be one of \('kernels', 'kernels_embeddings', 'ndim'\)"),
])
def test_bad_config_values_are_refused_before_anything_is_written(section, key, value, match,
                                                                 corpus, tmp_path):
  config = _config(corpus, steps=12)
  config[section][key] = value
  workdir = tmp_path / "run"
  with pytest.raises(ConfigError, match=match) as info:
    train_and_evaluate(config, str(workdir))
  assert "\n" not in str(info.value)
  assert not workdir.exists()                      # nothing written, not even the folder


def test_cli_config_mistakes_are_one_line(tmp_path):
  syntax, binary = tmp_path / "syntax.py", tmp_path / "binary.py"
  syntax.write_text("def get_config(:\n")
  binary.write_bytes(bytes(range(256)) * 4)
  workdir = tmp_path / "run"
  cases = (([f"--config={syntax}"], "cannot load the --config file: invalid syntax"),
           ([f"--config={binary}"], "cannot load the --config file"),
           ([f"--config={TINY}", "--config.train.learning_rate=nan"],
            "train.learning_rate must be a finite number, got nan"))
  results = run_commands(*[("megabyte_jax.train", [f"--workdir={workdir}", *args])
                           for args, _ in cases])
  for result, (_, expected) in zip(results, cases):
    assert result["code"] == 1 and "Traceback" not in result["stderr"], result["stderr"][-2000:]
    assert result["stderr"].strip().splitlines()[-1].startswith(f"error: {expected}"), result
  assert not workdir.exists()


def test_a_start_that_fails_after_validation_leaves_the_workdir_free(corpus, tmp_path):
  from megabyte_jax.training.workdir import CONFIG_FILE, save_config
  workdir = str(tmp_path / "run")
  config = _config(corpus, steps=4)
  config.data.files = str(tmp_path / "nothing-here")     # valid config, missing data
  with pytest.raises(DataError, match="no files match"):
    train_and_evaluate(config, workdir)
  assert sorted(os.listdir(workdir)) == []            # no config.json, no lock
  other = _config(corpus, steps=4)
  other.model.global_dim = 64                        # another model may use the workdir
  assert train_and_evaluate(other, workdir)["step"] == 4
  # config.json is replaced atomically: no temporary file is left
  save_config(workdir, other)
  assert sorted(os.listdir(workdir)) == ["checkpoints", CONFIG_FILE, "data.json",
                                         "metrics.jsonl", "result.json"]


# ------------------------------------------------------------------ workdir lock


def test_a_second_trainer_on_the_same_workdir_is_refused(corpus, tmp_path):
  import signal
  import time
  workdir = str(tmp_path / "run")
  cmd = _train_cmd(workdir, corpus, "--config.train.checkpoint_every=100000")
  first = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
  metrics = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + 300
  while not (os.path.exists(metrics) and os.path.getsize(metrics)) and time.time() < deadline:
    time.sleep(0.3)
  second = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=300)
  first.send_signal(signal.SIGTERM)
  first.communicate(timeout=300)
  assert second.returncode == 1 and "Traceback" not in second.stderr, second.stderr[-2000:]
  last = second.stderr.strip().splitlines()[-1]
  assert last.startswith(f"error: {workdir} is in use by another trainer (pid {first.pid} "
                         f"on "), last
  assert first.returncode == 143
  assert not os.path.exists(os.path.join(workdir, "train.lock"))   # released at the end


def test_a_stale_lock_is_taken_over_and_a_foreign_one_refused(corpus, tmp_path, capsys):
  import socket
  from megabyte_jax.errors import WorkdirLocked
  from megabyte_jax.training.workdir_lock import LOCK_FILE, WorkdirLock
  workdir = tmp_path / "run"
  workdir.mkdir()
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  lock = workdir / LOCK_FILE
  lock.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
  assert train_and_evaluate(_config(corpus, steps=4), str(workdir))["step"] == 4
  assert (f"taking over the stale lock {lock} of pid {dead.pid} on "
          f"{socket.gethostname()}") in capsys.readouterr().err
  assert not lock.exists()
  lock.write_text(json.dumps({"pid": 1, "host": "elsewhere.example"}))
  with pytest.raises(WorkdirLocked, match=r"was left by pid 1 on elsewhere\.example, another "
                                          r"host"):
    train_and_evaluate(_config(corpus, steps=4), str(workdir))
  # In a multi-host run only process 0 takes the lock (the others pass enabled=False).
  lock.unlink()
  with WorkdirLock(str(workdir), enabled=False):
    assert not lock.exists()
  with WorkdirLock(str(workdir)):
    with pytest.raises(WorkdirLocked, match=f"in use by another trainer \\(pid {os.getpid()}"):
      WorkdirLock(str(workdir)).acquire()


def test_a_lock_of_a_live_process_we_may_not_signal_is_refused(tmp_path, monkeypatch):
  """The lock file names a process on this host that `os.kill(pid, 0)` may not signal
  (PermissionError: it exists, owned by another user): a second trainer is refused and the
  lock is left as it was. A pid that is gone is taken over."""
  import socket
  from megabyte_jax.errors import WorkdirLocked
  from megabyte_jax.training.workdir_lock import LOCK_FILE, WorkdirLock
  sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
  try:
    real_kill = os.kill

    def kill(pid, sig):
      if pid == sleeper.pid:
        raise PermissionError(1, "Operation not permitted")
      return real_kill(pid, sig)

    monkeypatch.setattr(os, "kill", kill)
    lock = tmp_path / LOCK_FILE
    text = json.dumps({"pid": sleeper.pid, "host": socket.gethostname()})
    lock.write_text(text)
    with pytest.raises(WorkdirLocked, match=f"names a live process \\(pid {sleeper.pid} on "):
      WorkdirLock(str(tmp_path)).acquire()
    assert lock.read_text() == text
  finally:
    monkeypatch.undo()
    sleeper.kill()
    sleeper.wait()
  said = []
  with WorkdirLock(str(tmp_path), say=said.append):   # the pid is gone now: taken over
    assert json.loads(lock.read_text())["pid"] == os.getpid()
  assert len(said) == 1 and f"stale lock {lock} of pid {sleeper.pid}" in said[0]


# ------------------------------------------------------------------ real full disks


@pytest.fixture
def small_disk(tmp_path):
  """A real 2 MiB tmpfs (needs root and permission to mount; skipped otherwise)."""
  mount = tmp_path / "disk"
  mount.mkdir()
  proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                        capture_output=True, text=True)
  if proc.returncode:
    pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip() or proc.returncode}")
  try:
    yield str(mount)
  finally:
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(directory, leave=0):
  """Fills the disk of `directory`, leaving `leave` bytes free."""
  free = shutil.disk_usage(directory).free - leave
  with open(os.path.join(directory, "filler"), "wb") as f:
    f.write(b"\0" * max(0, free))


def test_a_real_full_disk_during_training_is_one_line_and_keeps_the_checkpoint(
    small_disk, tmp_path):
  corpus = tmp_path / "corpus"
  shutil.copytree(os.path.join(os.path.dirname(json.__file__)), corpus,
                  ignore=shutil.ignore_patterns("__pycache__"))
  workdir = os.path.join(small_disk, "run")
  proc = run_module("megabyte_jax.train", f"--config={TINY}", f"--workdir={workdir}",
                    f"--config.data.files={corpus}", "--config.data.eval_fraction=0.4",
                    "--config.train.steps=60", "--config.train.checkpoint_every=5",
                    "--config.train.keep_checkpoints=20", "--config.train.eval_every=0",
                    # the paper's formulation: a checkpoint of ~1.5 MiB, one fits in 2 MiB
                    "--config.model.patch_embed=concat", "--config.model.global_to_local=slice",
                    "--noprogress", check=False)
  assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith(f"error: cannot write the checkpoint of step 10 in {workdir}/"
                         f"checkpoints: No space left on device"), last
  assert last.endswith("the newest complete checkpoint, step 5, is untouched")
  ckpt = Checkpointer(workdir)
  assert ckpt.all_steps() == [5] and ckpt.manifest(5)["finite"]
  assert sorted(os.listdir(ckpt.directory)) == ["5"]       # the partial save is removed


def test_a_real_tensorstore_resource_exhausted_error_is_caught(small_disk):
  workdir = os.path.join(small_disk, "run")
  ckpt = Checkpointer(workdir, save_every=1, keep=5)
  ckpt.check_space = False            # let TensorStore itself hit the full disk
  ckpt.save(1, _small_state(1.0))
  big = {"params": {"w": jax.random.normal(jax.random.key(0), (1024, 1024))},  # 4 MiB
         "step": jnp.asarray(2, jnp.int32)}
  with pytest.raises(CheckpointError) as info:
    ckpt.save(2, big)
    ckpt.wait()
  message = str(info.value)
  assert "\n" not in message and "RESOURCE_EXHAUSTED" in message
  assert message.startswith(f"cannot write the checkpoint of step 2 in {ckpt.directory}: "
                            f"No space left on device")
  assert message.endswith("the newest complete checkpoint, step 1, is untouched")
  assert sorted(os.listdir(ckpt.directory)) == ["1"]
  again = Checkpointer(workdir)
  assert float(again.restore(_abstract_small(), 1)["params"]["w"][0, 0]) == 1.0


def test_full_disk_writing_metrics_or_config_is_one_line(small_disk, corpus):
  from megabyte_jax import MegabyteError
  from megabyte_jax.training.metrics import MetricWriter
  workdir = os.path.join(small_disk, "run")
  writer = MetricWriter(workdir, tensorboard=False)
  _fill(small_disk)
  with pytest.raises(TrainingError, match=r"cannot write the metrics of step 3 to .*metrics"
                                          r"\.jsonl: No space left on device"):
    writer.write(3, {"train_bpb": 1.0, "text": "x" * 5000})
  writer.close()
  os.remove(os.path.join(small_disk, "filler"))
  shutil.rmtree(workdir)
  _fill(small_disk, leave=4096)       # room for the lock file, not for config.json
  with pytest.raises(MegabyteError, match="No space left on device") as info:
    train_and_evaluate(_config(corpus, steps=4), workdir)
  assert "\n" not in str(info.value)
  assert not os.path.exists(os.path.join(workdir, "config.json"))


# ------------------------------------------------------------------ data integrity


def _tree(root, names):
  for name in names:
    path = os.path.join(os.fsencode(root), name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
      f.write(b"doc " + name * 50)


def test_symlink_loops_and_aliases_give_each_file_once_and_in_one_split(tmp_path):
  from megabyte_jax.data import load_byte_data, split_file_lists
  from megabyte_jax.data.local_files import resolve_files
  root = tmp_path / "docs"
  _tree(root, [b"a.txt", b"b.txt", b"sub/c.txt", b"sub/deep/d.txt", b"e.txt"])
  os.symlink("..", root / "sub" / "up")                 # a loop
  os.symlink(".", root / "sub" / "deep" / "self")      # another
  os.symlink("a.txt", root / "alias.txt")              # one file, two names
  real = sorted(os.path.realpath(os.path.join(r, f)) for r, _, fs in os.walk(root)
                for f in fs if not os.path.islink(os.path.join(r, f)))
  for pattern in (str(root), str(root / "**" / "*.txt"), str(root / "*.txt")):
    _, files = resolve_files(pattern)
    expected = real if "**" in pattern or pattern == str(root) else [
        p for p in real if os.path.dirname(p) == str(root)]
    assert files == expected, pattern
  cfg = _data_cfg(str(root), eval_fraction=0.4)
  train, evaluation = split_file_lists(cfg)
  assert not set(train) & set(evaluation) and sorted(train + evaluation) == real
  data = load_byte_data(cfg, seq_len=32)
  assert data.train_files + data.eval_files == 5


def test_no_file_is_ever_in_both_splits(tmp_path):
  """Random trees of files, symbolic links to files and to directories (loops included),
  split by fraction or by a separate validation glob that overlaps the training one."""
  from megabyte_jax.data import split_file_lists
  rng = np.random.default_rng(0)
  for case in range(15):
    root = tmp_path / f"t{case}"
    dirs = [root]
    for i in range(int(rng.integers(1, 5))):
      dirs.append(dirs[int(rng.integers(len(dirs)))] / f"d{i}")
      dirs[-1].mkdir(parents=True)
    files = []
    for i in range(int(rng.integers(2, 12))):
      path = dirs[int(rng.integers(len(dirs)))] / f"f{i}.txt"
      path.write_bytes(b"x" * int(rng.integers(1, 100)))
      files.append(path)
    for i in range(int(rng.integers(0, 4))):
      at = dirs[int(rng.integers(len(dirs)))] / f"link{i}.txt"
      target = (files if rng.random() < 0.5 else dirs)[int(rng.integers(2))
                                                         if len(dirs) > 1 else 0]
      os.symlink(target, at)
    real = {os.path.realpath(f) for f in files}
    for eval_files in (None, str(root / "**" / "f1*.txt")):
      cfg = _data_cfg(str(root), eval_fraction=0.5, eval_files=eval_files)
      try:
        train, evaluation = split_file_lists(cfg)
      except DataError as e:
        assert "split" in str(e) or "no files match" in str(e)
        continue
      assert not set(train) & set(evaluation), case
      assert len(set(train)) == len(train) and len(set(evaluation)) == len(evaluation)
      assert set(train) | set(evaluation) <= real
      if eval_files is None:
        assert set(train) | set(evaluation) == real


def test_non_utf8_file_names_are_read_and_split(tmp_path):
  from megabyte_jax.data import load_byte_data, split_file_lists
  root = tmp_path / "docs"
  _tree(root, [b"caf\xe9.txt", b"\xff\xfe.bin", b"plain.txt", b"d\xe9j\xe0/x.txt"])
  cfg = _data_cfg(str(root), eval_fraction=0.5)
  train, evaluation = split_file_lists(cfg)
  assert len(train) + len(evaluation) == 4
  data = load_byte_data(cfg, seq_len=32)
  assert data.train_files + data.eval_files == 4


def test_an_unreadable_directory_is_an_error_naming_it_unless_skipped(tmp_path, monkeypatch,
                                                                     caplog):
  """Tests run as root, whom `chmod 000` does not stop (and the user `nobody` cannot reach
  this Python): `os.scandir` is made to refuse the directory as it would for another
  user."""
  import errno
  from megabyte_jax.data import load_byte_data
  from megabyte_jax.data.local_files import resolve_files
  root = tmp_path / "docs"
  _tree(root, [b"a.txt", b"b.txt", b"e.txt", b"locked/c.txt"])
  locked = str(root / "locked")
  os.chmod(locked, 0)
  real_scandir = os.scandir

  def refusing_scandir(path="."):
    if os.fspath(path) == locked:
      raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
    return real_scandir(path)

  monkeypatch.setattr(os, "scandir", refusing_scandir)
  for pattern in (str(root), str(root / "**" / "*.txt")):
    with pytest.raises(DataError, match=f"cannot read the directory {locked}: Permission "
                                        f"denied .*data.skip_unreadable=True"):
      resolve_files(pattern)
  with caplog.at_level("WARNING"):
    _, files = resolve_files(str(root), skip_unreadable=True)
  assert [os.path.basename(f) for f in files] == ["a.txt", "b.txt", "e.txt"]
  assert f"skipping the unreadable directory {locked}" in caplog.text
  data = load_byte_data(_data_cfg(str(root), skip_unreadable=True, eval_fraction=0.4), 32)
  assert data.train_files + data.eval_files == 3
  os.chmod(locked, 0o755)


# ------------------------------------------------------------------ sampling


def test_sample_refuses_huge_outputs_fifos_and_the_runs_own_files(corpus, tmp_path,
                                                                   monkeypatch):
  import threading
  from megabyte_jax import InputError
  from megabyte_jax.data import local_files
  from megabyte_jax.sample import run_sample
  workdir = str(tmp_path / "run")
  train_and_evaluate(_config(corpus, steps=4), workdir)
  monkeypatch.setattr(local_files, "eval_memory_limit", lambda: 16 * 2 ** 30)  # a 32 GiB host
  with pytest.raises(InputError, match=r"generating 1 x 2,147,483,002 bytes needs about "
                                       r"32\.0 GiB, more than the 16\.0 GiB allowed"):
    run_sample(workdir, prompt="ab", num_bytes=2147483000, slide=True)
  monkeypatch.undo()
  fifo = str(tmp_path / "prompt.fifo")
  os.mkfifo(fifo)
  result = []
  worker = threading.Thread(target=lambda: result.append(
      pytest.raises(InputError, run_sample, workdir, prompt_file=fifo, num_bytes=4)))
  worker.start()
  worker.join(timeout=60)
  assert not worker.is_alive(), "a FIFO as --prompt_file hangs"
  assert "is a FIFO, not a regular file" in str(result[0].value)
  before = open(os.path.join(workdir, "config.json"), "rb").read()
  for name in ("config.json", "metrics.jsonl", "checkpoints/4/state/x", "checkpoints"):
    with pytest.raises(InputError, match="--output .* (is the run's own|is inside the run's)"):
      run_sample(workdir, prompt="ab", num_bytes=4, output=os.path.join(workdir, name))
  assert open(os.path.join(workdir, "config.json"), "rb").read() == before
  out = os.path.join(workdir, "sample.bin")              # other files in the workdir are fine
  assert run_sample(workdir, prompt="ab", num_bytes=4, output=out)[0][:2] == b"ab"


# ------------------------------------------------------------------ bad steps, random faults


def test_the_bad_step_stop_waits_for_the_save_in_flight_and_names_a_complete_one(corpus,
                                                                                tmp_path):
  workdir = str(tmp_path / "run")
  config = _config(corpus, steps=40)
  config.train.update(learning_rate=1e30, checkpoint_every=5, max_bad_steps=4, log_every=1)
  with pytest.raises(TrainingError, match=r"the newest complete checkpoint is step (\d+)") as e:
    train_and_evaluate(config, workdir)
  import re
  named = int(re.search(r"checkpoint is step (\d+)", str(e.value)).group(1))
  ckpt = Checkpointer(workdir)
  assert named == ckpt.latest_step() and ckpt.manifest(named) is not None
  assert not [n for n in os.listdir(ckpt.directory) if "tmp" in n]   # nothing abandoned
  assert not os.path.exists(os.path.join(workdir, "train.lock"))


def test_random_faults_over_train_stop_corrupt_resume_lose_nothing_and_never_nan(corpus,
                                                                                tmp_path):
  """A bounded loop of random faults between runs: each run trains 4 more steps, then one
  of: flip bytes in a checkpoint file (same length), truncate one, delete its manifest and
  poison it with NaN, remove the newest step, or nothing. The next run must resume from the
  newest intact step (never an older one, never a corrupt one), and no restored parameter
  may be NaN. Three rounds: this seed draws a flip, a removal and NaN (a fourth round drew
  a second removal); checkpoint files emptied or overwritten with garbage are
  test_reliability's."""
  from megabyte_jax.training.checkpoint import count_non_finite
  rng = np.random.default_rng(23)
  workdir = str(tmp_path / "run")
  target, intact = 0, None
  for round_ in range(3):
    target += 4
    config = _config(corpus, steps=target)
    config.train.update(checkpoint_every=2, keep_checkpoints=2)
    final = train_and_evaluate(config, workdir)
    assert final["step"] == target
    ckpt = Checkpointer(workdir, keep=2)
    steps = ckpt.all_steps()
    assert steps[-1] == target and ckpt.last_good_step() == target
    fault = ["flip", "truncate", "nan", "remove", "none"][int(rng.integers(5))]
    newest = os.path.join(ckpt.directory, str(target))
    victim = _largest_file(os.path.join(newest, "state"))
    if fault == "flip":
      _flip_bytes(victim, count=int(rng.integers(1, 3000)), seed=round_)
    elif fault == "truncate":
      with open(victim, "r+b") as f:
        f.truncate(os.path.getsize(victim) // 2)
    elif fault == "nan":
      abstract = _abstract(config)
      state = ckpt.restore(abstract, target)
      poisoned = state.replace(params=jax.tree_util.tree_map(
          lambda x: jnp.full_like(x, jnp.nan), state.params))
      shutil.rmtree(newest)
      ckpt._manager.reload()
      ckpt.save(target, poisoned, force=True)
      ckpt.wait()
      os.remove(os.path.join(newest, MANIFEST))        # no checksum to catch it
    elif fault == "remove":
      shutil.rmtree(newest)
    ckpt.close()
    good = [s for s in steps if s != target] if fault != "none" else steps
    intact = good[-1] if good else None
    warnings = []
    step, state, _ = Checkpointer(workdir, keep=2).restore_latest_good(
        _abstract(config), warn=warnings.append)
    assert step == intact, (round_, fault, steps)
    assert count_non_finite(state.params)[0] == 0
    assert (len(warnings) == 1) == (fault in ("flip", "truncate", "nan")), (fault, warnings)
    assert all("\n" not in w for w in warnings)
  records = [r for r in read_metrics(workdir) if "train_bpb" in r]
  assert records[-1]["step"] == target
  assert all(r["train_bpb"] is not None and np.isfinite(r["train_bpb"]) for r in records)


def _without_root_file_access(args):
  """`args` run with the file-permission bypass of root dropped (CAP_DAC_OVERRIDE and
  CAP_DAC_READ_SEARCH), so `chmod 000` really refuses access, as for any other user."""
  if not shutil.which("setpriv"):
    pytest.skip("setpriv (util-linux) is needed to drop root's file-access capabilities")
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
             PYTHONIOENCODING="utf-8")
  caps = "-dac_override,-dac_read_search"
  return subprocess.run(["setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}",
                         sys.executable, "-m", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600)


def _chmod_args(workdir, corpus):
  return [f"--config={TINY}", f"--workdir={workdir}", f"--config.data.files={corpus}",
          "--config.data.eval_fraction=0.4", "--config.train.checkpoint_every=5",
          "--config.train.eval_every=0", "--config.sample.num_bytes=0", "--noprogress"]


@pytest.fixture(scope="module")
def ten_steps(tmp_path_factory):
  """`(workdir, corpus)`: 10 steps of the tiny config from the command line (checkpoints 5
  and 10), for tests to copy."""
  root = tmp_path_factory.mktemp("ten_steps")
  corpus = make_corpus(root / "corpus")
  workdir = str(root / "run")
  run_module("megabyte_jax.train", *_chmod_args(workdir, corpus), "--config.train.steps=10")
  return workdir, corpus


@pytest.mark.parametrize("target", ["step", "checkpoints"])
def test_chmod_000_on_a_step_or_on_checkpoints_is_one_line_and_renames_nothing(
    target, tmp_path, ten_steps):
  """A real permission failure (root's bypass dropped): resuming refuses in one line that
  names the permission problem, renames nothing (permissions are not corruption), and the
  run resumes normally once the permissions are fixed."""
  workdir = str(tmp_path / "run")
  shutil.copytree(ten_steps[0], workdir)                    # 10 steps, from the CLI
  common = _chmod_args(workdir, ten_steps[1])
  ckpt_dir = os.path.join(workdir, "checkpoints")
  locked = os.path.join(ckpt_dir, "10") if target == "step" else ckpt_dir
  before = sorted(os.listdir(ckpt_dir))
  os.chmod(locked, 0)
  try:
    proc = _without_root_file_access(["megabyte_jax.train", *common,
                                      "--config.train.steps=15"])
  finally:
    os.chmod(locked, 0o755)
  assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and "ermission" in last, last
  assert "corrupt" not in last and "unreadable" not in last, last
  assert sorted(os.listdir(ckpt_dir)) == before              # nothing renamed or deleted
  run_module("megabyte_jax.train", *common, "--config.train.steps=15")
  assert Checkpointer(workdir).latest_step() == 15


def test_a_truncated_prepared_data_file_is_one_line_at_evaluate(tmp_path, corpus):
  """A prepared (array_record) shard cut short: a validation shard stops `evaluate`, a
  training shard stops a resumed and a fresh training run, each with one line naming the
  shard and what to do (before: a traceback from array_record; on resume, a blamed
  checkpoint)."""
  workdir, data_dir = str(tmp_path / "run"), str(tmp_path / "tfds")
  run_module("megabyte_jax.train", f"--config={TINY}", f"--workdir={workdir}",
             "--config.data.name=byte_files", f"--config.data.files={corpus}",
             f"--config.data.data_dir={data_dir}", "--config.data.eval_fraction=0.4",
             "--config.train.steps=6", "--config.train.warmup_steps=1",
             "--config.sample.num_bytes=0", "--noprogress")
  shards = {split: [os.path.join(root, name) for root, _, names in os.walk(data_dir)
                    for name in names if f"{split}.array_record" in name]
            for split in ("train", "validation")}
  assert shards["train"] and shards["validation"]
  for shard in shards["validation"]:
    os.truncate(shard, 5000)
  proc = run_module("megabyte_jax.evaluate", f"--workdir={workdir}", "--noprogress",
                    check=False)
  assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith(f"error: the validation shard {shards['validation'][0]} of the "
                         f"prepared dataset 'byte_files' is damaged: "), last
  assert "truncated or corrupt" in last and "to prepare it again" in last
  for shard in shards["train"]:
    os.truncate(shard, os.path.getsize(shard) // 2)
  from megabyte_jax.training.workdir import load_config
  config = load_config(workdir)
  config.train.steps = 8
  for where in (workdir, str(tmp_path / "fresh")):     # a resumed run, a fresh one
    with pytest.raises(DataError) as info:
      train_and_evaluate(config, where)
    message = str(info.value)
    assert message.startswith(f"the train shard {shards['train'][0]} of the prepared "
                              f"dataset 'byte_files' is damaged: "), message
    assert "\n" not in message and "to prepare it again" in message
  assert Checkpointer(workdir).all_steps() == [6]      # no checkpoint blamed or renamed
