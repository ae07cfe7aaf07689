"""The training input pipeline: documents -> bytes -> packed windows -> batches, on Grain.

    source (random access: len + [i] -> a document's bytes)
      -> this host's slice of the documents (`process_index::process_count`)
      -> shuffled by seed, reshuffled every epoch, repeated forever (`DocumentStream`,
         reading a block of documents per source call, optionally on reader threads)
      -> each document as uint8 bytes, followed by a separator byte
      -> packed back to back into `[batch, seq_len]` windows (no padding, no byte dropped),
         a chunk of ~16 MB of batches at a time, its windows shuffled by seed
      -> prefetched on a background thread (or packed by worker processes)
      -> handed out one batch at a time

The iterator is a Grain `DatasetIterator`: `get_state()` is a small JSON-able dict (the
epoch and position of the document being packed, and the offset inside it), saved in the same Orbax
checkpoint as the model, so a resumed run sees exactly the bytes an uninterrupted run would
have seen.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from absl import flags
import grain
import numpy as np

from megabyte_jax.errors import DataError

CHUNK_BYTES = 2 ** 24  # bytes packed (and windows mixed) per call of the packer


class InMemorySource:
  """A random-access source over documents already in memory (`uint8` arrays)."""

  def __init__(self, docs: Sequence[np.ndarray]):
    self._docs = list(docs)

  def __len__(self) -> int:
    return len(self._docs)

  def __getitem__(self, index: int) -> np.ndarray:
    return self._docs[index]

  def __repr__(self) -> str:
    return f"InMemorySource({len(self._docs)} documents)"


def document_bytes(record: Any) -> np.ndarray:
  """The bytes of one source record: a `uint8` array, `bytes`, or a dict with "bytes"."""
  if isinstance(record, dict):
    record = record["bytes"]
  if isinstance(record, (bytes, bytearray, memoryview)):
    return np.frombuffer(record, np.uint8)
  return np.asarray(record, np.uint8).reshape(-1)


class _DocumentIterator(grain.DatasetIterator):
  """Yields the records of a `DocumentStream`, reading a block of them at a time.

  State: the epoch and the position in that epoch's order of the next document; the
  documents read ahead are dropped on `set_state` and read again.
  """

  def __init__(self, stream: "DocumentStream"):
    super().__init__()
    self._stream = stream
    self._epoch, self._pos = 0, 0
    self._order: Optional[np.ndarray] = None      # this epoch's document indices
    self._block: list[Any] = []                    # documents [block_start, ...) of the order
    self._block_start = 0
    self._ahead: dict[tuple[int, int], Any] = {}   # (epoch, start) -> future of a block
    self._executor = None

  def _epoch_order(self, epoch: int) -> np.ndarray:
    s = self._stream
    if not s.shuffle:
      return s.indices
    return s.indices[np.random.default_rng([s.seed, epoch]).permutation(len(s.indices))]

  def _block_indices(self, epoch: int, start: int) -> np.ndarray:
    """The source indices of the block of `epoch`'s order that starts at `start`."""
    order = self._order if epoch == self._epoch else self._epoch_order(epoch)
    return order[start:start + self._stream.read_block]

  def _next_block_key(self, epoch: int, start: int) -> tuple[int, int]:
    start += self._stream.read_block
    return (epoch, start) if start < len(self._stream.indices) else (epoch + 1, 0)

  def _load_block(self) -> None:
    s, key = self._stream, (self._epoch, self._pos)
    if not s.read_threads:
      self._block = s.read(self._block_indices(*key))
    else:
      if self._executor is None:
        from concurrent import futures
        self._executor = futures.ThreadPoolExecutor(s.read_threads, "megabyte-read")
      future = self._ahead.pop(key, None)
      self._block = (future.result() if future is not None
                     else s.read(self._block_indices(*key)))
      ahead = key
      for _ in range(s.read_threads):   # keep `read_threads` blocks in flight
        ahead = self._next_block_key(*ahead)
        if s.num_epochs is not None and ahead[0] >= s.num_epochs:
          break
        if ahead not in self._ahead:   # indices taken now, read on a thread
          self._ahead[ahead] = self._executor.submit(s.read, self._block_indices(*ahead))
    self._block_start = self._pos

  def __next__(self) -> Any:
    s = self._stream
    if not len(s.indices):
      raise DataError("this reader has no documents (more worker processes than documents?)")
    if self._pos >= len(s.indices):
      self._epoch, self._pos, self._order = self._epoch + 1, 0, None
    if s.num_epochs is not None and self._epoch >= s.num_epochs:
      raise StopIteration
    if self._order is None:
      self._order = self._epoch_order(self._epoch)
      self._block = []
    if not self._block_start <= self._pos < self._block_start + len(self._block):
      self._load_block()
    record = self._block[self._pos - self._block_start]
    self._pos += 1
    return record

  def get_state(self) -> dict[str, Any]:
    return {"epoch": self._epoch, "position": self._pos}

  def set_state(self, state: dict[str, Any]) -> None:
    self._epoch, self._pos = int(state["epoch"]), int(state["position"])
    self._order, self._block, self._block_start = None, [], 0
    for future in self._ahead.values():
      future.cancel()
    self._ahead = {}

  def close(self) -> None:
    """Stops the reader threads, if any."""
    if self._executor is not None:
      self._executor.shutdown(wait=False, cancel_futures=True)
      self._executor = None


