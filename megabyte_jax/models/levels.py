"""One derived description of a model's levels: `LevelSpec`, from a model config.

The user-facing config keeps flat fields (`global_*`, `mid_*`, `local_*` of
`MegabyteConfig`; `dim`, `layers`, `heads` of `TransformerConfig`). Everything that walks
the levels (the model, decoding, the FLOP counts, the mesh check) iterates `level_specs`
instead of re-deriving them:

  level 0     "global"   over patches of `patch_size` bytes (the byte transformer: over bytes)
  level l     "level_l"  (N > 2 levels) over units of `unit_sizes[l]` bytes, within a parent unit
  level N-1   "local"    over bytes, within a patch (or with `cross_patch`, over the sequence)
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Union

from megabyte_jax.config import MegabyteConfig, TransformerConfig
from megabyte_jax.layers.spec import StackSpec

__all__ = ["LevelSpec", "level_specs", "model_stacks", "stack_spec"]


@dataclasses.dataclass(frozen=True)
class LevelSpec:
  """One level of a model.

  Attributes:
    index: 0 (the coarsest) .. N-1 (the byte level).
    name: the parameter prefix (`{name}_model`, `{name}_embed`, `{name}_pad`, `{name}_pos`;
      `{parent}_to_{name}` for the projection of the parent's outputs).
    parent: the parent level's name; None for level 0.
    width: the model width of the level's stack.
    unit: bytes per unit of this level (position of its stack).
    patch: units of this level per parent unit (S; for level 0, the units of the whole
      window: `seq_len // unit`).
    stack: the `StackSpec` of the level's transformer.
  """

  index: int
  name: str
  parent: Optional[str]
  width: int
  unit: int
  patch: int
  stack: StackSpec

  @property
  def is_bytes(self) -> bool:
    """Whether a unit of this level is one byte (its input is one byte embedding)."""
    return self.unit == 1


def _shared(cfg) -> dict:
  return dict(mlp_ratio=cfg.mlp_ratio, activation=cfg.activation, norm=cfg.norm,
              dropout=cfg.dropout, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
              init_std=cfg.init_std, use_bias=cfg.use_bias, attention_impl=cfg.attention_impl,
              remat=cfg.remat, scan_layers=cfg.scan_layers, token_shift=cfg.token_shift,
              rotary=cfg.positions == "rotary", qk_norm=cfg.qk_norm, fp8=cfg.fp8)


def stack_spec(cfg: TransformerConfig) -> StackSpec:
  """The `StackSpec` of the byte transformer's single stack."""
  return StackSpec(dim=cfg.dim, layers=cfg.layers, heads=cfg.heads,
                   head_dim=cfg.attention_head_dim, **_shared(cfg))


def _megabyte_levels(cfg: MegabyteConfig) -> tuple[LevelSpec, ...]:
  n = cfg.levels
  names = ["global"] + [f"level_{l}" for l in range(1, n - 1)] + ["local"]
  widths = (cfg.global_dim,) + tuple(cfg.mid_dims) + (cfg.local_dim,)
  layers = (cfg.global_layers,) + tuple(cfg.mid_layers) + (cfg.local_layers,)
  heads = (cfg.global_heads,) + tuple(cfg.mid_heads) + (cfg.local_heads,)
  head_dims = ((cfg.global_attention_head_dim,)
               + tuple(d // h for d, h in zip(cfg.mid_dims, cfg.mid_heads))
               + (cfg.local_attention_head_dim,))
  units, sizes = cfg.unit_sizes, cfg.level_patch_sizes
  out = []
  for l in range(n):
    extra = {}
    if l == n - 1 and cfg.cross_patch:
      extra = dict(cross_patch=cfg.cross_patch, patch=cfg.local_patch_size)
    stack = StackSpec(dim=widths[l], layers=layers[l], heads=heads[l], head_dim=head_dims[l],
                      **_shared(cfg), **extra)
    out.append(LevelSpec(index=l, name=names[l], parent=names[l - 1] if l else None,
                         width=widths[l], unit=units[l],
                         patch=sizes[l - 1] if l else cfg.num_patches, stack=stack))
  return tuple(out)


def level_specs(cfg: Union[MegabyteConfig, TransformerConfig]) -> tuple[LevelSpec, ...]:
  """The levels of a model config, coarse to fine (see the module docstring).

  A `TransformerConfig` has one level, named "" (its stack is `model`, its embedding
  `embed`), over bytes.
  """
  if isinstance(cfg, TransformerConfig):
    return (LevelSpec(index=0, name="", parent=None, width=cfg.dim, unit=1,
                      patch=cfg.seq_len, stack=stack_spec(cfg)),)
  return _megabyte_levels(cfg)


def model_stacks(cfg: Union[MegabyteConfig, TransformerConfig]) -> dict[str, StackSpec]:
  """`{parameter name of the stack: StackSpec}` of every transformer stack of a model."""
  return {(f"{level.name}_model" if level.name else "model"): level.stack
          for level in level_specs(cfg)}
