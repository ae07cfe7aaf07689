"""Initialisers of dense kernels and embedding tables (the paper's truncated normal, or
fan-in variance scaling)."""

from __future__ import annotations

from typing import Callable, Optional

import flax.linen as nn
import jax

Initializer = Callable[..., jax.Array]


def embedding_init(init_std: Optional[float], embed_std: float) -> Initializer:
  """Initializer for embedding tables and learned positions/pads: normal with standard
  deviation `embed_std` (the config's `embed_init_std`), truncated at 2 std like the paper's
  init when `init_std` is set."""
  if init_std is not None:
    return nn.initializers.truncated_normal(stddev=embed_std)
  return nn.initializers.normal(stddev=embed_std)


def dense_init(init_std: Optional[float], scale: float = 1.0,
               in_axis: int | tuple[int, ...] = 0,
               out_axis: int | tuple[int, ...] = -1) -> Initializer:
  """Initializer for a dense kernel.

  Args:
    init_std: if set, the paper's truncated normal (cut at 2 std) with this std.
    scale: variance scale of the fan-in init (e.g. 1 / (2 * layers) for residual outputs).
    in_axis, out_axis: which kernel axes are fan-in and fan-out.
  """
  if init_std is not None:
    return nn.initializers.truncated_normal(stddev=init_std)
  return nn.initializers.variance_scaling(scale, "fan_in", "truncated_normal",
                                          in_axis=in_axis, out_axis=out_axis)
