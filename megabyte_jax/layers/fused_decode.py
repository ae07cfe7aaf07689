"""Fused one-byte decoding of a transformer stack: a few Pallas kernels per layer.

Decoding one byte at batch 1 is latency-bound: each layer of the XLA path runs ~16 small
dependent kernels (norm statistics and apply, matrix-vector products lowered as reductions,
softmax pieces, bias and residual adds), each ~2 us, while the layer's weights take well
under a microsecond to read (BENCHMARKS.md, issue 5). This module runs one block's step for
one new position in four kernels plus the two cache writes:

  1. norm + QKV projection (+ bias)                          -> qkv  [batch, 3 * heads * head_dim]
     (then QK-norm and rotary positions of the one row, when configured, in XLA)
  2. cached attention + output projection (+ bias) + residual -> x    [batch, dim]
  3. norm + MLP input projection (+ bias) + activation       -> h    [batch, mlp]
  4. MLP output projection (+ bias) + residual               -> x    [batch, dim]

Each kernel is a grid over (batch row, block of output features); every program reads the
whole input row (and recomputes the row's norm, or the attention of all heads: a few
thousand flops) and one block of the weight matrix, so the weights are read once per row
spread over many SMs. The arithmetic follows the XLA path's (norm statistics in float32,
matmul outputs rounded to the compute dtype, softmax in float32, the same rounding points),
so in float32 the fused step equals `Block` with a cache to float rounding; the tests check
it in Pallas' interpreter on CPU.

On GPU the kernels lower through Pallas' Triton backend. `supported` says when the fused
path applies (a plain, unscanned stack whose sizes are powers of two, small batches, no
FP8); the decoder falls back to the XLA path otherwise, and on TPU and CPU.

Weights are laid out once before the decoding loop (`prepare_stack`): each matmul weight is
transposed to `[out, in]` so a program's block is contiguous along the reduction axis.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Optional

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pl_triton

from megabyte_jax.config import resolve_dtype
from megabyte_jax.layers.attention import normalize_and_rotate
from megabyte_jax.layers.kvcache import KVCache
from megabyte_jax.layers.spec import Mode, StackSpec
from megabyte_jax.layers.token_shift import previous_shift_rows, token_shift

__all__ = ["FUSED_MODES", "MAX_BATCH", "block_step", "prepare_stack", "supported", "use_fused"]

# When decoders use the fused step (`inference.DecodeOptions.fused`): "auto" on GPU wherever
# `supported`, "off" never, "interpret" wherever `supported`, in Pallas' interpreter (for
# tests on CPU).
FUSED_MODES = ("auto", "off", "interpret")

# Largest batch the fused path serves: each program handles one row, so the weights are read
# once per row; beyond a few rows XLA's batched matmuls are faster.
MAX_BATCH = 4
# Elements of a weight block per program (bf16: 32 KiB), trading parallelism for overhead.
_BLOCK_ELEMENTS = 16384


def _pow2(n: int) -> bool:
  return n > 0 and n & (n - 1) == 0


def supported(spec: StackSpec, batch: int, cache_len: int) -> bool:
  """Whether the fused kernels can run `spec`'s stack (`TransformerStack` with a `FusedStack`)
  at `batch` rows over a `cache_len` cache.

  Needs a plain, unscanned stack (per-layer parameters, no cross-patch attention) computed
  in the compute dtype (the kernels implement no FP8: an `fp8` stack decodes through XLA),
  power-of-two sizes (Triton blocks: width, heads, head width, MLP width and cache length)
  and at most `MAX_BATCH` rows.
  """
  return (not spec.scan_layers and 1 <= batch <= MAX_BATCH
          and not getattr(spec, "cross_patch", 0) and not spec.fp8
          and all(_pow2(n) for n in (spec.dim, spec.heads, spec.head_dim, spec.mlp_dim,
                                     cache_len))
          and spec.norm in ("layernorm", "rmsnorm")
          and spec.activation in ("gelu", "relu", "swiglu"))


def use_fused(spec: StackSpec, batch: int, cache_len: int, mode: str = "auto") -> bool:
  """Whether a decoder should use the fused step for this stack, by `mode` (one of
  `FUSED_MODES`) and `supported`."""
  if mode not in FUSED_MODES:
    raise ValueError(f"fused must be one of {FUSED_MODES}, got {mode!r}")
  if mode == "off" or (mode == "auto" and jax.default_backend() != "gpu"):
    return False
  return supported(spec, batch, cache_len)


def _block_n(n_out: int, n_in: int) -> int:
  """Output features per program: a power of two dividing `n_out`, block <= _BLOCK_ELEMENTS."""
  bn = 1
  while bn * 2 <= n_out and n_out % (bn * 2) == 0 and (bn * 2) * n_in <= _BLOCK_ELEMENTS:
    bn *= 2
  return bn


def _norm_params(norm: dict, dim: int) -> tuple[jax.Array, jax.Array]:
  """(scale, bias) as float32 `[1, dim]` rows (bias zeros without one: adding 0 is exact)."""
  scale = norm["scale"].astype(jnp.float32).reshape(1, dim)
  bias = norm.get("bias")
  bias = jnp.zeros((1, dim), jnp.float32) if bias is None else \
      bias.astype(jnp.float32).reshape(1, dim)
  return scale, bias


def _bias_row(params: dict, name: str, n: int) -> jax.Array:
  """A bias as float32 `[1, n]` (zeros when the layer has none)."""
  b = params.get(name)
  return jnp.zeros((1, n), jnp.float32) if b is None else b.astype(jnp.float32).reshape(1, n)


def prepare_stack(stack_params: Any, spec: StackSpec) -> dict:
  """Lays out a stack's parameters for the fused kernels (once, before the decoding loop).

  Args:
    stack_params: the `TransformerStack` parameters (`block_0 .. block_{L-1}`,
      `final_norm`), unboxed, matmul weights possibly already cast to the compute dtype.
    spec: the stack's `StackSpec`.

  Returns:
    `[per-layer dict of transposed weights and float32 rows]`, the `layers` of a
    `blocks.FusedStack`.
  """
  dtype = resolve_dtype(spec.dtype)
  dim, hk, mlp = spec.dim, spec.heads * spec.head_dim, spec.mlp_dim
  n_in = 2 if spec.activation == "swiglu" else 1
  layers = []
  for i in range(spec.layers):
    p = stack_params[f"block_{i}"]
    attn, mlp_p = p["attn"], p["mlp"]
    layers.append({
        "attn_norm": _norm_params(p["attn_norm"], dim),
        "wqkv": attn["qkv_kernel"].astype(dtype).reshape(dim, 3 * hk).T,      # [3hk, dim]
        "bqkv": _bias_row(attn, "qkv_bias", 3 * hk),
        "wout": jnp.transpose(attn["out_kernel"].astype(dtype), (2, 0, 1)),  # [dim, h, k]
        "bout": _bias_row(attn, "out_bias", dim),
        "mlp_norm": _norm_params(p["mlp_norm"], dim),
        "win": mlp_p["in_kernel"].astype(dtype).reshape(dim, n_in * mlp).T,   # [n_in*mlp, dim]
        "bin": _bias_row(mlp_p, "in_bias", n_in * mlp),
        "wmlp": mlp_p["out_kernel"].astype(dtype).T,                           # [dim, mlp]
        "bmlp": _bias_row(mlp_p, "out_bias", dim),
        "qk_scales": (attn["q_norm"], attn["k_norm"]) if spec.qk_norm else None,
    })
  return layers


def _normalize(x: jax.Array, scale: jax.Array, bias: jax.Array, rms: bool,
               eps: float) -> jax.Array:
  """Flax's LayerNorm/RMSNorm of float32 rows `x [1, dim]` (fast variance, as flax)."""
  mean2 = jnp.mean(x * x, axis=1, keepdims=True)
  if rms:
    return x * (jax.lax.rsqrt(mean2 + eps) * scale)
  mean = jnp.mean(x, axis=1, keepdims=True)
  var = jnp.maximum(mean2 - mean * mean, 0.0)
  return (x - mean) * (jax.lax.rsqrt(var + eps) * scale) + bias


