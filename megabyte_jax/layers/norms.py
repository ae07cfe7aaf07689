"""The configured norm (`Norm`, `make_norm`) and the folding of its affine part into the next
dense kernel (`fold_norm`)."""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from megabyte_jax.config import resolve_dtype
from megabyte_jax.layers.spec import StackSpec


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
