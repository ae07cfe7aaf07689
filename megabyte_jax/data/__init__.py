"""Byte datasets.

`load_byte_data(config.data, seq_len)` gives the training stream and the validation windows
for the configured source. Today's source is `local_files` (any directory or glob, default the
Python standard library); see `megabyte_jax.data.local_files`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from megabyte_jax.errors import DataError
from megabyte_jax.data.local_files import (STDLIB, EvalWindows, concatenate,
                                           eval_windows, random_windows, read_documents,
                                           resolve_files, split_files)

SOURCES = ("local_files",)

__all__ = ["STDLIB", "SOURCES", "ByteData", "DataError", "EvalWindows", "eval_windows",
           "load_byte_data", "load_eval_files", "random_windows", "split_file_lists"]


@dataclasses.dataclass(frozen=True)
class ByteData:
  """Training stream and validation windows of one corpus.

  Attributes:
    train: uint8 `[bytes]`, the training documents joined with separators.
    eval: every validation byte in model-length windows.
    train_files, eval_files: how many files went into each split.
  """

  train: np.ndarray
  eval: EvalWindows
  train_files: int
  eval_files: int


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
  train = concatenate(read_documents(train_files), data_cfg.separator)
  windows = eval_windows(read_documents(eval_files), seq_len, shuffle_seed=data_cfg.split_seed)
  return ByteData(train=train, eval=windows, train_files=len(train_files),
                  eval_files=len(eval_files))
