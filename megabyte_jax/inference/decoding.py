"""Incremental (KV-cached) decoding of `Megabyte` and `ByteTransformer`.

A decoder turns one model into three pure functions over its parameters, which
`megabyte_jax.inference.generation` strings together into a jitted decoding loop:

  prefill(params, tokens)             runs the known bytes `tokens [batch, W]` (W static, W may
                                      be 0) in one pass and returns the state for position W;
  step(params, state, pos, prev)      next-byte logits `[batch, 256]` for window position `pos`,
                                      given `prev [batch]`, the byte at `pos - 1`;
  patch_step(params, state, pos, patch)   called once each time a patch is complete: `pos` is
                                      the position of the next patch's first byte, `patch
                                      [batch, P]` the bytes of the patch just completed;
  level_step(level, params, state, pos, unit)   (MEGABYTE with N > 2 levels) runs middle level
                                      `level` once at the start of each of its units.

`unit_sizes` lists the bytes per unit of every level the loop must step besides the
per-byte one (`(P,)` for two levels, `(1,)` for the byte transformer).

For MEGABYTE the state holds the global model's KV cache over patches (one entry per patch:
the global model runs once per completed patch), the local model's KV cache over the current
patch (P entries, restarted at each patch boundary) and the current patch's global output,
projected to the local width. For the byte transformer it is the one stack's KV cache over
`seq_len` bytes, and a patch is one byte. The paper's variants and deeper hierarchies add to
the state (see `MegabyteDecoder`).

The computations are those of the models' `__call__` (the same layers, parameters and order
of operations), split by position: `tests/test_generate.py` checks that cached logits equal
the full forward pass's.
"""

from __future__ import annotations

import re
from typing import Any, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from megabyte_jax.layers import fused_decode
from megabyte_jax.config import MegabyteConfig, TransformerConfig
from megabyte_jax.errors import InputError
from megabyte_jax.layers import (CACHE_AXES, ByteHead, CausalConvEncoder, KVCache,
                                 TransformerStack, byte_embedding, cross_patch_cache_len,
                                 init_stack_cache, make_norm)
from megabyte_jax.models.megabyte import (Megabyte, conv_encoder, global_spec, level_dim, level_name,
                                   level_spec, local_spec, patch_projection,
                                   project_to_children, shift_units)
from megabyte_jax.models.transformer import ByteTransformer, stack_spec

__all__ = ["ByteTransformerDecoder", "MegabyteDecoder", "cast_matmul_weights", "decoder_for",
           "state_logical_axes", "unbox_params"]

# Parameters that the models only ever use as `w.astype(compute dtype)` in a matmul: the
# attention and MLP kernels of every stack, and MEGABYTE's global-to-local projection (and
# the projections between the levels of deeper hierarchies, `_LEVEL_PROJECTION`).
_MATMUL_WEIGHTS = ("qkv_kernel", "out_kernel", "in_kernel", "global_to_local")
_LEVEL_PROJECTION = re.compile(r"^(global|level_\d+)_to_(level_\d+|local)$")
# Where `MegabyteDecoder.prepare` puts the local stack's weights laid out for the fused
# one-byte kernels (`fused_decode`), when they are used.
FUSED_LOCAL = "fused_local"


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
    matmul = name in _MATMUL_WEIGHTS or (
        isinstance(name, str) and _LEVEL_PROJECTION.match(name) is not None)
    if matmul and jnp.issubdtype(leaf.dtype, jnp.floating):
      return leaf.astype(dtype)
    return leaf
  return jax.tree_util.tree_map_with_path(cast, params)


def _embed(module: nn.Embed, table_params: Any, tokens: jax.Array) -> jax.Array:
  """Looks `tokens` up with the model's own `nn.Embed` (same dtype promotion)."""
  return module.apply({"params": table_params}, tokens)