class DocumentStream(grain.IterDataset):
  """This host's documents in a seeded order, reshuffled every epoch, read in blocks.

  The order of epoch `e` is a permutation drawn from `(seed, e)`, so a position
  `(epoch, index)` names a document exactly and the state is two integers. Documents are
  read `read_block` at a time (one `source.__getitems__` call where the source has it, as
  TFDS array_record sources do), optionally by `read_threads` threads ahead of use. Grain's
  worker processes split it with `set_slice`, each reading its own share.
  """

  def __init__(self, source: Any, indices: np.ndarray, seed: int, shuffle: bool = True,
               num_epochs: Optional[int] = None, read_block: int = 64, read_threads: int = 0):
    super().__init__()
    self.source, self.indices = source, np.asarray(indices, np.int64)
    self.seed, self.shuffle, self.num_epochs = seed, shuffle, num_epochs
    self.read_block, self.read_threads = max(1, read_block), read_threads

  def read(self, indices: np.ndarray) -> list[Any]:
    """The records at `indices` of the source, in order."""
    getitems = getattr(self.source, "__getitems__", None)
    if getitems is not None and len(indices) > 1:
      return list(getitems([int(i) for i in indices]))
    return [self.source[int(i)] for i in indices]

  def set_slice(self, sl: slice, sequential_slice: bool = False) -> None:
    """Keeps only the share `sl` of the documents (Grain calls this for worker processes)."""
    if sequential_slice:   # contiguous shares instead of every k-th document
      start, step = sl.start or 0, sl.step or 1
      self.indices = np.array_split(self.indices, step)[start]
    else:
      self.indices = self.indices[sl]

  def __iter__(self) -> _DocumentIterator:
    return _DocumentIterator(self)

  def __str__(self) -> str:
    return (f"DocumentStream({len(self.indices)} documents, seed={self.seed}, "
            f"shuffle={self.shuffle}, num_epochs={self.num_epochs})")


