"""Transformer building blocks shared by every model in the package.

One `TransformerStack` (pre-norm blocks of causal self-attention and an MLP, then a final
norm) serves the global and local models of MEGABYTE and the baseline byte transformer.

Every parameter carries logical axis names (`nn.with_logical_partitioning`), so the mapping
onto a device mesh lives in one table of rules outside the model:

  vocab   256 byte ids           embed  model width          mlp   MLP hidden width
  heads   attention heads        kv     per-head width       (None: never sharded)

Activations are annotated with `activation_*` names the same way; without rules in scope
(`nn.logical_axis_rules`) the annotations do nothing.

Incremental decoding uses the same modules: called with a `cache` (one `KVCache` per layer,
from `init_stack_cache`) and an `index`, the stack processes new positions only, attends to
the cached keys and values, and returns the updated cache with its output. Without a cache
the code path (and its numerics) is the training one. Caches carry logical axis names too
(`CACHE_AXES`: batch, cache length, heads, per-head width), so they shard like activations
and parameters under the same rules.

Cross-patch attention (`StackSpec.cross_patch = r > 0`, MEGABYTE's Section 2.3.2): the stack
runs over whole sequences `[batch, T, dim]` cut into patches of `StackSpec.patch` positions;
each position attends causally within its patch and to the last r positions of the previous
patch, with rotary position embeddings (`apply_rotary`) on queries and keys. Its decode cache
is a ring of two patches (`cross_patch_cache_len`), so the previous patch's keys stay
available while the current patch is written.

`CausalConvEncoder` is the convolutional patch encoder of Section 2.3.1.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Optional, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from megabyte_jax.config import resolve_dtype
from megabyte_jax.local_attention import patch_attention, patch_attention_supported

Initializer = Callable[..., jax.Array]

# Logical names of activation axes, used with `nn.with_logical_constraint`.
ACT_SEQ = ("activation_batch", "activation_length", "activation_embed")
# Logical names of a KV cache's axes `[batch, max_len, heads, head_dim]`: batch like
# activations, heads and head width like the attention parameters (so each shard of the
# heads keeps its own keys and values), and a separate name for the cached length.
CACHE_AXES = ("activation_batch", "cache_length", "heads", "kv")


def embedding_init(init_std: Optional[float], embed_std: float) -> Initializer:
  """Initializer for embedding tables and learned positions/pads: normal with standard
  deviation `embed_std` (the config's `embed_init_std`), truncated at 2 std like the paper's
  init when `init_std` is set."""
  if init_std is not None:
    return nn.initializers.truncated_normal(stddev=embed_std)
  return nn.initializers.normal(stddev=embed_std)


def dense_init(init_std: Optional[float], scale: float = 1.0,
               in_axis: int | tuple[int, ...] = 0,
               out_axis: int | tuple[int, ...] = -1) -> Initializer:
  """Initializer for a dense kernel.

  Args:
    init_std: if set, the paper's truncated normal (cut at 2 std) with this std.
    scale: variance scale of the fan-in init (e.g. 1 / (2 * layers) for residual outputs).
    in_axis, out_axis: which kernel axes are fan-in and fan-out.
  """
  if init_std is not None:
    return nn.initializers.truncated_normal(stddev=init_std)
  return nn.initializers.variance_scaling(scale, "fan_in", "truncated_normal",
                                          in_axis=in_axis, out_axis=out_axis)


@dataclasses.dataclass(frozen=True)
class StackSpec:
  """Everything one transformer stack needs, independent of which model owns it.

  Attributes:
    dim: model width. layers, heads, head_dim: stack shape. mlp_ratio: MLP width / dim.
    activation, norm, dropout, dtype, param_dtype, init_std, use_bias, attention_impl,
      remat, scan_layers: as in `MegabyteConfig`.
    cross_patch: r > 0 turns on cross-patch attention over patches of `patch` positions
      (see the module docstring); 0 (default): plain causal attention over the whole input.
    patch: the patch length of cross-patch attention (unused when `cross_patch` is 0).
    token_shift: shift half the features of each position by one position before the
      attention and the MLP of every block (`token_shift`).
  """

  dim: int
  layers: int
  heads: int
  head_dim: int
  mlp_ratio: int = 4
  activation: str = "gelu"
  norm: str = "layernorm"
  dropout: float = 0.0
  dtype: str = "float32"
  param_dtype: str = "float32"
  init_std: Optional[float] = None
  use_bias: bool = True
  attention_impl: str = "auto"
  remat: str = "none"
  scan_layers: bool = False
  cross_patch: int = 0
  patch: int = 0
  token_shift: bool = False

  @property
  def mlp_dim(self) -> int:
    """Hidden width of the MLP (2/3 of it per branch for SwiGLU, rounded up to 8)."""
    hidden = self.mlp_ratio * self.dim
    if self.activation == "swiglu":
      hidden = 8 * math.ceil(2 * hidden / 3 / 8)
    return hidden


def make_norm(spec: StackSpec, name: Optional[str] = None) -> nn.Module:
  """Returns the configured norm, applied in full: `Norm(spec, apply_affine=True)`, the
  function and parameters (`scale`, and `bias` for LayerNorm with `use_bias`) of flax's
  `LayerNorm` / `RMSNorm` (statistics in float32, output in the compute dtype)."""
  return Norm(spec, apply_affine=True, name=name)


class Norm(nn.Module):
  """The configured norm with its learned scale (and LayerNorm bias) left to the caller.

  Returns `(x_hat, affine)`: `x_hat [..., dim]` is the input normalized (LayerNorm: mean
  removed; both: divided by the root mean square, statistics in float32 as flax's), in the
  compute dtype; `affine = (scale [dim], bias [dim] or None)` are the parameters, named and
  initialized as flax's `LayerNorm`/`RMSNorm` (`scale`, `bias`), so a checkpoint holds the
  same tree either way. `x_hat * scale + bias` is the usual norm; with `apply_affine=True`
  the module returns just that (computed in float32, then cast: `make_norm`).

  The blocks fold `affine` into the dense layer that follows (`fold_norm`): `(x_hat * s + b)
  @ W = x_hat @ (s * W) + b @ W`. The function is the same, but the scale's gradient then
  comes from the small `[dim, out]` kernel gradient, `sum_j dW'[i, j] W[i, j]`, instead of
  a sum over every row of the activations. On GPU such row sums led XLA to store the local
  model's activations position-major, with a transpose around every matmul (with the
  position sums that `megabyte._shifted_byte_inputs` removes: about 5 ms of the reference
  step on an H100, BENCHMARKS.md, session 5).
  """

  spec: StackSpec
  apply_affine: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> Any:
    """`x [..., dim]` -> `(x_hat [..., dim], (scale [dim], bias [dim] or None))`, or with
    `apply_affine` the normalized `x_hat * scale + bias [..., dim]`."""
    spec = self.spec
    dtype, param_dtype = resolve_dtype(spec.dtype), resolve_dtype(spec.param_dtype)
    rms = spec.norm == "rmsnorm"
    dim = x.shape[-1]
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                       (dim,), param_dtype)
    bias = None
    if not rms and spec.use_bias:
      bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros,
                                                             ("embed",)), (dim,), param_dtype)
    x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    mean_sq = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    if rms:
      x_hat = x32 * jax.lax.rsqrt(mean_sq + 1e-6)
    else:   # flax's fast variance: E[x^2] - E[x]^2, clipped at 0
      mean = jnp.mean(x32, axis=-1, keepdims=True)
      var = jnp.maximum(0.0, mean_sq - jnp.square(mean))
      x_hat = (x32 - mean) * jax.lax.rsqrt(var + 1e-5)
    if self.apply_affine:
      y = x_hat * scale.astype(x_hat.dtype)
      if bias is not None:
        y = y + bias.astype(x_hat.dtype)
      return y.astype(dtype)
    return x_hat.astype(dtype), (scale, bias)


def fold_norm(kernel: jax.Array, affine: Optional[tuple[jax.Array, Optional[jax.Array]]]
              ) -> tuple[jax.Array, Optional[jax.Array]]:
  """Folds a norm's `affine = (scale, bias)` (from `Norm`) into the next dense kernel.

  `kernel [dim, ...]` (input axis first) -> `(scale[:, None...] * kernel, bias @ kernel)`:
  `x_hat @ k' + shift` equals `(x_hat * scale + bias) @ kernel`. The shift `[...]` is None
  without a norm bias; with `affine` None the kernel is returned as is. Both are in the
  kernel's (parameter) dtype; the caller casts.
  """
  if affine is None:
    return kernel, None
  scale, bias = affine
  bshape = (kernel.shape[0],) + (1,) * (kernel.ndim - 1)
  folded = kernel * scale.astype(kernel.dtype).reshape(bshape)
  shift = None
  if bias is not None:
    shift = jnp.tensordot(bias.astype(kernel.dtype), kernel, axes=1)
  return folded, shift


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
    rows = jax.sharding.PartitionSpec("activation_batch", None, None) if shift else None
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


def _cached_attention(q: jax.Array, k: jax.Array, v: jax.Array, cache: KVCache,
                      index: Any, impl: str) -> tuple[jax.Array, KVCache]:
  """Attention of new positions `index .. index+n-1` to a cache that holds `0 .. index-1`.

  `q, k, v`: `[batch, n, heads, head_dim]` of the new positions. Writes `k, v` into the cache
  at `index` and returns `(attention output [batch, n, heads, head_dim], updated cache)`.

  With `index` the Python int 0 (a prefill from an empty cache) the new positions attend
  only to each other, exactly as in training (same causal kernel); otherwise (`index` may be
  traced) queries attend to the whole cache under a mask that admits cached positions up to
  their own, with XLA's attention (short queries against a cache gain nothing from cuDNN).
  """
  k_all = jax.lax.dynamic_update_slice(cache.k, k.astype(cache.k.dtype), (0, index, 0, 0))
  v_all = jax.lax.dynamic_update_slice(cache.v, v.astype(cache.v.dtype), (0, index, 0, 0))
  k_all = nn.with_logical_constraint(k_all, CACHE_AXES)
  v_all = nn.with_logical_constraint(v_all, CACHE_AXES)
  if isinstance(index, int) and index == 0 and impl == "short":   # prefill: as in training
    out = short_causal_attention(q, k, v)
  elif isinstance(index, int) and index == 0:        # prefill: the training computation
    out = jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=impl)
  else:
    q_pos = index + jnp.arange(q.shape[1], dtype=jnp.int32)
    k_pos = jnp.arange(cache.k.shape[1], dtype=jnp.int32)
    mask = (k_pos[None, :] <= q_pos[:, None])[None, None]   # [1, 1, n, max_len]
    out = jax.nn.dot_product_attention(q, k_all.astype(q.dtype), v_all.astype(q.dtype),
                                       mask=mask, implementation="xla")
  return out, KVCache(k=k_all, v=v_all)


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


def cross_patch_cache_len(spec: "StackSpec") -> int:
  """Length of a decode cache of a cross-patch stack: a ring of two patches (the current
  patch and the previous one, whose last `cross_patch` entries stay visible)."""
  return 2 * spec.patch


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

  With `cache` (a `KVCache`) the input holds new positions `index, index+1, ...` only; the
  call attends to them and to the cached ones and returns `(output, updated cache)`.

  With `spec.cross_patch` (cross-patch attention) the input is a whole window cut into
  patches of `spec.patch` (see the module docstring), rotary embeddings are applied at the
  window positions, and with a cache `index` is the window position of the first new row
  (0 as a Python int: a prefill of the window `0 .. length-1`).
  """

  spec: StackSpec

  @nn.compact
  def __call__(self, x: jax.Array, cache: Optional[KVCache] = None,
               index: Any = None, norm: Optional[tuple] = None) -> Any:
    """Returns `[batch, length, dim]`, or `(that, new cache)` when `cache` is given.

    `norm`: the `(scale, bias)` of the `Norm` that produced `x`, folded into the QKV
    projection (`fold_norm`); None when `x` is used as is.
    """
    spec = self.spec
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
    qkv = jnp.einsum("btd,dchk->btchk", x, w_qkv.astype(dtype))
    if spec.use_bias:
      b_qkv = self.param("qkv_bias", nn.with_logical_partitioning(
          nn.initializers.zeros, (None, "heads", "kv")), (3, heads, head_dim), param_dtype)
      shift = b_qkv if shift is None else shift + b_qkv
    if shift is not None:
      qkv = qkv + shift.astype(dtype)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    impl = choose_attention_impl(spec.attention_impl, dtype, head_dim, x.shape[1], heads)
    if impl == "pallas" and (cache is not None or spec.cross_patch):
      impl = "short"   # the kernel covers training's plain causal attention only
    # out: [batch, length, heads, head_dim]
    if spec.cross_patch:
      start = 0 if index is None else index
      positions = start + jnp.arange(x.shape[1], dtype=jnp.int32)
      q, k = apply_rotary(q, positions), apply_rotary(k, positions)
      if cache is None:
        out = _cross_patch_attention(q, k, v, spec.patch, spec.cross_patch)
      elif isinstance(start, int) and start == 0:
        out, cache = _cross_patch_prefill(q, k, v, cache, spec.patch, spec.cross_patch)
      else:
        out, cache = _cross_patch_step(q, k, v, cache, start, spec.patch, spec.cross_patch)
    elif impl == "pallas":                              # (only without a cache: above)
      out = sharded_patch_attention(qkv)                # reads q, k, v from qkv in place
    elif cache is None and impl == "short":
      out = short_causal_attention(q, k, v)
    elif cache is None:
      out = jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=impl)
    else:
      out, cache = _cached_attention(q, k, v, cache, 0 if index is None else index, impl)
    y = jnp.einsum("bthk,hkd->btd", out, w_out.astype(dtype))
    if spec.use_bias:
      b_out = self.param("out_bias", nn.with_logical_partitioning(
          nn.initializers.zeros, ("embed",)), (dim,), param_dtype)
      y = y + b_out.astype(dtype)
    return y if cache is None else (y, cache)


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


