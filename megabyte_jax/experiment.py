"""The experiment configuration: one `ml_collections.ConfigDict` with every setting of a run.

Config files under `experiments/configs/` start from `base_config(...)` and change what they
need, so every run's config holds every field (a `--config.section.key=value` override can
reach any of them) and the resolved config written into the work directory is complete:

    config.seed        base seed (parameters, dropout, training batches)
    config.model       `kind` ("megabyte" or "transformer") and every field of its config class
    config.mesh        device mesh axes; `config.mesh_rules` overrides the sharding rules
    config.data        which bytes to train and validate on (`megabyte_jax.data`)
    config.train       optimisation, logging, evaluation and checkpoint cadence
    config.eval        batch size of evaluation
    config.sample      the continuation printed at the end of training
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import typing
from typing import Any, Optional

import ml_collections
from ml_collections import config_dict

from megabyte_jax.config import ConfigError
from megabyte_jax.models import MODEL_KINDS


def load_module_file(path: str, *relative: str) -> Any:
  """Loads a Python file as a module: `path` itself, or with `relative` parts the file they
  name relative to the folder of `path`.

  For a config file read by path (`--config=FILE`) that needs another file outside any
  package: `load_module_file(__file__, "other.py")` loads the `other.py` beside the calling
  file, from any working directory. (The repository's own configs import each other as
  modules instead, e.g. `from experiments.configs.ablation import study`.)

  Raises:
    FileNotFoundError: naming the file, when there is none.
  """
  if relative:
    path = os.path.join(os.path.dirname(os.path.abspath(path)), *relative)
  path = os.path.normpath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no Python file {path!r}")
  name = "_loaded_" + re.sub(r"\W", "_", os.path.splitext(path)[0])
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _optional_type(hint: Any) -> type:
  """The inner type of an `Optional[X]` annotation (X itself otherwise)."""
  args = [a for a in typing.get_args(hint) if a is not type(None)]
  return args[0] if args else hint


def model_section(kind: str, **fields: Any) -> ml_collections.ConfigDict:
  """A `config.model` section holding `kind` and every field of that kind's config class.

  Required fields (such as `seq_len`) must be given; the others take the class defaults.
  Fields whose default is None become typed placeholders, so they can still be set from the
  command line (`--config.model.init_std=0.006`).

  Raises:
    ConfigError: for an unknown kind, a missing required field or an unknown field.
  """
  if kind not in MODEL_KINDS:
    raise ConfigError(f"model kind must be one of {sorted(MODEL_KINDS)}, got {kind!r}")
  config_cls = MODEL_KINDS[kind][0]
  section = ml_collections.ConfigDict({"kind": kind})
  known = set()
  hints = typing.get_type_hints(config_cls)
  for field in dataclasses.fields(config_cls):
    known.add(field.name)
    if field.name in fields:
      value = fields[field.name]
    elif field.default is dataclasses.MISSING:
      raise ConfigError(f"model kind {kind!r} needs the field {field.name!r}")
    else:
      value = field.default
    if value is None:
      value = config_dict.placeholder(_optional_type(hints[field.name]))
    section[field.name] = value
  unknown = sorted(set(fields) - known)
  if unknown:
    raise ConfigError(f"unknown {config_cls.__name__} field(s) {unknown}")
  return section


def base_config(kind: str = "megabyte", **model_fields: Any) -> ml_collections.ConfigDict:
  """A complete experiment config with defaults everywhere but the model's required fields.

  Defaults train on the Python standard library's sources (`data.files="stdlib"`) with
  AdamW, linear warmup and cosine decay to 10% of the peak learning rate.
  """
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.model = model_section(kind, **model_fields)

  config.data = ml_collections.ConfigDict()
  # "local_files", a TFDS builder ("byte_files", "image_folder", "audio_folder") or a TFDS
  # catalog name prepared in `data_dir` (e.g. "pg19").
  config.data.name = "local_files"
  config.data.files = "stdlib"            # "stdlib", a directory, or a glob (** recurses)
  config.data.eval_files = config_dict.placeholder(str)  # separate validation glob, optional
  config.data.eval_fraction = 0.05        # share of files (by path hash) held out
  config.data.split_seed = 0
  config.data.separator = 0               # byte after each training document (-1: none,
                                          # e.g. for images, to keep patches aligned)
  config.data.data_dir = config_dict.placeholder(str)   # TFDS data_dir; default
                                                          # ~/tensorflow_datasets
  config.data.image_size = 64             # image_folder: images resized to N x N
  config.data.channels = 3                # image_folder: 3 (RGB) or 1 (grayscale)
  config.data.order = "raster"            # images: "raster" or "patch" (the paper's scan)
  config.data.patch_size = config_dict.placeholder(int)  # patch scan: bytes per patch
                                                          # (default: the model's)
  config.data.encoding = "mulaw8"         # audio: "mulaw8", "pcm16" or "pcm8"
  config.data.sample_rate = config_dict.placeholder(int)  # audio: required rate, optional
  config.data.feature = config_dict.placeholder(str)      # catalog datasets: which feature
  config.data.skip_unreadable = False     # True: leave out (with a warning) files and
                                          # directories that cannot be read, not stop
  config.data.read_threads = 0            # threads reading documents ahead of packing
  config.data.prefetch = 4                # batches prepared ahead (0: none)
  config.data.workers = 0                 # packing processes (0: one background thread)
  config.data.chunk_bytes = 2 ** 24       # bytes packed at once; windows mix within a chunk

  # Device mesh (megabyte_jax.sharding): sizes of the data / fsdp / tensor axes; -1 fills the
  # devices the others leave. Default: pure data parallelism over every device.
  config.mesh = ml_collections.ConfigDict()
  config.mesh.data = -1
  config.mesh.fsdp = 1
  config.mesh.tensor = 1
  # Overrides of the logical-axis rules (`sharding.LOGICAL_RULES`, `sharding.logical_rules`):
  # (logical_name, mesh_axis or None) pairs, e.g. (("mlp", None),) keeps the MLP whole on
  # every device; a name the table lacks is added. Default: none, the table as it is.
  config.mesh_rules = ()

  config.train = ml_collections.ConfigDict()
  config.train.steps = 1000
  config.train.batch_size = 16
  config.train.learning_rate = 1e-3       # peak
  config.train.warmup_steps = 100
  config.train.min_lr_ratio = 0.1         # final learning rate / peak
  config.train.weight_decay = 0.1         # decoupled, on what weight_decay_mask selects:
  config.train.weight_decay_mask = "kernels"  # dense layers' weight matrices (train_state.
                                          # decay_mask: or "kernels_embeddings", "ndim")
  config.train.b1 = 0.9
  config.train.b2 = 0.95
  config.train.eps = 1e-8
  config.train.grad_clip = 1.0            # global norm; 0 disables
  config.train.z_loss = 0.0               # weight of mean(logsumexp(logits)^2); 0 disables
  # Per-parameter learning-rate factors: (pattern, factor) pairs, the first pattern that
  # matches the start of a parameter's path wins, e.g. (("local_", 2.0),) doubles the rate
  # of every local-model parameter. Default: none.
  config.train.lr_scales = ()
  config.train.grad_accum_steps = 1       # microbatches per update (divides batch_size)
  config.train.max_bad_steps = 20         # non-finite steps in a row (updates skipped)
                                          # before training stops
  config.train.log_every = 10
  config.train.eval_every = 200           # quick eval on `eval_batches` batches; 0 disables
  config.train.eval_batches = 8
  config.train.checkpoint_every = 200
  config.train.keep_checkpoints = 3
  config.train.final_eval = True          # score the whole validation split at the end
  config.train.tensorboard = True

  config.eval = ml_collections.ConfigDict()
  config.eval.batch_size = 16

  config.sample = ml_collections.ConfigDict()
  config.sample.prompt = "import "
  config.sample.num_bytes = 256           # 0 disables the sample at the end of training
  config.sample.temperature = 0.8
  config.sample.top_k = config_dict.placeholder(int)
  return config


def clip_warmup(config: ml_collections.ConfigDict) -> Optional[str]:
  """Shortens a warmup as long as the run (`train.warmup_steps >= train.steps`, e.g. a
  quick `--config.train.steps=2` on a config with 5 warmup steps) to `train.steps - 1`, in
  place, so that the learning rate still reaches its peak and decays. Returns the note that
  says so (None when nothing changed). The library's checks refuse such a warmup
  (`config_checks.check_train`); the command line clips it with this note."""
  train = config.get("train")
  if train is None:
    return None
  steps, warmup = train.get("steps"), train.get("warmup_steps")
  if not all(isinstance(v, int) and not isinstance(v, bool) for v in (steps, warmup)):
    return None   # not numbers: left to the checks, which name the field
  if steps < 1 or warmup < steps:
    return None
  train.warmup_steps = steps - 1
  return (f"note: train.warmup_steps={warmup} is not shorter than train.steps={steps}: "
          f"warming up over {steps - 1} step{'' if steps == 2 else 's'} instead")
