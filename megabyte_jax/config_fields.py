"""What every field of an experiment config means: `megabyte-train --help_config`.

    print(format_fields(config))     # section by section: field = value  meaning

The model section's meanings come from the docstring of its config class (`MegabyteConfig`,
`TransformerConfig`: their "Attributes:" sections), the other sections' from `FIELD_HELP`
here, so that each meaning is written once. `tests/test_config_fields.py` checks that every
field of `experiment.base_config` has one.
"""

from __future__ import annotations

import dataclasses
import re
import textwrap
from typing import Any, Iterator

import ml_collections

from megabyte_jax.config import MegabyteConfig, TransformerConfig

# Fields outside `config.model`, dotted. (Model fields: the config classes' docstrings.)
FIELD_HELP = {
    "seed": "base seed: parameters, dropout and the order of the training batches",
    "mesh_rules": "overrides of the sharding rules: (logical_name, mesh_axis or None) pairs, "
                  "e.g. (('mlp', None),) keeps the MLP whole on every device",
    "data.name": "the source: local_files (files read from disk), byte_files, "
                 "image_folder, audio_folder (TFDS builders, the [tfds] extra) or a prepared "
                 "TFDS catalog dataset such as pg19",
    "data.files": "what to train on: stdlib (the Python standard library's sources), a "
                  "directory, a file, or a glob where ** recurses",
    "data.eval_files": "a separate validation directory or glob (default: hold out "
                       "data.eval_fraction of data.files)",
    "data.eval_fraction": "share of the files held out for validation, chosen by a hash of "
                          "each path (a single file or a few files: the last share of each "
                          "file's bytes)",
    "data.split_seed": "seed of the train/validation split and of the validation windows' "
                       "order",
    "data.separator": "byte appended after each training document (-1: none, e.g. images)",
    "data.data_dir": "TFDS data directory (default ~/tensorflow_datasets)",
    "data.image_size": "image_folder: images resized to N x N",
    "data.channels": "image_folder: 3 (RGB) or 1 (grayscale)",
    "data.order": "images: raster, or patch (the paper's patch-scan order)",
    "data.patch_size": "patch-scan order: bytes per patch (default: the model's patch_size)",
    "data.encoding": "audio_folder: mulaw8, pcm16 or pcm8",
    "data.sample_rate": "audio_folder: the required sample rate (optional)",
    "data.feature": "TFDS catalog datasets: the feature holding the text, image or audio",
    "data.skip_unreadable": "leave out (with a warning) files that cannot be read, instead "
                            "of stopping",
    "data.read_threads": "threads reading documents ahead of packing (0: none)",
    "data.prefetch": "batches prepared ahead (0: none)",
    "data.workers": "packing processes (0: one background thread); a resumed run keeps it",
    "data.chunk_bytes": "bytes packed at once; training windows are shuffled within a chunk",
    "mesh.data": "devices on the data-parallel axis (-1: those the other axes leave)",
    "mesh.fsdp": "devices on the FSDP axis (batch split, parameters and optimizer state "
                 "sharded)",
    "mesh.tensor": "devices on the tensor-parallel axis (attention heads and MLP split)",
    "train.steps": "optimizer updates in the whole run (a resumed run trains up to this "
                   "step)",
    "train.batch_size": "windows of model.seq_len bytes per update, over all devices and "
                        "hosts",
    "train.learning_rate": "peak learning rate (AdamW)",
    "train.warmup_steps": "linear warmup from 0 to the peak, in updates (the command line "
                          "shortens a warmup as long as the run, with a note)",
    "train.min_lr_ratio": "the cosine decay ends at this share of the peak",
    "train.weight_decay": "decoupled weight decay",
    "train.weight_decay_mask": "what weight decay applies to: kernels (dense weight "
                               "matrices), kernels_embeddings, or ndim (every parameter of "
                               "2+ dimensions)",
    "train.b1": "Adam beta1",
    "train.b2": "Adam beta2",
    "train.eps": "Adam epsilon",
    "train.grad_clip": "clip gradients to this global norm (0: no clipping)",
    "train.z_loss": "weight of the auxiliary loss mean(logsumexp(logits)^2), added to the "
                    "objective, not to the logged loss (0: off)",
    "train.lr_scales": "(pattern, factor) pairs: the learning rate (and weight decay) of the "
                       "parameters whose path starts with the first matching pattern is "
                       "multiplied by its factor, e.g. (('local_', 2.0),)",
    "train.grad_accum_steps": "microbatches per update (divides batch_size)",
    "train.max_bad_steps": "stop after this many updates in a row with a non-finite loss or "
                           "gradient (their updates are skipped)",
    "train.log_every": "updates between lines of metrics.jsonl (and of the log)",
    "train.eval_every": "updates between quick evaluations (0: none)",
    "train.eval_batches": "batches of each quick evaluation",
    "train.checkpoint_every": "updates between checkpoints",
    "train.keep_checkpoints": "checkpoints kept (the newest, and the newest good one)",
    "train.final_eval": "score every validation byte at the end",
    "train.tensorboard": "also write TensorBoard events to DIR/tb (the [tensorboard] extra; "
                         "view with: pip install tensorboard; tensorboard --logdir=DIR/tb)",
    "eval.batch_size": "windows per evaluation batch",
    "sample.prompt": "prompt of the sample printed at the end of training",
    "sample.num_bytes": "bytes sampled at the end of training (0: no sample)",
    "sample.temperature": "sampling temperature (0: greedy)",
    "sample.top_k": "sample from the k most likely bytes only (None: all)",
}

