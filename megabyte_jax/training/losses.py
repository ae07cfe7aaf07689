"""The training objective: cross-entropy of next-byte logits, in nats and bits per byte."""

from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp

LN2 = math.log(2.0)


def byte_nll(logits: jax.Array, tokens: jax.Array) -> jax.Array:
  """Negative log-likelihood in nats of each byte: `[batch, T, 256], [batch, T] -> [batch, T]`.

  Because both models shift internally, `logits[:, t]` is scored against `tokens[:, t]`.
  """
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  # Picks each byte's log-probability with a one-hot mask rather than a gather: the same
  # value (one term survives the sum), and the gradient is an elementwise select that fuses
  # with the softmax's instead of a scatter into `[batch, T, 256]`.
  hit = tokens[..., None].astype(jnp.int32) == jnp.arange(logits.shape[-1], dtype=jnp.int32)
  return -jnp.sum(jnp.where(hit, log_probs, 0.0), axis=-1)


def masked_nll_sum(logits: jax.Array, tokens: jax.Array,
                   mask: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array]:
  """Returns `(sum of nats over scored bytes, number of scored bytes)`; mask 1 = scored."""
  nll = byte_nll(logits, tokens)
  if mask is None:
    return nll.sum(), jnp.asarray(nll.size, jnp.float32)
  mask = mask.astype(jnp.float32)
  return (nll * mask).sum(), mask.sum()


def bits_per_byte(nats_per_byte):
  """Converts a mean loss in nats per byte into bits per byte."""
  return nats_per_byte / LN2
