"""The identity of a run's data, to notice when it changes under a run.

`load_byte_data` records, for local files, every training and validation file's size,
modification time and (for files read into memory, where it is cheap) a SHA-256 digest of
its bytes; for a prepared or catalog dataset, how many documents each split holds and how
many validation bytes. Training keeps it in `DIR/data.json` and, when the run resumes,
compares it with the data it reads now (`changes`): a truncated, appended, replaced, deleted
or new file, or a validation set of other documents, is named instead of training on in
silence.

A file whose digest is known is compared by its bytes (touching it changes nothing); a
memory-mapped file (too large to hash at every start) by its size and modification time.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Mapping, Sequence

import numpy as np

from megabyte_jax.data.local_files import MappedFile

# What each part of a local-files identity holds, in words (`changes`).
_LABELS = {"train": "training file", "validation": "validation file", "files": "file"}


def file_entry(path: str, doc: np.ndarray) -> list:
  """`[size, modification time (ns), digest]` of one document read from `path`; the digest
  (16 hex digits of SHA-256) is None for a memory-mapped file."""
  try:
    mtime = os.stat(path).st_mtime_ns
  except OSError:
    mtime = None
  digest = None
  if not isinstance(doc, MappedFile):
    digest = hashlib.sha256(np.ascontiguousarray(doc).data).hexdigest()[:16]
  return [int(len(doc)), mtime, digest]


def local_identity(parts: Mapping[str, tuple[Sequence[str], Sequence[np.ndarray]]],
                   by_bytes: bool) -> dict:
  """The identity of a local-files corpus: `parts` maps "train" and "validation" (or, for
  a corpus split by bytes within each file, "files") to `(paths, documents)`."""
  out: dict[str, Any] = {"source": "local_files", "split": "bytes" if by_bytes else "files"}
  for name, (paths, docs) in parts.items():
    out[name] = {path: file_entry(path, doc) for path, doc in zip(paths, docs)}
  return out


def source_identity(name: str, train_documents: int, validation: Sequence[np.ndarray]
                    ) -> dict:
  """The identity of a prepared or catalog dataset: its document counts and validation
  bytes."""
  return {"source": name, "train_documents": int(train_documents),
          "validation_documents": len(validation),
          "validation_bytes": int(sum(len(d) for d in validation))}


def _file_changes(label: str, saved: Mapping[str, list], now: Mapping[str, list]
                  ) -> list[str]:
  out = []
  for path in sorted(set(saved) | set(now)):
    if path not in now:
      out.append(f"{label} {path} is gone")
    elif path not in saved:
      out.append(f"new {label} {path} ({now[path][0]:,} bytes)")
    else:
      (size, mtime, digest), (was_size, was_mtime, was_digest) = now[path], saved[path]
      if size != was_size:
        out.append(f"{label} {path} holds {size:,} bytes, was {was_size:,}")
      elif digest is not None and was_digest is not None:
        if digest != was_digest:
          out.append(f"{label} {path} holds other bytes (same size)")
      elif mtime != was_mtime:
        out.append(f"{label} {path} was modified (same size, another time)")
  return out


def changes(saved: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
  """What differs between two identities, in words, validation first (an empty list: the
  same data)."""
  out = []
  keys = sorted(set(saved) | set(now), key=lambda k: (k != "validation", k))
  for key in keys:
    was, value = saved.get(key), now.get(key)
    if isinstance(was, Mapping) and isinstance(value, Mapping):
      out += _file_changes(_LABELS.get(key, key), was, value)
    elif was != value:
      out.append(f"{key.replace('_', ' ')}: {value!r}, was {was!r}")
  return out


def describe(found: Sequence[str], limit: int = 4) -> str:
  """`changes` as one line: the first `limit` of them and how many more."""
  more = len(found) - limit
  return "; ".join(found[:limit]) + (f"; and {more} more" if more > 0 else "")


def validation_changed(found: Sequence[str]) -> bool:
  """Whether any of `changes` is about the validation data (so `eval_bpb` no longer
  compares across it)."""
  return any("validation" in c or c.startswith(("file ", "new file ", "split"))
             for c in found)