def _round(x: jax.Array, dtype: Any) -> jax.Array:
  """`x` rounded to `dtype` and back to float32 (where the XLA path stores `dtype`)."""
  return x.astype(dtype).astype(jnp.float32)


def _matvec(w: jax.Array, x: jax.Array) -> jax.Array:
  """`w [n, d] @ x[0]` for a row `x [1, d]`, float32, as a row `[1, n]`."""
  return jnp.sum(w.astype(jnp.float32) * x, axis=1)[None, :]


def _activate(h: jax.Array, activation: str, dtype: Any, gate: Optional[jax.Array]) -> jax.Array:
  if activation == "swiglu":
    return _round(_round(jax.nn.silu(h), dtype) * gate, dtype)
  if activation == "relu":
    return jax.nn.relu(h)
  return _round(jax.nn.gelu(h), dtype)


def _norm_matvec_kernel(*refs, rms, eps, dtype, activation):
  """Program (row, block): out[row, block] = act(norm(x[row]) @ w[block].T + b[block])."""
  if activation == "swiglu":
    x_ref, s_ref, nb_ref, w_ref, b_ref, wg_ref, bg_ref, o_ref = refs
  else:
    x_ref, s_ref, nb_ref, w_ref, b_ref, o_ref = refs
  x = _round(_normalize(x_ref[...].astype(jnp.float32), s_ref[...], nb_ref[...], rms, eps),
             dtype)
  h = _round(_round(_matvec(w_ref[...], x), dtype) + _round(b_ref[...], dtype), dtype)
  if activation is not None:
    gate = None
    if activation == "swiglu":
      gate = _round(_round(_matvec(wg_ref[...], x), dtype) + _round(bg_ref[...], dtype), dtype)
    h = _activate(h, activation, dtype, gate)
  o_ref[...] = h.astype(o_ref.dtype)


