"""The training loop: `train_and_evaluate(config, workdir)` runs or resumes a run.

It resolves the config against the work directory, builds the one training setup
(`setup.TrainSetup`: checks, model, mesh, optimizer, schedule, steps), holds the workdir's
lock, loads the data (refusing data that changed under a resumed run, `DIR/data.json`),
restores the newest good checkpoint or starts fresh, and steps: logging metrics
(`metrics.jsonl`, cut back to the resumed step so that each step's records are there once),
evaluating, checkpointing (each checkpoint keeps the config), stopping cleanly on SIGTERM,
SIGINT or SIGHUP at any moment (`signals.StopRequest`), and stopping after
`train.max_bad_steps` non-finite steps in a row. At the end it evaluates on the whole
validation split (`train.final_eval`), samples a continuation (`sample.num_bytes`) and
returns (and writes to `DIR/result.json`) a `result.TrainResult`. The command line is
`megabyte_jax.train`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import sys
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
from megabyte_jax.training import history
from megabyte_jax.training import metrics as metrics_lib
from megabyte_jax.training import workdir as workdir_lib
from megabyte_jax.training import workdir_lock
from megabyte_jax.training.losses import LN2
from megabyte_jax.training.progress import Progress
from megabyte_jax.training.result import TrainResult
from megabyte_jax.training.setup import TrainSetup
from megabyte_jax.training.signals import STOP_SYNC_EVERY, StopNow, StopRequest

__all__ = ["STOP_SYNC_EVERY", "train_and_evaluate"]


def train_and_evaluate(config: Optional[ml_collections.ConfigDict], workdir: str,
                       progress: bool = False, allow_data_change: bool = False
                       ) -> TrainResult:
  """Runs (or resumes) training in `workdir`; returns the record of this invocation.

  `config` None continues the run saved in `workdir`; a config given for a workdir that
  holds a run must keep its model and (unless `allow_data_change`) its data section, batch
  size and seed (`workdir.resolve_config`, `workdir.check_data_order`), and the data must be
  the data the run was trained on (`DIR/data.json`, unless `allow_data_change`); what it
  changes is recorded in the run's config history (`history.record_config`). A run that has
  reached `train.steps` is finished (`history.finished_result`): the call says so, changes
  nothing and returns the record of the invocation that finished it. `progress`: a tqdm
  bar, else a log line every `train.log_every` steps.

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
    Preempted: stopped by SIGTERM, SIGINT or SIGHUP, after saving a checkpoint (or, for
      a second Ctrl-C in the middle of a step, keeping the newest one).
    TrainingError, CheckpointError: training cannot go on.
  """
  started = time.perf_counter()
  config = workdir_lib.resolve_config(workdir, config, allow_data_change=allow_data_change)
  setup = TrainSetup.create(config)   # every config check, before anything is written
  workdir_lib.check_data_order(workdir, config, allow_data_change)   # batches as before
  is_main = jax.process_index() == 0          # logs, metrics and config from one process
  remote = workdir_lib.is_remote(workdir)
  if is_main and remote:
    print(f"note: {workdir} is remote, where no lock file can be held: start one trainer "
          f"per work directory", file=sys.stderr, flush=True)
  lock = workdir_lock.WorkdirLock(os.path.expanduser(workdir),
                                  enabled=is_main and not remote).acquire()
  had_config = workdir_lib.as_path(workdir_lib.config_path(workdir)).exists()
  try:
    finished = history.finished_result(workdir, config)
    if finished is not None:   # nothing to train: say so and change nothing
      if is_main:
        print(finished[1], flush=True)
      return finished[0]
    with StopRequest() as stop:
      result = _Run(setup, workdir, progress, is_main, stop).run(allow_data_change)
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
      for path in (workdir_lib.config_path(workdir), workdir_lib.data_path(workdir)):
        with contextlib.suppress(OSError):
          workdir_lib.as_path(path).unlink()
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


def _count(n: int, noun: str) -> str:
  """`n` and `noun`, plural unless `n` is 1: "1 training document", "3 documents"."""
  return f"{n} {noun}" + ("" if n == 1 else "s")


def _has_checkpoints(workdir: str) -> bool:
  directory = workdir_lib.as_path(workdir) / checkpoint_lib.CHECKPOINT_SUBDIR
  try:
    return any(path.name.isdigit() for path in directory.iterdir())
  except OSError:
    return False


class _Run:
  """One training invocation once the setup is built and the workdir locked: `run()` loads
  the data and the state, trains, evaluates and samples, and returns the result (without
  `wall_s`). A stop signal, at any moment, ends it with `Preempted` (`signals`)."""

  def __init__(self, setup: TrainSetup, workdir: str, progress: bool, is_main: bool,
               stop: StopRequest):
    self.setup, self.workdir, self.progress = setup, workdir, progress
    self.is_main, self.stop = is_main, stop
    self.config, self.t = setup.config, setup.config.train
    self.data = self.checkpointer = self.train_iter = self.state = None
    self.writer = self.bar = None
    self.step = self.start = 0
    self.in_step = False         # inside a step: the state and the data may disagree
    self.redo_eval = False       # the quick evaluation of the resumed step is missing
    self._logged_at_start: list[dict] = []   # metrics.jsonl's records, cut back to start
    self.window: list = []       # the metrics of each step since the last log
    self.last_train_bpb: Optional[float] = None
    self.bad_in_a_row = self.skipped_total = 0
    # Timing: the first step (compilation included) apart; then the timed windows, each from
    # the end of a log, save or evaluation to the next log (bytes/s in metrics.jsonl) or to
    # the next save or evaluation (kept out of bytes/s), summed for the result.
    self.compile_seconds: Optional[float] = None
    self.timed_seconds, self.timed_total, self.timed_steps = 0.0, 0, 0
    self.window_start = time.perf_counter()

  def run(self, allow_data_change: bool) -> TrainResult:
    """Trains from the restored (or first) step to `train.steps`, then evaluates and
    samples."""
    try:
      self._open(allow_data_change)
      try:
        self._train()
        with self.stop.holding():
          self._save(force=True)      # skipped when this step is saved already
          self.checkpointer.wait()
        signum = self.stop.agreed()
        if signum is not None:        # a signal during the last step or its save
          self._preempted(signum)
        return self._finish()
      except KeyboardInterrupt:   # a second Ctrl-C, in the middle of a step (or a log)
        self._stop_here(signal.SIGINT, consistent=not self.in_step)
    finally:
      self._close()

  # ------------------------------------------------------------------ opening

  def _open(self, allow_data_change: bool) -> None:
    config, t, setup = self.config, self.t, self.setup
    self.data = data_lib.load_byte_data(config.data, setup.model_cfg.seq_len,
                                        setup.model_cfg.patch_size)
    resuming = _has_checkpoints(self.workdir)
    warning = None
    if resuming:   # before anything is written: refuses data that changed (one line)
      warning = workdir_lib.check_data_identity(self.workdir, self.data.identity,
                                                allow_data_change)
    dataset = data_lib.training_batches(
        self.data.train, setup.model_cfg.seq_len, t.batch_size // jax.process_count(),
        seed=setup.seed, separator=data_lib.separator_of(config.data),
        process_index=jax.process_index(), process_count=jax.process_count(),
        read_threads=config.data.read_threads, prefetch=config.data.prefetch,
        workers=config.data.workers, chunk_bytes=config.data.chunk_bytes)
    self.checkpointer = checkpoint_lib.Checkpointer(self.workdir, save_every=1,
                                                    keep=t.keep_checkpoints)
    if self.checkpointer.latest_step() is None:
      self.train_iter, self.state = iter(dataset), setup.init_state()
    else:   # the newest readable checkpoint, restored straight into this mesh's layout
      with setup.context():
        self.start, self.state, self.train_iter = self.checkpointer.restore_latest_good(
            setup.abstract_state(), data_iterator_factory=lambda: iter(dataset))
    self.step = self.start
    if self.is_main:
      self._write_records(warning)
    self.redo_eval = self._eval_missing()
    self.writer = metrics_lib.MetricWriter(self.workdir, tensorboard=t.tensorboard,
                                           enabled=self.is_main,
                                           resume_step=self.start)
    self.bar = Progress(self.progress and self.is_main, self.start, t.steps,
                        enabled=self.is_main)
    self.bar.write(self._banner())

  def _write_records(self, data_warning: Optional[str]) -> None:
    """Writes the config and the data's identity, and cuts `metrics.jsonl` back to the
    resumed step (process 0)."""
    try:   # the config as trained from `start` on; what changed goes to the history
      history.record_config(self.workdir, self.config, self.start)
      workdir_lib.save_data_identity(self.workdir, self.data.identity)
    except OSError as e:
      raise ConfigError(f"cannot write {workdir_lib.config_path(self.workdir)}: "
                        f"{e.strerror or e}") from e
    if data_warning:
      print(f"warning: {data_warning}", file=sys.stderr, flush=True)
    cut = metrics_lib.cut_metrics(self.workdir, self.start,
                                  drop_final=self.start >= self.t.steps and self.t.final_eval)
    if cut.damaged:
      print(f"warning: dropped {cut.damaged} damaged line(s) of {metrics_lib.METRICS_FILE} "
            f"(a partial last line is left by a kill)", file=sys.stderr, flush=True)
    if cut.dropped:
      print(f"note: dropped {cut.dropped} record(s) of {metrics_lib.METRICS_FILE} logged "
            f"after step {self.start}, the step this run resumes from; they are logged "
            f"again", file=sys.stderr, flush=True)
    self._logged_at_start = cut.records

  def _eval_missing(self) -> bool:
    """Whether the quick evaluation of the resumed step is due and missing from the
    metrics (a kill after its checkpoint, before it): the same in every process."""
    due = self.start > 0 and self._eval_due(self.start)
    if due and self.is_main:
      due = not any(r["step"] == self.start and "eval_bpb" in r and not r.get("final")
                    for r in self._logged_at_start)
    if jax.process_count() > 1:
      due = bool(multihost_utils.broadcast_one_to_all(np.int32(due)))
    return due

  def _eval_due(self, step: int) -> bool:
    t = self.t
    return bool(t.eval_every and t.eval_batches and step % t.eval_every == 0
                and step < t.steps)

  def _banner(self) -> str:
    data, t, mesh = self.data, self.t, self.setup.mesh
    num_params = self._num_params()
    train_bytes = f"{data.train_bytes:,} training bytes from " if data.train_bytes else ""
    return (f"{type(self.setup.model).__name__}: {num_params / 1e6:.2f}M parameters; data: "
            f"{train_bytes}{_count(data.train_files, 'training document')}, "
            f"{data.eval.num_bytes:,} validation bytes from "
            f"{_count(data.eval_files, 'document')}; "
            + (f"resuming at step {self.start}" if self.start else "starting at step 0")
            + f" of {t.steps}; workdir {self.workdir}; mesh {dict(mesh.shape)} over "
            f"{jax.device_count()} {jax.default_backend()} device(s), "
            f"{jax.process_count()} process(es)")

  def _num_params(self) -> int:
    return sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(self.state.params))

  # ------------------------------------------------------------------ training

  def _train(self) -> None:
    if self.redo_eval:
      self._quick_eval(self.step)
    self.window_start = time.perf_counter()
    while self.step < self.t.steps:
      signum = self.stop.agreed(self.step)
      if signum is not None:   # a stop signal: save at this step boundary and stop
        self._stop_here(signum)
      self._one_step()
      if self.step % self.t.log_every == 0 or self.step == self.t.steps:
        self._log()
      self._save_and_eval()

  def _one_step(self) -> None:
    self.in_step = True
    batch = self.setup.shard_batch(next(self.train_iter))
    self.state, step_metrics = self.setup.train_step(self.state, batch)
    self.step += 1
    self.in_step = False
    self.window.append(step_metrics)
    if self.step == self.start + 1:  # the first step compiles: time it apart from throughput
      jax.block_until_ready(step_metrics["loss"])
      self.compile_seconds = time.perf_counter() - self.window_start
      self.bar.write(f"first step (compilation included): {self.compile_seconds:.1f} s")
      self.bar.first_step_done(self.step)   # the bar's rate and ETA leave compilation out
      self.timed_steps, self.window_start = 0, time.perf_counter()
    else:
      self.timed_steps += 1

  def _log(self) -> None:
    """Writes the record of the steps since the last log; stops after too many non-finite
    steps in a row."""
    fetched = jax.device_get(self.window)      # one transfer for the whole window
    losses = np.asarray([m["loss"] for m in fetched], np.float64)
    norms = np.asarray([m["grad_norm"] for m in fetched], np.float64)
    skipped = np.asarray([m["skipped"] for m in fetched]) > 0
    longest = 0   # the longest run of non-finite steps in a row, across windows
    for bad in skipped:   # a good step resets the run
      self.bad_in_a_row = self.bad_in_a_row + 1 if bad else 0
      longest = max(longest, self.bad_in_a_row)
    self.skipped_total += int(skipped.sum())
    self._check_bad_steps(longest)
    good = ~skipped
    loss = float(losses[good].mean()) if good.any() else float("nan")
    record = {"train_bpb": loss / LN2 if good.any() else None,
              "grad_norm": float(norms[good].mean()) if good.any() else None,
              "lr": float(fetched[-1]["lr"]), "skipped_steps": int(skipped.sum())}
    if good.any():
      self.last_train_bpb = loss / LN2
    postfix = {"bpb": f"{loss / LN2:.3f}"}
    if self.timed_steps:
      elapsed = time.perf_counter() - self.window_start
      self.timed_seconds += elapsed
      self.timed_total += self.timed_steps
      record["bytes_per_s"] = self.timed_steps * self._bytes_per_step() / max(elapsed, 1e-9)
      postfix["bytes/s"] = f"{record['bytes_per_s']:,.0f}"
    self.writer.write(self.step, record)
    self.bar.update(self.step, **postfix)
    self.window, self.timed_steps = [], 0
    self.window_start = time.perf_counter()

  def _check_bad_steps(self, longest: int) -> None:
    max_bad = int(self.t.get("max_bad_steps", 20))
    if longest < max_bad:
      return
    newest = _finish_saves(self.checkpointer)
    raise TrainingError(
        f"{longest} training steps in a row had a non-finite loss, gradient or "
        f"update (up to step {self.step}); their updates were skipped, and training stops "
        f"here. The parameters are those of the last good update; the newest complete "
        f"checkpoint is {newest} in {self.checkpointer.directory}. Lower "
        f"train.learning_rate or check the data (train.max_bad_steps={max_bad})")

  def _bytes_per_step(self) -> int:
    return self.t.batch_size * self.setup.model_cfg.seq_len

  def _save_and_eval(self) -> None:
    save_now = self.step % self.t.checkpoint_every == 0
    eval_now = self._eval_due(self.step)
    if not (save_now or eval_now):
      return
    # Saving and evaluating are kept out of bytes/s.
    if self.timed_steps:   # steps since the last log: timed up to here, for the result
      jax.block_until_ready(self.state)
      self.timed_seconds += time.perf_counter() - self.window_start
      self.timed_total += self.timed_steps
    if save_now:
      self._save()
    if eval_now:
      self._quick_eval(self.step)
    jax.block_until_ready(self.state)   # restart the timed window
    self.timed_steps, self.window_start = 0, time.perf_counter()

  def _save(self, force: bool = False) -> bool:
    """Saves this step (with the config), unless it is saved already; a signal meanwhile
    is only noted."""
    with self.stop.holding():
      return self.checkpointer.save(self.step, self.state, self.train_iter, force=force,
                                    config=self.config.to_dict())

  def _evaluate(self, limit: Optional[int] = None) -> dict:
    with self.setup.context():
      return evaluate_lib.evaluate_windows(self.setup.eval_step, self.state.params,
                                           self.data.eval, self.config.eval.batch_size,
                                           limit=limit)

  def _quick_eval(self, step: int) -> None:
    """The periodic evaluation on `train.eval_batches` batches. A stop signal cuts it short
    (the loop then stops at this step; a resumed run redoes it)."""
    try:
      with self.stop.interruptible():
        result = self._evaluate(self.t.eval_batches * self.config.eval.batch_size)
    except StopNow:
      return
    self.writer.write(step, {"eval_bpb": result["bpb"], "eval_bytes": result["bytes"]})
    self.bar.write(f"step {step}: eval_bpb {result['bpb']:.4f} ({result['bytes']:,} bytes)")

  # ------------------------------------------------------------------ stopping

  def _stop_here(self, signum: int, consistent: bool = True) -> None:
    """Stops for `signum`: saves this step (unless it is saved already, or the state is
    in the middle of a step), waits for the save in flight, raises `Preempted`."""
    name = signal.Signals(signum).name
    if consistent:
      self._save(force=True)
      with self.stop.holding():
        self.checkpointer.wait()
      self._preempted(signum)
    with self.stop.holding():
      newest = _finish_saves(self.checkpointer)
    raise Preempted(f"stopped by {name} during step {self.step + 1}; the newest complete "
                    f"checkpoint is {newest} in {self.checkpointer.directory}; run again to "
                    f"resume", signum, self.step)

  def _preempted(self, signum: int) -> None:
    """Raises `Preempted` for `signum` once this step's checkpoint is complete."""
    raise Preempted(f"stopped by {signal.Signals(signum).name} at step {self.step}; saved a "
                    f"checkpoint in {self.checkpointer.directory}; run again to resume",
                    signum, self.step)

  def _at_once(self, fn, *args):
    """`fn(*args)` (the final evaluation, the sample), which a stop signal cuts short: the
    run then stops with `Preempted`, its last checkpoint complete."""
    try:
      with self.stop.interruptible():
        out = fn(*args)
    except StopNow as e:
      self._preempted(e.signum)
    if jax.process_count() > 1:   # the processes finish it together, then compare
      signum = self.stop.agreed()
      if signum is not None:
        self._preempted(signum)
    return out

  def _close(self) -> None:
    """Closes the bar, the metrics, the data and the checkpointer (waiting for a save in
    flight: it is never abandoned); idempotent."""
    for thing in (self.bar, self.writer):
      if thing is not None:
        thing.close()
    if self.train_iter is not None and hasattr(self.train_iter, "close"):
      with contextlib.suppress(Exception):
        self.train_iter.close()
    if self.checkpointer is not None:
      with self.stop.holding():
        _finish_saves(self.checkpointer)
        with contextlib.suppress(MegabyteError):
          self.checkpointer.close()
    self.bar = self.writer = self.train_iter = self.checkpointer = None

  # ------------------------------------------------------------------ the end

  def _finish(self) -> TrainResult:
    """The final evaluation and the sample; the result."""
    final: dict[str, Any] = {
        "step": self.step, "params": self._num_params(), "skipped_steps": self.skipped_total,
        "train_bpb": self.last_train_bpb, "compile_s": self.compile_seconds,
        "train_s": (None if self.compile_seconds is None
                    else self.compile_seconds + self.timed_seconds),
        "bytes_per_s": (self.timed_total * self._bytes_per_step() / self.timed_seconds
                        if self.timed_total else None)}
    self.bar.close()
    if self.t.final_eval:
      final.update(self._final_eval())
    self.writer.close()
    if self.config.sample.num_bytes > 0:
      final["sample"] = self._at_once(self._sample)
      if self.is_main:
        print("sample:\n" + final["sample"], flush=True)
    return TrainResult(**final)

  def _final_eval(self) -> dict:
    result = self._at_once(self._evaluate)
    if not math.isfinite(result["bpb"]):
      raise TrainingError(
          f"the final evaluation of step {self.step} gave a non-finite bits per byte "
          f"({result['bpb']}): the model's outputs overflow; the checkpoint of step "
          f"{self.step} is kept in {self.checkpointer.directory}, but the run's settings "
          f"(train.learning_rate, model.init_std) need a look")
    self.writer.write(self.step, {"eval_bpb": result["bpb"], "eval_bytes": result["bytes"],
                                  "final": True})
    if self.is_main:
      print(f"final eval: {result['bpb']:.4f} bits/byte over {result['bytes']:,} validation "
            f"bytes (step {self.step}, {result['seconds']:.0f} s)", flush=True)
    return {"eval_bpb": result["bpb"], "eval_bytes": result["bytes"],
            "final_eval_s": float(result["seconds"])}

  def _sample(self) -> str:
    s = self.config.sample
    prompt = np.frombuffer(s.prompt.encode("utf-8"), np.uint8)
    text = sampling.sample_uncached(
        self.setup.model, {"params": self.state.params}, prompt, s.num_bytes,
        jax.random.key(self.setup.seed + 2), s.temperature, s.top_k)
    return bytes(text).decode("utf-8", errors="replace")
