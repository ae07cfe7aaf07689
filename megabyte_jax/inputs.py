"""Checks on model inputs, shared by both models and the command-line tools."""

from __future__ import annotations

import jax
import numpy as np

from megabyte_jax.errors import InputError


def check_tokens(tokens, patch_size: int, max_len: int) -> None:
  """Validates a `[batch, length]` array of byte ids before it reaches a model.

  Shape and dtype are checked always (also under `jit`); byte values are checked when the
  array is concrete (not a tracer), so eager calls and the data readers catch them.

  Raises:
    InputError: naming the problem (rank, dtype, length not a multiple of the patch size,
      length above the model's `seq_len`, or bytes outside 0..255).
  """
  shape = getattr(tokens, "shape", None)
  if shape is None or len(shape) != 2:
    raise InputError(f"tokens must be a [batch, length] array, got shape {shape}")
  if not np.issubdtype(np.dtype(tokens.dtype), np.integer):
    raise InputError(f"tokens must be integer byte ids (0..255), got dtype {tokens.dtype}")
  length = shape[1]
  if length == 0:
    raise InputError("tokens must hold at least one patch of bytes, got length 0")
  if length % patch_size:
    raise InputError(
        f"sequence length {length} is not a multiple of the patch size {patch_size}")
  if length > max_len:
    raise InputError(f"sequence length {length} exceeds the model's seq_len {max_len}")
  try:
    values = np.asarray(tokens)
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    return  # traced under jit: values are unknown here, shapes were checked above
  if values.size and (values.min() < 0 or values.max() > 255):
    bad = values[(values < 0) | (values > 255)]
    raise InputError(
        f"tokens must be bytes in 0..255; found {bad.size} value(s) outside, e.g. {bad.flat[0]}")
