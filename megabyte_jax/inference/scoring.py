"""Scoring a model on evaluation windows: summed cross-entropy and bits per byte.

Plain evaluation cuts each document into consecutive model-length windows, so a byte's
context is only what precedes it in its window. Two ways to do better, each scoring every
byte exactly once:

- Sliding-window scoring (`strided_windows`, `evaluate --stride=S`) gives every byte a
  longer left context: windows overlap, advancing by `stride` bytes, and each window after
  a document's first scores only its last `stride` bytes, the rest of it serving as
  context. It costs about `seq_len / stride` times the plain evaluation. (This is the
  paper's "sliding window" row of Table 11, not its strided inference.)
- The paper's strided inference (Section 2.3.3, Table 11; `patch_strided_windows`,
  `evaluate --strided`): a MEGABYTE model predicts the last bytes of a patch worse than
  the first, so the document is run twice, the second time offset by half a patch, and
  each byte is scored in the pass where it falls in the first half of a patch. Twice the
  cost of plain evaluation.
"""

from __future__ import annotations

import time
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from megabyte_jax.data import EvalWindows
from megabyte_jax.errors import ConfigError, DataError
from megabyte_jax.training.losses import LN2, masked_nll_sum


def make_eval_step(model: nn.Module):
  """Returns a jitted `(params, tokens, mask) -> (sum of nats, scored bytes)`."""

  @jax.jit
  def eval_step(params, tokens, mask):
    logits = model.apply({"params": params}, tokens)
    return masked_nll_sum(logits, tokens, mask)

  return eval_step


def evaluate_windows(eval_step, params: Any, windows: EvalWindows, batch_size: int,
                     limit: Optional[int] = None) -> dict:
  """Scores `windows` (the first `limit` of them, or all); returns bpb, bytes and timing."""
  start = time.perf_counter()
  # Keep the per-batch sums on the device and fetch them once: a host sync per batch would
  # stall the device between batches. Summed in float64 on the host, in order, as before.
  sums = [eval_step(params, jnp.asarray(tokens), jnp.asarray(mask))
          for tokens, mask in windows.batches(batch_size, limit)]
  total_nats, total_bytes = 0.0, 0.0
  for nats, count in jax.device_get(sums):
    total_nats += float(nats)
    total_bytes += float(count)
  seconds = time.perf_counter() - start
  return {"bpb": total_nats / max(total_bytes, 1.0) / LN2, "bytes": int(total_bytes),
          "seconds": round(seconds, 3)}


def check_stride(stride: int, seq_len: int, patch_size: int) -> None:
  """Validates a stride for `strided_windows`.

  Raises:
    ConfigError: unless `stride` is a positive multiple of `patch_size` and at most `seq_len`.
  """
  if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or stride <= 0:
    raise ConfigError(f"stride must be a positive integer, got {stride!r}")
  if stride % patch_size:
    raise ConfigError(f"stride={stride} must be a multiple of the patch size {patch_size}")
  if stride > seq_len:
    raise ConfigError(f"stride={stride} must be at most the model's seq_len={seq_len}")


def strided_spans(length: int, seq_len: int, stride: int) -> list[tuple[int, int, int]]:
  """The windows that score a document of `length` bytes with overlapping context.

  Returns `(window start, first scored byte, end of scored bytes)` per window (document
  offsets). The first window starts at 0 and scores its bytes `0 .. seq_len-1`; window `w`
  starts at `w * stride` and scores its last `stride` bytes (fewer at the document's end).
  The scored ranges tile `0 .. length-1` exactly once. `stride == seq_len` gives the plain
  consecutive windows.
  """
  if length <= 0:
    return []
  end = min(length, seq_len)
  spans = [(0, 0, end)]
  start = 0
  while end < length:
    start += stride
    new_end = min(start + seq_len, length)
    spans.append((start, end, new_end))
    end = new_end
  return spans


def strided_windows(docs: Sequence[np.ndarray], seq_len: int, stride: int,
                    patch_size: int = 1) -> EvalWindows:
  """Sliding-window scoring: evaluation windows of `docs` that overlap by `seq_len -
  stride` bytes (not the paper's strided inference: that is `patch_strided_windows`).

  Each window holds up to `seq_len` bytes of one document (zero-padded at its end); its
  mask is 1 only on the bytes it scores (`strided_spans`), so every byte of every document
  is scored exactly once, with up to `seq_len - stride` bytes more context than in plain
  windows. The windows keep the order of the documents.

  Raises:
    ConfigError: a stride that is not a positive multiple of `patch_size` up to `seq_len`.
    DataError: when every document is empty.
  """
  check_stride(stride, seq_len, patch_size)
  tokens, masks = [], []
  for doc in docs:
    for start, first, end in strided_spans(len(doc), seq_len, stride):
      piece = doc[start:start + seq_len]
      row = np.zeros((seq_len,), np.int32)
      row[:len(piece)] = piece
      mask = np.zeros((seq_len,), np.float32)
      mask[first - start:end - start] = 1.0
      tokens.append(row)
      masks.append(mask)
  if not tokens:
    raise DataError("no bytes to evaluate: every matching file is empty")
  return EvalWindows(tokens=np.stack(tokens), mask=np.stack(masks))


def patch_strided_windows(docs: Sequence[np.ndarray], seq_len: int,
                          patch_size: int) -> EvalWindows:
  """The paper's strided inference (Section 2.3.3): two passes over each document, offset
  by half a patch, each scoring the first half of every patch.

  Pass A cuts the document into consecutive `seq_len` windows from byte 0 and scores the
  first `a = ceil(P / 2)` bytes of each patch; pass B does the same from byte `a` and
  scores the first `P - a` bytes of each of its patches, i.e. the second half of pass A's.
  Every byte is scored exactly once, always at one of the first positions of a patch,
  where MEGABYTE's local model predicts best. Windows are zero-padded at a document's end
  (padding is never scored). Returns both passes' windows, document by document.

  Raises:
    ConfigError: `patch_size` below 2 (a byte model has no patches to offset) or not
      dividing `seq_len`.
    DataError: when every document is empty.
  """
  if patch_size < 2:
    raise ConfigError(f"strided inference needs a patch of at least 2 bytes, got "
                      f"patch_size={patch_size} (a byte Transformer has no patches)")
  if seq_len % patch_size:
    raise ConfigError(f"seq_len={seq_len} must be a multiple of patch_size={patch_size}")
  first = -(-patch_size // 2)                    # bytes of each patch pass A scores
  in_patch = np.arange(seq_len) % patch_size
  tokens, masks = [], []
  for doc in docs:
    for offset, keep in ((0, first), (first, patch_size - first)):
      part = doc[offset:]
      for start in range(0, len(part), seq_len):
        piece = part[start:start + seq_len]
        row = np.zeros((seq_len,), np.int32)
        row[:len(piece)] = piece
        mask = ((in_patch < keep) & (np.arange(seq_len) < len(piece))).astype(np.float32)
        tokens.append(row)
        masks.append(mask)
  if not tokens:
    raise DataError("no bytes to evaluate: every matching file is empty")
  return EvalWindows(tokens=np.stack(tokens), mask=np.stack(masks))
