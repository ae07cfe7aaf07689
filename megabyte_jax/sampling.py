"""Plain autoregressive sampling without a cache (one full forward pass per byte).

This is the simple, obviously-correct sampler used at the end of training; it reruns the
model over a fixed-length window for every new byte.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from megabyte_jax.inputs import InputError


def sample_logits(logits: jax.Array, rng: jax.Array, temperature: float = 1.0,
                  top_k: Optional[int] = None) -> jax.Array:
  """Draws byte ids from `[..., 256]` logits; `temperature=0` means argmax (greedy)."""
  if temperature < 0:
    raise ValueError(f"temperature must be >= 0, got {temperature}")
  if temperature == 0.0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits.astype(jnp.float32) / temperature
  if top_k is not None:
    if not 1 <= top_k <= logits.shape[-1]:
      raise ValueError(f"top_k must be in 1..{logits.shape[-1]}, got {top_k}")
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def sample_uncached(model: nn.Module, variables: Any, prompt: np.ndarray, num_bytes: int,
                    rng: jax.Array, temperature: float = 1.0,
                    top_k: Optional[int] = None) -> np.ndarray:
  """Continues `prompt` (uint8/int `[L]`) by `num_bytes` sampled bytes; returns `[L + n]`.

  Each step runs the model over a window of `seq_len` bytes. When the text outgrows the
  window, the window slides forward by half its length (a multiple of the patch size, so
  MEGABYTE keeps its patch alignment) and later bytes see at least half a window of context.
  """
  cfg = model.config
  seq_len, patch = cfg.seq_len, cfg.patch_size
  prompt = np.asarray(prompt)
  if prompt.ndim != 1:
    raise InputError(f"prompt must be a 1-D array of bytes, got shape {prompt.shape}")
  if prompt.size and (prompt.min() < 0 or prompt.max() > 255):
    raise InputError("prompt bytes must be in 0..255")
  slide = max(patch, (seq_len // 2) // patch * patch)

  @jax.jit
  def next_byte(variables, window, position, key):
    logits = model.apply(variables, window[None])[0, position]
    return sample_logits(logits, key, temperature, top_k)

  text = [int(b) for b in prompt]
  start = 0
  for i in range(num_bytes):
    position = len(text) - start          # index of the byte to predict inside the window
    while position >= seq_len:
      start += slide
      position -= slide
    window = np.zeros((seq_len,), np.int32)
    visible = text[start:]
    window[:len(visible)] = visible
    key = jax.random.fold_in(rng, i)
    text.append(int(next_byte(variables, jnp.asarray(window), position, key)))
  return np.asarray(text, dtype=np.uint8)
