"""Causal self-attention and its implementations: cuDNN / XLA through
`jax.nn.dot_product_attention`, the fused Pallas kernels of `local_attention` for short patches,
`short_causal_attention`, attention against a KV cache, and cross-patch attention with rotary
embeddings (MEGABYTE Section 2.3.2)."""

from __future__ import annotations

import functools
import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from megabyte_jax.config import resolve_dtype
from megabyte_jax.layers.fp8 import dense_einsum
from megabyte_jax.layers.initializers import dense_init
from megabyte_jax.layers.kvcache import CACHE_AXES, KVCache
from megabyte_jax.layers.local_attention import patch_attention, patch_attention_supported
from megabyte_jax.layers.norms import fold_norm
from megabyte_jax.layers.spec import Mode, StackSpec


def choose_attention_impl(requested: str, dtype: Any, head_dim: int, length: int,
                          heads: int = 1) -> str:
  """Resolves `attention_impl="auto"` to "cudnn", "pallas", "short" or "xla".

  On GPU: cuDNN's fused attention for sequences of 128 or more (it needs half precision
  and a head width that is a multiple of 8 up to 128); for shorter ones, such as the local
  model's patches, `local_attention.patch_attention` (fused Pallas kernels, for the shapes
  it supports; per shard on a mesh, `sharded_patch_attention`) or else
  `short_causal_attention`. On CPU and TPU: XLA's attention.
  """
  if requested != "auto":
    return requested
  on_gpu = jax.default_backend() == "gpu"
  half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
  if on_gpu and half and head_dim % 8 == 0 and head_dim <= 128 and length >= 128:
    return "cudnn"
  if on_gpu and length < 128:
    if patch_attention_supported((1, length, 3, heads, head_dim), dtype):
      return "pallas"
    return "short"
  return "xla"


def sharded_patch_attention(qkv: jax.Array) -> jax.Array:
  """`local_attention.patch_attention` of `qkv [batch, length, 3, heads, head_dim]` on the
  current mesh: per shard under `jax.shard_map`, batch rows (whole patches) split like
  `activation_batch` and heads like `heads` under the logical-axis rules in scope.

  A `pallas_call` is opaque to XLA's SPMD partitioner, which would gather a sharded input
  onto every device; in `shard_map` each device runs the kernels on its own rows. Without
  a mesh of several devices it is `patch_attention` itself. Off GPU the kernels run in
  Pallas' interpreter (for tests).
  """
  attend = functools.partial(patch_attention, interpret=jax.default_backend() != "gpu")
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return attend(qkv)
  batch_axes, heads_axes = nn.logical_to_mesh_axes(("activation_batch", "heads"))
  spec_in = jax.sharding.PartitionSpec(batch_axes, None, None, heads_axes, None)
  spec_out = jax.sharding.PartitionSpec(batch_axes, None, heads_axes, None)
  return jax.shard_map(attend, mesh=mesh, in_specs=spec_in, out_specs=spec_out,
                       check_vma=False)(qkv)


def short_causal_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
  """Causal attention as broadcast products and sums, for short sequences.

  `q, k, v`: `[batch, length, heads, head_dim]` -> `[batch, length, heads, head_dim]`, the
  same function as `jax.nn.dot_product_attention(q, k, v, is_causal=True)`. Scores,
  softmax and the weighted sum are computed in float32 and the result is cast to `q.dtype`.

  A batched matmul over `[batch, heads]` needs its operands laid out with those axes
  leading, so XLA transposes q, k, v and the output around it (forward and backward).
  Written as `sum_d q * k` and `sum_k p * v` in the `[batch, length, heads, head_dim]`
  layout, each is one fused reduction that reads its inputs once and never materializes
  the broadcast product. Its work grows as `length^2 * heads * head_dim`, which is small
  for MEGABYTE's local patches (e.g. 8 bytes), not for long sequences: use it for short
  ones only (`attention_impl="short"`; "auto" picks it on GPU below 128 positions where
  `local_attention.patch_attention` does not apply).
  """
  length, head_dim = q.shape[1], q.shape[-1]
  f32 = jnp.float32
  scale = 1.0 / math.sqrt(head_dim)
  # scores [batch, q, k, heads]
  scores = jnp.sum(q.astype(f32)[:, :, None] * k.astype(f32)[:, None], axis=-1) * scale
  causal = jnp.tril(jnp.ones((length, length), bool))[None, :, :, None]
  scores = jnp.where(causal, scores, jnp.finfo(f32).min)
  probs = jax.nn.softmax(scores, axis=2)
  out = jnp.sum(probs[..., None] * v.astype(f32)[:, None], axis=2)    # [batch, q, heads, d]
  return out.astype(q.dtype)


