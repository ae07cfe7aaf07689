"""A small, honest reader of local files as bytes.

Each matching file is one document. Documents are split into train and validation by a hash
of their path (relative to the corpus root), so the split is the same on every machine and
does not move when files are added. Training documents go through the Grain pipeline
(`megabyte_jax.data.pipeline`); evaluation scores every byte of every validation document
exactly once, in windows of the model's length, each document starting from an empty context.

The default corpus, `"stdlib"`, is the source of the running Python's standard library
(real code, as in the paper's Code set) and needs no download.

Faults (see RELIABILITY.md):
  * Only regular files are documents. Directories among the matches are passed over;
    other entries (broken symbolic links, FIFOs, sockets, devices) are skipped with a
    warning naming them, since reading them would fail or block.
  * A regular file that cannot be read (permissions, I/O errors, removed meanwhile) stops
    the run with a `DataError` naming it: a corpus silently missing files would train on
    other data than asked. Narrow the glob to leave such a file out.
  * Empty files are empty documents: they count as files, give no bytes, and are an error
    only when every document of a split is empty.
  * Files of `MAP_BYTES` or more are memory-mapped read-only instead of read: the OS pages
    them in as they are used and may drop them again, so a file larger than memory costs
    address space, not memory (it must not be truncated while a run uses it).
  * Evaluation windows take 8 bytes per byte of `seq_len` windows; a set of validation
    documents whose windows would need more than `eval_memory_limit()` (half of this
    machine's memory) is refused with a `DataError` naming its largest file, instead of
    being killed by the OS for lack of memory.
  * The prepared TFDS sources (`byte_files`, `image_folder`, `audio_folder`) store a file as
    one record, which cannot exceed 2 GiB: `resolve_files` refuses larger files there
    (`MAX_RECORD_BYTES`), before anything is read.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import glob
import hashlib
import logging
import math
import os
import stat
import sysconfig
from typing import Iterator, Optional, Sequence

import numpy as np

from megabyte_jax.errors import DataError

STDLIB = "stdlib"
_SKIP_DIRS = ("site-packages", "dist-packages", "__pycache__")
MAP_BYTES = 2 ** 26                    # files this large or larger are memory-mapped
MAX_RECORD_BYTES = 2 ** 31 - 2 ** 20   # the largest file a prepared (TFDS) record holds
EVAL_BYTES_PER_BYTE = 8                # an int32 token and a float32 mask per window byte

log = logging.getLogger(__name__)


def stdlib_root() -> str:
  """Directory of the running Python's standard library sources."""
  return sysconfig.get_paths()["stdlib"]


def _kind(path: str) -> str:
  """What a path that is not a regular file is, in words."""
  try:
    mode = os.stat(path).st_mode
  except OSError:
    return "a broken symbolic link" if os.path.islink(path) else "unreadable"
  if stat.S_ISFIFO(mode):
    return "a FIFO"
  if stat.S_ISSOCK(mode):
    return "a socket"
  if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
    return "a device"
  return "a directory" if stat.S_ISDIR(mode) else "not a regular file"


def _walk(top: str, skip_unreadable: bool) -> list[str]:
  """Every entry below `top` but hidden ones (as `glob`'s `**` sees them), following
  symbolic links to directories but entering each real directory once, so a link loop
  (`a/loop -> ..`) adds nothing.

  Raises:
    DataError: naming a directory that cannot be listed (unless `skip_unreadable`, which
      skips it with a warning).
  """
  seen, out, stack = set(), [], [top]
  while stack:
    directory = stack.pop()
    try:
      info = os.stat(directory)
      if (info.st_dev, info.st_ino) in seen:
        continue
      seen.add((info.st_dev, info.st_ino))
      with os.scandir(directory) as it:
        entries = sorted(it, key=lambda e: e.name)
    except OSError as e:
      if skip_unreadable:
        log.warning("skipping the unreadable directory %s: %s (data.skip_unreadable)",
                    directory, e.strerror or e)
        continue
      raise DataError(f"cannot read the directory {directory}: {e.strerror or e} (fix its "
                      f"permissions, narrow data.files, or set data.skip_unreadable=True to "
                      f"leave such directories out)") from e
    for entry in entries:
      if entry.name.startswith("."):
        continue
      out.append(entry.path)
      try:
        is_dir = entry.is_dir(follow_symlinks=True)
      except OSError:
        is_dir = False
      if is_dir:
        stack.append(entry.path)
  return out


def _match(parts: Sequence[str], pattern: Sequence[str]) -> bool:
  """Whether path components match glob components (`**`: any number of directories)."""
  if not pattern:
    return not parts
  if pattern[0] == "**":
    return _match(parts, pattern[1:]) or (bool(parts) and _match(parts[1:], pattern))
  return (bool(parts) and fnmatch.fnmatchcase(parts[0], pattern[0])
          and _match(parts[1:], pattern[1:]))


