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
it prints the final validation bits per byte and a sampled continuation. Ctrl-C saves a
checkpoint before stopping, so nothing is lost.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from typing import Any, Optional

from absl import app, flags
import jax
from jax.experimental import multihost_utils
import ml_collections
from ml_collections import config_flags
import numpy as np

from megabyte_jax.training import checkpoint as checkpoint_lib
from megabyte_jax import config_checks
from megabyte_jax import configs as configs_lib
from megabyte_jax import data as data_lib
from megabyte_jax.inference import scoring as evaluate_lib
from megabyte_jax.training import metrics as metrics_lib
from megabyte_jax.inference import sampling
from megabyte_jax.training import train_state as state_lib
from megabyte_jax.training import workdir as workdir_lib
from megabyte_jax.training import workdir_lock
from megabyte_jax.cli import parse_flags, quiet_logging
from megabyte_jax.errors import ConfigError, MegabyteError, Preempted, TrainingError
from megabyte_jax.training.losses import LN2
from megabyte_jax.models import build_model
from megabyte_jax import sharding as sharding_lib
from megabyte_jax.training.train_step import make_train_step, mesh_context

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


# In a multi-process run every process must stop at the same step boundary (the save is a
# collective, and a process that went on to the next step would wait for the others
# forever): the processes compare their stop requests at every step that is a multiple of
# this, so a signal reaching any one of them stops all within this many steps.
STOP_SYNC_EVERY = 5


class _StopRequest:
  """Turns SIGTERM and the first SIGINT into a request to stop at the next step boundary
  (where the loop saves a checkpoint); a second SIGINT interrupts at once. Handlers are
  installed only in the main thread and restored by `restore()`. In a multi-process run
  `agreed` makes every process stop at the same step (see `STOP_SYNC_EVERY`)."""

  def __init__(self):
    self.signum: Optional[int] = None
    self._previous = {}
    if threading.current_thread() is not threading.main_thread():
      return
    for signum in (signal.SIGTERM, signal.SIGINT):
      self._previous[signum] = signal.signal(signum, self._handle)

  def _handle(self, signum, frame):
    del frame
    if self.signum is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signum = signum

  def agreed(self, step: int) -> Optional[int]:
    """The signal to stop for at this step boundary, the same in every process (None: go
    on). One process: its own request. Several: at multiples of `STOP_SYNC_EVERY` the
    processes all-gather their requests and all stop if any has one."""
    if jax.process_count() == 1:
      return self.signum
    if step % STOP_SYNC_EVERY:
      return None
    requests = multihost_utils.process_allgather(np.int32(self.signum or 0))
    return int(np.max(requests)) or None

  def restore(self) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}


class _Progress:
  """A tqdm bar (or plain lines) showing step, bytes/s and train bpb; silent when not
  `enabled` (every process but the first of a multi-host run)."""

  def __init__(self, bar: bool, start: int, total: int, enabled: bool = True):
    self._bar = None
    self._enabled = enabled
    if bar and enabled:
      from tqdm import tqdm  # pylint: disable=g-import-not-at-top
      self._bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True,
                       file=sys.stderr)

  def update(self, n: int, step: Optional[int] = None, **postfix: Any) -> None:
    """Advances the bar by `n` steps; without a bar, prints `step` and `postfix` as one
    log line."""
    if self._bar is not None:
      self._bar.update(n)
      if postfix:
        self._bar.set_postfix(postfix, refresh=False)
    elif self._enabled and step is not None:
      print(f"step {step}: " + ", ".join(f"{k} {v}" for k, v in postfix.items()), flush=True)

  def write(self, line: str) -> None:
    if self._bar is not None:
      self._bar.write(line)
    elif self._enabled:
      print(line, flush=True)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()


