"""The training loop: `train_and_evaluate(config, workdir)` runs or resumes a run.

It resolves the config against the work directory, builds the one training setup
(`setup.TrainSetup`: checks, model, mesh, optimizer, schedule, steps), holds the workdir's
lock, restores the newest good checkpoint or starts fresh, and steps: logging metrics
(`metrics.jsonl`), evaluating, checkpointing, stopping cleanly on SIGTERM / SIGINT, and
stopping after `train.max_bad_steps` non-finite steps in a row. At the end it evaluates on
the whole validation split (`train.final_eval`), samples a continuation
(`sample.num_bytes`) and returns (and writes to `DIR/result.json`) a `result.TrainResult`. The command line is `megabyte_jax.train`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
import threading
import time
from typing import Any, Optional

import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from megabyte_jax import data as data_lib
from megabyte_jax.errors import ConfigError, MegabyteError, Preempted, TrainingError
from megabyte_jax.inference import sampling
from megabyte_jax.inference import scoring as evaluate_lib
from megabyte_jax.training import checkpoint as checkpoint_lib
from megabyte_jax.training import metrics as metrics_lib
from megabyte_jax.training import workdir as workdir_lib
from megabyte_jax.training import workdir_lock
from megabyte_jax.training.losses import LN2
from megabyte_jax.training.result import TrainResult
from megabyte_jax.training.setup import TrainSetup


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
                       progress: bool = False, allow_data_change: bool = False
                       ) -> TrainResult:
  """Runs (or resumes) training in `workdir`; returns the record of this invocation.

  `config` None continues the run saved in `workdir`; a config given for a workdir that
  holds a run must keep its model and (unless `allow_data_change`) its data section
  (`workdir.resolve_config`). `progress`: a tqdm bar, else a log line every
  `train.log_every` steps.

  Returns a `TrainResult` (also a read-only mapping, as the dict this returned before):
  `step`, `params`, `skipped_steps`, `train_bpb` (of the last logged window), `eval_bpb`
  and `eval_bytes` (when `train.final_eval`), `sample` (the generated continuation as
  text, when `sample.num_bytes > 0`) and the timings `compile_s`, `train_s`,
  `bytes_per_s`, `final_eval_s`, `wall_s`. Process 0 also writes it to
  `DIR/result.json` (`TrainResult.load(workdir)` reads it back).

  Runs unchanged on one device, a mesh of local devices or several processes
  (`config.mesh`, `config.mesh_rules`; call `sharding.maybe_initialize_distributed()`
  first, as the CLI does): every process feeds its own share of the batch, and only
  process 0 writes the config, metrics, result and progress.

  Raises:
    ConfigError, DataError: a bad config, or one that does not fit the saved run, the
      devices or the data (before anything is written).
    Preempted: stopped by SIGTERM / SIGINT, after saving a checkpoint.
    TrainingError, CheckpointError: training cannot go on.
  """
  started = time.perf_counter()
  config = workdir_lib.resolve_config(workdir, config, allow_data_change=allow_data_change)
  setup = TrainSetup.create(config)   # every config check, before anything is written
  is_main = jax.process_index() == 0          # logs, metrics and config from one process
  remote = workdir_lib.is_remote(workdir)
  if is_main and remote:
    print(f"note: {workdir} is remote, where no lock file can be held: start one trainer "
          f"per work directory", file=sys.stderr, flush=True)
  lock = workdir_lock.WorkdirLock(os.path.expanduser(workdir),
                                  enabled=is_main and not remote).acquire()
  had_config = workdir_lib.as_path(workdir_lib.config_path(workdir)).exists()
  try:
    result = _train_locked(setup, workdir, progress, is_main)
    result = dataclasses.replace(result, wall_s=time.perf_counter() - started)
    if is_main:
      try:
        result.save(workdir)
      except OSError as e:
        raise TrainingError(f"cannot write the result record to {workdir}: "
                            f"{e.strerror or e}; the checkpoints and metrics are "
                            f"written") from e
    return result
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


def _train_locked(setup: TrainSetup, workdir: str, progress: bool,
                  is_main: bool) -> TrainResult:
  """`train_and_evaluate` once the setup is built (the config checked) and the workdir
  locked; the result without `wall_s`."""
  config, model, model_cfg, mesh = setup.config, setup.model, setup.model_cfg, setup.mesh
  t = config.train
  data = data_lib.load_byte_data(config.data, model_cfg.seq_len, model_cfg.patch_size)
  dataset = data_lib.training_batches(
      data.train, model_cfg.seq_len, t.batch_size // jax.process_count(), seed=setup.seed,
      separator=data_lib.separator_of(config.data),
      process_index=jax.process_index(),
      process_count=jax.process_count(), read_threads=config.data.read_threads,
      prefetch=config.data.prefetch, workers=config.data.workers,
      chunk_bytes=config.data.chunk_bytes)
  checkpointer = checkpoint_lib.Checkpointer(workdir, save_every=1, keep=t.keep_checkpoints)
  if checkpointer.latest_step() is None:
    train_iter = iter(dataset)
    state = setup.init_state()
    start = 0
  else:   # the newest readable checkpoint, restored straight into this mesh's layout
    with setup.context():
      start, state, train_iter = checkpointer.restore_latest_good(
          setup.abstract_state(), data_iterator_factory=lambda: iter(dataset))
  if is_main:
    try:
      workdir_lib.save_config(workdir, config)
    except OSError as e:
      raise ConfigError(f"cannot write {workdir_lib.config_path(workdir)}: "
                        f"{e.strerror or e}") from e
  num_params = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(state.params))
  train_step, eval_step = setup.train_step, setup.eval_step
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
    with setup.context():
      result = evaluate_lib.evaluate_windows(eval_step, state.params, data.eval,
                                             config.eval.batch_size,
                                             limit=t.eval_batches * config.eval.batch_size)
    writer.write(step, {"eval_bpb": result["bpb"], "eval_bytes": result["bytes"]})
    bar.write(f"step {step}: eval_bpb {result['bpb']:.4f} ({result['bytes']:,} bytes)")

  step = start
  window = []   # the metrics of each step since the last log
  last_train_bpb, bad_in_a_row, skipped_total = None, 0, 0
  max_bad = int(t.get("max_bad_steps", 20))
  bytes_per_step = t.batch_size * model_cfg.seq_len
  # Timing: the first step (compilation included) apart; then the timed windows, each from
  # the end of a log, save or evaluation to the next log (bytes/s in metrics.jsonl) or to
  # the next save or evaluation (kept out of bytes/s), summed for the result.
  compile_seconds, timed_seconds, timed_total, timed_steps = None, 0.0, 0, 0
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
      state, step_metrics = train_step(state, setup.shard_batch(next(train_iter)))
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
        longest = 0   # the longest run of non-finite steps in a row, across windows
        for bad in skipped:
          bad_in_a_row = bad_in_a_row + 1 if bad else 0
          longest = max(longest, bad_in_a_row)
        skipped_total += int(skipped.sum())
        if longest >= max_bad:
          newest = _finish_saves(checkpointer)
          raise TrainingError(
              f"{longest} training steps in a row had a non-finite loss or gradient "
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
          timed_seconds, timed_total = timed_seconds + elapsed, timed_total + timed_steps
          record["bytes_per_s"] = timed_steps * bytes_per_step / max(elapsed, 1e-9)
          postfix["bytes/s"] = f"{record['bytes_per_s']:,.0f}"
        writer.write(step, record)
        bar.update(len(window), step=step, **postfix)
        window, timed_steps = [], 0
        window_start = time.perf_counter()
      save_now = step % t.checkpoint_every == 0
      eval_now = bool(t.eval_every and t.eval_batches and step % t.eval_every == 0
                      and step < t.steps)
      if save_now or eval_now:   # keep saving and evaluating out of bytes/s
        if timed_steps:   # steps since the last log: timed up to here, for the result
          jax.block_until_ready(state)
          timed_seconds += time.perf_counter() - window_start
          timed_total += timed_steps
        if save_now:
          checkpointer.save(step, state, train_iter)
        if eval_now:
          quick_eval(step)
        jax.block_until_ready(state)   # restart the timed window
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

  final: dict[str, Any] = {
      "step": step, "params": num_params, "skipped_steps": skipped_total,
      "train_bpb": last_train_bpb, "compile_s": compile_seconds,
      "train_s": None if compile_seconds is None else compile_seconds + timed_seconds,
      "bytes_per_s": timed_total * bytes_per_step / timed_seconds if timed_total else None}
  if t.final_eval:
    with setup.context():
      result = evaluate_lib.evaluate_windows(eval_step, state.params, data.eval,
                                             config.eval.batch_size)
    writer.write(step, {"eval_bpb": result["bpb"], "eval_bytes": result["bytes"],
                        "final": True})
    final.update(eval_bpb=result["bpb"], eval_bytes=result["bytes"],
                 final_eval_s=float(result["seconds"]))
    if is_main:
      print(f"final eval: {result['bpb']:.4f} bits/byte over {result['bytes']:,} validation "
            f"bytes (step {step}, {result['seconds']:.0f} s)", flush=True)
  writer.close()
  if config.sample.num_bytes > 0:
    prompt = np.frombuffer(config.sample.prompt.encode("utf-8"), np.uint8)
    text = sampling.sample_uncached(
        model, {"params": state.params}, prompt, config.sample.num_bytes,
        jax.random.key(setup.seed + 2), config.sample.temperature, config.sample.top_k)
    final["sample"] = bytes(text).decode("utf-8", errors="replace")
    if is_main:
      print("sample:\n" + final["sample"], flush=True)
  return TrainResult(**final)
