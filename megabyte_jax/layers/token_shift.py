"""Token shift (MEGABYTE-pytorch's, after RWKV): half the features of each position taken from
the position before, in training and from a cache's rows in decoding."""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp

from megabyte_jax.layers.kvcache import KVCache
from megabyte_jax.layers.spec import Mode


def token_shift(x: jax.Array, prev: Optional[jax.Array] = None) -> jax.Array:
  """Shifts the last `dim // 2` features of `x [batch, length, dim]` one position along
  the length axis (MEGABYTE-pytorch's token shift, after RWKV): position t keeps its first
  `dim - dim // 2` features and takes the rest from position t-1; position 0 takes them from
  `prev [batch, dim // 2]` (the position before, when decoding continues), zeros if None."""
  keep = x.shape[-1] - x.shape[-1] // 2
  moved = x[..., keep:]
  first = (jnp.zeros_like(moved[:, :1]) if prev is None
           else prev[:, None].astype(x.dtype))
  moved = jnp.concatenate([first, moved[:, :-1]], axis=1)
  return jnp.concatenate([x[..., :keep], moved], axis=-1)


def previous_shift_rows(cache: Optional[KVCache], index: Any, mode: Mode
                        ) -> Optional[jax.Array]:
  """The token-shift rows `[batch, 2, dim // 2]` that the first new position of a call
  takes from the position before it: None (zeros) in TRAIN and PREFILL mode (both start at
  position 0); in DECODE mode the cache's rows, or zeros at `index` 0 (a cache restarted
  at 0, as the local model's is at every patch)."""
  if mode is not Mode.DECODE:
    return None
  return jnp.where(jnp.asarray(index) == 0, jnp.zeros_like(cache.shift), cache.shift)
