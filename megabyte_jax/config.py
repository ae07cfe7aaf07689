"""Validated model configurations.

Two frozen dataclasses describe the models: `MegabyteConfig` (the multiscale model of the
paper) and `TransformerConfig` (the byte-level baseline). Both validate themselves on
construction, so a bad shape is refused with a message that names the field, before any
parameter is created.

Naming follows the paper's tables: `global_dim` is the width of the global transformer
(P * D_G, the tables' "global D"), so each byte's global embedding has
`global_dim // patch_size` dimensions; `local_dim` is D_L.

Variants of the paper (Section 2.3) and deeper hierarchies are switches on the same config,
off by default (the default model, its parameter tree and its checkpoints are unchanged):
`conv_kernel_sizes` (a causal convolutional patch encoder), `cross_patch` (local attention
to the previous patch's last keys and values, with rotary positions) and `patch_sizes` with
`mid_dims`/`mid_layers`/`mid_heads` (N > 2 levels).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Optional

import jax.numpy as jnp

from megabyte_jax.errors import ConfigError

VOCAB_SIZE = 256  # raw bytes: no tokenizer

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
_ACTIVATIONS = ("gelu", "relu", "swiglu")
_NORMS = ("layernorm", "rmsnorm")
_ATTENTION_IMPLS = ("auto", "xla", "cudnn", "short", "pallas")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
_GLOBAL_TO_LOCAL = ("slice", "full")
_PATCH_EMBEDS = ("concat", "linear")
_BYTE_SHIFTS = ("patch", "sequence")
_POSITIONS = ("learned", "none", "rotary")

# The paper's own formulation of MEGABYTE (Section 2, Figure 2) where our defaults differ
# (they follow the learning comparison with MEGABYTE-pytorch, RESULTS.md, 2026-12):
# concatenated byte embeddings as the global input, one projection shared by the slices of
# each global output, a pad at the start of every local patch, no token shift, learned
# position tables.
PAPER_FORMULATION = dict(token_shift=False, global_to_local="slice", patch_embed="concat",
                         byte_shift="patch", positions="learned")
# The defaults of the fields above and of `embed_init_std` before 2026-12 (`positions`:
# before 2026-12-07): a saved config without these fields (written before they existed)
# describes a model built this way.
LEGACY_MEGABYTE_DEFAULTS = dict(embed_init_std=0.02, **PAPER_FORMULATION)
LEGACY_TRANSFORMER_DEFAULTS = dict(embed_init_std=0.02, token_shift=False)



def _check_positive_int(name: str, value: Any) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
    raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def _check_divides(name: str, value: int, divisor_name: str, divisor: int) -> None:
  if value % divisor:
    raise ConfigError(
        f"{name}={value} must be a multiple of {divisor_name}={divisor}")


def _int_tuple(name: str, value: Any) -> tuple[int, ...]:
  """`value` (a tuple or list of positive ints, e.g. from a JSON config) as a tuple."""
  if not isinstance(value, (tuple, list)):
    raise ConfigError(f"{name} must be a tuple of positive integers, got {value!r}")
  for item in value:
    _check_positive_int(f"every entry of {name}", item)
  return tuple(value)


def resolve_dtype(name: str) -> Any:
  """Maps a dtype name ("float32", "bfloat16", "float16") to the jnp dtype."""
  try:
    return _DTYPES[name]
  except KeyError:
    raise ConfigError(
        f"unknown dtype {name!r}; choose one of {sorted(_DTYPES)}") from None


@dataclasses.dataclass(frozen=True)
class _CommonConfig:
  """Fields shared by both models (documented on the subclasses)."""

  def _validate_common(self) -> None:
    _check_positive_int("seq_len", self.seq_len)
    _check_positive_int("vocab_size", self.vocab_size)
    if self.vocab_size != VOCAB_SIZE:
      raise ConfigError(f"vocab_size must be {VOCAB_SIZE} (raw bytes), got {self.vocab_size}")
    _check_positive_int("mlp_ratio", self.mlp_ratio)
    for name in ("dtype", "param_dtype"):
      value = getattr(self, name)
      if not isinstance(value, str) or value not in _DTYPES:
        raise ConfigError(f"{name} must be one of {sorted(_DTYPES)}, got {value!r}")
    if self.activation not in _ACTIVATIONS:
      raise ConfigError(f"activation must be one of {_ACTIVATIONS}, got {self.activation!r}")
    if self.norm not in _NORMS:
      raise ConfigError(f"norm must be one of {_NORMS}, got {self.norm!r}")
    if self.attention_impl not in _ATTENTION_IMPLS:
      raise ConfigError(
          f"attention_impl must be one of {_ATTENTION_IMPLS}, got {self.attention_impl!r}")
    if self.remat not in REMAT_POLICIES:
      raise ConfigError(f"remat must be one of {REMAT_POLICIES}, got {self.remat!r}")
    if not isinstance(self.scan_layers, bool):
      raise ConfigError(f"scan_layers must be True or False, got {self.scan_layers!r}")
    if not isinstance(self.fp8, bool):
      raise ConfigError(f"fp8 must be True or False, got {self.fp8!r}")
    for name in ("dropout", "embed_dropout"):
      value = getattr(self, name)
      if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ConfigError(f"{name} must be in [0, 1), got {value!r}")
    if self.init_std is not None and not (
        isinstance(self.init_std, (int, float)) and 0 < self.init_std < math.inf):
      raise ConfigError(f"init_std must be None or a positive number (finite), got "
                        f"{self.init_std!r}")
    if isinstance(self.embed_init_std, bool) or not (
        isinstance(self.embed_init_std, (int, float)) and 0 < self.embed_init_std < math.inf):
      raise ConfigError(
          f"embed_init_std must be a positive number (finite), got {self.embed_init_std!r}")
    if not isinstance(self.token_shift, bool):
      raise ConfigError(f"token_shift must be True or False, got {self.token_shift!r}")
    if self.positions not in _POSITIONS:
      raise ConfigError(f"positions must be one of {_POSITIONS}, got {self.positions!r}")
    if not isinstance(self.qk_norm, bool):
      raise ConfigError(f"qk_norm must be True or False, got {self.qk_norm!r}")

  @property
  def compute_dtype(self) -> Any:
    """The jnp dtype activations are computed in."""
    return resolve_dtype(self.dtype)

  @property
  def parameter_dtype(self) -> Any:
    """The jnp dtype parameters are stored in."""
    return resolve_dtype(self.param_dtype)

  def replace(self, **changes: Any):
    """Returns a copy with `changes` applied (and validated)."""
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict[str, Any]:
    """Returns the fields as a plain dict (JSON-serialisable)."""
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, values: Mapping[str, Any]):
    """Builds a config from a mapping, refusing unknown keys with a clear error."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
      raise ConfigError(
          f"unknown {cls.__name__} field(s) {unknown}; known fields: {sorted(known)}")
    return cls(**dict(values))


