"""Bits per byte of a trained model on local files.

    python -m megabyte_jax.evaluate --workdir=DIR [--files=GLOB] [--step=N] [--stride=S]
    python -m megabyte_jax.evaluate --workdir=DIR --strided
    megabyte-evaluate --workdir=DIR        # the same, as an installed command

Loads the configuration written by training and the latest (or `--step`) checkpoint, scores
every byte of every matching file (each file from an empty context, in windows of the
model's `seq_len`), and prints one JSON line with `bpb` and `bytes`. Without `--files` it
scores the validation split of the training data.

With `--stride=S` (a multiple of the patch size, at most `seq_len`), sliding-window
scoring: windows overlap, advance by S bytes and each scores only its last S bytes (a
document's first window scores all of its bytes), so every byte is still scored exactly
once but sees up to `seq_len - S` bytes more left context
(`megabyte_jax.inference.scoring.strided_windows`). It costs about `seq_len / S` times as much. This
is the paper's "sliding window" (Table 11), not its strided inference.

With `--strided`, the paper's strided inference (Section 2.3.3, Table 11): two passes
offset by half a patch, each byte scored in the pass where it falls in the first half of a
patch (`megabyte_jax.inference.scoring.patch_strided_windows`); twice the plain cost. MEGABYTE only.

A progress bar (batches scored) goes to stderr when it is a terminal (`--progress` forces
it, `--noprogress` turns it off). Importing this module defines no command-line flags;
running it does (`define_flags`).
"""

from __future__ import annotations

import json
import math
import sys
from typing import Optional

from absl import app, flags
from megabyte_jax.data import load_byte_data, load_eval_files, validation_documents
from megabyte_jax.data.local_files import check_eval_memory, read_documents, resolve_files
from megabyte_jax import cli
from megabyte_jax.cli import parse_flags, quiet_logging
from megabyte_jax.errors import CheckpointError, InputError, MegabyteError
from megabyte_jax.inference.scoring import (check_stride, evaluate_windows, make_eval_step,
                                  patch_strided_windows, strided_windows)
from megabyte_jax.config_checks import check_batch_bytes
from megabyte_jax.training.workdir import load_config, load_trained



