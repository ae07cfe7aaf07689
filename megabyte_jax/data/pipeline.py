"""The training input pipeline: documents -> bytes -> packed windows -> batches, on Grain.

    source (random access: len + [i] -> a document's bytes)
      -> this host's slice of the documents (`process_index::process_count`)
      -> shuffled by seed, reshuffled every epoch, repeated forever
      -> each document as uint8 bytes, followed by a separator byte
      -> packed back to back into `[batch, seq_len]` windows (no padding, no byte dropped),
         a chunk of ~16 MB of batches at a time, its windows shuffled by seed
      -> prefetched on a background thread (or packed by worker processes)
      -> handed out one batch at a time

The iterator is a Grain `DatasetIterator`: `get_state()` is a small JSON-able dict (the
position of the document being packed and the offset inside it), saved in the same Orbax
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


class _PackedBatchIterator(grain.DatasetIterator):
  """Fills `[chunk, batch, seq_len]` uint8 arrays from a stream of documents, back to back.

  Packing `chunk` batches per call keeps the per-batch Python cost tiny. State: the
  parent's state before the document being packed, and the offset inside it.
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
    self._doc_state = parent.get_state()   # the parent's state before `self._doc`

  def _next_document(self) -> None:
    self._doc_state = self._parent.get_state()
    doc = document_bytes(next(self._parent))
    if self._separator is not None:
      doc = np.concatenate([doc, np.asarray([self._separator], np.uint8)])
    self._doc, self._offset = doc, 0

  def __next__(self) -> np.ndarray:
    batch_bytes = self._batch_size * self._seq_len
    out = np.empty((self._chunk * batch_bytes,), np.uint8)
    filled, empty_docs = 0, 0
    while filled < out.size:
      if self._doc is None or self._offset >= len(self._doc):
        try:
          self._next_document()
        except StopIteration:   # a finite stream ended: hand out the whole batches packed
          if filled < batch_bytes:
            raise
          full = filled // batch_bytes
          return self._finish(out[:full * batch_bytes], full)
        empty_docs = empty_docs + 1 if len(self._doc) == 0 else 0
        if empty_docs > self._num_docs:   # a whole epoch without a byte
          raise DataError("the training documents are all empty: no bytes to train on")
        continue
      take = min(out.size - filled, len(self._doc) - self._offset)
      out[filled:filled + take] = self._doc[self._offset:self._offset + take]
      filled += take
      self._offset += take
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


def host_documents(source: Any, process_index: int = 0,
                   process_count: int = 1) -> grain.MapDataset:
  """This host's documents: every `process_count`-th one, starting at `process_index`."""
  if not 0 <= process_index < process_count:
    raise DataError(f"process_index {process_index} is not in 0..{process_count - 1}")
  docs = grain.MapDataset.source(source)
  if len(docs) < process_count:
    raise DataError(f"{len(docs)} training document(s) cannot be split over "
                    f"{process_count} hosts; every host needs at least one")
  return docs[process_index::process_count]


def training_batches(source: Any, seq_len: int, batch_size: int, seed: int,
                     separator: Optional[int] = 0, process_index: int = 0,
                     process_count: int = 1, shuffle: bool = True,
                     num_epochs: Optional[int] = None, read_threads: int = 0,
                     prefetch: int = 4, workers: int = 0,
                     chunk_bytes: int = CHUNK_BYTES,
                     shuffle_windows: bool = True) -> grain.IterDataset:
  """The training pipeline over `source` for one host (see the module docstring).

  Args:
    source: random access documents (`len`, `[i]` -> bytes, uint8 array or {"bytes": ...}).
    seq_len, batch_size: shape of each batch `[batch_size, seq_len]` (per host).
    seed: shuffling seed; every epoch is reshuffled from it.
    separator: byte appended to each document (None: documents run together).
    process_index, process_count: this host's slice (`jax.process_index()`/`count()`).
    shuffle: shuffle documents (off: source order, e.g. for tests or evaluation).
    num_epochs: None repeats forever.
    read_threads: threads reading documents ahead of the packer (0: read in the packing
      thread, fastest for in-memory sources; a few help sources on slow storage).
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

  Returns:
    A Grain `IterDataset`; `iter(...)` gives a checkpointable iterator of uint8 batches.
  """
  if seq_len <= 0 or batch_size <= 0:
    raise DataError(f"seq_len and batch_size must be positive, got {seq_len}, {batch_size}")
  if separator is not None and not 0 <= separator <= 255:
    raise DataError(f"data.separator must be a byte 0..255 or None, got {separator}")
  docs = host_documents(source, process_index, process_count)
  num_docs = len(docs)
  if shuffle:
    docs = docs.shuffle(seed=seed)
  docs = docs.repeat(num_epochs)
  read_options = grain.ReadOptions(num_threads=read_threads,
                                   prefetch_buffer_size=64 if read_threads else 0)
  stream = docs.to_iter_dataset(read_options)
  # Batches are packed (and prefetched) a chunk at a time, then handed out singly.
  chunk = max(1, chunk_bytes // (batch_size * seq_len))
  chunks = PackedBatches(stream, seq_len, batch_size, separator, num_docs, chunk,
                         window_seed=seed if shuffle and shuffle_windows else None)
  if workers:
    if not flags.FLAGS.is_parsed():  # Grain's workers read absl flags; a library caller
      flags.FLAGS.mark_as_parsed()   # (tests, notebooks) may not have parsed any
    chunks = chunks.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=workers, per_worker_buffer_size=max(prefetch, 1)))
  elif prefetch:
    chunks = grain.experimental.ThreadPrefetchIterDataset(chunks, prefetch_buffer_size=prefetch)
  return SplitChunks(chunks)