def _recursive_glob(pattern: str, skip_unreadable: bool) -> list[str]:
  """`glob.glob(pattern, recursive=True)` without following link loops and without passing
  over unreadable directories in silence."""
  parts = pattern.split(os.sep)
  fixed = next(i for i, p in enumerate(parts) if glob.has_magic(p))
  base = os.sep.join(parts[:fixed]) or (os.sep if pattern.startswith(os.sep) else ".")
  if not os.path.isdir(base):
    return []
  rest = [p for p in parts[fixed:] if p]
  out = []
  for path in _walk(base, skip_unreadable):
    rel = os.path.relpath(path, base).split(os.sep)
    if _match(rel, rest):
      out.append(path if base != "." else os.path.relpath(path))
  return out


def _readable(path: str) -> Optional[str]:
  """None when `path` opens for reading, else the reason."""
  try:
    os.close(_open_nonblocking(path, os.O_RDONLY))
    return None
  except OSError as e:
    return e.strerror or str(e)


def resolve_files(pattern: str, max_file_bytes: Optional[int] = MAX_RECORD_BYTES,
                  skip_unreadable: bool = False) -> tuple[str, list[str]]:
  """Expands a file pattern into `(root, sorted file paths)`.

  Only regular files (or symbolic links to them) are kept, each once: paths are resolved
  to real paths (`os.path.realpath`) and a file reached by several paths (symbolic links)
  counts once. Symbolic links to directories are followed, but every real directory is
  entered once, so link loops add nothing. Directories are passed over; other matches
  (broken links, FIFOs, sockets, devices) are skipped with a warning.

  Args:
    pattern: `"stdlib"` (every `.py` file of the standard library, installed packages
      excluded), a directory (every file below it), or a glob (`**` recurses).
    max_file_bytes: refuse files larger than this; the default, `MAX_RECORD_BYTES`, is what
      one record of a prepared dataset can hold. None: no limit (local files are read or
      memory-mapped, whatever their size).
    skip_unreadable: skip directories that cannot be listed and files that cannot be
      opened, with a warning naming them, instead of stopping (`data.skip_unreadable`).

  Raises:
    DataError: when no regular file matches, a directory below the pattern cannot be
      listed, or a file is larger than `max_file_bytes` (naming the file and the limit).
  """
  if pattern == STDLIB:
    root = stdlib_root()
    files = [f for f in glob.glob(os.path.join(root, "**", "*.py"), recursive=True)
             if not any(part in _SKIP_DIRS for part in f[len(root):].split(os.sep))]
  else:
    expanded = os.path.expanduser(pattern)
    if os.path.isdir(expanded):
      root = expanded
      files = _walk(expanded, skip_unreadable)
    else:
      if "**" in expanded:
        files = _recursive_glob(expanded, skip_unreadable)
      else:
        files = glob.glob(expanded)
      root = os.path.commonpath(files) if files else ""
  regular = [f for f in files if os.path.isfile(f)]
  others = sorted(f for f in files if not os.path.isfile(f) and not os.path.isdir(f))
  real, duplicates = {}, 0
  for path in sorted(regular):
    key = os.path.realpath(path)
    if key in real:
      duplicates += 1
    else:
      real[key] = path
  if duplicates:
    log.warning("%d match(es) of %r are the same file as another match (symbolic links); "
                "each file is read once", duplicates, pattern)
  files = sorted(real)
  if skip_unreadable:
    refused = [(f, _readable(f)) for f in files]
    refused = [(f, why) for f, why in refused if why]
    if refused:
      log.warning("skipping %d unreadable file(s) of %r (data.skip_unreadable): %s",
                  len(refused), pattern, ", ".join(f"{f} ({why})" for f, why in refused[:5]))
      files = [f for f in files if f not in dict(refused)]
  if not files and others:
    raise DataError(f"no regular files match {pattern!r}: {others[0]} is {_kind(others[0])}")
  if not files:
    raise DataError(f"no files match {pattern!r} (give a directory, a glob such as "
                    f"'docs/**/*.txt', or 'stdlib')")
  if others:
    log.warning("skipping %d match(es) of %r that are not regular files: %s", len(others),
                pattern, ", ".join(f"{f} ({_kind(f)})" for f in others[:5])
                + (", ..." if len(others) > 5 else ""))
  if max_file_bytes is not None:
    for path in files:
      try:
        size = os.path.getsize(path)
      except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from e
      if size > max_file_bytes:
        raise DataError(
            f"{path} holds {size:,} bytes, more than the {max_file_bytes:,} that one record "
            f"of a prepared dataset can hold (a 2 GiB protocol buffer); use "
            f"data.name=local_files, which memory-maps large files, or split the file")
  if os.path.isfile(root):
    root = os.path.dirname(root)
  return (os.path.realpath(root) if root else root), files


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
    # surrogateescape: file names that are not UTF-8 hash as the bytes they are
    digest = hashlib.sha256(f"{seed}:{rel}".encode("utf-8", "surrogateescape")).digest()
    bucket = int.from_bytes(digest[:8], "little") / 2.0**64
    (evaluation if bucket < eval_fraction else train).append(path)
  return train, evaluation


