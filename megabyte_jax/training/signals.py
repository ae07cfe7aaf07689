"""How a training run stops on a signal: `StopRequest`.

SIGTERM (a preemptible TPU or GPU job, `kill`), SIGINT (Ctrl-C) and SIGHUP (the terminal
closed) all ask the run to stop cleanly: the loop notes the request and, at the next step
boundary, saves a checkpoint (unless that step is saved already) and raises `Preempted`;
the command exits with 128 + the signal's number (143, 130, 129).

What a signal does depends on the moment (`StopRequest.phase`):

  * a training step (compilation included): noted; the step finishes first. A second
    SIGINT interrupts at once (`KeyboardInterrupt`), and the loop saves what is
    consistent;
  * a checkpoint save (`holding()`): noted only, a second SIGINT too: a save is never cut
    in half;
  * an evaluation or the sample at the end (`interruptible()`): stops it at once
    (`StopNow`), since nothing of it needs saving; a quick evaluation is redone when the
    run resumes.

Several processes (`jax.process_count() > 1`) must stop at the same step, since saving is
collective: they compare their requests (`agreed`) at every `STOP_SYNC_EVERY`-th step, and an
evaluation is not cut short (the processes compare after it).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator, Optional

import jax
from jax.experimental import multihost_utils
import numpy as np

# The signals that stop a run cleanly: `kill`, Ctrl-C, a closed terminal.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

# In a multi-process run every process must stop at the same step boundary (the save is a
# collective, and a process that went on to the next step would wait for the others
# forever): the processes compare their stop requests at every step that is a multiple of
# this, so a signal reaching any one of them stops all within this many steps.
STOP_SYNC_EVERY = 5


class StopNow(Exception):
  """Raised by the signal handler inside `StopRequest.interruptible()`."""

  def __init__(self, signum: int):
    super().__init__(signal.Signals(signum).name)
    self.signum = signum


class StopRequest:
  """Turns `STOP_SIGNALS` into a request to stop (see the module docstring for what each
  moment does with it). Handlers are installed only in the main thread, for as long as
  the object is used as a context manager (or until `restore()`).

  Attributes:
    signum: the first stop signal received (None: none yet).
    phase: "step", "hold" or "now": what a signal does at this moment.
  """

  def __init__(self):
    self.signum: Optional[int] = None
    self.phase = "step"
    self._previous = {}
    if threading.current_thread() is not threading.main_thread():
      return
    for signum in STOP_SIGNALS:
      self._previous[signum] = signal.signal(signum, self._handle)

  def __enter__(self) -> "StopRequest":
    return self

  def __exit__(self, *exc) -> None:
    self.restore()

  def _handle(self, signum, frame):
    del frame
    first = self.signum is None
    if first:
      self.signum = signum
    if self.phase == "now":
      raise StopNow(self.signum)
    if self.phase == "step" and not first and signum == signal.SIGINT:
      raise KeyboardInterrupt

  @contextlib.contextmanager
  def _phase(self, phase: str) -> Iterator[None]:
    before, self.phase = self.phase, phase
    try:
      yield
    finally:
      self.phase = before

  def holding(self):
    """A context in which signals are only noted (a checkpoint save)."""
    return self._phase("hold")

  def interruptible(self):
    """A context that a signal stops at once with `StopNow` (an evaluation, the sample):
    in one process only; several processes finish it together (see `agreed`). A request
    that came before the context is raised on entering it."""
    if jax.process_count() > 1:
      return self._phase("step")
    if self.signum is not None:
      raise StopNow(self.signum)
    return self._phase("now")

  def agreed(self, step: Optional[int] = None) -> Optional[int]:
    """The signal to stop for at this point, the same in every process (None: go on).
    One process: its own request. Several: at a `step` that is a multiple of
    `STOP_SYNC_EVERY`, or with `step` None, the processes all-gather their requests and all
    stop if any has one; at other steps, None."""
    if jax.process_count() == 1:
      return self.signum
    if step is not None and step % STOP_SYNC_EVERY:
      return None
    requests = multihost_utils.process_allgather(np.int32(self.signum or 0))
    return int(np.max(requests)) or None

  def restore(self) -> None:
    """Puts the handlers of before back."""
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}
