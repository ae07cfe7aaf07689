"""A small, honest reader of local files as bytes.

Each matching file is one document. Documents are split into train and validation by a hash
of their path (relative to the corpus root), so the split is the same on every machine and
does not move when files are added. Training documents go through the Grain pipeline
(`megabyte_jax.data.pipeline`); evaluation scores every byte of every validation document
exactly once, in windows of the model's length, each document starting from an empty context.

The default corpus, `"stdlib"`, is the source of the running Python's standard library
(real code, as in the paper's Code set) and needs no download.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import os
import sysconfig
from typing import Iterator, Optional, Sequence

import numpy as np

from megabyte_jax.errors import DataError

STDLIB = "stdlib"
_SKIP_DIRS = ("site-packages", "dist-packages", "__pycache__")


def stdlib_root() -> str:
  """Directory of the running Python's standard library sources."""
  return sysconfig.get_paths()["stdlib"]


def resolve_files(pattern: str) -> tuple[str, list[str]]:
  """Expands a file pattern into `(root, sorted file paths)`.

  Args:
    pattern: `"stdlib"` (every `.py` file of the standard library, installed packages
      excluded), a directory (every file below it), or a glob (`**` recurses).

  Raises:
    DataError: when nothing matches.
  """
  if pattern == STDLIB:
    root = stdlib_root()
    files = [f for f in glob.glob(os.path.join(root, "**", "*.py"), recursive=True)
             if not any(part in _SKIP_DIRS for part in f[len(root):].split(os.sep))]
  else:
    expanded = os.path.expanduser(pattern)
    if os.path.isdir(expanded):
      root = expanded
      files = glob.glob(os.path.join(expanded, "**", "*"), recursive=True)
    else:
      files = glob.glob(expanded, recursive=True)
      root = os.path.commonpath(files) if files else ""
    files = [f for f in files if os.path.isfile(f)]
  files = sorted(files)
  if not files:
    raise DataError(f"no files match {pattern!r} (give a directory, a glob such as "
                    f"'docs/**/*.txt', or 'stdlib')")
  if os.path.isfile(root):
    root = os.path.dirname(root)
  return root, files


def split_files(root: str, files: Sequence[str], eval_fraction: float,
                seed: int = 0) -> tuple[list[str], list[str]]:
  """Splits files into (train, eval) by a hash of their path relative to `root`.

  The same path always lands in the same split for a given seed and fraction.
  """
  if not 0.0 <= eval_fraction < 1.0:
    raise DataError(f"data.eval_fraction must be in [0, 1), got {eval_fraction}")
  train, evaluation = [], []
  for path in files:
    rel = os.path.relpath(path, root) if root else path
    digest = hashlib.sha256(f"{seed}:{rel}".encode()).digest()
    bucket = int.from_bytes(digest[:8], "little") / 2.0**64
    (evaluation if bucket < eval_fraction else train).append(path)
  return train, evaluation


def read_documents(files: Sequence[str]) -> list[np.ndarray]:
  """Reads each file as one `uint8` document; empty files give empty documents.

  Raises:
    DataError: naming the file that cannot be read.
  """
  docs = []
  for path in files:
    try:
      with open(path, "rb") as f:
        docs.append(np.frombuffer(f.read(), dtype=np.uint8))
    except OSError as e:
      raise DataError(f"cannot read {path}: {e.strerror or e}") from e
  return docs


@dataclasses.dataclass(frozen=True)
class EvalWindows:
  """Every byte of a set of documents, cut into model-length windows.

  Attributes:
    tokens: int32 `[num_windows, seq_len]`, zero-padded after each document's end.
    mask: float32 `[num_windows, seq_len]`, 1 where a real byte is scored.
  """

  tokens: np.ndarray
  mask: np.ndarray

  @property
  def num_bytes(self) -> int:
    """Number of real (scored) bytes."""
    return int(self.mask.sum())

  def batches(self, batch_size: int,
              limit: Optional[int] = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yields `(tokens, mask)` batches of exactly `batch_size` rows (the last padded with
    masked-out rows), over the first `limit` windows (all when None)."""
    n = len(self.tokens) if limit is None else min(limit, len(self.tokens))
    for start in range(0, n, batch_size):
      tokens = self.tokens[start:min(start + batch_size, n)]
      mask = self.mask[start:min(start + batch_size, n)]
      short = batch_size - len(tokens)
      if short:
        tokens = np.concatenate([tokens, np.zeros((short,) + tokens.shape[1:], np.int32)])
        mask = np.concatenate([mask, np.zeros((short,) + mask.shape[1:], np.float32)])
      yield tokens, mask


def eval_windows(docs: Sequence[np.ndarray], seq_len: int, shuffle_seed: Optional[int] = None
                 ) -> EvalWindows:
  """Cuts each document into consecutive `seq_len` windows (the last one padded).

  With `shuffle_seed`, the windows are put in a fixed random order, so that the first few
  batches (used for quick periodic evaluation) sample the whole split.
  """
  tokens, masks = [], []
  for doc in docs:
    for start in range(0, len(doc), seq_len):
      piece = doc[start:start + seq_len]
      row = np.zeros((seq_len,), np.int32)
      row[:len(piece)] = piece
      mask = np.zeros((seq_len,), np.float32)
      mask[:len(piece)] = 1.0
      tokens.append(row)
      masks.append(mask)
  if not tokens:
    raise DataError("no bytes to evaluate: every matching file is empty")
  tokens, masks = np.stack(tokens), np.stack(masks)
  if shuffle_seed is not None:
    order = np.random.default_rng(shuffle_seed).permutation(len(tokens))
    tokens, masks = tokens[order], masks[order]
  return EvalWindows(tokens=tokens, mask=masks)
