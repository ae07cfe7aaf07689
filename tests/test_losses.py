"""The loss is plain cross-entropy of the logits against the tokens."""

import jax
import jax.numpy as jnp
import numpy as np

from megabyte_jax import Megabyte
from megabyte_jax.training.losses import LN2, bits_per_byte, byte_nll, masked_nll_sum


def _manual_cross_entropy(logits, tokens):
  logits = np.asarray(logits, np.float64)
  shifted = logits - logits.max(-1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  return -np.take_along_axis(log_probs, np.asarray(tokens)[..., None], -1)[..., 0]


def test_byte_nll_is_cross_entropy_of_model_logits(megabyte_cfg):
  model = Megabyte(megabyte_cfg)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 32)), jnp.int32)
  variables = model.init(jax.random.key(0), tokens)
  logits = model.apply(variables, tokens)
  np.testing.assert_allclose(byte_nll(logits, tokens), _manual_cross_entropy(logits, tokens),
                             rtol=1e-5, atol=1e-5)
  # An untrained model is close to uniform: about 8 bits per byte.
  assert 7.0 < float(bits_per_byte(byte_nll(logits, tokens).mean())) < 9.5


def test_masked_sum_counts_only_scored_bytes():
  logits = jnp.asarray(np.random.default_rng(1).normal(size=(2, 4, 256)), jnp.float32)
  tokens = jnp.asarray([[1, 2, 3, 4], [5, 6, 7, 8]], jnp.int32)
  mask = jnp.asarray([[1, 1, 0, 0], [1, 0, 0, 0]], jnp.float32)
  total, count = masked_nll_sum(logits, tokens, mask)
  manual = _manual_cross_entropy(logits, tokens)
  np.testing.assert_allclose(total, manual[0, :2].sum() + manual[1, 0], rtol=1e-5)
  assert float(count) == 3.0
  total, count = masked_nll_sum(logits, tokens)
  np.testing.assert_allclose(total, manual.sum(), rtol=1e-5)
  assert float(count) == 8.0


def test_bits_per_byte():
  assert bits_per_byte(LN2) == 1.0


def test_byte_nll_gradient_is_softmax_minus_one_hot():
  """The one-hot pick gives the cross-entropy gradient exactly, for every byte value."""
  rng = np.random.default_rng(2)
  logits = jnp.asarray(rng.normal(size=(2, 256, 256)) * 4, jnp.float32)
  tokens = jnp.asarray(np.stack([np.arange(256), rng.integers(0, 256, 256)]), jnp.int32)
  grad = jax.grad(lambda l: byte_nll(l, tokens).sum())(logits)
  expected = jax.nn.softmax(logits, -1) - jax.nn.one_hot(tokens, 256)
  np.testing.assert_allclose(grad, expected, atol=1e-6)
  np.testing.assert_allclose(byte_nll(logits, tokens), _manual_cross_entropy(logits, tokens),
                             rtol=1e-5, atol=1e-5)