def previous_shift_rows(cache: Optional[KVCache], index: Any) -> Optional[jax.Array]:
  """The token-shift rows `[batch, 2, dim // 2]` that the first new position of a cached
  call takes from the position before it: None (zeros) in training and at position 0 (a
  prefill, or a cache restarted at 0, as the local model's is at every patch)."""
  if cache is None or index is None or (isinstance(index, int) and index == 0):
    return None
  return jnp.where(jnp.asarray(index) == 0, jnp.zeros_like(cache.shift), cache.shift)


def _activate(h: jax.Array, activation: str) -> jax.Array:
  """The MLP nonlinearity of `h [..., n_in, mlp]` -> `[..., mlp]`."""
  if activation == "swiglu":
    return jax.nn.silu(h[..., 0, :]) * h[..., 1, :]
  if activation == "relu":
    return jax.nn.relu(h[..., 0, :])
  return jax.nn.gelu(h[..., 0, :])


class Mlp(nn.Module):
  """Position-wise MLP `[..., dim] -> [..., dim]` (GELU, ReLU or SwiGLU)."""

  spec: StackSpec

  @nn.compact
  def __call__(self, x: jax.Array, norm: Optional[tuple] = None) -> jax.Array:
    """`[..., dim] -> [..., dim]`; `norm`: a `Norm`'s `(scale, bias)` to fold into the input
    projection (`fold_norm`), or None."""
    spec = self.spec
    dtype, param_dtype = resolve_dtype(spec.dtype), resolve_dtype(spec.param_dtype)
    n_in = 2 if spec.activation == "swiglu" else 1
    w_in = self.param(
        "in_kernel",
        nn.with_logical_partitioning(dense_init(spec.init_std, in_axis=0, out_axis=(1, 2)),
                                     ("embed", None, "mlp")),
        (spec.dim, n_in, spec.mlp_dim), param_dtype)
    w_out = self.param(
        "out_kernel",
        nn.with_logical_partitioning(dense_init(spec.init_std, scale=1.0 / (2 * spec.layers)),
                                     ("mlp", "embed")),
        (spec.mlp_dim, spec.dim), param_dtype)
    w_in, shift = fold_norm(w_in, norm)                     # shift: [n_in, mlp]
    h = jnp.einsum("...d,dnf->...nf", x, w_in.astype(dtype))  # [..., n_in, mlp]
    if spec.use_bias:
      b_in = self.param("in_bias", nn.with_logical_partitioning(
          nn.initializers.zeros, (None, "mlp")), (n_in, spec.mlp_dim), param_dtype)
      shift = b_in if shift is None else shift + b_in
    if shift is not None:
      h = h + shift.astype(dtype)
    # Rematerialized: the backward pass recomputes the activation from `h` (kept anyway as
    # the matmul's output) inside its own fused kernel, instead of the forward pass writing
    # extra `[..., mlp]` intermediates for it (two passes over the widest activation saved).
    h = jax.checkpoint(functools.partial(_activate, activation=spec.activation))(h)
    y = jnp.einsum("...f,fd->...d", h, w_out.astype(dtype))
    if spec.use_bias:
      y = y + self.param("out_bias", nn.with_logical_partitioning(
          nn.initializers.zeros, ("embed",)), (spec.dim,), param_dtype).astype(dtype)
    return y


