"""Training: the step learns, checkpoints round-trip, runs resume exactly."""

import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO
from megabyte_jax import ByteTransformer, CheckpointError, ConfigError, Megabyte, TrainingError
from megabyte_jax import config_checks
from megabyte_jax.training.checkpoint import Checkpointer
from megabyte_jax.experiment import base_config
from megabyte_jax.training.metrics import read_metrics
from megabyte_jax.train import train_and_evaluate
from megabyte_jax.training.result import TrainResult
from megabyte_jax.training.setup import TrainSetup
from megabyte_jax.training.setup import Training, fresh_training
from megabyte_jax.training.train_step import make_train_step
from megabyte_jax.training.train_state import (abstract_train_state, create_train_state, decay_mask,
                                      learning_rate_schedule, make_optimizer)
from megabyte_jax.training.workdir import load_trained


def _config(corpus, kind="megabyte", steps=12):
  if kind == "megabyte":
    config = base_config("megabyte", seq_len=32, patch_size=4, global_dim=32, global_layers=1,
                         global_heads=2, local_dim=16, local_layers=1, local_heads=2)
  else:
    config = base_config("transformer", seq_len=32, dim=32, layers=1, heads=2)
  config.data.files = corpus
  config.data.eval_fraction = 0.3
  config.data.chunk_bytes = 2 ** 14
  t = config.train
  t.steps, t.batch_size, t.warmup_steps, t.log_every = steps, 4, 2, 3
  t.eval_every, t.eval_batches, t.checkpoint_every, t.tensorboard = 6, 1, 6, False
  config.eval.batch_size = 16
  config.sample.num_bytes = 8
  return config


@pytest.mark.parametrize("kind", ["megabyte", "transformer"])
def test_tiny_model_overfits_a_fixed_sequence(kind, megabyte_cfg, transformer_cfg):
  model = Megabyte(megabyte_cfg) if kind == "megabyte" else ByteTransformer(transformer_cfg)
  config = base_config("transformer", seq_len=32, dim=8, layers=1, heads=1)
  config.train.update(steps=150, warmup_steps=10, learning_rate=1e-2, weight_decay=0.0)
  optimizer = make_optimizer(config.train)
  state = create_train_state(model, 32, optimizer, jax.random.key(0))
  step = make_train_step(model, optimizer, seed=0, dropout=False)
  text = b"def f(x):\n    return x * 2 + 10\n"  # 32 bytes
  tokens = jnp.asarray(np.frombuffer(text, np.uint8)[None, :32].astype(np.int32).repeat(2, 0))
  first = None
  for _ in range(150):
    state, metrics = step(state, tokens)
    first = float(metrics["loss"]) if first is None else first
  assert first > 4.0                     # starts near uniform (ln 256 = 5.5 nats)
  assert float(metrics["loss"]) < 0.3    # and memorises the sequence
  assert int(state.step) == 150


def test_schedule_and_decay_mask():
  config = base_config("transformer", seq_len=32, dim=8, layers=1, heads=1)
  config.train.update(steps=100, warmup_steps=10, learning_rate=1.0, min_lr_ratio=0.1)
  schedule = learning_rate_schedule(config.train)
  assert float(schedule(0)) == 0.0
  assert abs(float(schedule(10)) - 1.0) < 1e-6
  assert abs(float(schedule(100)) - 0.1) < 1e-6
  params = {"kernel": jnp.zeros((2, 3)), "bias": jnp.zeros((3,)),
            "qkv_bias": jnp.zeros((3, 1, 2))}
  assert decay_mask(params) == {"kernel": True, "bias": False, "qkv_bias": False}
  assert decay_mask(params, "ndim") == {"kernel": True, "bias": False, "qkv_bias": True}


def test_checkpoint_round_trip(tmp_path, megabyte_cfg):
  model = Megabyte(megabyte_cfg)
  config = base_config("transformer", seq_len=32, dim=8, layers=1, heads=1)
  optimizer = make_optimizer(config.train)
  state = create_train_state(model, 32, optimizer, jax.random.key(0))
  checkpointer = Checkpointer(str(tmp_path), save_every=1, keep=2)
  for step in (1, 2, 3):
    checkpointer.save(step, state.replace(step=jnp.asarray(step, jnp.int32)))
  checkpointer.wait()
  assert checkpointer.all_steps() == [2, 3]          # keeps the last 2
  restored = checkpointer.restore(abstract_train_state(model, 32, optimizer))
  checkpointer.close()
  assert int(restored.step) == 3
  jax.tree_util.tree_map(np.testing.assert_array_equal, restored.params, state.params)
  jax.tree_util.tree_map(np.testing.assert_array_equal, restored.opt_state, state.opt_state)


