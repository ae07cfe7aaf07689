"""Validated model configurations.

Two frozen dataclasses describe the models: `MegabyteConfig` (the multiscale model of the
paper) and `TransformerConfig` (the byte-level baseline). Both validate themselves on
construction, so a bad shape is refused with a message that names the field, before any
parameter is created.

Naming follows the paper's tables: `global_dim` is the width of the global transformer
(P * D_G, the tables' "global D"), so each byte's global embedding has
`global_dim // patch_size` dimensions; `local_dim` is D_L.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import jax.numpy as jnp

from megabyte_jax.errors import ConfigError

VOCAB_SIZE = 256  # raw bytes: no tokenizer

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
_ACTIVATIONS = ("gelu", "relu", "swiglu")
_NORMS = ("layernorm", "rmsnorm")
_ATTENTION_IMPLS = ("auto", "xla", "cudnn")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")


def _check_positive_int(name: str, value: Any) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
    raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def _check_divides(name: str, value: int, divisor_name: str, divisor: int) -> None:
  if value % divisor:
    raise ConfigError(
        f"{name}={value} must be a multiple of {divisor_name}={divisor}")


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
    for name in ("dropout", "embed_dropout"):
      value = getattr(self, name)
      if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ConfigError(f"{name} must be in [0, 1), got {value!r}")
    if self.init_std is not None and not (
        isinstance(self.init_std, (int, float)) and self.init_std > 0):
      raise ConfigError(f"init_std must be None or a positive number, got {self.init_std!r}")

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
    tie_embeddings: predict with the local byte embedding matrix (the paper's equation)
      instead of a separate output projection.
    use_bias: biases in dense layers.
    attention_impl: "xla", "cudnn" (fused flash attention; GPU, half precision only) or
      "auto": cuDNN on GPU when the dtype and shapes allow it, XLA otherwise.
    remat: rematerialization of each transformer block in training: "none" (keep every
      activation), "full" (keep only block inputs; recompute the rest in the backward
      pass), "dots" (keep matmul outputs) or "dots_no_batch" (keep matmul outputs without
      batch dimensions, i.e. weight matmuls, not attention scores). Less memory, more FLOPs.
    scan_layers: run each stack's blocks with `nn.scan` (one compiled block, stacked
      parameters with a leading "layers" axis): much faster compiles for deep models; the
      parameter tree differs (`layers.stack_block_params` converts).
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
  tie_embeddings: bool = False
  use_bias: bool = True
  attention_impl: str = "auto"
  remat: str = "none"
  scan_layers: bool = False

  def __post_init__(self):
    self._validate_common()
    for name in ("patch_size", "global_dim", "global_layers", "global_heads", "local_dim",
                 "local_layers", "local_heads"):
      _check_positive_int(name, getattr(self, name))
    _check_divides("seq_len", self.seq_len, "patch_size", self.patch_size)
    _check_divides("global_dim", self.global_dim, "patch_size", self.patch_size)
    for scale in ("global", "local"):
      head_dim = getattr(self, f"{scale}_head_dim")
      if head_dim is None:
        _check_divides(f"{scale}_dim", getattr(self, f"{scale}_dim"), f"{scale}_heads",
                       getattr(self, f"{scale}_heads"))
      else:
        _check_positive_int(f"{scale}_head_dim", head_dim)

  @property
  def num_patches(self) -> int:
    """K = seq_len / patch_size, the global model's sequence length."""
    return self.seq_len // self.patch_size

  @property
  def byte_global_dim(self) -> int:
    """D_G = global_dim / patch_size, the global embedding width of one byte."""
    return self.global_dim // self.patch_size

  @property
  def global_attention_head_dim(self) -> int:
    """Per-head width of global attention."""
    return self.global_head_dim or self.global_dim // self.global_heads

  @property
  def local_attention_head_dim(self) -> int:
    """Per-head width of local attention."""
    return self.local_head_dim or self.local_dim // self.local_heads


@dataclasses.dataclass(frozen=True)
class TransformerConfig(_CommonConfig):
  """Configuration of the byte-level baseline transformer (the paper's comparison).

  `TransformerConfig(seq_len, dim, layers, heads)` is enough; the other fields mean what
  they mean in `MegabyteConfig`.
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
  tie_embeddings: bool = False
  use_bias: bool = True
  attention_impl: str = "auto"
  remat: str = "none"
  scan_layers: bool = False

  def __post_init__(self):
    self._validate_common()
    for name in ("dim", "layers", "heads"):
      _check_positive_int(name, getattr(self, name))
    if self.head_dim is None:
      _check_divides("dim", self.dim, "heads", self.heads)
    else:
      _check_positive_int("head_dim", self.head_dim)

  @property
  def attention_head_dim(self) -> int:
    """Per-head width of attention."""
    return self.head_dim or self.dim // self.heads

  @property
  def patch_size(self) -> int:
    """A byte transformer has no patches; 1 keeps length checks uniform."""
    return 1
