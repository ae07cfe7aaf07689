"""Byte datasets.

`load_byte_data(config.data, seq_len)` gives the training documents (a random-access source
that `megabyte_jax.data.pipeline.training_batches` turns into packed, shuffled, per-host,
checkpointable batches) and the validation windows for the configured source. The default
source is `local_files` (any directory or glob, default the Python standard library); see
`megabyte_jax.data.local_files`.

Small corpora: when the split by whole files (a hash of each path) would leave the training
or the validation split empty, as for a single file (an enwik8-style corpus) or a folder of a
few files, every file is split by bytes instead: its last `data.eval_fraction` of bytes
validate, the rest trains (`split_by_bytes`). No byte is in both splits.
"""

from __future__ import annotations

import dataclasses
import fractions
import math
import os
from typing import Any, Optional

import numpy as np

from megabyte_jax.errors import DataError
from megabyte_jax.data import identity as identity_lib
from megabyte_jax.extras import require
from megabyte_jax.data.local_files import (STDLIB, EvalWindows, eval_windows, read_documents,
                                           resolve_files, split_files)
from megabyte_jax.data.pipeline import InMemorySource, document_bytes, training_batches

LOCAL_FILES = "local_files"
SOURCES = (LOCAL_FILES, "byte_files", "image_folder", "audio_folder")  # or a TFDS catalog name
DEFAULT_DATA_DIR = "~/tensorflow_datasets"

__all__ = ["STDLIB", "SOURCES", "ByteData", "DataError", "EvalWindows", "InMemorySource",
           "eval_windows", "load_byte_data", "load_eval_files", "separator_of",
           "split_by_bytes", "split_documents", "split_file_lists", "training_batches",
           "validation_documents"]


@dataclasses.dataclass(frozen=True)
class ByteData:
  """Training documents and validation windows of one corpus.

  Attributes:
    train: random-access training documents (`len`, `[i]` -> bytes), the input of
      `training_batches`.
    eval: every validation byte in model-length windows.
    train_files, eval_files: how many documents are in each split.
    train_bytes: total training bytes, when known without reading everything.
    identity: what the data is, to notice a change when a run resumes
      (`megabyte_jax.data.identity`: files with sizes, times and digests, or a prepared
      dataset's document counts).
  """

  train: Any
  eval: EvalWindows
  train_files: int
  eval_files: int
  train_bytes: Optional[int] = None
  identity: Optional[dict] = None


def load_eval_files(pattern: str, seq_len: int) -> tuple[EvalWindows, int]:
  """Reads every file matching `pattern` into evaluation windows; returns (windows, files).

  Raises:
    DataError: no matching files, unreadable files, all files empty, or windows that would
      not fit in memory.
  """
  _, files = resolve_files(pattern, max_file_bytes=None)
  return eval_windows(read_documents(files), seq_len, names=files), len(files)


def split_file_lists(data_cfg) -> tuple[list[str], list[str]]:
  """The `(training files, validation files)` that `data_cfg` selects (a files source).

  Raises:
    DataError: no matching files, or an empty split.
  """
  files, train_files, eval_files = _file_split(data_cfg)
  for split, chosen in (("training", train_files), ("validation", eval_files)):
    if not chosen:
      raise DataError(
          f"the {split} split of {data_cfg.files!r} is empty ({len(files)} file(s) matched, "
          f"data.eval_fraction={data_cfg.eval_fraction}); match more files or set "
          f"data.eval_files to a separate validation glob")
  return train_files, eval_files


def split_by_bytes(docs: list[np.ndarray], eval_fraction: float
                   ) -> tuple[list[np.ndarray], list[np.ndarray]]:
  """Splits each document by bytes: its last `ceil(len * eval_fraction)` bytes validate, the
  rest trains. Returns `(training documents, validation documents)`; no byte is in both.
  The product is exact, of the fraction as written (`100 * 0.07` holds out 7 bytes, not the
  8 of its floating-point value 7.000000000000001)."""
  exact = fractions.Fraction(str(float(eval_fraction)))
  train, evaluation = [], []
  for doc in docs:
    held = min(len(doc), math.ceil(len(doc) * exact))
    train.append(doc[:len(doc) - held])
    evaluation.append(doc[len(doc) - held:])
  return train, evaluation


def split_documents(data_cfg) -> tuple[list[np.ndarray], list[np.ndarray], list[str], bool]:
  """The training and validation documents of a local-files source:
  `(train docs, validation docs, validation file names, by_bytes)`.

  By whole files (`split_file_lists`) where that gives both splits files; otherwise, with no
  `data.eval_files` and `data.eval_fraction > 0` (a single file, or a folder of a few
  files), by bytes within every file (`split_by_bytes`; `by_bytes` is True).

  Raises:
    DataError: no matching files, unreadable files, or an empty split.
  """
  train, evaluation, eval_files, by_bytes, _ = _split_local(data_cfg)
  return train, evaluation, eval_files, by_bytes


def _split_local(data_cfg) -> tuple[list[np.ndarray], list[np.ndarray], list[str], bool, dict]:
  """`split_documents` and the identity of the files read (`identity.local_identity`)."""
  files, train_files, eval_files = _file_split(data_cfg)
  if (train_files and eval_files) or data_cfg.get("eval_files") or not (
      data_cfg.eval_fraction > 0):
    train_files, eval_files = split_file_lists(data_cfg)
    train, evaluation = read_documents(train_files), read_documents(eval_files)
    found = identity_lib.local_identity({"train": (train_files, train),
                                         "validation": (eval_files, evaluation)}, False)
    return train, evaluation, eval_files, False, found
  whole = read_documents(files)
  train, evaluation = split_by_bytes(whole, data_cfg.eval_fraction)
  if not sum(len(d) for d in evaluation):
    raise DataError(f"the validation split of {data_cfg.files!r} is empty: its "
                    f"{len(files)} file(s) hold no bytes")
  return (train, evaluation, files, True,
          identity_lib.local_identity({"files": (files, whole)}, True))


