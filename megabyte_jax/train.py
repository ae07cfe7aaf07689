"""Trains a MEGABYTE model (or the byte-transformer baseline).

    python -m megabyte_jax.train --config=default --workdir=runs/default   # or megabyte-train
    python -m megabyte_jax.train --config=experiments/configs/default.py --workdir=DIR \\
        --config.train.steps=100 --config.model.global_layers=2
    python -m megabyte_jax.train --workdir=DIR        # resume with the saved config
    python -m megabyte_jax.train --workdir=DIR --config.train.steps=5000   # extend it

`--config` takes a packaged config's name (`tiny`, `default`, `transformer`, or
`megabyte_jax:NAME`), a config file, or a run's saved `config.json`. Without `--config`, a
`--workdir` that holds a run continues it, with any `--config.x=` overrides applied on top of
its saved config. A `--config` whose data section, `train.batch_size` or `seed` differs from
the saved run's is refused (the run would silently train on other batches) unless
`--allow_data_change`. The work directory may be remote (`gs://BUCKET/run`).

The config as trained goes to `DIR/config.json` (and what a resume changed in it to
`DIR/config_history.jsonl`), checkpoints to `DIR/checkpoints` (resumed automatically),
metrics to `DIR/metrics.jsonl` and, when `train.tensorboard` is on, TensorBoard files to
`DIR/tb`. At the end it prints the final validation bits per byte and a sampled
continuation, and writes this invocation's record (`training.result.TrainResult`: final
figures and timings) to `DIR/result.json`. Ctrl-C, SIGTERM or SIGHUP (a closed terminal)
saves a checkpoint before stopping, at any moment of training, and exits with 128 + the
signal's number, so nothing is lost. A run that has reached `train.steps` is finished: running it again says so
and changes nothing.

`--help` prints a short guide and these flags; `--help_config` lists every config field with
its value and meaning; `--print_config` prints the resolved config (JSON, as `config.json`
would hold it) without training. A warmup as long as the run (`--config.train.steps=2` on a
config with more warmup steps) is shortened to `train.steps - 1`, with a note.

This module is the command line only; the training loop is `megabyte_jax.training.loop`
(`train_and_evaluate`, importable from here too) and what it builds from the config is
`megabyte_jax.training.setup.TrainSetup`.
"""

from __future__ import annotations

import json
import sys
import textwrap
from typing import Optional

from absl import app, flags
import ml_collections
from ml_collections import config_flags

from megabyte_jax import cli
from megabyte_jax import configs as configs_lib
from megabyte_jax import sharding as sharding_lib
from megabyte_jax.cli import parse_flags, quiet_logging
from megabyte_jax.config_fields import format_fields
from megabyte_jax.errors import ConfigError, MegabyteError, Preempted
from megabyte_jax.experiment import clip_warmup
from megabyte_jax.training import workdir as workdir_lib
from megabyte_jax.training.loop import train_and_evaluate
from megabyte_jax.training.result import TrainResult

__all__ = ["TrainResult", "define_flags", "main", "print_help", "run", "show_config",
           "train_and_evaluate"]

_CONFIG_HELP = ("Experiment config: a packaged config's name (tiny, default, transformer, or "
                "megabyte_jax:NAME), a config file (a .py with get_config(), e.g. "
                "experiments/configs/NAME.py in a checkout), or a run's config.json; optional "
                "when --workdir already holds a run. Override any field with "
                "--config.SECTION.FIELD=VALUE.")

GUIDE = """\
usage: megabyte-train --config=NAME --workdir=DIR [--config.SECTION.FIELD=VALUE ...]
       megabyte-train --workdir=DIR [--config.SECTION.FIELD=VALUE ...]   (continue a run)

Trains a MEGABYTE model (or the byte-level Transformer baseline) and writes the run to DIR.

--config: a packaged config: tiny (seconds on a CPU, learns nothing useful), default (the
quickstart model: minutes on a CPU), transformer (default's byte-Transformer baseline); also
spelled megabyte_jax:NAME. Or a config file (a .py whose get_config() returns the config),
or a run's config.json. Override any field on the command line:
    --config.train.steps=100 --config.data.files='~/text/**/*.txt' --config.model.global_layers=2
--help_config lists every field with its value and meaning; --print_config prints the
resolved config (JSON) and exits, training nothing.

A --workdir that holds a run continues it (its config.json, with any overrides on top); a
run that has reached train.steps is finished (--config.train.steps=N extends it). A changed
data section, train.batch_size or seed is refused unless --allow_data_change.

{workdir}

Then: megabyte-evaluate --workdir=DIR; megabyte-sample --workdir=DIR --prompt='import '"""


def workdir_note(config: Optional[ml_collections.ConfigDict], width: int = 92) -> str:
  """The paragraph of `--help` on what DIR holds, wrapped to `width` columns."""
  text = ("DIR holds config.json (the config as trained), config_history.jsonl (what each "
          "resume changed: step, field, old, new), checkpoints/ (Ctrl-C saves one; the next "
          "start resumes), metrics.jsonl (train and eval bits per byte: megabyte-plot "
          "--workdir=DIR draws them), result.json (the final figures)"
          + tensorboard_note(config) + ".")
  return textwrap.fill(text, width=width, break_on_hyphens=False)