class Block(nn.Module):
  """A pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x)); with
  `spec.token_shift`, the input of each norm is `token_shift(x)` (the residual stream itself
  is not shifted), and a cache carries the last position's shifted halves (`KVCache.shift`).

  Each norm's learned scale (and bias) is folded into the projection after it (`Norm`,
  `fold_norm`): the same function and parameters as applying it to the activations.

  With `cache`, decodes incrementally (see `CausalSelfAttention`) and returns
  `(output, updated cache)`.
  """

  spec: StackSpec

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = True,
               cache: Optional[KVCache] = None, index: Any = None) -> Any:
    """Returns `[batch, length, dim]`, or `(that, new cache)` when `cache` is given."""
    spec = self.spec
    attn = CausalSelfAttention(spec, name="attn")
    prev = previous_shift_rows(cache, index) if spec.token_shift else None
    x_in = x
    shift = lambda v, row: v
    if spec.token_shift:
      shift = lambda v, row: token_shift(v, None if prev is None else prev[:, row])
    normed, affine = Norm(spec, name="attn_norm")(shift(x, 0))   # affine folded into QKV
    if cache is None:
      h = attn(normed, norm=affine)
    else:
      h, kv = attn(normed, cache.replace(shift=None), index, norm=affine)
    x = x + nn.Dropout(spec.dropout)(h, deterministic=deterministic)
    x_mid = x
    normed, affine = Norm(spec, name="mlp_norm")(shift(x, 1))
    h = Mlp(spec, name="mlp")(normed, norm=affine)
    x = x + nn.Dropout(spec.dropout)(h, deterministic=deterministic)
    x = nn.with_logical_constraint(x, ACT_SEQ)
    if cache is None:
      return x
    rows = None
    if spec.token_shift:   # the last position's shifted halves, for the next position
      keep = spec.dim - spec.dim // 2
      rows = jnp.stack([x_in[:, -1, keep:], x_mid[:, -1, keep:]], axis=1).astype(kv.k.dtype)
    return x, kv.replace(shift=rows)


_REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def remat_policy(name: str) -> Optional[Callable[..., bool]]:
  """The `jax.checkpoint` policy of a `remat` setting (None for "none")."""
  return _REMAT_POLICIES.get(name)


class _ScanBody(nn.Module):
  """One block as the body of `nn.scan`: `(x, layer cache) -> (x, new layer cache)`.

  `deterministic` and `prefill` (an empty cache filled from position 0) are attributes so
  that they stay static inside the scan; a traced `index` is broadcast to every layer.
  """

  spec: StackSpec
  deterministic: bool = True
  prefill: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, cache: Optional[KVCache], index: Any = None) -> Any:
    block = Block(self.spec, name="block")
    if cache is None:
      return block(x, self.deterministic), None
    return block(x, self.deterministic, cache=cache, index=0 if self.prefill else index)


class TransformerStack(nn.Module):
  """`spec.layers` causal blocks and a final norm over `[batch, length, dim]`.

  Causal over the length axis: output t depends on inputs 0..t only.

  Incremental decoding: with `cache` (`init_stack_cache(spec, batch, max_len)`, one
  `KVCache` per layer) the input holds positions `index .. index+length-1` only, and the call
  returns `(output, updated cache)`. `index=0` (a Python int) prefills an empty cache with the
  training path's causal attention; a traced `index` continues from the cache.

  `spec.remat` rematerializes each block in training (`remat_policy`); `spec.scan_layers`
  runs the blocks with `nn.scan` over stacked parameters (`blocks/block/...`, leading axis
  named "layers") instead of `block_0 .. block_{L-1}`, and the cache has a leading layer axis.
  Both compute the same function.
  """

  spec: StackSpec
  # Training only: return `(x_hat, (scale, bias))` of the final norm (`Norm`) instead of
  # applying it, so the caller folds it into its output projection (`fold_norm`).
  fold_final_norm: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = True,
               cache: Optional[Any] = None, index: Any = None) -> Any:
    """Returns `[batch, length, dim]`, or `(that, new caches)` when `cache` is given
    (with `fold_final_norm`, the output is `(x_hat, (scale, bias))` of the final norm)."""
    spec = self.spec
    x = x.astype(resolve_dtype(spec.dtype))
    policy = remat_policy(spec.remat) if cache is None else None   # decoding keeps nothing
    if spec.scan_layers:
      body = _ScanBody
      if policy is not None:
        body = nn.remat(_ScanBody, policy=policy, prevent_cse=False)
      prefill = isinstance(index, int) and index == 0
      scan = nn.scan(body, variable_axes={"params": 0}, split_rngs={"params": True,
                                                                    "dropout": True},
                     in_axes=(0, nn.broadcast), length=spec.layers,
                     metadata_params={nn.PARTITION_NAME: "layers"})
      x, new_cache = scan(spec, deterministic, prefill, name="blocks")(
          x, cache, None if prefill else index)
    else:
      block_cls = Block
      if policy is not None:   # argument 2 (after self and x) is the static `deterministic`
        block_cls = nn.remat(Block, policy=policy, static_argnums=(2,))
      new_cache = []
      for i in range(spec.layers):
        block = block_cls(spec, name=f"block_{i}")
        if cache is None:
          x = block(x, deterministic)
        else:
          x, layer_cache = block(x, deterministic, cache=cache[i], index=index)
          new_cache.append(layer_cache)
      new_cache = tuple(new_cache)
    if self.fold_final_norm and cache is None:
      return Norm(spec, name="final_norm")(x)
    y = make_norm(spec, "final_norm")(x)
    return y if cache is None else (y, new_cache)


