"""Bytes in and out of a model: the byte embedding (`ByteEmbed`), the learned right shift
(`shift_right`), the convolutional patch encoder (Section 2.3.1) and the 256-way `ByteHead`."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from megabyte_jax.layers.initializers import dense_init, embedding_init
from megabyte_jax.layers.norms import fold_norm


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
