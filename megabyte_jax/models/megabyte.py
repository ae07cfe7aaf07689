"""The multiscale MEGABYTE model (Yu et al., 2023, Section 2 and Figure 2).

Two levels by default (a global model over patches, a local model within each patch); the
paper's variants and deeper hierarchies are `MegabyteConfig` switches: a convolutional patch
encoder (`conv_kernel_sizes`), cross-patch attention in the local model (`cross_patch`) and
N > 2 levels (`patch_sizes`, `mid_dims`, `mid_layers`, `mid_heads`).

Levels are described once by `models.levels.level_specs`: level 0 (global) .. N-1 (local).
Level l >= 1 runs, within each unit of level l-1, over `LevelSpec.patch` units of
`LevelSpec.unit` bytes. Its parameters are named after the level: `{name}_embed`,
`{name}_pad`, `{name}_pos`, `{name}_model`, and `{parent}_to_{name}` for the projection of
the parent's outputs; with two levels these are exactly the paper's `local_*` and
`global_to_local`.

One forward pass serves training and decoding (the flax `examples/wmt` pattern): the
submodules are built in `setup()`, `__call__` runs a whole window (training, scoring), and
`prefill`, `decode_step`, `patch_step` and `level_step` (called with `apply(...,
method=...)`, see `inference.decoding`) run the same submodules and the same input code
(`_global_features`, `_patches`, `_unit_inputs`, `_project`) position by position.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from megabyte_jax.config import MegabyteConfig
from megabyte_jax.inputs import check_tokens
from megabyte_jax.layers import (ACT_SEQ, ByteHead, CausalConvEncoder, FusedStack, Mode,
                                 TransformerStack, byte_embedding, cross_patch_cache_len,
                                 dense_init, embedding_init, init_stack_cache, shift_right)
from megabyte_jax.models.levels import LevelSpec, level_specs


def conv_encoder(cfg: MegabyteConfig, name: Optional[str] = None) -> CausalConvEncoder:
  """The convolutional patch encoder of `cfg` (only used when `cfg.conv_kernel_sizes`)."""
  return CausalConvEncoder(cfg.global_embed_dim, cfg.conv_kernel_sizes, cfg.activation,
                           cfg.init_std, cfg.use_bias, cfg.compute_dtype, cfg.parameter_dtype,
                           name=name)


class PatchProjection(nn.Module):
  """MEGABYTE-pytorch's patch embedder (`patch_embed="linear"`): the concatenated byte
  embeddings of a patch `[..., P * D_E]` -> LayerNorm -> dense -> LayerNorm -> `[...,
  global_dim]`. Its dense layer lets the global model read wider byte embeddings than
  its own width allows (D_E = `local_dim` instead of `global_dim / P`), and the norms give
  the global model an input of unit scale whatever the embeddings' scale."""

  global_dim: int
  init_std: Optional[float] = None
  use_bias: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """`[..., P * D_E]` concatenated byte embeddings -> `[..., global_dim]`."""
    names = lambda axis: dict(  # logical axis names of a LayerNorm's scale and bias
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, (axis,)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axis,)))
    x = nn.LayerNorm(dtype=self.dtype, param_dtype=self.param_dtype, name="in_norm",
                     **names(None))(x)
    x = nn.DenseGeneral(self.global_dim, use_bias=self.use_bias, dtype=self.dtype,
                        param_dtype=self.param_dtype, name="proj",
                        kernel_init=nn.with_logical_partitioning(
                            dense_init(self.init_std), (None, "embed")),
                        bias_init=nn.with_logical_partitioning(
                            nn.initializers.zeros, ("embed",)))(x)
    return nn.LayerNorm(dtype=self.dtype, param_dtype=self.param_dtype, name="out_norm",
                        **names("embed"))(x)


def patch_projection(cfg: MegabyteConfig, name: Optional[str] = None) -> PatchProjection:
  """The `PatchProjection` of `cfg` (used when `cfg.patch_embed == "linear"`)."""
  return PatchProjection(cfg.global_dim, cfg.init_std, cfg.use_bias, cfg.compute_dtype,
                         cfg.parameter_dtype, name=name)