def stack_block_params(stack_params: Any, layers: int) -> Any:
  """Converts a stack's parameters from `block_0 .. block_{L-1}` to the stacked layout of
  `scan_layers=True` (`blocks/block/...` with a leading layer axis); other entries (the final
  norm) are kept."""
  blocks = [stack_params[f"block_{i}"] for i in range(layers)]
  out = {k: v for k, v in stack_params.items() if not k.startswith("block_")}
  out["blocks"] = {"block": jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *blocks)}
  return out


def unstack_block_params(stack_params: Any) -> Any:
  """The inverse of `stack_block_params`: stacked `blocks/block/...` to `block_i`."""
  stacked = stack_params["blocks"]["block"]
  layers = jax.tree_util.tree_leaves(stacked)[0].shape[0]
  out = {k: v for k, v in stack_params.items() if k != "blocks"}
  for i in range(layers):
    out[f"block_{i}"] = jax.tree_util.tree_map(lambda x, i=i: x[i], stacked)
  return out


class CausalConvEncoder(nn.Module):
  """MEGABYTE's convolutional patch encoder (Section 2.3.1): causal 1-D convolutions over
  byte embeddings `[batch, length, dim] -> [batch, length, dim]`.

  One layer per kernel size, applied in turn as `x + act(conv(x))` (ReLU with
  `activation="relu"`, else GELU), each causal (left zero padding of `kernel - 1`), so
  output t depends on inputs 0..t only. Kernels `conv_{i}/kernel` are `[kernel, dim, dim]`.

  `valid` (optional bool `[length]`) marks real rows: the others are zeroed before every
  layer, which is how the decoder reproduces the zero padding at the start of a window when
  it encodes a patch with a few bytes of history before it.
  """

  dim: int
  kernel_sizes: tuple[int, ...]
  activation: str = "gelu"
  init_std: Optional[float] = None
  use_bias: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, valid: Optional[jax.Array] = None) -> jax.Array:
    """Returns the encoded `[batch, length, dim]` (see the class docstring)."""
    act = jax.nn.relu if self.activation == "relu" else jax.nn.gelu
    for i, size in enumerate(self.kernel_sizes):
      if valid is not None:
        x = jnp.where(valid[None, :, None], x, jnp.zeros((), x.dtype))
      conv = nn.Conv(
          self.dim, (size,), padding=((size - 1, 0),), use_bias=self.use_bias,
          dtype=self.dtype, param_dtype=self.param_dtype, name=f"conv_{i}",
          kernel_init=nn.with_logical_partitioning(
              dense_init(self.init_std, in_axis=(0, 1), out_axis=2), (None, "embed", None)),
          bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (None,)))
      x = x + act(conv(x))
    return x

  @staticmethod
  def history(kernel_sizes: Sequence[int]) -> int:
    """How many earlier rows an output row depends on: sum of (kernel - 1)."""
    return sum(k - 1 for k in kernel_sizes)


