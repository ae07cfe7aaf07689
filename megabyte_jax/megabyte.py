"""The multiscale MEGABYTE model (Yu et al., 2023, Section 2 and Figure 2)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from megabyte_jax.config import MegabyteConfig
from megabyte_jax.inputs import check_tokens
from megabyte_jax.layers import (ACT_SEQ, ByteHead, StackSpec, TransformerStack,
                                 byte_embedding, dense_init, embedding_init, shift_right)


def global_spec(cfg: MegabyteConfig) -> StackSpec:
  """The `StackSpec` of the global transformer (width P * D_G over patches)."""
  return StackSpec(dim=cfg.global_dim, layers=cfg.global_layers, heads=cfg.global_heads,
                   head_dim=cfg.global_attention_head_dim, **_shared(cfg))


def local_spec(cfg: MegabyteConfig) -> StackSpec:
  """The `StackSpec` of the local transformer (width D_L within each patch)."""
  return StackSpec(dim=cfg.local_dim, layers=cfg.local_layers, heads=cfg.local_heads,
                   head_dim=cfg.local_attention_head_dim, **_shared(cfg))


def _shared(cfg) -> dict:
  return dict(mlp_ratio=cfg.mlp_ratio, activation=cfg.activation, norm=cfg.norm,
              dropout=cfg.dropout, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
              init_std=cfg.init_std, use_bias=cfg.use_bias, attention_impl=cfg.attention_impl,
              remat=cfg.remat, scan_layers=cfg.scan_layers)


class Megabyte(nn.Module):
  """MEGABYTE: a global transformer over patches and a local transformer within each patch.

  `apply(variables, tokens)` maps int byte ids `[batch, T]` (T a multiple of `patch_size`,
  at most `seq_len`) to float32 logits `[batch, T, 256]`, where `logits[:, t]` predicts
  `tokens[:, t]` from `tokens[:, :t]`: the model shifts internally (a learned pad patch for
  the global model, a learned pad byte for the local model), so the loss is plain
  cross-entropy of the logits against the tokens.
  """

  config: MegabyteConfig

  @nn.compact
  def __call__(self, tokens: jax.Array, deterministic: bool = True) -> jax.Array:
    """Returns next-byte logits `[batch, T, 256]` for byte ids `tokens` `[batch, T]`."""
    cfg = self.config
    check_tokens(tokens, cfg.patch_size, cfg.seq_len)
    batch, length = tokens.shape
    p, dg, dl = cfg.patch_size, cfg.byte_global_dim, cfg.local_dim
    k = length // p
    dtype, param_dtype = cfg.compute_dtype, cfg.parameter_dtype
    drop = nn.Dropout(cfg.embed_dropout)

    # Global model input: byte embeddings + positions, concatenated per patch.
    global_embed = byte_embedding(dg, cfg.init_std, dtype, param_dtype, "global_embed")
    global_pos = self.param(
        "global_pos", nn.with_logical_partitioning(embedding_init(cfg.init_std),
                                                   (None, "embed")),
        (cfg.seq_len, dg), param_dtype)
    x = global_embed(tokens) + global_pos[:length].astype(dtype)     # [batch, T, D_G]
    x = drop(x, deterministic=deterministic)
    x = x.reshape(batch, k, p * dg)                                   # [batch, patches, P*D_G]
    global_pad = self.param(
        "global_pad", nn.with_logical_partitioning(embedding_init(cfg.init_std), ("embed",)),
        (cfg.global_dim,), param_dtype)
    x = shift_right(x, global_pad, axis=1)          # patch k now holds patch k-1's bytes
    x = nn.with_logical_constraint(x, ACT_SEQ)
    g = TransformerStack(global_spec(cfg), name="global_model")(x, deterministic)

    # Each global output, split into P slices of D_G, projected to the local width.
    g = g.reshape(batch, k, p, dg)                                    # [batch, patches, P, D_G]
    w_gl = self.param("global_to_local", nn.with_logical_partitioning(
        dense_init(cfg.init_std), (None, "embed")), (dg, dl), param_dtype)
    g = jnp.einsum("bkpg,gl->bkpl", g, w_gl.astype(dtype))           # [batch, patches, P, D_L]

    # Local model input: previous byte's local embedding (pad byte at position 0 of each
    # patch) + its global slice + a learned position within the patch.
    local_embed = byte_embedding(dl, cfg.init_std, dtype, param_dtype, "local_embed")
    y = local_embed(tokens).reshape(batch, k, p, dl)
    y = drop(y, deterministic=deterministic)
    local_pad = self.param(
        "local_pad", nn.with_logical_partitioning(embedding_init(cfg.init_std), ("embed",)),
        (dl,), param_dtype)
    y = shift_right(y, local_pad, axis=2)
    local_pos = self.param(
        "local_pos", nn.with_logical_partitioning(embedding_init(cfg.init_std),
                                                  (None, "embed")), (p, dl), param_dtype)
    h = (y + g + local_pos.astype(dtype)).reshape(batch * k, p, dl)  # patches as batch
    h = TransformerStack(local_spec(cfg), name="local_model")(h, deterministic)

    head = ByteHead(dl, cfg.init_std, cfg.use_bias, param_dtype, name="head")
    logits = head(h, local_embed if cfg.tie_embeddings else None)    # [batch*K, P, 256]
    return logits.reshape(batch, length, cfg.vocab_size)
