"""Parameter and FLOP accounting for MEGABYTE and the byte transformer.

Counts follow the usual model-FLOPs convention (Kaplan et al.; PaLM's MFU): a matmul with an
`m x n` weight costs `2 m n` FLOPs per row in the forward pass, the backward pass costs twice
the forward, and attention costs `2 * 2 * L * heads * head_dim` per query position and layer
(scores and weighted sum over all L keys, with no discount for the causal mask). Embedding
lookups, norms, activations and the softmax are not counted. Recomputation (remat) is not
counted either: these are the FLOPs the model needs, the basis of MFU and of equal-compute
comparisons.

For MEGABYTE the global model runs once per patch, so its per-byte cost is divided by P:
per byte, forward FLOPs = 2 * (m_global / P + m_local + projections) + attention, the
paper's `2 T (m_g / P + m_l)` (Section 3) made exact. Deeper hierarchies add each middle
level's share the same way (its cost divided by the bytes per unit it runs once for).
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Union

from megabyte_jax.config import PAPER_FORMULATION, MegabyteConfig, TransformerConfig
from megabyte_jax.layers import StackSpec
from megabyte_jax.models.levels import level_specs

ModelConfig = Union[MegabyteConfig, TransformerConfig]


@dataclasses.dataclass(frozen=True)
class CostReport:
  """Parameters and FLOPs of one model at one sequence length.

  Attributes:
    params: all parameters (what `model.init` creates).
    non_embedding_params: params minus byte embeddings, positions and pads.
    matmul_flops_per_byte: forward FLOPs of all weight matmuls, per byte.
    attention_flops_per_byte: forward FLOPs of attention scores and mixing, per byte.
    forward_flops_per_byte: the two above together.
    train_flops_per_byte: 3x forward (forward + backward), the basis of MFU.
    seq_len: the sequence length the attention cost was counted at.
  """

  params: int
  non_embedding_params: int
  matmul_flops_per_byte: float
  attention_flops_per_byte: float
  seq_len: int

  @property
  def forward_flops_per_byte(self) -> float:
    return self.matmul_flops_per_byte + self.attention_flops_per_byte

  @property
  def train_flops_per_byte(self) -> float:
    return 3.0 * self.forward_flops_per_byte

  def as_dict(self) -> dict:
    """All fields and derived figures as a plain dict."""
    out = dataclasses.asdict(self)
    out["forward_flops_per_byte"] = self.forward_flops_per_byte
    out["train_flops_per_byte"] = self.train_flops_per_byte
    return out


def _norm_params(spec: StackSpec) -> int:
  with_bias = spec.norm == "layernorm" and spec.use_bias
  return spec.dim * (2 if with_bias else 1)


def stack_matmul_params(spec: StackSpec) -> int:
  """Weights of one `TransformerStack` used in matmuls (no biases, no norms)."""
  attn = spec.dim * 3 * spec.heads * spec.head_dim + spec.heads * spec.head_dim * spec.dim
  n_in = 2 if spec.activation == "swiglu" else 1
  mlp = spec.dim * n_in * spec.mlp_dim + spec.mlp_dim * spec.dim
  return spec.layers * (attn + mlp)


def stack_params(spec: StackSpec) -> int:
  """All parameters of one `TransformerStack` (blocks and final norm)."""
  bias = 0
  if spec.use_bias:
    n_in = 2 if spec.activation == "swiglu" else 1
    bias = spec.layers * (3 * spec.heads * spec.head_dim + spec.dim
                          + n_in * spec.mlp_dim + spec.dim)
  norms = (2 * spec.layers + 1) * _norm_params(spec)
  qk_norms = spec.layers * 2 * spec.head_dim if spec.qk_norm else 0
  return stack_matmul_params(spec) + bias + norms + qk_norms


def _attention_flops_per_position(spec: StackSpec, context: int) -> float:
  return spec.layers * 2.0 * 2.0 * context * spec.heads * spec.head_dim


def _head_params(dim: int, cfg: ModelConfig) -> int:
  if cfg.tie_embeddings:
    return 0
  return dim * 256 + (256 if cfg.use_bias else 0)


def megabyte_cost(cfg: MegabyteConfig, seq_len: Optional[int] = None) -> CostReport:
  """Parameters and per-byte FLOPs of `Megabyte(cfg)` on sequences of `seq_len` bytes.

  Covers every variant: the convolutional patch encoder (`2 * kernel * D_G^2` FLOPs per byte
  and layer), cross-patch attention (each local query sees `patch + r` keys) and N-level
  hierarchies (level l runs once per `unit_sizes[l]` bytes, with `level_patch_sizes[l-1]`
  keys per query, plus the projection of its parent's output slice).
  """
  t = seq_len or cfg.seq_len
  levels = level_specs(cfg)
  units = cfg.unit_sizes
  de, dl = cfg.global_embed_dim, cfg.local_dim
  gspec = levels[0].stack
  head = _head_params(dl, cfg)
  learned = cfg.positions == "learned"     # position tables (else none: rotary or none)
  embeddings = 256 * de + (cfg.seq_len * de if learned else 0) + cfg.global_dim
  non_embedding = stack_params(gspec) + head
  matmul = stack_matmul_params(gspec) / units[0] + dl * 256
  attention = _attention_flops_per_position(gspec, t // units[0]) / units[0]
  for size in cfg.conv_kernel_sizes:
    non_embedding += size * de * de + (de if cfg.use_bias else 0)
    matmul += size * de * de
  if cfg.patch_embed == "linear":   # LayerNorm, dense, LayerNorm, once per patch
    width = cfg.patch_size * de
    non_embedding += (2 * width + width * cfg.global_dim + 2 * cfg.global_dim
                      + (cfg.global_dim if cfg.use_bias else 0))
    matmul += width * cfg.global_dim / units[0]
  for level in levels[1:]:
    spec, dim, s, u = level.stack, level.width, level.patch, level.unit
    width = levels[level.index - 1].width
    # Per byte, both forms cost the parent's width x this width once per unit of this
    # level: "slice" projects one slice (width / S) per unit, "full" the whole output once
    # per parent unit into S units.
    projection = width * s * dim if cfg.global_to_local == "full" else width // s * dim
    embeddings += 256 * (dim // u) + dim + (s * dim if learned else 0)   # bytes, pad, pos
    non_embedding += stack_params(spec) + projection
    matmul += (stack_matmul_params(spec) + projection / (s if cfg.global_to_local == "full"
                                                        else 1)) / u
    attention += _attention_flops_per_position(spec, s + spec.cross_patch) / u
  return CostReport(params=embeddings + non_embedding, non_embedding_params=non_embedding,
                    matmul_flops_per_byte=2.0 * matmul, attention_flops_per_byte=attention,
                    seq_len=t)


def transformer_cost(cfg: TransformerConfig, seq_len: Optional[int] = None) -> CostReport:
  """Parameters and per-byte FLOPs of `ByteTransformer(cfg)` on `seq_len`-byte sequences."""
  t = seq_len or cfg.seq_len
  spec = level_specs(cfg)[0].stack
  head = _head_params(cfg.dim, cfg)
  embeddings = 256 * cfg.dim + cfg.dim + (cfg.seq_len * cfg.dim
                                          if cfg.positions == "learned" else 0)
  non_embedding = stack_params(spec) + head
  matmul = 2.0 * (stack_matmul_params(spec) + cfg.dim * 256)
  attention = _attention_flops_per_position(spec, t)
  return CostReport(params=embeddings + non_embedding, non_embedding_params=non_embedding,
                    matmul_flops_per_byte=matmul, attention_flops_per_byte=attention,
                    seq_len=t)


def model_cost(cfg: ModelConfig, seq_len: Optional[int] = None) -> CostReport:
  """`megabyte_cost` or `transformer_cost`, whichever fits `cfg`."""
  if isinstance(cfg, MegabyteConfig):
    return megabyte_cost(cfg, seq_len)
  if isinstance(cfg, TransformerConfig):
    return transformer_cost(cfg, seq_len)
  raise TypeError(f"expected MegabyteConfig or TransformerConfig, got {type(cfg).__name__}")


# The paper's Table 15 setups, as our configs build them (`paper_table`). Heads follow Table
# 14 (d_model 768: 12, 1024: 16, 1536: 16, 2048: 32, 2560: 32); the model side of the
# paper's recipe (ReLU, output projection by the local embedding). A global width must be a
# multiple of P, so the P=12 rows use 2556 for the paper's 2560 and 2052 for 2048.
_RECIPE = dict(activation="relu", tie_embeddings=True)
_PAPER = dict(_RECIPE, **PAPER_FORMULATION)
PAPER_TABLE15 = (
    # (name, config, paper's global size, paper's local size)
    ("text (arXiv, PG-19, ...)", TransformerConfig(seq_len=1024, dim=1024, layers=22,
                                                   heads=16, **_RECIPE), "320M", "-"),
    ("text (arXiv, PG-19, ...)", MegabyteConfig(
        seq_len=8192, patch_size=8, global_dim=2048, global_layers=14, global_heads=32,
        local_dim=1024, local_layers=18, local_heads=16, **_PAPER), "758M", "262M"),
    ("ImageNet64 (best)", MegabyteConfig(
        seq_len=12288, patch_size=12, global_dim=2556, global_layers=32, global_heads=32,
        global_head_dim=80, local_dim=1024, local_layers=24, local_heads=16, **_PAPER),
     "2.7B", "350M"),
    ("ImageNet64 (control)", MegabyteConfig(
        seq_len=12288, patch_size=12, global_dim=2052, global_layers=24, global_heads=32,
        global_head_dim=64, local_dim=2048, local_layers=24, local_heads=32, **_PAPER),
     "1.3B", "1.3B"),
    ("ImageNet256", MegabyteConfig(
        seq_len=196608, patch_size=192, global_dim=768, global_layers=12, global_heads=12,
        local_dim=768, local_layers=12, local_heads=12, **_PAPER), "125M", "125M"),
    ("ImageNet640", MegabyteConfig(
        seq_len=1228800, patch_size=192, global_dim=768, global_layers=12, global_heads=12,
        local_dim=768, local_layers=8, local_heads=12, **_PAPER), "125M", "83M"),
    ("audio", MegabyteConfig(
        seq_len=524288, patch_size=32, global_dim=1024, global_layers=24, global_heads=16,
        local_dim=768, local_layers=12, local_heads=12, **_PAPER), "350M", "125M"),
)


def _millions(n: float) -> str:
  return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


def paper_table() -> list[dict]:
  """One row per setup of the paper's Table 15 (`PAPER_TABLE15`): our parameter counts of
  the global and local stacks (blocks and final norm) and of the whole model, training
  FLOPs per byte at the setup's context, and the paper's global and local sizes."""
  rows = []
  for name, cfg, paper_global, paper_local in PAPER_TABLE15:
    cost = model_cost(cfg)
    levels = level_specs(cfg)
    if isinstance(cfg, MegabyteConfig):
      ours_global, ours_local = stack_params(levels[0].stack), stack_params(levels[1].stack)
      shape = (f"MEGABYTE {cfg.global_dim}xL{cfg.global_layers} / "
               f"{cfg.local_dim}xL{cfg.local_layers}, P={cfg.patch_size}")
    else:
      ours_global, ours_local = stack_params(levels[0].stack), 0
      shape = f"Transformer {cfg.dim}xL{cfg.layers}"
    rows.append({"setup": name, "model": shape, "context": cfg.seq_len,
                 "paper_global": paper_global, "paper_local": paper_local,
                 "global_params": ours_global, "local_params": ours_local,
                 "params": cost.params, "train_flops_per_byte": cost.train_flops_per_byte})
  return rows


def paper_table_markdown() -> str:
  """`paper_table()` as the Markdown table of the README."""
  lines = ["| setup | model | context | paper: global / local | ours: global / local "
           "stacks | ours: all params | training GFLOPs / byte |",
           "| --- | --- | ---: | --- | --- | ---: | ---: |"]
  for r in paper_table():
    local = _millions(r["local_params"]) if r["local_params"] else "-"
    lines.append(f"| {r['setup']} | {r['model']} | {r['context']:,} | {r['paper_global']} / "
                 f"{r['paper_local']} | {_millions(r['global_params'])} / {local} | "
                 f"{_millions(r['params'])} | {r['train_flops_per_byte'] / 1e9:.2f} |")
  return "\n".join(lines)


if __name__ == "__main__":
  print(paper_table_markdown())