class MegabyteDecoder:
  """Prefill and per-byte steps of a `Megabyte` model (see the module docstring).

  State: a dict with `global_cache` (KV caches over `seq_len / P` patches), `local_cache`
  (KV caches over the local patch; with `cross_patch` a ring of two patches, see
  `layers.cross_patch_cache_len`) and `g` (`[batch, P_local, local_dim]`, the current local
  patch's slices of its parent's output, projected to the local width, in the compute
  dtype). Deeper hierarchies add `mid_caches` (one per middle level, over its units within
  one parent unit) and `mid_g` (each middle level's projected parent slices); the
  convolutional encoder adds `conv_bytes` (`[batch, R]`, the R bytes before the current
  global patch that its receptive field reaches back to).
  """

  def __init__(self, config: MegabyteConfig):
    cfg = self.config = config
    self.patch_size, self.seq_len = cfg.patch_size, cfg.seq_len
    # Bytes per unit of every level but the local one (coarse to fine): the decoding loop
    # runs level l once per `unit_sizes[l]` bytes, the local model once per byte.
    self.unit_sizes = cfg.unit_sizes[:-1]
    self.local_patch_size = cfg.local_patch_size
    self.dtype, param_dtype = cfg.compute_dtype, cfg.parameter_dtype
    self.global_spec, self.local_spec = global_spec(cfg), local_spec(cfg)
    self.global_model = TransformerStack(self.global_spec)
    self.local_model = TransformerStack(self.local_spec)
    dg, dl = cfg.global_embed_dim, cfg.local_dim
    self.global_embed = byte_embedding(dg, cfg.init_std, self.dtype, param_dtype, "global_embed")
    self.patch_projection = (patch_projection(cfg) if cfg.patch_embed == "linear" else None)
    self.local_embed = byte_embedding(dl, cfg.init_std, self.dtype, param_dtype, "local_embed")
    self.head = ByteHead(dl, cfg.init_std, cfg.use_bias, param_dtype)
    self.local_final_norm = make_norm(self.local_spec)
    self.mid_specs = tuple(level_spec(cfg, l) for l in range(1, cfg.levels - 1))
    self.mid_models = tuple(TransformerStack(spec) for spec in self.mid_specs)
    self.level_embeds = {l: byte_embedding(level_dim(cfg, l) // cfg.unit_sizes[l], cfg.init_std,
                                           self.dtype, param_dtype, f"{level_name(cfg, l)}_embed")
                         for l in range(1, cfg.levels)}
    self.conv = conv_encoder(cfg) if cfg.conv_kernel_sizes else None
    self.conv_history = CausalConvEncoder.history(cfg.conv_kernel_sizes)
    # The fused one-byte local step serves the plain 2-level model only.
    self.fusable = cfg.levels == 2 and not cfg.cross_patch

  def prepare(self, params: Any, batch: int) -> Any:
    """The parameters as the decoding loop reads them, computed once before it: matmul
    weights cast to the compute dtype (`cast_matmul_weights`) and, when the fused local
    step applies (`fused_decode.use_fused`), the local stack laid out for its kernels."""
    params = cast_matmul_weights(params, self.dtype)
    if self.fusable and fused_decode.use_fused(self.local_spec, batch, self.patch_size):
      params = {**params, FUSED_LOCAL: fused_decode.prepare_stack(params["local_model"],
                                                                 self.local_spec)}
    return params

  def init_state(self, batch: int) -> dict:
    """An empty state (zero caches) for `batch` rows."""
    cfg = self.config
    local_len = (cross_patch_cache_len(self.local_spec) if cfg.cross_patch
                 else cfg.local_patch_size)
    state = {"global_cache": init_stack_cache(self.global_spec, batch, cfg.num_patches),
             "local_cache": init_stack_cache(self.local_spec, batch, local_len),
             "g": jnp.zeros((batch, cfg.local_patch_size, cfg.local_dim), self.dtype)}
    if self.mid_specs:
      sizes = cfg.level_patch_sizes
      state["mid_caches"] = tuple(init_stack_cache(spec, batch, sizes[l])
                                  for l, spec in enumerate(self.mid_specs))
      state["mid_g"] = tuple(jnp.zeros((batch, sizes[l], spec.dim), self.dtype)
                             for l, spec in enumerate(self.mid_specs))
    if self.conv is not None:
      state["conv_bytes"] = jnp.zeros((batch, self.conv_history), jnp.int32)
    return state

  def _project(self, params: Any, level: int, g: jax.Array) -> jax.Array:
    """`[batch, n, parent width]` outputs of level `level - 1` -> `[batch, n, S, width]`
    inputs of level `level` (S = `level_patch_sizes[level - 1]`): each output split into S
    slices, each projected, or the whole output projected once per slice (`global_to_local`
    with two levels; `megabyte.project_to_children`)."""
    cfg = self.config
    name = f"{level_name(cfg, level - 1)}_to_{level_name(cfg, level)}"
    return project_to_children(g, params[name], cfg.level_patch_sizes[level - 1],
                               cfg.global_to_local, self.dtype)

  def _set_child_slices(self, state: dict, level: int, slices: jax.Array) -> dict:
    """`state` with the projected parent slices of level `level` replaced."""
    if level == self.config.levels - 1:
      return {**state, "g": slices}
    mid_g = list(state["mid_g"])
    mid_g[level - 1] = slices
    return {**state, "mid_g": tuple(mid_g)}

  def _global_inputs(self, params: Any, tokens: jax.Array, start: Any) -> jax.Array:
    """Global-model input of whole patches: `[batch, n*P]` bytes at positions `start..` ->
    `[batch, n, global_dim]` (byte embeddings plus positions, concatenated per patch).

    With the convolutional encoder, `start` must be 0 (the encoder pads the window start
    with zeros, as in training); `_encoded_patch` serves later patches."""
    batch, length = tokens.shape
    pos = jax.lax.dynamic_slice_in_dim(params["global_pos"], start, length, axis=0)
    x = _embed(self.global_embed, params["global_embed"], tokens) + pos.astype(self.dtype)
    if self.conv is not None:
      x = self.conv.apply({"params": params["patch_encoder"]}, x)
    return self._patches(params, x.reshape(batch, length // self.patch_size, -1))

  def _patches(self, params: Any, x: jax.Array) -> jax.Array:
    """Concatenated byte embeddings `[batch, n, P * D_E]` -> global inputs `[batch, n,
    global_dim]` (through the `PatchProjection` with `patch_embed="linear"`)."""
    if self.patch_projection is None:
      return x
    return self.patch_projection.apply({"params": params["patch_embed"]}, x)

  def _encoded_patch(self, params: Any, history: jax.Array, patch: jax.Array, pos: Any
                     ) -> jax.Array:
    """Global input `[batch, 1, global_dim]` of the patch `patch [batch, P]` at window
    positions `pos-P .. pos-1` through the convolutional encoder, given the R bytes before
    it (`history [batch, R]`; those before the window start are zeroed, as in training)."""
    batch, r = history.shape
    tokens = jnp.concatenate([history, patch], axis=1)                 # [batch, R + P]
    positions = pos - self.patch_size - r + jnp.arange(r + self.patch_size)
    pos_emb = jnp.take(params["global_pos"], jnp.maximum(positions, 0), axis=0)
    x = _embed(self.global_embed, params["global_embed"], tokens) + pos_emb.astype(self.dtype)
    x = self.conv.apply({"params": params["patch_encoder"]}, x, valid=positions >= 0)
    return self._patches(params, x[:, r:].reshape(batch, 1, -1))

  def _level_inputs(self, params: Any, level: int, tokens: jax.Array, g: jax.Array
                    ) -> jax.Array:
    """Inputs of level `level` `[batch, n, S, width]` for the bytes `tokens [batch, n*U]`
    of n whole parent units, whose parent outputs are `g [batch, n, parent width]`: as in
    `Megabyte.__call__`, the previous unit's bytes (a pad at unit 0) + parent slice + position."""
    cfg = self.config
    name = level_name(cfg, level)
    batch, n = g.shape[:2]
    s, dim = cfg.level_patch_sizes[level - 1], level_dim(cfg, level)
    g = self._project(params, level, g)
    y = _embed(self.level_embeds[level], params[f"{name}_embed"], tokens)
    y = shift_units(y.reshape(batch, n, s, dim), params[f"{name}_pad"],
                    cfg.byte_shift == "sequence")
    return y + g + params[f"{name}_pos"].astype(self.dtype)

  def prefill(self, params: Any, tokens: jax.Array) -> dict:
    """Runs the known window `tokens [batch, W]` (W < seq_len, static) in one pass.

    The global model runs over patches `0 .. W // P` (the pad patch and every complete patch
    of the window). The plain 2-level model also runs the local model over the bytes of the
    last, incomplete patch (if any), so decoding may go on from position W; other variants
    prepare decoding from the start of that patch (position `W // P * P`; the loop re-feeds
    the known bytes after it): with cross-patch attention the local model runs over the
    complete patches to leave the keys and values of their last bytes in its cache.
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
    g_all, global_cache = self.global_model.apply(
        {"params": p["global_model"]}, x, cache=state["global_cache"], index=0)
    state = {**state, "global_cache": global_cache}
    if self.conv is not None and self.conv_history:
      known = jnp.pad(tokens[:, :complete * psize], ((0, 0), (self.conv_history, 0)))
      state["conv_bytes"] = known[:, known.shape[1] - self.conv_history:]
    g = self._project(p, 1, g_all[:, -1:])[:, 0]                        # [batch, S_1, D_1]
    state = self._set_child_slices(state, 1, g)
    if cfg.levels == 2 and not cfg.cross_patch:
      local_cache = state["local_cache"]
      if rest:
        known = tokens[:, complete * psize:]                             # [batch, rest]
        y = _embed(self.local_embed, p["local_embed"], known)
        first = jnp.broadcast_to(p["local_pad"].astype(self.dtype), (batch, 1, cfg.local_dim))
        if cfg.byte_shift == "sequence" and complete:   # the last byte of the patch before
          first = _embed(self.local_embed, p["local_embed"],
                         tokens[:, complete * psize - 1:complete * psize])
        y = jnp.concatenate([first, y[:, :-1]], axis=1)
        h = y + g[:, :rest] + p["local_pos"][:rest].astype(self.dtype)
        _, local_cache = self.local_model.apply(
            {"params": p["local_model"]}, h, cache=local_cache, index=0)
      return {**state, "local_cache": local_cache}
    if cfg.cross_patch and complete:
      # Every level over the complete patches, as in training; the local model fills its
      # cache with the last keys and values of the last complete patch.
      known, g = tokens[:, :complete * psize], g_all[:, :complete]
      for level in range(1, cfg.levels):
        h = self._level_inputs(p, level, known, g)                       # [batch, n, S, D]
        batch_, n, s, dim = h.shape
        if level < cfg.levels - 1:
          g = self.mid_models[level - 1].apply(
              {"params": p[f"{level_name(cfg, level)}_model"]}, h.reshape(batch_ * n, s, dim))
          g = g.reshape(batch_, n * s, dim)
        else:
          _, local_cache = self.local_model.apply(
              {"params": p["local_model"]}, h.reshape(batch_, n * s, dim),
              cache=state["local_cache"], index=0)
          state = {**state, "local_cache": local_cache}
    return state

  def step(self, params: Any, state: dict, pos: jax.Array, prev: jax.Array
           ) -> tuple[jax.Array, dict]:
    """Logits `[batch, 256]` of the byte at window position `pos`; `prev` is byte `pos-1`."""
    cfg, p = self.config, params
    i = pos % cfg.local_patch_size
    y = _embed(self.local_embed, p["local_embed"], prev)                    # [batch, D_L]
    first = pos == 0 if cfg.byte_shift == "sequence" else i == 0   # where the pad goes
    y = jnp.where(first, p["local_pad"].astype(self.dtype)[None], y)
    g_i = jax.lax.dynamic_index_in_dim(state["g"], i, axis=1, keepdims=False)
    local_pos = jax.lax.dynamic_index_in_dim(p["local_pos"], i, axis=0, keepdims=False)
    h = y + g_i + local_pos.astype(self.dtype)                             # [batch, D_L]
    # Cross-patch attention addresses its ring cache by window position.
    h, local_cache = self._local_step(p, h, state["local_cache"], pos if cfg.cross_patch else i)
    logits = self._logits(p, h)
    return logits, {**state, "local_cache": local_cache}

  def _local_step(self, p: Any, h: jax.Array, cache: Any, index: jax.Array
                  ) -> tuple[jax.Array, Any]:
    """The local model on one byte per row: `h [batch, D_L]` at patch position `index` (the
    window position with cross-patch attention) -> `(output [batch, D_L], updated local
    cache)`; the fused kernels when `prepare` laid the weights out for them, else the
    stack's own (XLA) path."""
    if FUSED_LOCAL in p:
      return fused_decode.stack_step(p[FUSED_LOCAL], self.local_spec, self.local_final_norm,
                                     h, cache, index)
    out, cache = self.local_model.apply({"params": p["local_model"]}, h[:, None],
                                        cache=cache, index=index)
    return out[:, 0], cache

  def patch_step(self, params: Any, state: dict, pos: jax.Array, patch: jax.Array) -> dict:
    """Runs the global model once on the patch just completed (`patch [batch, P]`, window
    positions `pos-P .. pos-1`), giving the global output of the patch starting at `pos`."""
    p = params
    if self.conv is None:
      x = self._global_inputs(p, patch, pos - self.patch_size)            # [batch, 1, P*D_G]
    else:
      x = self._encoded_patch(p, state["conv_bytes"], patch, pos)
      recent = jnp.concatenate([state["conv_bytes"], patch], axis=1)
      state = {**state, "conv_bytes": recent[:, recent.shape[1] - self.conv_history:]}
    g, global_cache = self.global_model.apply(
        {"params": p["global_model"]}, x, cache=state["global_cache"],
        index=pos // self.patch_size)
    g = self._project(p, 1, g)[:, 0]
    return self._set_child_slices({**state, "global_cache": global_cache}, 1, g)

  def level_step(self, level: int, params: Any, state: dict, pos: jax.Array,
                 unit: jax.Array) -> dict:
    """Runs middle level `level` (1 .. N-2) once, for its unit starting at window position
    `pos`; `unit [batch, U]` holds the bytes of the unit before it (ignored at the first
    unit of a parent unit, which takes the learned pad). Sets the projected slices of the
    next finer level."""
    cfg, p = self.config, params
    name, u = level_name(cfg, level), cfg.unit_sizes[level]
    j = (pos % cfg.unit_sizes[level - 1]) // u
    batch = unit.shape[0]
    y = _embed(self.level_embeds[level], p[f"{name}_embed"], unit).reshape(batch, -1)
    first = pos == 0 if cfg.byte_shift == "sequence" else j == 0   # where the pad goes
    y = jnp.where(first, p[f"{name}_pad"].astype(self.dtype)[None], y)     # [batch, D]
    g_j = jax.lax.dynamic_index_in_dim(state["mid_g"][level - 1], j, axis=1, keepdims=False)
    pos_j = jax.lax.dynamic_index_in_dim(p[f"{name}_pos"], j, axis=0, keepdims=False)
    h = (y + g_j + pos_j.astype(self.dtype))[:, None]                      # [batch, 1, D]
    out, cache = self.mid_models[level - 1].apply(
        {"params": p[f"{name}_model"]}, h, cache=state["mid_caches"][level - 1], index=j)
    caches = list(state["mid_caches"])
    caches[level - 1] = cache
    state = {**state, "mid_caches": tuple(caches)}
    return self._set_child_slices(state, level + 1, self._project(p, level + 1, out)[:, 0])

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
    self.unit_sizes = (1,)      # one-byte patches, no middle levels
    self.dtype = cfg.compute_dtype
    self.spec = stack_spec(cfg)
    self.model = TransformerStack(self.spec)
    self.embed = byte_embedding(cfg.dim, cfg.init_std, self.dtype, cfg.parameter_dtype, "embed")
    self.head = ByteHead(cfg.dim, cfg.init_std, cfg.use_bias, cfg.parameter_dtype)

  def prepare(self, params: Any, batch: int) -> Any:
    """The parameters as the decoding loop reads them: matmul weights cast to the compute
    dtype once (`cast_matmul_weights`)."""
    del batch
    return cast_matmul_weights(params, self.dtype)

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
        rows = None if x.shift is None else PartitionSpec("layers", "activation_batch",
                                                          None, None)
        return KVCache(k=spec, v=spec, shift=rows)
      return KVCache.logical_axes(shift=x.shift is not None)
    return PartitionSpec("activation_batch", *(None,) * (x.ndim - 1))
  return jax.tree_util.tree_map(axes, state, is_leaf=lambda x: isinstance(x, KVCache))