class MappedFile(np.memmap):
  """The bytes of a large file, memory-mapped read-only (a `uint8` `np.memmap`).

  Pages are read when used and may be dropped again by the OS, so the file costs address
  space, not memory. It pickles as its path (a worker process maps the file again), not as
  its bytes; a slice pickles as a plain copy of its bytes.
  """

  def __reduce__(self):
    if self.filename is not None and self.base is self._mmap:   # the whole mapping
      return read_document, (str(self.filename),)
    return np.asarray(self).__reduce__()


def _open_nonblocking(path: str, flags: int) -> int:
  # Opening a FIFO that replaced a file would otherwise wait for a writer forever.
  return os.open(path, flags | os.O_NONBLOCK)


def read_document(path: str) -> np.ndarray:
  """One file's bytes as a `uint8` array: read into memory when smaller than `MAP_BYTES`,
  memory-mapped read-only (`MappedFile`) otherwise. An empty file gives an empty array.

  Raises:
    DataError: naming the file, when it cannot be read or is not a regular file.
  """
  try:
    with open(path, "rb", opener=_open_nonblocking) as f:
      info = os.fstat(f.fileno())
      if stat.S_ISREG(info.st_mode) and info.st_size >= MAP_BYTES:
        return MappedFile(f, dtype=np.uint8, mode="r", shape=(info.st_size,))
      if stat.S_ISREG(info.st_mode):
        return np.frombuffer(f.read(), dtype=np.uint8)
  except (OSError, ValueError) as e:   # mmap raises ValueError for a file that shrank
    raise DataError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from e
  raise DataError(f"cannot read {path}: it is {_kind(path)}, not a regular file")


def read_documents(files: Sequence[str]) -> list[np.ndarray]:
  """Reads each file as one `uint8` document (`read_document`); empty files give empty
  documents.

  Raises:
    DataError: naming the file that cannot be read.
  """
  return [read_document(path) for path in files]


def eval_memory_limit() -> int:
  """Bytes that evaluation windows may take: half of this machine's physical memory, or of
  the memory limit of this process's control group when that is lower."""
  try:
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  except (AttributeError, OSError, ValueError):
    total = 2 ** 34
  for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
    try:
      with open(path) as f:
        total = min(total, int(f.read().strip()))
    except (OSError, ValueError):   # no such file, or "max"
      pass
  return total // 2


def check_eval_memory(lengths: Sequence[int], seq_len: int, stride: Optional[int] = None,
                      names: Optional[Sequence[str]] = None,
                      limit: Optional[int] = None) -> int:
  """Checks that evaluation windows of documents of these `lengths` fit in memory.

  Args:
    lengths: the documents' sizes in bytes.
    seq_len: the window length.
    stride: how far windows advance (`scoring.strided_windows`; None: `seq_len`, plain
      windows).
    names: the documents' file names, to name the largest in the error.
    limit: bytes the windows may take (default: `eval_memory_limit()`).

  Returns:
    The number of windows.

  Raises:
    DataError: naming the size, the limit and the largest file, when they do not fit.
  """
  stride = seq_len if stride is None else stride
  windows = sum(1 + math.ceil(max(0, n - seq_len) / stride) for n in lengths if n > 0)
  need = windows * seq_len * EVAL_BYTES_PER_BYTE
  why = " (half of this machine's memory)" if limit is None else ""
  limit = eval_memory_limit() if limit is None else limit
  if need > limit:
    largest = int(np.argmax(lengths))
    what = names[largest] if names is not None else f"document {largest}"
    raise DataError(
        f"evaluating {sum(lengths):,} bytes needs {need / 2**30:.1f} GiB of windows, more "
        f"than the {limit / 2**30:.1f} GiB allowed{why}; the largest file is {what} "
        f"({lengths[largest]:,} bytes): evaluate fewer or smaller files (data.eval_files, "
        f"data.eval_fraction or --files)")
  return windows


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


def eval_windows(docs: Sequence[np.ndarray], seq_len: int, shuffle_seed: Optional[int] = None,
                 names: Optional[Sequence[str]] = None) -> EvalWindows:
  """Cuts each document into consecutive `seq_len` windows (the last one padded).

  With `shuffle_seed`, the windows are put in a fixed random order, so that the first few
  batches (used for quick periodic evaluation) sample the whole split. `names` (the
  documents' files) only serve the error messages.

  Raises:
    DataError: when every document is empty, or the windows would not fit in memory
      (`check_eval_memory`).
  """
  count = check_eval_memory([len(d) for d in docs], seq_len, names=names)
  if not count:
    raise DataError("no bytes to evaluate: every matching file is empty")
  tokens = np.zeros((count, seq_len), np.int32)
  masks = np.zeros((count, seq_len), np.float32)
  row = 0
  for doc in docs:
    full = len(doc) // seq_len
    tokens[row:row + full] = np.asarray(doc[:full * seq_len]).reshape(full, seq_len)
    masks[row:row + full] = 1.0
    row += full
    rest = len(doc) - full * seq_len
    if rest:
      tokens[row, :rest] = doc[full * seq_len:]
      masks[row, :rest] = 1.0
      row += 1
  if shuffle_seed is not None:
    order = np.random.default_rng(shuffle_seed).permutation(len(tokens))
    tokens, masks = tokens[order], masks[order]
  return EvalWindows(tokens=tokens, mask=masks)
