"""The progress display of a training run: a tqdm bar, or one log line per logged step."""

from __future__ import annotations

import sys
from typing import Any, Optional


class Progress:
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
    """Prints `line` (above the bar, when there is one)."""
    if self._bar is not None:
      self._bar.write(line)
    elif self._enabled:
      print(line, flush=True)

  def close(self) -> None:
    """Closes the bar (idempotent)."""
    if self._bar is not None:
      self._bar.close()
      self._bar = None

