"""Decode caches: a `KVCache` per attention layer (keys, values and the token-shift rows), their
logical axis names (`CACHE_AXES`) and lengths."""

from __future__ import annotations

from typing import Any, Optional

import flax
import jax
import jax.numpy as jnp

from megabyte_jax.config import resolve_dtype
from megabyte_jax.layers.spec import StackSpec

# Logical names of a KV cache's axes `[batch, max_len, heads, head_dim]`, its own, so that
# decoding state can be laid out apart from training's tensors (`sharding.LOGICAL_RULES`
# maps them by default like the activations' batch and the attention parameters' heads and
# head width, so each shard of the heads keeps its own keys and values).
CACHE_BATCH = "cache_batch"
CACHE_AXES = (CACHE_BATCH, "cache_length", "cache_heads", "cache_kv")



@flax.struct.dataclass
class KVCache:
  """Keys and values of one attention layer, for incremental decoding (a pytree).

  Attributes:
    k, v: `[batch, max_len, heads, head_dim]` in the compute dtype; entry `j` holds the key
      (value) of position `j`. Entries at or after the next write position are stale or zero
      and are never attended to (the causal mask hides them), so a cache is "reset" simply by
      writing from position 0 again.
  """

  k: jax.Array
  v: jax.Array
  # With token shift (`StackSpec.token_shift`): `[batch, 2, dim // 2]`, the shifted halves
  # of the last position's block input (row 0, before attention) and of its residual
  # stream before the MLP (row 1), which the next position takes; None without.
  shift: Optional[jax.Array] = None

  @classmethod
  def zeros(cls, batch: int, max_len: int, heads: int, head_dim: int, dtype: Any,
            shift_dim: int = 0) -> "KVCache":
    """An empty cache for `max_len` positions (and the token-shift rows of `shift_dim`
    features, when positive)."""
    shape = (batch, max_len, heads, head_dim)
    shift = jnp.zeros((batch, 2, shift_dim), dtype) if shift_dim else None
    return cls(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype), shift=shift)

  @classmethod
  def logical_axes(cls, shift: bool = False) -> "KVCache":
    """`PartitionSpec`s of logical names (`CACHE_AXES`) for `k` and `v` (and the token-shift
    rows: batch like activations), in the cache's own structure (map them onto a mesh with
    `nn.logical_to_mesh_sharding`)."""
    spec = jax.sharding.PartitionSpec(*CACHE_AXES)
    rows = jax.sharding.PartitionSpec(CACHE_BATCH, None, None) if shift else None
    return cls(k=spec, v=spec, shift=rows)


def init_stack_cache(spec: "StackSpec", batch: int, max_len: int) -> Any:
  """An empty cache for a `TransformerStack` of `spec`: one `KVCache` per layer, or with
  `spec.scan_layers` one `KVCache` whose arrays have a leading layer axis."""
  dtype = resolve_dtype(spec.dtype)
  shift_dim = spec.dim // 2 if spec.token_shift else 0
  if spec.scan_layers:
    shape = (spec.layers, batch, max_len, spec.heads, spec.head_dim)
    shift = (jnp.zeros((spec.layers, batch, 2, shift_dim), dtype) if shift_dim else None)
    return KVCache(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype), shift=shift)
  return tuple(KVCache.zeros(batch, max_len, spec.heads, spec.head_dim, dtype, shift_dim)
               for _ in range(spec.layers))



def cross_patch_cache_len(spec: "StackSpec") -> int:
  """Length of a decode cache of a cross-patch stack: a ring of two patches (the current
  patch and the previous one, whose last `cross_patch` entries stay visible)."""
  return 2 * spec.patch