def tensorboard_note(config: Optional[ml_collections.ConfigDict]) -> str:
  """What `--help` says about TensorBoard (the end of `workdir_note`'s sentence): for a
  given config, whether it writes events (`train.tensorboard`), never promising them where
  it does not."""
  view = "view them with: pip install tensorboard; tensorboard --logdir=DIR/tb"
  if config is None:
    return (" and, when train.tensorboard is on (default and transformer; tiny turns it "
            f"off), TensorBoard events in tb/ (the [tensorboard] extra; {view})")
  if config.get("train", {}).get("tensorboard", False):
    return (" and TensorBoard events in tb/ (this config's train.tensorboard=True; the "
            f"[tensorboard] extra; {view})")
  return (". This config writes no TensorBoard events (train.tensorboard=False; "
          "--config.train.tensorboard=True turns them on, with the [tensorboard] extra)")


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
  flags.DEFINE_bool("allow_data_change", False, "Let a resumed run change its data section, "
                    "train.batch_size or seed (it then trains on other batches than an "
                    "uninterrupted run would).", flag_values=flag_values)
  flags.DEFINE_bool(
      "distributed", None, "Call jax.distributed.initialize() before training (multi-host "
      "runs). Default: when the environment asks for it (JAX_COORDINATOR_ADDRESS, a "
      "multi-host TPU slice, SLURM).", flag_values=flag_values)
  flags.DEFINE_bool("print_config", False, "Print the resolved config (JSON, as config.json "
                    "would hold it; --config=FILE.json reads it back) and exit without "
                    "training or writing anything.", flag_values=flag_values)
  flags.DEFINE_bool("help_config", False, "List every config field with its value (the "
                    "config's, overrides applied) and meaning, and exit.",
                    flag_values=flag_values)


def _loaded_config(values: flags.FlagValues) -> Optional[ml_collections.ConfigDict]:
  """`--config` as parsed, or None; exits with one line when its file cannot be loaded."""
  config = values.config
  if config is not None and not isinstance(config, ml_collections.ConfigDict):
    try:  # config_flags hands back a stand-in that raises the load error when touched
      config.keys()
    except Exception as e:  # pylint: disable=broad-except
      sys.exit(f"error: cannot load the --config file: {' '.join(str(e).split())}")
  return config


def show_config(config: Optional[ml_collections.ConfigDict], workdir: Optional[str],
                fields: bool, allow_data_change: bool = False) -> None:
  """`--print_config` (`fields=False`: the resolved config as JSON on stdout) or
  `--help_config` (`fields=True`: every field, its value and meaning). With a `workdir`
  that holds a run, the config is checked against it as training would check it. Without
  a config, `--help_config` shows the packaged `default` config's fields. Writes nothing.

  Raises:
    MegabyteError: a config that does not fit the run in `workdir`; `--print_config`
      without a config.
  """
  if config is None:
    if not fields:
      raise ConfigError("--print_config needs a config: --config=NAME, or a --workdir "
                        "that holds a run")
    from megabyte_jax.configs import default  # pylint: disable=g-import-not-at-top
    config = default.get_config()
    cli.write_out("# the fields of the packaged default config (--config=NAME shows "
                  "another's)\n")
  if workdir and not fields:
    config = workdir_lib.resolve_config(workdir, config, allow_data_change=allow_data_change)
    workdir_lib.check_data_order(workdir, config, allow_data_change)
  note = clip_warmup(config)
  if note:
    print(note, file=sys.stderr, flush=True)
  if fields:
    cli.write_out(format_fields(config) + "\n")
  else:
    cli.write_out(json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n")


def main(argv):
  """The command, once `define_flags` and absl have parsed the command line."""
  values = flags.FLAGS
  quiet_logging()
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  config = _loaded_config(values)
  if values.print_config or values.help_config:
    try:
      show_config(config, values.workdir, fields=values.help_config,
                  allow_data_change=values.allow_data_change)
    except MegabyteError as e:
      sys.exit(f"error: {e}")
    return
  # Multi-host runs: before any device use.
  sharding_lib.maybe_initialize_distributed(force=values.distributed)
  if not values.workdir:
    sys.exit("error: --workdir is required")
  if config is not None:
    note = clip_warmup(config)
    if note:
      print(note, file=sys.stderr, flush=True)
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
  Returns the command line (without a `--config=*.json`) and that config (or None).

  Raises:
    ConfigError: `--config.x=` overrides with no config to apply them to.
  """
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
    raise ConfigError("--config.x=... overrides need a config: pass --config=NAME or a "
                      "file, or a --workdir that already holds a run")
  return argv, None


def _help_config(argv: list[str]) -> Optional[ml_collections.ConfigDict]:
  """The config a `--help` command line names, if it loads (else None: the guide then
  speaks of configs in general)."""
  try:
    flags.FLAGS(cli.without_help(argv))
    config = flags.FLAGS.config
    return config if isinstance(config, ml_collections.ConfigDict) else None
  except Exception:  # pylint: disable=broad-except (any failure: the general guide)
    return None


def print_help(argv: list[str]) -> None:
  """`--help`: the guide (what TensorBoard writes following the config given, if any) and
  this command's flags. The flags must be defined."""
  guide = GUIDE.replace("{workdir}", workdir_note(_help_config(argv)))
  cli.print_help(guide, __name__)


def run(argv: Optional[list[str]] = None) -> None:
  """The `megabyte-train` command (and `python -m megabyte_jax.train`): defines the flags,
  resolves `--config` and runs `main` (`--help`: `print_help`)."""
  argv = list(sys.argv if argv is None else argv)
  helping = cli.wants_help(argv)
  try:
    argv = configs_lib.resolve_argv(argv)
    argv, saved = _saved_config(argv)
  except MegabyteError as e:
    if not helping:
      sys.exit(f"error: {e}")
    argv, saved = [argv[0]], None
  define_flags(saved, argv=argv)
  if helping:
    print_help(argv)
    return
  app.run(main, argv=argv, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