def _file_split(data_cfg) -> tuple[list[str], list[str], list[str]]:
  """`(all files, training files, validation files)` by whole files (may be empty)."""
  skip = bool(data_cfg.get("skip_unreadable", False))
  root, files = resolve_files(data_cfg.files, max_file_bytes=None,   # large: memory-mapped
                              skip_unreadable=skip)
  if data_cfg.get("eval_files"):
    _, eval_files = resolve_files(data_cfg.eval_files, max_file_bytes=None,
                                  skip_unreadable=skip)
    held_out = set(eval_files)   # real paths: a file is never in both splits
    train_files = [f for f in files if f not in held_out]
  else:
    train_files, eval_files = split_files(root, files, data_cfg.eval_fraction,
                                          data_cfg.split_seed)
  return files, train_files, eval_files


def _builders(data_cfg) -> Any:
  """`megabyte_jax.data.builders`, imported on first use (TFDS is slow to import).

  Raises:
    MissingExtra: TFDS (or Pillow) is not installed: one line naming the [tfds] extra.
  """
  return require("megabyte_jax.data.builders", "tfds", f"data.name={data_cfg.name}")


def builder_options(data_cfg, patch_size: int) -> dict:
  """The options of `config.data` that the TFDS builder (or catalog reader) named by
  `data_cfg.name` takes; an image `patch_size` defaults to the model's patch size."""
  builders = _builders(data_cfg)
  known = builders.BUILDER_OPTIONS.get(data_cfg.name, builders.CATALOG_OPTIONS)
  options = {k: data_cfg[k] for k in known if k in data_cfg and data_cfg[k] is not None}
  if "patch_size" in known and options.get("order") == "patch":
    options.setdefault("patch_size", patch_size)
  return options


def _builder_source(data_cfg, patch_size: int, split: str) -> Any:
  """The random-access `split` of a TFDS builder or prepared catalog dataset."""
  builders = _builders(data_cfg)
  data_dir = os.path.expanduser(data_cfg.get("data_dir") or DEFAULT_DATA_DIR)
  return builders.build_source(data_cfg.name, builder_options(data_cfg, patch_size), data_dir,
                               split)


def separator_of(data_cfg) -> Optional[int]:
  """The byte `training_batches` appends to each training document: `data_cfg.separator`,
  or None (documents run together) where it is -1 or None."""
  separator = data_cfg.get("separator", 0)
  return None if separator in (None, -1) else separator


def validation_documents(data_cfg, patch_size: int = 1) -> list[np.ndarray]:
  """The validation documents (uint8 arrays) of the source `data_cfg` selects, in order:
  the documents `load_byte_data` cuts into plain windows (and strided evaluation reuses).

  Raises:
    DataError: no matching files, an empty split, unreadable files.
  """
  if data_cfg.name == LOCAL_FILES:
    return split_documents(data_cfg)[1]
  validation = _builder_source(data_cfg, patch_size, "validation")
  try:
    return [document_bytes(validation[i]) for i in range(len(validation))]
  except (RuntimeError, OSError, ValueError) as e:   # array_record's own errors included
    data_dir = os.path.expanduser(data_cfg.get("data_dir") or DEFAULT_DATA_DIR)
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise DataError(
        f"cannot read the validation split of the prepared dataset {data_cfg.name!r} in "
        f"{data_dir}: {first} (a file of it is truncated or corrupt: delete that dataset's "
        f"folder there to prepare it again)") from e


def load_byte_data(data_cfg, seq_len: int, patch_size: int = 1) -> ByteData:
  """Loads the corpus that `data_cfg` (the `config.data` ConfigDict) describes.

  `data_cfg.name` selects the source:
    "local_files" (default): `files` (pattern or "stdlib") read straight from disk;
      `eval_files` (optional separate pattern) or `eval_fraction` of `files` by path hash,
      `split_seed`.
    "byte_files", "image_folder", "audio_folder": TFDS builders (`megabyte_jax.data.builders`)
      that prepare `array_record` files under `data_dir` once and read them without
      TensorFlow; their options (`image_size`, `channels`, `order`, `patch_size`, `encoding`,
      `sample_rate`, ...) are fields of `data_cfg`.
    any other name: a TFDS catalog dataset already prepared in `data_dir` (`feature` names
      the field holding the text, image or audio).

  Raises:
    DataError: unknown source, no matching files, an empty split, unreadable files, only
      empty training files, validation windows that would not fit in memory.
    MissingExtra: a TFDS source without the [tfds] extra installed.
  """
  if data_cfg.name == LOCAL_FILES:
    # files of MAP_BYTES or more: memory-mapped
    train_docs, eval_docs, eval_files, _, identity = _split_local(data_cfg)
    train = InMemorySource(train_docs)
    train_bytes = sum(len(d) for d in train_docs)
    if not train_bytes:   # with a separator, the packer would train on separators alone
      raise DataError(f"no bytes to train on: every training file of {data_cfg.files!r} is "
                      f"empty ({len(train_docs)} file(s))")
  else:
    train = _builder_source(data_cfg, patch_size, "train")
    eval_docs = validation_documents(data_cfg, patch_size)
    train_bytes, eval_files = None, None
    identity = identity_lib.source_identity(data_cfg.name, len(train), eval_docs)
  windows = eval_windows(eval_docs, seq_len, shuffle_seed=data_cfg.split_seed,
                         names=eval_files)
  return ByteData(train=train, eval=windows, train_files=len(train),
                  eval_files=len(eval_docs), train_bytes=train_bytes, identity=identity)
