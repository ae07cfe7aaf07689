"""Incremental (KV-cached) decoding of `Megabyte` and `ByteTransformer`.

A decoder turns one model into three pure functions over its parameters, which
`megabyte_jax.generation` strings together into a jitted decoding loop:

  prefill(params, tokens)             runs the known bytes `tokens [batch, W]` (W static, W may
                                      be 0) in one pass and returns the state for position W;
  step(params, state, pos, prev)      next-byte logits `[batch, 256]` for window position `pos`,
                                      given `prev [batch]`, the byte at `pos - 1`;
  patch_step(params, state, pos, patch)   called once each time a patch is complete: `pos` is
                                      the position of the next patch's first byte, `patch
                                      [batch, P]` the bytes of the patch just completed.

For MEGABYTE the state holds the global model's KV cache over patches (one entry per patch:
the global model runs once per completed patch), the local model's KV cache over the current
patch (P entries, restarted at each patch boundary) and the current patch's global output,
projected to the local width. For the byte transformer it is the one stack's KV cache over
`seq_len` bytes, and a patch is one byte.

The computations are those of the models' `__call__` (the same layers, parameters and order
of operations), split by position: `tests/test_generate.py` checks that cached logits equal
the full forward pass's.
"""

from __future__ import annotations

from typing import Any, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from megabyte_jax.config import MegabyteConfig, TransformerConfig
from megabyte_jax.errors import InputError
from megabyte_jax.layers import (CACHE_AXES, ByteHead, KVCache, TransformerStack,
                                 byte_embedding, init_stack_cache)
from megabyte_jax.megabyte import Megabyte, global_spec, local_spec
from megabyte_jax.transformer import ByteTransformer, stack_spec

__all__ = ["ByteTransformerDecoder", "MegabyteDecoder", "cast_matmul_weights", "decoder_for",
           "state_logical_axes", "unbox_params"]

# Parameters that the models only ever use as `w.astype(compute dtype)` in a matmul: the
# attention and MLP kernels of every stack, and MEGABYTE's global-to-local projection.
_MATMUL_WEIGHTS = ("qkv_kernel", "out_kernel", "in_kernel", "global_to_local")


def unbox_params(variables: Any) -> Any:
  """The plain parameter tree of `variables` (`{"params": ...}` as `model.init` returns it,
  boxed or not, or the parameters themselves)."""
  variables = nn.meta.unbox(variables)
  if isinstance(variables, dict) and "params" in variables:
    return variables["params"]
  return variables


def cast_matmul_weights(params: Any, dtype: Any) -> Any:
  """`params` with its matmul weights (see `_MATMUL_WEIGHTS`) cast to the compute `dtype`.

  The models cast these weights to the compute dtype at every use, so casting them once
  gives the same numbers; a decoding loop that runs the model once per byte then reads
  bf16 weights instead of converting float32 master weights on every step (which costs
  three times the weight traffic of the matmuls themselves). Other parameters (norms,
  embeddings, the float32 output head) are left as they are.
  """
  def cast(path, leaf):
    name = getattr(path[-1], "key", None)
    if name in _MATMUL_WEIGHTS and jnp.issubdtype(leaf.dtype, jnp.floating):
      return leaf.astype(dtype)
    return leaf
  return jax.tree_util.tree_map_with_path(cast, params)


def _embed(module: nn.Embed, table_params: Any, tokens: jax.Array) -> jax.Array:
  """Looks `tokens` up with the model's own `nn.Embed` (same dtype promotion)."""
  return module.apply({"params": table_params}, tokens)


