"""Scoring a model on evaluation windows: summed cross-entropy and bits per byte."""

from __future__ import annotations

import time
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from megabyte_jax.data import EvalWindows
from megabyte_jax.losses import LN2, masked_nll_sum


def make_eval_step(model: nn.Module):
  """Returns a jitted `(params, tokens, mask) -> (sum of nats, scored bytes)`."""

  @jax.jit
  def eval_step(params, tokens, mask):
    logits = model.apply({"params": params}, tokens)
    return masked_nll_sum(logits, tokens, mask)

  return eval_step


def evaluate_windows(eval_step, params: Any, windows: EvalWindows, batch_size: int,
                     limit: Optional[int] = None) -> dict:
  """Scores `windows` (the first `limit` of them, or all); returns bpb, bytes and timing."""
  total_nats, total_bytes = 0.0, 0.0
  start = time.perf_counter()
  for tokens, mask in windows.batches(batch_size, limit):
    nats, count = eval_step(params, jnp.asarray(tokens), jnp.asarray(mask))
    total_nats += float(nats)
    total_bytes += float(count)
  seconds = time.perf_counter() - start
  return {"bpb": total_nats / max(total_bytes, 1.0) / LN2, "bytes": int(total_bytes),
          "seconds": round(seconds, 3)}
