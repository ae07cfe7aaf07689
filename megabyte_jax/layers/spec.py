"""`StackSpec`: everything one transformer stack needs; `Mode`: what a call computes (train,
prefill or decode); the logical names of activation axes."""

from __future__ import annotations

import dataclasses
import enum
import math
from typing import Optional

# Logical names of activation axes, used with `nn.with_logical_constraint`.
ACT_SEQ = ("activation_batch", "activation_length", "activation_embed")


class Mode(enum.Enum):
  """What a call of a stack (and of its blocks and attention) computes.

  TRAIN    the whole input at once, no cache (training, scoring, the uncached sampler);
  PREFILL  the whole known window from position 0, filling an empty cache as it goes (the
           same kernels and numerics as TRAIN);
  DECODE   new positions `index ..` against a cache that holds the positions before them
           (`index` may be traced).
  """

  TRAIN = "train"
  PREFILL = "prefill"
  DECODE = "decode"

  def check_cache(self, cache) -> None:
    """Raises ValueError when a cache is given in TRAIN mode or missing in the others."""
    if (cache is None) != (self is Mode.TRAIN):
      raise ValueError(f"mode {self.value} needs " + ("no cache" if self is Mode.TRAIN
                                                      else "a cache"))


@dataclasses.dataclass(frozen=True)
class StackSpec:
  """Everything one transformer stack needs, independent of which model owns it.

  Attributes:
    dim: model width. layers, heads, head_dim: stack shape. mlp_ratio: MLP width / dim.
    activation, norm, dropout, dtype, param_dtype, init_std, use_bias, attention_impl,
      remat, scan_layers: as in `MegabyteConfig`.
    cross_patch: r > 0 turns on cross-patch attention over patches of `patch` positions
      (see the module docstring); 0 (default): plain causal attention over the whole input.
    patch: the patch length of cross-patch attention (unused when `cross_patch` is 0).
    token_shift: shift half the features of each position by one position before the
      attention and the MLP of every block (`token_shift`).
    rotary: rotary position embeddings on the queries and keys of every attention layer,
      at the stack's positions (`positions="rotary"`; cross-patch attention applies its
      own, at window positions, either way).
    qk_norm: RMS-normalize each head's queries and keys, with a learned per-channel scale.
    fp8: run the four dense matmuls of every block (attention QKV and output projections,
      MLP input and output) in FP8 with direct per-tensor scaling (`fp8.dense_einsum`).
  """

  dim: int
  layers: int
  heads: int
  head_dim: int
  mlp_ratio: int = 4
  activation: str = "gelu"
  norm: str = "layernorm"
  dropout: float = 0.0
  dtype: str = "float32"
  param_dtype: str = "float32"
  init_std: Optional[float] = None
  use_bias: bool = True
  attention_impl: str = "auto"
  remat: str = "none"
  scan_layers: bool = False
  cross_patch: int = 0
  patch: int = 0
  token_shift: bool = False
  rotary: bool = False
  qk_norm: bool = False
  fp8: bool = False

  @property
  def mlp_dim(self) -> int:
    """Hidden width of the MLP (2/3 of it per branch for SwiGLU, rounded up to 8)."""
    hidden = self.mlp_ratio * self.dim
    if self.activation == "swiglu":
      hidden = 8 * math.ceil(2 * hidden / 3 / 8)
    return hidden