class _PackedBatchIterator(grain.DatasetIterator):
  """Fills `[chunk, batch, seq_len]` uint8 arrays from a stream of documents, back to back.

  Packing `chunk` batches per call keeps the per-batch Python cost tiny. Each document is
  followed by the separator byte (when there is one). State: the parent's state before the
  document being packed, and the offset inside it (the separator sits at `len(document)`).
  """

  def __init__(self, parent: grain.DatasetIterator, seq_len: int, batch_size: int,
               separator: Optional[int], num_docs: int, chunk: int,
               window_seed: Optional[int]):
    super().__init__(parent)
    self._seq_len, self._batch_size, self._separator = seq_len, batch_size, separator
    self._num_docs, self._chunk, self._window_seed = num_docs, chunk, window_seed
    self._chunks_done = 0
    self._doc: Optional[np.ndarray] = None
    self._offset = 0
    self._end = 0     # len(doc) + 1 with a separator, else len(doc)
    self._doc_state = parent.get_state()   # the parent's state before `self._doc`

  def _next_document(self) -> None:
    self._doc_state = self._parent.get_state()
    self._doc = document_bytes(next(self._parent))
    self._offset = 0
    self._end = len(self._doc) + (self._separator is not None)

  def __next__(self) -> np.ndarray:
    batch_bytes = self._batch_size * self._seq_len
    out = np.empty((self._chunk * batch_bytes,), np.uint8)
    filled, empty_docs = 0, 0
    while filled < out.size:
      if self._doc is None or self._offset >= self._end:
        try:
          self._next_document()
        except StopIteration:   # a finite stream ended: hand out the whole batches packed
          if filled < batch_bytes:
            raise
          full = filled // batch_bytes
          return self._finish(out[:full * batch_bytes], full)
        empty_docs = empty_docs + 1 if self._end == 0 else 0
        if empty_docs > self._num_docs:   # a whole epoch without a byte
          raise DataError("the training documents are all empty: no bytes to train on")
        if self._end == 0:
          continue
      doc_left = len(self._doc) - self._offset
      if doc_left > 0:
        take = min(out.size - filled, doc_left)
        out[filled:filled + take] = self._doc[self._offset:self._offset + take]
        filled += take
        self._offset += take
      elif filled < out.size:   # only the separator is left
        out[filled] = self._separator
        filled += 1
        self._offset += 1
    return self._finish(out, self._chunk)

  def _finish(self, out: np.ndarray, batches: int) -> np.ndarray:
    """Shapes a packed chunk into batches, its windows shuffled when a seed is set."""
    windows = out.reshape(batches * self._batch_size, self._seq_len)
    if self._window_seed is not None:
      # Consecutive windows come from the same document; mixing the windows of a chunk
      # keeps the windows of one batch (and of successive batches) mostly unrelated.
      order = np.random.default_rng([self._window_seed, self._chunks_done]).permutation(
          len(windows))
      windows = windows[order]
    self._chunks_done += 1
    return windows.reshape(batches, self._batch_size, self._seq_len)

  def get_state(self) -> dict[str, Any]:
    return {"parent": self._doc_state,
            "offset": -1 if self._doc is None else int(self._offset),
            "chunks": self._chunks_done}

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state["parent"])
    self._chunks_done = int(state["chunks"])
    self._doc, self._offset = None, 0
    self._doc_state = state["parent"]
    if state["offset"] >= 0:
      self._next_document()
      self._offset = int(state["offset"])


class PackedBatches(grain.IterDataset):
  """An `IterDataset` of `[chunk, batch, seq_len]` uint8 windows packed from documents."""

  def __init__(self, parent: grain.IterDataset, seq_len: int, batch_size: int,
               separator: Optional[int], num_docs: int, chunk: int = 1,
               window_seed: Optional[int] = None):
    super().__init__(parent)
    self._seq_len, self._batch_size, self._separator = seq_len, batch_size, separator
    self._num_docs, self._chunk, self._window_seed = num_docs, chunk, window_seed

  def __iter__(self) -> _PackedBatchIterator:
    return _PackedBatchIterator(self._parent.__iter__(), self._seq_len, self._batch_size,
                                self._separator, self._num_docs, self._chunk,
                                self._window_seed)


class _SplitIterator(grain.DatasetIterator):
  """Hands out the batches of each `[chunk, ...]` array one at a time.

  State: the parent's state before the current chunk and the index inside it.
  """

  def __init__(self, parent: grain.DatasetIterator):
    super().__init__(parent)
    self._chunk: Optional[np.ndarray] = None
    self._index = 0
    self._chunk_state = parent.get_state()

  def __next__(self) -> np.ndarray:
    if self._chunk is None or self._index >= len(self._chunk):
      self._chunk_state = self._parent.get_state()
      self._chunk, self._index = next(self._parent), 0
    batch = self._chunk[self._index]
    self._index += 1
    return batch

  def get_state(self) -> dict[str, Any]:
    return {"parent": self._chunk_state,
            "index": -1 if self._chunk is None else int(self._index)}

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state["parent"])
    self._chunk, self._index, self._chunk_state = None, 0, state["parent"]
    if state["index"] >= 0:
      self._chunk, self._index = next(self._parent), int(state["index"])


