"""The plain (uncached) sampler used at the end of training."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from megabyte_jax import InputError, Megabyte
from megabyte_jax.inference.sampling import sample_logits, sample_uncached


def test_sample_logits_greedy_and_top_k():
  logits = jnp.asarray([[0.0, 5.0, 1.0, 4.0]])
  assert int(sample_logits(logits, jax.random.key(0), temperature=0.0)[0]) == 1
  draws = {int(sample_logits(logits, jax.random.key(i), 1.0, top_k=2)[0]) for i in range(50)}
  assert draws <= {1, 3} and len(draws) == 2
  with pytest.raises(ValueError, match="temperature"):
    sample_logits(logits, jax.random.key(0), temperature=-1.0)
  with pytest.raises(ValueError, match="top_k"):
    sample_logits(logits, jax.random.key(0), top_k=9)


def test_sample_uncached_extends_prompt_past_the_window(megabyte_cfg):
  model = Megabyte(megabyte_cfg)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32), jnp.int32))
  prompt = np.frombuffer(b"import os\n", np.uint8)
  out = sample_uncached(model, variables, prompt, 40, jax.random.key(1))   # 50 > seq_len 32
  assert out.dtype == np.uint8 and out.shape == (50,)
  assert bytes(out[:10]) == b"import os\n"
  again = sample_uncached(model, variables, prompt, 40, jax.random.key(1))
  np.testing.assert_array_equal(out, again)


def test_greedy_sample_matches_model_argmax(megabyte_cfg):
  model = Megabyte(megabyte_cfg)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32), jnp.int32))
  prompt = np.frombuffer(b"ab", np.uint8)
  out = sample_uncached(model, variables, prompt, 3, jax.random.key(0), temperature=0.0)
  window = np.zeros((1, 32), np.int32)
  window[0, :4] = out[:4]
  logits = model.apply(variables, jnp.asarray(window))
  assert int(out[2]) == int(jnp.argmax(logits[0, 2]))
  assert int(out[4]) == int(jnp.argmax(logits[0, 4]))


def test_bad_prompt_is_refused(megabyte_cfg):
  model = Megabyte(megabyte_cfg)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32), jnp.int32))
  with pytest.raises(InputError, match="0..255"):
    sample_uncached(model, variables, np.array([300]), 2, jax.random.key(0))
