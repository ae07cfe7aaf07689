"""Bits per byte of standard compressors on a run's validation bytes, for scale.

    python experiments/compression_baseline.py --config=experiments/configs/default.py
    python experiments/compression_baseline.py --workdir=runs/default

Reads exactly the validation files the config selects (the bytes `make train` scores) and
compresses them with `gzip -9` (zlib level 9 in a gzip container) and `xz -9` (LZMA preset 9),
each file on its own, as the model scores each file from an empty context, and also all files
concatenated. Prints one JSON line.
"""

import gzip
import json
import lzma
import sys

from absl import app, flags
from ml_collections import config_flags

from megabyte_jax.data import split_file_lists
from megabyte_jax.data.local_files import read_documents
from megabyte_jax.errors import MegabyteError
from megabyte_jax.training.workdir import load_config

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Or: a training directory (its config.json).")

COMPRESSORS = {
    "gzip-9": lambda b: gzip.compress(b, compresslevel=9, mtime=0),
    "xz-9": lambda b: lzma.compress(b, preset=9),
}


def compression_bpb(docs: list) -> dict:
  """Bits per byte of each compressor over `docs` (bytes), per file and concatenated."""
  total = sum(len(d) for d in docs)
  out = {"bytes": total, "files": len(docs)}
  for name, compress in COMPRESSORS.items():
    out[f"{name}_per_file_bpb"] = round(8 * sum(len(compress(d)) for d in docs) / total, 4)
    out[f"{name}_concatenated_bpb"] = round(8 * len(compress(b"".join(docs))) / total, 4)
  return out


def main(argv):
  del argv
  try:
    config = _CONFIG.value if _CONFIG.value is not None else load_config(_WORKDIR.value or "")
    _, eval_files = split_file_lists(config.data)
    docs = [bytes(d) for d in read_documents(eval_files)]
  except MegabyteError as e:
    sys.exit(f"error: {e}")
  print(json.dumps({"source": f"{config.data.files} (validation)", **compression_bpb(docs)}))


if __name__ == "__main__":
  app.run(main)