def test_missing_and_corrupt_checkpoints_are_clear_errors(tmp_path, megabyte_cfg):
  model = Megabyte(megabyte_cfg)
  config = base_config("transformer", seq_len=32, dim=8, layers=1, heads=1)
  optimizer = make_optimizer(config.train)
  abstract = abstract_train_state(model, 32, optimizer)
  checkpointer = Checkpointer(str(tmp_path), save_every=1, keep=2)
  with pytest.raises(CheckpointError, match="no checkpoint found"):
    checkpointer.restore(abstract)
  checkpointer.save(5, create_train_state(model, 32, optimizer, jax.random.key(0)))
  checkpointer.close()
  with pytest.raises(CheckpointError, match="no checkpoint for step 7"):
    Checkpointer(str(tmp_path)).restore(abstract, step=7)
  state_dir = tmp_path / "checkpoints" / "5" / "state"
  for root, _, files in os.walk(state_dir):   # corrupt every data file of the checkpoint
    for name in files:
      with open(os.path.join(root, name), "wb") as f:
        f.write(b"garbage")
  with pytest.raises(CheckpointError, match="checkpoint of step 5 .* is corrupt"):
    Checkpointer(str(tmp_path)).restore(abstract)


@pytest.mark.parametrize("kind", ["megabyte", "transformer"])
def test_training_run_writes_metrics_checkpoints_and_sample(kind, corpus, tmp_path):
  workdir = str(tmp_path / "run")
  final = train_and_evaluate(_config(corpus, kind), workdir)
  assert final["step"] == 12 and final["eval_bytes"] > 0
  assert 0 < final["eval_bpb"] < 9.0
  assert isinstance(final["sample"], str) and final["sample"].startswith("import ")
  # The record: every figure present and sensible, and the same in DIR/result.json.
  assert isinstance(final, TrainResult) and final.eval_bpb == final["eval_bpb"]
  assert final.params > 1000 and final.skipped_steps == 0 and 0 < final.train_bpb < 9.0
  assert 0 < final.compile_s <= final.train_s < final.wall_s
  assert final.final_eval_s is not None and 0 <= final.final_eval_s < final.wall_s
  assert final.bytes_per_s > 0
  assert final.train_s + final.final_eval_s <= final.wall_s
  assert TrainResult.load(workdir) == final
  assert json.loads(open(os.path.join(workdir, "result.json"), encoding="utf-8").read()) \
      == dict(final)
  records = read_metrics(workdir)
  train = [r for r in records if "train_bpb" in r]
  evals = [r for r in records if "eval_bpb" in r]
  assert [r["step"] for r in train] == [3, 6, 9, 12]
  assert [r["step"] for r in evals] == [6, 12] and evals[-1]["final"]
  assert train[-1]["train_bpb"] < train[0]["train_bpb"]
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["12", "6"]
  loaded = load_trained(workdir)
  config, model, params, step = loaded.config, loaded.model, loaded.params, loaded.step
  assert step == 12 and config.model.kind == kind
  assert type(model).__name__ == ("Megabyte" if kind == "megabyte" else "ByteTransformer")


def test_train_result_is_a_read_only_mapping_and_round_trips_through_json(tmp_path):
  result = TrainResult(step=7, params=1234, skipped_steps=1, train_bpb=2.5,
                       eval_bpb=float("nan"), compile_s=3.0, train_s=4.0, bytes_per_s=1e5,
                       wall_s=9.0)
  assert list(result) == ["step", "params", "skipped_steps", "train_bpb", "eval_bpb",
                          "eval_bytes", "sample", "compile_s", "train_s", "bytes_per_s",
                          "final_eval_s", "wall_s"]
  assert result["step"] == result.step == 7 and len(result) == 12
  assert result.get("sample") is None and result.get("nope", 0) == 0 and "params" in result
  assert dict(result)["bytes_per_s"] == 1e5 and dict(result, x=1)["x"] == 1
  with pytest.raises(KeyError):
    result["nope"]   # pylint: disable=pointless-statement
  with pytest.raises(dataclasses.FrozenInstanceError):
    result.step = 8
  back = TrainResult.from_json(result.to_json())     # non-finite numbers become null
  assert back == dataclasses.replace(result, eval_bpb=None)
  path = back.save(str(tmp_path))
  assert path == str(tmp_path / "result.json") and TrainResult.load(str(tmp_path)) == back
  with pytest.raises(TrainingError, match="no result.json in"):
    TrainResult.load(str(tmp_path / "none"))
  (tmp_path / "result.json").write_text("[1, 2]")
  with pytest.raises(TrainingError, match="cannot read .*result.json: not a training result"):
    TrainResult.load(str(tmp_path))