def _attention_out_kernel(x_ref, q_ref, k_ref, v_ref, i_ref, w_ref, b_ref, o_ref, *,
                          scale, dtype):
  """Program (row, block): x + (attention of q over cache 0..i) @ w_out[block] + b."""
  q = q_ref[...].astype(jnp.float32)                          # [heads, head_dim]
  k = k_ref[...].astype(jnp.float32)                          # [len, heads, head_dim]
  v = v_ref[...].astype(jnp.float32)
  s = jnp.sum(k * q[None], axis=2) * scale                    # [len, heads]
  pos = jax.lax.broadcasted_iota(jnp.int32, s.shape, 0)
  s = jnp.where(pos <= i_ref[0], s, jnp.finfo(jnp.float32).min)
  s = s - jnp.max(s, axis=0, keepdims=True)
  e = jnp.exp(s)
  p = _round(e / jnp.sum(e, axis=0, keepdims=True), dtype)
  att = _round(jnp.sum(p[:, :, None] * v, axis=0), dtype)     # [heads, head_dim]
  w = w_ref[...].astype(jnp.float32)                          # [block, heads, head_dim]
  y = jnp.sum(jnp.sum(w * att[None], axis=2), axis=1)[None, :]  # [1, block]
  y = _round(_round(y, dtype) + _round(b_ref[...], dtype), dtype)
  o_ref[...] = (x_ref[...].astype(jnp.float32) + y).astype(o_ref.dtype)


def _matvec_residual_kernel(x_ref, h_ref, w_ref, b_ref, o_ref, *, dtype):
  """Program (row, block): x[row, block] + h[row] @ w[block].T + b[block]."""
  y = _round(_matvec(w_ref[...], h_ref[...].astype(jnp.float32)), dtype)
  y = _round(y + _round(b_ref[...], dtype), dtype)
  o_ref[...] = (x_ref[...].astype(jnp.float32) + y).astype(o_ref.dtype)


