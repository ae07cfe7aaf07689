"""Sampling from next-byte logits, and the plain sampler without a cache.

`sample_logits` draws bytes with temperature, top-k and top-p (nucleus) filtering; the fast
KV-cached decoder (`megabyte_jax.generate`) and the plain sampler share it. `sample_uncached`
is the simple, obviously-correct sampler used at the end of training: it reruns the model
over a fixed-length window for every new byte.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from megabyte_jax.inputs import InputError


def check_sampling_options(temperature: float, top_k: Optional[int] = None,
                           top_p: Optional[float] = None, vocab: int = 256) -> None:
  """Validates sampling options.

  Raises:
    InputError (a ValueError): temperature below 0 (or not a number), top_k outside
      1..vocab, or top_p outside (0, 1].
  """
  if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.number)) \
      or not temperature >= 0:
    raise InputError(f"temperature must be a number >= 0 (0 = greedy), got {temperature!r}")
  if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer))
                            or not 1 <= top_k <= vocab):
    raise InputError(f"top_k must be an integer in 1..{vocab} (or None), got {top_k!r}")
  if top_p is not None and (isinstance(top_p, bool)
                            or not isinstance(top_p, (int, float, np.number))
                            or not 0.0 < top_p <= 1.0):
    raise InputError(f"top_p must be in (0, 1] (or None), got {top_p!r}")


def sample_logits(logits: jax.Array, rng: jax.Array, temperature: float = 1.0,
                  top_k: Optional[int] = None, top_p: Optional[float] = None) -> jax.Array:
  """Draws byte ids from `[..., 256]` logits.

  The logits are divided by `temperature`, then limited to the `top_k` most likely bytes,
  then to the smallest set of most likely bytes whose probability reaches `top_p` (nucleus
  sampling; the most likely byte always stays). `temperature=0` means argmax (greedy), and
  then `top_k` and `top_p` change nothing. The options are static (Python numbers).

  Raises:
    InputError (a ValueError): for options outside their ranges (`check_sampling_options`).
  """
  check_sampling_options(temperature, top_k, top_p, logits.shape[-1])
  if temperature == 0.0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits.astype(jnp.float32) / temperature
  if top_k is not None and top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p is not None and top_p < 1.0:
    ordered = jnp.sort(logits, axis=-1)[..., ::-1]                       # descending
    probs = jax.nn.softmax(ordered, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs       # probability of the more likely bytes
    kept = jnp.where(before < top_p, ordered, jnp.inf)   # the nucleus; the first always kept
    threshold = jnp.min(kept, axis=-1, keepdims=True)
    logits = jnp.where(logits < threshold, -jnp.inf, logits)
  return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


@functools.lru_cache(maxsize=32)
def _next_byte_fn(model_type: type, config: Any, temperature: float, top_k: Optional[int],
                  top_p: Optional[float]):
  """The jitted one-byte step of `sample_uncached`, compiled once per model and options."""
  model = model_type(config)

  @jax.jit
  def next_byte(variables, window, position, key):
    logits = model.apply(variables, window[None])[0, position]
    return sample_logits(logits, key, temperature, top_k, top_p)

  return next_byte


def sample_uncached(model: nn.Module, variables: Any, prompt: np.ndarray, num_bytes: int,
                    rng: jax.Array, temperature: float = 1.0,
                    top_k: Optional[int] = None, top_p: Optional[float] = None) -> np.ndarray:
  """Continues `prompt` (uint8/int `[L]`) by `num_bytes` sampled bytes; returns `[L + n]`.

  Each step runs the model over a window of `seq_len` bytes. When the text outgrows the
  window, the window slides forward by half its length (a multiple of the patch size, so
  MEGABYTE keeps its patch alignment) and later bytes see at least half a window of context.
  """
  check_sampling_options(temperature, top_k, top_p)
  cfg = model.config
  seq_len, patch = cfg.seq_len, cfg.patch_size
  prompt = np.asarray(prompt)
  if prompt.ndim != 1:
    raise InputError(f"prompt must be a 1-D array of bytes, got shape {prompt.shape}")
  if prompt.size and (prompt.min() < 0 or prompt.max() > 255):
    raise InputError("prompt bytes must be in 0..255")
  slide = max(patch, (seq_len // 2) // patch * patch)
  next_byte = _next_byte_fn(type(model), cfg, float(temperature), top_k, top_p)

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
