"""Stops a real training run with a real signal at each moment of its loop (run by
tests/test_reliability3.py).

Usage: python signal_moments.py CORPUS WORKROOT

For each scenario (a moment and a signal) it trains a tiny model in WORKROOT/<name>; when
the moment comes, the process sends the signal to itself (`os.kill`, so it arrives exactly
then), and the run must end with `Preempted`. Then it resumes the run to its end (those of
`RESUMED`). It prints one JSON line per scenario: the error's type, signal, step and
message, the steps saved, and the resumed run's final step and metrics. The last scenario, "kill_before_eval", ends
this process with SIGKILL at the start of the quick evaluation of step 4, once that step's
checkpoint is complete: the test then resumes that run itself.
"""

import contextlib
import dataclasses
import json
import os
import signal
import sys
import time
from unittest import mock

from megabyte_jax.errors import MegabyteError, Preempted
from megabyte_jax.experiment import base_config
from megabyte_jax.inference import sampling, scoring
from megabyte_jax.train import train_and_evaluate
from megabyte_jax.training.checkpoint import Checkpointer
from megabyte_jax.training.metrics import read_metrics
from megabyte_jax.training.setup import TrainSetup

STEPS = 6
# The scenarios whose run is resumed to its end here (the others stop at a plain step
# boundary, as these do too).
RESUMED = ("save", "double_mid_step", "eval", "final_eval", "sample")


def config(corpus):
  c = base_config("megabyte", seq_len=32, patch_size=4, global_dim=32, global_layers=1,
                  global_heads=2, local_dim=16, local_layers=1, local_heads=2)
  c.data.update(files=corpus, eval_fraction=0.3, chunk_bytes=2 ** 14)
  c.train.update(steps=STEPS, batch_size=4, warmup_steps=1, log_every=1, eval_every=2,
                 eval_batches=1, checkpoint_every=2, final_eval=True, tensorboard=False)
  c.eval.batch_size = 8
  c.sample.num_bytes = 4
  return c


class Moment:
  """Sends `signums` to this process when the wrapped function is called for the `nth` time
  with arguments that `when` accepts: one signal per such call, or all at once
  (`together`)."""

  def __init__(self, signums, nth=1, when=lambda *a, **k: True, together=False):
    self.signums, self.nth, self.when = list(signums), nth, when
    self.together, self.calls = together, 0

  def wrap(self, original):
    def wrapper(*args, **kwargs):
      if self.signums and self.when(*args, **kwargs):
        self.calls += 1
        if self.calls >= self.nth:
          for _ in range(len(self.signums) if self.together else 1):
            os.kill(os.getpid(), self.signums.pop(0))
      return original(*args, **kwargs)
    return wrapper


def _periodic(self, step, state, data_iterator=None, force=False, config=None):
  del self, step, state, data_iterator, config
  return not force


def _quick(*args, limit=None, **kwargs):
  del args, kwargs
  return limit is not None


def _final(*args, limit=None, **kwargs):
  del args, kwargs
  return limit is None


def _saved(workdir, step):
  """A `when` for the evaluation of `step`: true once that step's save has begun, after
  waiting (up to 60 s) for it to be complete."""
  directory = os.path.join(workdir, "checkpoints")

  def when(*args, **kwargs):
    del args, kwargs
    if not any(n.split(".")[0] == str(step) for n in os.listdir(directory)):
      return False
    done = os.path.join(directory, str(step), "commit_success.txt")
    for _ in range(600):
      if os.path.exists(done):
        break
      time.sleep(0.1)
    return True
  return when


def _step_hook(hook, stack):
  """Wraps the jitted train step of every setup built while `stack` is open."""
  create = TrainSetup.create.__func__

  def patched_create(cls, *args, **kwargs):
    setup = create(cls, *args, **kwargs)
    return dataclasses.replace(setup, train_step=hook.wrap(setup.train_step))

  stack.enter_context(mock.patch.object(TrainSetup, "create", classmethod(patched_create)))


def scenarios(workdir_of):
  """`(name, place, Moment)`: where each signal arrives (`place`: the train step, a
  checkpoint save, an evaluation, the sample)."""
  return [
      ("compile", "step", Moment([signal.SIGTERM])),
      ("step", "step", Moment([signal.SIGHUP], nth=3)),
      ("save", "save", Moment([signal.SIGTERM], when=_periodic)),
      ("double", "save", Moment([signal.SIGINT, signal.SIGINT])),
      ("double_mid_step", "step", Moment([signal.SIGINT, signal.SIGINT], nth=4,
                                         together=True)),
      ("eval", "eval", Moment([signal.SIGINT], when=_quick)),
      ("final_eval", "eval", Moment([signal.SIGTERM], when=_final)),
      ("sample", "sample", Moment([signal.SIGHUP])),
      ("kill_before_eval", "eval", Moment([signal.SIGKILL],
                                          when=_saved(workdir_of("kill_before_eval"), 4))),
  ]


def install(place, hook, stack):
  """Installs `hook` (a `Moment`) at `place`."""
  if place == "step":
    _step_hook(hook, stack)
  elif place == "save":
    stack.enter_context(mock.patch.object(Checkpointer, "save", hook.wrap(Checkpointer.save)))
  elif place == "eval":
    stack.enter_context(mock.patch.object(scoring, "evaluate_windows",
                                          hook.wrap(scoring.evaluate_windows)))
  elif place == "sample":
    stack.enter_context(mock.patch.object(sampling, "sample_uncached",
                                          hook.wrap(sampling.sample_uncached)))


def run(corpus, workdir, name, place, hook):
  """Runs one scenario and resumes it; prints its report."""
  report = {"scenario": name}
  with contextlib.ExitStack() as stack:
    install(place, hook, stack)
    try:
      train_and_evaluate(config(corpus), workdir)
      report["error"] = None
    except Preempted as e:
      report.update(error="Preempted", signum=e.signum, step=e.step, message=str(e))
    except MegabyteError as e:
      report.update(error=type(e).__name__, message=str(e))
  ckpt = Checkpointer(workdir)
  report["saved"] = ckpt.all_steps()
  report["manifests"] = [s for s in ckpt.all_steps() if ckpt.manifest(s) is not None]
  report["leftovers"] = [n for n in os.listdir(ckpt.directory) if not n.isdigit()]
  ckpt.close()
  if name in RESUMED:
    report["resumed_step"] = train_and_evaluate(config(corpus), workdir).step
    report["metrics"] = read_metrics(workdir)
  print(json.dumps(report), flush=True)


def main():
  corpus, root = sys.argv[1], sys.argv[2]
  workdir_of = lambda name: os.path.join(root, name)
  for name, place, hook in scenarios(workdir_of):
    run(corpus, workdir_of(name), name, place, hook)


if __name__ == "__main__":
  main()
