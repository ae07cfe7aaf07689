"""Throughput of the training input pipeline (bytes/s delivered to the training loop).

    python experiments/bench/pipeline_bench.py --source=local_files --seconds=10
    python experiments/bench/pipeline_bench.py --source=byte_files --data_dir=/tmp/tfds

Builds exactly what training builds (`megabyte_jax.data.load_byte_data` +
`training_batches`: per-host slice, shuffle, packing, prefetch) over the Python standard
library, then pulls batches as fast as it can: for `--warmup_seconds` untimed (worker
processes take seconds to start), then for `--seconds`, and prints one JSON line: source,
batch shape, bytes/s, batches/s, the time to set the source up (for `byte_files` the first
run includes preparing the array_record files) and the time to the first batch.
"""

import json
import os
import platform
import time

from absl import app, flags
import jax

from megabyte_jax.data import load_byte_data, training_batches
from megabyte_jax.experiment import base_config

_SOURCE = flags.DEFINE_enum("source", "local_files", ["local_files", "byte_files"],
                            "Which source to read the stdlib through.")
_FILES = flags.DEFINE_string("files", "stdlib", "Files to read (default: the stdlib).")
_DATA_DIR = flags.DEFINE_string("data_dir", "/tmp/megabyte_bench_tfds", "TFDS data_dir.")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 8192, "Window length in bytes.")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Windows per batch.")
_SECONDS = flags.DEFINE_float("seconds", 10.0, "How long to pull batches.")
_READ_THREADS = flags.DEFINE_integer("read_threads", 0, "Document reader threads.")
_WORKERS = flags.DEFINE_integer("workers", 0, "Packing processes (0: one thread).")
_PREFETCH = flags.DEFINE_integer("prefetch", 4, "Chunks prefetched ahead (per worker).")
_WARMUP = flags.DEFINE_float("warmup_seconds", None, "Pull batches this long before timing "
                             "(default: 1 s, 10 s with worker processes, which start slowly).")


def main(argv):
  del argv
  config = base_config("megabyte", seq_len=_SEQ_LEN.value, patch_size=8, global_dim=64,
                       global_layers=1, global_heads=1, local_dim=8, local_layers=1,
                       local_heads=1)
  config.data.update(name=_SOURCE.value, files=_FILES.value, data_dir=_DATA_DIR.value)
  start = time.perf_counter()
  data = load_byte_data(config.data, _SEQ_LEN.value, 8)
  setup = time.perf_counter() - start
  iterator = iter(training_batches(data.train, _SEQ_LEN.value, _BATCH.value, seed=0,
                                   read_threads=_READ_THREADS.value,
                                   prefetch=_PREFETCH.value, workers=_WORKERS.value))
  start = time.perf_counter()
  next(iterator)
  first_batch = time.perf_counter() - start
  warmup = _WARMUP.value if _WARMUP.value is not None else (10.0 if _WORKERS.value else 1.0)
  while time.perf_counter() - start < warmup:   # steady state: every worker running
    next(iterator)
  batches, start = 0, time.perf_counter()
  while time.perf_counter() - start < _SECONDS.value:
    next(iterator)
    batches += 1
  seconds = time.perf_counter() - start
  if hasattr(iterator, "close"):
    iterator.close()
  print(json.dumps({
      "source": _SOURCE.value, "files": _FILES.value, "documents": data.train_files,
      "read_threads": _READ_THREADS.value, "workers": _WORKERS.value,
      "batch": [_BATCH.value, _SEQ_LEN.value], "bytes_per_s": round(
          batches * _BATCH.value * _SEQ_LEN.value / seconds),
      "batches_per_s": round(batches / seconds, 1), "setup_s": round(setup, 2),
      "first_batch_s": round(first_batch, 2), "warmup_s": warmup,
      "host": platform.node(), "cpus": os.cpu_count(), "jax": jax.__version__}))


if __name__ == "__main__":
  app.run(main)