class SplitChunks(grain.IterDataset):
  """Turns an `IterDataset` of `[chunk, ...]` arrays into one of their `[...]` rows."""

  def __iter__(self) -> _SplitIterator:
    return _SplitIterator(self._parent.__iter__())


def host_documents(num_docs: int, process_index: int = 0, process_count: int = 1) -> np.ndarray:
  """The indices of this host's documents: every `process_count`-th, from `process_index`."""
  if not 0 <= process_index < process_count:
    raise DataError(f"process_index {process_index} is not in 0..{process_count - 1}")
  if num_docs < process_count:
    raise DataError(f"{num_docs} training document(s) cannot be split over "
                    f"{process_count} hosts; every host needs at least one")
  return np.arange(process_index, num_docs, process_count)


def training_batches(source: Any, seq_len: int, batch_size: int, seed: int,
                     separator: Optional[int] = 0, process_index: int = 0,
                     process_count: int = 1, shuffle: bool = True,
                     num_epochs: Optional[int] = None, read_threads: int = 0,
                     prefetch: int = 4, workers: int = 0,
                     chunk_bytes: int = CHUNK_BYTES,
                     shuffle_windows: bool = True,
                     read_block: int = 64) -> grain.IterDataset:
  """The training pipeline over `source` for one host (see the module docstring).

  Args:
    source: random access documents (`len`, `[i]` -> bytes, uint8 array or {"bytes": ...}).
    seq_len, batch_size: shape of each batch `[batch_size, seq_len]` (per host).
    seed: shuffling seed; every epoch is reshuffled from it.
    separator: byte appended to each document (None: documents run together).
    process_index, process_count: this host's slice (`jax.process_index()`/`count()`).
    shuffle: shuffle documents (off: source order, e.g. for tests or evaluation).
    num_epochs: None repeats forever.
    read_threads: threads reading blocks of documents ahead of the packer (0: read in the
      packing thread, fastest for in-memory sources; one or two help sources on slow
      storage).
    prefetch: chunks of batches prepared ahead, per worker (0: none).
    workers: processes that each pack a disjoint share of this host's documents (Grain
      `mp_prefetch`; 0: one background thread). The order of batches depends on `workers`,
      so a run resumes exactly only with the same number.
    chunk_bytes: how many bytes of whole batches the packer fills per call (at least one
      batch); windows are mixed within a chunk, so larger chunks mix more documents into
      each stretch of training. With a finite `num_epochs` the last incomplete batch is
      dropped.
    shuffle_windows: with `shuffle`, also shuffle the windows within each chunk, so that a
      batch does not hold consecutive pieces of one document.
    read_block: documents read per call of the source (`__getitems__` where it has one).

  Returns:
    A Grain `IterDataset`; `iter(...)` gives a checkpointable iterator of uint8 batches.
  """
  if seq_len <= 0 or batch_size <= 0:
    raise DataError(f"seq_len and batch_size must be positive, got {seq_len}, {batch_size}")
  if separator is not None and not 0 <= separator <= 255:
    raise DataError(f"data.separator must be a byte 0..255 or None, got {separator}")
  indices = host_documents(len(source), process_index, process_count)
  stream = DocumentStream(source, indices, seed, shuffle=shuffle, num_epochs=num_epochs,
                          read_block=read_block, read_threads=read_threads)
  # Batches are packed (and prefetched) a chunk at a time, then handed out singly.
  chunk = max(1, chunk_bytes // (batch_size * seq_len))
  chunks = PackedBatches(stream, seq_len, batch_size, separator, len(indices), chunk,
                         window_seed=seed if shuffle and shuffle_windows else None)
  if workers:
    if not flags.FLAGS.is_parsed():  # Grain's workers read absl flags; a library caller
      flags.FLAGS.mark_as_parsed()   # (tests, notebooks) may not have parsed any
    chunks = chunks.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=workers, per_worker_buffer_size=max(prefetch, 1)))
  elif prefetch:
    chunks = grain.experimental.ThreadPrefetchIterDataset(chunks, prefetch_buffer_size=prefetch)
  return SplitChunks(chunks)
