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

from conftest import REPO, run_module
from megabyte_jax import CheckpointError, ConfigError, DataError, TrainingError
from megabyte_jax.checkpoint import MANIFEST, CheckpointAccessError, Checkpointer
from megabyte_jax.metrics import read_metrics
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
  from megabyte_jax import train_state as state_lib
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
  for module in ("megabyte_jax.evaluate", "megabyte_jax.sample"):
    proc = run_module(module, f"--workdir={workdir}", check=False)
    assert proc.returncode == 1, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "step 8" in lines[-1], proc.stderr[-2000:]
    assert "corrupt" in lines[-1] and "Traceback" not in proc.stderr


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
