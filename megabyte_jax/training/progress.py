"""Training progress on the terminal: a tqdm bar, or one plain line per log.

    progress = Progress(bar=True, start=0, total=4000)
    progress.write("Megabyte: 1.11M parameters; ...")    # a line above the bar
    progress.first_step_done(1)                         # compiled: the bar's clock starts
    progress.update(20, bpb="3.412", **{"bytes/s": "41,250"})
    progress.close()

The bar starts once the first step (which compiles the train step) is done, so its rate and
ETA count training alone. Without a bar (`bar=False`, or a terminal narrower than
`MIN_BAR_COLUMNS`, where a bar would show nothing useful), every `update` prints one line,
`step 20: bpb 3.412, bytes/s 41,250`, on stdout.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Optional, TextIO

MIN_BAR_COLUMNS = 40   # narrower terminals (a zero-width one included) get plain lines


def terminal_columns(stream: TextIO) -> Optional[int]:
  """The width of the terminal `stream` writes to; None when it is not a terminal (or the
  width cannot be read)."""
  try:
    fd = stream.fileno()
    if not os.isatty(fd):
      return None
    return os.get_terminal_size(fd).columns
  except (AttributeError, OSError, ValueError):   # no file descriptor, or a closed one
    return None


class Progress:
  """A tqdm bar (step, bytes/s, train bpb, ETA) on `stream` (default stderr), or plain log
  lines on stdout; silent when not `enabled` (every process but the first of a multi-host
  run).

  Attributes:
    bar: the tqdm bar, once `first_step_done` started it (None with plain lines).
  """

  def __init__(self, bar: bool, start: int, total: int, enabled: bool = True,
               stream: Optional[TextIO] = None):
    self._stream = sys.stderr if stream is None else stream
    columns = terminal_columns(self._stream)
    self._wants_bar = bar and enabled and (columns is None or columns >= MIN_BAR_COLUMNS)
    self._enabled = enabled
    self._start, self._total = start, total
    self.bar: Optional[Any] = None

  @property
  def lines(self) -> bool:
    """Whether progress is shown as plain lines (no bar)."""
    return self._enabled and not self._wants_bar

  def first_step_done(self, step: int) -> None:
    """Starts the bar at `step`, now that the first step (and its compilation) is done:
    its rate and ETA then leave compilation out."""
    if self._wants_bar and self.bar is None:
      from tqdm import tqdm  # pylint: disable=g-import-not-at-top
      self.bar = tqdm(total=self._total, initial=step, unit="step", dynamic_ncols=True,
                      file=self._stream)

  def update(self, step: int, **postfix: Any) -> None:
    """Moves the bar to `step` with `postfix` shown beside it; with plain lines, prints
    `step` and `postfix` as one line."""
    if self.bar is not None:
      self.bar.update(step - self.bar.n)
      if postfix:
        self.bar.set_postfix(postfix, refresh=False)
    elif self.lines:
      print(f"step {step}: " + ", ".join(f"{k} {v}" for k, v in postfix.items()), flush=True)

  def write(self, line: str) -> None:
    """Prints `line` on stdout (above the bar, when there is one)."""
    if self.bar is not None:
      self.bar.write(line)
    elif self._enabled:
      print(line, flush=True)

  def close(self) -> None:
    """Closes the bar (its last state stays on the terminal)."""
    if self.bar is not None:
      self.bar.close()