@dataclasses.dataclass(frozen=True)
class MegabyteConfig(_CommonConfig):
  """Configuration of the multiscale MEGABYTE model.

  Attributes:
    seq_len: maximum sequence length T in bytes (a multiple of `patch_size`).
    patch_size: P, bytes per patch.
    global_dim: width of the global transformer, P * D_G (must be a multiple of P).
    global_layers: number of global transformer blocks.
    global_heads: attention heads of the global transformer.
    local_dim: D_L, width of the local transformer.
    local_layers: number of local transformer blocks.
    local_heads: attention heads of the local transformer.
    global_head_dim: per-head width of global attention; default global_dim // global_heads.
    local_head_dim: per-head width of local attention; default local_dim // local_heads.
    vocab_size: always 256.
    mlp_ratio: hidden width of the MLPs as a multiple of the model width.
    activation: "gelu", "relu" (the paper) or "swiglu".
    norm: "layernorm" or "rmsnorm" (pre-norm blocks either way).
    dropout: residual dropout rate (only when `deterministic=False`).
    embed_dropout: dropout on the embeddings (the paper uses none).
    dtype: compute dtype name ("float32", "bfloat16", "float16").
    param_dtype: parameter dtype name.
    init_std: None for scaled fan-in init; a float for the paper's truncated-normal init
      with that standard deviation (0.006 in the paper).
    embed_init_std: standard deviation of the byte embedding tables, learned positions and
      pads at initialisation (normal; truncated at 2 std when `init_std` is set).
    token_shift: before the attention and the MLP of every block, shift half of the
      features of each position by one position (the previous position's, zeros at the
      first), as MEGABYTE-pytorch does (after RWKV): a cheap width-2 causal mixing.
    positions: how each stack knows positions. "rotary" (the default): rotary embeddings
      (Su et al.) on the queries and keys of every attention layer, at each stack's own
      positions (patch index, position within the patch), and no position tables.
      "learned" (the paper): learned position tables added to the inputs (the global
      model's per byte of the window, each finer level's per position within its parent
      unit). "none": no position information but the causal masks and the shifts
      (MEGABYTE-pytorch's default).
    qk_norm: RMS-normalize each head's queries and keys (with a learned scale per channel,
      initialised to 1) before attention, which bounds the attention logits.
    tie_embeddings: predict with the local byte embedding matrix (the paper's equation)
      instead of a separate output projection.
    use_bias: biases in dense layers.
    attention_impl: "xla", "cudnn" (fused flash attention; GPU, half precision only),
      "short" (`layers.short_causal_attention`: fused broadcast products, no batched
      matmuls; for short sequences such as local patches), "pallas"
      (`local_attention.patch_attention`: fused Triton kernels for patches of up to 64
      positions; GPU) or "auto": on GPU cuDNN for 128 positions or more and "pallas" (or
      "short" for shapes it does not support) below; XLA on other backends.
    remat: rematerialization of each transformer block in training: "none" (keep every
      activation), "full" (keep only block inputs; recompute the rest in the backward
      pass), "dots" (keep matmul outputs) or "dots_no_batch" (keep matmul outputs without
      batch dimensions, i.e. weight matmuls, not attention scores). Less memory, more FLOPs.
    scan_layers: run each stack's blocks with `nn.scan` (one compiled block, stacked
      parameters with a leading "layers" axis): much faster compiles for deep models; the
      parameter tree differs (`layers.stack_block_params` converts).
    patch_sizes: for a hierarchy of N > 2 levels, the N-1 patch sizes from coarse to fine:
      with `(P1, P2, ..., P_{N-1})` the global model steps over patches of `patch_size` =
      P1 * ... * P_{N-1} bytes (their product must equal `patch_size`), the level-1 model
      runs within each global patch over P1 units of P2 * ... * P_{N-1} bytes, and so on
      down to the local model over P_{N-1} bytes. Each level's output, split into one slice
      per unit of the next finer level and projected to its width, is added to that level's
      input (as the global output conditions the local model in the 2-level model).
      Empty (the default) or `(patch_size,)`: the paper's two levels.
    mid_dims, mid_layers, mid_heads: width, blocks and attention heads of the N-2 levels
      between the global and the local model (coarse to fine; empty for two levels). A
      level whose units hold U bytes embeds each byte in `mid_dims[i] // U` dimensions and
      concatenates the U of them, like the global model's patch embedder, so `mid_dims[i]`
      must be a multiple of U.
    conv_kernel_sizes: causal 1-D convolutions (e.g. `(3, 5, 7)`, the paper's Section
      2.3.1) applied in turn, each as `x + act(conv(x))`, to the global model's byte
      embeddings before they are cut into patches. Empty: no convolutional encoder.
    cross_patch: r > 0 lets each local attention layer also attend to the last r keys and
      values of the previous patch (Section 2.3.2), with rotary position embeddings on the
      local queries and keys (so the local head width must be even). 0: off.
    global_to_local: how each level's output conditions the next finer level. "slice" (the
      paper): the output of a unit is cut into one slice per child position and every slice
      is projected by one shared matrix `[width / S, child width]`. "full": every child
      position gets its own projection of the whole output, `[width, S, child width]` (as
      MEGABYTE-pytorch does).
    patch_embed: the global model's input. "concat" (the paper): byte embeddings of
      `global_dim / patch_size` plus positions, concatenated per patch. "linear": byte
      embeddings of `local_dim` plus positions (through the convolutional encoder, if
      any), concatenated, then LayerNorm, a dense layer to `global_dim` and LayerNorm
      (MEGABYTE-pytorch's patch embedder; `megabyte.PatchProjection`).
    byte_shift: what the local model (and each middle level) reads at the first position
      of a patch. "patch" (the paper): a learned pad, so the first byte of every patch is
      predicted from the global model's output alone. "sequence": the last byte of the
      previous patch (its unit, for middle levels), the inputs being shifted by one over
      the whole sequence; the pad only at the window's first position.
    fp8: FP8 training (for Hopper GPUs): the four dense matmuls of every block of every
      stack (attention QKV and output projections, MLP input and output) run in FP8, e4m3
      activations and weights forward and an e5m2 output gradient backward, accumulated in
      float32 and returned in `dtype`, with direct per-tensor scaling at every call (no
      scaling state: `layers.fp8`). Embeddings, patch and global-to-local projections and
      the byte head stay in `dtype`. Parameters are unchanged, so a run may turn it on or
      off when it resumes. False: every matmul in `dtype`.
  """

  seq_len: int
  patch_size: int
  global_dim: int
  global_layers: int
  global_heads: int
  local_dim: int
  local_layers: int
  local_heads: int
  global_head_dim: Optional[int] = None
  local_head_dim: Optional[int] = None
  vocab_size: int = VOCAB_SIZE
  mlp_ratio: int = 4
  activation: str = "gelu"
  norm: str = "layernorm"
  dropout: float = 0.0
  embed_dropout: float = 0.0
  dtype: str = "float32"
  param_dtype: str = "float32"
  init_std: Optional[float] = None
  embed_init_std: float = 1.0
  token_shift: bool = True
  positions: str = "rotary"
  qk_norm: bool = False
  tie_embeddings: bool = False
  use_bias: bool = True
  attention_impl: str = "auto"
  remat: str = "none"
  scan_layers: bool = False
  global_to_local: str = "full"
  patch_embed: str = "linear"
  byte_shift: str = "sequence"
  patch_sizes: tuple[int, ...] = ()
  mid_dims: tuple[int, ...] = ()
  mid_layers: tuple[int, ...] = ()
  mid_heads: tuple[int, ...] = ()
  conv_kernel_sizes: tuple[int, ...] = ()
  cross_patch: int = 0
  fp8: bool = False

  def __post_init__(self):
    self._validate_common()
    for name in ("patch_size", "global_dim", "global_layers", "global_heads", "local_dim",
                 "local_layers", "local_heads"):
      _check_positive_int(name, getattr(self, name))
    for name in ("patch_sizes", "mid_dims", "mid_layers", "mid_heads", "conv_kernel_sizes"):
      # Frozen dataclass: normalise lists (JSON configs) to tuples, which keep it hashable.
      object.__setattr__(self, name, _int_tuple(name, getattr(self, name)))
    if self.patch_sizes == (self.patch_size,):
      object.__setattr__(self, "patch_sizes", ())      # the 2-level model, spelt out
    self._validate_levels()
    if self.global_to_local not in _GLOBAL_TO_LOCAL:
      raise ConfigError(f"global_to_local must be one of {_GLOBAL_TO_LOCAL}, got "
                        f"{self.global_to_local!r}")
    if self.patch_embed not in _PATCH_EMBEDS:
      raise ConfigError(f"patch_embed must be one of {_PATCH_EMBEDS}, got {self.patch_embed!r}")
    if self.byte_shift not in _BYTE_SHIFTS:
      raise ConfigError(f"byte_shift must be one of {_BYTE_SHIFTS}, got {self.byte_shift!r}")
    if self.patch_sizes:
      if self.seq_len % self.patch_size:
        raise ConfigError(
            f"seq_len={self.seq_len} must be a multiple of the product of patch_sizes "
            f"{self.patch_sizes} = {self.patch_size}")
    else:
      _check_divides("seq_len", self.seq_len, "patch_size", self.patch_size)
    _check_divides("global_dim", self.global_dim, "patch_size", self.patch_size)
    for scale in ("global", "local"):
      head_dim = getattr(self, f"{scale}_head_dim")
      if head_dim is None:
        _check_divides(f"{scale}_dim", getattr(self, f"{scale}_dim"), f"{scale}_heads",
                       getattr(self, f"{scale}_heads"))
      else:
        _check_positive_int(f"{scale}_head_dim", head_dim)
    if isinstance(self.cross_patch, bool) or not isinstance(self.cross_patch, int) \
        or not 0 <= self.cross_patch <= self.local_patch_size:
      raise ConfigError(
          f"cross_patch must be an integer in 0..{self.local_patch_size} (the local patch "
          f"size), got {self.cross_patch!r}")
    if self.cross_patch and self.local_attention_head_dim % 2:
      raise ConfigError(
          f"cross_patch uses rotary position embeddings, which need an even local head width;"
          f" got local_attention_head_dim={self.local_attention_head_dim}")
    if self.positions == "rotary":
      head_dims = ((self.global_attention_head_dim, self.local_attention_head_dim)
                   + tuple(d // h for d, h in zip(self.mid_dims, self.mid_heads)))
      if any(d % 2 for d in head_dims):
        raise ConfigError(f"positions='rotary' needs even attention head widths, got "
                          f"{head_dims} (global, local, middle levels)")

  def _validate_levels(self) -> None:
    """Checks `patch_sizes` and the `mid_*` fields of a deeper hierarchy."""
    mids = len(self.patch_sizes) - 1 if self.patch_sizes else 0
    if self.patch_sizes and math.prod(self.patch_sizes) != self.patch_size:
      raise ConfigError(
          f"patch_sizes {self.patch_sizes} multiply to {math.prod(self.patch_sizes)}, but "
          f"patch_size={self.patch_size}: patch_size is the bytes of one global patch, the "
          f"product of patch_sizes")
    for name in ("mid_dims", "mid_layers", "mid_heads"):
      if len(getattr(self, name)) != mids:
        raise ConfigError(
            f"{name} must have one entry per level between the global and the local model "
            f"({mids} for patch_sizes={self.patch_sizes}), got {getattr(self, name)}")
    units = self.unit_sizes
    for i, (dim, heads) in enumerate(zip(self.mid_dims, self.mid_heads)):
      _check_divides(f"mid_dims[{i}]", dim, f"mid_heads[{i}]", heads)
      _check_divides(f"mid_dims[{i}]", dim, f"the bytes per unit of level {i + 1}",
                     units[i + 1])

  @property
  def num_patches(self) -> int:
    """K = seq_len / patch_size, the global model's sequence length."""
    return self.seq_len // self.patch_size

  @property
  def byte_global_dim(self) -> int:
    """D_G = global_dim / patch_size, the global embedding width of one byte."""
    return self.global_dim // self.patch_size

  @property
  def global_embed_dim(self) -> int:
    """Width of each byte's global embedding (and position): D_G with
    `patch_embed="concat"`, `local_dim` with "linear"."""
    return self.byte_global_dim if self.patch_embed == "concat" else self.local_dim

  @property
  def global_attention_head_dim(self) -> int:
    """Per-head width of global attention."""
    return self.global_head_dim or self.global_dim // self.global_heads

  @property
  def levels(self) -> int:
    """N, the number of levels: the global model, `len(mid_dims)` middle ones, the local."""
    return max(2, len(self.patch_sizes) + 1)

  @property
  def level_patch_sizes(self) -> tuple[int, ...]:
    """The N-1 patch sizes, coarse to fine (`(patch_size,)` for two levels): entry l-1 is
    how many units level l runs over within one unit of level l-1."""
    return self.patch_sizes or (self.patch_size,)

  @property
  def unit_sizes(self) -> tuple[int, ...]:
    """Bytes per position of each level, coarse to fine: `patch_size` for the global model,
    ..., 1 for the local model (N entries)."""
    sizes, unit = [], 1
    for p in reversed(self.level_patch_sizes):
      sizes.append(unit)
      unit *= p
    return (unit, *reversed(sizes))

  @property
  def local_patch_size(self) -> int:
    """Bytes the local model runs over at once (the finest patch size)."""
    return self.level_patch_sizes[-1]

  @property
  def local_attention_head_dim(self) -> int:
    """Per-head width of local attention."""
    return self.local_head_dim or self.local_dim // self.local_heads


@dataclasses.dataclass(frozen=True)
class TransformerConfig(_CommonConfig):
  """Configuration of the byte-level baseline transformer (the paper's comparison).

  `TransformerConfig(seq_len, dim, layers, heads)` is enough; the other fields mean what
  they mean in `MegabyteConfig`, some with other defaults (`positions="learned"`: one table
  over the window's bytes; `fp8`: the four dense matmuls of every block in FP8, the
  embedding and byte head in `dtype`).
  """

  seq_len: int
  dim: int
  layers: int
  heads: int
  head_dim: Optional[int] = None
  vocab_size: int = VOCAB_SIZE
  mlp_ratio: int = 4
  activation: str = "gelu"
  norm: str = "layernorm"
  dropout: float = 0.0
  embed_dropout: float = 0.0
  dtype: str = "float32"
  param_dtype: str = "float32"
  init_std: Optional[float] = None
  embed_init_std: float = 0.02
  token_shift: bool = False
  positions: str = "learned"
  qk_norm: bool = False
  tie_embeddings: bool = False
  use_bias: bool = True
  attention_impl: str = "auto"
  remat: str = "none"
  scan_layers: bool = False
  fp8: bool = False

  def __post_init__(self):
    self._validate_common()
    for name in ("dim", "layers", "heads"):
      _check_positive_int(name, getattr(self, name))
    if self.head_dim is None:
      _check_divides("dim", self.dim, "heads", self.heads)
    else:
      _check_positive_int("head_dim", self.head_dim)
    if self.positions == "rotary" and self.attention_head_dim % 2:
      raise ConfigError(f"positions='rotary' needs an even attention head width, got "
                        f"{self.attention_head_dim}")

  @property
  def attention_head_dim(self) -> int:
    """Per-head width of attention."""
    return self.head_dim or self.dim // self.heads

  @property
  def patch_size(self) -> int:
    """A byte transformer has no patches; 1 keeps length checks uniform."""
    return 1
