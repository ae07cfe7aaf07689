"""Pallas (Triton) kernels for MEGABYTE's local attention: causal attention within patches.

The local model attends causally within short patches (typically 8 positions, 8 heads of
64). XLA lowers this to broadcast-product reductions over tiny [8, 8] tiles and is far
from memory bound; a tensor-core matmul cannot be used on an 8x8 tile either. These
kernels instead treat a block of R = 64 consecutive rows (R / length whole patches) as one
[R, R] attention problem with a block-diagonal causal mask:

  qkv [batch, length, 3, heads, head_dim] -> view [rows = batch*length, 3, heads, head_dim]
  (a free reshape: the same memory as [rows, 3*heads*head_dim], q of head h in columns
  h*D .. h*D+D-1, k at H*D + h*D, v at 2*H*D + h*D)
  grid = (rows / R, heads / block_heads); one program = R rows x `block_heads` heads
  (default: 2), and per head (static Python loop):
    q, k, v   [R, head_dim]        (static slices of the block)
    s = q k^T [R, R]               (tensor-core dot, float32 accumulation)
    mask      row i sees col j iff j <= i and i // length == j // length
    p = softmax(s * scale)         (float32)
    o = p v   [R, head_dim]        (p cast to the input dtype, as XLA's attention does)

Only length / R of the R^2 entries of s are used (the dots do R / length times the useful
FLOPs), but the kernel stays memory bound: it reads qkv once and writes the output once.
The backward kernel runs over the same blocks, recomputes s and p from qkv, and writes dq,
dk and dv straight into a [rows, 3, heads, head_dim] array, which is the cotangent of qkv
without any concatenation.
`jax.custom_vjp` joins the two; the only residual is qkv itself.

Rows are padded with zeros to a multiple of R when batch * length is not one. Padded rows
form whole fake patches (R is a multiple of length), so they never mix with real ones.

Numerics follow XLA's attention: float32 logits and softmax, probabilities cast to the
input dtype before the product with v. The backward pass keeps p, dp and ds in float32 and
casts ds to the input dtype for the dq / dk products (as flash attention does). float32
inputs use exact (IEEE) dots, not TF32.

`interpret=True` runs the same `pallas_call`s in Pallas' interpreter (works on CPU; the
tests use it). A `pallas_call` is opaque to XLA's SPMD partitioner: with inputs sharded
across devices, call `patch_attention` inside `shard_map` (each shard holds whole patches).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Optional, Sequence

import jax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu
import jax.numpy as jnp
import numpy as np

# Rows per program; a multiple of every supported patch length and >= 16 (Triton dots).
DEFAULT_BLOCK_ROWS = 64
MAX_LENGTH = 64
SUPPORTED_HEAD_DIMS = (16, 32, 64, 128)
SUPPORTED_DTYPES = (jnp.bfloat16, jnp.float16, jnp.float32)
# Large finite negative logit for masked entries (as jax.nn.dot_product_attention).
_MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)

_DOT_NT = (((1,), (1,)), ((), ()))  # a @ b^T
_DOT_NN = (((1,), (0,)), ((), ()))  # a @ b
_DOT_TN = (((0,), (0,)), ((), ()))  # a^T @ b


@dataclasses.dataclass(frozen=True)
class _Config:
  """Static (hashable) parameters of one kernel launch."""
  length: int
  block_rows: int
  block_heads: int
  num_warps: int
  interpret: bool


def _is_power_of_two(n: int) -> bool:
  return n >= 1 and (n & (n - 1)) == 0


def _unsupported_reason(qkv_shape: Sequence[int], dtype: Any) -> Optional[str]:
  """Why the kernel cannot handle this shape/dtype, or None if it can."""
  shape = tuple(qkv_shape)
  if len(shape) != 5 or shape[2] != 3:
    return (f"qkv must have shape [batch, length, 3, heads, head_dim], got {shape}")
  batch, length, _, heads, head_dim = shape
  if batch < 1 or heads < 1:
    return f"batch and heads must be positive, got shape {shape}"
  if not _is_power_of_two(length) or length > MAX_LENGTH:
    return f"length (patch size) must be a power of two <= {MAX_LENGTH}, got {length}"
  if head_dim not in SUPPORTED_HEAD_DIMS:
    return f"head_dim must be one of {SUPPORTED_HEAD_DIMS}, got {head_dim}"
  try:
    dt = jnp.dtype(dtype)
  except TypeError:
    return f"unsupported dtype {dtype!r}"
  if dt not in [jnp.dtype(d) for d in SUPPORTED_DTYPES]:
    return f"dtype must be bfloat16, float16 or float32, got {dt}"
  return None


def patch_attention_supported(qkv_shape: Sequence[int], dtype: Any) -> bool:
  """Whether `patch_attention` handles this qkv shape and dtype.

  Supported: qkv `[batch, length, 3, heads, head_dim]` with length a power of two <= 64,
  head_dim in {16, 32, 64, 128} (Triton tiles must be powers of two and dots need
  dimensions >= 16), any batch and heads, dtype bfloat16, float16 or float32.
  """
  return _unsupported_reason(qkv_shape, dtype) is None


def reference_patch_attention(qkv: jax.Array) -> jax.Array:
  """Plain jnp causal attention within each patch (float32 softmax), for tests.

  Args:
    qkv: `[batch, length, 3, heads, head_dim]`.

  Returns:
    `[batch, length, heads, head_dim]` in qkv.dtype; the probabilities are cast to
    qkv.dtype before the product with v, as `jax.nn.dot_product_attention` does.
  """
  q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [batch, length, heads, head_dim]
  length, head_dim = qkv.shape[1], qkv.shape[-1]
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
  logits = logits * jnp.float32(1.0 / math.sqrt(head_dim))
  causal = jnp.tril(jnp.ones((length, length), dtype=bool))
  logits = jnp.where(causal, logits, _MASK_VALUE)
  probs = jax.nn.softmax(logits, axis=-1).astype(qkv.dtype)  # [batch, heads, q, k]
  out = jnp.einsum("bhqk,bkhd->bqhd", probs, v, preferred_element_type=jnp.float32)
  return out.astype(qkv.dtype)


def _block_mask(block_rows: int, length: int) -> jax.Array:
  """[R, R] bool: row i sees column j iff j <= i and both lie in the same patch."""
  row = jax.lax.broadcasted_iota(jnp.int32, (block_rows, block_rows), 0)
  col = jax.lax.broadcasted_iota(jnp.int32, (block_rows, block_rows), 1)
  patch_start = jnp.int32(~(length - 1))  # length is a power of two
  same_patch = (row & patch_start) == (col & patch_start)
  return jnp.logical_and(col <= row, same_patch)


def _dot(a: jax.Array, b: jax.Array, dims) -> jax.Array:
  """Tensor-core dot with float32 accumulation.

  float32 operands ask for HIGHEST precision: with the default, Pallas' Triton lowering
  picks TF32 (about 1e-3 relative error) whatever `jax_default_matmul_precision` says.
  """
  precision = jax.lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
  return jax.lax.dot_general(a, b, dims, precision=precision,
                             preferred_element_type=jnp.float32)


def _probs(q: jax.Array, k: jax.Array, mask: jax.Array, scale: float) -> jax.Array:
  """[R, R] float32 softmax of masked, scaled q k^T."""
  s = _dot(q, k, _DOT_NT)
  s = jnp.where(mask, s * scale, _MASK_VALUE)
  m = jnp.max(s, axis=1)
  e = jnp.exp(s - m[:, None])
  return e / jnp.sum(e, axis=1)[:, None]


def _fwd_kernel(qkv_ref, o_ref, *, cfg: _Config, scale: float):
  """One block: qkv_ref [R, 3, G, D] -> o_ref [R, G, D]."""
  mask = _block_mask(cfg.block_rows, cfg.length)
  for h in range(cfg.block_heads):
    q = qkv_ref[:, 0, h, :]  # [R, D]
    k = qkv_ref[:, 1, h, :]
    v = qkv_ref[:, 2, h, :]
    p = _probs(q, k, mask, scale)  # [R, R] float32
    o = _dot(p.astype(v.dtype), v, _DOT_NN)  # [R, D]
    o_ref[:, h, :] = o.astype(o_ref.dtype)


def _bwd_kernel(qkv_ref, do_ref, dqkv_ref, *, cfg: _Config, scale: float):
  """One block: qkv_ref [R, 3, G, D], do_ref [R, G, D] -> dqkv_ref [R, 3, G, D]."""
  mask = _block_mask(cfg.block_rows, cfg.length)
  for h in range(cfg.block_heads):
    q = qkv_ref[:, 0, h, :]  # [R, D]
    k = qkv_ref[:, 1, h, :]
    v = qkv_ref[:, 2, h, :]
    do = do_ref[:, h, :]  # [R, D]
    p = _probs(q, k, mask, scale)  # [R, R] float32
    dv = _dot(p.astype(do.dtype), do, _DOT_TN)  # p^T do  [R, D]
    dp = _dot(do, v, _DOT_NT)  # do v^T  [R, R]
    ds = p * (dp - jnp.sum(p * dp, axis=1)[:, None])  # [R, R] float32
    ds = ds.astype(q.dtype)
    dq = _dot(ds, k, _DOT_NN)  # [R, D]
    dk = _dot(ds, q, _DOT_TN)  # ds^T q  [R, D]
    dqkv_ref[:, 0, h, :] = (dq * scale).astype(dqkv_ref.dtype)
    dqkv_ref[:, 1, h, :] = (dk * scale).astype(dqkv_ref.dtype)
    dqkv_ref[:, 2, h, :] = dv.astype(dqkv_ref.dtype)


def _compiler_params(cfg: _Config):
  return plgpu.CompilerParams(num_warps=cfg.num_warps, num_stages=1)


def _qkv_spec(cfg: _Config, head_dim: int) -> pl.BlockSpec:
  return pl.BlockSpec((cfg.block_rows, 3, cfg.block_heads, head_dim),
                      lambda i, g: (i, 0, g, 0))


def _out_spec(cfg: _Config, head_dim: int) -> pl.BlockSpec:
  return pl.BlockSpec((cfg.block_rows, cfg.block_heads, head_dim),
                      lambda i, g: (i, g, 0))


def _fwd_call(rows_qkv: jax.Array, cfg: _Config) -> jax.Array:
  """rows_qkv [rows, 3, heads, head_dim] (rows % R == 0) -> [rows, heads, head_dim]."""
  rows, _, heads, head_dim = rows_qkv.shape
  grid = (rows // cfg.block_rows, heads // cfg.block_heads)
  kernel = functools.partial(_fwd_kernel, cfg=cfg, scale=1.0 / math.sqrt(head_dim))
  return pl.pallas_call(
      kernel,
      out_shape=jax.ShapeDtypeStruct((rows, heads, head_dim), rows_qkv.dtype),
      grid=grid,
      in_specs=[_qkv_spec(cfg, head_dim)],
      out_specs=_out_spec(cfg, head_dim),
      compiler_params=_compiler_params(cfg),
      interpret=cfg.interpret,
      name="patch_attention_fwd",
  )(rows_qkv)


def _bwd_call(rows_qkv: jax.Array, rows_do: jax.Array, cfg: _Config) -> jax.Array:
  """rows_qkv [rows, 3, heads, head_dim], rows_do [rows, heads, head_dim] -> d rows_qkv."""
  rows, _, heads, head_dim = rows_qkv.shape
  grid = (rows // cfg.block_rows, heads // cfg.block_heads)
  kernel = functools.partial(_bwd_kernel, cfg=cfg, scale=1.0 / math.sqrt(head_dim))
  return pl.pallas_call(
      kernel,
      out_shape=jax.ShapeDtypeStruct(rows_qkv.shape, rows_qkv.dtype),
      grid=grid,
      in_specs=[_qkv_spec(cfg, head_dim), _out_spec(cfg, head_dim)],
      out_specs=_qkv_spec(cfg, head_dim),
      compiler_params=_compiler_params(cfg),
      interpret=cfg.interpret,
      name="patch_attention_bwd",
  )(rows_qkv, rows_do)


def _pad_rows(x: jax.Array, block_rows: int) -> jax.Array:
  """Zero-pads axis 0 of x up to a multiple of block_rows (a no-op when it is one)."""
  pad = -x.shape[0] % block_rows
  if pad == 0:
    return x
  return jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _patch_attention(qkv: jax.Array, cfg: _Config) -> jax.Array:
  """qkv [batch, length, 3, heads, head_dim] -> [batch, length, heads, head_dim]."""
  batch, length, _, heads, head_dim = qkv.shape
  rows = batch * length
  rows_qkv = _pad_rows(qkv.reshape(rows, 3, heads, head_dim), cfg.block_rows)
  out = _fwd_call(rows_qkv, cfg)[:rows]  # [rows, heads, head_dim]
  return out.reshape(batch, length, heads, head_dim)


def _patch_attention_fwd(qkv: jax.Array, cfg: _Config):
  return _patch_attention(qkv, cfg), qkv


def _patch_attention_bwd(cfg: _Config, qkv: jax.Array, d_out: jax.Array):
  batch, length, _, heads, head_dim = qkv.shape
  rows = batch * length
  rows_qkv = _pad_rows(qkv.reshape(rows, 3, heads, head_dim), cfg.block_rows)
  rows_do = _pad_rows(d_out.astype(qkv.dtype).reshape(rows, heads, head_dim),
                      cfg.block_rows)
  d_rows = _bwd_call(rows_qkv, rows_do, cfg)[:rows]  # [rows, 3, heads, head_dim]
  return (d_rows.reshape(qkv.shape),)


_patch_attention.defvjp(_patch_attention_fwd, _patch_attention_bwd)


def patch_attention(qkv: jax.Array, *, interpret: bool = False,
                    block_rows: int = DEFAULT_BLOCK_ROWS,
                    block_heads: Optional[int] = None,
                    num_warps: int = 4) -> jax.Array:
  """Causal self-attention within each patch, as fused Pallas (Triton) kernels.

  Same function as `jax.nn.dot_product_attention(q, k, v, is_causal=True)` with the
  default scale 1 / sqrt(head_dim), applied to every batch row (patch) independently;
  differentiable (`jax.custom_vjp` with a fused backward kernel).

  Args:
    qkv: `[batch, length, 3, heads, head_dim]`, q, k and v stacked on axis 2; each batch
      row is one patch of `length` positions (see `patch_attention_supported`).
    interpret: run the kernels in Pallas' interpreter (works on CPU; slow).
    block_rows: rows (positions) per program, R; a power of two, >= 16, >= length.
      Larger blocks waste more FLOPs on masked entries (a factor R / length).
    block_heads: heads per program, looped over statically inside it; must divide heads.
      None: 2 when heads is even, else 1 (on an H100 at [8192, 8, 3, 8, 64] bf16, forward
      plus backward took 0.31 ms with 1 or 2 heads per program and 0.36 ms with all 8;
      XLA's attention took 1.38 ms).
    num_warps: Triton warps per program.

  Returns:
    `[batch, length, heads, head_dim]` in qkv.dtype.

  Raises:
    ValueError: if the shape, dtype or block sizes are not supported.
  """
  reason = _unsupported_reason(qkv.shape, qkv.dtype)
  if reason is not None:
    raise ValueError(f"patch_attention: {reason}")
  length, heads = qkv.shape[1], qkv.shape[3]
  if block_heads is None:
    block_heads = 2 if heads % 2 == 0 else 1
  if not (_is_power_of_two(block_rows) and block_rows >= max(16, length)):
    raise ValueError(f"patch_attention: block_rows must be a power of two >= max(16, "
                     f"length={length}), got {block_rows}")
  if block_heads < 1 or heads % block_heads:
    raise ValueError(f"patch_attention: block_heads must divide heads={heads}, got "
                     f"{block_heads}")
  cfg = _Config(length=length, block_rows=block_rows, block_heads=block_heads,
                num_warps=num_warps, interpret=bool(interpret))
  return _patch_attention(qkv, cfg)
