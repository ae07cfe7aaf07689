"""Byte datasets.

`load_byte_data(config.data, seq_len)` gives the training documents (a random-access source
that `megabyte_jax.data.pipeline.training_batches` turns into packed, shuffled, per-host,
checkpointable batches) and the validation windows for the configured source. The default
source is `local_files` (any directory or glob, default the Python standard library); see
`megabyte_jax.data.local_files`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from megabyte_jax.errors import DataError
from megabyte_jax.data.local_files import (STDLIB, EvalWindows, eval_windows, read_documents,
                                           resolve_files, split_files)
from megabyte_jax.data.pipeline import InMemorySource, training_batches

SOURCES = ("local_files",)

__all__ = ["STDLIB", "SOURCES", "ByteData", "DataError", "EvalWindows", "InMemorySource",
           "eval_windows", "load_byte_data", "load_eval_files", "split_file_lists",
           "training_batches"]


@dataclasses.dataclass(frozen=True)
class ByteData:
  """Training documents and validation windows of one corpus.

  Attributes:
    train: random-access training documents (`len`, `[i]` -> bytes), the input of
      `training_batches`.
    eval: every validation byte in model-length windows.
    train_files, eval_files: how many documents are in each split.
    train_bytes: total training bytes, when known without reading everything.
  """

  train: Any
  eval: EvalWindows
  train_files: int
  eval_files: int
  train_bytes: Optional[int] = None


def load_eval_files(pattern: str, seq_len: int) -> tuple[EvalWindows, int]:
  """Reads every file matching `pattern` into evaluation windows; returns (windows, files)."""
  _, files = resolve_files(pattern)
  return eval_windows(read_documents(files), seq_len), len(files)


def split_file_lists(data_cfg) -> tuple[list[str], list[str]]:
  """The `(training files, validation files)` that `data_cfg` selects.

  Raises:
    DataError: unknown source, no matching files, or an empty split.
  """
  if data_cfg.name not in SOURCES:
    raise DataError(f"unknown data source {data_cfg.name!r}; available: {list(SOURCES)}")
  root, files = resolve_files(data_cfg.files)
  if data_cfg.get("eval_files"):
    train_files = files
    _, eval_files = resolve_files(data_cfg.eval_files)
  else:
    train_files, eval_files = split_files(root, files, data_cfg.eval_fraction,
                                          data_cfg.split_seed)
  for split, chosen in (("training", train_files), ("validation", eval_files)):
    if not chosen:
      raise DataError(
          f"the {split} split of {data_cfg.files!r} is empty ({len(files)} file(s) matched, "
          f"data.eval_fraction={data_cfg.eval_fraction}); match more files or set "
          f"data.eval_files to a separate validation glob")
  return train_files, eval_files


def load_byte_data(data_cfg, seq_len: int) -> ByteData:
  """Loads the corpus that `data_cfg` (the `config.data` ConfigDict) describes.

  Fields: `name` ("local_files"), `files` (pattern or "stdlib"), `eval_files` (optional
  separate pattern for validation; otherwise `eval_fraction` of `files` by path hash),
  `split_seed`, `separator` (byte after each training document, or None).

  Raises:
    DataError: unknown source, no matching files, an empty split, unreadable files.
  """
  train_files, eval_files = split_file_lists(data_cfg)
  train_docs = read_documents(train_files)
  windows = eval_windows(read_documents(eval_files), seq_len, shuffle_seed=data_cfg.split_seed)
  return ByteData(train=InMemorySource(train_docs), eval=windows, train_files=len(train_files),
                  eval_files=len(eval_files), train_bytes=sum(len(d) for d in train_docs))