def _row_spec(n: int, bn: Optional[int] = None) -> pl.BlockSpec:
  """Block of row `r` of a `[batch, n]` array: the whole row, or block `j` of `bn`."""
  if bn is None:
    return pl.BlockSpec((1, n), lambda r, j: (r, 0))
  return pl.BlockSpec((1, bn), lambda r, j: (r, j))


def _const_spec(shape: tuple[int, ...]) -> pl.BlockSpec:
  return pl.BlockSpec(shape, lambda r, j: (0,) * len(shape))


def _weight_spec(bn: int, rest: tuple[int, ...], offset: int = 0) -> pl.BlockSpec:
  """Block `j (+ offset)` of `bn` rows of a `[out, *rest]` weight."""
  return pl.BlockSpec((bn, *rest), lambda r, j: (j + offset,) + (0,) * len(rest))


def _call(kernel, out_shape, grid, in_specs, out_spec, interpret, *args):
  """A `pallas_call` on the Triton backend (named explicitly: newer jax defaults to Mosaic
  GPU, whose copies do not take these blocks)."""
  return pl.pallas_call(kernel, out_shape=out_shape, grid=grid, in_specs=in_specs,
                        out_specs=out_spec, interpret=interpret,
                        compiler_params=pl_triton.CompilerParams(num_warps=4, num_stages=1),
                        name=getattr(kernel, "func", kernel).__name__.strip("_"))(*args)