def train_and_evaluate(config: Optional[ml_collections.ConfigDict], workdir: str,
                       progress: bool = False, allow_data_change: bool = False) -> dict:
  """Runs (or resumes) training in `workdir`; returns the final metrics.

  `config` None continues the run saved in `workdir`; a config given for a workdir that
  holds a run must keep its model and (unless `allow_data_change`) its data section
  (`workdir.resolve_config`). `progress`: a tqdm bar, else a log line every
  `train.log_every` steps.

  Returns a dict with `step`, `params`, `train_bpb` (of the last logged window),
  `eval_bpb` and `eval_bytes` (when `train.final_eval`) and `sample` (the generated
  continuation as text, when `sample.num_bytes > 0`).

  Runs unchanged on one device, a mesh of local devices or several processes
  (`config.mesh`; call `sharding.maybe_initialize_distributed()` first, as the CLI does):
  every process feeds its own share of the batch, and only process 0 writes the config,
  metrics and progress.
  """
  config = workdir_lib.resolve_config(workdir, config, allow_data_change=allow_data_change)
  config_checks.check_config(config)   # before anything is written
  model, model_cfg = build_model(config.model)
  is_main = jax.process_index() == 0          # logs, metrics and config from one process
  mesh = sharding_lib.make_mesh(config.get("mesh"))
  sharding_lib.check_model_fits_mesh(model_cfg, mesh)
  data_shards = mesh.shape["data"] * mesh.shape["fsdp"]
  t = config.train
  if t.batch_size % jax.process_count():
    raise ConfigError(f"train.batch_size={t.batch_size} must be a multiple of the number of "
                      f"hosts ({jax.process_count()})")
  if t.batch_size % data_shards:
    raise ConfigError(f"train.batch_size={t.batch_size} must be a multiple of the mesh's "
                      f"data x fsdp size ({data_shards}, mesh {dict(mesh.shape)})")
  grad_accum = int(t.get("grad_accum_steps", 1))
  if t.batch_size % grad_accum or (t.batch_size // grad_accum) % data_shards:
    raise ConfigError(f"train.batch_size={t.batch_size} must split into "
                      f"train.grad_accum_steps={grad_accum} microbatches that are each a "
                      f"multiple of the mesh's data x fsdp size ({data_shards})")
  remote = workdir_lib.is_remote(workdir)
  if is_main and remote:
    print(f"note: {workdir} is remote, where no lock file can be held: start one trainer "
          f"per work directory", file=sys.stderr, flush=True)
  lock = workdir_lock.WorkdirLock(os.path.expanduser(workdir),
                                  enabled=is_main and not remote).acquire()
  had_config = workdir_lib.as_path(workdir_lib.config_path(workdir)).exists()
  try:
    return _train_locked(config, workdir, progress, model, model_cfg, mesh, data_shards,
                         grad_accum, is_main)
  except BaseException:
    # A start that fails before its first checkpoint must not leave the workdir bound to a
    # model it never trained.
    if is_main and not had_config and not _has_checkpoints(workdir):
      with contextlib.suppress(OSError):
        workdir_lib.as_path(workdir_lib.config_path(workdir)).unlink()
    raise
  finally:
    lock.release()


def _finish_saves(checkpointer: checkpoint_lib.Checkpointer) -> str:
  """Waits for the save in flight, if any; returns the newest complete checkpoint in words
  ("step N" or "none"). A save that fails here is reported by the error that follows."""
  try:
    checkpointer.wait()
  except MegabyteError as e:
    print(f"warning: {e}", file=sys.stderr, flush=True)
  try:
    newest = checkpointer.latest_step()
  except MegabyteError:
    newest = None
  return "none" if newest is None else f"step {newest}"


def _has_checkpoints(workdir: str) -> bool:
  directory = workdir_lib.as_path(workdir) / checkpoint_lib.CHECKPOINT_SUBDIR
  try:
    return any(path.name.isdigit() for path in directory.iterdir())
  except OSError:
    return False


def _train_locked(config, workdir, progress, model, model_cfg, mesh, data_shards, grad_accum,
                  is_main) -> dict:
  """`train_and_evaluate` once the config is checked and the workdir locked."""
  t = config.train
  data = data_lib.load_byte_data(config.data, model_cfg.seq_len, model_cfg.patch_size)
  dataset = data_lib.training_batches(
      data.train, model_cfg.seq_len, t.batch_size // jax.process_count(), seed=config.seed,
      separator=data_lib.separator_of(config.data),
      process_index=jax.process_index(),
      process_count=jax.process_count(), read_threads=config.data.read_threads,
      prefetch=config.data.prefetch, workers=config.data.workers,
      chunk_bytes=config.data.chunk_bytes)
  optimizer = state_lib.make_optimizer(t)
  checkpointer = checkpoint_lib.Checkpointer(workdir, save_every=1, keep=t.keep_checkpoints)
  state_sharding = state_lib.state_shardings(model, model_cfg.seq_len, optimizer, mesh)
  with mesh_context(mesh):
    if checkpointer.latest_step() is None:
      train_iter = iter(dataset)
      state = state_lib.create_train_state(model, model_cfg.seq_len, optimizer,
                                           jax.random.key(config.seed), state_sharding)
      start = 0
    else:   # the newest readable checkpoint, restored straight into this mesh's layout
      start, state, train_iter = checkpointer.restore_latest_good(
          state_lib.abstract_train_state(model, model_cfg.seq_len, optimizer, state_sharding),
          data_iterator_factory=lambda: iter(dataset))
  if is_main:
    try:
      workdir_lib.save_config(workdir, config)
    except OSError as e:
      raise ConfigError(f"cannot write {workdir_lib.config_path(workdir)}: "
                        f"{e.strerror or e}") from e
  num_params = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(state.params))
  dropout = model_cfg.dropout > 0 or model_cfg.embed_dropout > 0
  train_step = make_train_step(model, optimizer, config.seed, dropout,
                               state_lib.learning_rate_schedule(t), grad_accum_steps=grad_accum,
                               mesh=mesh, state_sharding=state_sharding)
  batch_sharding = sharding_lib.batch_sharding(mesh)
  eval_step = evaluate_lib.make_eval_step(model)
  writer = metrics_lib.MetricWriter(workdir, tensorboard=t.tensorboard, enabled=is_main)
  bar = _Progress(progress and is_main, start, t.steps, enabled=is_main)
  train_bytes = f"{data.train_bytes:,} training bytes from " if data.train_bytes else ""
  bar.write(f"{type(model).__name__}: {num_params / 1e6:.2f}M parameters; data: "
            f"{train_bytes}{data.train_files} training documents, "
            f"{data.eval.num_bytes:,} validation bytes from {data.eval_files} documents; "
            + (f"resuming at step {start}" if start else "starting at step 0")
            + f" of {t.steps}; workdir {workdir}; mesh {dict(mesh.shape)} over "
            f"{jax.device_count()} {jax.default_backend()} device(s), "
            f"{jax.process_count()} process(es)")

  def quick_eval(step: int) -> None:
    with mesh_context(mesh):
      result = evaluate_lib.evaluate_windows(eval_step, state.params, data.eval,
                                             config.eval.batch_size,
                                             limit=t.eval_batches * config.eval.batch_size)
    writer.write(step, {"eval_bpb": result["bpb"], "eval_bytes": result["bytes"]})
    bar.write(f"step {step}: eval_bpb {result['bpb']:.4f} ({result['bytes']:,} bytes)")

  step = start
  window = []   # the metrics of each step since the last log
  last_train_bpb, bad_in_a_row, skipped_total = None, 0, 0
  max_bad = int(t.get("max_bad_steps", 20))
  window_start = time.perf_counter()
  stop = _StopRequest()
  try:
    while step < t.steps:
      signum = stop.agreed(step)
      if signum is not None:   # SIGTERM / SIGINT: save at this step boundary and stop
        checkpointer.save(step, state, train_iter, force=True)
        checkpointer.close()
        raise Preempted(f"stopped by {signal.Signals(signum).name} at step {step}; "
                        f"saved a checkpoint in {checkpointer.directory}; run again to resume",
                        signum, step)
      state, step_metrics = train_step(
          state, sharding_lib.shard_batch(next(train_iter), batch_sharding))
      step += 1
      window.append(step_metrics)
      if step == start + 1:  # the first step compiles: time it apart from throughput
        jax.block_until_ready(step_metrics["loss"])
        compile_seconds = time.perf_counter() - window_start
        bar.write(f"first step (compilation included): {compile_seconds:.1f} s")
        timed_steps, window_start = 0, time.perf_counter()
      else:
        timed_steps += 1
      if step % t.log_every == 0 or step == t.steps:
        fetched = jax.device_get(window)      # one transfer for the whole window
        losses = np.asarray([m["loss"] for m in fetched], np.float64)
        norms = np.asarray([m["grad_norm"] for m in fetched], np.float64)
        skipped = np.asarray([m["skipped"] for m in fetched]) > 0
        for bad in skipped:   # non-finite steps in a row, across windows
          bad_in_a_row = bad_in_a_row + 1 if bad else 0
        skipped_total += int(skipped.sum())
        if bad_in_a_row >= max_bad:
          newest = _finish_saves(checkpointer)
          raise TrainingError(
              f"{bad_in_a_row} training steps in a row had a non-finite loss or gradient "
              f"(up to step {step}); their updates were skipped, and training stops here. "
              f"The parameters are those of the last good update; the newest complete "
              f"checkpoint is {newest} in {checkpointer.directory}. Lower "
              f"train.learning_rate or check the data (train.max_bad_steps={max_bad})")
        good = ~skipped
        loss = float(losses[good].mean()) if good.any() else float("nan")
        record = {"train_bpb": loss / LN2 if good.any() else None,
                  "grad_norm": float(norms[good].mean()) if good.any() else None,
                  "lr": float(fetched[-1]["lr"]), "skipped_steps": int(skipped.sum())}
        if good.any():
          last_train_bpb = loss / LN2
        postfix = {"bpb": f"{loss / LN2:.3f}"}
        if timed_steps:
          elapsed = time.perf_counter() - window_start
          record["bytes_per_s"] = (timed_steps * t.batch_size * model_cfg.seq_len
                                   / max(elapsed, 1e-9))
          postfix["bytes/s"] = f"{record['bytes_per_s']:,.0f}"
        writer.write(step, record)
        bar.update(len(window), step=step, **postfix)
        window, timed_steps = [], 0
        window_start = time.perf_counter()
      paused = False
      if step % t.checkpoint_every == 0:
        checkpointer.save(step, state, train_iter)
        paused = True
      if t.eval_every and t.eval_batches and step % t.eval_every == 0 and step < t.steps:
        quick_eval(step)
        paused = True
      if paused:   # keep saving and evaluating out of bytes/s: restart the timed window
        jax.block_until_ready(state)
        timed_steps, window_start = 0, time.perf_counter()
  except KeyboardInterrupt:   # a second Ctrl-C, or one outside the step loop's checks
    bar.close()
    checkpointer.save(step, state, train_iter, force=True)
    checkpointer.close()
    train_iter.close()
    writer.close()
    print(f"interrupted: saved step {step} to {checkpointer.directory}; run again to resume",
          file=sys.stderr)
    raise
  except MegabyteError:
    bar.close()
    writer.close()
    train_iter.close()
    _finish_saves(checkpointer)   # never abandon a save in flight
    raise
  finally:
    stop.restore()
  bar.close()
  if checkpointer.latest_step() != step:
    checkpointer.save(step, state, train_iter, force=True)
  checkpointer.close()
  train_iter.close()

  final: dict[str, Any] = {"step": step, "params": num_params,
                           "skipped_steps": skipped_total}
  if last_train_bpb is not None:
    final["train_bpb"] = last_train_bpb
  if t.final_eval:
    with mesh_context(mesh):
      result = evaluate_lib.evaluate_windows(eval_step, state.params, data.eval,
                                             config.eval.batch_size)
    writer.write(step, {"eval_bpb": result["bpb"], "eval_bytes": result["bytes"],
                        "final": True})
    final.update(eval_bpb=result["bpb"], eval_bytes=result["bytes"])
    if is_main:
      print(f"final eval: {result['bpb']:.4f} bits/byte over {result['bytes']:,} validation "
            f"bytes (step {step}, {result['seconds']:.0f} s)", flush=True)
  writer.close()
  if config.sample.num_bytes > 0:
    prompt = np.frombuffer(config.sample.prompt.encode("utf-8"), np.uint8)
    text = sampling.sample_uncached(
        model, {"params": state.params}, prompt, config.sample.num_bytes,
        jax.random.key(config.seed + 2), config.sample.temperature, config.sample.top_k)
    final["sample"] = bytes(text).decode("utf-8", errors="replace")
    if is_main:
      print("sample:\n" + final["sample"], flush=True)
  return final


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
  except KeyboardInterrupt:
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
