"""The transformer block stack shared by every model: `Mlp`, `Block` (pre-norm attention and
MLP) and `TransformerStack` (blocks and a final norm; remat and `nn.scan` options)."""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from megabyte_jax.config import resolve_dtype
from megabyte_jax.layers.attention import CausalSelfAttention
from megabyte_jax.layers.fp8 import dense_einsum
from megabyte_jax.layers.initializers import dense_init
from megabyte_jax.layers.kvcache import KVCache
from megabyte_jax.layers.norms import Norm, fold_norm, make_norm
from megabyte_jax.layers import fused_decode
from megabyte_jax.layers.spec import ACT_SEQ, Mode, StackSpec
from megabyte_jax.layers.token_shift import previous_shift_rows, token_shift


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
    h = dense_einsum("...d,dnf->...nf", x, w_in, spec)       # [..., n_in, mlp]
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
    y = dense_einsum("...f,fd->...d", h, w_out, spec)        # [..., dim]
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

  `mode` as in `CausalSelfAttention`: in PREFILL and DECODE mode the block takes its layer's
  `cache` and returns `(output, updated cache)`.
  """

  spec: StackSpec

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = True,
               cache: Optional[KVCache] = None, index: Any = None,
               mode: Mode = Mode.TRAIN) -> Any:
    """Returns `[batch, length, dim]` in TRAIN mode, else `(that, new cache)`."""
    spec = self.spec
    mode.check_cache(cache)
    attn = CausalSelfAttention(spec, name="attn")
    prev = previous_shift_rows(cache, index, mode) if spec.token_shift else None
    x_in = x
    shift = lambda v, row: v
    if spec.token_shift:
      shift = lambda v, row: token_shift(v, None if prev is None else prev[:, row])
    normed, affine = Norm(spec, name="attn_norm")(shift(x, 0))   # affine folded into QKV
    if mode is Mode.TRAIN:
      h = attn(normed, norm=affine)
    else:
      h, kv = attn(normed, cache.replace(shift=None), index, norm=affine, mode=mode)
    x = x + nn.Dropout(spec.dropout)(h, deterministic=deterministic)
    x_mid = x
    normed, affine = Norm(spec, name="mlp_norm")(shift(x, 1))
    h = Mlp(spec, name="mlp")(normed, norm=affine)
    x = x + nn.Dropout(spec.dropout)(h, deterministic=deterministic)
    x = nn.with_logical_constraint(x, ACT_SEQ)
    if mode is Mode.TRAIN:
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

  `deterministic` and `mode` are attributes so that they stay static inside the scan; a
  traced `index` is broadcast to every layer.
  """

  spec: StackSpec
  deterministic: bool = True
  mode: Mode = Mode.TRAIN

  @nn.compact
  def __call__(self, x: jax.Array, cache: Optional[KVCache], index: Any = None) -> Any:
    block = Block(self.spec, name="block")
    if self.mode is Mode.TRAIN:
      return block(x, self.deterministic), None
    return block(x, self.deterministic, cache=cache, index=index, mode=self.mode)


@flax.struct.dataclass
class FusedStack:
  """A stack's weights laid out for the fused one-byte decoding kernels
  (`fused_decode.prepare_stack`), and whether to run them in Pallas' interpreter."""

  layers: Any
  interpret: bool = flax.struct.field(pytree_node=False, default=False)


