"""Our linen models as `flax.nnx` modules, through Flax's bridge (`nnx.bridge.ToNNX`).

    from megabyte_jax import Megabyte, MegabyteConfig
    from megabyte_jax.nnx_bridge import to_nnx, linen_variables

    model = to_nnx(Megabyte(cfg), variables)        # an nnx.Module holding these parameters
    logits = model(tokens)                          # == Megabyte(cfg).apply(variables, tokens)
    logits = model(tokens, deterministic=False, rngs=nnx.Rngs(dropout=1))   # with dropout
    fresh = to_nnx(Megabyte(cfg), rngs=nnx.Rngs(0))  # newly initialized parameters

The NNX module is the linen module run by `ToNNX`, so it computes exactly what `apply`
computes: same code, same parameter tree (`nnx.state(model, nnx.Param)` mirrors
`variables["params"]`, `block_0/attn/qkv_kernel` and all) and every parameter keeps its
logical axis names as NNX sharding metadata (`out_sharding`), so `nnx.get_partition_spec`
and the rules of `megabyte_jax.sharding` apply to it. `linen_variables(model)` gives the
linen variables back, e.g. for `generate()`, our checkpoints or the train step.

Variables are created without eager sharding (`nnx.use_eager_sharding(False)`), so no mesh is
needed to build the module; shard them afterwards as any NNX state.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

from megabyte_jax.errors import InputError

__all__ = ["linen_variables", "load_linen_variables", "to_nnx"]


def to_nnx(model: nn.Module, variables: Optional[Any] = None, *,
           rngs: Optional[nnx.Rngs] = None) -> nnx.Module:
  """Wraps a linen `Megabyte` or `ByteTransformer` as an `nnx.Module`.

  Args:
    model: the linen module (its `config.seq_len` sets the shape used to create the
      parameters).
    variables: optional linen variables (`{"params": ...}` as `model.init` returns them, boxed
      or not, or the parameter tree itself) to load; without them the parameters are freshly
      initialized from `rngs`.
    rngs: `nnx.Rngs` for initialization (default `nnx.Rngs(0)`); a `dropout` stream, if given,
      is used by calls with `deterministic=False` that pass no `rngs` of their own.

  Returns:
    An NNX module: call it like `model.apply` without the variables,
    `module(tokens, deterministic=True)` -> float32 logits `[batch, T, 256]`.
  """
  wrapped = nnx.bridge.ToNNX(model, rngs=rngs if rngs is not None else nnx.Rngs(0))
  with nnx.use_eager_sharding(False):
    nnx.bridge.lazy_init(wrapped, jnp.zeros((1, model.config.seq_len), jnp.int32))
  if variables is not None:
    load_linen_variables(wrapped, variables)
  return wrapped


def _params_of(variables: Any) -> Any:
  variables = nn.meta.unbox(variables)
  if isinstance(variables, dict) and "params" in variables:
    return variables["params"]
  return variables


def load_linen_variables(module: nnx.Module, variables: Any) -> None:
  """Copies linen parameters into a module made by `to_nnx`, in place (metadata kept).

  Raises:
    InputError: when the trees differ (a missing or extra parameter, or another shape),
      naming the first difference.
  """
  params = _params_of(variables)
  state = nnx.state(module, nnx.Param)
  flat = list(nnx.to_flat_state(state))
  given = {tuple(getattr(k, "key", k) for k in path): leaf
           for path, leaf in jax.tree_util.tree_leaves_with_path(params)}
  expected = {tuple(path) for path, _ in flat}
  extra = sorted(set(given) - expected)
  if extra:
    raise InputError(f"parameter {'/'.join(map(str, extra[0]))} is not in the NNX module "
                     f"(variables of another model?)")
  updated = []
  for path, var in flat:
    key = tuple(path)
    if key not in given:
      raise InputError(f"parameter {'/'.join(map(str, key))} is missing from the variables")
    value = jnp.asarray(given[key])
    if value.shape != var.get_value().shape:
      raise InputError(f"parameter {'/'.join(map(str, key))} has shape {value.shape}, the "
                       f"module's is {var.get_value().shape}")
    updated.append((path, var.replace(value=value.astype(var.get_value().dtype))))
  nnx.update(module, nnx.from_flat_state(updated))


def linen_variables(module: nnx.Module) -> dict:
  """The linen variables `{"params": ...}` (plain arrays) of a module made by `to_nnx`, for
  `model.apply`, `generate()` or our checkpoints."""
  return {"params": nnx.to_pure_dict(nnx.state(module, nnx.Param))}
