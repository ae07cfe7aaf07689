"""The Grain training pipeline: packing, shuffling, per-host sharding, exact resume."""

import hashlib
import json

import numpy as np
import pytest

from megabyte_jax import DataError
from megabyte_jax.training.checkpoint import Checkpointer
from megabyte_jax.data.pipeline import InMemorySource, document_bytes, training_batches


def _docs(n=30, seed=0):
  """Documents with distinct contents and no zero byte (0 is the separator)."""
  rng = np.random.default_rng(seed)
  return [np.frombuffer(f"<{i}>".encode()
                        + rng.integers(1, 256, rng.integers(0, 90)).astype(np.uint8).tobytes(),
                        np.uint8) for i in range(n)]


def _stream(docs, separator=0):
  return np.concatenate([np.concatenate([d, [separator]]) for d in docs]).astype(np.uint8)


def _split_docs(stream):
  return [bytes(p) for p in bytes(stream).split(b"\x00")[:-1]]


def _hashes(iterator, n):
  return [hashlib.sha256(next(iterator).tobytes()).hexdigest() for _ in range(n)]


def test_packing_loses_no_byte_across_epochs():
  docs = _docs()
  it = iter(training_batches(InMemorySource(docs), 16, 4, seed=0, shuffle=False,
                            chunk_bytes=300))
  got = np.concatenate([next(it).reshape(-1) for _ in range(100)])
  expected = np.concatenate([_stream(docs)] * (len(got) // len(_stream(docs)) + 1))
  np.testing.assert_array_equal(got, expected[:len(got)])
  it.close()


def test_batches_are_uint8_of_the_requested_shape():
  it = iter(training_batches(InMemorySource(_docs()), 16, 4, seed=0, chunk_bytes=640))
  batch = next(it)
  assert batch.shape == (4, 16) and batch.dtype == np.uint8
  it.close()


def test_shuffle_is_seeded_and_every_epoch_is_a_permutation():
  docs = _docs()
  epoch_bytes = len(_stream(docs))

  def first_epochs(seed, epochs=2):
    it = iter(training_batches(InMemorySource(docs), 1, 1, seed=seed, prefetch=0,
                                 chunk_bytes=100, shuffle_windows=False))
    data = np.concatenate([next(it).reshape(-1) for _ in range(epochs * epoch_bytes)])
    it.close()
    return [_split_docs(data[e * epoch_bytes:(e + 1) * epoch_bytes]) for e in range(epochs)]

  a, b = first_epochs(1), first_epochs(1)
  assert a == b
  originals = sorted(bytes(d) for d in docs)
  assert sorted(a[0]) == originals and sorted(a[1]) == originals
  assert a[0] != a[1]                              # reshuffled each epoch
  assert first_epochs(2)[0] != a[0]                # another seed, another order
  assert a[0] != [bytes(d) for d in docs]          # actually shuffled


def test_two_hosts_read_disjoint_data_that_covers_the_epoch():
  docs = _docs(31)
  seen = []
  for host in range(2):
    it = iter(training_batches(InMemorySource(docs), 1, 1, seed=5, process_index=host, chunk_bytes=100,
                               shuffle_windows=False,
                               process_count=2, num_epochs=1, prefetch=0))
    seen.append(_split_docs(np.concatenate([b.reshape(-1) for b in it])))
  assert not set(seen[0]) & set(seen[1])
  assert sorted(seen[0] + seen[1]) == sorted(bytes(d) for d in docs)
  assert abs(len(seen[0]) - len(seen[1])) <= 1


@pytest.mark.parametrize("prefetch", [0, 3])
def test_resume_from_state_gives_the_same_batches(prefetch):
  source = InMemorySource(_docs(40))
  dataset = training_batches(source, 32, 2, seed=3, prefetch=prefetch, chunk_bytes=320)
  straight = iter(dataset)
  reference = _hashes(straight, 60)
  straight.close()
  interrupted = iter(dataset)
  first = _hashes(interrupted, 23)
  state = json.loads(json.dumps(interrupted.get_state()))   # survives serialisation
  interrupted.close()
  resumed = iter(dataset)
  resumed.set_state(state)
  assert first + _hashes(resumed, 37) == reference
  resumed.close()


def test_iterator_position_round_trips_through_an_orbax_checkpoint(tmp_path):
  dataset = training_batches(InMemorySource(_docs(40)), 32, 2, seed=3, chunk_bytes=320)
  it = iter(dataset)
  _hashes(it, 11)
  checkpointer = Checkpointer(str(tmp_path), save_every=1, keep=2)
  checkpointer.save(11, {"w": np.zeros(3, np.float32)}, it, force=True)
  checkpointer.wait()
  expected = _hashes(it, 9)
  it.close()
  fresh = iter(dataset)
  restored = Checkpointer(str(tmp_path)).restore({"w": np.zeros(3, np.float32)}, 11,
                                                 data_iterator=fresh)
  assert restored["w"].shape == (3,)
  assert _hashes(fresh, 9) == expected
  fresh.close()


def test_document_bytes_accepts_the_usual_record_forms():
  for record in (b"abc", np.frombuffer(b"abc", np.uint8), {"bytes": b"abc"},
                 {"bytes": np.frombuffer(b"abc", np.uint8)}):
    assert bytes(document_bytes(record)) == b"abc"


def test_pipeline_errors_are_clear():
  with pytest.raises(DataError, match="all empty"):
    next(iter(training_batches(InMemorySource([b""] * 3), 8, 1, seed=0, separator=None,
                               prefetch=0)))
  with pytest.raises(DataError, match="cannot be split over 4 hosts"):
    training_batches(InMemorySource(_docs(3)), 8, 1, seed=0, process_index=0, process_count=4)
  with pytest.raises(DataError, match="process_index 2"):
    training_batches(InMemorySource(_docs(3)), 8, 1, seed=0, process_index=2, process_count=2)
  with pytest.raises(DataError, match="separator"):
    training_batches(InMemorySource(_docs(3)), 8, 1, seed=0, separator=256)


def test_worker_processes_resume_exactly_and_cover_the_data():
  docs = _docs(24)
  dataset = training_batches(InMemorySource(docs), 1, 1, seed=2, workers=2, prefetch=1,
                             chunk_bytes=50, shuffle_windows=False)
  it = iter(dataset)
  epoch = len(_stream(docs))
  data = np.concatenate([next(it).reshape(-1) for _ in range(3 * epoch // 50 * 50)])
  # Chunks (of 50 one-byte batches) come from the workers in turn; each worker packs its
  # own slice of the document stream.
  chunks = data.reshape(-1, 50)
  shares = [set(_split_docs(chunks[w::2].reshape(-1))) for w in range(2)]
  assert shares[0] | shares[1] == {bytes(d) for d in docs}
  state = json.loads(json.dumps(it.get_state()))
  expected = _hashes(it, 40)
  resumed = iter(dataset)
  resumed.set_state(state)
  assert _hashes(resumed, 40) == expected


def test_windows_are_shuffled_within_chunks_by_seed():
  docs = _docs(40)

  def chunk(seed, shuffle_windows):
    it = iter(training_batches(InMemorySource(docs), 8, 4, seed=seed, prefetch=0,
                               chunk_bytes=8 * 4 * 10, shuffle_windows=shuffle_windows))
    windows = np.concatenate([next(it) for _ in range(10)])   # exactly the first chunk
    it.close()
    return windows

  plain, mixed = chunk(1, False), chunk(1, True)
  assert not np.array_equal(plain, mixed)
  assert sorted(map(bytes, plain)) == sorted(map(bytes, mixed))   # a permutation
  np.testing.assert_array_equal(mixed, chunk(1, True))            # fixed by the seed


class _CountingSource(InMemorySource):
  """An in-memory source with batched reads that records the size of every read."""

  def __init__(self, docs):
    super().__init__(docs)
    self.reads = []

  def __getitem__(self, index):
    self.reads.append(1)
    return super().__getitem__(index)

  def __getitems__(self, indices):
    self.reads.append(len(indices))
    return [super(_CountingSource, self).__getitem__(i) for i in indices]


def test_documents_are_read_in_blocks_and_reader_threads_change_nothing():
  docs = _docs(50)
  source = _CountingSource(docs)
  plain = iter(training_batches(source, 16, 2, seed=4, prefetch=0, chunk_bytes=320,
                                read_block=8))
  reference = _hashes(plain, 40)
  assert source.reads and all(n == 8 for n in source.reads)    # blocks of 8 documents
  threaded = iter(training_batches(InMemorySource(docs), 16, 2, seed=4, prefetch=0,
                                   chunk_bytes=320, read_block=8, read_threads=2))
  first = _hashes(threaded, 17)
  state = json.loads(json.dumps(threaded.get_state()))
  threaded.close()
  resumed = iter(training_batches(InMemorySource(docs), 16, 2, seed=4, prefetch=0,
                                  chunk_bytes=320, read_block=8, read_threads=2))
  resumed.set_state(state)
  assert first + _hashes(resumed, 23) == reference
  resumed.close()


def test_more_workers_than_documents_is_a_clear_error():
  dataset = training_batches(InMemorySource(_docs(1)), 8, 1, seed=0, prefetch=0)
  stream = dataset._parent._parent        # SplitChunks <- PackedBatches <- DocumentStream
  stream.set_slice(slice(1, None, 2))     # what Grain does for worker 1 of 2
  with pytest.raises(DataError, match="no documents"):
    next(iter(dataset))