def _cached_attention(q: jax.Array, k: jax.Array, v: jax.Array, cache: KVCache,
                      index: Any, impl: str, mode: Mode) -> tuple[jax.Array, KVCache]:
  """Attention of new positions `index .. index+n-1` to a cache that holds `0 .. index-1`.

  `q, k, v`: `[batch, n, heads, head_dim]` of the new positions. Writes `k, v` into the cache
  at `index` and returns `(attention output [batch, n, heads, head_dim], updated cache)`.

  In PREFILL mode (`index` 0, an empty cache) the new positions attend only to each other,
  exactly as in training (the same causal kernel); in DECODE mode (`index` may be traced)
  queries attend to the whole cache under a mask that admits cached positions up to their
  own, with XLA's attention (short queries against a cache gain nothing from cuDNN).
  """
  if mode is Mode.PREFILL:
    index = 0
  k_all = jax.lax.dynamic_update_slice(cache.k, k.astype(cache.k.dtype), (0, index, 0, 0))
  v_all = jax.lax.dynamic_update_slice(cache.v, v.astype(cache.v.dtype), (0, index, 0, 0))
  k_all = nn.with_logical_constraint(k_all, CACHE_AXES)
  v_all = nn.with_logical_constraint(v_all, CACHE_AXES)
  if mode is Mode.PREFILL:
    out = _causal_attention(q, k, v, impl)             # the training computation
  else:
    q_pos = index + jnp.arange(q.shape[1], dtype=jnp.int32)
    k_pos = jnp.arange(cache.k.shape[1], dtype=jnp.int32)
    mask = (k_pos[None, :] <= q_pos[:, None])[None, None]   # [1, 1, n, max_len]
    out = jax.nn.dot_product_attention(q, k_all.astype(q.dtype), v_all.astype(q.dtype),
                                       mask=mask, implementation="xla")
  return out, KVCache(k=k_all, v=v_all)


def _causal_attention(q: jax.Array, k: jax.Array, v: jax.Array, impl: str) -> jax.Array:
  """Plain causal attention of `[batch, length, heads, head_dim]` with implementation
  `impl` ("short", or one of `jax.nn.dot_product_attention`'s): training's and prefill's."""
  if impl == "short":
    return short_causal_attention(q, k, v)
  return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=impl)


ROTARY_BASE = 10000.0


def apply_rotary(x: jax.Array, positions: jax.Array) -> jax.Array:
  """Rotary position embedding (Su et al.): rotates pairs of channels of `x`.

  `x`: `[batch, length, heads, head_dim]` (head_dim even); `positions`: `[length]` int
  positions. Channel i of the first half and channel i of the second half form a pair rotated
  by `position * ROTARY_BASE ** (-2i / head_dim)`, so a query-key product depends on the
  positions only through their difference. Computed in float32, returned in `x.dtype`.
  """
  half = x.shape[-1] // 2
  freqs = ROTARY_BASE ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angles = positions.astype(jnp.float32)[:, None] * freqs[None, :]   # [length, half]
  cos, sin = jnp.cos(angles)[None, :, None], jnp.sin(angles)[None, :, None]
  x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def rms_normalize(x: jax.Array, scale: jax.Array, eps: float = 1e-6) -> jax.Array:
  """`x [..., head_dim]` divided by its root mean square over the last axis, times `scale
  [head_dim]` (QK-norm); computed in float32, returned in `x.dtype`."""
  x32 = x.astype(jnp.float32)
  x32 = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + eps)
  return (x32 * scale.astype(jnp.float32)).astype(x.dtype)