def _norm_matvec(x, norm, w, b, *, spec, activation, n_out, interpret):
  """`act(norm(x) @ w.T + b)` for `x [batch, dim]`, `w [n_in * n_out, dim]` -> `[batch, n_out]`
  (for SwiGLU `w` stacks the value and gate halves)."""
  batch, dim = x.shape
  dtype = resolve_dtype(spec.dtype)
  bn = _block_n(n_out, dim)
  scale, nbias = norm
  in_specs = [_row_spec(dim), _const_spec((1, dim)), _const_spec((1, dim)),
              _weight_spec(bn, (dim,)), _row_spec_const_block(bn)]
  args = [x, scale, nbias, w, b]
  if activation == "swiglu":
    in_specs += [_weight_spec(bn, (dim,), n_out // bn), _row_spec_const_block(bn, n_out // bn)]
    args += [w, b]
  kernel = functools.partial(_norm_matvec_kernel, rms=spec.norm == "rmsnorm",
                             eps=1e-6 if spec.norm == "rmsnorm" else 1e-5, dtype=dtype,
                             activation=activation)
  return _call(kernel, jax.ShapeDtypeStruct((batch, n_out), dtype), (batch, n_out // bn),
               in_specs, _row_spec(n_out, bn), interpret, *args)


def _row_spec_const_block(bn: int, offset: int = 0) -> pl.BlockSpec:
  """Block `j (+ offset)` of a `[1, n]` float32 bias row, whatever the batch row."""
  return pl.BlockSpec((1, bn), lambda r, j: (0, j + offset))


def _attention_out(x, qkv, cache, index, wout, bout, *, spec, interpret):
  """`x + attention(q, cache[: index + 1]) @ w_out + b` -> `[batch, dim]`."""
  batch, dim = x.shape
  heads, hd = spec.heads, spec.head_dim
  length = cache.k.shape[1]
  dtype = resolve_dtype(spec.dtype)
  bn = _block_n(dim, heads * hd)
  qkv = qkv.reshape(batch, 3, heads, hd)
  sq = pl.squeezed
  q_spec = pl.BlockSpec((sq, sq, heads, hd), lambda r, j: (r, 0, 0, 0))
  kv_spec = pl.BlockSpec((sq, length, heads, hd), lambda r, j: (r, 0, 0, 0))
  i_spec = pl.BlockSpec((1,), lambda r, j: (0,))
  kernel = functools.partial(_attention_out_kernel, scale=1.0 / math.sqrt(hd), dtype=dtype)
  index = jnp.asarray(index, jnp.int32).reshape(1)
  return _call(kernel, jax.ShapeDtypeStruct((batch, dim), dtype), (batch, dim // bn),
               [_row_spec(dim, bn), q_spec, kv_spec, kv_spec, i_spec,
                _weight_spec(bn, (heads, hd)), _row_spec_const_block(bn)],
               _row_spec(dim, bn), interpret, x, qkv, cache.k, cache.v, index, wout, bout)


def _matvec_residual(x, h, w, b, *, spec, interpret):
  """`x + h @ w.T + b` for `h [batch, mlp]`, `w [dim, mlp]` -> `[batch, dim]`."""
  batch, dim = x.shape
  mlp = h.shape[1]
  bn = _block_n(dim, mlp)
  kernel = functools.partial(_matvec_residual_kernel, dtype=resolve_dtype(spec.dtype))
  return _call(kernel, jax.ShapeDtypeStruct((batch, dim), x.dtype), (batch, dim // bn),
               [_row_spec(dim, bn), _row_spec(mlp), _weight_spec(bn, (mlp,)),
                _row_spec_const_block(bn)],
               _row_spec(dim, bn), interpret, x, h, w, b)


def block_step(layer: dict, spec: StackSpec, x: jax.Array, cache: KVCache, index: Any, *,
               interpret: bool = False) -> tuple[jax.Array, KVCache]:
  """One `Block` for one new position: `x [batch, dim]` at cache position `index`.

  Args:
    layer: one entry of `prepare_stack(...)["layers"]`.
    x: the residual stream of the new position, compute dtype.
    cache: the layer's `KVCache` (`[batch, len, heads, head_dim]`), holding `0 .. index-1`.
    index: the new position (traced int32 scalar).
    interpret: run the kernels in Pallas' interpreter (CPU tests).

  Returns:
    `(x after the block [batch, dim], cache with position index written)`.
  """
  batch = x.shape[0]
  hk = spec.heads * spec.head_dim
  keep = spec.dim - spec.dim // 2
  shift = lambda v, row: v
  if spec.token_shift:   # `layers.token_shift` of one position, the rest from the cache
    prev = previous_shift_rows(cache, index, Mode.DECODE)
    shift = lambda v, row: token_shift(v[:, None], None if prev is None else prev[:, row])[:, 0]
  x_in = x
  qkv = _norm_matvec(shift(x, 0), layer["attn_norm"], layer["wqkv"], layer["bqkv"],
                     spec=spec, activation=None, n_out=3 * hk, interpret=interpret)
  new = qkv.reshape(batch, 1, 3, spec.heads, spec.head_dim)
  if spec.qk_norm or spec.rotary:   # as `CausalSelfAttention`: a few XLA ops on one row
    q, k = normalize_and_rotate(new[:, :, 0], new[:, :, 1], layer["qk_scales"], spec.rotary,
                                index)
    new = jnp.stack([q, k, new[:, :, 2]], axis=2)
    qkv = new.reshape(batch, 3 * hk)
  cache = KVCache(
      k=jax.lax.dynamic_update_slice(cache.k, new[:, :, 1].astype(cache.k.dtype),
                                     (0, index, 0, 0)),
      v=jax.lax.dynamic_update_slice(cache.v, new[:, :, 2].astype(cache.v.dtype),
                                     (0, index, 0, 0)),
      shift=cache.shift)
  x = _attention_out(x, qkv, cache, index, layer["wout"], layer["bout"], spec=spec,
                     interpret=interpret)
  if spec.token_shift:
    cache = cache.replace(shift=jnp.stack([x_in[:, keep:], x[:, keep:]], axis=1).astype(
        cache.shift.dtype))
  h = _norm_matvec(shift(x, 1), layer["mlp_norm"], layer["win"], layer["bin"], spec=spec,
                   activation=spec.activation, n_out=spec.mlp_dim, interpret=interpret)
  x = _matvec_residual(x, h, layer["wmlp"], layer["bmlp"], spec=spec, interpret=interpret)
  return x, cache
