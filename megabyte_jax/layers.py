"""Transformer building blocks shared by every model in the package.

One `TransformerStack` (pre-norm blocks of causal self-attention and an MLP, then a final
norm) serves the global and local models of MEGABYTE and the baseline byte transformer.

Every parameter carries logical axis names (`nn.with_logical_partitioning`), so the mapping
onto a device mesh lives in one table of rules outside the model:

  vocab   256 byte ids           embed  model width          mlp   MLP hidden width
  heads   attention heads        kv     per-head width       (None: never sharded)

Activations are annotated with `activation_*` names the same way; without rules in scope
(`nn.logical_axis_rules`) the annotations do nothing.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from megabyte_jax.config import resolve_dtype

Initializer = Callable[..., jax.Array]

# Logical names of activation axes, used with `nn.with_logical_constraint`.
ACT_SEQ = ("activation_batch", "activation_length", "activation_embed")


def embedding_init(init_std: Optional[float]) -> Initializer:
  """Initializer for embedding tables and learned positions/pads."""
  if init_std is not None:
    return nn.initializers.truncated_normal(stddev=init_std)
  return nn.initializers.normal(stddev=0.02)


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
    activation, norm, dropout, dtype, param_dtype, init_std, use_bias, attention_impl:
      as in `MegabyteConfig`.
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

  @property
  def mlp_dim(self) -> int:
    """Hidden width of the MLP (2/3 of it per branch for SwiGLU, rounded up to 8)."""
    hidden = self.mlp_ratio * self.dim
    if self.activation == "swiglu":
      hidden = 8 * math.ceil(2 * hidden / 3 / 8)
    return hidden


def make_norm(spec: StackSpec, name: Optional[str] = None) -> nn.Module:
  """Returns the configured norm (statistics in float32, output in the compute dtype)."""
  dtype, param_dtype = resolve_dtype(spec.dtype), resolve_dtype(spec.param_dtype)
  scale_init = nn.with_logical_partitioning(nn.initializers.ones, ("embed",))
  if spec.norm == "rmsnorm":
    return nn.RMSNorm(epsilon=1e-6, dtype=dtype, param_dtype=param_dtype,
                      scale_init=scale_init, name=name)
  return nn.LayerNorm(epsilon=1e-5, dtype=dtype, param_dtype=param_dtype,
                      use_bias=spec.use_bias, scale_init=scale_init,
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
                      name=name)


def choose_attention_impl(requested: str, dtype: Any, head_dim: int, length: int) -> str:
  """Resolves `attention_impl="auto"` to "cudnn" or "xla".

  cuDNN's fused attention needs a GPU, half precision and a head width that is a multiple of
  8 up to 128; for very short sequences (e.g. a local patch of 8 bytes) XLA's plain
  attention is as fast and avoids the kernel launch overhead, so "auto" keeps XLA there.
  """
  if requested != "auto":
    return requested
  on_gpu = jax.default_backend() == "gpu"
  half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
  if on_gpu and half and head_dim % 8 == 0 and head_dim <= 128 and length >= 128:
    return "cudnn"
  return "xla"


class CausalSelfAttention(nn.Module):
  """Multi-head causal self-attention over `[batch, length, dim]`.

  Attention itself goes through `jax.nn.dot_product_attention`, which runs cuDNN's flash
  attention on GPU when `attention_impl` selects it.
  """

  spec: StackSpec

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
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
    # qkv: [batch, length, 3, heads, head_dim]
    qkv = jnp.einsum("btd,dchk->btchk", x, w_qkv.astype(dtype))
    if spec.use_bias:
      b_qkv = self.param("qkv_bias", nn.with_logical_partitioning(
          nn.initializers.zeros, (None, "heads", "kv")), (3, heads, head_dim), param_dtype)
      qkv = qkv + b_qkv.astype(dtype)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    impl = choose_attention_impl(spec.attention_impl, dtype, head_dim, x.shape[1])
    # out: [batch, length, heads, head_dim]
    out = jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=impl)
    y = jnp.einsum("bthk,hkd->btd", out, w_out.astype(dtype))
    if spec.use_bias:
      b_out = self.param("out_bias", nn.with_logical_partitioning(
          nn.initializers.zeros, ("embed",)), (dim,), param_dtype)
      y = y + b_out.astype(dtype)
    return y


class Mlp(nn.Module):
  """Position-wise MLP `[..., dim] -> [..., dim]` (GELU, ReLU or SwiGLU)."""

  spec: StackSpec

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
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
    h = jnp.einsum("...d,dnf->...nf", x, w_in.astype(dtype))  # [..., n_in, mlp]
    if spec.use_bias:
      h = h + self.param("in_bias", nn.with_logical_partitioning(
          nn.initializers.zeros, (None, "mlp")), (n_in, spec.mlp_dim), param_dtype).astype(dtype)
    if spec.activation == "swiglu":
      h = jax.nn.silu(h[..., 0, :]) * h[..., 1, :]
    elif spec.activation == "relu":
      h = jax.nn.relu(h[..., 0, :])
    else:
      h = jax.nn.gelu(h[..., 0, :])
    y = jnp.einsum("...f,fd->...d", h, w_out.astype(dtype))
    if spec.use_bias:
      y = y + self.param("out_bias", nn.with_logical_partitioning(
          nn.initializers.zeros, ("embed",)), (spec.dim,), param_dtype).astype(dtype)
    return y


class Block(nn.Module):
  """A pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

  spec: StackSpec

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
    spec = self.spec
    h = CausalSelfAttention(spec, name="attn")(make_norm(spec, "attn_norm")(x))
    x = x + nn.Dropout(spec.dropout)(h, deterministic=deterministic)
    h = Mlp(spec, name="mlp")(make_norm(spec, "mlp_norm")(x))
    x = x + nn.Dropout(spec.dropout)(h, deterministic=deterministic)
    return nn.with_logical_constraint(x, ACT_SEQ)


class TransformerStack(nn.Module):
  """`spec.layers` causal blocks and a final norm over `[batch, length, dim]`.

  Causal over the length axis: output t depends on inputs 0..t only.
  """

  spec: StackSpec

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
    x = x.astype(resolve_dtype(self.spec.dtype))
    for i in range(self.spec.layers):
      x = Block(self.spec, name=f"block_{i}")(x, deterministic)
    return make_norm(self.spec, "final_norm")(x)


def byte_embedding(dim: int, init_std: Optional[float], dtype: Any, param_dtype: Any,
                   name: str) -> nn.Embed:
  """A 256-row byte embedding table `[vocab, embed]` with logical axis names."""
  return nn.Embed(256, dim, dtype=dtype, param_dtype=param_dtype, name=name,
                  embedding_init=nn.with_logical_partitioning(embedding_init(init_std),
                                                              ("vocab", "embed")))


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
  def __call__(self, h: jax.Array, embedding: Optional[nn.Embed] = None) -> jax.Array:
    h = h.astype(jnp.float32)
    if embedding is not None:
      return jnp.einsum("...d,vd->...v", h, embedding.embedding.astype(jnp.float32))
    kernel = self.param("kernel", nn.with_logical_partitioning(
        dense_init(self.init_std), ("embed", "vocab")), (self.dim, 256), self.param_dtype)
    logits = jnp.einsum("...d,dv->...v", h, kernel.astype(jnp.float32))
    if self.use_bias:
      logits = logits + self.param("bias", nn.with_logical_partitioning(
          nn.initializers.zeros, ("vocab",)), (256,), self.param_dtype).astype(jnp.float32)
    return logits