class ByteEmbed(nn.Embed):
  """`nn.Embed` whose lookup is a one-hot matmul: `one_hot(ids) @ table`.

  Same parameters (`embedding`, `[vocab, embed]`) and the same values as `nn.Embed`'s
  gather (one nonzero per row: exact in any dtype), but its gradient is a matmul
  `one_hot^T @ grad` instead of a scatter-add. On GPU the scatter-add of real text is slow:
  its atomic adds pile onto the few rows of common bytes (spaces, indentation, 'e'), and it
  cost a small model on code 250 ms per step where random bytes took 16 ms (H100, see
  BENCHMARKS.md). The matmul costs `2 * 256 * embed` FLOPs per byte each way, the same for
  any data, and runs on the matrix units of GPUs and TPUs alike.
  """

  def __call__(self, inputs: jax.Array) -> jax.Array:
    """`[...]` integer byte ids -> `[..., features]` embeddings in the compute dtype."""
    if not jnp.issubdtype(inputs.dtype, jnp.integer):
      raise ValueError("Input type must be an integer or unsigned integer.")
    (embedding,) = self.promote_dtype(self.embedding, dtype=self.dtype, inexact=False)
    one_hot = jax.nn.one_hot(inputs, self.num_embeddings, dtype=embedding.dtype)
    # HIGHEST keeps float32 tables exact where the default would round them (TF32 on GPU,
    # bf16 passes on TPU); bf16 tables are exact at any precision.
    return jnp.einsum("...v,vd->...d", one_hot, embedding,
                      precision=jax.lax.Precision.HIGHEST)


