"""FP8 matmuls with direct (current) per-tensor scaling: `fp8_einsum`, and `dense_einsum`, a
block's dense projection in the compute dtype or, with `StackSpec.fp8`, in FP8.

`fp8_einsum(equation, x, w, dtype)` computes `einsum(equation, x, w)` with both operands
quantized to float8 e4m3 (3 mantissa bits, largest value 448) and, in the backward pass, the
output gradient quantized to float8 e5m2 (2 mantissa bits, largest value 57344: the range
gradients need), so the forward product and both backward products (the input gradient,
"dgrad", and the weight gradient, "wgrad") are FP8 matmuls that accumulate in float32. Each
operand t is quantized with its own scale, computed from t itself at every call:

    scale = max(amax(|t|), AMAX_FLOOR) / fp8_max,   q = clip(t / scale, -fp8_max, fp8_max)

and the product of the quantized operands is multiplied by the two scales, in `dtype`. The
quantized forward operands are the saved residuals, so the backward pass reuses them (one
byte per element) instead of the compute-dtype activations.

Why direct scaling, not flax's delayed scaling (`nn.Fp8DotGeneralOp`, scales from an amax
history carried between steps): a direct scale is a function of the operand alone, so there
is no scaling state: nothing to add to the train state, checkpoints, sharding rules or
gradient accumulation, and a resumed run computes exactly what an uninterrupted one does by
construction. Its cost is one amax reduction (a read of the operand) per operand per matmul.

How it lowers: the product is a `dot_general` of the two float8 arrays (StableHLO shows
`f8E4M3FN` and, backward, `f8E5M2` operands) whose result is multiplied by the product of
the two scales. XLA's GPU compiler turns it into an FP8 GEMM (cuBLASLt's
`__cublas$lt$matmul$f8`, or a Triton GEMM where its autotuner prefers one), forward, dgrad
(e5m2 x e4m3) and wgrad (e4m3 x e5m2) alike, with the scale folded into the GEMM; with the
dot's result in bf16 the GEMM also writes bf16 directly, where a float32 result left a float32
matrix and a conversion kernel behind it (`_scaled_dot`). The "dequantize, then dot" form
(convert the float8 operand back and multiply it by its scale before a bf16 or float32 dot,
as flax writes it) compiled to a bf16 or float32 GEMM instead. (Compiled HLO, jax 0.11.2 on
an H200.) On CPU XLA emulates the float8 dot (products of float8 values are exact in
float32, accumulated in float32), so the tests check the numerics there.

Numerics: e4m3 rounds each element to within 2^-4 (6.25%) of its value, e5m2 to within
2^-3; a product of two rounded operands is off by a few percent root-mean-square, and a dot
product of many such terms by about as much relative to its size (independent errors add
like the terms themselves): about 3.7% of the result's norm forward and 6% for the
gradients, for Gaussian operands (`tests/test_fp8.py`).
Scales are per tensor, over every row of the batch: a row's result depends slightly on the
other rows (through amax), and decoding one position does not reproduce that position's
logits in a full forward pass bit for bit, only to FP8 rounding.
"""

from __future__ import annotations

import functools
import string
from typing import Any

import jax
import jax.numpy as jnp

from megabyte_jax.config import resolve_dtype
from megabyte_jax.layers.spec import StackSpec

__all__ = ["AMAX_FLOOR", "BACKWARD_DTYPE", "FORWARD_DTYPE", "dense_einsum", "fp8_einsum",
           "quantize"]

# Activations and weights in the forward pass; the output gradient in the backward pass.
FORWARD_DTYPE = jnp.float8_e4m3fn
BACKWARD_DTYPE = jnp.float8_e5m2
# The smallest amax a scale is computed from: an all-zero operand quantizes to zeros (not
# 0/0), and scales stay normal float32 numbers.
AMAX_FLOOR = 2.0 ** -100


def quantize(t: jax.Array, fp8_dtype: Any) -> tuple[jax.Array, jax.Array]:
  """`t` (any shape, any float dtype) as `(q, scale)`: `q = clip(t / scale)` in `fp8_dtype`
  (same shape) and the float32 scalar `scale = max(amax(|t|), AMAX_FLOOR) / fp8_max`, so
  `q * scale` approximates `t` and the largest element maps to `fp8_max`."""
  fp8_max = float(jnp.finfo(fp8_dtype).max)
  amax = jnp.max(jnp.abs(t)).astype(jnp.float32)
  scale = jnp.maximum(amax, AMAX_FLOOR) / fp8_max
  q = jnp.clip(t.astype(jnp.float32) / scale, -fp8_max, fp8_max).astype(fp8_dtype)
  return q, scale


def _scaled_dot(equation: str, a: jax.Array, b: jax.Array, scale_a: jax.Array,
                scale_b: jax.Array, dtype: Any) -> jax.Array:
  """`einsum(equation, a, b)` of float8 operands, accumulated in float32, times both scales,
  in `dtype`.

  The product leaves the dot in `dtype` when that has float32's exponent range (bfloat16,
  float32), and is then scaled: on GPU the FP8 GEMM writes it in that dtype with the scale
  applied in its epilogue. A float16 product could overflow (448 * 448 * the contraction
  length), so for float16 the product is float32, scaled, then cast. The precision is
  DEFAULT explicitly, so `jax_default_matmul_precision` (the tests set "highest") does not
  reach the float8 dot.
  """
  dtype = jnp.dtype(dtype)
  wide = dtype if dtype in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float32)) else jnp.float32
  out = jnp.einsum(equation, a, b, preferred_element_type=wide,
                   precision=jax.lax.Precision.DEFAULT)
  return (out * (scale_a * scale_b).astype(wide)).astype(dtype)


