"""The multiscale MEGABYTE model (Yu et al., 2023, Section 2 and Figure 2).

Two levels by default (a global model over patches, a local model within each patch); the
paper's variants and deeper hierarchies are `MegabyteConfig` switches: a convolutional patch
encoder (`conv_kernel_sizes`), cross-patch attention in the local model (`cross_patch`) and
N > 2 levels (`patch_sizes`, `mid_dims`, `mid_layers`, `mid_heads`).

Levels are numbered 0 (global) .. N-1 (local). Level l >= 1 runs, within each unit of level
l-1, over `level_patch_sizes[l-1]` units of `unit_sizes[l]` bytes. Its parameters are named
after the level (`level_name`): `{name}_embed`, `{name}_pad`, `{name}_pos`, `{name}_model`,
and `{parent}_to_{name}` for the projection of the parent's output; with two levels these
are exactly the paper's `local_*` and `global_to_local`.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from megabyte_jax.config import MegabyteConfig
from megabyte_jax.inputs import check_tokens
from megabyte_jax.layers import (ACT_SEQ, ByteHead, CausalConvEncoder, StackSpec,
                                 TransformerStack, byte_embedding, dense_init, embedding_init,
                                 shift_right)


def global_spec(cfg: MegabyteConfig) -> StackSpec:
  """The `StackSpec` of the global transformer (width P * D_G over patches)."""
  return StackSpec(dim=cfg.global_dim, layers=cfg.global_layers, heads=cfg.global_heads,
                   head_dim=cfg.global_attention_head_dim, **_shared(cfg))


def local_spec(cfg: MegabyteConfig) -> StackSpec:
  """The `StackSpec` of the local transformer (width D_L within each patch; with
  `cross_patch`, over whole sequences cut into patches of the local patch size)."""
  extra = {}
  if cfg.cross_patch:
    extra = dict(cross_patch=cfg.cross_patch, patch=cfg.local_patch_size)
  return StackSpec(dim=cfg.local_dim, layers=cfg.local_layers, heads=cfg.local_heads,
                   head_dim=cfg.local_attention_head_dim, **_shared(cfg), **extra)


def level_name(cfg: MegabyteConfig, level: int) -> str:
  """The parameter prefix of a level: "global" (0), "level_1" .. "level_{N-2}", "local"."""
  if level == 0:
    return "global"
  return "local" if level == cfg.levels - 1 else f"level_{level}"


def level_dim(cfg: MegabyteConfig, level: int) -> int:
  """The model width of a level."""
  if level == 0:
    return cfg.global_dim
  return cfg.local_dim if level == cfg.levels - 1 else cfg.mid_dims[level - 1]


def level_spec(cfg: MegabyteConfig, level: int) -> StackSpec:
  """The `StackSpec` of level `level` (0: `global_spec`, N-1: `local_spec`)."""
  if level == 0:
    return global_spec(cfg)
  if level == cfg.levels - 1:
    return local_spec(cfg)
  dim, heads = cfg.mid_dims[level - 1], cfg.mid_heads[level - 1]
  return StackSpec(dim=dim, layers=cfg.mid_layers[level - 1], heads=heads,
                   head_dim=dim // heads, **_shared(cfg))


def _shared(cfg) -> dict:
  return dict(mlp_ratio=cfg.mlp_ratio, activation=cfg.activation, norm=cfg.norm,
              dropout=cfg.dropout, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
              init_std=cfg.init_std, use_bias=cfg.use_bias, attention_impl=cfg.attention_impl,
              remat=cfg.remat, scan_layers=cfg.scan_layers, token_shift=cfg.token_shift)


def conv_encoder(cfg: MegabyteConfig, name: str = "patch_encoder") -> CausalConvEncoder:
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


def patch_projection(cfg: MegabyteConfig) -> PatchProjection:
  """The `PatchProjection` of `cfg` (used when `cfg.patch_embed == "linear"`)."""
  return PatchProjection(cfg.global_dim, cfg.init_std, cfg.use_bias, cfg.compute_dtype,
                         cfg.parameter_dtype, name="patch_embed")


def project_to_children(g: jax.Array, w: jax.Array, s: int, mode: str, dtype) -> jax.Array:
  """A level's outputs `g [batch, n, width]` -> its children's inputs `[batch, n, S, child
  width]` with the projection `w` (`global_to_local` with two levels): "slice" (the paper)
  cuts each output into S slices and projects each by the shared `w [width / S, child]`;
  "full" projects the whole output once per child position, `w [width, S, child]`."""
  if mode == "full":
    return jnp.einsum("bkg,gpl->bkpl", g, w.astype(dtype))
  g = g.reshape(g.shape[0], g.shape[1], s, g.shape[2] // s)
  return jnp.einsum("bkpg,gl->bkpl", g, w.astype(dtype))


def shift_units(y: jax.Array, pad: jax.Array, sequence: bool) -> jax.Array:
  """A level's unit embeddings `y [batch, n, S, dim]` shifted right by one unit, the
  learned `pad [dim]` first: at unit 0 of every parent unit (the paper's `byte_shift=
  "patch"`), or over the whole sequence of units with `sequence` (`byte_shift="sequence"`:
  unit 0 of a parent unit takes the last unit of the parent before)."""
  batch, n, s, dim = y.shape
  if sequence:
    return shift_right(y.reshape(batch, n * s, dim), pad, axis=1).reshape(batch, n, s, dim)
  return shift_right(y, pad, axis=2)


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
  """

  config: MegabyteConfig

  @nn.compact
  def __call__(self, tokens: jax.Array, deterministic: bool = True) -> jax.Array:
    """Returns next-byte logits `[batch, T, 256]` for byte ids `tokens` `[batch, T]`."""
    cfg = self.config
    check_tokens(tokens, cfg.patch_size, cfg.seq_len)
    batch, length = tokens.shape
    p, dg = cfg.patch_size, cfg.byte_global_dim
    k = length // p
    dtype, param_dtype = cfg.compute_dtype, cfg.parameter_dtype
    drop = nn.Dropout(cfg.embed_dropout)
    init = embedding_init(cfg.init_std, cfg.embed_init_std)

    # Global model input: byte embeddings + positions, concatenated per patch.
    de = cfg.global_embed_dim
    global_embed = byte_embedding(de, cfg.init_std, dtype, param_dtype, "global_embed",
                                  cfg.embed_init_std)
    global_pos = self.param(
        "global_pos", nn.with_logical_partitioning(init, (None, "embed")),
        (cfg.seq_len, de), param_dtype)
    x = global_embed(tokens) + global_pos[:length].astype(dtype)     # [batch, T, D_E]
    x = drop(x, deterministic=deterministic)
    if cfg.conv_kernel_sizes:                                         # Section 2.3.1
      x = conv_encoder(cfg)(x)                                        # [batch, T, D_E]
    x = x.reshape(batch, k, p * de)                                   # [batch, patches, P*D_E]
    if cfg.patch_embed == "linear":
      x = patch_projection(cfg)(x)                                    # [batch, patches, P*D_G]
    global_pad = self.param(
        "global_pad", nn.with_logical_partitioning(init, ("embed",)),
        (cfg.global_dim,), param_dtype)
    x = shift_right(x, global_pad, axis=1)          # patch k now holds patch k-1's bytes
    x = nn.with_logical_constraint(x, ACT_SEQ)
    g = TransformerStack(global_spec(cfg), name="global_model")(x, deterministic)

    # Each finer level, coarse to fine; g is the previous level's output [batch, n, width].
    units, sizes = cfg.unit_sizes, cfg.level_patch_sizes
    local_embed, final_affine = None, None
    for level in range(1, cfg.levels):
      name, parent = level_name(cfg, level), level_name(cfg, level - 1)
      s, u, dim = sizes[level - 1], units[level], level_dim(cfg, level)
      n = length // units[level - 1]                                  # parent units
      # Each parent output, split into S slices (one per unit of this level), projected.
      # Each parent output [batch, n, width] -> one input per unit of this level.
      width = level_dim(cfg, level - 1)
      if cfg.global_to_local == "full":   # each child position: its own projection
        w = self.param(f"{parent}_to_{name}", nn.with_logical_partitioning(
            dense_init(cfg.init_std, out_axis=(1, 2)), (None, None, "embed")),
            (width, s, dim), param_dtype)
      else:                               # the paper: slices, one shared projection
        w = self.param(f"{parent}_to_{name}", nn.with_logical_partitioning(
            dense_init(cfg.init_std), (None, "embed")), (width // s, dim), param_dtype)
      g = project_to_children(g, w, s, cfg.global_to_local, dtype)    # [batch, n, S, dim]

      # This level's input: the previous unit's byte embeddings, concatenated (a learned
      # pad at unit 0 of each parent unit) + its parent slice + a learned position.
      embed = byte_embedding(dim // u, cfg.init_std, dtype, param_dtype, f"{name}_embed",
                             cfg.embed_init_std)
      pad = self.param(f"{name}_pad", nn.with_logical_partitioning(init, ("embed",)),
                       (dim,), param_dtype)
      pos = self.param(f"{name}_pos", nn.with_logical_partitioning(init, (None, "embed")),
                       (s, dim), param_dtype)
      # "patch" (the paper): the pad at unit 0 of every parent unit; "sequence": unit 0
      # takes the last unit of the parent unit before (the pad only at the window start).
      seq = cfg.byte_shift == "sequence"
      if u == 1 and not (cfg.embed_dropout and not deterministic):
        y = _shifted_byte_inputs(tokens.reshape(batch, n, s), embed, pad, pos, dtype, seq)
      else:
        y = drop(embed(tokens).reshape(batch, n, s, dim), deterministic=deterministic)
        y = shift_units(y, pad, seq) + pos.astype(dtype)
      h = y + g                                                       # [batch, n, S, dim]
      spec = level_spec(cfg, level)
      # The last level's final norm is folded into the byte head (`fold_norm`).
      last = level == cfg.levels - 1
      stack = TransformerStack(spec, fold_final_norm=last, name=f"{name}_model")
      if spec.cross_patch:   # whole sequences: attention also sees the previous patch
        h = stack(h.reshape(batch, n * s, dim), deterministic)
      else:                  # parent units as batch rows
        h = stack(h.reshape(batch * n, s, dim), deterministic)
      if last:
        h, final_affine = h
      g = h.reshape(batch, n * s, dim)
      local_embed = embed

    head = ByteHead(cfg.local_dim, cfg.init_std, cfg.use_bias, param_dtype, name="head")
    logits = head(g, local_embed if cfg.tie_embeddings else None,
                  norm=final_affine)                                  # [batch, T, 256]
    return logits.reshape(batch, length, cfg.vocab_size)


def _shifted_byte_inputs(ids: jax.Array, embed: nn.Embed, pad: jax.Array, pos: jax.Array,
                         dtype, sequence: bool = False) -> jax.Array:
  """A byte level's input before its parent slice: `shift_right(embed(ids), pad) + pos`.

  `ids [batch, n, S]` (one byte per unit), `pad [dim]`, `pos [S, dim]` -> `[batch, n, S,
  dim]`, computed as one matmul of a two-hot matrix (the byte of the previous position, or
  pad row 256 at position 0, plus position row 257 + j) against the table
  `[embedding; pad; pos]`. The same sum (one rounding instead of two in bf16), but the
  gradients of the pad and positions come out of the matmul's weight gradient: summing
  them over every patch instead made XLA lay the local model's activations out
  position-major on GPU, with a transpose around every matmul (with the norm-scale sums that
  `layers.fold_norm` removes: about 5 ms of the reference step on an H100, BENCHMARKS.md,
  session 5). Used for byte levels without embedding dropout in training. With `sequence`
  (`byte_shift="sequence"`) position 0 of patch k takes the last byte of patch k-1.
  """
  batch, n, s = ids.shape
  rows = 257 + s
  if sequence:   # the previous byte across patch boundaries; the pad row at position 0
    shifted = shift_right(ids.astype(jnp.int32).reshape(batch, n * s), jnp.int32(256),
                          axis=1).reshape(batch, n, s)
  else:          # the pad row at the first position of every patch
    shifted = shift_right(ids.astype(jnp.int32), jnp.int32(256), axis=2)
  slots = 257 + jnp.arange(s, dtype=jnp.int32)
  two_hot = (jax.nn.one_hot(shifted, rows, dtype=dtype)
             + jax.nn.one_hot(slots, rows, dtype=dtype))                # [batch, n, S, rows]
  table = jnp.concatenate([embed.embedding, pad[None], pos], axis=0).astype(dtype)
  return jnp.einsum("bnsr,rd->bnsd", two_hot, table, precision=jax.lax.Precision.HIGHEST)