def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the command line's flags (only when the command runs, so that importing this
  module next to `megabyte_jax.train` or another program defines no flag twice)."""
  flags.DEFINE_string("workdir", None, "Training directory (holds config.json).",
                      flag_values=flag_values)
  flags.DEFINE_string(
      "files", None, "Directory or glob (** recurses) of files to score; default: the "
      "validation split of the training data.", flag_values=flag_values)
  flags.DEFINE_integer("step", None, "Checkpoint step to load; default: the latest.",
                       flag_values=flag_values)
  flags.DEFINE_integer("batch_size", None, "Windows per batch; default: config.",
                       flag_values=flag_values)
  flags.DEFINE_integer(
      "stride", None, "Sliding-window scoring (not the paper's strided inference: see "
      "--strided): overlapping windows that advance by this many "
      "bytes (a multiple of the patch size, at most seq_len) and score only their last STRIDE "
      "bytes, giving each byte more left context; default: plain consecutive windows.",
      flag_values=flag_values)
  flags.DEFINE_bool(
      "strided", False, "The paper's strided inference (MEGABYTE, Section 2.3.3): two "
      "passes offset by half a patch, each byte scored where it is in the first half of a "
      "patch; twice the cost of plain windows.", flag_values=flag_values)
  flags.DEFINE_bool("progress", None, "Show a progress bar on stderr; default: when stderr "
                    "is a terminal.", flag_values=flag_values)


class _Flag:
  """The value of the flag `name` (read when used, after parsing)."""

  def __init__(self, name: str):
    self.name = name

  @property
  def value(self):
    return flags.FLAGS[self.name].value


_WORKDIR, _FILES, _STEP, _BATCH, _STRIDE, _STRIDED, _PROGRESS = map(
    _Flag, ("workdir", "files", "step", "batch_size", "stride", "strided", "progress"))


def counting(eval_step, total: int, enabled: bool):
  """`eval_step` that advances a tqdm bar of `total` batches on stderr at each call (the
  bar counts batches dispatched; `enabled=False`: `eval_step` itself). Returns
  `(step, close)`."""
  if not enabled:
    return eval_step, lambda: None
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  bar = tqdm(total=total, unit="batch", desc="evaluate", file=sys.stderr, dynamic_ncols=True)

  def step(*args):
    out = eval_step(*args)
    bar.update(1)
    return out

  return step, bar.close


def main(argv):
  """The command: one JSON line with the bits per byte; a user mistake exits with one line."""
  quiet_logging()
  del argv
  if not _WORKDIR.value:
    sys.exit("error: --workdir is required (the directory training wrote)")
  try:
    if _BATCH.value is not None and _BATCH.value < 1:
      raise InputError(f"--batch_size must be at least 1, got {_BATCH.value}")
    if _BATCH.value is not None:   # before the checkpoint is read
      check_batch_bytes("--batch_size", _BATCH.value,
                        load_config(_WORKDIR.value).model.seq_len)
    loaded = load_trained(_WORKDIR.value, _STEP.value)
    config, model, params, step = loaded.config, loaded.model, loaded.params, loaded.step
    seq_len = config.model.seq_len
    stride, strided = _STRIDE.value, _STRIDED.value
    if stride is not None and strided:
      raise InputError("--stride (sliding windows) and --strided (the paper's strided "
                       "inference) are two scorings: choose one")
    if stride is not None or strided:
      patch_size = model.config.patch_size
      if strided and patch_size < 2:
        raise InputError("--strided needs a MEGABYTE model (patches of 2 or more bytes); "
                         "this is a byte Transformer")
      if not strided:
        check_stride(stride, seq_len, patch_size)
      names = None
      if _FILES.value:
        names = resolve_files(_FILES.value, max_file_bytes=None)[1]
        docs = read_documents(names)
        source = _FILES.value
      else:
        docs = validation_documents(config.data, patch_size)
        source = f"{config.data.files} (validation)"
      # Strided inference holds about twice the plain windows: as sliding by seq_len / 2.
      check_eval_memory([len(d) for d in docs], seq_len,
                        stride or max(patch_size, seq_len // 2 // patch_size * patch_size),
                        names)
      if strided:
        windows = patch_strided_windows(docs, seq_len, patch_size)
      else:
        windows = strided_windows(docs, seq_len, stride, patch_size)
      files = len(docs)
    elif _FILES.value:
      windows, files = load_eval_files(_FILES.value, seq_len)
      source = _FILES.value
    else:
      data = load_byte_data(config.data, seq_len, model.config.patch_size)
      windows, files, source = data.eval, data.eval_files, f"{config.data.files} (validation)"
    batch = _BATCH.value or config.eval.batch_size
    show = sys.stderr.isatty() if _PROGRESS.value is None else _PROGRESS.value
    step_fn, close = counting(make_eval_step(model), -(-len(windows.tokens) // batch), show)
    try:
      result = evaluate_windows(step_fn, params, windows, batch)
    finally:
      close()
    if not math.isfinite(result["bpb"]):
      raise CheckpointError(f"the model of step {step} in {_WORKDIR.value} gives a "
                            f"non-finite bits per byte ({result['bpb']}); its parameters or "
                            f"the data are broken")
  except MegabyteError as e:
    sys.exit(f"error: {e}")
  report = {"bpb": round(result["bpb"], 6), "bytes": result["bytes"], "files": files,
            "step": step, "source": source, "seconds": result["seconds"]}
  if stride is not None:
    report.update(stride=stride, windows=len(windows.tokens))
  if strided:
    report.update(strided=True, windows=len(windows.tokens))
  print(json.dumps(report))


GUIDE = """\
usage: megabyte-evaluate --workdir=DIR [--files=GLOB] [--step=N] [--stride=S | --strided]

Bits per byte of a trained model (the run megabyte-train wrote to DIR, its latest or --step
checkpoint), printed as one JSON line with bpb, bytes, files and step. Without --files it
scores the run's validation split; with --files, every byte of every matching file (** in
a glob recurses), each file from an empty context in windows of the model's seq_len.
--stride=S scores with sliding windows (more left context per byte, about seq_len / S
times the cost); --strided is the paper's strided inference (two passes, MEGABYTE only)."""


def run(argv: Optional[list[str]] = None) -> None:
  """The `megabyte-evaluate` command (and `python -m megabyte_jax.evaluate`); `--help`
  prints `GUIDE` and the flags."""
  define_flags()
  if cli.wants_help(sys.argv if argv is None else argv):
    cli.print_help(GUIDE, __name__)
    return
  app.run(main, argv=argv, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