def normalize_and_rotate(q: jax.Array, k: jax.Array, scales: Optional[tuple],
                         rotary: bool, start: Any = 0) -> tuple[jax.Array, jax.Array]:
  """Queries and keys `[batch, n, heads, head_dim]` of positions `start .. start + n - 1`:
  QK-normed (`rms_normalize`) with `scales = (q_scale, k_scale)` when given, then rotated
  (`apply_rotary`) when `rotary`."""
  if scales is not None:
    q, k = rms_normalize(q, scales[0]), rms_normalize(k, scales[1])
  if rotary:
    positions = start + jnp.arange(q.shape[1], dtype=jnp.int32)
    q, k = apply_rotary(q, positions), apply_rotary(k, positions)
  return q, k


def _cross_patch_mask(q_pos: jax.Array, k_pos: jax.Array, patch: int, r: int) -> jax.Array:
  """Which keys each query may see: earlier-or-same positions, from its own patch or the
  last r positions of the previous patch, never before position 0.

  `q_pos [..., n]`, `k_pos [..., m]` (broadcastable batch axes) -> bool `[..., n, m]`.
  """
  q, k = q_pos[..., :, None], k_pos[..., None, :]
  start = q - q % patch
  return (k <= q) & (k >= start - r) & (k >= 0)


def _cross_patch_attention(q: jax.Array, k: jax.Array, v: jax.Array, patch: int, r: int
                           ) -> jax.Array:
  """Cross-patch attention over a whole window (positions 0 .. T-1, T a multiple of patch).

  `q, k, v`: `[batch, T, heads, head_dim]` (rotary already applied). Each patch's queries
  attend to `[last r keys of the previous patch, the patch's own keys]` (r + patch keys,
  patches as batch rows); returns `[batch, T, heads, head_dim]`.
  """
  batch, length, heads, head_dim = q.shape
  patches = length // patch
  kp = k.reshape(batch, patches, patch, heads, head_dim)
  vp = v.reshape(batch, patches, patch, heads, head_dim)
  def extend(x):   # [batch, patches, patch, ...] -> [batch * patches, r + patch, ...]
    prev = jnp.pad(x[:, :-1, patch - r:], ((0, 0), (1, 0), (0, 0), (0, 0), (0, 0)))
    return jnp.concatenate([prev, x], axis=2).reshape(batch * patches, r + patch, heads,
                                                      head_dim)
  start = jnp.arange(patches, dtype=jnp.int32)[:, None] * patch          # [patches, 1]
  q_pos = start + jnp.arange(patch, dtype=jnp.int32)[None]               # [patches, patch]
  k_pos = start + jnp.arange(-r, patch, dtype=jnp.int32)[None]           # [patches, r+patch]
  mask = _cross_patch_mask(q_pos, k_pos, patch, r)[:, None]              # [patches, 1, P, r+P]
  mask = jnp.broadcast_to(mask[None], (batch,) + mask.shape).reshape(
      batch * patches, 1, patch, r + patch)
  out = jax.nn.dot_product_attention(q.reshape(batch * patches, patch, heads, head_dim),
                                     extend(kp), extend(vp), mask=mask, implementation="xla")
  return out.reshape(batch, length, heads, head_dim)