def test_the_one_setup_builds_the_step_training_runs(corpus):
  """`TrainSetup`: the schedule, gradient accumulation and checks of the config; its step
  logs the schedule's learning rate, and `fresh_training` is a view of it."""
  config = _config(corpus)
  config.train.update(grad_accum_steps=2, warmup_steps=4, learning_rate=0.5)
  setup = TrainSetup.create(config)
  assert setup.grad_accum == 2 and setup.seed == config.seed and not setup.dropout
  assert dict(setup.mesh.shape) == {"data": 1, "fsdp": 1, "tensor": 1}
  schedule = learning_rate_schedule(config.train)
  assert [float(setup.schedule(i)) for i in (0, 2, 4, 12)] == [
      float(schedule(i)) for i in (0, 2, 4, 12)]
  state = setup.init_state()
  tokens = np.zeros((config.train.batch_size, 32), np.uint8)
  for expected_lr in (0.0, 0.125):
    state, metrics = setup.train_step(state, setup.shard_batch(tokens))
    assert float(metrics["lr"]) == pytest.approx(expected_lr)
  training = fresh_training(config)
  assert isinstance(training, Training) and type(training.model) is type(setup.model)
  _, metrics = training.step(training.state, setup.shard_batch(tokens))
  assert float(metrics["lr"]) == 0.0   # step 0 of the same schedule
  config.train.grad_accum_steps = 3                  # 4 rows do not split into 3
  with pytest.raises(ConfigError, match=r"train\.batch_size=4 must split into "
                                        r"train\.grad_accum_steps=3 microbatches"):
    TrainSetup.create(config)
  config.train.update(grad_accum_steps=1, warmup_steps=12)
  with pytest.raises(ConfigError, match=r"train\.warmup_steps must be less than"):
    TrainSetup.create(config)
  config.train.warmup_steps = 2
  config.train.batch_size = 6
  with pytest.raises(ConfigError, match=r"multiple of the number of hosts \(4\)"):
    config_checks.check_batch(config.train, setup.mesh, process_count=4)


def test_resume_continues_exactly(corpus, tmp_path):
  """Stopping at step 6 and resuming gives the same model as an uninterrupted run."""
  straight = str(tmp_path / "straight")
  train_and_evaluate(_config(corpus, steps=12), straight)
  resumed = str(tmp_path / "resumed")
  # Emulate a run killed after its step-6 checkpoint: a copy of the 12 steps, without the
  # later checkpoints.
  shutil.copytree(straight, resumed)
  shutil.rmtree(os.path.join(resumed, "checkpoints", "12"))
  final = train_and_evaluate(None, resumed)         # resumes from the saved config and step 6
  assert final["step"] == 12
  params_a = load_trained(straight).params
  params_b = load_trained(resumed).params
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6),
                         params_a, params_b)
  steps = [r["step"] for r in read_metrics(resumed) if "train_bpb" in r]
  assert steps == [3, 6, 9, 12]   # steps 7..12 were cut back on resume and logged again, once


def test_finished_run_can_be_extended(corpus, tmp_path):
  workdir = str(tmp_path / "run")
  train_and_evaluate(_config(corpus, steps=6), workdir)
  final = train_and_evaluate(_config(corpus, steps=9), workdir)
  assert final["step"] == 9


def test_train_throughput_benchmark_runs_on_cpu():
  """The training benchmark prints one JSON line with the figures BENCHMARKS.md uses (here
  timed on the config's training text, `--bytes=data`), and
  with --check_numerics the bf16 fast path's loss agrees with the float32 reference path's
  on the same parameters and batch to bf16 tolerance."""
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, "experiments", "bench", "train_throughput.py"),
       "--config=experiments/configs/tiny.py", "--steps=2", "--repeats=2", "--warmup=1",
       "--config.model.dtype=bfloat16", "--check_numerics", "--bytes=data"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr
  record, check = [json.loads(l) for l in proc.stdout.splitlines() if l.startswith("{")]
  assert check["what"] == "numerics_check" and check["fast_dtype"] == "bfloat16"
  assert 0 <= check["rel_diff"] < 1e-2 and check["loss_reference"] > 4   # ~ln 256: random
  assert record["what"] == "train_step" and record["model"] == "Megabyte"
  assert record["bytes"] == "data"   # timed on the config's own training text
  assert record["bytes_per_step"] == record["batch"] * record["seq_len"] == 4 * 64
  assert record["step_s_min"] <= record["step_s"] <= record["step_s_max"]
  assert abs(record["bytes_per_s"] * record["step_s"] / record["bytes_per_step"] - 1) < 1e-3
  assert record["train_flops_per_byte"] > 0 and 0 <= record["mfu"] < 1
  assert record["spec_peak_tflops"] == 989.0   # the datasheet bf16 dense peak beside it
  assert record["mfu_spec"] == pytest.approx(record["mfu"] * 805 / 989, abs=1e-4)
  assert math.isfinite(record["loss"])