def project_to_children(g: jax.Array, w: jax.Array, s: int, mode: str, dtype) -> jax.Array:
  """A level's outputs `g [batch, n, width]` -> its children's inputs `[batch, n, S, child
  width]` with the projection `w` (`global_to_local` with two levels): "slice" (the paper)
  cuts each output into S slices and projects each by the shared `w [width / S, child]`;
  "full" projects the whole output once per child position, `w [width, S, child]`."""
  if mode == "full":
    return jnp.einsum("bkg,gpl->bkpl", g, w.astype(dtype))
  g = g.reshape(g.shape[0], g.shape[1], s, g.shape[2] // s)
  return jnp.einsum("bkpg,gl->bkpl", g, w.astype(dtype))


def previous_units(units: jax.Array, s: int, sequence: bool) -> tuple[jax.Array, jax.Array]:
  """Each unit's input bytes: the unit before it. `units [batch, N, U]` (N units of U bytes,
  in whole parent units of `s`) -> `(previous [batch, N, U], pad [N] bool)`, where `pad`
  marks the units that take the level's learned pad instead (their `previous` is 0): unit 0
  of every parent unit (the paper's `byte_shift="patch"`), or with `sequence`
  (`byte_shift="sequence"`) only unit 0 of the window, so unit 0 of a parent unit reads the
  last unit of the parent unit before."""
  n = units.shape[1]
  previous = shift_right(units, jnp.zeros((), units.dtype), axis=1)
  position = jnp.arange(n)
  pad = position == 0 if sequence else position % s == 0
  return previous, pad


def unit_inputs(previous: jax.Array, pad_mask: jax.Array, slots: jax.Array, embed: nn.Embed,
                pad: jax.Array, pos: Optional[jax.Array], dtype: Any,
                dropout: Optional[nn.Dropout] = None) -> jax.Array:
  """A level's input before its parent's slice: `where(pad_mask, pad, embed(previous)) +
  pos[slots]`, where `embed(previous)` concatenates the byte embeddings of a unit.

  Args:
    previous: int bytes `[..., m, U]` of the unit before each of m units.
    pad_mask: bool, broadcastable to `[..., m]`: units that take the learned `pad [dim]`.
    slots: int `[m]`, each unit's position within its parent unit (row of `pos [S, dim]`;
      unused when `pos` is None: a model without learned positions).
    embed: the level's bound byte embedding (`[256, dim / U]`).
    dropout: embedding dropout, applied to the byte embeddings when given (training).

  Returns:
    `[..., m, dim]` in `dtype`. For byte levels (U = 1) without dropout it is computed as
    one matmul of a two-hot matrix (the previous byte, or pad row 256, plus position row
    257 + slot) against the table `[embedding; pad; pos]`: the same sum with one rounding
    instead of two in bf16, whose pad and position gradients come out of the matmul's weight
    gradient. Summing them over every patch instead made XLA lay the local model's
    activations out position-major on GPU, with a transpose around every matmul (about 5 ms
    of the reference step on an H100 with the norm sums that `layers.fold_norm` removes,
    BENCHMARKS.md, session 5).
  """
  u = previous.shape[-1]
  dim = pad.shape[-1]
  if u == 1 and dropout is None:
    parts = [embed.embedding, pad[None]] + ([] if pos is None else [pos])
    table = jnp.concatenate(parts, axis=0).astype(dtype)             # [257 (+ S), dim]
    ids = jnp.where(pad_mask, 256, previous[..., 0].astype(jnp.int32))
    two_hot = jax.nn.one_hot(ids, table.shape[0], dtype=dtype)       # [..., m, rows]
    if pos is not None:
      two_hot = two_hot + jax.nn.one_hot(257 + slots, table.shape[0], dtype=dtype)
    return jnp.einsum("...r,rd->...d", two_hot, table, precision=jax.lax.Precision.HIGHEST)
  y = embed(previous).reshape(previous.shape[:-1] + (dim,))                  # [..., m, dim]
  if dropout is not None:
    y = dropout(y, deterministic=False)
  y = jnp.where(pad_mask[..., None], pad.astype(dtype), y)
  if pos is None:
    return y
  # pos[slots] as a one-hot matmul (exact): its gradient is a matmul, not a scatter-add.
  rows = jax.nn.one_hot(slots, pos.shape[0], dtype=dtype)
  return y + jnp.einsum("...s,sd->...d", rows, pos.astype(dtype),
                        precision=jax.lax.Precision.HIGHEST)


def init_decode_state(cfg: MegabyteConfig, batch: int) -> dict:
  """An empty decoding state (zero caches) of `Megabyte(cfg)` for `batch` rows.

  `global_cache`: the global stack's KV caches over `seq_len / P` patches; `local_cache`:
  the local stack's over one local patch (with `cross_patch` a ring of two patches,
  `layers.cross_patch_cache_len`); `g` `[batch, S_local, local_dim]`: the current local
  patch's slices of its parent's outputs, projected. Deeper hierarchies add `mid_caches`
  (one per middle level, over its units within one parent unit) and `mid_g`; the
  convolutional encoder adds `conv_bytes` `[batch, R]`, the R bytes before the current
  patch that its receptive field reaches back to.
  """
  levels, dtype = level_specs(cfg), cfg.compute_dtype
  local = levels[-1]
  local_len = cross_patch_cache_len(local.stack) if cfg.cross_patch else local.patch
  state = {"global_cache": init_stack_cache(levels[0].stack, batch, cfg.num_patches),
           "local_cache": init_stack_cache(local.stack, batch, local_len),
           "g": jnp.zeros((batch, local.patch, local.width), dtype)}
  if len(levels) > 2:
    state["mid_caches"] = tuple(init_stack_cache(l.stack, batch, l.patch) for l in levels[1:-1])
    state["mid_g"] = tuple(jnp.zeros((batch, l.patch, l.width), dtype) for l in levels[1:-1])
  if cfg.conv_kernel_sizes:
    state["conv_bytes"] = jnp.zeros((batch, CausalConvEncoder.history(cfg.conv_kernel_sizes)),
                                    jnp.int32)
  return state


class Megabyte(nn.Module):
  """MEGABYTE: a global transformer over patches and a local transformer within each patch.

  `apply(variables, tokens)` maps int byte ids `[batch, T]` (T a multiple of `patch_size`,
  at most `seq_len`) to float32 logits `[batch, T, 256]`, where `logits[:, t]` predicts
  `tokens[:, t]` from `tokens[:, :t]`: the model shifts internally (a learned pad patch for
  the global model, a learned pad byte for the local model), so the loss is plain
  cross-entropy of the logits against the tokens.

  With N > 2 levels every middle level works like the local model one scale up: its input
  at unit j of a parent unit is the concatenated byte embeddings of unit j-1 (a learned pad
  at j = 0), plus the parent's output slice j projected to its width, plus a learned
  position; its output conditions the next, finer level the same way.

  Decoding (`inference.generation.generate`) calls `prefill`, `decode_step`, `patch_step`
  and `level_step` with `apply(..., method=...)`; they share every submodule and input
  function with `__call__`.
  """

  config: MegabyteConfig

  def setup(self):
    cfg = self.config
    levels = level_specs(cfg)
    dtype, param_dtype = cfg.compute_dtype, cfg.parameter_dtype
    init = embedding_init(cfg.init_std, cfg.embed_init_std)
    de = cfg.global_embed_dim
    # The global level: byte embeddings + positions, (encoded,) concatenated per patch.
    self.global_embed = byte_embedding(de, cfg.init_std, dtype, param_dtype, None,
                                       cfg.embed_init_std)
    learned = cfg.positions == "learned"      # else no position tables at any level
    self.global_pos = self.param("global_pos", nn.with_logical_partitioning(
        init, (None, "embed")), (cfg.seq_len, de), param_dtype) if learned else None
    if cfg.conv_kernel_sizes:                                        # Section 2.3.1
      self.patch_encoder = conv_encoder(cfg)
    if cfg.patch_embed == "linear":
      self.patch_embed = patch_projection(cfg)
    self.global_pad = self.param("global_pad", nn.with_logical_partitioning(
        init, ("embed",)), (cfg.global_dim,), param_dtype)
    self.global_model = TransformerStack(levels[0].stack)
    # Each finer level: the projection of its parent's outputs, its byte embedding, pad,
    # positions and stack. The last level's final norm is folded into the byte head.
    for level in levels[1:]:
      name, s, dim = level.name, level.patch, level.width
      parent_width = levels[level.index - 1].width
      if cfg.global_to_local == "full":   # each child position: its own projection
        w = self.param(f"{level.parent}_to_{name}", nn.with_logical_partitioning(
            dense_init(cfg.init_std, out_axis=(1, 2)), (None, None, "embed")),
            (parent_width, s, dim), param_dtype)
      else:                               # the paper: slices, one shared projection
        w = self.param(f"{level.parent}_to_{name}", nn.with_logical_partitioning(
            dense_init(cfg.init_std), (None, "embed")), (parent_width // s, dim), param_dtype)
      setattr(self, f"{level.parent}_to_{name}", w)
      setattr(self, f"{name}_embed", byte_embedding(dim // level.unit, cfg.init_std, dtype,
                                                    param_dtype, None, cfg.embed_init_std))
      setattr(self, f"{name}_pad", self.param(
          f"{name}_pad", nn.with_logical_partitioning(init, ("embed",)), (dim,), param_dtype))
      setattr(self, f"{name}_pos", self.param(
          f"{name}_pos", nn.with_logical_partitioning(init, (None, "embed")), (s, dim),
          param_dtype) if learned else None)
      setattr(self, f"{name}_model", TransformerStack(
          level.stack, fold_final_norm=level.index == len(levels) - 1))
    self.head = ByteHead(cfg.local_dim, cfg.init_std, cfg.use_bias, param_dtype)
    self.embed_dropout = nn.Dropout(cfg.embed_dropout)

  # ------------------------------------------------------------------ shared by every mode

  @property
  def levels(self) -> tuple[LevelSpec, ...]:
    """The model's levels, coarse to fine (`models.levels.level_specs`)."""
    return level_specs(self.config)

  def _global_features(self, tokens: jax.Array, start: Any = 0,
                       positions: Optional[jax.Array] = None,
                       valid: Optional[jax.Array] = None, deterministic: bool = True
                       ) -> jax.Array:
    """Byte features of the global model `[batch, L, D_E]` for bytes `tokens [batch, L]`:
    embeddings + learned positions (of window positions `start .. start + L - 1`, or
    `positions [L]`; none with `positions != "learned"`), embedding dropout, and the convolutional encoder when configured
    (`valid [L]`: rows before the window start, zeroed as the encoder's padding there)."""
    cfg = self.config
    x = self.global_embed(tokens)
    if self.global_pos is not None:
      if positions is None:
        pos = jax.lax.dynamic_slice_in_dim(self.global_pos, start, tokens.shape[1], axis=0)
      else:
        pos = jnp.take(self.global_pos, positions, axis=0)
      x = x + pos.astype(cfg.compute_dtype)
    x = self.embed_dropout(x, deterministic=deterministic)
    if cfg.conv_kernel_sizes:
      x = self.patch_encoder(x, valid=valid)
    return x

  def _patches(self, x: jax.Array) -> jax.Array:
    """Byte features `[batch, n * P, D_E]` -> the global model's patch vectors `[batch, n,
    global_dim]`: concatenated per patch, through the `PatchProjection` when configured."""
    batch, length, _ = x.shape
    x = x.reshape(batch, length // self.config.patch_size, -1)
    if self.config.patch_embed == "linear":
      x = self.patch_embed(x)
    return x

  def _project(self, level: LevelSpec, g: jax.Array) -> jax.Array:
    """Outputs of `level`'s parent `[batch, n, parent width]` -> `[batch, n, S, width]`."""
    w = getattr(self, f"{level.parent}_to_{level.name}")
    return project_to_children(g, w, level.patch, self.config.global_to_local,
                               self.config.compute_dtype)

  def _unit_inputs(self, level: LevelSpec, previous: jax.Array, pad_mask: jax.Array,
                   slots: jax.Array, deterministic: bool = True) -> jax.Array:
    """`unit_inputs` with `level`'s embedding, pad and positions (see there)."""
    cfg = self.config
    dropout = self.embed_dropout if cfg.embed_dropout and not deterministic else None
    return unit_inputs(previous, pad_mask, slots, getattr(self, f"{level.name}_embed"),
                       getattr(self, f"{level.name}_pad"), getattr(self, f"{level.name}_pos"),
                       cfg.compute_dtype, dropout)

  def _level_inputs(self, level: LevelSpec, tokens: jax.Array, g: jax.Array,
                    deterministic: bool = True) -> jax.Array:
    """Inputs `[batch, n, S, width]` of `level` for the bytes `tokens [batch, n * U_parent]`
    of n whole parent units, whose outputs are `g [batch, n, parent width]`: the previous
    unit's bytes (or the pad) + position, plus the parent's projected slice."""
    batch, n = g.shape[:2]
    s, u = level.patch, level.unit
    previous, pad = previous_units(tokens.reshape(batch, n * s, u), s,
                                   self.config.byte_shift == "sequence")
    slots = jnp.arange(n * s) % s
    y = self._unit_inputs(level, previous, pad, slots, deterministic)     # [batch, n*S, D]
    return y.reshape(batch, n, s, level.width) + self._project(level, g)

  def _logits(self, h: jax.Array, final_norm: Any) -> jax.Array:
    """Float32 logits `[..., 256]` of the local model's normalized output `h [..., D_L]`
    (the final norm's affine `final_norm` folded into the head)."""
    cfg = self.config
    return self.head(h, self.local_embed if cfg.tie_embeddings else None, norm=final_norm)

  # ---------------------------------------------------------------------- a whole window

  def __call__(self, tokens: jax.Array, deterministic: bool = True) -> jax.Array:
    """Returns next-byte logits `[batch, T, 256]` for byte ids `tokens` `[batch, T]`."""
    cfg = self.config
    check_tokens(tokens, cfg.patch_size, cfg.seq_len)
    batch, length = tokens.shape
    x = self._patches(self._global_features(tokens, deterministic=deterministic))
    x = shift_right(x, self.global_pad, axis=1)    # patch k now holds patch k-1's bytes
    x = nn.with_logical_constraint(x, ACT_SEQ)
    g = self.global_model(x, deterministic)                          # [batch, K, width]
    final_norm = None
    for level in self.levels[1:]:          # coarse to fine; g: the parent's outputs
      h = self._level_inputs(level, tokens, g, deterministic)       # [batch, n, S, D]
      _, n, s, dim = h.shape
      stack = getattr(self, f"{level.name}_model")
      if level.stack.cross_patch:   # whole sequences: attention also sees the previous patch
        h = stack(h.reshape(batch, n * s, dim), deterministic)
      else:                         # parent units as batch rows
        h = stack(h.reshape(batch * n, s, dim), deterministic)
      if level.index == len(self.levels) - 1:
        h, final_norm = h
      g = h.reshape(batch, n * s, dim)
    return self._logits(g, final_norm).reshape(batch, length, cfg.vocab_size)

  # ------------------------------------------------------------------------------ decoding

  def _set_child_slices(self, state: dict, level: int, slices: jax.Array) -> dict:
    """`state` with the projected parent slices of level `level` replaced."""
    if level == len(self.levels) - 1:
      return {**state, "g": slices}
    mid_g = list(state["mid_g"])
    mid_g[level - 1] = slices
    return {**state, "mid_g": tuple(mid_g)}

  def prefill(self, tokens: jax.Array) -> dict:
    """Runs the known window `tokens [batch, W]` (W < seq_len, static; may be 0) in one pass
    and returns the decoding state (`init_decode_state`) for the byte at W.

    The global model runs over patches `0 .. W // P` (the pad patch and every complete patch
    of the window). The plain 2-level model also runs the local model over the bytes of the
    last, incomplete patch (if any), so decoding may go on from position W; other variants
    prepare decoding from the start of that patch (position `W // P * P`; the loop re-feeds
    the known bytes after it): with cross-patch attention the local model runs over the
    complete patches to leave the keys and values of their last bytes in its cache.
    """
    cfg, levels = self.config, self.levels
    batch, width = tokens.shape
    psize = cfg.patch_size
    complete, rest = divmod(width, psize)
    state = init_decode_state(cfg, batch)
    x = jnp.broadcast_to(self.global_pad.astype(cfg.compute_dtype), (batch, 1, cfg.global_dim))
    if complete:
      known = self._patches(self._global_features(tokens[:, :complete * psize]))
      x = jnp.concatenate([x, known], axis=1)
    g_all, global_cache = self.global_model(x, cache=state["global_cache"], mode=Mode.PREFILL)
    state = {**state, "global_cache": global_cache}
    if "conv_bytes" in state:
      history = state["conv_bytes"].shape[1]
      known = jnp.pad(tokens[:, :complete * psize], ((0, 0), (history, 0)))
      state["conv_bytes"] = known[:, known.shape[1] - history:]
    state = self._set_child_slices(state, 1, self._project(levels[1], g_all[:, -1:])[:, 0])
    local = levels[-1]
    if len(levels) == 2 and not cfg.cross_patch:
      if rest:   # the local model over the known bytes of the last, incomplete patch
        start = complete * psize
        carried = cfg.byte_shift == "sequence" and complete > 0   # the byte before the patch
        first = tokens[:, start - 1:start] if carried else jnp.zeros((batch, 1), tokens.dtype)
        previous = jnp.concatenate([first, tokens[:, start:width - 1]], axis=1)
        slots = jnp.arange(rest)
        pad = (slots == 0) & (not carried)
        h = self._unit_inputs(local, previous[..., None], pad, slots) + state["g"][:, :rest]
        _, local_cache = self.local_model(h, cache=state["local_cache"], mode=Mode.PREFILL)
        state = {**state, "local_cache": local_cache}
      return state
    if cfg.cross_patch and complete:
      # Every level over the complete patches, as in training; the local model fills its
      # cache with the last keys and values of the last complete patch.
      known, g = tokens[:, :complete * psize], g_all[:, :complete]
      for level in levels[1:]:
        h = self._level_inputs(level, known, g)                          # [batch, n, S, D]
        _, n, s, dim = h.shape
        stack = getattr(self, f"{level.name}_model")
        if level is local:
          _, local_cache = stack(h.reshape(batch, n * s, dim), cache=state["local_cache"],
                                 mode=Mode.PREFILL)
          state = {**state, "local_cache": local_cache}
        else:
          g = stack(h.reshape(batch * n, s, dim)).reshape(batch, n * s, dim)
    return state

  def decode_step(self, state: dict, pos: jax.Array, prev: jax.Array,
                  fused: Optional[FusedStack] = None) -> tuple[jax.Array, dict]:
    """Logits `[batch, 256]` of the byte at window position `pos`, given `prev [batch]`, the
    byte at `pos - 1`, and the updated state. `fused`: the local stack's weights laid out
    for the fused one-byte kernels (`inference.decoding`), or None for XLA's ops."""
    cfg = self.config
    local = self.levels[-1]
    i = pos % local.patch
    first = pos == 0 if cfg.byte_shift == "sequence" else i == 0    # where the pad goes
    h = self._unit_inputs(local, prev[:, None, None], first[None], i[None])   # [batch, 1, D]
    h = h + jax.lax.dynamic_slice_in_dim(state["g"], i, 1, axis=1)
    # Cross-patch attention addresses its ring cache by window position.
    (h, final_norm), local_cache = self.local_model(
        h, cache=state["local_cache"], index=pos if cfg.cross_patch else i, mode=Mode.DECODE,
        fused=fused)
    return self._logits(h[:, 0], final_norm), {**state, "local_cache": local_cache}

  def patch_step(self, state: dict, pos: jax.Array, patch: jax.Array) -> dict:
    """Runs the global model once on the patch just completed (`patch [batch, P]`, window
    positions `pos-P .. pos-1`), giving the global output of the patch starting at `pos`."""
    psize = self.config.patch_size
    if "conv_bytes" not in state:
      x = self._patches(self._global_features(patch, pos - psize))
    else:   # the encoder sees the R bytes before the patch (zero before the window start)
      history = state["conv_bytes"]
      r = history.shape[1]
      positions = pos - psize - r + jnp.arange(r + psize)
      x = self._global_features(jnp.concatenate([history, patch], axis=1),
                                positions=jnp.maximum(positions, 0), valid=positions >= 0)
      x = self._patches(x[:, r:])
      recent = jnp.concatenate([history, patch], axis=1)
      state = {**state, "conv_bytes": recent[:, recent.shape[1] - r:]}
    g, global_cache = self.global_model(x, cache=state["global_cache"], index=pos // psize,
                                        mode=Mode.DECODE)
    state = {**state, "global_cache": global_cache}
    return self._set_child_slices(state, 1, self._project(self.levels[1], g)[:, 0])

  def level_step(self, level: int, state: dict, pos: jax.Array, unit: jax.Array) -> dict:
    """Runs middle level `level` (1 .. N-2) once, for its unit starting at window position
    `pos`; `unit [batch, U]` holds the bytes of the unit before it (ignored where the pad
    goes). Sets the projected slices of the next finer level."""
    cfg, levels = self.config, self.levels
    spec = levels[level]
    j = (pos % levels[level - 1].unit) // spec.unit
    first = pos == 0 if cfg.byte_shift == "sequence" else j == 0
    h = self._unit_inputs(spec, unit[:, None], first[None], j[None])        # [batch, 1, D]
    h = h + jax.lax.dynamic_slice_in_dim(state["mid_g"][level - 1], j, 1, axis=1)
    out, cache = getattr(self, f"{spec.name}_model")(
        h, cache=state["mid_caches"][level - 1], index=j, mode=Mode.DECODE)
    caches = list(state["mid_caches"])
    caches[level - 1] = cache
    state = {**state, "mid_caches": tuple(caches)}
    return self._set_child_slices(state, level + 1, self._project(levels[level + 1], out)[:, 0])