class MegabyteDecoder:
  """Prefill and per-byte steps of a `Megabyte` model (see the module docstring).

  State: a dict with `global_cache` (KV caches over `seq_len / P` patches), `local_cache`
  (KV caches over P bytes) and `g` (`[batch, P, local_dim]`, the current patch's global
  output after `global_to_local`, in the compute dtype).
  """

  def __init__(self, config: MegabyteConfig):
    cfg = self.config = config
    self.patch_size, self.seq_len = cfg.patch_size, cfg.seq_len
    self.dtype, param_dtype = cfg.compute_dtype, cfg.parameter_dtype
    self.global_spec, self.local_spec = global_spec(cfg), local_spec(cfg)
    self.global_model = TransformerStack(self.global_spec)
    self.local_model = TransformerStack(self.local_spec)
    dg, dl = cfg.byte_global_dim, cfg.local_dim
    self.global_embed = byte_embedding(dg, cfg.init_std, self.dtype, param_dtype, "global_embed")
    self.local_embed = byte_embedding(dl, cfg.init_std, self.dtype, param_dtype, "local_embed")
    self.head = ByteHead(dl, cfg.init_std, cfg.use_bias, param_dtype)

  def init_state(self, batch: int) -> dict:
    """An empty state (zero caches) for `batch` rows."""
    cfg = self.config
    return {"global_cache": init_stack_cache(self.global_spec, batch, cfg.num_patches),
            "local_cache": init_stack_cache(self.local_spec, batch, cfg.patch_size),
            "g": jnp.zeros((batch, cfg.patch_size, cfg.local_dim), self.dtype)}

  def _global_to_local(self, params: Any, g: jax.Array) -> jax.Array:
    """`[batch, n, global_dim]` global outputs -> `[batch, n, P, local_dim]` local inputs."""
    cfg = self.config
    g = g.reshape(g.shape[0], g.shape[1], cfg.patch_size, cfg.byte_global_dim)
    return jnp.einsum("bkpg,gl->bkpl", g, params["global_to_local"].astype(self.dtype))

  def _global_inputs(self, params: Any, tokens: jax.Array, start: Any) -> jax.Array:
    """Global-model input of whole patches: `[batch, n*P]` bytes at positions `start..` ->
    `[batch, n, global_dim]` (byte embeddings plus positions, concatenated per patch)."""
    batch, length = tokens.shape
    pos = jax.lax.dynamic_slice_in_dim(params["global_pos"], start, length, axis=0)
    x = _embed(self.global_embed, params["global_embed"], tokens) + pos.astype(self.dtype)
    return x.reshape(batch, length // self.patch_size, self.config.global_dim)

  def prefill(self, params: Any, tokens: jax.Array) -> dict:
    """Runs the known window `tokens [batch, W]` (W < seq_len, static) in one pass.

    The global model runs over patches `0 .. W // P` (the pad patch and every complete patch
    of the window), the local model over the bytes of the last, incomplete patch (if any).
    """
    cfg, p = self.config, params
    batch, width = tokens.shape
    psize = cfg.patch_size
    complete, rest = divmod(width, psize)
    state = self.init_state(batch)
    pad = jnp.broadcast_to(p["global_pad"].astype(self.dtype), (batch, 1, cfg.global_dim))
    x = pad
    if complete:
      x = jnp.concatenate([pad, self._global_inputs(p, tokens[:, :complete * psize], 0)], 1)
    g, global_cache = self.global_model.apply(
        {"params": p["global_model"]}, x, cache=state["global_cache"], index=0)
    g = self._global_to_local(p, g[:, -1:])[:, 0]                      # [batch, P, D_L]
    local_cache = state["local_cache"]
    if rest:
      known = tokens[:, complete * psize:]                             # [batch, rest]
      y = _embed(self.local_embed, p["local_embed"], known)
      local_pad = jnp.broadcast_to(p["local_pad"].astype(self.dtype), (batch, 1, cfg.local_dim))
      y = jnp.concatenate([local_pad, y[:, :-1]], axis=1)
      h = y + g[:, :rest] + p["local_pos"][:rest].astype(self.dtype)
      _, local_cache = self.local_model.apply(
          {"params": p["local_model"]}, h, cache=local_cache, index=0)
    return {"global_cache": global_cache, "local_cache": local_cache, "g": g}

  def step(self, params: Any, state: dict, pos: jax.Array, prev: jax.Array
           ) -> tuple[jax.Array, dict]:
    """Logits `[batch, 256]` of the byte at window position `pos`; `prev` is byte `pos-1`."""
    cfg, p = self.config, params
    i = pos % cfg.patch_size
    y = _embed(self.local_embed, p["local_embed"], prev)                    # [batch, D_L]
    y = jnp.where(i == 0, p["local_pad"].astype(self.dtype)[None], y)
    g_i = jax.lax.dynamic_index_in_dim(state["g"], i, axis=1, keepdims=False)
    local_pos = jax.lax.dynamic_index_in_dim(p["local_pos"], i, axis=0, keepdims=False)
    h = (y + g_i + local_pos.astype(self.dtype))[:, None]                  # [batch, 1, D_L]
    h, local_cache = self.local_model.apply(
        {"params": p["local_model"]}, h, cache=state["local_cache"], index=i)
    logits = self._logits(p, h[:, 0])
    return logits, {**state, "local_cache": local_cache}

  def patch_step(self, params: Any, state: dict, pos: jax.Array, patch: jax.Array) -> dict:
    """Runs the global model once on the patch just completed (`patch [batch, P]`, window
    positions `pos-P .. pos-1`), giving the global output of the patch starting at `pos`."""
    p = params
    x = self._global_inputs(p, patch, pos - self.patch_size)              # [batch, 1, P*D_G]
    g, global_cache = self.global_model.apply(
        {"params": p["global_model"]}, x, cache=state["global_cache"],
        index=pos // self.patch_size)
    g = self._global_to_local(p, g)[:, 0]
    return {**state, "global_cache": global_cache, "g": g}

  def _logits(self, p: Any, h: jax.Array) -> jax.Array:
    if self.config.tie_embeddings:
      embed = self.local_embed.bind({"params": p["local_embed"]})
      return self.head.apply({"params": {}}, h, embed)
    return self.head.apply({"params": p["head"]}, h)


class ByteTransformerDecoder:
  """Prefill and per-byte steps of a `ByteTransformer` (a patch is one byte here).

  State: a dict with `cache`, the KV caches of the stack over `seq_len` bytes.
  """

  def __init__(self, config: TransformerConfig):
    cfg = self.config = config
    self.patch_size, self.seq_len = 1, cfg.seq_len
    self.dtype = cfg.compute_dtype
    self.spec = stack_spec(cfg)
    self.model = TransformerStack(self.spec)
    self.embed = byte_embedding(cfg.dim, cfg.init_std, self.dtype, cfg.parameter_dtype, "embed")
    self.head = ByteHead(cfg.dim, cfg.init_std, cfg.use_bias, cfg.parameter_dtype)

  def init_state(self, batch: int) -> dict:
    """An empty state (zero caches) for `batch` rows."""
    return {"cache": init_stack_cache(self.spec, batch, self.config.seq_len)}

  def prefill(self, params: Any, tokens: jax.Array) -> dict:
    """Runs the known window `tokens [batch, W]` (W < seq_len, static) in one pass."""
    p = params
    batch, width = tokens.shape
    state = self.init_state(batch)
    if not width:
      return state
    x = _embed(self.embed, p["embed"], tokens)
    pad = jnp.broadcast_to(p["pad"].astype(x.dtype), (batch, 1, self.config.dim))
    x = jnp.concatenate([pad, x[:, :-1]], axis=1) + p["pos"][:width].astype(self.dtype)
    _, cache = self.model.apply({"params": p["model"]}, x, cache=state["cache"], index=0)
    return {"cache": cache}

  def step(self, params: Any, state: dict, pos: jax.Array, prev: jax.Array
           ) -> tuple[jax.Array, dict]:
    """Logits `[batch, 256]` of the byte at window position `pos`; `prev` is byte `pos-1`."""
    p = params
    x = _embed(self.embed, p["embed"], prev)                                 # [batch, dim]
    x = jnp.where(pos == 0, p["pad"].astype(x.dtype)[None], x)
    pos_emb = jax.lax.dynamic_index_in_dim(p["pos"], pos, axis=0, keepdims=False)
    x = (x + pos_emb.astype(self.dtype))[:, None]
    h, cache = self.model.apply({"params": p["model"]}, x, cache=state["cache"], index=pos)
    if self.config.tie_embeddings:
      logits = self.head.apply({"params": {}}, h[:, 0],
                               self.embed.bind({"params": p["embed"]}))
    else:
      logits = self.head.apply({"params": p["head"]}, h[:, 0])
    return logits, {"cache": cache}

  def patch_step(self, params: Any, state: dict, pos: jax.Array, patch: jax.Array) -> dict:
    """Nothing to do: the byte transformer has no global model."""
    del params, pos, patch
    return state


Decoder = Union[MegabyteDecoder, ByteTransformerDecoder]


def decoder_for(model: nn.Module) -> Decoder:
  """The decoder of a `Megabyte` or `ByteTransformer` module.

  Raises:
    InputError: for any other kind of model.
  """
  if isinstance(model, Megabyte):
    return MegabyteDecoder(model.config)
  if isinstance(model, ByteTransformer):
    return ByteTransformerDecoder(model.config)
  raise InputError(f"cannot decode a {type(model).__name__}: generate() supports Megabyte and "
                   f"ByteTransformer models")


def state_logical_axes(state: Any) -> Any:
  """Logical axis names for every array of a decoder state, for sharding rules.

  KV caches get `CACHE_AXES` (`activation_batch`, `cache_length`, `heads`, `kv`; after a
  leading `layers` axis for the stacked caches of `scan_layers` models); other
  arrays (MEGABYTE's current global output) are `activation_batch` followed by unsharded
  axes. Returns a tree of `PartitionSpec`s of logical names, as `nn.get_partition_spec` does
  for parameters: map it onto a mesh with `nn.logical_to_mesh_sharding(spec, mesh, rules)`.
  """
  def axes(x):
    if isinstance(x, KVCache):
      if x.k.ndim == len(CACHE_AXES) + 1:    # stacked caches of `scan_layers`
        spec = PartitionSpec("layers", *CACHE_AXES)
        return KVCache(k=spec, v=spec)
      return KVCache.logical_axes()
    return PartitionSpec("activation_batch", *(None,) * (x.ndim - 1))
  return jax.tree_util.tree_map(axes, state, is_leaf=lambda x: isinstance(x, KVCache))

