"""The training progress display on real terminals (pseudo-terminals of a set width)."""

import contextlib
import fcntl
import os
import pty
import struct
import termios
import time

import pytest

from megabyte_jax.training.progress import MIN_BAR_COLUMNS, Progress, terminal_columns


@contextlib.contextmanager
def _terminal(columns: int):
  """A pseudo-terminal `columns` wide: yields a text stream writing to it (the reading end
  is drained and closed afterwards)."""
  master, slave = pty.openpty()
  fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
  stream = os.fdopen(slave, "w", encoding="utf-8")
  try:
    yield stream
  finally:
    stream.close()
    os.close(master)


def test_a_zero_width_terminal_gets_plain_lines(capsys):
  with _terminal(0) as stream:
    assert terminal_columns(stream) == 0
    progress = Progress(bar=True, start=0, total=10, stream=stream)
    assert progress.lines
    progress.write("Megabyte: 0.12M parameters")
    progress.first_step_done(1)
    progress.update(5, bpb="7.900")
    progress.close()
    assert progress.bar is None
  out = capsys.readouterr().out
  assert out == "Megabyte: 0.12M parameters\nstep 5: bpb 7.900\n"


def test_a_narrow_terminal_gets_plain_lines_and_a_wide_one_a_bar():
  with _terminal(MIN_BAR_COLUMNS - 1) as stream:
    assert Progress(bar=True, start=0, total=10, stream=stream).lines
  with _terminal(120) as stream:
    progress = Progress(bar=True, start=0, total=10, stream=stream)
    assert not progress.lines
    progress.close()
  assert not Progress(bar=True, start=0, total=10, enabled=False).lines   # silent


def test_the_bar_starts_after_compilation_so_its_eta_leaves_it_out():
  with _terminal(120) as stream:
    progress = Progress(bar=True, start=0, total=1000, stream=stream)
    assert progress.bar is None          # nothing drawn while the first step compiles
    time.sleep(0.5)                      # "compilation"
    progress.first_step_done(1)
    for step in range(2, 101):           # fast steps
      progress.update(step, bpb="7.0")
    meter = progress.bar.format_dict
    assert progress.bar.n == 100 and meter["initial"] == 1
    assert meter["elapsed"] < 0.5        # the clock started after the first step
    rate = (meter["n"] - meter["initial"]) / max(meter["elapsed"], 1e-9)
    assert rate > 99 / 0.5               # an ETA from training alone
    progress.close()


@pytest.mark.parametrize("start", [0, 37])
def test_the_bar_counts_from_the_resumed_step(start):
  with _terminal(120) as stream:
    progress = Progress(bar=True, start=start, total=100, stream=stream)
    progress.first_step_done(start + 1)
    progress.update(start + 10)
    assert progress.bar.n == start + 10
    progress.close()