def byte_embedding(dim: int, init_std: Optional[float], dtype: Any, param_dtype: Any,
                   name: str, embed_std: float = 0.02) -> nn.Embed:
  """A 256-row byte embedding table `[vocab, embed]` with logical axis names (`ByteEmbed`:
  looked up by a one-hot matmul), initialised by `embedding_init(init_std, embed_std)`."""
  return ByteEmbed(256, dim, dtype=dtype, param_dtype=param_dtype, name=name,
                   embedding_init=nn.with_logical_partitioning(
                       embedding_init(init_std, embed_std), ("vocab", "embed")))


def shift_right(x: jax.Array, pad: jax.Array, axis: int) -> jax.Array:
  """Shifts `x` right by one along `axis`, dropping the last entry and inserting `pad` first.

  `pad` must broadcast to one slice of `x` along `axis` (e.g. a learned `[dim]` vector).
  """
  axis = axis % x.ndim
  pad_shape = x.shape[:axis] + (1,) + x.shape[axis + 1:]
  first = jnp.broadcast_to(pad.astype(x.dtype), pad_shape)
  rest = jax.lax.slice_in_dim(x, 0, x.shape[axis] - 1, axis=axis)
  return jnp.concatenate([first, rest], axis=axis)


class ByteHead(nn.Module):
  """Projects `[..., dim]` to float32 logits `[..., 256]`.

  With `embedding` given (tied weights, the paper's equation) the logits are
  `h @ embedding.T`; otherwise a separate dense layer. Computed in float32 either way so
  bf16 training keeps precise logits.
  """

  dim: int
  init_std: Optional[float] = None
  use_bias: bool = True
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h: jax.Array, embedding: Optional[nn.Embed] = None,
               norm: Optional[tuple] = None) -> jax.Array:
    """`h [..., dim]` -> float32 logits `[..., 256]`; `norm`: the `(scale, bias)` of a
    `Norm` that produced `h`, folded into the projection (`fold_norm`), or None."""
    h = h.astype(jnp.float32)
    if embedding is not None:
      kernel, shift = fold_norm(embedding.embedding.astype(jnp.float32).T, norm)
      logits = jnp.einsum("...d,dv->...v", h, kernel)
      return logits if shift is None else logits + shift
    kernel = self.param("kernel", nn.with_logical_partitioning(
        dense_init(self.init_std), ("embed", "vocab")), (self.dim, 256), self.param_dtype)
    kernel, shift = fold_norm(kernel.astype(jnp.float32), norm)
    logits = jnp.einsum("...d,dv->...v", h, kernel)
    if shift is not None:
      logits = logits + shift
    if self.use_bias:
      logits = logits + self.param("bias", nn.with_logical_partitioning(
          nn.initializers.zeros, ("vocab",)), (256,), self.param_dtype).astype(jnp.float32)
    return logits
