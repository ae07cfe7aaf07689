"""TPU without a TPU: `jax.export` lowers the train step, the eval step and the KV-cached
generate loop for platform `tpu` on this CPU (cross-platform lowering: it checks that every
op of the program has a TPU lowering, e.g. no GPU-only Pallas kernel on the way)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest


from megabyte_jax.inference import generation

from megabyte_jax.inference import scoring
from megabyte_jax.training import train_state as state_lib
from megabyte_jax.configs.tiny import get_config
from megabyte_jax.models import build_model
from megabyte_jax.training.train_step import make_train_step

export = pytest.importorskip("jax.export")


def _lowered_for_tpu(fn, *args) -> str:
  exported = jax.export.export(fn, platforms=("tpu",))(*args)
  assert exported.platforms == ("tpu",)
  return exported.mlir_module()


@pytest.fixture(scope="module")
def tiny():
  config = get_config()
  model, model_cfg = build_model(config.model)
  optimizer = state_lib.make_optimizer(config.train)
  state = state_lib.create_train_state(model, model_cfg.seq_len, optimizer, jax.random.key(0))
  return config, model, model_cfg, optimizer, state


def test_train_step_lowers_for_tpu(tiny):
  config, model, model_cfg, optimizer, state = tiny
  step = make_train_step(model, optimizer, 0, False,
                         state_lib.learning_rate_schedule(config.train))
  tokens = jnp.zeros((config.train.batch_size, model_cfg.seq_len), jnp.int32)
  assert "func" in _lowered_for_tpu(step, state, tokens)


def test_eval_step_lowers_for_tpu(tiny):
  _, model, model_cfg, _, state = tiny
  tokens = jnp.zeros((2, model_cfg.seq_len), jnp.int32)
  mask = jnp.ones((2, model_cfg.seq_len), jnp.float32)
  assert "func" in _lowered_for_tpu(scoring.make_eval_step(model), state.params, tokens, mask)


def test_generate_loop_lowers_for_tpu(tiny):
  _, model, _, _, state = tiny
  run = generation._compiled(type(model), model.config, 16, 0.8, None, 0.95, (), False,
                             generation.DecodeOptions())
  prompt = jnp.asarray(np.frombuffer(b"def ", np.uint8)[None].astype(np.int32))
  text = _lowered_for_tpu(run, state.params, prompt, jax.random.key(1), None)
  assert "while" in text   # the decode loop stays a loop on device