def _cross_patch_prefill(q, k, v, cache: KVCache, patch: int, r: int
                         ) -> tuple[jax.Array, KVCache]:
  """Cross-patch attention of a known window `0 .. W-1` (W static, any length), writing
  into the ring cache the keys and values that decoding from position W needs: the current
  patch's (`W - W % patch .. W-1`) and the last r of the patch before it."""
  width = q.shape[1]
  padded = -(-width // patch) * patch
  pad = lambda x: jnp.pad(x, ((0, 0), (0, padded - width), (0, 0), (0, 0)))
  out = _cross_patch_attention(pad(q), pad(k), pad(v), patch, r)[:, :width]
  first = max(0, width - width % patch - r)
  keep = jnp.arange(first, width)
  slots = keep % cache.k.shape[1]
  k_all = cache.k.at[:, slots].set(k[:, first:].astype(cache.k.dtype))
  v_all = cache.v.at[:, slots].set(v[:, first:].astype(cache.v.dtype))
  return out, KVCache(k=nn.with_logical_constraint(k_all, CACHE_AXES),
                      v=nn.with_logical_constraint(v_all, CACHE_AXES))


def _cross_patch_step(q, k, v, cache: KVCache, pos: Any, patch: int, r: int
                      ) -> tuple[jax.Array, KVCache]:
  """New positions `pos .. pos+n-1` (within one patch) against the ring cache: written at
  slot `position % (2 * patch)`; keys are visible by `_cross_patch_mask` of the position
  each slot holds (the current patch's or the previous patch's)."""
  ring = cache.k.shape[1]
  slot = pos % ring
  k_all = jax.lax.dynamic_update_slice(cache.k, k.astype(cache.k.dtype), (0, slot, 0, 0))
  v_all = jax.lax.dynamic_update_slice(cache.v, v.astype(cache.v.dtype), (0, slot, 0, 0))
  k_all = nn.with_logical_constraint(k_all, CACHE_AXES)
  v_all = nn.with_logical_constraint(v_all, CACHE_AXES)
  start = pos - pos % patch                                  # the current patch's first
  slots = jnp.arange(ring, dtype=jnp.int32)
  same = (slots // patch) == (start // patch) % 2            # slot holds the current patch
  k_pos = jnp.where(same, start, start - patch) + slots % patch
  q_pos = pos + jnp.arange(q.shape[1], dtype=jnp.int32)
  mask = _cross_patch_mask(q_pos, k_pos, patch, r)[None, None]           # [1, 1, n, ring]
  out = jax.nn.dot_product_attention(q, k_all.astype(q.dtype), v_all.astype(q.dtype),
                                     mask=mask, implementation="xla")
  return out, KVCache(k=k_all, v=v_all)


class CausalSelfAttention(nn.Module):
  """Multi-head causal self-attention over `[batch, length, dim]`.

  Attention itself goes through `jax.nn.dot_product_attention` (cuDNN's flash attention on
  GPU when `attention_impl` selects it), or for short sequences such as the local model's
  patches through `local_attention.patch_attention` (fused Pallas kernels, GPU) or
  `short_causal_attention` (see `choose_attention_impl`).

  `mode` (`Mode`) says what a call computes: TRAIN, the whole input; PREFILL, the known
  window from position 0 with the same kernels, writing its keys and values into an empty
  `cache` (a `KVCache`); DECODE, new positions `index, index+1, ...` that attend to
  themselves and to the cached ones. The last two return `(output, updated cache)`.

  With `spec.cross_patch` (cross-patch attention) the input is a whole window cut into
  patches of `spec.patch` (see the `layers` docstring), rotary embeddings are applied at the
  window positions, and in DECODE mode `index` is the window position of the first new row.
  """

  spec: StackSpec

  @nn.compact
  def __call__(self, x: jax.Array, cache: Optional[KVCache] = None,
               index: Any = None, norm: Optional[tuple] = None,
               mode: Mode = Mode.TRAIN) -> Any:
    """Returns `[batch, length, dim]` in TRAIN mode, else `(that, new cache)`.

    `norm`: the `(scale, bias)` of the `Norm` that produced `x`, folded into the QKV
    projection (`fold_norm`); None when `x` is used as is. `cache`, `index`: the layer's
    `KVCache` and the first new position (PREFILL: 0; DECODE: possibly traced).
    """
    spec = self.spec
    mode.check_cache(cache)
    dtype, param_dtype = resolve_dtype(spec.dtype), resolve_dtype(spec.param_dtype)
    dim, heads, head_dim = spec.dim, spec.heads, spec.head_dim
    w_qkv = self.param(
        "qkv_kernel",
        nn.with_logical_partitioning(
            dense_init(spec.init_std, in_axis=0, out_axis=(1, 2, 3)),
            ("embed", None, "heads", "kv")),
        (dim, 3, heads, head_dim), param_dtype)
    w_out = self.param(
        "out_kernel",
        nn.with_logical_partitioning(
            dense_init(spec.init_std, scale=1.0 / (2 * spec.layers), in_axis=(0, 1),
                       out_axis=2),
            ("heads", "kv", "embed")),
        (heads, head_dim, dim), param_dtype)
    w_qkv, shift = fold_norm(w_qkv, norm)                  # shift: [3, heads, head_dim]
    # qkv: [batch, length, 3, heads, head_dim]
    qkv = dense_einsum("btd,dchk->btchk", x, w_qkv, spec)
    if spec.use_bias:
      b_qkv = self.param("qkv_bias", nn.with_logical_partitioning(
          nn.initializers.zeros, (None, "heads", "kv")), (3, heads, head_dim), param_dtype)
      shift = b_qkv if shift is None else shift + b_qkv
    if shift is not None:
      qkv = qkv + shift.astype(dtype)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    if spec.qk_norm or (spec.rotary and not spec.cross_patch):
      scales = None
      if spec.qk_norm:
        scale_init = nn.with_logical_partitioning(nn.initializers.ones, ("kv",))
        scales = (self.param("q_norm", scale_init, (head_dim,), param_dtype),
                  self.param("k_norm", scale_init, (head_dim,), param_dtype))
      q, k = normalize_and_rotate(q, k, scales, spec.rotary and not spec.cross_patch,
                                  index if mode is Mode.DECODE else 0)
      qkv = jnp.stack([q, k, v], axis=2)        # the fused kernel reads q, k, v from qkv
    impl = choose_attention_impl(spec.attention_impl, dtype, head_dim, x.shape[1], heads)
    if impl == "pallas" and (mode is not Mode.TRAIN or spec.cross_patch):
      impl = "short"   # the kernel covers training's plain causal attention only
    # out: [batch, length, heads, head_dim]
    if spec.cross_patch:
      start = index if mode is Mode.DECODE else 0
      positions = start + jnp.arange(x.shape[1], dtype=jnp.int32)
      q, k = apply_rotary(q, positions), apply_rotary(k, positions)
      if mode is Mode.TRAIN:
        out = _cross_patch_attention(q, k, v, spec.patch, spec.cross_patch)
      elif mode is Mode.PREFILL:
        out, cache = _cross_patch_prefill(q, k, v, cache, spec.patch, spec.cross_patch)
      else:
        out, cache = _cross_patch_step(q, k, v, cache, start, spec.patch, spec.cross_patch)
    elif mode is not Mode.TRAIN:
      out, cache = _cached_attention(q, k, v, cache, index, impl, mode)
    elif impl == "pallas":
      out = sharded_patch_attention(qkv)                # reads q, k, v from qkv in place
    else:
      out = _causal_attention(q, k, v, impl)
    y = dense_einsum("bthk,hkd->btd", out, w_out, spec)   # [batch, length, dim]
    if spec.use_bias:
      b_out = self.param("out_bias", nn.with_logical_partitioning(
          nn.initializers.zeros, ("embed",)), (dim,), param_dtype)
      y = y + b_out.astype(dtype)
    return y if mode is Mode.TRAIN else (y, cache)
