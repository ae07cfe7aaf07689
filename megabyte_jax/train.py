"""Trains a MEGABYTE model (or the byte-transformer baseline).

    python -m megabyte_jax.train --config=default --workdir=runs/default   # or megabyte-train
    python -m megabyte_jax.train --config=experiments/configs/default.py --workdir=DIR \\
        --config.train.steps=100 --config.model.global_layers=2
    python -m megabyte_jax.train --workdir=DIR        # resume with the saved config
    python -m megabyte_jax.train --workdir=DIR --config.train.steps=5000   # extend it

`--config` takes a packaged config's name (`tiny`, `default`, `transformer`, or
`megabyte_jax:NAME`), a config file, or a run's saved `config.json`. Without `--config`, a
`--workdir` that holds a run continues it, with any `--config.x=` overrides applied on top of
its saved config. A `--config` whose data section differs from the saved run's is refused
(the run would silently switch corpus) unless `--allow_data_change`. The work directory may
be remote (`gs://BUCKET/run`).

The resolved config goes to `DIR/config.json`, checkpoints to `DIR/checkpoints` (resumed
automatically), metrics to `DIR/metrics.jsonl` and TensorBoard files to `DIR/tb`. At the end
it prints the final validation bits per byte and a sampled continuation, and writes this
invocation's record (`training.result.TrainResult`: final figures and timings) to
`DIR/result.json`. Ctrl-C, SIGTERM or SIGHUP (a closed terminal) saves a checkpoint before
stopping, at any moment of training, and exits with 128 + the signal's number, so nothing is
lost.

This module is the command line only; the training loop is `megabyte_jax.training.loop`
(`train_and_evaluate`, importable from here too) and what it builds from the config is
`megabyte_jax.training.setup.TrainSetup`.
"""

from __future__ import annotations

import sys
from typing import Optional

from absl import app, flags
import ml_collections
from ml_collections import config_flags

from megabyte_jax import configs as configs_lib
from megabyte_jax import sharding as sharding_lib
from megabyte_jax.cli import parse_flags, quiet_logging
from megabyte_jax.errors import MegabyteError, Preempted
from megabyte_jax.training import workdir as workdir_lib
from megabyte_jax.training.loop import train_and_evaluate
from megabyte_jax.training.result import TrainResult

__all__ = ["TrainResult", "define_flags", "main", "run", "train_and_evaluate"]

_CONFIG_HELP = ("Experiment config: a packaged config's name (tiny, default, transformer, or "
                "megabyte_jax:NAME), a config file (experiments/configs/NAME.py), or a run's "
                "config.json; optional when --workdir already holds a run.")


def define_flags(saved_config: Optional[ml_collections.ConfigDict] = None,
                 flag_values: flags.FlagValues = flags.FLAGS,
                 argv: Optional[list[str]] = None) -> None:
  """Defines the command line's flags (only when the command runs, so that importing this
  module defines none). With `saved_config`, `--config` holds it and `--config.x=`
  overrides apply to it (a resumed run, or `--config=RUN/config.json`). `argv`: the command
  line the `--config.x=` overrides are read from (default: `sys.argv`)."""
  if saved_config is None:
    config_flags.DEFINE_config_file("config", None, _CONFIG_HELP, flag_values=flag_values,
                                    lock_config=True, sys_argv=argv)
  else:
    config_flags.DEFINE_config_dict("config", saved_config, _CONFIG_HELP,
                                    flag_values=flag_values, lock_config=True, sys_argv=argv)
  flags.DEFINE_string("workdir", None, "Directory for config, checkpoints, metrics (local, "
                      "or remote such as gs://BUCKET/run).", flag_values=flag_values)
  flags.DEFINE_bool("progress", None, "Show a tqdm progress bar; --noprogress prints a log "
                    "line every train.log_every steps instead. Default: a bar when stderr is "
                    "a terminal.", flag_values=flag_values)
  flags.DEFINE_bool("allow_data_change", False, "Let a --config whose data section differs "
                    "from the saved run's continue that run (on the new data).",
                    flag_values=flag_values)
  flags.DEFINE_bool(
      "distributed", None, "Call jax.distributed.initialize() before training (multi-host "
      "runs). Default: when the environment asks for it (JAX_COORDINATOR_ADDRESS, a "
      "multi-host TPU slice, SLURM).", flag_values=flag_values)


def main(argv):
  """The command, once `define_flags` and absl have parsed the command line."""
  values = flags.FLAGS
  quiet_logging()
  # Multi-host runs: before any device use.
  sharding_lib.maybe_initialize_distributed(force=values.distributed)
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  if not values.workdir:
    sys.exit("error: --workdir is required")
  config = values.config
  if config is not None and not isinstance(config, ml_collections.ConfigDict):
    try:  # config_flags hands back a stand-in that raises the load error when touched
      config.keys()
    except Exception as e:  # pylint: disable=broad-except
      sys.exit(f"error: cannot load the --config file: {' '.join(str(e).split())}")
  progress = values.progress
  if progress is None:
    progress = sys.stderr.isatty()
  try:
    train_and_evaluate(config, values.workdir, progress=progress,
                       allow_data_change=values.allow_data_change)
  except Preempted as e:
    print(str(e), file=sys.stderr, flush=True)
    sys.exit(128 + e.signum)
  except MegabyteError as e:
    sys.exit(f"error: {e}")
  except KeyboardInterrupt:   # Ctrl-C twice before the first step (training saves on its own)
    print("stopped by SIGINT before training began; run again to start or resume",
          file=sys.stderr, flush=True)
    sys.exit(130)


def _saved_config(argv: list[str]) -> tuple[list[str], Optional[ml_collections.ConfigDict]]:
  """The config that `--config` overrides apply to when it is not a config file: a run's
  `config.json` given as `--config`, or, without `--config`, the run saved in `--workdir`.
  Returns the command line (without a `--config=*.json`) and that config (or None)."""
  index, value = configs_lib.flag_value(argv, "config")
  if value is not None and value.endswith(".json"):
    stop = index + (1 if "=" in argv[index] else 2)
    return argv[:index] + argv[stop:], workdir_lib.load_config_file(value)
  if index is not None:
    return argv, None
  _, workdir = configs_lib.flag_value(argv, "workdir")
  if workdir and workdir_lib.as_path(workdir_lib.config_path(workdir)).exists():
    return argv, workdir_lib.load_config(workdir)
  if any(arg.startswith("--config.") for arg in argv):
    sys.exit("error: --config.x=... overrides need a config: pass --config=NAME or a file, "
             "or a --workdir that already holds a run")
  return argv, None


def run(argv: Optional[list[str]] = None) -> None:
  """The `megabyte-train` command (and `python -m megabyte_jax.train`): defines the flags,
  resolves `--config` and runs `main`."""
  try:
    argv = configs_lib.resolve_argv(sys.argv if argv is None else argv)
    argv, saved = _saved_config(argv)
  except MegabyteError as e:
    sys.exit(f"error: {e}")
  define_flags(saved, argv=argv)
  app.run(main, argv=argv, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
