"""The byte-level baseline transformer (the paper's equal-compute comparison)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from megabyte_jax.config import TransformerConfig
from megabyte_jax.inputs import check_tokens
from megabyte_jax.layers import (ByteHead, Mode, TransformerStack, byte_embedding,
                                 embedding_init, init_stack_cache, shift_right)
from megabyte_jax.models.levels import stack_spec

__all__ = ["ByteTransformer", "init_decode_state", "stack_spec"]


def init_decode_state(cfg: TransformerConfig, batch: int) -> dict:
  """An empty decoding state of `ByteTransformer(cfg)` for `batch` rows: `cache`, the
  stack's KV caches over `seq_len` bytes."""
  return {"cache": init_stack_cache(stack_spec(cfg), batch, cfg.seq_len)}


class ByteTransformer(nn.Module):
  """A decoder-only transformer over bytes, with MEGABYTE's calling convention.

  `apply(variables, tokens)` maps byte ids `[batch, T]` (T <= seq_len) to float32 logits
  `[batch, T, 256]`; `logits[:, t]` predicts `tokens[:, t]` from `tokens[:, :t]` (the input
  is shifted right by one learned pad embedding inside the model).

  Decoding calls `prefill`, `decode_step` and `patch_step` (a patch is one byte here) with
  `apply(..., method=...)`, as for `Megabyte`; they share `_inputs` and every submodule with
  `__call__`.
  """

  config: TransformerConfig

  def setup(self):
    cfg = self.config
    dtype, param_dtype = cfg.compute_dtype, cfg.parameter_dtype
    init = embedding_init(cfg.init_std, cfg.embed_init_std)
    self.embed = byte_embedding(cfg.dim, cfg.init_std, dtype, param_dtype, None,
                                cfg.embed_init_std)
    self.pad = self.param("pad", nn.with_logical_partitioning(init, ("embed",)), (cfg.dim,),
                          param_dtype)
    self.pos = self.param("pos", nn.with_logical_partitioning(init, (None, "embed")),
                          (cfg.seq_len, cfg.dim), param_dtype) \
        if cfg.positions == "learned" else None
    self.embed_dropout = nn.Dropout(cfg.embed_dropout)
    self.model = TransformerStack(stack_spec(cfg))
    self.head = ByteHead(cfg.dim, cfg.init_std, cfg.use_bias, param_dtype)

  def _inputs(self, previous: jax.Array, pad_mask: jax.Array, start: Any = 0,
              deterministic: bool = True) -> jax.Array:
    """Stack inputs `[batch, n, dim]`: the embedding of the byte before each position
    (`previous [batch, n]`; the learned pad where `pad_mask`, broadcastable to `[batch, n]`)
    plus the learned positions `start .. start + n - 1` (with `positions="learned"`), then
    embedding dropout."""
    dtype = self.config.compute_dtype
    x = jnp.where(pad_mask[..., None], self.pad.astype(dtype), self.embed(previous))
    if self.pos is not None:
      pos = jax.lax.dynamic_slice_in_dim(self.pos, start, previous.shape[1], axis=0)
      x = x + pos.astype(dtype)
    return self.embed_dropout(x, deterministic=deterministic)

  def _logits(self, h: jax.Array) -> jax.Array:
    return self.head(h, self.embed if self.config.tie_embeddings else None)

  def __call__(self, tokens: jax.Array, deterministic: bool = True) -> jax.Array:
    """Returns next-byte logits `[batch, T, 256]` for byte ids `tokens` `[batch, T]`."""
    cfg = self.config
    check_tokens(tokens, 1, cfg.seq_len)
    previous = shift_right(tokens, jnp.zeros((), tokens.dtype), axis=1)
    pad = jnp.arange(tokens.shape[1]) == 0
    x = self._inputs(previous, pad, 0, deterministic)                     # [batch, T, dim]
    return self._logits(self.model(x, deterministic))

  def prefill(self, tokens: jax.Array) -> dict:
    """Runs the known window `tokens [batch, W]` (W < seq_len, static; may be 0) in one
    pass; returns the decoding state (`init_decode_state`) for the byte at W."""
    batch, width = tokens.shape
    state = init_decode_state(self.config, batch)
    if not width:
      return state
    previous = shift_right(tokens, jnp.zeros((), tokens.dtype), axis=1)
    x = self._inputs(previous, jnp.arange(width) == 0)
    _, cache = self.model(x, cache=state["cache"], mode=Mode.PREFILL)
    return {"cache": cache}

  def decode_step(self, state: dict, pos: jax.Array, prev: jax.Array, fused=None
                  ) -> tuple[jax.Array, dict]:
    """Logits `[batch, 256]` of the byte at window position `pos`, given `prev [batch]`, the
    byte at `pos - 1`, and the updated state (`fused` is unused: no fused path here)."""
    del fused
    x = self._inputs(prev[:, None], (pos == 0)[None], pos)                # [batch, 1, dim]
    h, cache = self.model(x, cache=state["cache"], index=pos, mode=Mode.DECODE)
    return self._logits(h[:, 0]), {"cache": cache}

  def patch_step(self, state: dict, pos: jax.Array, patch: jax.Array) -> dict:
    """Nothing to do: the byte transformer has no global model."""
    del pos, patch
    return state