@functools.lru_cache(maxsize=None)
def _equations(equation: str, x_ndim: int, w_ndim: int) -> tuple[str, str, str]:
  """`(forward, dgrad, wgrad)` einsum equations of `equation` "X,W->O" for operands of these
  ranks, the ellipsis spelled out: "X,W->O", "O,W->X" and "X,O->W".

  Raises:
    ValueError: for an equation that is not "X,W->O", has an ellipsis in W (or in only one
      of X and O), repeats an index within an operand, or has an index in only one of X, W
      and O (a sum over, or a broadcast along, one operand alone: not a plain product).
  """
  spec = equation.replace(" ", "")
  if spec.count(",") != 1 or spec.count("->") != 1:
    raise ValueError(f"fp8_einsum needs an equation 'X,W->O', got {equation!r}")
  inputs, out = spec.split("->")
  lhs, rhs = inputs.split(",")
  if "..." in rhs or ("..." in lhs) != ("..." in out):
    raise ValueError(f"fp8_einsum allows an ellipsis in X and O only, got {equation!r}")
  if "..." in lhs:
    n = x_ndim - (len(lhs) - 3)
    free = [c for c in string.ascii_letters if c not in spec][:n]
    if n < 0 or len(free) < n:
      raise ValueError(f"fp8_einsum: {equation!r} does not fit an operand of rank {x_ndim}")
    lhs, out = lhs.replace("...", "".join(free)), out.replace("...", "".join(free))
  if len(lhs) != x_ndim or len(rhs) != w_ndim:
    raise ValueError(f"fp8_einsum: {equation!r} does not fit operands of ranks "
                     f"{x_ndim} and {w_ndim}")
  terms = (lhs, rhs, out)
  for index in set(lhs + rhs + out):
    if any(term.count(index) > 1 for term in terms) or sum(index in t for t in terms) < 2:
      raise ValueError(f"fp8_einsum needs every index in exactly two or three of X, W, O and "
                       f"once in each, got {equation!r}")
  return f"{lhs},{rhs}->{out}", f"{out},{rhs}->{lhs}", f"{lhs},{out}->{rhs}"


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _fp8_einsum(static: tuple, x: jax.Array, w: jax.Array) -> jax.Array:
  """`fp8_einsum` with `static = (equations, x dtype, w dtype, output dtype)`."""
  return _fp8_einsum_fwd(static, x, w)[0]


def _fp8_einsum_fwd(static: tuple, x: jax.Array, w: jax.Array) -> tuple[jax.Array, tuple]:
  (forward, _, _), _, _, dtype = static
  xq, x_scale = quantize(x, FORWARD_DTYPE)
  wq, w_scale = quantize(w, FORWARD_DTYPE)
  return _scaled_dot(forward, xq, wq, x_scale, w_scale, dtype), (xq, x_scale, wq, w_scale)


def _fp8_einsum_bwd(static: tuple, residuals: tuple, g: jax.Array) -> tuple[jax.Array,
                                                                             jax.Array]:
  (_, dgrad, wgrad), x_dtype, w_dtype, _ = static
  xq, x_scale, wq, w_scale = residuals
  gq, g_scale = quantize(g, BACKWARD_DTYPE)
  dx = _scaled_dot(dgrad, gq, wq, g_scale, w_scale, x_dtype)
  dw = _scaled_dot(wgrad, xq, gq, x_scale, g_scale, w_dtype)
  return dx, dw


_fp8_einsum.defvjp(_fp8_einsum_fwd, _fp8_einsum_bwd)


def fp8_einsum(equation: str, x: jax.Array, w: jax.Array, dtype: Any = None) -> jax.Array:
  """`jnp.einsum(equation, x, w)` as FP8 matmuls with direct per-tensor scaling.

  Forward: `x` and `w` quantized to e4m3 (`quantize`), their product accumulated in float32,
  times both scales, cast to `dtype`. Backward (a `jax.custom_vjp`): the output gradient
  quantized to e5m2, and both gradients computed as FP8 products with the saved e4m3
  operands (straight through the quantization), in the dtypes of `x` and `w`.

  Args:
    equation: "X,W->O" with every index in two or three of X, W and O (a plain product:
      e.g. "btd,dchk->btchk" or "...f,fd->...d"); an ellipsis may stand for leading axes
      of X and O.
    x: the activations, any float dtype.
    w: the weights, any float dtype.
    dtype: the output dtype; default `x.dtype`.

  Returns:
    The product, of the shape `jnp.einsum(equation, x, w)` gives, in `dtype`.

  Raises:
    ValueError: for an equation that is not such a product (see `_equations`).
  """
  equations = _equations(equation, x.ndim, w.ndim)
  dtype = jnp.dtype(x.dtype if dtype is None else dtype)
  return _fp8_einsum((equations, jnp.dtype(x.dtype), jnp.dtype(w.dtype), dtype), x, w)


def dense_einsum(equation: str, x: jax.Array, kernel: jax.Array, spec: StackSpec
                 ) -> jax.Array:
  """A block's dense projection `einsum(equation, x, kernel)` in the compute dtype
  `spec.dtype`: the kernel cast to it, then an ordinary einsum, or with `spec.fp8` an FP8
  one (`fp8_einsum`, which quantizes the cast kernel, so kernels already cast once for
  decoding give the same numbers)."""
  dtype = resolve_dtype(spec.dtype)
  kernel = kernel.astype(dtype)
  if spec.fp8:
    return fp8_einsum(equation, x, kernel, dtype)
  return jnp.einsum(equation, x, kernel)
