"""The byte-level baseline transformer (the paper's equal-compute comparison)."""

from __future__ import annotations

import flax.linen as nn
import jax

from megabyte_jax.config import TransformerConfig
from megabyte_jax.inputs import check_tokens
from megabyte_jax.layers import (ByteHead, StackSpec, TransformerStack, byte_embedding,
                                 embedding_init, shift_right)


def stack_spec(cfg: TransformerConfig) -> StackSpec:
  """The `StackSpec` of the baseline's single transformer stack."""
  return StackSpec(dim=cfg.dim, layers=cfg.layers, heads=cfg.heads,
                   head_dim=cfg.attention_head_dim, mlp_ratio=cfg.mlp_ratio,
                   activation=cfg.activation, norm=cfg.norm, dropout=cfg.dropout,
                   dtype=cfg.dtype, param_dtype=cfg.param_dtype, init_std=cfg.init_std,
                   use_bias=cfg.use_bias, attention_impl=cfg.attention_impl,
                   remat=cfg.remat, scan_layers=cfg.scan_layers,
                   token_shift=cfg.token_shift)


class ByteTransformer(nn.Module):
  """A decoder-only transformer over bytes, with MEGABYTE's calling convention.

  `apply(variables, tokens)` maps byte ids `[batch, T]` (T <= seq_len) to float32 logits
  `[batch, T, 256]`; `logits[:, t]` predicts `tokens[:, t]` from `tokens[:, :t]` (the input
  is shifted right by one learned pad embedding inside the model).
  """

  config: TransformerConfig

  @nn.compact
  def __call__(self, tokens: jax.Array, deterministic: bool = True) -> jax.Array:
    """Returns next-byte logits `[batch, T, 256]` for byte ids `tokens` `[batch, T]`."""
    cfg = self.config
    check_tokens(tokens, 1, cfg.seq_len)
    length = tokens.shape[1]
    dtype, param_dtype = cfg.compute_dtype, cfg.parameter_dtype
    init = embedding_init(cfg.init_std, cfg.embed_init_std)
    embed = byte_embedding(cfg.dim, cfg.init_std, dtype, param_dtype, "embed",
                           cfg.embed_init_std)
    pad = self.param("pad", nn.with_logical_partitioning(init, ("embed",)), (cfg.dim,),
                     param_dtype)
    pos = self.param("pos", nn.with_logical_partitioning(init, (None, "embed")),
                     (cfg.seq_len, cfg.dim), param_dtype)
    x = shift_right(embed(tokens), pad, axis=1) + pos[:length].astype(dtype)  # [batch, T, dim]
    x = nn.Dropout(cfg.embed_dropout)(x, deterministic=deterministic)
    h = TransformerStack(stack_spec(cfg), name="model")(x, deterministic)
    head = ByteHead(cfg.dim, cfg.init_std, cfg.use_bias, param_dtype, name="head")
    return head(h, embed if cfg.tie_embeddings else None)
