"""Incremental (KV-cached) decoding of `Megabyte` and `ByteTransformer`: the model's own
decoding methods as pure functions over its parameters.

A `Decoder` wraps one model and one set of `DecodeOptions`; `megabyte_jax.inference.
generation` strings its functions together into a jitted decoding loop:

  prepare(params, batch)                the parameters as the loop reads them (once);
  prefill(params, tokens)               runs the known bytes `tokens [batch, W]` (W static,
                                        W may be 0) in one pass; returns the state for W;
  step(params, state, pos, prev)        next-byte logits `[batch, 256]` for window position
                                        `pos`, given `prev [batch]`, the byte at `pos - 1`;
  patch_step(params, state, pos, patch) called once each time a patch is complete: `pos` is
                                        the position of the next patch's first byte, `patch
                                        [batch, P]` the bytes of the patch just completed;
  level_step(level, params, state, pos, unit)   (MEGABYTE with N > 2 levels) runs middle
                                        level `level` once at the start of each of its units.

Each is `model.apply({"params": ...}, ..., method=...)` of the model's `prefill`,
`decode_step`, `patch_step` or `level_step`: the same submodules and input code as the
training forward pass, so there is no second implementation of the model to keep equal.

`unit_sizes` lists the bytes per unit of every level the loop must step besides the
per-byte one (`(P,)` for two levels, `(1,)` for the byte transformer).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax
from jax.sharding import PartitionSpec

from megabyte_jax.errors import InputError
from megabyte_jax.layers.kvcache import CACHE_BATCH
from megabyte_jax.layers import CACHE_AXES, FusedStack, KVCache, decoding_params, fused_decode
from megabyte_jax.models import megabyte as megabyte_lib
from megabyte_jax.models import transformer as transformer_lib
from megabyte_jax.models.levels import level_specs, model_stacks
from megabyte_jax.models.megabyte import Megabyte
from megabyte_jax.models.transformer import ByteTransformer

__all__ = ["DecodeOptions", "Decoder", "FUSED_LOCAL", "decoder_for", "state_logical_axes",
           "unbox_params"]

# Where `Decoder.prepare` puts the local stack's weights laid out for the fused one-byte
# kernels (`layers.fused_decode`), when they are used.
FUSED_LOCAL = "fused_local"


@dataclasses.dataclass(frozen=True)
class DecodeOptions:
  """How decoding runs (a static argument: each value gets its own compiled loop).

  Attributes:
    fused: the local model's one-byte steps in the fused Pallas kernels
      (`layers.fused_decode`): "auto" on GPU where they apply, "off" never, "interpret"
      where they apply, in Pallas' interpreter (tests on CPU).
    unroll: local steps unrolled per patch; None: all P of them on accelerators (one
      straight-line program per patch), none on CPU (where unrolling only costs compile
      time).
  """

  fused: str = "auto"
  unroll: Optional[int] = None

  def __post_init__(self):
    if self.fused not in fused_decode.FUSED_MODES:
      raise InputError(f"DecodeOptions.fused must be one of {fused_decode.FUSED_MODES}, "
                       f"got {self.fused!r}")
    if self.unroll is not None and (isinstance(self.unroll, bool)
                                    or not isinstance(self.unroll, int) or self.unroll < 1):
      raise InputError(f"DecodeOptions.unroll must be None or an integer >= 1, got "
                       f"{self.unroll!r}")

  def unroll_steps(self, patch_size: int) -> int:
    """Local steps to unroll per patch of `patch_size` bytes (see `unroll`)."""
    if self.unroll is not None:
      return max(1, min(self.unroll, patch_size))
    return 1 if jax.default_backend() == "cpu" else patch_size


def unbox_params(variables: Any) -> Any:
  """The plain parameter tree of `variables` (`{"params": ...}` as `model.init` returns it,
  boxed or not, or the parameters themselves)."""
  variables = nn.meta.unbox(variables)
  if isinstance(variables, dict) and "params" in variables:
    return variables["params"]
  return variables


class Decoder:
  """Prefill and per-byte steps of a `Megabyte` or `ByteTransformer` (module docstring)."""

  def __init__(self, model: nn.Module, options: DecodeOptions = DecodeOptions()):
    if not isinstance(model, (Megabyte, ByteTransformer)):
      raise InputError(f"cannot decode a {type(model).__name__}: generate() supports "
                       f"Megabyte and ByteTransformer models")
    self.model, self.options = model, options
    cfg = self.config = model.config
    self.levels = level_specs(cfg)
    self.seq_len = cfg.seq_len
    self.is_megabyte = isinstance(model, Megabyte)
    # Bytes per unit of every level but the byte level (coarse to fine): the decoding loop
    # runs level l once per `unit_sizes[l]` bytes, the byte level once per byte.
    self.patch_size = cfg.patch_size if self.is_megabyte else 1
    self.unit_sizes = cfg.unit_sizes[:-1] if self.is_megabyte else (1,)
    # The fused one-byte local step serves the plain 2-level model only.
    self.fusable = self.is_megabyte and cfg.levels == 2 and not cfg.cross_patch

  def prepare(self, params: Any, batch: int) -> Any:
    """The parameters as the decoding loop reads them, computed once before it: each stack's
    norms folded and matmul kernels cast (`layers.decoding_params`: the same numbers the
    stack computes from the training parameters) and, when the fused local step applies
    (`fused_decode.use_fused`), the local stack laid out for its kernels under
    `FUSED_LOCAL`."""
    params = dict(params)
    for name, spec in model_stacks(self.config).items():
      params[name] = decoding_params(params[name], spec)
    local = self.levels[-1]
    if self.fusable and fused_decode.use_fused(local.stack, batch, local.patch,
                                               self.options.fused):
      params[FUSED_LOCAL] = fused_decode.prepare_stack(params["local_model"], local.stack)
    return params

  def init_state(self, batch: int) -> dict:
    """An empty state (zero caches) for `batch` rows."""
    if self.is_megabyte:
      return megabyte_lib.init_decode_state(self.config, batch)
    return transformer_lib.init_decode_state(self.config, batch)

  def _apply(self, params: Any, method: str, *args, **kwargs):
    params = {k: v for k, v in params.items() if k != FUSED_LOCAL}
    return self.model.apply({"params": params}, *args, method=method, **kwargs)

  def prefill(self, params: Any, tokens: jax.Array) -> dict:
    """The state after the known window `tokens [batch, W]` (the model's `prefill`)."""
    return self._apply(params, "prefill", tokens)

  def step(self, params: Any, state: dict, pos: jax.Array, prev: jax.Array
           ) -> tuple[jax.Array, dict]:
    """Logits `[batch, 256]` of the byte at window position `pos`; `prev` is byte `pos-1`."""
    fused = None
    if FUSED_LOCAL in params:
      fused = FusedStack(params[FUSED_LOCAL], interpret=self.options.fused == "interpret")
    return self._apply(params, "decode_step", state, pos, prev, fused=fused)

  def patch_step(self, params: Any, state: dict, pos: jax.Array, patch: jax.Array) -> dict:
    """The state after the patch `patch [batch, P]` ending at `pos` (global model once)."""
    if not self.is_megabyte:
      return state
    return self._apply(params, "patch_step", state, pos, patch)

  def level_step(self, level: int, params: Any, state: dict, pos: jax.Array,
                 unit: jax.Array) -> dict:
    """The state after middle level `level` runs for its unit starting at `pos`."""
    return self._apply(params, "level_step", level, state, pos, unit)


def decoder_for(model: nn.Module, options: DecodeOptions = DecodeOptions()) -> Decoder:
  """The `Decoder` of a `Megabyte` or `ByteTransformer` module.

  Raises:
    InputError: for any other kind of model.
  """
  return Decoder(model, options)


def state_logical_axes(state: Any) -> Any:
  """Logical axis names for every array of a decoder state, for sharding rules.

  KV caches get `CACHE_AXES` (`cache_batch`, `cache_length`, `cache_heads`, `cache_kv`;
  after a leading `layers` axis for the stacked caches of `scan_layers` models); other
  arrays (MEGABYTE's current global output) are `cache_batch` followed by unsharded
  axes. Returns a tree of `PartitionSpec`s of logical names, as `nn.get_partition_spec` does
  for parameters: map it onto a mesh with `nn.logical_to_mesh_sharding(spec, mesh, rules)`.
  """
  def axes(x):
    if isinstance(x, KVCache):
      if x.k.ndim == len(CACHE_AXES) + 1:    # stacked caches of `scan_layers`
        spec = PartitionSpec("layers", *CACHE_AXES)
        rows = None if x.shift is None else PartitionSpec("layers", CACHE_BATCH,
                                                          None, None)
        return KVCache(k=spec, v=spec, shift=rows)
      return KVCache.logical_axes(shift=x.shift is not None)
    return PartitionSpec(CACHE_BATCH, *(None,) * (x.ndim - 1))
  return jax.tree_util.tree_map(axes, state, is_leaf=lambda x: isinstance(x, KVCache))