class TransformerStack(nn.Module):
  """`spec.layers` causal blocks and a final norm over `[batch, length, dim]`.

  Causal over the length axis: output t depends on inputs 0..t only.

  Incremental decoding (`mode`, see `CausalSelfAttention`): with `cache`
  (`init_stack_cache(spec, batch, max_len)`, one `KVCache` per layer), PREFILL runs the known
  window from position 0 with the training kernels and DECODE the positions `index ..
  index+length-1` against the cache; both return `(output, updated cache)`. In DECODE mode
  `fused` (a `FusedStack`) runs each block's one-position step in the fused Pallas kernels
  of `fused_decode` instead of XLA's ops: the same block, computed by other kernels.

  `spec.remat` rematerializes each block in training (`remat_policy`); `spec.scan_layers`
  runs the blocks with `nn.scan` over stacked parameters (`blocks/block/...`, leading axis
  named "layers") instead of `block_0 .. block_{L-1}`, and the cache has a leading layer axis.
  Both compute the same function.
  """

  spec: StackSpec
  # Return `(x_hat, (scale, bias))` of the final norm (`Norm`) instead of applying it, so the
  # caller folds it into its output projection (`fold_norm`).
  fold_final_norm: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = True,
               cache: Optional[Any] = None, index: Any = None, mode: Mode = Mode.TRAIN,
               fused: Optional[FusedStack] = None) -> Any:
    """Returns `[batch, length, dim]` in TRAIN mode, else `(that, new caches)` (with
    `fold_final_norm`, `(x_hat, (scale, bias))` of the final norm instead of its output)."""
    spec = self.spec
    mode.check_cache(cache)
    x = x.astype(resolve_dtype(spec.dtype))
    policy = remat_policy(spec.remat) if mode is Mode.TRAIN else None  # decoding keeps nothing
    if fused is not None:
      if mode is not Mode.DECODE or x.shape[1] != 1:
        raise ValueError("the fused kernels decode one position at a time (DECODE mode)")
      h, new_cache = x[:, 0], []
      for layer, layer_cache in zip(fused.layers, cache):
        h, layer_cache = fused_decode.block_step(layer, spec, h, layer_cache, index,
                                                 interpret=fused.interpret)
        new_cache.append(layer_cache)
      x, new_cache = h[:, None], tuple(new_cache)
    elif spec.scan_layers:
      body = _ScanBody
      if policy is not None:
        body = nn.remat(_ScanBody, policy=policy, prevent_cse=False)
      scan = nn.scan(body, variable_axes={"params": 0}, split_rngs={"params": True,
                                                                    "dropout": True},
                     in_axes=(0, nn.broadcast), length=spec.layers,
                     metadata_params={nn.PARTITION_NAME: "layers"})
      x, new_cache = scan(spec, deterministic, mode, name="blocks")(
          x, cache, index if mode is Mode.DECODE else None)
    else:
      block_cls = Block
      if policy is not None:   # argument 2 (after self and x) is the static `deterministic`
        block_cls = nn.remat(Block, policy=policy, static_argnums=(2,))
      new_cache = []
      for i in range(spec.layers):
        block = block_cls(spec, name=f"block_{i}")
        if mode is Mode.TRAIN:
          x = block(x, deterministic)
        else:
          x, layer_cache = block(x, deterministic, cache=cache[i], index=index, mode=mode)
          new_cache.append(layer_cache)
      new_cache = tuple(new_cache)
    if self.fold_final_norm:
      y = Norm(spec, name="final_norm")(x)
    else:
      y = make_norm(spec, "final_norm")(x)
    return y if mode is Mode.TRAIN else (y, new_cache)


def _fold_block(block: dict, spec: StackSpec) -> dict:
  """One block's parameters (unstacked) with its two norms folded into the kernels after
  them (`fold_norm`, as the block computes it: the kernel scaled in its own dtype, the
  norm's bias through the kernel plus the layer's bias) and the norms left as identities;
  the four matmul kernels cast to the compute dtype."""
  dtype = resolve_dtype(spec.dtype)
  block = jax.tree_util.tree_map(lambda v: v, block)   # a copy of the dicts
  for norm_name, layer, kernel_name, bias_name in (("attn_norm", "attn", "qkv_kernel",
                                                    "qkv_bias"),
                                                   ("mlp_norm", "mlp", "in_kernel",
                                                    "in_bias")):
    norm, params = dict(block[norm_name]), dict(block[layer])
    kernel, shift = fold_norm(params[kernel_name], (norm["scale"], norm.get("bias")))
    params[kernel_name] = kernel
    if shift is not None:
      params[bias_name] = shift + params[bias_name]   # the block's order: fold, then bias
    norm["scale"] = jnp.ones_like(norm["scale"])
    if "bias" in norm:
      norm["bias"] = jnp.zeros_like(norm["bias"])
    block[norm_name], block[layer] = norm, params
  for layer, name in (("attn", "qkv_kernel"), ("attn", "out_kernel"), ("mlp", "in_kernel"),
                      ("mlp", "out_kernel")):
    block[layer][name] = block[layer][name].astype(dtype)
  return block


def decoding_params(stack_params: Any, spec: StackSpec) -> Any:
  """A stack's parameters as decoding reads them: every block's norms folded into the
  kernels after them and its matmul kernels cast to the compute dtype, once, before a
  decoding loop that runs the stack once per byte.

  The stack computes the same numbers from them as from `stack_params` (`Block` folds each
  norm and casts each kernel at every call, rounding once, exactly as done here; applying an
  identity norm afterwards and casting a kernel already in the compute dtype change
  nothing), but a step then reads half-width kernels instead of folding and converting
  float32 master weights, three times the weight traffic of the matmuls themselves.

  An `fp8` stack (`StackSpec.fp8`) takes the same parameters: its blocks quantize the
  folded kernel in the compute dtype at every call (`fp8.dense_einsum`), so kernels cast
  here give the numbers of the training forward pass.
  """
  stack_params = dict(stack_params)
  if "blocks" in stack_params:   # scan_layers: stacked blocks, a leading layer axis
    blocks = stack_params["blocks"]["block"]
    stack_params["blocks"] = {"block": jax.vmap(lambda b: _fold_block(b, spec))(blocks)}
    return stack_params
  for i in range(spec.layers):
    stack_params[f"block_{i}"] = _fold_block(stack_params[f"block_{i}"], spec)
  return stack_params


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