# TransformerConfig fields that MegabyteConfig does not have.
TRANSFORMER_HELP = {
    "dim": "width of the transformer",
    "layers": "number of transformer blocks",
    "heads": "attention heads",
    "head_dim": "per-head width of attention; default dim // heads",
}


def class_field_help(cls: type) -> dict[str, str]:
  """`{field: meaning}` from the "Attributes:" section of a config class's docstring (an
  entry `name: text` or `a, b: text`, continued on more-indented lines)."""
  doc = (cls.__doc__ or "").partition("Attributes:")[2]
  out: dict[str, str] = {}
  current: list[str] = []
  for line in doc.splitlines():
    match = re.match(r"^    (\w[\w, ]*): (.*)$", line)
    if match:
      current = [name.strip() for name in match.group(1).split(",")]
      for name in current:
        out[name] = match.group(2).strip()
    elif line.startswith("      ") and current:
      for name in current:
        out[name] += " " + line.strip()
    elif line.strip():
      current = []
  return out


def model_field_help(kind: str) -> dict[str, str]:
  """`{field: meaning}` of the model section of a config of `kind` ("megabyte" or
  "transformer"); `kind` itself included."""
  out = {"kind": "megabyte (the multiscale model) or transformer (the byte-level baseline)"}
  out.update(class_field_help(MegabyteConfig))
  if kind == "transformer":
    out.update(TRANSFORMER_HELP)
    names = {f.name for f in dataclasses.fields(TransformerConfig)} | {"kind"}
    out = {k: v for k, v in out.items() if k in names}
  return out


def _flat(config: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
  for key in sorted(config.keys()):
    value = config[key]
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      yield from _flat(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}", value


def describe(config: ml_collections.ConfigDict) -> list[tuple[str, Any, str]]:
  """`(dotted field, value, meaning)` for every field of an experiment config, model
  section first ("" where no meaning is known, e.g. a field a config file added)."""
  model_help = model_field_help(config.model.get("kind", "megabyte"))
  rows = [(f"model.{name}", value, model_help.get(name, ""))
          for name, value in _flat(config.model)]
  rest = ml_collections.ConfigDict({k: v for k, v in config.items() if k != "model"})
  rows += [(name, value, FIELD_HELP.get(name, "")) for name, value in _flat(rest)]
  return rows


def format_fields(config: ml_collections.ConfigDict, width: int = 100) -> str:
  """Every field of `config` as `field = value` lines, each followed by its meaning
  (indented and wrapped to `width` columns), ready to print."""
  lines = []
  for name, value, meaning in describe(config):
    lines.append(f"--config.{name}={value!r}")
    if meaning:
      lines += textwrap.wrap(meaning, width=width, initial_indent="    ",
                             subsequent_indent="    ")
  return "\n".join(lines)
